//! MoE routing on the device: from router logits [T, E] (bf16 or f32), each token's top-k experts and weights,
//! the per-expert counts, padded offsets and the row of every (token, choice) in expert-sorted order. Nothing
//! reaches the host: the grouped GEMM and [`crate::permute`] read the layout on the device, so a whole MoE layer
//! can be captured in a CUDA graph. Kernel: kernels/router.cu. Reference: llama4_reference::router (ranking,
//! ties, NaN rule) and llama4_reference::permute::padded_offsets.
//!
//! Layout (shared with the grouped GEMM, all int32): expert e owns rows `offsets[e] .. offsets[e + 1]`; the
//! first `counts[e]` are its (token, choice) pairs in token order, then choice order; the rest pad the block to
//! a multiple of `align`. `dest[t, c]` is the row of (token t, choice c); `offsets[E]` is the padded total.
//!
//! Styles: [`RouterKind::SigmoidTop1`] (Llama 4: top-1 on the raw logit, weight `sigmoid(logit)` in f32, rounded
//! to bf16 when the logits are bf16), [`RouterKind::SigmoidTopK`] (the same with `num_experts_per_tok = k`: the
//! k largest raw logits, each weighted by its own sigmoid) and [`RouterKind::SoftmaxTopK`] (softmax over E in
//! f32, top-k of the probabilities, optionally renormalised). Ties go to the lowest expert; a NaN logit is never
//! chosen over a number (the reference module documents the whole rule). T = 0 launches nothing and writes
//! nothing.

use crate::error::{ensure, Error, Result};
use crate::ffi::{self, check_grid, check_ptr, launched, LinearParams, PermuteParams, RouterParams};
use crate::tensor::{bf16, same_device, Element, Tensor, TensorMut, E4M3};
use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaStream, CudaViewMut, DevicePtrMut, DeviceSlice};

const OP: &str = "router";
pub const MAX_EXPERTS: usize = ffi::ROUTER_MAX_EXPERTS;
pub const MAX_TOP_K: usize = ffi::ROUTER_MAX_TOP_K;
/// Most tokens [`route_fp8`] routes in one launch: one pass of the GEMV's 8 token rows.
pub const ROUTE_MAX_TOKENS: usize = 8;
/// Longest hidden size [`route_fp8`] permutes: 8 accesses of 8 elements per thread of its 256.
pub const ROUTE_MAX_HIDDEN: usize = 16384;

/// How a token's experts and weights are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterKind {
    /// Llama 4 (`Llama4Router`): the expert with the largest raw logit, weight `sigmoid(logit)`.
    SigmoidTop1,
    /// Llama 4 with `num_experts_per_tok = k` (1..=[`MAX_TOP_K`]): the k largest raw logits, best first, each
    /// weighted by `sigmoid(its logit)` (no softmax, no renormalisation;
    /// llama4_reference::router::route_sigmoid_topk). k = 1 is [`RouterKind::SigmoidTop1`].
    SigmoidTopK { k: usize },
    /// Mixtral / Qwen style: `softmax(logits)` in f32, the k largest probabilities, divided by their sum when
    /// `renormalize`.
    SoftmaxTopK { k: usize, renormalize: bool },
}

impl RouterKind {
    /// The C ABI's mode and renormalize codes.
    fn codes(self) -> (i32, i32) {
        match self {
            // One kernel mode: it takes its top-1 fast path only for k == 1.
            RouterKind::SigmoidTop1 | RouterKind::SigmoidTopK { .. } => (ffi::ROUTER_SIGMOID_TOP1, 0),
            RouterKind::SoftmaxTopK { renormalize, .. } => (ffi::ROUTER_SOFTMAX_TOPK, renormalize as i32),
        }
    }

    /// Choices per token.
    pub fn k(self) -> usize {
        match self {
            RouterKind::SigmoidTop1 => 1,
            RouterKind::SigmoidTopK { k } | RouterKind::SoftmaxTopK { k, .. } => k,
        }
    }
}

/// Logit element types the router reads.
pub trait RouterLogits: Element {
    const DTYPE: i32;
}
impl RouterLogits for bf16 {
    const DTYPE: i32 = ffi::LOGITS_BF16;
}
impl RouterLogits for f32 {
    const DTYPE: i32 = ffi::LOGITS_F32;
}

/// Where the router writes: ids, weights and dest [T, k], counts [E], offsets [E + 1].
pub struct RouterOutputs<'o, 'a> {
    pub ids: &'o mut TensorMut<'a, i32, 2>,
    pub weights: &'o mut TensorMut<'a, f32, 2>,
    pub counts: &'o mut TensorMut<'a, i32, 1>,
    pub offsets: &'o mut TensorMut<'a, i32, 1>,
    pub dest: &'o mut TensorMut<'a, i32, 2>,
}

impl RouterOutputs<'_, '_> {
    /// ids, weights and dest [t, k], counts [e], offsets [e + 1].
    fn check_shapes(&self, op: &str, t: usize, e: usize, k: usize) -> Result<()> {
        for (name, shape) in [("ids", self.ids.shape()), ("dest", self.dest.shape())] {
            ensure!(shape == [t, k], "{op}: {name} {shape:?}, want [{t}, {k}]");
        }
        ensure!(self.weights.shape() == [t, k], "{op}: weights {:?}, want [{t}, {k}]", self.weights.shape());
        ensure!(self.counts.shape() == [e], "{op}: counts {:?}, want [{e}]", self.counts.shape());
        ensure!(self.offsets.shape() == [e + 1], "{op}: offsets {:?}, want [{}]", self.offsets.shape(), e + 1);
        Ok(())
    }
}

/// Bytes of workspace [`router`] needs for `tokens` tokens over `experts` experts with logits of type `L`.
pub fn router_workspace_size<L: RouterLogits>(tokens: usize, experts: usize) -> Result<usize> {
    let tokens = i64::try_from(tokens).map_err(|_| Error::InvalidArgument(format!("{OP}: {tokens} tokens")))?;
    workspace_bytes(tokens, i32::try_from(experts).unwrap_or(i32::MAX), L::DTYPE)
}

/// The workspace for one call: the arrival counter, then (T > 0) the per-(token tile, expert) histogram and the
/// column prefixes the kernel derives from it (kernels/router.cu sizes it).
pub(crate) fn workspace_bytes(tokens: i64, experts: i32, logits_dtype: i32) -> Result<usize> {
    check_grid(OP, "tokens", tokens)?;
    check_experts(experts)?;
    ensure!(
        logits_dtype == ffi::LOGITS_BF16 || logits_dtype == ffi::LOGITS_F32,
        "{OP}: unknown logits dtype {logits_dtype}"
    );
    // SAFETY: a pure host function of its arguments.
    let bytes = unsafe { ffi::l4k_internal_router_workspace(tokens, experts, logits_dtype) };
    ensure!(bytes > 0, "{OP}: no tile for {experts} experts");
    Ok(bytes as usize)
}

fn check_experts(experts: i32) -> Result<()> {
    ensure!(experts >= 1, "{OP}: experts must be positive (got {experts})");
    if experts as usize > MAX_EXPERTS {
        return Err(Error::Unsupported(format!("{OP}: {experts} experts; at most {MAX_EXPERTS} are supported")));
    }
    Ok(())
}

/// The routing style of `p`: experts, mode, k and renormalize (shared by [`router`] and [`route_fp8`]).
fn check_choice(op: &str, p: &RouterParams) -> Result<()> {
    check_experts(p.experts)?;
    // ROUTER_SIGMOID_TOP1 is the sigmoid mode for every k (its name predates k > 1; the C ABI keeps it).
    ensure!(
        p.mode == ffi::ROUTER_SIGMOID_TOP1 || p.mode == ffi::ROUTER_SOFTMAX_TOPK,
        "{op}: unknown routing mode {}",
        p.mode
    );
    ensure!(p.k >= 1, "{op}: k must be positive (got {})", p.k);
    if p.k as usize > MAX_TOP_K {
        return Err(Error::Unsupported(format!("{op}: k = {}; at most {MAX_TOP_K} choices are supported", p.k)));
    }
    ensure!(p.k <= p.experts, "{op}: k = {} > {} experts", p.k, p.experts);
    ensure!(p.renormalize == 0 || p.renormalize == 1, "{op}: renormalize must be 0 or 1 (got {})", p.renormalize);
    Ok(())
}

/// The routing's output pointers: non-null, 4-byte aligned.
fn check_outputs(op: &str, p: &RouterParams) -> Result<()> {
    check_ptr(op, "ids", p.ids as _, 4)?;
    check_ptr(op, "weights", p.weights as _, 4)?;
    check_ptr(op, "counts", p.counts as _, 4)?;
    check_ptr(op, "offsets", p.offsets as _, 4)?;
    check_ptr(op, "dest", p.dest as _, 4)
}

/// Routes `logits` [T, E]; `align` >= 1 pads each expert's rows to a multiple of it (1: no padding).
/// `workspace` holds at least [`router_workspace_size`] bytes; its contents on entry do not matter.
pub fn router<L: RouterLogits>(
    stream: &CudaStream,
    logits: &Tensor<L, 2>,
    kind: RouterKind,
    align: usize,
    out: RouterOutputs,
    workspace: &mut CudaViewMut<u8>,
) -> Result<()> {
    let [t, e] = logits.shape();
    let k = kind.k();
    out.check_shapes(OP, t, e, k)?;
    let int = |v: usize, what: &str| {
        i32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{OP}: {what} = {v} is too large")))
    };
    let (experts, k32, align) = (int(e, "experts")?, int(k, "k")?, int(align, "align")?);
    same_device(
        stream,
        &[
            logits.stream(),
            out.ids.stream(),
            out.weights.stream(),
            out.counts.stream(),
            out.offsets.stream(),
            out.dest.stream(),
            workspace.stream(),
        ],
    )?;
    let workspace_len = workspace.len();
    let (pl, _gl) = logits.ptr(stream);
    let (pi, _gi) = out.ids.ptr_mut(stream);
    let (pw, _gw) = out.weights.ptr_mut(stream);
    let (pc, _gc) = out.counts.ptr_mut(stream);
    let (po, _go) = out.offsets.ptr_mut(stream);
    let (pd, _gd) = out.dest.ptr_mut(stream);
    let (pws, _gws) = workspace.device_ptr_mut(stream);
    let (mode, renormalize) = kind.codes();
    let p = RouterParams {
        logits: pl as _,
        ids: pi as _,
        weights: pw as _,
        counts: pc as _,
        offsets: po as _,
        dest: pd as _,
        workspace: pws as _,
        workspace_bytes: workspace_len as i64,
        tokens: t as i64,
        experts,
        k: k32,
        mode,
        logits_dtype: L::DTYPE,
        renormalize,
        align,
    };
    launch(&p, stream.cu_stream())
}

/// Validates raw parameters (shared by the safe API and the C ABI) and launches.
pub(crate) fn launch(p: &RouterParams, stream: CUstream) -> Result<()> {
    check_grid(OP, "tokens", p.tokens)?;
    check_choice(OP, p)?;
    ensure!(p.align >= 1, "{OP}: align must be at least 1 (got {})", p.align);
    // Every row index, padded total included, is an int32.
    let rows = p.tokens * p.k as i64 + p.experts as i64 * (p.align as i64 - 1);
    ensure!(
        rows <= i32::MAX as i64,
        "{OP}: {} tokens x {} choices padded to {} give {rows} rows, over int32",
        p.tokens,
        p.k,
        p.align
    );
    let need = workspace_bytes(p.tokens, p.experts, p.logits_dtype)?;
    if p.tokens == 0 {
        return Ok(());
    }
    let elem = if p.logits_dtype == ffi::LOGITS_F32 { 4 } else { 2 };
    check_ptr(OP, "logits", p.logits, elem)?;
    check_outputs(OP, p)?;
    check_ptr(OP, "workspace", p.workspace, 4)?;
    ensure!(
        p.workspace_bytes >= need as i64,
        "{OP}: workspace is {} bytes; {} tokens over {} experts need {need} (router_workspace_size)",
        p.workspace_bytes,
        p.tokens,
        p.experts
    );
    // SAFETY: validated above.
    launched(OP, unsafe { ffi::l4k_launch_router(p, stream) })
}

/// Bytes of workspace [`route_fp8`] needs over `experts` experts (every CTA's split sums of the logits); its
/// contents on entry do not matter.
pub fn route_fp8_workspace_size(experts: usize) -> Result<usize> {
    let e = i32::try_from(experts).unwrap_or(i32::MAX);
    check_experts(e)?;
    // SAFETY: a pure host function of its argument.
    let bytes = unsafe { ffi::l4k_internal_route_fp8_workspace(e) };
    ensure!(bytes > 0, "route_fp8: no workspace size for {experts} experts");
    Ok(bytes as usize)
}

/// Decode routing in one launch (kernels/router_fused.cu), for 1..=[`ROUTE_MAX_TOKENS`] tokens: `logits` =
/// bf16(x @ w^T) (the router's nn.Linear, `w` [E, H]), their routing as [`router`] with align 1, and x's rows
/// scaled by the routing weights and quantized as [`crate::permute::permute_fp8`] writes them into `q` [rows, H] /
/// `scales` [rows] (rows >= T * k). Bit for bit those three calls, the logits as
/// [`crate::linear::Blas::linear_bf16_with`] computes them on its GEMV schedule (the same k split and sums).
/// `x` and `w` 16-byte aligned, H a multiple of 8 up to [`ROUTE_MAX_HIDDEN`]; T = 0 launches nothing. Larger
/// batches or a padded layout: [`crate::linear::Blas::linear_bf16`], [`router`], [`crate::permute::permute_fp8`].
#[allow(clippy::too_many_arguments)]
pub fn route_fp8(
    stream: &CudaStream,
    x: &Tensor<bf16, 2>,
    w: &Tensor<bf16, 2>,
    kind: RouterKind,
    logits: &mut TensorMut<bf16, 2>,
    out: RouterOutputs,
    q: &mut TensorMut<E4M3, 2>,
    scales: &mut TensorMut<f32, 1>,
    workspace: &mut CudaViewMut<u8>,
) -> Result<()> {
    const OP: &str = "route_fp8";
    let ([t, h], [e, wh], k) = (x.shape(), w.shape(), kind.k());
    ensure!(wh == h, "{OP}: router weight {:?} for hidden {h}", w.shape());
    ensure!(logits.shape() == [t, e], "{OP}: logits {:?}, want [{t}, {e}]", logits.shape());
    out.check_shapes(OP, t, e, k)?;
    let [rows, qh] = q.shape();
    ensure!(qh == h, "{OP}: q {:?} for hidden {h}", q.shape());
    ensure!(scales.shape() == [rows], "{OP}: scales {:?} for {rows} rows", scales.shape());
    same_device(
        stream,
        &[
            x.stream(),
            w.stream(),
            logits.stream(),
            out.ids.stream(),
            out.weights.stream(),
            out.counts.stream(),
            out.offsets.stream(),
            out.dest.stream(),
            q.stream(),
            scales.stream(),
            workspace.stream(),
        ],
    )?;
    let int = |v: usize, what: &str| {
        i64::try_from(v).map_err(|_| Error::InvalidArgument(format!("{OP}: {what} = {v} is too large")))
    };
    let (t, h, e, rows) = (int(t, "tokens")?, int(h, "hidden")?, int(e, "experts")?, int(rows, "rows")?);
    let workspace_len = workspace.len();
    let (px, _gx) = x.ptr(stream);
    let (pw, _gw) = w.ptr(stream);
    let (pl, _gl) = logits.ptr_mut(stream);
    let (pi, _gi) = out.ids.ptr_mut(stream);
    let (pwt, _gwt) = out.weights.ptr_mut(stream);
    let (pc, _gc) = out.counts.ptr_mut(stream);
    let (po, _go) = out.offsets.ptr_mut(stream);
    let (pd, _gd) = out.dest.ptr_mut(stream);
    let (pq, _gq) = q.ptr_mut(stream);
    let (ps, _gs) = scales.ptr_mut(stream);
    let (pws, _gws) = workspace.device_ptr_mut(stream);
    let (mode, renormalize) = kind.codes();
    let args = RouteArgs {
        x: px as _,
        w: pw as _,
        logits: pl as _,
        ids: pi as _,
        weights: pwt as _,
        counts: pc as _,
        offsets: po as _,
        dest: pd as _,
        q: pq as _,
        scales: ps as _,
        workspace: pws as _,
        workspace_bytes: workspace_len,
        tokens: t,
        hidden: h,
        experts: e,
        k: k as i64,
        rows,
        mode,
        renormalize,
    };
    // SAFETY: every pointer is a live device allocation of the checked shape, on this stream's device.
    unsafe { launch_route(&args, stream.cu_stream()) }
}

/// [`route_fp8`]'s raw arguments (shared by the safe API and the C ABI).
pub(crate) struct RouteArgs {
    pub x: *const std::ffi::c_void,
    pub w: *const std::ffi::c_void,
    pub logits: *mut std::ffi::c_void,
    pub ids: *mut i32,
    pub weights: *mut f32,
    pub counts: *mut i32,
    pub offsets: *mut i32,
    pub dest: *mut i32,
    pub q: *mut std::ffi::c_void,
    pub scales: *mut f32,
    pub workspace: *mut std::ffi::c_void,
    pub workspace_bytes: usize,
    pub tokens: i64,
    pub hidden: i64,
    pub experts: i64,
    pub k: i64,
    pub rows: i64,
    pub mode: i32,
    pub renormalize: i32,
}

/// Validates [`RouteArgs`] and launches.
///
/// # Safety
/// Non-null pointers must be device allocations of the sizes the arguments state.
pub(crate) unsafe fn launch_route(a: &RouteArgs, stream: CUstream) -> Result<()> {
    const OP: &str = "route_fp8";
    ensure!(a.tokens >= 0, "{OP}: tokens is negative ({})", a.tokens);
    if a.tokens as usize > ROUTE_MAX_TOKENS {
        return Err(Error::Unsupported(format!(
            "{OP}: {} tokens; one launch routes at most {ROUTE_MAX_TOKENS} (more: linear_bf16, router, permute_fp8)",
            a.tokens
        )));
    }
    ensure!(a.experts >= 1 && a.experts <= i32::MAX as i64, "{OP}: experts must be positive (got {})", a.experts);
    ensure!(a.k >= 1 && a.k <= i32::MAX as i64, "{OP}: k must be positive (got {})", a.k);
    let r = RouterParams {
        logits: a.logits,
        ids: a.ids,
        weights: a.weights,
        counts: a.counts,
        offsets: a.offsets,
        dest: a.dest,
        workspace: a.workspace,
        workspace_bytes: i64::try_from(a.workspace_bytes).unwrap_or(i64::MAX),
        tokens: a.tokens,
        experts: a.experts as i32,
        k: a.k as i32,
        mode: a.mode,
        logits_dtype: ffi::LOGITS_BF16,
        renormalize: a.renormalize,
        align: 1,
    };
    check_choice(OP, &r)?;
    ensure!(a.hidden >= 8 && a.hidden % 8 == 0, "{OP}: hidden must be a positive multiple of 8 (got {})", a.hidden);
    if a.hidden as usize > ROUTE_MAX_HIDDEN {
        return Err(Error::Unsupported(format!("{OP}: hidden {}; at most {ROUTE_MAX_HIDDEN}", a.hidden)));
    }
    ensure!(
        a.rows >= a.tokens * a.k && a.rows <= i32::MAX as i64,
        "{OP}: q has {} rows; {} tokens x {} choices need {}",
        a.rows,
        a.tokens,
        a.k,
        a.tokens * a.k
    );
    let need = route_fp8_workspace_size(a.experts as usize)?;
    ensure!(
        a.workspace_bytes >= need,
        "{OP}: workspace is {} bytes; {} experts need {need} (route_fp8_workspace_size)",
        a.workspace_bytes,
        a.experts
    );
    if a.tokens == 0 {
        return Ok(());
    }
    check_ptr(OP, "x", a.x, 16)?;
    check_ptr(OP, "w", a.w, 16)?;
    check_ptr(OP, "logits", a.logits, 2)?;
    check_outputs(OP, &r)?;
    check_ptr(OP, "q", a.q, 8)?;
    check_ptr(OP, "scales", a.scales as _, 4)?;
    check_ptr(OP, "workspace", a.workspace, 16)?;
    let lin = LinearParams {
        x: a.x,
        w: a.w,
        y: a.logits,
        m: a.tokens,
        n: a.experts,
        k: a.hidden,
        out_dtype: ffi::LINEAR_OUT_BF16,
        max_ctas: 0,
    };
    let pm = PermuteParams {
        x: a.x,
        weights: a.weights,
        dest: a.dest,
        counts: std::ptr::null(),
        offsets: std::ptr::null(),
        out: a.q,
        scales: a.scales,
        tokens: a.tokens,
        hidden: a.hidden,
        rows: a.rows,
        k: a.k as i32,
        experts: a.experts as i32,
        align: 1,
        out_kind: ffi::PERMUTE_FP8,
    };
    // SAFETY: validated above; the pointers are the caller's device allocations.
    launched(OP, unsafe { ffi::l4k_launch_route_fp8(&lin, &r, &pm, stream) })
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The arrival counter at the start of the workspace (the histogram follows, 16-byte aligned).
    const COUNTER_BYTES: usize = 16;

    #[test]
    fn route_fp8_workspace_holds_every_split_sum() {
        // 16 x 8 f32 sums per CTA; the GEMV's split: 8 CTAs per 16 experts up to 64 CTAs in all.
        assert_eq!(route_fp8_workspace_size(1).unwrap(), 8 * 512);
        assert_eq!(route_fp8_workspace_size(16).unwrap(), 8 * 512);
        assert_eq!(route_fp8_workspace_size(17).unwrap(), 2 * 8 * 512);
        assert_eq!(route_fp8_workspace_size(128).unwrap(), 64 * 512);
        assert_eq!(route_fp8_workspace_size(256).unwrap(), 64 * 512);
        assert!(matches!(route_fp8_workspace_size(257), Err(Error::Unsupported(_))));
        assert!(route_fp8_workspace_size(0).is_err());
    }

    #[test]
    fn workspace_grows_with_tiles_and_rejects_bad_shapes() {
        let small = router_workspace_size::<bf16>(1, 16).unwrap();
        let big = router_workspace_size::<bf16>(65536, 16).unwrap();
        assert!(small >= COUNTER_BYTES + 16 * 4 && big > small);
        assert_eq!(router_workspace_size::<f32>(0, 128).unwrap(), COUNTER_BYTES);
        // T = 16384, E = 128, bf16: 128 tiles; the histogram and the 129 prefix rows of int32.
        assert_eq!(router_workspace_size::<bf16>(16384, 128).unwrap(), COUNTER_BYTES + (2 * 128 + 1) * 128 * 4);
        assert!(matches!(router_workspace_size::<bf16>(4, 257), Err(Error::Unsupported(_))));
        assert!(router_workspace_size::<bf16>(4, 0).is_err());
        // Every tile holds at most 512 tokens (the kernel's shared arrays hold 512 x 8 pairs).
        for e in 1..=256 {
            for d in [ffi::LOGITS_BF16, ffi::LOGITS_F32] {
                // SAFETY: pure host function.
                let tile = unsafe { ffi::l4k_internal_router_tile(e, d) };
                assert!((32..=512).contains(&tile) && tile % 32 == 0, "E = {e}: tile {tile}");
            }
        }
    }
}
