//! Prefill attention over the paged KV cache: fresh prefill (`q_len == seq_len`) and prefill that continues a
//! cache (`q_len < seq_len`) in one kernel, causal or chunked causal mask, GQA of any ratio, head_dim 64 or 128.
//! Kernel: kernels/attention_prefill.cu. Contract: kernels/attention_params.h and [`crate::attention`].
//! Reference: llama4_reference::attention.
//!
//! Any `block_size` works. The kernel loads whole 128-key tiles by TMA when `block_size` and the chunk are
//! multiples of 64 (each 64-key half tile is then 64 consecutive slots of one block); other block sizes, other
//! chunks and each sequence's partial last tile go through cp.async with rows addressed one by one through the
//! block table; [`key_tile_path`] says which path a cache layout takes (a driver that refuses the TMA tensor maps
//! shows there too). No workspace. A sequence whose device metadata is inconsistent (see
//! kernels/attention_params.h) leaves its output rows untouched and bumps `bad_seqs` when given.

use crate::attention::{bind_and_launch, validate, AttentionOp, Mask, MaskCode, PagedKv, QueryBatch, HEAD_DIMS};
use crate::error::{ensure, Error, Result};
use crate::ffi::{self, launched, AttentionParams};
use crate::tensor::{bf16, TensorMut};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;
use std::ptr;

const OP: &str = "attention_prefill";
pub use crate::attention::PREFILL_QUERY_TILE as QUERY_TILE;

/// How the attention kernels load whole key tiles into shared memory (prefill's partial last tile of each sequence
/// always goes by cp.async; decode loads it whole). Both kernels are correct on every path and take the same one for
/// the same cache layout; TMA is the fast one (kernels/NOTES.md: prefill 556-578 vs 430 TFLOP/s, decode 6-10%).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyTilePath {
    /// TMA boxes of 64 slots, one producer thread issuing them.
    Tma,
    /// The producer's cp.async, row by row through the block table: the layout does not allow TMA (block_size or
    /// the chunk not a multiple of 64, a cache not 16-byte aligned, no slots or more than i32::MAX).
    CpAsyncLayout,
    /// cp.async because the driver did not encode the TMA tensor maps (no device, or a driver without
    /// cuTensorMapEncodeTiled): the layout would allow TMA.
    CpAsyncNoTensorMap,
}

/// The path [`attention_prefill`] (and `attention_decode`) takes for `kv` under `mask` on the current device.
pub fn key_tile_path(stream: &CudaStream, kv: &PagedKv, mask: Mask) -> Result<KeyTilePath> {
    let [slots, n_kv_heads, head_dim] = kv.k.shape();
    ensure!(kv.v.shape() == kv.k.shape(), "{OP}: v cache {:?} != k cache {:?}", kv.v.shape(), kv.k.shape());
    ensure!(n_kv_heads <= i32::MAX as usize && slots <= i64::MAX as usize, "{OP}: cache shape exceeds the ABI");
    ensure!(kv.block_size <= i32::MAX as usize, "{OP}: block_size {} exceeds i32", kv.block_size);
    let (pk, _gk) = kv.k.ptr(stream);
    let (pv, _gv) = kv.v.ptr(stream);
    path_of(&AttentionParams {
        k_cache: pk as _,
        v_cache: pv as _,
        slots: slots as i64,
        n_kv_heads: n_kv_heads as i32,
        head_dim: head_dim as i32,
        block_size: kv.block_size as i32,
        chunk: mask.encode(OP)?,
        ..path_params()
    })
}

/// Parameters with only what the path depends on left to fill in.
fn path_params() -> AttentionParams {
    AttentionParams {
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
        total_q: 0,
        slots: 0,
        batch: 0,
        max_blocks: 0,
        block_size: 1,
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 128,
        chunk: 0,
        max_q_len: 0,
        softmax_scale: 1.0,
        _pad: 0,
    }
}

/// The path for raw parameters: reads block_size, chunk, slots, n_kv_heads, head_dim and the cache addresses (the C
/// ABI's l4k_attention_prefill_path comes here).
pub(crate) fn path_of(p: &AttentionParams) -> Result<KeyTilePath> {
    ensure!(p.block_size >= 1, "{OP}: block_size must be positive (got {})", p.block_size);
    ensure!(p.slots >= 0 && p.slots % p.block_size as i64 == 0, "{OP}: {} slots are not whole blocks", p.slots);
    ensure!(p.n_kv_heads >= 1 && p.chunk >= 0, "{OP}: n_kv_heads must be positive and chunk >= 0");
    if !HEAD_DIMS.contains(&(p.head_dim as usize)) {
        return Err(Error::Unsupported(format!("{OP}: head_dim {} (built for {HEAD_DIMS:?})", p.head_dim)));
    }
    // SAFETY: the fields it reads are set and checked; it never dereferences the cache addresses.
    match unsafe { ffi::l4k_internal_attention_prefill_path(p) } {
        ffi::PREFILL_PATH_TMA => Ok(KeyTilePath::Tma),
        ffi::PREFILL_PATH_CP_ASYNC_LAYOUT => Ok(KeyTilePath::CpAsyncLayout),
        ffi::PREFILL_PATH_CP_ASYNC_NO_TENSOR_MAP => Ok(KeyTilePath::CpAsyncNoTensorMap),
        c => Err(Error::Cuda(format!("{OP}: unknown key-tile path {c}"))),
    }
}

/// `out` [total_q, n_heads, head_dim] = softmax(q k^T * `softmax_scale`, `mask`) v for every sequence of the
/// batch, rows of a sequence whose metadata is bad left untouched (and counted in `bad_seqs` [1] when given).
/// Rows of `out` that belong to no sequence are not written.
pub fn attention_prefill(
    stream: &CudaStream,
    queries: &QueryBatch,
    kv: &PagedKv,
    mask: Mask,
    softmax_scale: f32,
    out: &mut TensorMut<bf16, 3>,
    bad_seqs: Option<&mut TensorMut<u32, 1>>,
) -> Result<()> {
    bind_and_launch(OP, stream, queries, kv, mask, softmax_scale, out, None, bad_seqs, |p| {
        launch(p, stream.cu_stream())
    })
}

/// Validates raw parameters ([`validate`]: the safe API's come from `params`, the C ABI's from the caller) and
/// launches.
pub(crate) fn launch(p: &AttentionParams, stream: CUstream) -> Result<()> {
    if !validate(AttentionOp::Prefill, p)? {
        return Ok(());
    }
    // SAFETY: the pointers are non-null and aligned; sizes agree (checked by `params` or promised by the C caller).
    launched(OP, unsafe { ffi::l4k_launch_attention_prefill(p, stream) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::c_void;

    #[test]
    fn layouts_tma_cannot_take_are_reported_without_a_device() {
        let at = |a: usize| a as *const c_void;
        let tma_layout = AttentionParams {
            k_cache: at(0x10000),
            v_cache: at(0x20000),
            slots: 4096,
            n_kv_heads: 8,
            block_size: 64,
            ..path_params()
        };
        for (what, p) in [
            ("block_size 16", AttentionParams { block_size: 16, ..tma_layout }),
            ("block_size 96", AttentionParams { block_size: 96, slots: 96 * 40, ..tma_layout }),
            ("chunk 100", AttentionParams { chunk: 100, ..tma_layout }),
            ("v cache 8-byte aligned", AttentionParams { v_cache: at(0x20008), ..tma_layout }),
            ("no slots", AttentionParams { slots: 0, ..tma_layout }),
        ] {
            assert_eq!(path_of(&p), Ok(KeyTilePath::CpAsyncLayout), "{what}");
        }
        // A layout TMA can take: the driver decides (TMA with a GPU, no tensor map without one), never the layout.
        assert_ne!(path_of(&tma_layout), Ok(KeyTilePath::CpAsyncLayout));
        assert_ne!(path_of(&AttentionParams { chunk: 8192, ..tma_layout }), Ok(KeyTilePath::CpAsyncLayout));
        assert!(matches!(path_of(&AttentionParams { head_dim: 96, ..tma_layout }), Err(Error::Unsupported(_))));
        assert!(path_of(&AttentionParams { block_size: 0, ..tma_layout }).is_err());
    }
}
