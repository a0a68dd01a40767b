//! Counter-based uniform random bf16 on the device: `out[i] = bf16(u(seed, first + i) * bound)` with `u` in
//! (-1, 1), the synthetic weights of a full-size model built without a checkpoint (`llama4-run --synthetic`,
//! bench/model.rs). Element `j` of a stream depends only on `(seed, j)`: a tensor filled in pieces (`first` =
//! the piece's offset in the tensor) equals one filled whole, and the reference reproduces every bit. Kernel:
//! kernels/random.cu. Reference: llama4_reference::random.

use crate::error::{ensure, Result};
use crate::ffi::{self, check_ptr, launched, RandomParams};
use crate::tensor::{bf16, same_device, TensorMut};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;

const OP: &str = "random_uniform_bf16";

/// Fills `out` with elements `first ..` of the stream `seed`, scaled to [-bound, bound] (u is inside (-1, 1);
/// the bf16 rounding of `u * bound` may reach `bound`).
pub fn random_uniform_bf16(
    stream: &CudaStream,
    out: &mut TensorMut<bf16, 1>,
    seed: u64,
    first: u64,
    bound: f32,
) -> Result<()> {
    same_device(stream, &[out.stream()])?;
    let [n] = out.shape();
    let (po, _g) = out.ptr_mut(stream);
    launch(&RandomParams { out: po as _, n: n as i64, seed, first, bound, _pad: 0 }, stream.cu_stream())
}

/// Validates raw parameters (the C ABI enters here too) and launches. n == 0 is a no-op.
pub(crate) fn launch(p: &RandomParams, stream: CUstream) -> Result<()> {
    ensure!(p.n >= 0, "{OP}: n is negative ({})", p.n);
    ensure!(p.bound.is_finite() && p.bound >= 0.0, "{OP}: bound must be finite and non-negative (got {})", p.bound);
    ensure!(
        p.first.checked_add(p.n as u64).is_some(),
        "{OP}: elements {} .. {} + {} overflow the stream's 64-bit index",
        p.first,
        p.first,
        p.n
    );
    if p.n == 0 {
        return Ok(());
    }
    check_ptr(OP, "out", p.out, 2)?;
    // SAFETY: the pointer is validated above; its extent is the caller's contract (checked by the safe view).
    launched(OP, unsafe { ffi::l4k_launch_random_uniform_bf16(p, stream) })
}
