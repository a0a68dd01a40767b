//! RMSNorm (bf16 in/out, f32 math, the model contract's two roundings), alone or fused with the residual add;
//! either can also write the output's rowwise FP8 copy for an FP8 linear that reads it (`*_with_fp8`).
//! Kernel: kernels/rmsnorm.cu. Reference: llama4_reference::rmsnorm.

use crate::error::{ensure, Result};
use crate::ffi::{self, check_grid, check_ptr, launched, RmsnormParams};
use crate::quant::Fp8Copy;
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
    run(stream, x, None, weight, eps, y, None)
}

/// [`rmsnorm`], and y's rowwise FP8 copy (the bytes and scales `quant_fp8` writes from y) from the same pass.
pub fn rmsnorm_with_fp8(
    stream: &CudaStream,
    x: &Tensor<bf16, 2>,
    weight: &Tensor<bf16, 1>,
    eps: f32,
    y: &mut TensorMut<bf16, 2>,
    fp8: Fp8Copy<'_, '_>,
) -> Result<()> {
    run(stream, x, None, weight, eps, y, Some(fp8))
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
    run(stream, x, Some(residual), weight, eps, y, None)
}

/// [`add_rmsnorm`], and y's rowwise FP8 copy (the bytes and scales `quant_fp8` writes from y) from the same pass.
pub fn add_rmsnorm_with_fp8(
    stream: &CudaStream,
    x: &Tensor<bf16, 2>,
    residual: &mut TensorMut<bf16, 2>,
    weight: &Tensor<bf16, 1>,
    eps: f32,
    y: &mut TensorMut<bf16, 2>,
    fp8: Fp8Copy<'_, '_>,
) -> Result<()> {
    run(stream, x, Some(residual), weight, eps, y, Some(fp8))
}

fn run(
    stream: &CudaStream,
    x: &Tensor<bf16, 2>,
    residual: Option<&mut TensorMut<bf16, 2>>,
    weight: &Tensor<bf16, 1>,
    eps: f32,
    y: &mut TensorMut<bf16, 2>,
    mut fp8: Option<Fp8Copy<'_, '_>>,
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
    let copy = fp8.as_mut().map(|c| c.ptrs(OP, stream, [rows, cols])).transpose()?;
    let [pq, ps] = copy.as_ref().map_or([0, 0], |[q, s]| [q.0, s.0]);
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
        y_fp8: pq as _,
        y_scales: ps as _,
    };
    launch(&p, stream.cu_stream())
}

/// Validates raw parameters (the C ABI enters here too) and launches. rows == 0 is a no-op.
pub(crate) fn launch(p: &RmsnormParams, stream: CUstream) -> Result<()> {
    check_grid(OP, "rows", p.rows)?;
    ensure!(p.cols >= 1, "{OP}: cols must be positive (got {})", p.cols);
    ensure!(p.eps.is_finite() && p.eps >= 0.0, "{OP}: eps must be finite and >= 0 (got {})", p.eps);
    ensure!(p.residual.is_null() == p.residual_out.is_null(), "{OP}: residual and residual_out go together");
    ensure!(p.y_fp8.is_null() == p.y_scales.is_null(), "{OP}: y_fp8 and y_scales go together");
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
    if !p.y_fp8.is_null() {
        check_ptr(OP, "y_scales", p.y_scales as _, 4)?;
    }
    // SAFETY: pointers validated above; sizes are the caller's contract (checked by the safe API's views).
    launched(OP, unsafe { ffi::l4k_launch_rmsnorm(p, stream) })
}
