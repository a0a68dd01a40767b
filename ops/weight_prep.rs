//! Expert weight preparation: checkpoint bf16 expert weights W [E, K, N] (as used in `x @ W`, N contiguous:
//! gate_up [E, H, 2I], down [E, I, H]) -> the grouped GEMM's B [E, N, K] FP8 E4M3 (K contiguous) and scales
//! [E, N] f32. Kernel: kernels/weight_prep.cu. Reference: llama4_reference::weight_prep.
//!
//! Per (expert, output column n): `scale = max(amax_k |W[e, k, n]|, 1e-12) / 448` (NaN elements do not count),
//! `q = e4m3(W * (1 / scale))` with saturation and round-to-nearest-even: the rowwise recipe of
//! [`crate::quant`] over the transposed matrix, bytes identical to the reference.
//!
//! Any E, K, N is accepted. The fast strip kernel runs for K % 16 == 0, K <= 8192 (every Llama 4 shape),
//! N % 8 == 0 and 16-byte aligned buffers; anything else runs a generic kernel that gives the same bytes but
//! reads W twice and writes bytes one at a time (a fallback, not tuned). K = 0 writes the scales of empty rows
//! (1e-12 / 448). The grouped GEMM itself needs K % 16 == 0 and N % 8 == 0.
//!
//! [`quantize_gate_up_interleaved`] prepares a gate_up weight for the grouped GEMM's SwiGLU epilogue
//! ([`crate::grouped_gemm::grouped_gemm_swiglu_fp8`]): the same bytes and scales with output row n moved to
//! `2n` for the gate half (n < N/2) and `2(n - N/2) + 1` for the up half, so each gate row sits beside its up row.

use crate::error::{ensure, Result};
use crate::ffi::{self, check_ptr, launched, WeightPrepParams};
use crate::tensor::{bf16, same_device, Tensor, TensorMut, E4M3};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;

const OP: &str = "weight_prep";

/// The CUDA grid's y dimension is the expert index.
pub const MAX_EXPERTS: usize = 65535;

/// The order of the output rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOrder {
    /// Row n is column n of W.
    Plain,
    /// gate_up weights for the SwiGLU epilogue: gate column j at row 2j, up column j (N/2 + j) at row 2j + 1.
    GateUpInterleaved,
}

/// Quantizes `w` [E, K, N] bf16 into `out` [E, N, K] E4M3 and `scales` [E, N] f32 on `stream`.
pub fn quantize_expert_weights(
    stream: &CudaStream,
    w: &Tensor<bf16, 3>,
    out: &mut TensorMut<E4M3, 3>,
    scales: &mut TensorMut<f32, 2>,
) -> Result<()> {
    prepare(stream, w, out, scales, RowOrder::Plain)
}

/// [`quantize_expert_weights`] of a gate_up weight (gate = the first N/2 columns, N even) with its output rows
/// interleaved gate, up, gate, up, ... ([`RowOrder::GateUpInterleaved`]).
pub fn quantize_gate_up_interleaved(
    stream: &CudaStream,
    w: &Tensor<bf16, 3>,
    out: &mut TensorMut<E4M3, 3>,
    scales: &mut TensorMut<f32, 2>,
) -> Result<()> {
    prepare(stream, w, out, scales, RowOrder::GateUpInterleaved)
}

fn prepare(
    stream: &CudaStream,
    w: &Tensor<bf16, 3>,
    out: &mut TensorMut<E4M3, 3>,
    scales: &mut TensorMut<f32, 2>,
    order: RowOrder,
) -> Result<()> {
    let [e, k, n] = w.shape();
    ensure!(
        out.shape() == [e, n, k],
        "{OP}: out {:?} must be [experts, n, k] = {:?} for w [experts, k, n] = {:?}",
        out.shape(),
        [e, n, k],
        w.shape()
    );
    ensure!(scales.shape() == [e, n], "{OP}: scales {:?} must be [experts, n] = {:?}", scales.shape(), [e, n]);
    same_device(stream, &[w.stream(), out.stream(), scales.stream()])?;
    let (pw, _gw) = w.ptr(stream);
    let (po, _go) = out.ptr_mut(stream);
    let (ps, _gs) = scales.ptr_mut(stream);
    let p = WeightPrepParams { w: pw as _, out: po as _, scales: ps as _, experts: e as i64, k: k as i64, n: n as i64 };
    launch_ordered(&p, order, stream.cu_stream())
}

/// Whether the fast strip kernel (not the generic fallback) runs for k x n weights in 16-byte aligned buffers
/// (cudarc allocations are 256-byte aligned). Tests and benches use it to say which path they measured.
pub fn uses_strip_kernel(k: usize, n: usize) -> bool {
    let aligned = 256usize as *mut std::ffi::c_void;
    let p = WeightPrepParams {
        w: aligned,
        out: aligned,
        scales: std::ptr::null_mut(),
        experts: 1,
        k: k as i64,
        n: n as i64,
    };
    // SAFETY: a pure function of the parameters; nothing is dereferenced.
    unsafe { ffi::l4k_internal_weight_prep_strip_path(&p) != 0 }
}

/// Validates and launches in the plain order; shared by the safe API and the C ABI.
pub(crate) fn launch(p: &WeightPrepParams, stream: CUstream) -> Result<()> {
    launch_ordered(p, RowOrder::Plain, stream)
}

fn launch_ordered(p: &WeightPrepParams, order: RowOrder, stream: CUstream) -> Result<()> {
    ensure!(
        p.experts >= 0 && p.k >= 0 && p.n >= 0,
        "{OP}: negative size (experts {}, k {}, n {})",
        p.experts,
        p.k,
        p.n
    );
    ensure!(p.experts as u64 <= MAX_EXPERTS as u64, "{OP}: experts = {} exceeds {MAX_EXPERTS}", p.experts);
    let total = p.experts.checked_mul(p.k).and_then(|x| x.checked_mul(p.n));
    ensure!(total.is_some(), "{OP}: experts x k x n = {} x {} x {} overflows int64", p.experts, p.k, p.n);
    ensure!(p.n / 8 < i32::MAX as i64, "{OP}: n = {} exceeds the grid limit", p.n);
    ensure!(
        order == RowOrder::Plain || p.n % 2 == 0,
        "{OP}: gate/up interleaving needs an even n (gate and up halves), got n = {}",
        p.n
    );
    if p.experts == 0 || p.n == 0 {
        return Ok(());
    }
    check_ptr(OP, "scales", p.scales as _, 4)?;
    if p.k > 0 {
        check_ptr(OP, "w", p.w, 2)?;
        check_ptr(OP, "out", p.out, 1)?;
    }
    // SAFETY: validated above.
    launched(OP, unsafe {
        match order {
            RowOrder::Plain => ffi::l4k_launch_weight_prep(p, stream),
            RowOrder::GateUpInterleaved => ffi::l4k_launch_weight_prep_gate_up_interleaved(p, stream),
        }
    })
}
