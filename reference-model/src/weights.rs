//! The model's weights by role, generic over where they live (`W` is a backend's own storage). Loading
//! streams the checkpoint one tensor at a time, in its stored dtype, straight into the backend
//! ([`crate::backend::Backend::upload`]): it resolves the contract's tensor names, checks every shape against
//! config.json, stacks q/k/v into one projection and gate/up into one, and assembles per-expert exports into
//! the fused `[E, H, 2I]` / `[E, I, H]` layout one layer at a time. Nothing holds the whole model on the host.

use crate::checkpoint::Checkpoint;
use crate::config::{Ffn, TextConfig};
use crate::error::{Error, Result};
use crate::host_tensor::HostTensor;

/// What a weight is for: a backend stores each role its own way (the GPU keeps norms and embeddings bf16,
/// quantizes routed experts to FP8, and dense linears too under `--fp8-dense`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `[V, H]` token embeddings (gathered by id).
    Embedding,
    /// `[H]` RMSNorm weight.
    Norm,
    /// nn.Linear `[out, in]`: attention q/k/v (stacked) and o, the shared expert and the dense MLP (gate and
    /// up stacked as `[2I, H]`, down `[H, I]`).
    Linear,
    /// nn.Linear `[E, H]` router (kept at the activation dtype everywhere: it decides the routing).
    Router,
    /// `[E, H, 2I]` routed experts' gate_up (used as `x @ W`, gate in the first I columns).
    ExpertsGateUp,
    /// `[E, I, H]` routed experts' down.
    ExpertsDown,
    /// nn.Linear `[V, H]` output projection (the embedding again under tied embeddings).
    LmHead,
}

/// Weights of the feed-forward block of one layer.
pub enum FfnWeights<W> {
    /// router [E, H]; experts gate_up [E, H, 2I] and down [E, I, H]; shared expert gate|up [2I, H], down [H, I].
    Moe { router: W, gate_up: W, down: W, shared_gate_up: W, shared_down: W },
    /// nn.Linear layouts: gate|up [2 I_mlp, H]; down [H, I_mlp].
    Dense { gate_up: W, down: W },
}

pub struct LayerWeights<W> {
    pub input_norm: W,
    /// q, k and v projections stacked by rows: [(Hq + 2 Hkv) D, H], the layout the rope op splits.
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
    /// [V, H]
    pub lm_head: W,
}

/// Where loaded tensors go: `upload(role, name, tensor)` stores one weight; `progress(bytes)` is told how many
/// checkpoint bytes each tensor took (for a progress bar).
pub struct Sink<'a, W> {
    pub upload: &'a mut dyn FnMut(Role, &str, HostTensor) -> Result<W>,
    pub progress: &'a mut dyn FnMut(u64),
}

impl<W> Sink<'_, W> {
    fn put(&mut self, role: Role, name: &str, t: HostTensor) -> Result<W> {
        let bytes = t.nbytes();
        let w = (self.upload)(role, name, t)?;
        (self.progress)(bytes);
        Ok(w)
    }
}

impl<W> Weights<W> {
    /// Streams every tensor the model needs from `ck` into `sink`, checking shapes against `ck.config`.
    pub fn load(ck: &Checkpoint, sink: &mut Sink<'_, W>) -> Result<Self> {
        let c = &ck.config;
        let (v, h) = (c.vocab_size, c.hidden_size);
        let embed = sink.put(
            Role::Embedding,
            "model.embed_tokens.weight",
            ck.read_host("model.embed_tokens.weight", &[v, h])?,
        )?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            layers.push(load_layer(ck, c, i, sink)?);
        }
        let norm = sink.put(Role::Norm, "model.norm.weight", ck.read_host("model.norm.weight", &[h])?)?;
        let head = if c.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let lm_head = sink.put(Role::LmHead, head, ck.read_host(head, &[v, h])?)?;
        if let Some(first) = ck.unread().first() {
            return Err(Error::Weight(format!(
                "tensor `{first}` is in the checkpoint but config.json has no place for it \
                 (num_hidden_layers, moe_layers or num_local_experts disagree with the weights?)"
            )));
        }
        Ok(Weights { embed, layers, norm, lm_head })
    }
}

fn load_layer<W>(ck: &Checkpoint, c: &TextConfig, i: usize, sink: &mut Sink<'_, W>) -> Result<LayerWeights<W>> {
    let p = format!("model.layers.{i}");
    let (h, d) = (c.hidden_size, c.head_dim);
    let (qw, kw) = (c.num_attention_heads * d, c.num_key_value_heads * d);
    let attn = |n: &str, rows: usize| ck.read_host(&format!("{p}.self_attn.{n}_proj.weight"), &[rows, h]);
    let qkv = HostTensor::concat_rows(vec![attn("q", qw)?, attn("k", kw)?, attn("v", kw)?], &format!("{p}.self_attn"))?;
    let input_norm = sink.put(
        Role::Norm,
        &format!("{p}.input_layernorm.weight"),
        ck.read_host(&format!("{p}.input_layernorm.weight"), &[h])?,
    )?;
    let qkv = sink.put(Role::Linear, &format!("{p}.self_attn.qkv"), qkv)?;
    let o_name = format!("{p}.self_attn.o_proj.weight");
    let o = sink.put(Role::Linear, &o_name, ck.read_host(&o_name, &[h, qw])?)?;
    let post_name = format!("{p}.post_attention_layernorm.weight");
    let post_norm = sink.put(Role::Norm, &post_name, ck.read_host(&post_name, &[h])?)?;
    let ff = format!("{p}.feed_forward");
    // gate and up nn.Linear [I, H] stacked into [2I, H] (gate rows first, the order swiglu reads).
    let stack_gate_up = |base: &str, im: usize| -> Result<HostTensor> {
        let g = ck.read_host(&format!("{base}.gate_proj.weight"), &[im, h])?;
        let u = ck.read_host(&format!("{base}.up_proj.weight"), &[im, h])?;
        HostTensor::concat_rows(vec![g, u], base)
    };
    let ffn = match c.ffn[i] {
        Ffn::Dense => {
            let im = c.intermediate_size_mlp;
            let gu = sink.put(Role::Linear, &format!("{ff}.gate_up"), stack_gate_up(&ff, im)?)?;
            let dn = format!("{ff}.down_proj.weight");
            FfnWeights::Dense { gate_up: gu, down: sink.put(Role::Linear, &dn, ck.read_host(&dn, &[h, im])?)? }
        }
        Ffn::Moe => {
            let (e, im) = (c.num_local_experts, c.intermediate_size);
            let router_name = format!("{ff}.router.weight");
            let router = sink.put(Role::Router, &router_name, ck.read_host(&router_name, &[e, h])?)?;
            let (egu, edn) = experts(ck, &ff, e, h, im)?;
            let gate_up = sink.put(Role::ExpertsGateUp, &format!("{ff}.experts.gate_up_proj"), egu)?;
            let down = sink.put(Role::ExpertsDown, &format!("{ff}.experts.down_proj"), edn)?;
            let shared = format!("{ff}.shared_expert");
            let shared_gate_up = sink.put(Role::Linear, &format!("{shared}.gate_up"), stack_gate_up(&shared, im)?)?;
            let sd = format!("{shared}.down_proj.weight");
            let shared_down = sink.put(Role::Linear, &sd, ck.read_host(&sd, &[h, im])?)?;
            FfnWeights::Moe { router, gate_up, down, shared_gate_up, shared_down }
        }
    };
    Ok(LayerWeights { input_norm, qkv, o, post_norm, ffn })
}

/// The routed experts as `(gate_up [E, H, 2I], down [E, I, H])`, from the fused tensors when the checkpoint
/// has them, else from per-expert `experts.{j}.{gate,up,down}_proj.weight` (nn.Linear layouts), transposed and
/// stacked in their stored dtype (one layer's experts at a time).
fn experts(ck: &Checkpoint, ff: &str, e: usize, h: usize, im: usize) -> Result<(HostTensor, HostTensor)> {
    let fused = format!("{ff}.experts.gate_up_proj");
    if ck.has(&fused) || !ck.has(&format!("{ff}.experts.0.gate_proj.weight")) {
        // The fused layout is the contract's: a missing tensor is reported under its fused name.
        let down = ck.read_host(&format!("{ff}.experts.down_proj"), &[e, im, h])?;
        return Ok((ck.read_host(&fused, &[e, h, 2 * im])?, down));
    }
    // Grown as the experts are read (each checked against the file first), never sized from config.json.
    let (mut gu, mut dn) = (Vec::new(), Vec::new());
    for j in 0..e {
        let one = |n: &str, shape: &[usize]| ck.read_host(&format!("{ff}.experts.{j}.{n}_proj.weight"), shape);
        // x @ gate_up uses [H, 2I]: the transpose of the stacked nn.Linear [2I, H] (gate rows first).
        let stacked = HostTensor::concat_rows(vec![one("gate", &[im, h])?, one("up", &[im, h])?], ff)?;
        gu.push(stacked.transpose2());
        dn.push(one("down", &[h, im])?.transpose2());
    }
    Ok((HostTensor::stack(gu, ff)?, HostTensor::stack(dn, ff)?))
}
