//! Prefill attention over the paged KV cache: fresh prefill (`q_len == seq_len`) and prefill that continues a
//! cache (`q_len < seq_len`) in one kernel, causal or chunked causal mask, GQA of any ratio, head_dim 64 or 128.
//! Kernel: kernels/attention_prefill.cu. Contract: kernels/attention_params.h and [`crate::attention`].
//! Reference: llama4_reference::attention.
//!
//! Any `block_size` works. The kernel loads whole 128-key tiles by TMA when `block_size` and the chunk are
//! multiples of 64 (each 64-key half tile is then 64 consecutive slots of one block); other block sizes, other
//! chunks and each sequence's partial last tile go through cp.async with rows addressed one by one through the
//! block table. No workspace. A sequence whose device metadata is inconsistent (see kernels/attention_params.h) leaves its output rows
//! untouched and bumps `bad_seqs` when given.

use crate::attention::{bind_and_launch, Mask, PagedKv, QueryBatch};
use crate::error::{ensure, Error, Result};
use crate::ffi::{self, check_ptr, launched, AttentionParams};
use crate::tensor::{bf16, TensorMut};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;

const OP: &str = "attention_prefill";
/// Query rows per CTA (kernels/attention_prefill.cu kBlockM): the grid has ceil(max_q_len / 128) tiles per
/// sequence and head.
pub const QUERY_TILE: usize = 128;
/// Grid limits of the launch: heads on x, query tiles on y, sequences on z.
const MAX_GRID_YZ: usize = 65535;

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

/// Validates raw parameters (the safe API's come from [`params`]; the C ABI's from the caller) and launches.
pub(crate) fn launch(p: &AttentionParams, stream: CUstream) -> Result<()> {
    ensure!(p.batch >= 0 && p.total_q >= 0 && p.slots >= 0, "{OP}: batch, total_q and slots must be >= 0");
    ensure!(p.max_blocks >= 0 && p.max_q_len >= 0, "{OP}: max_blocks and max_q_len must be >= 0");
    ensure!(p.block_size >= 1, "{OP}: block_size must be positive (got {})", p.block_size);
    ensure!(p.slots % p.block_size as i64 == 0, "{OP}: {} slots are not whole {}-slot blocks", p.slots, p.block_size);
    ensure!(
        (p.max_blocks as i64) * (p.block_size as i64) <= i32::MAX as i64,
        "{OP}: {} blocks of {} slots exceed i32 positions",
        p.max_blocks,
        p.block_size
    );
    ensure!(p.total_q <= i32::MAX as i64, "{OP}: total_q {} exceeds i32", p.total_q);
    if p.slots > i32::MAX as i64 {
        return Err(Error::Unsupported(format!("{OP}: {} cache slots exceed i32", p.slots)));
    }
    ensure!(p.n_heads >= 1 && p.n_kv_heads >= 1, "{OP}: head counts must be positive");
    ensure!(p.n_heads % p.n_kv_heads == 0, "{OP}: {} query heads over {} kv heads", p.n_heads, p.n_kv_heads);
    ensure!(p.chunk >= 0, "{OP}: chunk {} < 0", p.chunk);
    ensure!(
        p.softmax_scale.is_finite() && p.softmax_scale > 0.0,
        "{OP}: softmax_scale {} must be finite and positive",
        p.softmax_scale
    );
    if p.head_dim != 64 && p.head_dim != 128 {
        return Err(Error::Unsupported(format!("{OP}: head_dim {} (built for 64 and 128)", p.head_dim)));
    }
    let tiles = (p.max_q_len as usize).div_ceil(QUERY_TILE).max(1);
    if tiles > MAX_GRID_YZ || p.batch as usize > MAX_GRID_YZ || p.n_heads as usize > MAX_GRID_YZ {
        return Err(Error::Unsupported(format!(
            "{OP}: grid of {} heads x {tiles} query tiles x {} sequences exceeds 65535 on one axis",
            p.n_heads, p.batch
        )));
    }
    if p.batch == 0 {
        return Ok(());
    }
    check_ptr(OP, "q", p.q, 16)?;
    check_ptr(OP, "k_cache", p.k_cache, 16)?;
    check_ptr(OP, "v_cache", p.v_cache, 16)?;
    check_ptr(OP, "out", p.out, 4)?;
    check_ptr(OP, "cu_seqlens_q", p.cu_seqlens_q as _, 4)?;
    check_ptr(OP, "seq_lens_k", p.seq_lens_k as _, 4)?;
    check_ptr(OP, "block_table", p.block_table as _, 4)?;
    if !p.bad_seqs.is_null() {
        check_ptr(OP, "bad_seqs", p.bad_seqs as _, 4)?;
    }
    // SAFETY: the pointers are non-null and aligned; sizes agree (checked by `params` or promised by the C caller).
    launched(OP, unsafe { ffi::l4k_launch_attention_prefill(p, stream) })
}
