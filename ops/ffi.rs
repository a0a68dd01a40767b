//! The CUDA launchers (kernels/*.cu) and their parameter structs, mirrored from kernels/params.h. The sizes are
//! checked against the C side by a test (`params_sizes_match_the_cuda_side`).

use crate::error::{ensure, Error, Result};
use cudarc::driver::sys::CUstream;
use std::ffi::{c_char, c_int, c_void, CStr};

pub const MAX_HEAD_DIM: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RmsnormParams {
    pub x: *const c_void,
    pub residual: *const c_void,
    pub residual_out: *mut c_void,
    pub weight: *const c_void,
    pub y: *mut c_void,
    pub rows: i64,
    pub cols: i64,
    pub eps: f32,
    pub _pad: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RopeParams {
    pub qkv: *const c_void,
    pub pos: *const i32,
    pub slots: *const i64,
    pub q_out: *mut c_void,
    pub k_cache: *mut c_void,
    pub v_cache: *mut c_void,
    pub bad_slots: *mut u32,
    pub tokens: i64,
    pub cache_slots: i64,
    pub n_heads: i32,
    pub n_kv_heads: i32,
    pub head_dim: i32,
    pub rope: i32,
    pub qk_norm: i32,
    pub temperature: i32,
    pub eps: f32,
    pub floor_scale: f32,
    pub attn_scale: f32,
    pub _pad: i32,
    pub inv_freq: [f32; MAX_HEAD_DIM / 2],
}

pub const SWIGLU_BF16: i32 = 0;
pub const SWIGLU_FP8: i32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SwigluParams {
    pub gate_up: *const c_void,
    pub out: *mut c_void,
    pub scales: *mut f32,
    pub tokens: i64,
    pub inter: i64,
    pub out_kind: i32,
    pub _pad: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct QuantParams {
    pub x: *const c_void,
    pub out: *mut c_void,
    pub scales: *mut f32,
    pub rows: i64,
    pub cols: i64,
}

pub const PARAMS_RMSNORM: c_int = 0;
pub const PARAMS_ROPE: c_int = 1;
pub const PARAMS_SWIGLU: c_int = 2;
pub const PARAMS_QUANT: c_int = 3;

extern "C" {
    pub fn l4k_launch_rmsnorm(p: *const RmsnormParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_rope(p: *const RopeParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_swiglu(p: *const SwigluParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_quant_fp8(p: *const QuantParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_dequant_fp8(p: *const QuantParams, stream: CUstream) -> c_int;
    pub fn l4k_internal_cuda_error_string(code: c_int) -> *const c_char;
    pub fn l4k_internal_params_size(which: c_int) -> usize;
}

/// The launcher status for a row longer than the register-resident row kernels hold (kernels/common.cuh).
const STATUS_TOO_LONG: c_int = -1;

/// Maps a launcher's return code to a Result.
pub fn launched(op: &str, code: c_int) -> Result<()> {
    match code {
        0 => Ok(()),
        STATUS_TOO_LONG => Err(Error::Unsupported(format!(
            "{op}: rows longer than the kernel holds in registers (32768 elements when the row length is a \
             multiple of 8 and pointers are 16-byte aligned, else 16384)"
        ))),
        c => {
            // SAFETY: cudaGetErrorString returns a static NUL-terminated string for any code.
            let msg = unsafe { CStr::from_ptr(l4k_internal_cuda_error_string(c)) };
            Err(Error::Cuda(format!("{op}: launch failed: {} (cudaError {c})", msg.to_string_lossy())))
        }
    }
}

/// A device pointer an op reads or writes: non-null, aligned to its element size.
pub fn check_ptr(op: &str, name: &str, p: *const c_void, align: usize) -> Result<()> {
    ensure!(!p.is_null(), "{op}: {name} is null");
    ensure!(p as usize % align == 0, "{op}: {name} ({p:p}) is not {align}-byte aligned");
    Ok(())
}

/// A row count that becomes a grid dimension.
pub fn check_grid(op: &str, name: &str, n: i64) -> Result<()> {
    ensure!(n >= 0, "{op}: {name} is negative ({n})");
    ensure!(n <= i32::MAX as i64, "{op}: {name} = {n} exceeds the grid limit {}", i32::MAX);
    Ok(())
}
