//! Decode attention over the paged KV cache: each sequence's last `q_len` queries (1 in plain decode, a few in
//! speculative decoding) against its cached keys, split along the keys for long contexts (flash-decoding) with
//! a combine step, all query heads of a KV group in one CTA so K and V are read once. Kernel:
//! kernels/attention_decode.cu (its header comment gives the design). Contract, masks and device-side checks:
//! [`crate::attention`] and kernels/attention_params.h. Reference: llama4_reference::attention.
//!
//! The number of key splits is chosen on the host from the batch, the head counts, the longest possible key
//! range (`max_blocks * block_size`, or one chunk) and the SM count: nothing synchronizes, and the call can be
//! captured in a CUDA graph. The partial results live in the caller's workspace ([`workspace_size`] bytes).
//!
//! Any `block_size` works. The keys arrive in 64-key tiles by TMA when `block_size` and the chunk are multiples of
//! 64 (each tile is then 64 consecutive slots of one block), by cp.async addressed key by key otherwise: the prefill
//! kernel's rule, so [`key_tile_path`] (the same function as `attention_prefill::key_tile_path`) says which. Both
//! loops run the same math on the same split plan and give the same bits; TMA is the fast one (kernels/NOTES.md).

use crate::attention::{bind_and_launch, validate, AttentionOp, Mask, MaskCode, PagedKv, QueryBatch};
use crate::error::{ensure, Error, Result};
use crate::ffi::{self, check_ptr, launched, AttentionParams};
use crate::tensor::{bf16, TensorMut};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;
use std::ffi::CStr;

const OP: &str = "attention_decode";

/// The path [`attention_decode`] takes for a cache layout on the current device: the prefill kernel's rule.
pub use crate::attention_prefill::{key_tile_path, KeyTilePath};

/// The sizes the launcher's plan depends on (with the device's SM count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeShape {
    pub batch: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Bound on every sequence's query count (QueryBatch::max_q_len).
    pub max_q_len: usize,
    /// `max_blocks * block_size` of the block table: the longest sequence it can describe.
    pub max_kv_len: usize,
    pub mask: Mask,
}

/// What the launcher does for a shape on a device: the key splits (1: no combine step) and the workspace bytes
/// they need (0 when the keys are not split).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodePlan {
    pub splits: usize,
    pub workspace_bytes: usize,
}

fn int32(v: usize, what: &str) -> Result<i32> {
    ensure!(v <= i32::MAX as usize, "{OP}: {what} = {v} exceeds i32");
    Ok(v as i32)
}

/// The current device's SM count, which the split count depends on; no device is an error, never a guess.
pub fn current_sm_count() -> Result<usize> {
    let mut sms = 0;
    // SAFETY: writes one int.
    let code = unsafe { ffi::l4k_internal_current_sm_count(&mut sms) };
    if code != 0 || sms <= 0 {
        // SAFETY: cudaGetErrorString returns a static NUL-terminated string for any code.
        let msg = unsafe { CStr::from_ptr(ffi::l4k_internal_cuda_error_string(code)) };
        return Err(Error::NoDevice(format!(
            "{OP}: no SM count from the current device ({}, cudaError {code})",
            msg.to_string_lossy()
        )));
    }
    Ok(sms as usize)
}

/// The launcher's plan for `shape` on a device with `sm_count` SMs (the launcher itself asks the current device).
pub fn plan(shape: DecodeShape, sm_count: usize) -> Result<DecodePlan> {
    ensure!(
        shape.n_kv_heads >= 1 && shape.n_heads % shape.n_kv_heads == 0,
        "{OP}: {} query heads are not a multiple of {} kv heads",
        shape.n_heads,
        shape.n_kv_heads
    );
    ensure!(sm_count >= 1, "{OP}: a device has at least one SM");
    let chunk = shape.mask.encode(OP)?;
    let (mut splits, mut bytes) = (0i32, 0i64);
    // SAFETY: a pure function of its arguments writing two numbers.
    unsafe {
        ffi::l4k_internal_attention_decode_plan(
            int32(shape.batch, "batch")?,
            int32(shape.n_heads, "n_heads")?,
            int32(shape.n_kv_heads, "n_kv_heads")?,
            int32(shape.head_dim, "head_dim")?,
            int32(shape.max_q_len, "max_q_len")?,
            int32(shape.max_kv_len, "max_kv_len")?,
            chunk,
            int32(sm_count, "sm_count")?,
            &mut splits,
            &mut bytes,
        )
    };
    Ok(DecodePlan { splits: splits as usize, workspace_bytes: bytes as usize })
}

/// Workspace bytes [`attention_decode`] needs for `shape` on the current device (0 when the keys are not split;
/// the split count depends on the device's SM count).
pub fn workspace_size(shape: DecodeShape) -> Result<usize> {
    Ok(plan(shape, current_sm_count()?)?.workspace_bytes)
}

/// The number of key splits the launcher uses for `shape` on the current device (1: no combine step).
pub fn splits(shape: DecodeShape) -> Result<usize> {
    Ok(plan(shape, current_sm_count()?)?.splits)
}

/// Attention of `queries` over `kv` under `mask`, into `out` (q's shape) as bf16. `workspace` holds at least
/// [`workspace_size`] bytes (contents arbitrary on entry). A sequence whose device metadata is inconsistent
/// (see kernels/attention_params.h) writes none of its rows and adds 1 to `bad_seqs` when given.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    stream: &CudaStream,
    queries: &QueryBatch,
    kv: &PagedKv,
    mask: Mask,
    softmax_scale: f32,
    out: &mut TensorMut<bf16, 3>,
    workspace: &mut TensorMut<u8, 1>,
    bad_seqs: Option<&mut TensorMut<u32, 1>>,
) -> Result<()> {
    bind_and_launch(OP, stream, queries, kv, mask, softmax_scale, out, Some(workspace), bad_seqs, |p| {
        launch(p, stream.cu_stream())
    })
}

/// Validates raw parameters ([`validate`], shared with prefill and the C ABI; the shapes' mutual consistency is
/// the caller's, checked by [`crate::attention`]'s `params` in the safe API), checks the workspace against the
/// plan for the current device, and launches.
pub(crate) fn launch(p: &AttentionParams, stream: CUstream) -> Result<()> {
    if !validate(AttentionOp::Decode, p)? {
        return Ok(());
    }
    let shape = DecodeShape {
        batch: p.batch as usize,
        n_heads: p.n_heads as usize,
        n_kv_heads: p.n_kv_heads as usize,
        head_dim: p.head_dim as usize,
        max_q_len: p.max_q_len as usize,
        max_kv_len: (p.max_blocks * p.block_size) as usize,
        mask: if p.chunk == 0 { Mask::Causal } else { Mask::Chunked { chunk: p.chunk as usize } },
    };
    let need = workspace_size(shape)?;
    ensure!(
        p.workspace_bytes >= need as i64,
        "{OP}: workspace is {} bytes; this batch needs {need} (attention_decode::workspace_size)",
        p.workspace_bytes
    );
    if need > 0 {
        check_ptr(OP, "workspace", p.workspace, 256)?;
    }
    // SAFETY: validated above; tensor extents are the caller's contract (checked by the safe API's views).
    launched(OP, unsafe { ffi::l4k_launch_attention_decode(p, stream) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// H100 and H200 SXM.
    const H100_SMS: usize = 132;

    #[test]
    fn rejects_bad_shapes_on_the_host() {
        let s = DecodeShape {
            batch: 4,
            n_heads: 40,
            n_kv_heads: 6,
            head_dim: 128,
            max_q_len: 1,
            max_kv_len: 8192,
            mask: Mask::Causal,
        };
        assert!(plan(s, H100_SMS).is_err());
        assert!(plan(DecodeShape { mask: Mask::Chunked { chunk: 0 }, n_kv_heads: 8, ..s }, H100_SMS).is_err());
        assert!(plan(DecodeShape { n_kv_heads: 8, ..s }, 0).is_err());
    }

    #[test]
    fn splits_fill_the_gpu_only_when_the_batch_does_not() {
        let s = DecodeShape {
            batch: 64,
            n_heads: 40,
            n_kv_heads: 8,
            head_dim: 128,
            max_q_len: 1,
            max_kv_len: 8192,
            mask: Mask::Causal,
        };
        // 512 CTAs already fill two waves of 2 CTAs x 132 SMs: no split, no workspace.
        assert_eq!(plan(s, H100_SMS).unwrap(), DecodePlan { splits: 1, workspace_bytes: 0 });
        let long = DecodeShape { batch: 8, max_kv_len: 32768, ..s };
        let many = plan(long, H100_SMS).unwrap();
        assert!(many.splits > 1 && many.workspace_bytes > 0, "{many:?}");
        // Fewer SMs to fill, fewer splits: the plan follows the device instead of assuming one.
        assert!(plan(long, 16).unwrap().splits < many.splits);
        // A chunked layer's range is one chunk however long the cache: fewer splits than the global layer.
        let chunked = DecodeShape { mask: Mask::Chunked { chunk: 256 }, ..long };
        assert_eq!(plan(chunked, H100_SMS).unwrap().splits, 1);
        // Row counts past int32 are refused before anything is launched.
        let p = AttentionParams {
            q: std::ptr::null(),
            k_cache: std::ptr::null(),
            v_cache: std::ptr::null(),
            cu_seqlens_q: std::ptr::null(),
            seq_lens_k: std::ptr::null(),
            block_table: std::ptr::null(),
            out: std::ptr::null_mut(),
            bad_seqs: std::ptr::null_mut(),
            workspace: std::ptr::null_mut(),
            workspace_bytes: 0,
            total_q: 1,
            slots: 16,
            batch: 1,
            max_blocks: 1,
            block_size: 16,
            n_heads: 40,
            n_kv_heads: 8,
            head_dim: 128,
            chunk: 0,
            max_q_len: i32::MAX / 8,
            softmax_scale: 0.1,
            _pad: 0,
        };
        assert!(
            matches!(launch(&p, std::ptr::null_mut()), Err(crate::Error::InvalidArgument(m)) if m.contains("exceed i32"))
        );
        assert!(matches!(
            launch(&AttentionParams { head_dim: 96, ..p }, std::ptr::null_mut()),
            Err(crate::Error::Unsupported(_))
        ));
        // Tiny contexts never split.
        assert_eq!(plan(DecodeShape { batch: 1, max_kv_len: 200, ..s }, H100_SMS).unwrap().splits, 1);
    }
}
