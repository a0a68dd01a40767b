//! The C ABI (include/llama4_kernels.h): every op over raw device pointers, sizes and a stream, returning a
//! status code; `l4k_last_error` tells why the last call on this thread failed. Each entry point validates
//! through the same `launch` functions as the safe API, so both reject the same inputs with the same message.
//! Panics never cross the boundary: they become `L4K_ERROR_PANIC` ([`Status::Panic`]) with the panic message.
//! tests/c_header.rs checks that the header declares exactly these functions, with the same parameters.
//!
//! # Safety
//!
//! Every entry point that takes a pointer is `unsafe`: validation rejects null and misaligned pointers and
//! inconsistent shapes, but cannot see whether the memory behind a pointer exists. The caller promises that each
//! non-null device pointer addresses memory of the current device covering the shape the header gives it (and
//! that outputs alias inputs only where the header allows it), that each host pointer is valid for what the
//! header says is read or written through it, and that `stream` is NULL or a live stream of the current device.
//! Kernels run after the call returns: the device memory must stay valid until the stream has run them.

use crate::abi::c_struct;
use crate::error::{Error, Result, Status};
use crate::expert_parallel::{self, EpConfig};
use crate::ffi::{ArgmaxParams, EmbeddingParams, RandomParams, GEMM_AUTO};
use crate::ffi::{
    AttentionParams, GroupedGemmParams, QuantParams, RmsnormParams, SwigluParams, SWIGLU_BF16, SWIGLU_FP8,
};
use crate::ffi::{
    PermuteParams, RouterParams, UnpermuteNormParams, UnpermuteParams, WeightPrepParams, PERMUTE_BF16, PERMUTE_FP8,
};
use crate::linear::{Blas, LinearArgs, LinearSchedule};
use crate::rope::{self, HeadLayout, LayerKind, Llama3Scaling, Temperature};
use crate::{
    argmax, attention, attention_decode, attention_prefill, embedding, grouped_gemm, permute, quant, random, rmsnorm,
    router, swiglu, weight_prep,
};
use cudarc::driver::sys::CUstream;
use std::cell::RefCell;
use std::ffi::{c_char, c_void, CString};
use std::ptr;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs an entry point: records its error (or clears the last one) and turns a panic into `Status::Panic`, so
/// a caller can tell a bug of the library from a call it got wrong.
fn guard(f: impl FnOnce() -> Result<()>) -> Status {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last_error("");
            Status::Ok
        }
        Ok(Err(e)) => {
            set_last_error(&e.to_string());
            e.status()
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal panic: {msg}"));
            Status::Panic
        }
    }
}

/// The message of the last call on this thread that failed; "" after a call that succeeded. The pointer stays
/// valid until the next l4k_* call on this thread.
#[no_mangle]
pub extern "C" fn l4k_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

#[no_mangle]
pub extern "C" fn l4k_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
pub unsafe extern "C" fn l4k_rmsnorm(
    x: *const c_void,
    weight: *const c_void,
    y: *mut c_void,
    rows: i64,
    cols: i64,
    eps: f32,
    stream: CUstream,
) -> Status {
    guard(|| norm_entry(x, None, weight, y, None, [rows, cols], eps, stream))
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_rmsnorm_with_fp8(
    x: *const c_void,
    weight: *const c_void,
    y: *mut c_void,
    y_fp8: *mut c_void,
    y_scales: *mut f32,
    rows: i64,
    cols: i64,
    eps: f32,
    stream: CUstream,
) -> Status {
    guard(|| norm_entry(x, None, weight, y, Some((y_fp8, y_scales)), [rows, cols], eps, stream))
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_add_rmsnorm(
    x: *const c_void,
    residual: *mut c_void,
    weight: *const c_void,
    y: *mut c_void,
    rows: i64,
    cols: i64,
    eps: f32,
    stream: CUstream,
) -> Status {
    guard(|| norm_entry(x, Some(residual), weight, y, None, [rows, cols], eps, stream))
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_add_rmsnorm_with_fp8(
    x: *const c_void,
    residual: *mut c_void,
    weight: *const c_void,
    y: *mut c_void,
    y_fp8: *mut c_void,
    y_scales: *mut f32,
    rows: i64,
    cols: i64,
    eps: f32,
    stream: CUstream,
) -> Status {
    guard(|| norm_entry(x, Some(residual), weight, y, Some((y_fp8, y_scales)), [rows, cols], eps, stream))
}

/// The four norm entries: `residual` given for the add (where NULL is an error), `copy` for the `*_with_fp8`
/// entries (where neither pointer may be NULL).
#[allow(clippy::too_many_arguments)]
fn norm_entry(
    x: *const c_void,
    residual: Option<*mut c_void>,
    weight: *const c_void,
    y: *mut c_void,
    copy: Option<(*mut c_void, *mut f32)>,
    [rows, cols]: [i64; 2],
    eps: f32,
    stream: CUstream,
) -> Result<()> {
    if residual.is_some_and(|r| r.is_null()) {
        return Err(Error::InvalidArgument("rmsnorm: residual is null".into()));
    }
    if let Some((q, s)) = copy {
        check_fp8_copy("rmsnorm", q, s)?;
    }
    let residual = residual.unwrap_or(ptr::null_mut());
    let (y_fp8, y_scales) = copy.unwrap_or((ptr::null_mut(), ptr::null_mut()));
    let p = RmsnormParams { x, residual, residual_out: residual, weight, y, rows, cols, eps, _pad: 0, y_fp8, y_scales };
    rmsnorm::launch(&p, stream)
}

/// The `*_with_fp8` entries' copy is not optional (the plain entries are the ones without it).
fn check_fp8_copy(op: &str, y_fp8: *mut c_void, y_scales: *mut f32) -> Result<()> {
    if y_fp8.is_null() || y_scales.is_null() {
        return Err(Error::InvalidArgument(format!("{op}: y_fp8 and y_scales must not be null")));
    }
    Ok(())
}

/// Host-side: fills `inv_freq[0 .. head_dim / 2]`; `scaling` may be NULL (no llama3 scaling).
///
/// # Safety
/// `inv_freq` must point to head_dim / 2 writable floats; `scaling` is NULL or points to a valid struct.
#[no_mangle]
pub unsafe extern "C" fn l4k_rope_inv_freq(
    theta: f32,
    head_dim: i32,
    scaling: *const Llama3Scaling,
    inv_freq: *mut f32,
) -> Status {
    guard(|| {
        if inv_freq.is_null() {
            return Err(Error::InvalidArgument("rope: inv_freq is null".into()));
        }
        let head_dim =
            usize::try_from(head_dim).map_err(|_| Error::InvalidArgument(format!("rope: head_dim {head_dim} < 0")))?;
        // SAFETY: the caller passes NULL or a valid struct.
        let scaling = unsafe { scaling.as_ref() }.copied();
        let f = rope::inv_freq(theta, head_dim, scaling)?;
        // SAFETY: the caller provides head_dim / 2 floats.
        unsafe { ptr::copy_nonoverlapping(f.as_ptr(), inv_freq, f.len()) };
        Ok(())
    })
}

pub use crate::ffi::{LAYER_NOPE, LAYER_ROPE};

c_struct! {
    /// `l4k_rope_layer`: one layer's attention shape and pre-processing.
    pub struct RopeLayer as "l4k_rope_layer" {
        pub n_heads: i32,
        pub n_kv_heads: i32,
        pub head_dim: i32,
        pub kind: i32,
        pub inv_freq: *const f32,
        pub qk_norm: i32,
        pub qk_norm_eps: f32,
        pub temperature: i32,
        pub floor_scale: f32,
        pub attn_scale: f32,
    }
}

fn layer_kind(l: &RopeLayer) -> Result<(HeadLayout, LayerKind)> {
    let dim =
        |v: i32, what: &str| usize::try_from(v).map_err(|_| Error::InvalidArgument(format!("rope: {what} = {v} < 0")));
    let layout = HeadLayout {
        n_heads: dim(l.n_heads, "n_heads")?,
        n_kv_heads: dim(l.n_kv_heads, "n_kv_heads")?,
        head_dim: dim(l.head_dim, "head_dim")?,
    };
    let kind = match l.kind {
        LAYER_ROPE => {
            if l.inv_freq.is_null() {
                return Err(Error::InvalidArgument("rope: a RoPE layer needs inv_freq".into()));
            }
            // SAFETY: the caller provides head_dim / 2 host floats (checked against MAX_HEAD_DIM in params()).
            let n = layout.head_dim.min(crate::ffi::MAX_HEAD_DIM) / 2;
            let f = unsafe { std::slice::from_raw_parts(l.inv_freq, n) }.to_vec();
            LayerKind::Rope { inv_freq: f, qk_norm: (l.qk_norm != 0).then_some(l.qk_norm_eps) }
        }
        LAYER_NOPE => LayerKind::NoPe {
            temperature: (l.temperature != 0)
                .then_some(Temperature { floor_scale: l.floor_scale, attn_scale: l.attn_scale }),
        },
        k => return Err(Error::InvalidArgument(format!("rope: unknown layer kind {k}"))),
    };
    Ok((layout, kind))
}

/// # Safety
/// `layer` must be NULL or point to a valid `l4k_rope_layer` whose `inv_freq` (RoPE layers) holds
/// head_dim / 2 host floats; device pointers must cover the sizes the header documents.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_rope_qkv(
    qkv: *const c_void,
    pos: *const i32,
    slots: *const i64,
    tokens: i64,
    layer: *const RopeLayer,
    q_out: *mut c_void,
    k_cache: *mut c_void,
    v_cache: *mut c_void,
    cache_slots: i64,
    bad_slots: *mut u32,
    stream: CUstream,
) -> Status {
    guard(|| {
        // SAFETY: NULL or valid, per the contract.
        let l = unsafe { layer.as_ref() }.ok_or_else(|| Error::InvalidArgument("rope: layer is null".into()))?;
        let (layout, kind) = layer_kind(l)?;
        let mut p = rope::params(&kind, layout, tokens, cache_slots)?;
        (p.qkv, p.pos, p.slots, p.q_out, p.k_cache, p.v_cache, p.bad_slots) =
            (qkv, pos, slots, q_out, k_cache, v_cache, bad_slots);
        rope::launch(&p, stream)
    })
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
pub unsafe extern "C" fn l4k_swiglu(
    gate_up: *const c_void,
    out: *mut c_void,
    tokens: i64,
    inter: i64,
    stream: CUstream,
) -> Status {
    guard(|| {
        let p = SwigluParams { gate_up, out, scales: ptr::null_mut(), tokens, inter, out_kind: SWIGLU_BF16, _pad: 0 };
        swiglu::launch(&p, stream)
    })
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
pub unsafe extern "C" fn l4k_swiglu_fp8(
    gate_up: *const c_void,
    q: *mut c_void,
    scales: *mut f32,
    tokens: i64,
    inter: i64,
    stream: CUstream,
) -> Status {
    guard(|| {
        let p = SwigluParams { gate_up, out: q, scales, tokens, inter, out_kind: SWIGLU_FP8, _pad: 0 };
        swiglu::launch(&p, stream)
    })
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
pub unsafe extern "C" fn l4k_quant_fp8(
    x: *const c_void,
    q: *mut c_void,
    scales: *mut f32,
    rows: i64,
    cols: i64,
    stream: CUstream,
) -> Status {
    guard(|| quant::launch_quant(&QuantParams { x, out: q, scales, rows, cols }, stream))
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
pub unsafe extern "C" fn l4k_dequant_fp8(
    q: *const c_void,
    scales: *const f32,
    out: *mut f32,
    rows: i64,
    cols: i64,
    stream: CUstream,
) -> Status {
    guard(|| quant::launch_dequant(&QuantParams { x: q, out: out as _, scales: scales as _, rows, cols }, stream))
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
pub unsafe extern "C" fn l4k_quantize_expert_weights(
    w: *const c_void,
    q: *mut c_void,
    scales: *mut f32,
    experts: i64,
    k: i64,
    n: i64,
    stream: CUstream,
) -> Status {
    guard(|| weight_prep::launch(&WeightPrepParams { w, out: q, scales, experts, k, n }, stream))
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_embedding(
    table: *const c_void,
    ids: *const i32,
    out: *mut c_void,
    rows: i64,
    tokens: i64,
    hidden: i64,
    bad_ids: *mut u32,
    stream: CUstream,
) -> Status {
    guard(|| embedding::launch(&EmbeddingParams { table, ids, out, bad_ids, rows, tokens, hidden }, stream))
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
pub unsafe extern "C" fn l4k_argmax(
    logits: *const f32,
    out: *mut i32,
    rows: i64,
    cols: i64,
    stream: CUstream,
) -> Status {
    guard(|| argmax::launch(&ArgmaxParams { logits, out, rows, cols }, stream))
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
pub unsafe extern "C" fn l4k_random_uniform_bf16(
    out: *mut c_void,
    n: i64,
    seed: u64,
    first: u64,
    bound: f32,
    stream: CUstream,
) -> Status {
    guard(|| random::launch(&RandomParams { out, n, seed, first, bound, _pad: 0 }, stream))
}

/// A cuBLASLt handle with its plan cache for the current device, written to `*blas`; free it with
/// `l4k_blas_destroy`.
///
/// # Safety
/// `blas` must be NULL (an error) or point to a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn l4k_blas_create(blas: *mut *mut Blas) -> Status {
    guard(|| {
        if blas.is_null() {
            return Err(Error::InvalidArgument("linear: blas is null".into()));
        }
        let b = Box::new(Blas::on_current_device()?);
        // SAFETY: non-null, writable per the contract.
        unsafe { *blas = Box::into_raw(b) };
        Ok(())
    })
}

/// Frees a handle from `l4k_blas_create` (NULL: nothing). GEMMs already enqueued with it still run.
///
/// # Safety
/// `blas` must be NULL or a handle from `l4k_blas_create` not freed yet, with no call using it in flight.
#[no_mangle]
pub unsafe extern "C" fn l4k_blas_destroy(blas: *mut Blas) -> Status {
    guard(|| {
        if !blas.is_null() {
            // SAFETY: made by Box::into_raw in l4k_blas_create, freed once per the contract.
            drop(unsafe { Box::from_raw(blas) });
        }
        Ok(())
    })
}

/// # Safety
/// `blas` must be NULL (an error) or a live handle from `l4k_blas_create`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_linear_bf16(
    blas: *mut Blas,
    x: *const c_void,
    w: *const c_void,
    y: *mut c_void,
    out_dtype: i32,
    m: i64,
    n: i64,
    k: i64,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: CUstream,
) -> Status {
    guard(|| {
        // SAFETY: NULL or live, per the contract.
        let blas = unsafe { blas.as_ref() }.ok_or_else(|| Error::InvalidArgument("linear: blas is null".into()))?;
        let schedule = LinearSchedule::Auto;
        blas.launch(&LinearArgs { x, w, y, out: out_dtype, m, n, k, workspace, workspace_bytes, schedule }, stream)
    })
}

/// The FP8 rowwise linear: `l4k_grouped_gemm_fp8` with one expert (offsets {0, m} on the device), schedule auto.
///
/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_linear_fp8(
    x_q: *const c_void,
    x_scales: *const f32,
    w_q: *const c_void,
    w_scales: *const f32,
    offsets: *const i32,
    y: *mut c_void,
    m: i64,
    n: i64,
    k: i64,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: CUstream,
) -> Status {
    guard(|| {
        let p = GroupedGemmParams {
            a: x_q,
            scale_a: x_scales,
            b: w_q,
            scale_b: w_scales,
            offsets,
            counts: ptr::null(),
            d: y,
            bad_offsets: ptr::null_mut(),
            workspace,
            workspace_bytes: i64::try_from(workspace_bytes).unwrap_or(i64::MAX),
            rows: m,
            n,
            k,
            experts: 1,
            schedule: grouped_gemm::Schedule::Auto.code(
                usize::try_from(m).unwrap_or(0),
                1,
                usize::try_from(n).unwrap_or(0),
            ),
        };
        grouped_gemm::launch(&p, stream)
    })
}

/// Workspace bytes of `l4k_router` for these sizes, written to `*bytes`.
///
/// # Safety
/// `bytes` must be NULL (an error) or point to a writable size_t.
#[no_mangle]
pub unsafe extern "C" fn l4k_router_workspace_size(
    tokens: i64,
    experts: i32,
    logits_dtype: i32,
    bytes: *mut usize,
) -> Status {
    guard(|| {
        if bytes.is_null() {
            return Err(Error::InvalidArgument("router: bytes is null".into()));
        }
        let n = router::workspace_bytes(tokens, experts, logits_dtype)?;
        // SAFETY: non-null, writable per the contract.
        unsafe { *bytes = n };
        Ok(())
    })
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_router(
    logits: *const c_void,
    logits_dtype: i32,
    tokens: i64,
    experts: i32,
    mode: i32,
    k: i32,
    renormalize: i32,
    align: i32,
    ids: *mut i32,
    weights: *mut f32,
    counts: *mut i32,
    offsets: *mut i32,
    dest: *mut i32,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: CUstream,
) -> Status {
    guard(|| {
        let p = RouterParams {
            logits,
            ids,
            weights,
            counts,
            offsets,
            dest,
            workspace,
            workspace_bytes: i64::try_from(workspace_bytes).unwrap_or(i64::MAX),
            tokens,
            experts,
            k,
            mode,
            logits_dtype,
            renormalize,
            align,
        };
        router::launch(&p, stream)
    })
}

/// Workspace bytes of `l4k_route_fp8` over `experts` experts, written to `*bytes`.
///
/// # Safety
/// `bytes` must be NULL (an error) or point to a writable size_t.
#[no_mangle]
pub unsafe extern "C" fn l4k_route_fp8_workspace_size(experts: i32, bytes: *mut usize) -> Status {
    guard(|| {
        if bytes.is_null() {
            return Err(Error::InvalidArgument("route_fp8: bytes is null".into()));
        }
        let n = router::route_fp8_workspace_size(usize::try_from(experts).unwrap_or(usize::MAX))?;
        // SAFETY: non-null, writable per the contract.
        unsafe { *bytes = n };
        Ok(())
    })
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_route_fp8(
    x: *const c_void,
    router_weight: *const c_void,
    tokens: i64,
    hidden: i64,
    experts: i32,
    mode: i32,
    k: i32,
    renormalize: i32,
    logits: *mut c_void,
    ids: *mut i32,
    weights: *mut f32,
    counts: *mut i32,
    offsets: *mut i32,
    dest: *mut i32,
    out: *mut c_void,
    scales: *mut f32,
    rows: i64,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: CUstream,
) -> Status {
    guard(|| {
        let a = router::RouteArgs {
            x,
            w: router_weight,
            logits,
            ids,
            weights,
            counts,
            offsets,
            dest,
            q: out,
            scales,
            workspace,
            workspace_bytes,
            tokens,
            hidden,
            experts: experts as i64,
            k: k as i64,
            rows,
            mode,
            renormalize,
        };
        // SAFETY: the caller's pointers as the contract requires; launch_route checks what it can.
        unsafe { router::launch_route(&a, stream) }
    })
}

/// Rows a permuted buffer needs (see `permute::permuted_rows`); -1 for negative or overflowing sizes.
#[no_mangle]
pub extern "C" fn l4k_permuted_rows(tokens: i64, k: i32, experts: i32, align: i32) -> i64 {
    if tokens < 0 || k < 0 || experts < 0 || align < 1 || tokens > i32::MAX as i64 {
        return -1;
    }
    let n = permute::permuted_rows(tokens as usize, k as usize, experts as usize, align as usize);
    i64::try_from(n).unwrap_or(-1)
}

/// # Safety
/// As `l4k_permute_fp8` (`scales` NULL for bf16 rows).
#[allow(clippy::too_many_arguments)]
unsafe fn permute_c(
    x: *const c_void,
    weights: *const f32,
    dest: *const i32,
    counts: *const i32,
    offsets: *const i32,
    out: *mut c_void,
    scales: *mut f32,
    tokens: i64,
    hidden: i64,
    k: i32,
    experts: i32,
    align: i32,
    rows: i64,
    out_kind: i32,
    stream: CUstream,
) -> Status {
    guard(|| {
        let p = PermuteParams {
            x,
            weights,
            dest,
            counts,
            offsets,
            out,
            scales,
            tokens,
            hidden,
            rows,
            k,
            experts,
            align,
            out_kind,
        };
        permute::launch(&p, stream)
    })
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_permute(
    x: *const c_void,
    weights: *const f32,
    dest: *const i32,
    counts: *const i32,
    offsets: *const i32,
    out: *mut c_void,
    tokens: i64,
    hidden: i64,
    k: i32,
    experts: i32,
    align: i32,
    rows: i64,
    stream: CUstream,
) -> Status {
    // SAFETY: the caller's promise, passed on.
    unsafe {
        permute_c(
            x,
            weights,
            dest,
            counts,
            offsets,
            out,
            ptr::null_mut(),
            tokens,
            hidden,
            k,
            experts,
            align,
            rows,
            PERMUTE_BF16,
            stream,
        )
    }
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_permute_fp8(
    x: *const c_void,
    weights: *const f32,
    dest: *const i32,
    counts: *const i32,
    offsets: *const i32,
    q: *mut c_void,
    scales: *mut f32,
    tokens: i64,
    hidden: i64,
    k: i32,
    experts: i32,
    align: i32,
    rows: i64,
    stream: CUstream,
) -> Status {
    // SAFETY: the caller's promise, passed on.
    unsafe {
        permute_c(
            x,
            weights,
            dest,
            counts,
            offsets,
            q,
            scales,
            tokens,
            hidden,
            k,
            experts,
            align,
            rows,
            PERMUTE_FP8,
            stream,
        )
    }
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_unpermute(
    expert_out: *const c_void,
    weights: *const f32,
    dest: *const i32,
    shared: *const c_void,
    out: *mut c_void,
    tokens: i64,
    hidden: i64,
    k: i32,
    rows: i64,
    stream: CUstream,
) -> Status {
    guard(|| {
        let p = UnpermuteParams { expert_out, weights, dest, shared, out, tokens, hidden, rows, k, _pad: 0 };
        permute::launch_unpermute(&p, stream)
    })
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_unpermute_add_rmsnorm(
    expert_out: *const c_void,
    weights: *const f32,
    dest: *const i32,
    shared: *const c_void,
    residual: *mut c_void,
    norm_weight: *const c_void,
    y: *mut c_void,
    eps: f32,
    tokens: i64,
    hidden: i64,
    k: i32,
    rows: i64,
    stream: CUstream,
) -> Status {
    let p = unpermute_norm(expert_out, weights, dest, shared, residual, norm_weight, y, eps, [tokens, hidden, rows], k);
    guard(|| permute::launch_unpermute_add_rmsnorm(&p, stream))
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_unpermute_add_rmsnorm_with_fp8(
    expert_out: *const c_void,
    weights: *const f32,
    dest: *const i32,
    shared: *const c_void,
    residual: *mut c_void,
    norm_weight: *const c_void,
    y: *mut c_void,
    y_fp8: *mut c_void,
    y_scales: *mut f32,
    eps: f32,
    tokens: i64,
    hidden: i64,
    k: i32,
    rows: i64,
    stream: CUstream,
) -> Status {
    let p = UnpermuteNormParams {
        y_fp8,
        y_scales,
        ..unpermute_norm(expert_out, weights, dest, shared, residual, norm_weight, y, eps, [tokens, hidden, rows], k)
    };
    guard(|| {
        check_fp8_copy("unpermute_add_rmsnorm", y_fp8, y_scales)?;
        permute::launch_unpermute_add_rmsnorm(&p, stream)
    })
}

/// The unpermute + norm entries' parameters, without the FP8 copy.
#[allow(clippy::too_many_arguments)]
fn unpermute_norm(
    expert_out: *const c_void,
    weights: *const f32,
    dest: *const i32,
    shared: *const c_void,
    residual: *mut c_void,
    weight: *const c_void,
    y: *mut c_void,
    eps: f32,
    [tokens, hidden, rows]: [i64; 3],
    k: i32,
) -> UnpermuteNormParams {
    let (y_fp8, y_scales) = (ptr::null_mut(), ptr::null_mut());
    UnpermuteNormParams {
        expert_out,
        weights,
        dest,
        shared,
        residual,
        weight,
        y,
        tokens,
        hidden,
        rows,
        k,
        eps,
        y_fp8,
        y_scales,
    }
}

/// Workspace bytes of `l4k_grouped_gemm_fp8` for `experts` groups on the current device, written to `*bytes`.
///
/// # Safety
/// `bytes` must be NULL (an error) or point to a writable size_t.
#[no_mangle]
pub unsafe extern "C" fn l4k_grouped_gemm_workspace_size(experts: i32, bytes: *mut usize) -> Status {
    guard(|| {
        if bytes.is_null() {
            return Err(Error::InvalidArgument("grouped_gemm: bytes is null".into()));
        }
        let e = usize::try_from(experts)
            .map_err(|_| Error::InvalidArgument(format!("grouped_gemm: experts = {experts} < 0")))?;
        let n = grouped_gemm::workspace_size(e)?;
        // SAFETY: non-null, writable per the contract.
        unsafe { *bytes = n };
        Ok(())
    })
}

/// The schedule code (1 prefill, 2 decode, 4 GEMV) that schedule 0 (auto) of `l4k_grouped_gemm_fp8` picks for
/// `routed_rows` real (token, expert) rows over `experts` experts of width `n`, written to `*schedule` (the blockwise variant
/// accepts the same code, except that it runs 2 where this says 4: pass 0 or 2 there). A
/// caller with a padded layout (router align > 1) passes tokens x k here and the result as `schedule`: auto
/// itself only sees the padded `rows`.
///
/// # Safety
/// `schedule` must be NULL (an error) or point to a writable int32_t.
#[no_mangle]
pub unsafe extern "C" fn l4k_grouped_gemm_auto_schedule(
    routed_rows: i64,
    n: i64,
    experts: i32,
    schedule: *mut i32,
) -> Status {
    guard(|| {
        if schedule.is_null() {
            return Err(Error::InvalidArgument("grouped_gemm: schedule is null".into()));
        }
        let r = usize::try_from(routed_rows)
            .map_err(|_| Error::InvalidArgument(format!("grouped_gemm: routed_rows = {routed_rows} < 0")))?;
        let e = usize::try_from(experts)
            .ok()
            .filter(|e| (1..=grouped_gemm::MAX_EXPERTS).contains(e))
            .ok_or_else(|| Error::InvalidArgument(format!("grouped_gemm: experts = {experts} outside 1..=4096")))?;
        let n = usize::try_from(n).map_err(|_| Error::InvalidArgument(format!("grouped_gemm: n = {n} < 0")))?;
        let code = grouped_gemm::Schedule::AutoRouted { routed_rows: r }.code(r, e, n);
        // SAFETY: non-null, writable per the contract.
        unsafe { *schedule = code };
        Ok(())
    })
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_grouped_gemm_fp8(
    a: *const c_void,
    scale_a: *const f32,
    b: *const c_void,
    scale_b: *const f32,
    offsets: *const i32,
    counts: *const i32,
    d: *mut c_void,
    rows: i64,
    n: i64,
    k: i64,
    experts: i32,
    schedule: i32,
    workspace: *mut c_void,
    workspace_bytes: usize,
    bad_offsets: *mut u32,
    stream: CUstream,
) -> Status {
    guard(|| {
        let schedule = if schedule == GEMM_AUTO {
            let r = usize::try_from(rows).unwrap_or(0);
            let e = usize::try_from(experts).unwrap_or(1).max(1);
            grouped_gemm::Schedule::Auto.code(r, e, usize::try_from(n).unwrap_or(0))
        } else {
            schedule
        };
        let p = GroupedGemmParams {
            a,
            scale_a,
            b,
            scale_b,
            offsets,
            counts,
            d,
            bad_offsets,
            workspace,
            workspace_bytes: i64::try_from(workspace_bytes).unwrap_or(i64::MAX),
            rows,
            n,
            k,
            experts,
            schedule,
        };
        grouped_gemm::launch(&p, stream)
    })
}

/// The blockwise-scaled grouped GEMM (include/llama4_kernels.h): scale_a [rows, k / 128], scale_b
/// [experts, n / 128, k / 128]; schedule 0 auto, 1 prefill, 2 decode. Workspace: l4k_grouped_gemm_workspace_size.
///
/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_grouped_gemm_fp8_blockwise(
    a: *const c_void,
    scale_a: *const f32,
    b: *const c_void,
    scale_b: *const f32,
    offsets: *const i32,
    counts: *const i32,
    d: *mut c_void,
    rows: i64,
    n: i64,
    k: i64,
    experts: i32,
    schedule: i32,
    workspace: *mut c_void,
    workspace_bytes: usize,
    bad_offsets: *mut u32,
    stream: CUstream,
) -> Status {
    guard(|| {
        let p = GroupedGemmParams {
            a,
            scale_a,
            b,
            scale_b,
            offsets,
            counts,
            d,
            bad_offsets,
            workspace,
            workspace_bytes: i64::try_from(workspace_bytes).unwrap_or(i64::MAX),
            rows,
            n,
            k,
            experts,
            schedule,
        };
        grouped_gemm::launch_blockwise(&p, stream)
    })
}

/// Workspace bytes of `l4k_attention_decode` on the current device, written to `*bytes`.
///
/// # Safety
/// `bytes` must be NULL (an error) or point to a writable size_t.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_attention_decode_workspace_size(
    batch: i32,
    n_heads: i32,
    n_kv_heads: i32,
    head_dim: i32,
    max_q_len: i32,
    max_kv_len: i32,
    chunk: i32,
    bytes: *mut usize,
) -> Status {
    guard(|| {
        if bytes.is_null() {
            return Err(Error::InvalidArgument("attention_decode: bytes is null".into()));
        }
        let size = |v: i32, what: &str| {
            usize::try_from(v).map_err(|_| Error::InvalidArgument(format!("attention_decode: {what} = {v} < 0")))
        };
        let mask = if chunk == 0 {
            attention::Mask::Causal
        } else {
            attention::Mask::Chunked { chunk: size(chunk, "chunk")? }
        };
        let n = attention_decode::workspace_size(attention_decode::DecodeShape {
            batch: size(batch, "batch")?,
            n_heads: size(n_heads, "n_heads")?,
            n_kv_heads: size(n_kv_heads, "n_kv_heads")?,
            head_dim: size(head_dim, "head_dim")?,
            max_q_len: size(max_q_len, "max_q_len")?,
            max_kv_len: size(max_kv_len, "max_kv_len")?,
            mask,
        })?;
        // SAFETY: non-null, writable per the contract.
        unsafe { *bytes = n };
        Ok(())
    })
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_attention_decode(
    q: *const c_void,
    k_cache: *const c_void,
    v_cache: *const c_void,
    cu_seqlens_q: *const i32,
    seq_lens_k: *const i32,
    block_table: *const i32,
    out: *mut c_void,
    total_q: i64,
    batch: i32,
    n_heads: i32,
    n_kv_heads: i32,
    head_dim: i32,
    slots: i64,
    block_size: i32,
    max_blocks: i32,
    max_q_len: i32,
    chunk: i32,
    softmax_scale: f32,
    workspace: *mut c_void,
    workspace_bytes: usize,
    bad_seqs: *mut u32,
    stream: CUstream,
) -> Status {
    guard(|| {
        let p = AttentionParams {
            q,
            k_cache,
            v_cache,
            cu_seqlens_q,
            seq_lens_k,
            block_table,
            out,
            bad_seqs,
            workspace,
            workspace_bytes: i64::try_from(workspace_bytes).unwrap_or(i64::MAX),
            total_q,
            slots,
            batch,
            max_blocks,
            block_size,
            n_heads,
            n_kv_heads,
            head_dim,
            chunk,
            max_q_len,
            softmax_scale,
            _pad: 0,
        };
        attention_decode::launch(&p, stream)
    })
}

/// Prefill attention over the paged KV cache (see `attention_prefill` and include/llama4_kernels.h). Arguments in
/// `l4k_attention_decode`'s order, less the workspace prefill does not need.
///
/// # Safety
/// The pointers and the stream as the module's Safety section requires.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_attention_prefill(
    q: *const c_void,
    k_cache: *const c_void,
    v_cache: *const c_void,
    cu_seqlens_q: *const i32,
    seq_lens_k: *const i32,
    block_table: *const i32,
    out: *mut c_void,
    total_q: i64,
    batch: i32,
    n_heads: i32,
    n_kv_heads: i32,
    head_dim: i32,
    slots: i64,
    block_size: i32,
    max_blocks: i32,
    max_q_len: i32,
    chunk: i32,
    softmax_scale: f32,
    bad_seqs: *mut u32,
    stream: CUstream,
) -> Status {
    guard(|| {
        let p = AttentionParams {
            q,
            k_cache,
            v_cache,
            cu_seqlens_q,
            seq_lens_k,
            block_table,
            out,
            bad_seqs,
            workspace: ptr::null_mut(),
            workspace_bytes: 0,
            total_q,
            slots,
            batch,
            max_blocks,
            block_size,
            n_heads,
            n_kv_heads,
            head_dim,
            chunk,
            max_q_len,
            softmax_scale,
            _pad: 0,
        };
        attention_prefill::launch(&p, stream)
    })
}

/// The key-tile path of `l4k_attention_prefill` for these caches on the current device, written to `*path` as an
/// `l4k_prefill_path` (see include/llama4_kernels.h).
///
/// # Safety
/// `path` must be NULL (an error) or point to a writable int32.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_attention_prefill_path(
    k_cache: *const c_void,
    v_cache: *const c_void,
    slots: i64,
    n_kv_heads: i32,
    head_dim: i32,
    block_size: i32,
    chunk: i32,
    path: *mut i32,
) -> Status {
    guard(|| {
        if path.is_null() {
            return Err(Error::InvalidArgument("attention_prefill: path is null".into()));
        }
        let p = AttentionParams {
            q: ptr::null(),
            k_cache,
            v_cache,
            cu_seqlens_q: ptr::null(),
            seq_lens_k: ptr::null(),
            block_table: ptr::null(),
            out: ptr::null_mut(),
            bad_seqs: ptr::null_mut(),
            workspace: ptr::null_mut(),
            workspace_bytes: 0,
            total_q: 0,
            slots,
            batch: 0,
            max_blocks: 0,
            block_size,
            n_heads: n_kv_heads,
            n_kv_heads,
            head_dim,
            chunk,
            max_q_len: 0,
            softmax_scale: 1.0,
            _pad: 0,
        };
        let code = match attention_prefill::path_of(&p)? {
            attention_prefill::KeyTilePath::Tma => crate::ffi::PREFILL_PATH_TMA,
            attention_prefill::KeyTilePath::CpAsyncLayout => crate::ffi::PREFILL_PATH_CP_ASYNC_LAYOUT,
            attention_prefill::KeyTilePath::CpAsyncNoTensorMap => crate::ffi::PREFILL_PATH_CP_ASYNC_NO_TENSOR_MAP,
        };
        // SAFETY: non-null, writable per the contract.
        unsafe { *path = code };
        Ok(())
    })
}

/// Workspace bytes of `l4k_ep_dispatch` / `l4k_ep_combine` for `config`, written to `*bytes`.
///
/// # Safety
/// `config` NULL (an error) or a valid `l4k_ep_config`; `bytes` NULL (an error) or writable.
#[no_mangle]
pub unsafe extern "C" fn l4k_ep_workspace_size(config: *const EpConfig, bytes: *mut usize) -> Status {
    guard(|| {
        if bytes.is_null() {
            return Err(Error::InvalidArgument("expert_parallel: bytes is null".into()));
        }
        let n = expert_parallel::c_sizes(config)?.bytes;
        // SAFETY: non-null, writable per the contract.
        unsafe { *bytes = n };
        Ok(())
    })
}

/// Rows of the grouped layout of `config`, written to `*rows`.
///
/// # Safety
/// `config` NULL (an error) or a valid `l4k_ep_config`; `rows` NULL (an error) or writable.
#[no_mangle]
pub unsafe extern "C" fn l4k_ep_grouped_rows(config: *const EpConfig, rows: *mut i64) -> Status {
    guard(|| {
        if rows.is_null() {
            return Err(Error::InvalidArgument("expert_parallel: rows is null".into()));
        }
        let n = expert_parallel::c_sizes(config)?.grouped_rows as i64;
        // SAFETY: non-null, writable per the contract.
        unsafe { *rows = n };
        Ok(())
    })
}

/// # Safety
/// The pointers and the stream as the module's Safety section requires; `comm` NULL or a live `ncclComm_t` of
/// the current device.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_ep_dispatch(
    comm: *mut c_void,
    config: *const EpConfig,
    tokens: i64,
    ids: *const i32,
    counts: *const i32,
    offsets: *const i32,
    dest: *const i32,
    rows: *const c_void,
    row_scales: *const f32,
    rows_in: i64,
    rows_by: i32,
    grouped: *mut c_void,
    grouped_scales: *mut f32,
    grouped_counts: *mut i32,
    grouped_offsets: *mut i32,
    grouped_rows: i64,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: CUstream,
) -> Status {
    guard(|| {
        // SAFETY: the caller's promise, passed on.
        unsafe {
            expert_parallel::c_dispatch(
                comm,
                config,
                tokens,
                [ids, counts, offsets, dest],
                rows,
                row_scales,
                rows_in,
                rows_by,
                (grouped, grouped_scales, grouped_counts, grouped_offsets, grouped_rows),
                (workspace, workspace_bytes),
                stream,
            )
        }
    })
}

/// # Safety
/// As `l4k_ep_dispatch`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn l4k_ep_combine(
    comm: *mut c_void,
    config: *const EpConfig,
    tokens: i64,
    expert_out: *const c_void,
    grouped_rows: i64,
    weights: *const f32,
    shared: *const c_void,
    out: *mut c_void,
    workspace: *mut c_void,
    workspace_bytes: usize,
    stream: CUstream,
) -> Status {
    guard(|| {
        // SAFETY: the caller's promise, passed on.
        unsafe {
            expert_parallel::c_combine(
                comm,
                config,
                tokens,
                expert_out,
                grouped_rows,
                weights,
                shared,
                out,
                (workspace, workspace_bytes),
                stream,
            )
        }
    })
}

/// Synchronizes `stream`, then copies the workspace's status to `status[0..4]` (host); `clear != 0` zeroes it.
///
/// # Safety
/// `workspace` a live expert-parallel workspace of the current device; `status` 4 writable uint32.
#[no_mangle]
pub unsafe extern "C" fn l4k_ep_status(
    workspace: *mut c_void,
    clear: i32,
    status: *mut u32,
    stream: CUstream,
) -> Status {
    // SAFETY: the caller's promise, passed on.
    guard(|| unsafe { expert_parallel::c_status(workspace, clear, status, stream) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last_error() -> String {
        // SAFETY: l4k_last_error returns a valid C string.
        unsafe { CStr::from_ptr(l4k_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_at_the_boundary_is_its_own_status() {
        assert_eq!(guard(|| panic!("a literal message")), Status::Panic);
        assert_eq!(last_error(), "internal panic: a literal message");
        assert_eq!(guard(|| panic!("a {} message", "formatted")), Status::Panic);
        assert_eq!(last_error(), "internal panic: a formatted message");

        // An error is still the error's status, and success clears the message.
        assert_eq!(guard(|| Err(Error::Unsupported("x".into()))), Status::Unsupported);
        assert_eq!(last_error(), "unsupported: x");
        assert_eq!(guard(|| Ok(())), Status::Ok);
        assert_eq!(last_error(), "");
    }
}
