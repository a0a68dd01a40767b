//! Greedy sampling on the device: for each row of logits [R, V] (f32), the index of its largest value, the
//! lowest index on ties (`torch.argmax`; -0 ties +0, +-inf are ordinary values), and -1 for a row holding any
//! NaN (torch would return the NaN's index; the caller turns -1 into an error). The ids never leave the device,
//! so sampling can sit inside a captured decode step. Kernel: kernels/argmax.cu (a cluster of CTAs per long
//! row). Reference: llama4_reference::argmax.

use crate::error::{ensure, Result};
use crate::ffi::{self, check_grid, check_ptr, launched, ArgmaxParams};
use crate::tensor::{same_device, Tensor, TensorMut};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;

const OP: &str = "argmax";

/// `out[r] = argmax(logits[r])` for logits [R, V] and out [R] (-1: the row holds a NaN).
pub fn argmax(stream: &CudaStream, logits: &Tensor<f32, 2>, out: &mut TensorMut<i32, 1>) -> Result<()> {
    let [rows, cols] = logits.shape();
    ensure!(out.shape() == [rows], "{OP}: out {:?} for {rows} rows", out.shape());
    same_device(stream, &[logits.stream(), out.stream()])?;
    let (pl, _gl) = logits.ptr(stream);
    let (po, _go) = out.ptr_mut(stream);
    let p = ArgmaxParams { logits: pl as _, out: po as _, rows: rows as i64, cols: cols as i64 };
    launch(&p, stream.cu_stream())
}

/// Validates raw parameters (the C ABI enters here too) and launches. rows == 0 is a no-op.
pub(crate) fn launch(p: &ArgmaxParams, stream: CUstream) -> Result<()> {
    check_grid(OP, "rows", p.rows)?;
    // The answer is an int32 index.
    ensure!(p.cols >= 1 && p.cols <= i32::MAX as i64, "{OP}: cols = {} outside 1..=2^31-1", p.cols);
    if p.rows == 0 {
        return Ok(());
    }
    check_ptr(OP, "logits", p.logits as _, 4)?;
    check_ptr(OP, "out", p.out as _, 4)?;
    // SAFETY: pointers validated above; extents are the caller's contract (checked by the safe API's views).
    launched(OP, unsafe { ffi::l4k_launch_argmax(p, stream) })
}
