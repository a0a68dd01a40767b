//! Row gather: `out[t] = table[ids[t]]`, the token embedding (`table` = `embed_tokens` [V, H]) or a gather of
//! activation rows (each sequence's last token before lm_head: `table` is then the hidden states and V their
//! row count). Bytes are copied, nothing rounds. Kernel: kernels/embedding.cu. Reference:
//! llama4_reference::embedding.
//!
//! The ids stay on the device and are checked there: an id outside [0, V) reads nothing, writes a zero row, and
//! adds 1 to the optional `bad_ids` counter, so a bad id is caught without a host sync (where the reference
//! returns an error). T = 0 launches nothing.

use crate::error::{ensure, Result};
use crate::ffi::{self, check_grid, check_ptr, launched, EmbeddingParams};
use crate::tensor::{bf16, same_device, Tensor, TensorMut};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;
use std::ptr;

const OP: &str = "embedding";

/// `out [T, H] = table [V, H]` rows `ids [T]`; `bad_ids` (one u32, not reset here) counts ids outside [0, V).
pub fn embedding(
    stream: &CudaStream,
    table: &Tensor<bf16, 2>,
    ids: &Tensor<i32, 1>,
    out: &mut TensorMut<bf16, 2>,
    bad_ids: Option<&mut TensorMut<u32, 1>>,
) -> Result<()> {
    let [rows, hidden] = table.shape();
    let [tokens] = ids.shape();
    ensure!(out.shape() == [tokens, hidden], "{OP}: out {:?}, want [{tokens}, {hidden}]", out.shape());
    if let Some(f) = &bad_ids {
        ensure!(f.shape() == [1], "{OP}: bad_ids must hold one counter (got {:?})", f.shape());
    }
    let mut streams = vec![table.stream(), ids.stream(), out.stream()];
    streams.extend(bad_ids.as_ref().map(|f| f.stream()));
    same_device(stream, &streams)?;
    let (pt, _gt) = table.ptr(stream);
    let (pi, _gi) = ids.ptr(stream);
    let (po, _go) = out.ptr_mut(stream);
    let flag = bad_ids.map(|f| f.ptr_mut(stream));
    let p = EmbeddingParams {
        table: pt as _,
        ids: pi as _,
        out: po as _,
        bad_ids: flag.as_ref().map_or(ptr::null_mut(), |f| f.0 as _),
        rows: rows as i64,
        tokens: tokens as i64,
        hidden: hidden as i64,
    };
    launch(&p, stream.cu_stream())
}

/// Validates raw parameters (the C ABI enters here too) and launches. tokens == 0 is a no-op.
pub(crate) fn launch(p: &EmbeddingParams, stream: CUstream) -> Result<()> {
    check_grid(OP, "tokens", p.tokens)?;
    // An empty table would make every id a bad one: a shape mistake, refused here rather than counted.
    ensure!(p.rows >= 1, "{OP}: the table needs at least one row (got {})", p.rows);
    ensure!(p.hidden >= 1, "{OP}: hidden must be positive (got {})", p.hidden);
    ensure!(
        p.rows.checked_mul(p.hidden).is_some() && p.tokens.checked_mul(p.hidden).is_some(),
        "{OP}: {} or {} rows of {} elements overflow int64",
        p.rows,
        p.tokens,
        p.hidden
    );
    if p.tokens == 0 {
        return Ok(());
    }
    check_ptr(OP, "table", p.table, 2)?;
    check_ptr(OP, "ids", p.ids as _, 4)?;
    check_ptr(OP, "out", p.out, 2)?;
    if !p.bad_ids.is_null() {
        check_ptr(OP, "bad_ids", p.bad_ids as _, 4)?;
    }
    // SAFETY: pointers validated above; extents are the caller's contract (checked by the safe API's views).
    launched(OP, unsafe { ffi::l4k_launch_embedding(p, stream) })
}
