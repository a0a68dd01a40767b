//! RMSNorm (bf16 in/out, f32 math, the model contract's two roundings), alone or fused with the residual add.
//! Kernel: kernels/rmsnorm.cu. Reference: llama4_reference::rmsnorm.

use crate::error::{ensure, Result};
use crate::ffi::{self, check_grid, check_ptr, launched, RmsnormParams};
use crate::tensor::{bf16, same_device, Tensor, TensorMut};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;
use std::ptr;

const OP: &str = "rmsnorm";

/// `y = rmsnorm(x) * weight` for x, y [rows, H] and weight [H].
pub fn rmsnorm(
    stream: &CudaStream,
    x: &Tensor<bf16, 2>,
    weight: &Tensor<bf16, 1>,
    eps: f32,
    y: &mut TensorMut<bf16, 2>,
) -> Result<()> {
    run(stream, x, None, weight, eps, y)
}

/// The residual add and the next norm in one pass: `residual += x` (rounded to bf16), then
/// `y = rmsnorm(residual) * weight`.
pub fn add_rmsnorm(
    stream: &CudaStream,
    x: &Tensor<bf16, 2>,
    residual: &mut TensorMut<bf16, 2>,
    weight: &Tensor<bf16, 1>,
    eps: f32,
    y: &mut TensorMut<bf16, 2>,
) -> Result<()> {
    run(stream, x, Some(residual), weight, eps, y)
}

fn run(
    stream: &CudaStream,
    x: &Tensor<bf16, 2>,
    residual: Option<&mut TensorMut<bf16, 2>>,
    weight: &Tensor<bf16, 1>,
    eps: f32,
    y: &mut TensorMut<bf16, 2>,
) -> Result<()> {
    let [rows, cols] = x.shape();
    if let Some(r) = &residual {
        ensure!(r.shape() == x.shape(), "{OP}: residual {:?} != x {:?}", r.shape(), x.shape());
    }
    ensure!(weight.shape() == [cols], "{OP}: weight {:?} for rows of {cols}", weight.shape());
    ensure!(y.shape() == x.shape(), "{OP}: y {:?} != x {:?}", y.shape(), x.shape());
    let mut streams = vec![x.stream(), weight.stream(), y.stream()];
    streams.extend(residual.as_ref().map(|r| r.stream()));
    same_device(stream, &streams)?;
    let (px, _gx) = x.ptr(stream);
    let res = residual.map(|r| r.ptr_mut(stream));
    let pr = res.as_ref().map_or(ptr::null_mut(), |r| r.0 as *mut std::ffi::c_void);
    let (pw, _gw) = weight.ptr(stream);
    let (py, _gy) = y.ptr_mut(stream);
    let p = RmsnormParams {
        x: px as _,
        residual: pr,
        residual_out: pr,
        weight: pw as _,
        y: py as _,
        rows: rows as i64,
        cols: cols as i64,
        eps,
        _pad: 0,
    };
    launch(&p, stream.cu_stream())
}

/// Validates raw parameters (the C ABI enters here too) and launches. rows == 0 is a no-op.
pub(crate) fn launch(p: &RmsnormParams, stream: CUstream) -> Result<()> {
    check_grid(OP, "rows", p.rows)?;
    ensure!(p.cols >= 1, "{OP}: cols must be positive (got {})", p.cols);
    ensure!(p.eps.is_finite() && p.eps >= 0.0, "{OP}: eps must be finite and >= 0 (got {})", p.eps);
    ensure!(p.residual.is_null() == p.residual_out.is_null(), "{OP}: residual and residual_out go together");
    if p.rows == 0 {
        return Ok(());
    }
    check_ptr(OP, "x", p.x, 2)?;
    check_ptr(OP, "weight", p.weight, 2)?;
    check_ptr(OP, "y", p.y, 2)?;
    if !p.residual.is_null() {
        check_ptr(OP, "residual", p.residual, 2)?;
        check_ptr(OP, "residual_out", p.residual_out, 2)?;
    }
    // SAFETY: pointers validated above; sizes are the caller's contract (checked by the safe API's views).
    launched(OP, unsafe { ffi::l4k_launch_rmsnorm(p, stream) })
}
