//! config.json → [`TextConfig`], following `Llama4TextConfig` of transformers 5.x and the model contract.
//!
//! Accepted layouts: a text config at the top level, or a multimodal one with the text config under
//! `text_config`; RoPE as `rope_theta` + `rope_scaling` (published checkpoints) or `rope_parameters`
//! (transformers 5.x `save_pretrained`). Unknown keys are ignored.
//!
//! Required: vocab_size, hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, a RoPE theta,
//! num_local_experts and intermediate_size when a layer is MoE, intermediate_size_mlp when a layer is dense,
//! attention_chunk_size when a layer is chunked. Everything else takes transformers' default, listed in
//! [`TextConfig::from_json`], because the checkpoint was produced against those defaults.

use crate::config_raw::{Int, RawText};
use crate::error::{Error, Result};
use llama4_contract::{HeadLayout, LayerKind, Llama3Scaling, Temperature};
use llama4_reference::rope::{inv_freq, temperature};
use serde_json::Value;

pub use llama4_contract::Mask;

/// The feed-forward block of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ffn {
    Moe,
    Dense,
}

/// Everything the text model needs from config.json, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Expert and shared-expert width; 0 when no layer is MoE.
    pub intermediate_size: usize,
    /// Dense FFN width; 0 when every layer is MoE.
    pub intermediate_size_mlp: usize,
    /// Routed experts; 0 when no layer is MoE.
    pub num_local_experts: usize,
    /// Experts per token (1 in the released models); each chosen expert sees y scaled by its own sigmoid.
    pub num_experts_per_tok: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3Scaling>,
    pub use_qk_norm: bool,
    pub attn_temperature_tuning: bool,
    pub floor_scale: f32,
    pub attn_scale: f32,
    /// None when no layer is chunked.
    pub attention_chunk_size: Option<usize>,
    pub tie_word_embeddings: bool,
    /// Per layer: does it use RoPE (`no_rope_layers[i] == 1`)?
    pub uses_rope: Vec<bool>,
    /// Per layer: its attention mask, chunked ones carrying `attention_chunk_size`.
    pub masks: Vec<Mask>,
    pub ffn: Vec<Ffn>,
}

impl TextConfig {
    /// Parses config.json text.
    pub fn parse(text: &str) -> Result<Self> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json is not JSON: {e}")))?;
        Self::from_json(&v)
    }

    /// Reads a parsed config.json. Defaults where a key is absent (transformers' own): head_dim 128 (null:
    /// hidden_size / num_attention_heads), rms_norm_eps 1e-5, interleave_moe_layer_step 1,
    /// no_rope_layer_interval 4, use_qk_norm true, attn_temperature_tuning true, floor_scale 8192,
    /// attn_scale 0.1, num_experts_per_tok 1, tie_word_embeddings false, hidden_act "silu", attention_bias false.
    pub fn from_json(v: &Value) -> Result<Self> {
        if !v.is_object() {
            return Err(Error::Config("config.json is not a JSON object".into()));
        }
        // Multimodal checkpoints nest the text model; their top level has no text sizes of its own.
        let (v, name) = match v.get("text_config") {
            Some(t) if t.is_object() => (t, "text_config"),
            Some(_) => return Err(Error::Config("text_config is not a JSON object".into())),
            None => (v, "config.json"),
        };
        let raw = crate::config_raw::read(v, name)?;
        let c = Keys { raw: &raw, name };
        let req = |k: &str, x: Option<Int>| c.req(k, x).and_then(|n| c.positive(k, n));
        let vocab_size = req("vocab_size", raw.vocab_size)?;
        let hidden_size = req("hidden_size", raw.hidden_size)?;
        let layers = req("num_hidden_layers", raw.num_hidden_layers)?;
        let heads = req("num_attention_heads", raw.num_attention_heads)?;
        let kv_heads = req("num_key_value_heads", raw.num_key_value_heads)?;
        if heads % kv_heads != 0 {
            return Err(
                c.err(format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"))
            );
        }
        let head_dim = match raw.head_dim {
            None => 128,
            Some(None) => hidden_size / heads,
            Some(Some(Int(d))) => d,
        };
        c.positive("head_dim", head_dim)?;
        if raw.hidden_act.as_ref().is_some_and(|a| a.0 != "silu") {
            return Err(c.err("hidden_act must be \"silu\" (the only activation Llama 4 uses)".into()));
        }
        if raw.attention_bias.is_some_and(|b| b.0) {
            return Err(c.err("attention_bias true is not supported (Llama 4 has no attention biases)".into()));
        }
        let num_experts_per_tok = raw.num_experts_per_tok.map_or(1, |n| n.0);

        let ffn = moe_layers(&c, layers)?;
        let uses_rope = rope_layers(&c, layers)?;
        let chunk_size = || match c.req("attention_chunk_size", raw.attention_chunk_size)? {
            // Not capped: a chunk size allocates nothing.
            0 => Err(c.err("`attention_chunk_size` is 0".into())),
            n => Ok(n),
        };
        let masks = layer_masks(&c, &uses_rope, chunk_size)?;
        let attention_chunk_size = masks.iter().find_map(|m| match *m {
            Mask::Chunked { chunk } => Some(chunk),
            Mask::Causal => None,
        });
        let any_moe = ffn.contains(&Ffn::Moe);
        let any_dense = ffn.contains(&Ffn::Dense);
        let cond = |k: &str, x: Option<Int>, needed: bool| if needed { req(k, x) } else { Ok(x.map_or(0, |n| n.0)) };
        let intermediate_size = cond("intermediate_size", raw.intermediate_size, any_moe)?;
        let intermediate_size_mlp = cond("intermediate_size_mlp", raw.intermediate_size_mlp, any_dense)?;
        let num_local_experts = cond("num_local_experts", raw.num_local_experts, any_moe)?;
        if any_moe && !(1..=num_local_experts).contains(&num_experts_per_tok) {
            return Err(c.err(format!(
                "num_experts_per_tok {num_experts_per_tok} must be between 1 and num_local_experts ({num_local_experts})"
            )));
        }
        let (rope_theta, rope_scaling) = crate::config_rope::rope(&c)?;
        if uses_rope.contains(&true) {
            if head_dim % 2 != 0 {
                return Err(c.err(format!("head_dim {head_dim} is odd: RoPE rotates pairs")));
            }
            crate::config_rope::check_angles(&c, rope_theta, head_dim, rope_scaling)?;
        }
        let floor_scale = raw.floor_scale.map_or(8192.0, |x| x.f32());
        let attn_scale = raw.attn_scale.map_or(0.1, |x| x.f32());
        let attn_temperature_tuning = raw.attn_temperature_tuning.is_none_or(|f| f.0);
        if attn_temperature_tuning && uses_rope.contains(&false) {
            if floor_scale <= 0.0 {
                return Err(c.err(format!("floor_scale {floor_scale} must be positive")));
            }
            // The temperature grows with the position: it must stay finite up to the last one a step can hold.
            let t = temperature(MAX_POSITION, floor_scale, attn_scale);
            if !t.is_finite() {
                return Err(c.err(format!(
                    "floor_scale {floor_scale:?} and attn_scale {attn_scale:?} make the NoPE query temperature {t} at \
                     position {MAX_POSITION}"
                )));
            }
        }
        let rms_norm_eps = raw.rms_norm_eps.map_or(1e-5, |x| x.f32());
        if rms_norm_eps < 0.0 {
            return Err(c.err(format!("rms_norm_eps {rms_norm_eps} is negative")));
        }
        Ok(TextConfig {
            vocab_size,
            hidden_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            intermediate_size,
            intermediate_size_mlp,
            num_local_experts,
            num_experts_per_tok,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            use_qk_norm: raw.use_qk_norm.is_none_or(|b| b.0),
            attn_temperature_tuning,
            floor_scale,
            attn_scale,
            attention_chunk_size,
            tie_word_embeddings: raw.tie_word_embeddings.is_some_and(|b| b.0),
            uses_rope,
            masks,
            ffn,
        })
    }

    /// The attention heads of every layer.
    pub fn head_layout(&self) -> HeadLayout {
        HeadLayout { n_heads: self.num_attention_heads, n_kv_heads: self.num_key_value_heads, head_dim: self.head_dim }
    }

    /// What layer `i` does to q and k before attention (the frequencies are the reference's).
    pub fn layer_kind(&self, i: usize) -> LayerKind {
        if self.uses_rope[i] {
            LayerKind::Rope {
                inv_freq: inv_freq(self.rope_theta, self.head_dim, self.rope_scaling),
                qk_norm: self.use_qk_norm.then_some(self.rms_norm_eps),
            }
        } else {
            let t = Temperature { floor_scale: self.floor_scale, attn_scale: self.attn_scale };
            LayerKind::NoPe { temperature: self.attn_temperature_tuning.then_some(t) }
        }
    }
}

/// The last position a sequence can reach (positions are i32 on every backend).
pub const MAX_POSITION: u32 = i32::MAX as u32;

/// Bounds every size so that a hostile config.json cannot make the parser (or anything sized from the config
/// before the weights are seen) allocate without limit. Real Llama 4: vocab 202048, hidden 5120, 48 layers.
const MAX_DIM: usize = 1 << 24;
const MAX_LAYERS: usize = 1 << 12;
const MAX_HEAD_DIM: usize = 1 << 12;

/// The parsed keys of the text object and the name it is reported under.
pub(crate) struct Keys<'a> {
    pub raw: &'a RawText,
    pub name: &'a str,
}

impl Keys<'_> {
    pub fn err(&self, msg: String) -> Error {
        Error::Config(format!("{}: {msg}", self.name))
    }

    pub fn req(&self, key: &str, x: Option<Int>) -> Result<usize> {
        x.map(|n| n.0).ok_or_else(|| self.err(format!("missing required key `{key}`")))
    }

    fn positive(&self, key: &str, n: usize) -> Result<usize> {
        let max = match key {
            "num_hidden_layers" => MAX_LAYERS,
            "head_dim" => MAX_HEAD_DIM,
            _ => MAX_DIM,
        };
        if n == 0 || n > max {
            return Err(self.err(format!("`{key}` is {n}; it must lie in 1..={max}")));
        }
        Ok(n)
    }
}

/// `moe_layers` if given, else `range(step - 1, L, step)`.
fn moe_layers(c: &Keys, layers: usize) -> Result<Vec<Ffn>> {
    let list = match &c.raw.moe_layers {
        None => {
            let step = c.raw.interleave_moe_layer_step.map_or(1, |n| n.0);
            if step == 0 {
                return Err(c.err("interleave_moe_layer_step is 0 and no moe_layers list is given".into()));
            }
            (step - 1..layers).step_by(step).collect()
        }
        Some(l) => l.0.clone(),
    };
    let mut ffn = vec![Ffn::Dense; layers];
    for &i in &list {
        match ffn.get_mut(i) {
            None => return Err(c.err(format!("moe_layers names layer {i} but num_hidden_layers is {layers}"))),
            Some(f) if *f == Ffn::Moe => return Err(c.err(format!("moe_layers lists layer {i} twice"))),
            Some(f) => *f = Ffn::Moe,
        }
    }
    Ok(ffn)
}

/// `no_rope_layers[i] == 1` means layer i USES RoPE; absent or empty: every `no_rope_layer_interval`-th is NoPE.
fn rope_layers(c: &Keys, layers: usize) -> Result<Vec<bool>> {
    let list = c.raw.no_rope_layers.as_ref().map_or(&[][..], |l| &l.0[..]);
    if list.is_empty() {
        let interval = c.raw.no_rope_layer_interval.map_or(4, |n| n.0);
        if interval == 0 {
            return Err(c.err("no_rope_layer_interval is 0 and no no_rope_layers list is given".into()));
        }
        return Ok((0..layers).map(|i| (i + 1) % interval != 0).collect());
    }
    if list.len() != layers {
        return Err(c.err(format!("no_rope_layers has {} entries for {layers} layers", list.len())));
    }
    list.iter()
        .map(|&f| match f {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(c.err(format!("no_rope_layers holds {f}; entries must be 0 or 1"))),
        })
        .collect()
}

/// transformers picks each layer's mask from `layer_types` when the config has it (5.x writes it), else RoPE
/// layers are chunked and NoPE layers global. Following the same key keeps us equal to the oracle. `chunk` reads
/// attention_chunk_size, which only a config with a chunked layer must have.
fn layer_masks(c: &Keys, uses_rope: &[bool], chunk: impl Fn() -> Result<usize>) -> Result<Vec<Mask>> {
    let Some(items) = &c.raw.layer_types else {
        return uses_rope
            .iter()
            .map(|&r| Ok(if r { Mask::Chunked { chunk: chunk()? } } else { Mask::Causal }))
            .collect();
    };
    if items.len() != uses_rope.len() {
        return Err(c.err(format!("layer_types has {} entries for {} layers", items.len(), uses_rope.len())));
    }
    items
        .iter()
        .map(|t| match t.0.as_str() {
            "chunked_attention" => Ok(Mask::Chunked { chunk: chunk()? }),
            "full_attention" => Ok(Mask::Causal),
            t => Err(c.err(format!("layer_types holds {t:?}; expected \"chunked_attention\" or \"full_attention\""))),
        })
        .collect()
}
