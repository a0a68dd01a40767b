//! What the attention ops share: the paged KV cache view, the query batch, the mask, and the validation the
//! safe API and the C ABI both go through. The kernels are in kernels/attention_prefill.cu and
//! kernels/attention_decode.cu (ops in ops/attention_prefill.rs and ops/attention_decode.rs); the contract, the
//! device-side checks included, is written once in kernels/attention_params.h. Reference:
//! llama4_reference::attention.
//!
//! Sequence `b` holds `seq_lens[b]` keys in the cache; its queries are the last `q_len(b)` of those positions,
//! so one description covers a fresh prefill, a prefill that continues a cache, and decode.

use crate::error::{ensure, Error, Result};
use crate::ffi::AttentionParams;
use crate::tensor::{bf16, same_device, Tensor, TensorMut};
use cudarc::driver::CudaStream;
use std::ptr;

/// Head dims the kernels are built for.
pub const HEAD_DIMS: [usize; 2] = [64, 128];

pub use llama4_contract::Mask;

/// The kernels' encoding of a mask (`AttentionParams::chunk`): 0 for causal, C for chunked. A trait only because
/// `Mask` lives in llama4-contract, which knows nothing of the kernels.
pub(crate) trait MaskCode {
    fn encode(self, op: &str) -> Result<i32>;
}

impl MaskCode for Mask {
    fn encode(self, op: &str) -> Result<i32> {
        match self {
            Mask::Causal => Ok(0),
            Mask::Chunked { chunk } => {
                ensure!(chunk >= 1, "{op}: a chunked mask needs chunk >= 1");
                ensure!(chunk <= i32::MAX as usize, "{op}: chunk {chunk} exceeds i32");
                Ok(chunk as i32)
            }
        }
    }
}

/// A paged KV cache as the rope op writes it, with the block table of a batch of sequences.
///
/// `k`, `v`: [slots, n_kv_heads, head_dim] bf16. `block_table`: [batch, max_blocks] block ids; key position `p` of
/// sequence `b` is slot `block_table[b, p / block_size] * block_size + p % block_size`. `seq_lens`: [batch] keys
/// per sequence (its new tokens included). A contiguous cache is the identity block table.
pub struct PagedKv<'a, 'b> {
    pub k: &'b Tensor<'a, bf16, 3>,
    pub v: &'b Tensor<'a, bf16, 3>,
    pub block_table: &'b Tensor<'a, i32, 2>,
    pub seq_lens: &'b Tensor<'a, i32, 1>,
    pub block_size: usize,
}

/// The queries of a batch: `q` [total_q, n_heads, head_dim] bf16, rows `cu_seqlens[b] .. cu_seqlens[b + 1]` for
/// sequence `b` (`cu_seqlens`: [batch + 1] i32 on the device), and a host-side bound on every sequence's query
/// count (the kernels size their grids from it without a sync, and check it on the device).
pub struct QueryBatch<'a, 'b> {
    pub q: &'b Tensor<'a, bf16, 3>,
    pub cu_seqlens: &'b Tensor<'a, i32, 1>,
    pub max_q_len: usize,
}

/// Checks that the operands agree with each other and returns the parameters without pointers (the caller fills
/// them in). `out_shape` is the output's shape, which must equal q's.
pub(crate) fn params(
    op: &str,
    queries: &QueryBatch,
    kv: &PagedKv,
    out_shape: [usize; 3],
    mask: Mask,
    softmax_scale: f32,
) -> Result<AttentionParams> {
    let [total_q, n_heads, head_dim] = queries.q.shape();
    let [slots, n_kv_heads, kd] = kv.k.shape();
    ensure!(kv.v.shape() == kv.k.shape(), "{op}: v cache {:?} != k cache {:?}", kv.v.shape(), kv.k.shape());
    ensure!(kd == head_dim, "{op}: q head_dim {head_dim} but the cache's is {kd}");
    ensure!(out_shape == queries.q.shape(), "{op}: out {out_shape:?}, want q's shape {:?}", queries.q.shape());
    if !HEAD_DIMS.contains(&head_dim) {
        return Err(Error::Unsupported(format!("{op}: head_dim {head_dim} (built for {HEAD_DIMS:?})")));
    }
    ensure!(n_heads >= 1 && n_kv_heads >= 1, "{op}: head counts must be positive ({n_heads} q, {n_kv_heads} kv)");
    ensure!(n_heads % n_kv_heads == 0, "{op}: {n_heads} query heads are not a multiple of {n_kv_heads} kv heads");
    let [cu] = queries.cu_seqlens.shape();
    ensure!(cu >= 1, "{op}: cu_seqlens needs batch + 1 >= 1 entries");
    let batch = cu - 1;
    let [tb, max_blocks] = kv.block_table.shape();
    ensure!(tb == batch, "{op}: block_table has {tb} rows for {batch} sequences");
    ensure!(kv.seq_lens.shape() == [batch], "{op}: seq_lens {:?} for {batch} sequences", kv.seq_lens.shape());
    ensure!(kv.block_size >= 1, "{op}: block_size must be positive");
    ensure!(
        slots % kv.block_size == 0,
        "{op}: {slots} cache slots are not a whole number of {}-slot blocks",
        kv.block_size
    );
    ensure!(
        max_blocks.checked_mul(kv.block_size).is_some_and(|n| n <= i32::MAX as usize),
        "{op}: {max_blocks} blocks of {} slots exceed i32 positions",
        kv.block_size
    );
    ensure!(queries.max_q_len <= i32::MAX as usize, "{op}: max_q_len {} exceeds i32", queries.max_q_len);
    ensure!(batch <= i32::MAX as usize && total_q <= i32::MAX as usize, "{op}: batch or total_q exceeds i32");
    ensure!(
        softmax_scale.is_finite() && softmax_scale > 0.0,
        "{op}: softmax_scale {softmax_scale} must be finite and positive"
    );
    Ok(AttentionParams {
        q: ptr::null(),
        k_cache: ptr::null(),
        v_cache: ptr::null(),
        cu_seqlens_q: ptr::null(),
        seq_lens_k: ptr::null(),
        block_table: ptr::null(),
        out: ptr::null_mut(),
        bad_seqs: ptr::null_mut(),
        workspace: ptr::null_mut(),
        workspace_bytes: 0,
        total_q: total_q as i64,
        slots: slots as i64,
        batch: batch as i32,
        max_blocks: max_blocks as i32,
        block_size: kv.block_size as i32,
        n_heads: n_heads as i32,
        n_kv_heads: n_kv_heads as i32,
        head_dim: head_dim as i32,
        chunk: mask.encode(op)?,
        max_q_len: queries.max_q_len as i32,
        softmax_scale,
        _pad: 0,
    })
}

/// The operands of one call: checks them against each other ([`params`]), checks that they live on `stream`'s
/// device, fills in their device addresses and the workspace, and runs `launch` on the finished parameters while
/// cudarc's per-buffer guards are alive (they order the launch after earlier writes and record its use).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bind_and_launch(
    op: &str,
    stream: &CudaStream,
    queries: &QueryBatch,
    kv: &PagedKv,
    mask: Mask,
    softmax_scale: f32,
    out: &mut TensorMut<bf16, 3>,
    workspace: Option<&mut TensorMut<u8, 1>>,
    bad_seqs: Option<&mut TensorMut<u32, 1>>,
    launch: impl FnOnce(&AttentionParams) -> Result<()>,
) -> Result<()> {
    let mut p = params(op, queries, kv, out.shape(), mask, softmax_scale)?;
    if let Some(c) = &bad_seqs {
        ensure!(c.shape() == [1], "{op}: bad_seqs must hold one counter (got {:?})", c.shape());
    }
    let mut streams = vec![
        queries.q.stream(),
        queries.cu_seqlens.stream(),
        kv.k.stream(),
        kv.v.stream(),
        kv.block_table.stream(),
        kv.seq_lens.stream(),
        out.stream(),
    ];
    streams.extend(workspace.as_ref().map(|w| w.stream()));
    streams.extend(bad_seqs.as_ref().map(|c| c.stream()));
    same_device(stream, &streams)?;
    let (pq, _gq) = queries.q.ptr(stream);
    let (pcu, _gcu) = queries.cu_seqlens.ptr(stream);
    let (pk, _gk) = kv.k.ptr(stream);
    let (pv, _gv) = kv.v.ptr(stream);
    let (pt, _gt) = kv.block_table.ptr(stream);
    let (ps, _gs) = kv.seq_lens.ptr(stream);
    let (po, _go) = out.ptr_mut(stream);
    let ws_bytes = workspace.as_ref().map_or(0, |w| w.shape()[0]);
    let mut workspace = workspace;
    let ws = workspace.as_mut().map(|w| w.ptr_mut(stream));
    let mut bad_seqs = bad_seqs;
    let bad = bad_seqs.as_mut().map(|c| c.ptr_mut(stream));
    p.q = pq as _;
    p.cu_seqlens_q = pcu as _;
    p.k_cache = pk as _;
    p.v_cache = pv as _;
    p.block_table = pt as _;
    p.seq_lens_k = ps as _;
    p.out = po as _;
    p.workspace = ws.as_ref().map_or(ptr::null_mut(), |w| w.0 as _);
    p.workspace_bytes = ws_bytes as i64;
    p.bad_seqs = bad.as_ref().map_or(ptr::null_mut(), |b| b.0 as _);
    launch(&p)
}

/// Llama 4's softmax scale, `head_dim ** -0.5` as a Python float, applied in f32.
pub fn default_scale(head_dim: usize) -> f32 {
    (1.0 / (head_dim as f64).sqrt()) as f32
}
