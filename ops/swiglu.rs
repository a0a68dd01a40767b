//! SwiGLU over the gate/up halves of a fused gate_up projection [T, 2I] (gate first): bf16 out for the shared
//! expert and dense MLP, or fused with rowwise FP8 quantization for the routed experts' down projection.
//! Kernel: kernels/swiglu.cu. Reference: llama4_reference::swiglu.

use crate::error::{ensure, Result};
use crate::ffi::{self, check_grid, check_ptr, launched, SwigluParams, SWIGLU_BF16, SWIGLU_FP8};
use crate::tensor::{bf16, same_device, Tensor, TensorMut, E4M3};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;
use std::ptr;

const OP: &str = "swiglu";

fn inter_of(gate_up: &Tensor<bf16, 2>) -> Result<(usize, usize)> {
    let [t, two_i] = gate_up.shape();
    ensure!(two_i % 2 == 0 && two_i > 0, "{OP}: gate_up has {two_i} columns; it needs an even, positive count");
    Ok((t, two_i / 2))
}

/// out [T, I] = bf16(bf16(silu(gate)) * up).
pub fn swiglu(stream: &CudaStream, gate_up: &Tensor<bf16, 2>, out: &mut TensorMut<bf16, 2>) -> Result<()> {
    let (t, i) = inter_of(gate_up)?;
    ensure!(out.shape() == [t, i], "{OP}: out {:?}, want [{t}, {i}]", out.shape());
    same_device(stream, &[gate_up.stream(), out.stream()])?;
    let (pg, _gg) = gate_up.ptr(stream);
    let (po, _go) = out.ptr_mut(stream);
    let p = SwigluParams {
        gate_up: pg as _,
        out: po as _,
        scales: ptr::null_mut(),
        tokens: t as i64,
        inter: i as i64,
        out_kind: SWIGLU_BF16,
        _pad: 0,
    };
    launch(&p, stream.cu_stream())
}

/// The same h, quantized per row: q [T, I] E4M3 and scales [T].
pub fn swiglu_fp8(
    stream: &CudaStream,
    gate_up: &Tensor<bf16, 2>,
    q: &mut TensorMut<E4M3, 2>,
    scales: &mut TensorMut<f32, 1>,
) -> Result<()> {
    let (t, i) = inter_of(gate_up)?;
    ensure!(q.shape() == [t, i], "{OP}: q {:?}, want [{t}, {i}]", q.shape());
    ensure!(scales.shape() == [t], "{OP}: scales {:?} for {t} rows", scales.shape());
    same_device(stream, &[gate_up.stream(), q.stream(), scales.stream()])?;
    let (pg, _gg) = gate_up.ptr(stream);
    let (pq, _gq) = q.ptr_mut(stream);
    let (ps, _gs) = scales.ptr_mut(stream);
    let p = SwigluParams {
        gate_up: pg as _,
        out: pq as _,
        scales: ps as _,
        tokens: t as i64,
        inter: i as i64,
        out_kind: SWIGLU_FP8,
        _pad: 0,
    };
    launch(&p, stream.cu_stream())
}

pub(crate) fn launch(p: &SwigluParams, stream: CUstream) -> Result<()> {
    check_grid(OP, "tokens", p.tokens)?;
    ensure!(p.inter >= 1, "{OP}: inter must be positive (got {})", p.inter);
    ensure!(p.out_kind == SWIGLU_BF16 || p.out_kind == SWIGLU_FP8, "{OP}: unknown output kind {}", p.out_kind);
    if p.tokens == 0 {
        return Ok(());
    }
    check_ptr(OP, "gate_up", p.gate_up, 2)?;
    if p.out_kind == SWIGLU_FP8 {
        check_ptr(OP, "out", p.out, 1)?;
        check_ptr(OP, "scales", p.scales as _, 4)?;
    } else {
        check_ptr(OP, "out", p.out, 2)?;
    }
    // SAFETY: validated above.
    launched(OP, unsafe { ffi::l4k_launch_swiglu(p, stream) })
}
