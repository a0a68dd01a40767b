//! The interface the model is written against. The decoder loop ([`crate::model`]), the KV-cache policy
//! ([`crate::kv_cache`]), batching and sampling ([`crate::engine`]) exist once; [`crate::cpu::Cpu`] (the
//! plain-Rust oracle, f32) and [`crate::gpu::Gpu`] (the fused kernels, bf16 and FP8) implement it alike.
//!
//! The unit of work is a *step*: several sequences, each bringing new tokens (a fresh prefill, a prefill that
//! continues its cache, or a decode of one or a few tokens), flattened into one token batch. The engine builds
//! the step's metadata ([`StepMeta`]: ids, positions, KV slots, cu_seqlens, seq_lens, block tables, the rows
//! whose logits are wanted) on the host once; [`Backend::set_step`] uploads it once; then the ops run over the
//! backend's own buffers ([`Backend::State`]), planned once from [`Plan`] (nothing is allocated per op), and
//! read or write the named activations of [`Act`]. A backend that can record the ops of a step and replay them
//! (CUDA graphs) says so through [`Backend::capture`]; the engine replays decode steps per batch-size bucket.
//!
//! Room for what comes next, by design rather than by code: image features would replace the embedding rows
//! of placeholder tokens right after [`Backend::embed`] (early fusion); an FP8 KV cache is a [`KvDtype`]
//! variant the rope and attention ops of a backend switch on; experts sharded across GPUs hook into
//! [`Backend::moe`], whose routing and combine are the points where a dispatch and a combine all-to-all go, the
//! decoder loop unchanged.

use crate::config::TextConfig;
use crate::error::Result;
use crate::host_tensor::HostTensor;
use crate::weights::Role;
use llama4_contract::{LayerKind, Mask};
use ndarray::Array2;

/// Which block pool (and block table) a layer's KV cache uses: global layers keep every position, chunked
/// layers only the current chunk, so the two kinds are paged separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvKind {
    Global = 0,
    Chunked = 1,
}

impl KvKind {
    /// The pool a layer with `mask` pages its KV cache in.
    pub fn of(mask: Mask) -> KvKind {
        match mask {
            Mask::Causal => KvKind::Global,
            Mask::Chunked { .. } => KvKind::Chunked,
        }
    }
}

/// KV cache element type (room for an FP8 cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// The activation dtype: f32 on the CPU, bf16 on the GPU.
    #[default]
    Activation,
}

/// What one attention layer does, resolved from the config.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    pub kind: LayerKind,
    pub mask: Mask,
    pub kv: KvKind,
}

/// Limits a backend plans its buffers from, fixed for an engine's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Tokens in one step (longer prompts are prefilled in several steps).
    pub max_tokens: usize,
    /// Sequences in one step.
    pub max_seqs: usize,
    /// Positions one sequence may reach.
    pub max_context: usize,
    /// Rows of logits one step may compute.
    pub max_logit_rows: usize,
    /// KV slots per block.
    pub block_size: usize,
    pub kv_dtype: KvDtype,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tokens: 512,
            max_seqs: 8,
            max_context: 2048,
            max_logit_rows: 512,
            block_size: 16,
            kv_dtype: KvDtype::Activation,
        }
    }
}

/// Everything a backend sizes its state from.
#[derive(Clone, Debug)]
pub struct Plan {
    pub limits: Limits,
    /// Blocks in each pool ([`KvKind`] order); 0 for a kind no layer uses.
    pub blocks: [usize; 2],
    /// Columns of every block table: `ceil(max_context / block_size)`.
    pub max_blocks: usize,
    pub layers: Vec<LayerSpec>,
}

impl Plan {
    /// KV slots of all layers together (each layer holds its kind's pool).
    pub fn kv_slots(&self) -> usize {
        self.layers.iter().map(|s| self.blocks[s.kv as usize] * self.limits.block_size).sum()
    }
}

/// The shape of one step as the ops see it. A graph-replayed decode step is padded to its bucket: padding
/// tokens write no KV (slot -1) and belong to padding sequences of no queries and no keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StepShape {
    /// Token rows.
    pub tokens: usize,
    /// Sequences (entries of cu_seqlens - 1).
    pub seqs: usize,
    /// Bound on every sequence's new tokens.
    pub max_q_len: usize,
    /// Rows whose logits are computed.
    pub logit_rows: usize,
}

/// The host-side metadata of one step, built once by the engine and uploaded once by the backend.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepMeta {
    pub shape: Option<StepShape>,
    /// [tokens] token ids.
    pub ids: Vec<i32>,
    /// [tokens] absolute positions.
    pub pos: Vec<i32>,
    /// [seqs + 1] query rows of each sequence.
    pub cu_seqlens: Vec<i32>,
    /// [seqs] keys per sequence after this step (its new tokens included).
    pub seq_lens: Vec<i32>,
    /// Per [`KvKind`]: [tokens] the KV slot each token writes (-1: none).
    pub slots: [Vec<i64>; 2],
    /// Per [`KvKind`]: [seqs, max_blocks] block ids (-1: no block; never read by the kernels).
    pub block_tables: [Vec<i32>; 2],
    /// Row stride of the block tables.
    pub max_blocks: usize,
    /// [logit_rows] token rows whose logits are computed.
    pub logit_rows: Vec<i32>,
}

impl StepMeta {
    pub fn shape(&self) -> StepShape {
        self.shape.expect("StepMeta::shape is set by the engine")
    }
}

/// Activations the ops read and write, each `[tokens, width]` over the rows of the current step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// The residual stream [T, H].
    X,
    /// Normed activations [T, H] (input of the projections and of the FFN).
    Y,
    /// The fused q/k/v projection [T, (Hq + 2 Hkv) D].
    Qkv,
    /// Attention output before o_proj [T, Hq D].
    Attn,
    /// A block's output [T, H], added to the residual by the next norm.
    F,
}

/// How a synthetic weight is drawn ([`Backend::synthesize`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Every element 1 (norm weights).
    Ones,
    /// Elements `0..n` of the stream `seed` of `llama4_reference::random`, in (-bound, bound), rounded to bf16
    /// (in the tensor's row-major order, so every backend draws the same bits).
    Uniform { seed: u64, bound: f32 },
}

impl Init {
    /// The tensor on the host, in bf16 (what a backend without its own generator uploads).
    pub fn host(self, shape: &[usize]) -> Result<HostTensor> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let n = n.ok_or_else(|| crate::Error::Input(format!("a synthetic tensor of shape {shape:?} overflows")))?;
        let data = match self {
            Init::Ones => vec![half::bf16::ONE; n],
            Init::Uniform { seed, bound } => llama4_reference::random::uniform_bf16(n, seed, 0, bound),
        };
        Ok(HostTensor { shape: shape.to_vec(), data: crate::host_tensor::HostData::Bf16(data) })
    }
}

/// The weights of one MoE block, borrowed from the model (layouts as in [`crate::weights::FfnWeights::Moe`]).
pub struct MoeRef<'a, W> {
    pub router: &'a W,
    pub gate_up: &'a W,
    pub down: &'a W,
    pub shared_gate_up: &'a W,
    pub shared_down: &'a W,
    /// Experts per token.
    pub top_k: usize,
}

pub trait Backend {
    /// A weight in the backend's memory.
    type Weight;
    /// Activations, step metadata and the KV pools, planned once.
    type State;
    /// A recorded step that can be replayed.
    type Graph;

    /// A short name for logs ("cpu", "cuda").
    fn name(&self) -> &'static str;

    /// Refuses, with one line naming the limit, a config this backend's ops cannot serve.
    fn check_config(&self, config: &TextConfig) -> Result<()>;

    /// Stores one weight of the checkpoint (in its stored dtype) the backend's way for its role.
    fn upload(&self, role: Role, name: &str, t: HostTensor) -> Result<Self::Weight>;

    /// A synthetic weight of `shape` drawn as `init`, stored as [`Backend::upload`] would store it (full-size
    /// benchmarks without a checkpoint). The default draws it on the host; a backend with a device generator
    /// draws the same bits where the weight lives.
    fn synthesize(&self, role: Role, name: &str, shape: &[usize], init: Init) -> Result<Self::Weight> {
        self.upload(role, name, init.host(shape)?)
    }

    /// Plans every buffer a step can need.
    fn plan(&self, config: &TextConfig, plan: &Plan) -> Result<Self::State>;

    /// Uploads the step's metadata (once per step).
    fn set_step(&self, st: &mut Self::State, meta: &StepMeta) -> Result<()>;

    /// `X = table[ids]`.
    fn embed(&self, st: &mut Self::State, table: &Self::Weight) -> Result<()>;

    /// `Y = rmsnorm(X) * w`, after `X += F` when `add` (the residual add fused into the next norm).
    fn norm(&self, st: &mut Self::State, w: &Self::Weight, eps: f32, add: bool) -> Result<()>;

    /// `output = input @ w^T` for an nn.Linear weight.
    fn linear(&self, st: &mut Self::State, input: Act, output: Act, w: &Self::Weight) -> Result<()>;

    /// Splits `Qkv`, applies the layer's RoPE and QK norm or its query temperature at the step's positions,
    /// keeps q for [`Backend::attention`] and writes k and v into `layer`'s cache at the step's slots.
    fn rope(&self, st: &mut Self::State, layer: usize, spec: &LayerSpec) -> Result<()>;

    /// `Attn` = attention of the kept q over `layer`'s cache through the block table of `spec.kv`.
    fn attention(&self, st: &mut Self::State, layer: usize, spec: &LayerSpec) -> Result<()>;

    /// `F = down(silu(gate(Y)) * up(Y))` with gate|up stacked `[2I, H]`.
    fn mlp(&self, st: &mut Self::State, gate_up: &Self::Weight, down: &Self::Weight) -> Result<()>;

    /// `F` = the Llama 4 MoE block of `Y` (sigmoid top-k routing on the input, plus the shared expert).
    fn moe(&self, st: &mut Self::State, w: MoeRef<'_, Self::Weight>) -> Result<()>;

    /// [`Backend::moe`], then [`Backend::norm`] with the add (`X += F; Y = rmsnorm(X) * norm`): the decoder's MoE
    /// block and the norm that follows it (the next layer's input norm, or the final one). A backend may fuse the
    /// MoE block's last step with the norm, in which case `F` is not written; the results are the pair's.
    fn moe_norm(&self, st: &mut Self::State, w: MoeRef<'_, Self::Weight>, norm: &Self::Weight, eps: f32) -> Result<()> {
        self.moe(st, w)?;
        self.norm(st, norm, eps, true)
    }

    /// Logits of the step's logit rows of `Y` (`Y[rows] @ lm_head^T`, f32) and their argmax, on the device.
    fn logits(&self, st: &mut Self::State, lm_head: &Self::Weight) -> Result<()>;

    /// The argmax of each logit row (lowest index on ties; -1 for a row holding a NaN), waiting for the step.
    fn tokens(&self, st: &mut Self::State) -> Result<Vec<i32>>;

    /// The logit rows, `[logit_rows, V]` f32 (only when asked for: on the GPU this is a device-to-host copy).
    fn read_logits(&self, st: &mut Self::State) -> Result<Array2<f32>>;

    /// Records the ops `f` runs on `st` for replay. A backend without graphs returns `Ok(None)` without
    /// calling `f`; the caller then runs the ops directly.
    fn capture(
        &self,
        st: &mut Self::State,
        f: &mut dyn FnMut(&mut Self::State) -> Result<()>,
    ) -> Result<Option<Self::Graph>>;

    /// Runs a recorded step on the metadata last given to [`Backend::set_step`].
    fn replay(&self, st: &mut Self::State, g: &Self::Graph) -> Result<()>;
}
