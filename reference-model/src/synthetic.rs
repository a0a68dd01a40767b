//! Models at real sizes without a checkpoint: the released configs ([`Preset`]) and random weights drawn by the
//! backend where they live ([`Backend::synthesize`]; on the GPU, on the device, so Scout's 109B parameters
//! take seconds, not a 200 GB upload). The weights have the checkpoint's roles, layouts and shapes, and go
//! through the same storage path as loaded ones (FP8 routed experts by `weight_prep`, `--fp8-dense` by
//! `quant_fp8`): a synthetic model runs exactly the kernels, bytes and FLOPs of the real one. Its logits mean
//! nothing; its speed is the real model's.
//!
//! Every tensor draws its own stream (`llama4_reference::random::seed_for(name, seed)`), elements in (-a, a)
//! with `a = sqrt(3 / fan_in)` (unit-variance outputs for unit-variance inputs, so 48 layers stay finite), the
//! embedding in (-1, 1), norm weights 1. The same seed gives the same bits on every backend.

use crate::backend::{Backend, Init};
use crate::config::{Ffn, TextConfig};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::weights::{FfnWeights, LayerWeights, Role, Weights};
use llama4_reference::random::seed_for;

/// A released model's text config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Llama 4 Scout 17B-16E (Instruct): 16 routed experts in every layer.
    Scout,
    /// Llama 4 Maverick 17B-128E (Instruct): 128 routed experts in every other layer, dense FFNs between.
    Maverick,
}

impl Preset {
    pub fn parse(s: &str) -> Result<Preset> {
        match s {
            "scout" => Ok(Preset::Scout),
            "maverick" => Ok(Preset::Maverick),
            _ => Err(Error::Input(format!("unknown synthetic model `{s}` (scout or maverick)"))),
        }
    }

    /// The text config of the release (../shared/spec/llama4-text.md), with `layers` decoder layers when given
    /// (the first `layers` of the full model: the same layer pattern, for runs that do not need all 48).
    pub fn config(self, layers: Option<usize>) -> Result<TextConfig> {
        let layers = layers.unwrap_or(48);
        if layers == 0 {
            return Err(Error::Input("a synthetic model needs at least one layer".into()));
        }
        // The two releases differ in experts, the MoE interleave, QK norm and RoPE scaling.
        let (experts, step, qk_norm, scaling) = match self {
            Preset::Scout => (
                16,
                1,
                true,
                r#"{"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                "original_max_position_embeddings": 8192}"#,
            ),
            Preset::Maverick => (128, 2, false, "null"),
        };
        let json = format!(
            r#"{{"vocab_size": 202048, "hidden_size": 5120, "num_hidden_layers": {layers},
            "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
            "intermediate_size": 8192, "intermediate_size_mlp": 16384, "num_local_experts": {experts},
            "num_experts_per_tok": 1, "interleave_moe_layer_step": {step}, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "rope_scaling": {scaling}, "use_qk_norm": {qk_norm},
            "attn_temperature_tuning": true, "floor_scale": 8192, "attn_scale": 0.1,
            "attention_chunk_size": 8192, "tie_word_embeddings": false}}"#
        );
        TextConfig::parse(&json)
    }
}

type Synth<'a, W> = dyn FnMut(Role, &str, &[usize], Init) -> Result<W> + 'a;

/// Draws every weight of `c` through `synth(role, name, shape, init)`, in the layouts of [`Weights::load`].
pub fn weights<W>(c: &TextConfig, seed: u64, synth: &mut Synth<'_, W>) -> Result<Weights<W>> {
    let (v, h, d) = (c.vocab_size, c.hidden_size, c.head_dim);
    // A weight whose outputs sum `fan_in` products (1 for the embedding table, 0 for a norm: ones).
    let mut draw = |role: Role, name: &str, shape: &[usize], fan_in: usize| {
        let init = match fan_in {
            0 => Init::Ones,
            n => Init::Uniform { seed: seed_for(name, seed), bound: (3.0 / n as f32).sqrt().min(1.0) },
        };
        synth(role, name, shape, init)
    };
    let embed_name = "model.embed_tokens.weight";
    let embed = draw(Role::Embedding, embed_name, &[v, h], 1)?;
    let (qw, kw) = (c.num_attention_heads * d, c.num_key_value_heads * d);
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let input_norm = draw(Role::Norm, &format!("{p}.input_layernorm.weight"), &[h], 0)?;
        let qkv = draw(Role::Linear, &format!("{p}.self_attn.qkv"), &[qw + 2 * kw, h], h)?;
        let o = draw(Role::Linear, &format!("{p}.self_attn.o_proj.weight"), &[h, qw], qw)?;
        let post_norm = draw(Role::Norm, &format!("{p}.post_attention_layernorm.weight"), &[h], 0)?;
        let ff = format!("{p}.feed_forward");
        let ffn = match c.ffn[i] {
            Ffn::Dense => {
                let im = c.intermediate_size_mlp;
                let gate_up = draw(Role::Linear, &format!("{ff}.gate_up"), &[2 * im, h], h)?;
                let down = draw(Role::Linear, &format!("{ff}.down_proj.weight"), &[h, im], im)?;
                FfnWeights::Dense { gate_up, down }
            }
            Ffn::Moe => {
                let (e, im) = (c.num_local_experts, c.intermediate_size);
                let router = draw(Role::Router, &format!("{ff}.router.weight"), &[e, h], h)?;
                let gate_up = draw(Role::ExpertsGateUp, &format!("{ff}.experts.gate_up_proj"), &[e, h, 2 * im], h)?;
                let down = draw(Role::ExpertsDown, &format!("{ff}.experts.down_proj"), &[e, im, h], im)?;
                let sh = format!("{ff}.shared_expert");
                let shared_gate_up = draw(Role::Linear, &format!("{sh}.gate_up"), &[2 * im, h], h)?;
                let shared_down = draw(Role::Linear, &format!("{sh}.down_proj.weight"), &[h, im], im)?;
                FfnWeights::Moe { router, gate_up, down, shared_gate_up, shared_down }
            }
        };
        layers.push(LayerWeights { input_norm, qkv, o, post_norm, ffn });
    }
    let norm = draw(Role::Norm, "model.norm.weight", &[h], 0)?;
    // Tied embeddings draw the embedding's own stream again: the same bits.
    let lm_head = match c.tie_word_embeddings {
        true => draw(Role::LmHead, embed_name, &[v, h], 1)?,
        false => draw(Role::LmHead, "lm_head.weight", &[v, h], h)?,
    };
    Ok(Weights { embed, layers, norm, lm_head })
}

impl<B: Backend> Model<B> {
    /// A model of config `c` with synthetic weights drawn from `seed` by the backend, calling
    /// `progress(done, total)` in weights after each one.
    pub fn synthetic(c: TextConfig, backend: B, seed: u64, progress: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        backend.check_config(&c)?;
        let total = 3 + c.num_hidden_layers * 6 + c.ffn.iter().filter(|f| **f == Ffn::Moe).count() * 3;
        let mut done = 0;
        let weights = weights(&c, seed, &mut |role, name, shape, init| {
            let w = backend.synthesize(role, name, shape, init).map_err(|e| match e {
                Error::Backend(m) => Error::Backend(format!("synthetic {name} {shape:?}: {m}")),
                e => e,
            })?;
            done += 1;
            progress(done, total);
            Ok(w)
        })?;
        Model::from_weights(c, backend, weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_the_released_configs() {
        let s = Preset::Scout.config(None).unwrap();
        assert_eq!((s.num_hidden_layers, s.num_local_experts, s.hidden_size, s.vocab_size), (48, 16, 5120, 202048));
        assert!(s.ffn.iter().all(|f| *f == Ffn::Moe) && s.use_qk_norm && s.rope_scaling.is_some());
        assert_eq!(s.uses_rope.iter().filter(|r| !**r).count(), 12, "every 4th layer NoPE");
        assert!(!s.uses_rope[3] && s.uses_rope[4]);
        let m = Preset::Maverick.config(Some(4)).unwrap();
        assert_eq!((m.num_hidden_layers, m.num_local_experts), (4, 128));
        assert_eq!(m.ffn, vec![Ffn::Dense, Ffn::Moe, Ffn::Dense, Ffn::Moe]);
        assert!(!m.use_qk_norm && m.rope_scaling.is_none());
        assert!(Preset::Scout.config(Some(0)).is_err() && Preset::parse("llama").is_err());
    }
}
