//! The CUDA launchers (kernels/*.cu), their parameter structs (kernels/params.h and kernels/*_params.h) and the
//! constants shared with C, declared through [`c_struct!`] and [`c_consts!`] so that ops/abi.rs's tests compare
//! every field and every value with the tables kernels/abi.cu exports. [`launched`] maps every launcher status
//! (kernels/status.h) to an [`Error`].

use crate::abi::{c_consts, c_struct};
use crate::error::{ensure, Error, Result};
use cudarc::driver::sys::CUstream;
use std::ffi::{c_char, c_int, c_void, CStr};

c_consts! {
    // Launcher statuses (kernels/status.h), beside 0 (success) and the cudaError_t codes (> 0).
    pub const STATUS_TOO_LONG: c_int = -1;
    pub const STATUS_BAD_WORKSPACE: c_int = -2;
    pub const STATUS_GEMM_CANNOT_IMPLEMENT: c_int = -11;
    pub const STATUS_GEMM_CUTLASS: c_int = -12;
    pub const STATUS_UNSUPPORTED_SHAPE: c_int = -20;
    pub const STATUS_BAD_PARAMS: c_int = -21;

    pub const MAX_HEAD_DIM: usize = 256;
    /// `l4k_rope_layer.kind` of a RoPE layer (RoPE and chunked attention).
    pub const LAYER_ROPE: i32 = 0;
    /// `l4k_rope_layer.kind` of a NoPE layer (global attention).
    pub const LAYER_NOPE: i32 = 1;
    // SwigluParams::out_kind.
    pub const SWIGLU_BF16: i32 = 0;
    pub const SWIGLU_FP8: i32 = 1;

    pub const ROUTER_MAX_EXPERTS: usize = 256;
    pub const ROUTER_MAX_TOP_K: usize = 8;
    // RouterParams::mode and logits_dtype: the C ABI's codes, passed through.
    pub const ROUTER_SIGMOID_TOP1: i32 = 0;
    pub const ROUTER_SOFTMAX_TOPK: i32 = 1;
    pub const LOGITS_BF16: i32 = 0;
    pub const LOGITS_F32: i32 = 1;
    // PermuteParams::out_kind.
    pub const PERMUTE_BF16: i32 = 0;
    pub const PERMUTE_FP8: i32 = 1;

    // GroupedGemmParams::schedule (L4kGemmSchedule); the C ABI passes the same codes.
    pub const GEMM_AUTO: i32 = 0;
    pub const GEMM_PREFILL: i32 = 1;
    pub const GEMM_DECODE: i32 = 2;
    pub const GEMM_PREFILL_FAST_ACCUM: i32 = 3;
    pub const GEMM_GEMV: i32 = 4;

    /// `out_dtype` of `l4k_linear_bf16` for a bf16 output.
    pub const LINEAR_OUT_BF16: i32 = 0;
    /// `out_dtype` of `l4k_linear_bf16` for an f32 output.
    pub const LINEAR_OUT_F32: i32 = 1;
    /// Workspace bytes [`crate::linear::Blas::linear_bf16`] needs (cuBLASLt's recommendation for Hopper). Plans
    /// are made with this much, so a call refuses a smaller workspace.
    pub const LINEAR_WORKSPACE_BYTES: usize = 32 << 20;

    // l4k_prefill_path: how the prefill kernel loads whole key tiles (ops/attention_prefill.rs KeyTilePath).
    pub const PREFILL_PATH_TMA: i32 = 0;
    pub const PREFILL_PATH_CP_ASYNC_LAYOUT: i32 = 1;
    pub const PREFILL_PATH_CP_ASYNC_NO_TENSOR_MAP: i32 = 2;

    // Expert parallelism (kernels/expert_parallel_params.h, include/llama4_kernels.h).
    pub const EP_MAX_RANKS: usize = 64;
    /// ExpertParallelParams::rows_by: pair (t, c) is row dest[t, c] of the FP8 rows (permute_fp8's output).
    pub const EP_ROWS_PERMUTED: i32 = 0;
    /// ExpertParallelParams::rows_by: pair (t, c) is row t (quant_fp8 of the tokens).
    pub const EP_ROWS_TOKENS: i32 = 1;
    // Bits of the status flags word.
    pub const EP_BAD_EXPERT: u32 = 1;
    pub const EP_BAD_ROUTING: u32 = 2;
    pub const EP_OVERFLOW: u32 = 4;
    pub const EP_BAD_HEADER: u32 = 8;
    pub const EP_BAD_ROW: u32 = 16;
}

c_struct! {
    pub struct RmsnormParams as "L4kRmsnormParams" {
        pub x: *const c_void,
        pub residual: *const c_void,
        pub residual_out: *mut c_void,
        pub weight: *const c_void,
        pub y: *mut c_void,
        pub rows: i64,
        pub cols: i64,
        pub eps: f32,
        pub _pad: i32,
        pub y_fp8: *mut c_void,
        pub y_scales: *mut f32,
    }
}

c_struct! {
    pub struct RopeParams as "L4kRopeParams" {
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
}

c_struct! {
    pub struct SwigluParams as "L4kSwigluParams" {
        pub gate_up: *const c_void,
        pub out: *mut c_void,
        pub scales: *mut f32,
        pub tokens: i64,
        pub inter: i64,
        pub out_kind: i32,
        pub _pad: i32,
    }
}

c_struct! {
    pub struct QuantParams as "L4kQuantParams" {
        pub x: *const c_void,
        pub out: *mut c_void,
        pub scales: *mut f32,
        pub rows: i64,
        pub cols: i64,
    }
}

c_struct! {
    pub struct WeightPrepParams as "L4kWeightPrepParams" {
        pub w: *const c_void,
        pub out: *mut c_void,
        pub scales: *mut f32,
        pub experts: i64,
        pub k: i64,
        pub n: i64,
    }
}

c_struct! {
    pub struct RouterParams as "L4kRouterParams" {
        pub logits: *const c_void,
        pub ids: *mut i32,
        pub weights: *mut f32,
        pub counts: *mut i32,
        pub offsets: *mut i32,
        pub dest: *mut i32,
        pub workspace: *mut c_void,
        pub workspace_bytes: i64,
        pub tokens: i64,
        pub experts: i32,
        pub k: i32,
        pub mode: i32,
        pub logits_dtype: i32,
        pub renormalize: i32,
        pub align: i32,
    }
}

c_struct! {
    pub struct PermuteParams as "L4kPermuteParams" {
        pub x: *const c_void,
        pub weights: *const f32,
        pub dest: *const i32,
        pub counts: *const i32,
        pub offsets: *const i32,
        pub out: *mut c_void,
        pub scales: *mut f32,
        pub tokens: i64,
        pub hidden: i64,
        pub rows: i64,
        pub k: i32,
        pub experts: i32,
        pub align: i32,
        pub out_kind: i32,
    }
}

c_struct! {
    pub struct UnpermuteParams as "L4kUnpermuteParams" {
        pub expert_out: *const c_void,
        pub weights: *const f32,
        pub dest: *const i32,
        pub shared: *const c_void,
        pub out: *mut c_void,
        pub tokens: i64,
        pub hidden: i64,
        pub rows: i64,
        pub k: i32,
        pub _pad: i32,
    }
}

c_struct! {
    pub struct UnpermuteNormParams as "L4kUnpermuteNormParams" {
        pub expert_out: *const c_void,
        pub weights: *const f32,
        pub dest: *const i32,
        pub shared: *const c_void,
        pub residual: *mut c_void,
        pub weight: *const c_void,
        pub y: *mut c_void,
        pub tokens: i64,
        pub hidden: i64,
        pub rows: i64,
        pub k: i32,
        pub eps: f32,
        pub y_fp8: *mut c_void,
        pub y_scales: *mut f32,
    }
}

c_struct! {
    pub struct EmbeddingParams as "L4kEmbeddingParams" {
        pub table: *const c_void,
        pub ids: *const i32,
        pub out: *mut c_void,
        pub bad_ids: *mut u32,
        pub rows: i64,
        pub tokens: i64,
        pub hidden: i64,
    }
}

c_struct! {
    pub struct RandomParams as "L4kRandomParams" {
        pub out: *mut c_void,
        pub n: i64,
        pub seed: u64,
        pub first: u64,
        pub bound: f32,
        pub _pad: i32,
    }
}

c_struct! {
    pub struct LinearParams as "L4kLinearParams" {
        pub x: *const c_void,
        pub w: *const c_void,
        pub y: *mut c_void,
        pub m: i64,
        pub n: i64,
        pub k: i64,
        pub out_dtype: i32,
        pub max_ctas: i32,
    }
}

c_struct! {
    pub struct ArgmaxParams as "L4kArgmaxParams" {
        pub logits: *const f32,
        pub out: *mut i32,
        pub rows: i64,
        pub cols: i64,
    }
}

c_struct! {
    /// kernels/grouped_gemm_params.h
    pub struct GroupedGemmParams as "L4kGroupedGemmParams" {
        pub a: *const c_void,
        pub scale_a: *const f32,
        pub b: *const c_void,
        pub scale_b: *const f32,
        pub offsets: *const i32,
        pub counts: *const i32,
        pub d: *mut c_void,
        pub bad_offsets: *mut u32,
        pub workspace: *mut c_void,
        pub workspace_bytes: i64,
        pub rows: i64,
        pub n: i64,
        pub k: i64,
        pub experts: i32,
        pub schedule: i32,
    }
}

c_struct! {
    /// kernels/attention_params.h
    pub struct AttentionParams as "L4kAttentionParams" {
        pub q: *const c_void,
        pub k_cache: *const c_void,
        pub v_cache: *const c_void,
        pub cu_seqlens_q: *const i32,
        pub seq_lens_k: *const i32,
        pub block_table: *const i32,
        pub out: *mut c_void,
        pub bad_seqs: *mut u32,
        pub workspace: *mut c_void,
        pub workspace_bytes: i64,
        pub total_q: i64,
        pub slots: i64,
        pub batch: i32,
        pub max_blocks: i32,
        pub block_size: i32,
        pub n_heads: i32,
        pub n_kv_heads: i32,
        pub head_dim: i32,
        pub chunk: i32,
        pub max_q_len: i32,
        pub softmax_scale: f32,
        pub _pad: i32,
    }
}

c_struct! {
    /// kernels/expert_parallel_params.h
    pub struct ExpertParallelParams as "L4kExpertParallelParams" {
        pub ids: *const i32,
        pub counts: *const i32,
        pub offsets: *const i32,
        pub dest: *const i32,
        pub rows: *const c_void,
        pub row_scales: *const f32,
        pub grouped: *mut c_void,
        pub grouped_scales: *mut f32,
        pub grouped_counts: *mut i32,
        pub grouped_offsets: *mut i32,
        pub expert_out: *const c_void,
        pub status: *mut u32,
        pub slot: *mut i32,
        pub send: *mut c_void,
        pub recv: *const c_void,
        pub row_of_slot: *mut i32,
        pub table: *mut i32,
        pub tokens: i64,
        pub hidden: i64,
        pub rows_in: i64,
        pub grouped_rows: i64,
        pub capacity: i64,
        pub slab_bytes: i64,
        pub rows_off: i64,
        pub scales_off: i64,
        pub world_size: i32,
        pub rank: i32,
        pub experts: i32,
        pub k: i32,
        pub align: i32,
        pub rows_by: i32,
    }
}

extern "C" {
    pub fn l4k_launch_ep_pack(p: *const ExpertParallelParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_ep_unpack(p: *const ExpertParallelParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_ep_combine_pack(p: *const ExpertParallelParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_grouped_gemm(p: *const GroupedGemmParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_grouped_gemm_swiglu(p: *const GroupedGemmParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_grouped_gemm_gemv(p: *const GroupedGemmParams, stream: CUstream) -> c_int;
    pub fn l4k_internal_grouped_gemm_workspace_size(experts: i32) -> usize;
    pub fn l4k_launch_grouped_gemm_blockwise(p: *const GroupedGemmParams, stream: CUstream) -> c_int;
    pub fn l4k_internal_grouped_gemm_blockwise_workspace_size(experts: i32) -> usize;
    pub fn l4k_launch_rmsnorm(p: *const RmsnormParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_rope(p: *const RopeParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_swiglu(p: *const SwigluParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_quant_fp8(p: *const QuantParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_dequant_fp8(p: *const QuantParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_weight_prep(p: *const WeightPrepParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_weight_prep_gate_up_interleaved(p: *const WeightPrepParams, stream: CUstream) -> c_int;
    pub fn l4k_internal_weight_prep_strip_path(p: *const WeightPrepParams) -> c_int;
    pub fn l4k_launch_router(p: *const RouterParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_route_fp8(
        lin: *const LinearParams,
        r: *const RouterParams,
        pm: *const PermuteParams,
        stream: CUstream,
    ) -> c_int;
    pub fn l4k_internal_route_fp8_workspace(experts: c_int) -> i64;
    pub fn l4k_launch_embedding(p: *const EmbeddingParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_argmax(p: *const ArgmaxParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_linear_gemv(p: *const LinearParams, stream: CUstream) -> c_int;
    pub fn l4k_internal_linear_splits(m: i64, n: i64) -> c_int;
    pub fn l4k_launch_random_uniform_bf16(p: *const RandomParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_permute(p: *const PermuteParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_unpermute(p: *const UnpermuteParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_unpermute_add_rmsnorm(p: *const UnpermuteNormParams, stream: CUstream) -> c_int;
    pub fn l4k_launch_attention_decode(p: *const AttentionParams, stream: CUstream) -> c_int;
    pub fn l4k_internal_attention_decode_plan(
        batch: i32,
        n_heads: i32,
        n_kv_heads: i32,
        head_dim: i32,
        max_q_len: i32,
        max_kv_len: i32,
        chunk: i32,
        sms: i32,
        splits: *mut i32,
        workspace_bytes: *mut i64,
    );
    pub fn l4k_internal_current_sm_count(sms: *mut i32) -> c_int;
    pub fn l4k_internal_attention_prefill_path(p: *const AttentionParams) -> c_int;
    #[cfg(test)] // the key-range test; the kernels compute it themselves
    pub fn l4k_internal_attention_key_range(q_first: i32, q_last: i32, chunk: i32, lo: *mut i32, hi: *mut i32);
    pub fn l4k_launch_attention_prefill(p: *const AttentionParams, stream: CUstream) -> c_int;
    #[cfg(test)] // the tile-size invariants test; the op itself asks for the workspace size
    pub fn l4k_internal_router_tile(experts: c_int, logits_dtype: c_int) -> c_int;
    pub fn l4k_internal_router_workspace(tokens: i64, experts: c_int, logits_dtype: c_int) -> i64;
    pub fn l4k_internal_cuda_error_string(code: c_int) -> *const c_char;
    pub fn l4k_internal_set_pdl(on: c_int);
    pub fn l4k_internal_pdl_enabled() -> c_int;
    #[cfg(test)]
    pub fn l4k_internal_params_struct(which: c_int, size: *mut usize) -> *const c_char;
    #[cfg(test)]
    pub fn l4k_internal_params_field(
        which: c_int,
        index: c_int,
        name: *mut *const c_char,
        offset: *mut usize,
        size: *mut usize,
        kind: *mut c_char,
    ) -> c_int;
    #[cfg(test)]
    pub fn l4k_internal_constant(index: c_int, value: *mut i64) -> *const c_char;
}

/// Maps a launcher's return code to a Result: every launcher status (kernels/status.h) here, the rest as
/// cudaError_t codes.
pub fn launched(op: &str, code: c_int) -> Result<()> {
    match code {
        0 => Ok(()),
        STATUS_TOO_LONG => Err(Error::Unsupported(format!(
            "{op}: rows longer than the kernel holds in registers (32768 elements when the row length is a \
             multiple of 8 and pointers are 16-byte aligned, else 16384)"
        ))),
        STATUS_BAD_WORKSPACE => {
            Err(Error::InvalidArgument(format!("{op}: workspace smaller than the op needs (see its workspace size)")))
        }
        STATUS_GEMM_CANNOT_IMPLEMENT => {
            Err(Error::Unsupported(format!("{op}: CUTLASS cannot implement this problem (sizes or alignment)")))
        }
        STATUS_GEMM_CUTLASS => Err(Error::Cuda(format!("{op}: CUTLASS failed to initialize or launch the kernel"))),
        STATUS_UNSUPPORTED_SHAPE => {
            Err(Error::Unsupported(format!("{op}: shape outside what the kernel is built for")))
        }
        STATUS_BAD_PARAMS => Err(Error::InvalidArgument(format!("{op}: parameters rejected by the launcher"))),
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
