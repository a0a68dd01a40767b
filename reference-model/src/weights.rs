//! The model's weights by role, generic over where they live (`W` = host f32 arrays after loading, or a
//! backend's own storage after [`Weights::upload`]). Loading resolves the contract's tensor names, checks every
//! shape against config.json, fuses q/k/v into one projection and fuses per-expert exports into the
//! `[E, H, 2I]` / `[E, I, H]` layout.

use crate::checkpoint::Checkpoint;
use crate::config::{Ffn, TextConfig};
use crate::error::{Error, Result};
use ndarray::{concatenate, s, Array3, ArrayD, Axis, Ix2};

/// Weights of the feed-forward block of one layer.
pub enum FfnWeights<W> {
    /// router [E, H]; gate_up [E, H, 2I] (first I columns gate); down [E, I, H]; shared expert as nn.Linear.
    Moe { router: W, gate_up: W, down: W, shared_gate: W, shared_up: W, shared_down: W },
    /// nn.Linear layouts: gate, up [I_mlp, H]; down [H, I_mlp].
    Dense { gate: W, up: W, down: W },
}

pub struct LayerWeights<W> {
    pub input_norm: W,
    /// q, k and v projections stacked by rows: [(Hq + 2 Hkv) D, H], the layout `prepare_qkv` splits.
    pub qkv: W,
    /// [H, Hq D]
    pub o: W,
    pub post_norm: W,
    pub ffn: FfnWeights<W>,
}

pub struct Weights<W> {
    /// [V, H]
    pub embed: W,
    pub layers: Vec<LayerWeights<W>>,
    /// [H]
    pub norm: W,
    /// [V, H] (the embedding again when tie_word_embeddings is set)
    pub lm_head: W,
}

/// Host weights, as loaded.
pub type HostWeights = Weights<ArrayD<f32>>;

impl HostWeights {
    /// Reads every tensor the model needs from `ck`, checking shapes against `ck.config`.
    pub fn load(ck: &Checkpoint) -> Result<Self> {
        let c = &ck.config;
        let (v, h) = (c.vocab_size, c.hidden_size);
        let embed = ck.read("model.embed_tokens.weight", &[v, h])?;
        let lm_head = match c.tie_word_embeddings {
            true => embed.clone(),
            false => ck.read("lm_head.weight", &[v, h])?,
        };
        let layers = (0..c.num_hidden_layers).map(|i| load_layer(ck, c, i)).collect::<Result<Vec<_>>>()?;
        let norm = ck.read("model.norm.weight", &[h])?;
        if let Some(first) = ck.unread().first() {
            return Err(Error::Weight(format!(
                "tensor `{first}` is in the checkpoint but config.json has no place for it \
                 (num_hidden_layers, moe_layers or num_local_experts disagree with the weights?)"
            )));
        }
        Ok(Weights { embed, layers, norm, lm_head })
    }
}

fn load_layer(ck: &Checkpoint, c: &TextConfig, i: usize) -> Result<LayerWeights<ArrayD<f32>>> {
    let p = format!("model.layers.{i}");
    let (h, d) = (c.hidden_size, c.head_dim);
    let (qw, kw) = (c.num_attention_heads * d, c.num_key_value_heads * d);
    let attn = |n: &str, rows: usize| ck.read(&format!("{p}.self_attn.{n}_proj.weight"), &[rows, h]).and_then(mat);
    let (q, k, v) = (attn("q", qw)?, attn("k", kw)?, attn("v", kw)?);
    let qkv = concatenate(Axis(0), &[q.view(), k.view(), v.view()])
        .map_err(|e| Error::Weight(format!("{p}: q/k/v projections do not stack: {e}")))?
        .into_dyn();
    let ff = format!("{p}.feed_forward");
    let ffn = match c.ffn[i] {
        Ffn::Dense => {
            let im = c.intermediate_size_mlp;
            FfnWeights::Dense {
                gate: ck.read(&format!("{ff}.gate_proj.weight"), &[im, h])?,
                up: ck.read(&format!("{ff}.up_proj.weight"), &[im, h])?,
                down: ck.read(&format!("{ff}.down_proj.weight"), &[h, im])?,
            }
        }
        Ffn::Moe => {
            let (e, im) = (c.num_local_experts, c.intermediate_size);
            let (gate_up, down) = experts(ck, &ff, e, h, im)?;
            let shared = |n: &str, shape: &[usize]| ck.read(&format!("{ff}.shared_expert.{n}_proj.weight"), shape);
            FfnWeights::Moe {
                router: ck.read(&format!("{ff}.router.weight"), &[e, h])?,
                gate_up,
                down,
                shared_gate: shared("gate", &[im, h])?,
                shared_up: shared("up", &[im, h])?,
                shared_down: shared("down", &[h, im])?,
            }
        }
    };
    Ok(LayerWeights {
        input_norm: ck.read(&format!("{p}.input_layernorm.weight"), &[h])?,
        qkv,
        o: ck.read(&format!("{p}.self_attn.o_proj.weight"), &[h, qw])?,
        post_norm: ck.read(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
        ffn,
    })
}

/// The routed experts as `(gate_up [E, H, 2I], down [E, I, H])`, from the fused tensors when the checkpoint
/// has them, else from per-expert `experts.{j}.{gate,up,down}_proj.weight` (nn.Linear layouts).
fn experts(ck: &Checkpoint, ff: &str, e: usize, h: usize, im: usize) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
    let fused = format!("{ff}.experts.gate_up_proj");
    if ck.has(&fused) || !ck.has(&format!("{ff}.experts.0.gate_proj.weight")) {
        // The fused layout is the contract's: a missing tensor is reported under its fused name.
        return Ok((ck.read(&fused, &[e, h, 2 * im])?, ck.read(&format!("{ff}.experts.down_proj"), &[e, im, h])?));
    }
    let mut gate_up = Array3::<f32>::zeros((e, h, 2 * im));
    let mut down = Array3::<f32>::zeros((e, im, h));
    for j in 0..e {
        let one = |n: &str, shape: &[usize]| ck.read(&format!("{ff}.experts.{j}.{n}_proj.weight"), shape).and_then(mat);
        // x @ gate_up uses [H, 2I]: the transposes of the nn.Linear [I, H] weights, gate columns first.
        gate_up.slice_mut(s![j, .., ..im]).assign(&one("gate", &[im, h])?.t());
        gate_up.slice_mut(s![j, .., im..]).assign(&one("up", &[im, h])?.t());
        down.slice_mut(s![j, .., ..]).assign(&one("down", &[h, im])?.t());
    }
    Ok((gate_up.into_dyn(), down.into_dyn()))
}

fn mat(a: ArrayD<f32>) -> Result<ndarray::Array2<f32>> {
    // `Checkpoint::read` already checked the rank against the requested shape.
    a.into_dimensionality::<Ix2>().map_err(|e| Error::Weight(e.to_string()))
}

impl<W> Weights<W> {
    /// Moves every weight into a backend's storage (`f` is the backend's upload), keeping the structure.
    pub fn upload<V>(self, mut f: impl FnMut(W) -> Result<V>) -> Result<Weights<V>> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in self.layers {
            let ffn = match l.ffn {
                FfnWeights::Moe { router, gate_up, down, shared_gate, shared_up, shared_down } => FfnWeights::Moe {
                    router: f(router)?,
                    gate_up: f(gate_up)?,
                    down: f(down)?,
                    shared_gate: f(shared_gate)?,
                    shared_up: f(shared_up)?,
                    shared_down: f(shared_down)?,
                },
                FfnWeights::Dense { gate, up, down } => {
                    FfnWeights::Dense { gate: f(gate)?, up: f(up)?, down: f(down)? }
                }
            };
            layers.push(LayerWeights {
                input_norm: f(l.input_norm)?,
                qkv: f(l.qkv)?,
                o: f(l.o)?,
                post_norm: f(l.post_norm)?,
                ffn,
            });
        }
        Ok(Weights { embed: f(self.embed)?, layers, norm: f(self.norm)?, lm_head: f(self.lm_head)? })
    }
}
