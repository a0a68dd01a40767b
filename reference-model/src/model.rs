//! The Llama 4 text decoder, written once over [`Backend`]:
//! ```text
//! X = embed(ids)
//! per layer i:  Y = rmsnorm(X += F)                          (no add before layer 0)
//!               F = o_proj(attention(rope(qkv_proj(Y))))    (k, v written to the layer's paged cache)
//!               Y = rmsnorm(X += F);  F = moe(Y) or mlp(Y)
//! Y = rmsnorm(X += F); logits = lm_head(Y[logit rows]); tokens = argmax(logits)
//! ```
//! An MoE block and the norm after it are one backend call ([`Backend::moe_norm`]), so a backend can fuse them.
//! One pass serves any step (prefill, continued prefill, decode, or a mix of sequences): the ops see only the
//! step's metadata. Sequences, the KV cache and sampling are the engine's ([`crate::engine`]).

use crate::backend::{Act, Backend, KvKind, LayerSpec, MoeRef};
use crate::checkpoint::Checkpoint;
use crate::config::TextConfig;
use crate::error::Result;
use crate::weights::{FfnWeights, Sink, Weights};
use llama4_contract::HeadLayout;
use std::path::Path;

pub use crate::engine::{argmax, Engine, Generation, Logits};

pub struct Model<B: Backend> {
    pub backend: B,
    pub config: TextConfig,
    pub(crate) weights: Weights<B::Weight>,
    pub(crate) layers: Vec<LayerSpec>,
    pub heads: HeadLayout,
}

impl<B: Backend> Model<B> {
    /// Opens a checkpoint directory and streams its weights into `backend`.
    pub fn load(dir: &Path, backend: B) -> Result<Self> {
        Self::load_with_progress(dir, backend, &mut |_, _| {})
    }

    /// [`Model::load`], calling `progress(done, total)` in checkpoint bytes after each tensor.
    pub fn load_with_progress(dir: &Path, backend: B, progress: &mut dyn FnMut(u64, u64)) -> Result<Self> {
        let ck = Checkpoint::open(dir)?;
        backend.check_config(&ck.config)?;
        let total = ck.text_tensor_bytes();
        let mut done = 0u64;
        let weights = {
            let mut upload = |role, name: &str, t| backend.upload(role, name, t);
            let mut step = |n: u64| {
                done += n;
                progress(done, total);
            };
            Weights::load(&ck, &mut Sink { upload: &mut upload, progress: &mut step })?
        };
        Self::from_weights(ck.config, backend, weights)
    }

    /// A model over weights already in `backend` (loaded or synthetic).
    pub fn from_weights(c: TextConfig, backend: B, weights: Weights<B::Weight>) -> Result<Self> {
        let layers = layer_specs(&c);
        let heads = c.head_layout();
        Ok(Model { backend, config: c, weights, layers, heads })
    }

    /// Calls `f(role, weight)` for every weight of the model (memory accounting).
    pub fn for_each_weight(&self, f: &mut dyn FnMut(crate::weights::Role, &B::Weight)) {
        use crate::weights::Role;
        let w = &self.weights;
        f(Role::Embedding, &w.embed);
        for l in &w.layers {
            f(Role::Norm, &l.input_norm);
            f(Role::Linear, &l.qkv);
            f(Role::Linear, &l.o);
            f(Role::Norm, &l.post_norm);
            match &l.ffn {
                FfnWeights::Dense { gate_up, down } => {
                    f(Role::Linear, gate_up);
                    f(Role::Linear, down);
                }
                FfnWeights::Moe { router, gate_up, down, shared_gate_up, shared_down } => {
                    f(Role::Router, router);
                    f(Role::ExpertsGateUp, gate_up);
                    f(Role::ExpertsDown, down);
                    f(Role::Linear, shared_gate_up);
                    f(Role::Linear, shared_down);
                }
            }
        }
        f(Role::Norm, &w.norm);
        f(Role::LmHead, &w.lm_head);
    }

    /// The layer plan: what each layer does before attention, its mask and its KV pool.
    pub fn layer_specs(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// One forward pass over the step whose metadata the backend holds.
    pub(crate) fn run_step(&self, st: &mut B::State) -> Result<()> {
        let b = &self.backend;
        let eps = self.config.rms_norm_eps;
        let layers = &self.weights.layers;
        b.embed(st, &self.weights.embed)?;
        // Each layer's FFN is followed by the next norm (the next layer's input norm, or the final one), which
        // takes its output as the residual add: for an MoE layer the pair is one call, so a backend can fuse it.
        b.norm(st, layers.first().map_or(&self.weights.norm, |l| &l.input_norm), eps, false)?;
        for (i, lw) in layers.iter().enumerate() {
            b.linear(st, Act::Y, Act::Qkv, &lw.qkv)?;
            b.rope(st, i, &self.layers[i])?;
            b.attention(st, i, &self.layers[i])?;
            b.linear(st, Act::Attn, Act::F, &lw.o)?;
            b.norm(st, &lw.post_norm, eps, true)?;
            let next = layers.get(i + 1).map_or(&self.weights.norm, |l| &l.input_norm);
            match &lw.ffn {
                FfnWeights::Dense { gate_up, down } => {
                    b.mlp(st, gate_up, down)?;
                    b.norm(st, next, eps, true)?
                }
                FfnWeights::Moe { router, gate_up, down, shared_gate_up, shared_down } => {
                    let top_k = self.config.num_experts_per_tok;
                    b.moe_norm(st, MoeRef { router, gate_up, down, shared_gate_up, shared_down, top_k }, next, eps)?
                }
            }
        }
        b.logits(st, &self.weights.lm_head)
    }
}

fn layer_specs(c: &TextConfig) -> Vec<LayerSpec> {
    (0..c.num_hidden_layers)
        .map(|i| LayerSpec { kind: c.layer_kind(i), mask: c.masks[i], kv: KvKind::of(c.masks[i]) })
        .collect()
}
