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
use crate::ffi::{self, check_grid, check_ptr, launched, RouterParams};
use crate::tensor::{bf16, same_device, Element, Tensor, TensorMut};
use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaStream, CudaViewMut, DevicePtrMut, DeviceSlice};

const OP: &str = "router";
pub const MAX_EXPERTS: usize = ffi::ROUTER_MAX_EXPERTS;
pub const MAX_TOP_K: usize = ffi::ROUTER_MAX_TOP_K;

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
    for (name, shape) in [("ids", out.ids.shape()), ("dest", out.dest.shape())] {
        ensure!(shape == [t, k], "{OP}: {name} {shape:?}, want [{t}, {k}]");
    }
    ensure!(out.weights.shape() == [t, k], "{OP}: weights {:?}, want [{t}, {k}]", out.weights.shape());
    ensure!(out.counts.shape() == [e], "{OP}: counts {:?}, want [{e}]", out.counts.shape());
    ensure!(out.offsets.shape() == [e + 1], "{OP}: offsets {:?}, want [{}]", out.offsets.shape(), e + 1);
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
    let (mode, renormalize) = match kind {
        // One kernel mode: it takes its top-1 fast path only for k == 1.
        RouterKind::SigmoidTop1 | RouterKind::SigmoidTopK { .. } => (ffi::ROUTER_SIGMOID_TOP1, 0),
        RouterKind::SoftmaxTopK { renormalize, .. } => (ffi::ROUTER_SOFTMAX_TOPK, renormalize as i32),
    };
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
    check_experts(p.experts)?;
    // ROUTER_SIGMOID_TOP1 is the sigmoid mode for every k (its name predates k > 1; the C ABI keeps it).
    ensure!(
        p.mode == ffi::ROUTER_SIGMOID_TOP1 || p.mode == ffi::ROUTER_SOFTMAX_TOPK,
        "{OP}: unknown routing mode {}",
        p.mode
    );
    ensure!(p.k >= 1, "{OP}: k must be positive (got {})", p.k);
    if p.k as usize > MAX_TOP_K {
        return Err(Error::Unsupported(format!("{OP}: k = {}; at most {MAX_TOP_K} choices are supported", p.k)));
    }
    ensure!(p.k <= p.experts, "{OP}: k = {} > {} experts", p.k, p.experts);
    ensure!(p.renormalize == 0 || p.renormalize == 1, "{OP}: renormalize must be 0 or 1 (got {})", p.renormalize);
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
    check_ptr(OP, "ids", p.ids as _, 4)?;
    check_ptr(OP, "weights", p.weights as _, 4)?;
    check_ptr(OP, "counts", p.counts as _, 4)?;
    check_ptr(OP, "offsets", p.offsets as _, 4)?;
    check_ptr(OP, "dest", p.dest as _, 4)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    /// The arrival counter at the start of the workspace (the histogram follows, 16-byte aligned).
    const COUNTER_BYTES: usize = 16;

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
