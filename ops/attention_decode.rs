//! Decode attention over the paged KV cache: each sequence's last `q_len` queries (1 in plain decode, a few in
//! speculative decoding) against its cached keys, split along the keys for long contexts (flash-decoding) with
//! a combine step, all query heads of a KV group in one CTA so K and V are read once. Kernel:
//! kernels/attention_decode.cu (its header comment gives the design). Contract, masks and device-side checks:
//! [`crate::attention`] and kernels/attention_params.h. Reference: llama4_reference::attention.
//!
//! The number of key splits is chosen on the host from the batch, the head counts, the longest possible key
//! range (`max_blocks * block_size`, or one chunk) and the SM count: nothing synchronizes, and the call can be
//! captured in a CUDA graph. The partial results live in the caller's workspace ([`workspace_size`] bytes).

use crate::attention::{bind_and_launch, Mask, MaskCode, PagedKv, QueryBatch};
use crate::error::{ensure, Result};
use crate::ffi::{self, check_ptr, launched, AttentionParams};
use crate::tensor::{bf16, TensorMut};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;

const OP: &str = "attention_decode";

/// The sizes [`workspace_size`] depends on.
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

fn int32(v: usize, what: &str) -> Result<i32> {
    ensure!(v <= i32::MAX as usize, "{OP}: {what} = {v} exceeds i32");
    Ok(v as i32)
}

/// Workspace bytes [`attention_decode`] needs for `shape` on the current device (0 when the keys are not split;
/// the split count depends on the device's SM count).
pub fn workspace_size(shape: DecodeShape) -> Result<usize> {
    ensure!(
        shape.n_kv_heads >= 1 && shape.n_heads % shape.n_kv_heads == 0,
        "{OP}: {} query heads are not a multiple of {} kv heads",
        shape.n_heads,
        shape.n_kv_heads
    );
    let chunk = shape.mask.encode(OP)?;
    // SAFETY: a pure function of its arguments and the current device's SM count.
    Ok(unsafe {
        ffi::l4k_internal_attention_decode_workspace_size(
            int32(shape.batch, "batch")?,
            int32(shape.n_heads, "n_heads")?,
            int32(shape.n_kv_heads, "n_kv_heads")?,
            int32(shape.head_dim, "head_dim")?,
            int32(shape.max_q_len, "max_q_len")?,
            int32(shape.max_kv_len, "max_kv_len")?,
            chunk,
        )
    })
}

/// The number of key splits the launcher uses for `shape` on the current device (1: no combine step).
pub fn splits(shape: DecodeShape) -> Result<usize> {
    let chunk = shape.mask.encode(OP)?;
    // SAFETY: as workspace_size.
    let s = unsafe {
        ffi::l4k_internal_attention_decode_splits(
            int32(shape.batch, "batch")?,
            int32(shape.n_heads, "n_heads")?,
            int32(shape.n_kv_heads.max(1), "n_kv_heads")?,
            int32(shape.max_q_len, "max_q_len")?,
            int32(shape.max_kv_len, "max_kv_len")?,
            chunk,
        )
    };
    Ok(s as usize)
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

/// Validates raw parameters (shared with the C ABI: sizes and pointers; the shapes' mutual consistency is the
/// caller's, checked by [`crate::attention`]'s `params` in the safe API) and launches.
pub(crate) fn launch(p: &AttentionParams, stream: CUstream) -> Result<()> {
    ensure!(p.batch >= 0 && p.total_q >= 0 && p.max_q_len >= 0, "{OP}: negative batch, total_q or max_q_len");
    ensure!(p.n_kv_heads >= 1 && p.n_heads >= 1 && p.n_heads % p.n_kv_heads == 0, "{OP}: bad head counts");
    if !crate::attention::HEAD_DIMS.contains(&(p.head_dim as usize)) {
        return Err(crate::Error::Unsupported(format!(
            "{OP}: head_dim {} (built for {:?})",
            p.head_dim,
            crate::attention::HEAD_DIMS
        )));
    }
    ensure!(p.block_size >= 1 && p.max_blocks >= 0 && p.slots >= 0, "{OP}: bad cache geometry");
    ensure!(p.chunk >= 0, "{OP}: chunk {} is negative", p.chunk);
    // The kernels index a sequence's (query, head) rows with int32.
    ensure!(
        p.n_heads as i64 * p.max_q_len as i64 <= i32::MAX as i64,
        "{OP}: n_heads {} x max_q_len {} rows exceed i32",
        p.n_heads,
        p.max_q_len
    );
    ensure!(
        (p.max_blocks as i64) * (p.block_size as i64) <= i32::MAX as i64,
        "{OP}: max_blocks * block_size exceeds i32"
    );
    ensure!(
        p.softmax_scale.is_finite() && p.softmax_scale > 0.0,
        "{OP}: softmax_scale {} must be finite and positive",
        p.softmax_scale
    );
    if p.batch == 0 || p.max_q_len == 0 || p.total_q == 0 {
        return Ok(());
    }
    // SAFETY: a pure function of its arguments and the current device's SM count.
    let need = unsafe {
        ffi::l4k_internal_attention_decode_workspace_size(
            p.batch,
            p.n_heads,
            p.n_kv_heads,
            p.head_dim,
            p.max_q_len,
            p.max_blocks * p.block_size,
            p.chunk,
        )
    };
    ensure!(
        p.workspace_bytes >= need as i64,
        "{OP}: workspace is {} bytes; this batch needs {need} (attention_decode::workspace_size)",
        p.workspace_bytes
    );
    check_ptr(OP, "q", p.q, 16)?;
    check_ptr(OP, "out", p.out, 16)?;
    check_ptr(OP, "cu_seqlens_q", p.cu_seqlens_q as _, 4)?;
    check_ptr(OP, "seq_lens_k", p.seq_lens_k as _, 4)?;
    if need > 0 {
        check_ptr(OP, "workspace", p.workspace, 256)?;
    }
    if !p.bad_seqs.is_null() {
        check_ptr(OP, "bad_seqs", p.bad_seqs as _, 4)?;
    }
    if p.max_blocks > 0 {
        check_ptr(OP, "block_table", p.block_table as _, 4)?;
    }
    if p.slots > 0 {
        check_ptr(OP, "k_cache", p.k_cache, 16)?;
        check_ptr(OP, "v_cache", p.v_cache, 16)?;
    }
    // SAFETY: validated above; tensor extents are the caller's contract (checked by the safe API's views).
    launched(OP, unsafe { ffi::l4k_launch_attention_decode(p, stream) })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(workspace_size(s).is_err());
        assert!(workspace_size(DecodeShape { mask: Mask::Chunked { chunk: 0 }, n_kv_heads: 8, ..s }).is_err());
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
        assert_eq!(splits(s).unwrap(), 1);
        assert_eq!(workspace_size(s).unwrap(), 0);
        let long = DecodeShape { batch: 8, max_kv_len: 32768, ..s };
        assert!(splits(long).unwrap() > 1);
        assert!(workspace_size(long).unwrap() > 0);
        // A chunked layer's range is one chunk however long the cache: fewer splits than the global layer.
        let chunked = DecodeShape { mask: Mask::Chunked { chunk: 256 }, ..long };
        assert_eq!(splits(chunked).unwrap(), 1);
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
        assert_eq!(splits(DecodeShape { batch: 1, max_kv_len: 200, ..s }).unwrap(), 1);
    }
}
