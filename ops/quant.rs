//! Rowwise FP8 E4M3 quantization (bf16 -> E4M3 + one f32 scale per row) and dequantization (for tests and
//! debugging). Kernel: kernels/quant.cu. Reference: llama4_reference::fp8.
//!
//! `scale = max(amax, 1e-12) / 448`, `q = e4m3(x * (1 / scale))` with saturation and round-to-nearest-even; bytes
//! identical to the reference on identical inputs.

use crate::error::{ensure, Result};
use crate::ffi::{self, check_grid, check_ptr, launched, QuantParams};
use crate::tensor::{bf16, same_device, Tensor, TensorMut, E4M3};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;
use cudarc::driver::SyncOnDrop;

const OP: &str = "quant_fp8";
const OP_DEQUANT: &str = "dequant_fp8";

/// A device address with the guard that orders it (tensor.rs's `ptr` / `ptr_mut`).
pub(crate) type Ptr<'s> = (u64, SyncOnDrop<'s>);

/// The rowwise FP8 copy an op writes beside its bf16 output `y` [rows, cols] (the norms' `*_with_fp8`, the fused
/// unpermute + norm), for an FP8 linear that reads y: the E4M3 bytes [rows, cols] and one scale per row that
/// [`quant_fp8`] would write from y, without its launch.
pub struct Fp8Copy<'s, 'a> {
    pub q: &'s mut TensorMut<'a, E4M3, 2>,
    pub scales: &'s mut TensorMut<'a, f32, 1>,
}

impl Fp8Copy<'_, '_> {
    /// Checks the copy's shapes against y's and its device against the stream's; the bytes' and the scales'
    /// addresses, each with its guard (held until the launch, as every operand's).
    pub(crate) fn ptrs<'s>(&'s mut self, op: &str, stream: &'s CudaStream, y: [usize; 2]) -> Result<[Ptr<'s>; 2]> {
        ensure!(self.q.shape() == y, "{op}: FP8 copy {:?} != y {y:?}", self.q.shape());
        ensure!(self.scales.shape() == [y[0]], "{op}: FP8 scales {:?} for {} rows", self.scales.shape(), y[0]);
        same_device(stream, &[self.q.stream(), self.scales.stream()])?;
        Ok([self.q.ptr_mut(stream), self.scales.ptr_mut(stream)])
    }
}

/// Quantizes x [rows, cols] into q [rows, cols] and scales [rows].
pub fn quant_fp8(
    stream: &CudaStream,
    x: &Tensor<bf16, 2>,
    q: &mut TensorMut<E4M3, 2>,
    scales: &mut TensorMut<f32, 1>,
) -> Result<()> {
    let [rows, cols] = x.shape();
    ensure!(q.shape() == x.shape(), "{OP}: q {:?} != x {:?}", q.shape(), x.shape());
    ensure!(scales.shape() == [rows], "{OP}: scales {:?} for {rows} rows", scales.shape());
    same_device(stream, &[x.stream(), q.stream(), scales.stream()])?;
    let (px, _gx) = x.ptr(stream);
    let (pq, _gq) = q.ptr_mut(stream);
    let (ps, _gs) = scales.ptr_mut(stream);
    let p = QuantParams { x: px as _, out: pq as _, scales: ps as _, rows: rows as i64, cols: cols as i64 };
    launch_quant(&p, stream.cu_stream())
}

/// out [rows, cols] = e4m3_to_f32(q) * scales[row].
pub fn dequant_fp8(
    stream: &CudaStream,
    q: &Tensor<E4M3, 2>,
    scales: &Tensor<f32, 1>,
    out: &mut TensorMut<f32, 2>,
) -> Result<()> {
    let [rows, cols] = q.shape();
    ensure!(out.shape() == q.shape(), "{OP_DEQUANT}: out {:?} != q {:?}", out.shape(), q.shape());
    ensure!(scales.shape() == [rows], "{OP_DEQUANT}: scales {:?} for {rows} rows", scales.shape());
    same_device(stream, &[q.stream(), scales.stream(), out.stream()])?;
    let (pq, _gq) = q.ptr(stream);
    let (ps, _gs) = scales.ptr(stream);
    let (po, _go) = out.ptr_mut(stream);
    let p = QuantParams { x: pq as _, out: po as _, scales: ps as _, rows: rows as i64, cols: cols as i64 };
    launch_dequant(&p, stream.cu_stream())
}

fn check(op: &str, p: &QuantParams, in_align: usize, out_align: usize) -> Result<bool> {
    check_grid(op, "rows", p.rows)?;
    ensure!(p.cols >= 1, "{op}: cols must be positive (got {})", p.cols);
    if p.rows == 0 {
        return Ok(false);
    }
    check_ptr(op, "x", p.x, in_align)?;
    check_ptr(op, "out", p.out, out_align)?;
    check_ptr(op, "scales", p.scales as _, 4)?;
    Ok(true)
}

pub(crate) fn launch_quant(p: &QuantParams, stream: CUstream) -> Result<()> {
    if !check(OP, p, 2, 1)? {
        return Ok(());
    }
    // SAFETY: validated above.
    launched(OP, unsafe { ffi::l4k_launch_quant_fp8(p, stream) })
}

pub(crate) fn launch_dequant(p: &QuantParams, stream: CUstream) -> Result<()> {
    if !check(OP_DEQUANT, p, 1, 4)? {
        return Ok(());
    }
    // SAFETY: validated above.
    launched(OP_DEQUANT, unsafe { ffi::l4k_launch_dequant_fp8(p, stream) })
}
