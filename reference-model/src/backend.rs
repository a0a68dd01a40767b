//! The interface the model is written against. The CPU reference implements it now ([`crate::cpu`]); the
//! GPU ops will implement it later, so the decoder loop, the KV-cache policy and the sampling exist once.
//!
//! Activations are row-major matrices `[tokens, features]` in the backend's memory; the backend decides how
//! they are stored. Every op returns `Result` because a device op can fail; on the CPU the shapes are checked
//! at load time, so the ops cannot.

use crate::error::Result;
use llama4_reference::rope::LayerKind;
use ndarray::{Array2, ArrayD};

/// Head geometry of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// The attention mask, with the chunk size resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnMask {
    /// `k <= q` (NoPE layers).
    Causal,
    /// `k <= q && k / chunk == q / chunk` on absolute positions (RoPE layers).
    Chunked(usize),
}

/// The weights of one MoE block, borrowed from the model (layouts as in [`crate::weights::FfnWeights::Moe`]).
pub struct MoeRef<'a, W> {
    pub router: &'a W,
    pub gate_up: &'a W,
    pub down: &'a W,
    pub shared_gate: &'a W,
    pub shared_up: &'a W,
    pub shared_down: &'a W,
    /// Experts per token.
    pub top_k: usize,
}

pub trait Backend {
    /// A weight in the backend's memory.
    type Weight;
    /// An activation matrix `[rows, cols]` in the backend's memory.
    type Act;
    /// One layer's cached keys and values, in insertion order.
    type Kv;

    /// A short name for logs ("cpu").
    fn name(&self) -> &'static str;

    /// Takes ownership of a host weight (f32, any rank) and stores it the backend's way.
    fn upload(&self, w: ArrayD<f32>) -> Result<Self::Weight>;

    /// Rows `table[ids[t]]` of the `[V, H]` embedding table; an id `>= V` is an error.
    fn embed(&self, table: &Self::Weight, ids: &[u32]) -> Result<Self::Act>;

    /// RMSNorm of every row with weight `[H]`.
    fn rmsnorm(&self, x: &Self::Act, w: &Self::Weight, eps: f32) -> Result<Self::Act>;

    /// `x @ w^T` for an nn.Linear weight `[out, in]`.
    fn linear(&self, x: &Self::Act, w: &Self::Weight) -> Result<Self::Act>;

    /// `x += y` (the residual stream).
    fn add_assign(&self, x: &mut Self::Act, y: &Self::Act) -> Result<()>;

    /// The last row of `x`, as a one-row matrix (logits are often wanted only there).
    fn last_row(&self, x: &Self::Act) -> Result<Self::Act>;

    /// Splits the fused projection `[T, (Hq + 2 Hkv) D]` into q `[T, Hq D]`, k and v `[T, Hkv D]`, applying the
    /// layer's RoPE and QK norm or its query temperature at absolute positions `pos`.
    fn prepare_qkv(
        &self,
        qkv: &Self::Act,
        pos: &[u32],
        heads: Heads,
        kind: &LayerKind,
    ) -> Result<(Self::Act, Self::Act, Self::Act)>;

    /// An empty cache for one layer.
    fn kv_new(&self, heads: Heads) -> Result<Self::Kv>;

    /// Appends keys and values `[T, Hkv D]` at the end of the cache.
    fn kv_append(&self, kv: &mut Self::Kv, k: &Self::Act, v: &Self::Act) -> Result<()>;

    /// Drops the `n` oldest entries (a chunked layer leaving a chunk behind).
    fn kv_drop_front(&self, kv: &mut Self::Kv, n: usize) -> Result<()>;

    /// Attention of `q` `[T, Hq D]` at absolute positions `q_pos` over every cached key, whose positions are
    /// `k_pos` in cache order; returns `[T, Hq D]` before the output projection.
    fn attention(
        &self,
        q: &Self::Act,
        kv: &Self::Kv,
        q_pos: &[usize],
        k_pos: &[usize],
        heads: Heads,
        mask: AttnMask,
    ) -> Result<Self::Act>;

    /// Dense SwiGLU FFN with nn.Linear weights gate, up `[I, H]`, down `[H, I]`.
    fn mlp(&self, y: &Self::Act, gate: &Self::Weight, up: &Self::Weight, down: &Self::Weight) -> Result<Self::Act>;

    /// The Llama 4 MoE block (sigmoid top-1 routing on the input, plus the shared expert).
    fn moe(&self, y: &Self::Act, w: MoeRef<'_, Self::Weight>) -> Result<Self::Act>;

    /// Copies an activation back to host memory as f32.
    fn to_host(&self, x: &Self::Act) -> Result<Array2<f32>>;
}
