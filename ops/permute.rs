//! Token rows into and out of the expert-sorted layout of [`crate::router`]. Kernel: kernels/permute.cu.
//! Reference: llama4_reference::permute.
//!
//! - [`permute`] / [`permute_fp8`]: row `dest[t, c]` of the output is `x[t]`, optionally scaled by the routing
//!   weight first (Llama 4 scales the expert INPUT: `bf16(x * w)`), written as bf16 or as FP8 E4M3 with one f32
//!   scale per row (`scale = max(amax, 1e-12) / 448`, `q = e4m3(x * (1 / scale))`, as [`crate::quant`]).
//! - [`unpermute`]: `out[t] = bf16(sum_c (w[t, c] *)? y[dest[t, c]] (+ shared[t]))`, summed in f32 in choice order,
//!   the shared-expert row last, one rounding. [`unpermute_add_rmsnorm`]: the same row fed straight into the
//!   decoder's next residual add and norm, in the same kernel.
//!
//! Layout for the FP8 grouped GEMM: expert e owns rows `offsets[e] .. offsets[e + 1]` of the permuted buffer
//! (device int32, from the router); with [`Padding`], rows past `offsets[e] + counts[e]` in that block are
//! written as the quantization of a zero row (bytes 0, scale 1e-12 / 448; bf16: zeros), so a GEMM can run
//! whole tiles. Rows at and past `offsets[E]` are not written. Destinations outside the output are skipped,
//! never written out of bounds.

use crate::error::{ensure, Error, Result};
use crate::ffi::{
    self, check_grid, check_ptr, launched, PermuteParams, UnpermuteNormParams, UnpermuteParams, PERMUTE_BF16,
    PERMUTE_FP8,
};
use crate::quant::Fp8Copy;
use crate::router::MAX_TOP_K;
use crate::tensor::{bf16, same_device, Tensor, TensorMut, E4M3};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;
use std::ffi::c_void;
use std::ptr;

const OP: &str = "permute";
const OP_UNPERMUTE: &str = "unpermute";
const OP_UNPERMUTE_NORM: &str = "unpermute_add_rmsnorm";
/// Largest padding multiple (a GEMM tile is at most a few hundred rows).
pub const MAX_ALIGN: usize = 4096;

/// The router's counts [E] and padded offsets [E + 1], with the `align` the router was given.
pub struct Padding<'t, 'a> {
    pub counts: &'t Tensor<'a, i32, 1>,
    pub offsets: &'t Tensor<'a, i32, 1>,
    pub align: usize,
}

/// Rows a permuted buffer needs for every routing of `tokens` x `k` pairs over `experts` experts padded to
/// `align`: each of at most min(E, T * k) non-empty experts adds fewer than `align` padding rows.
pub fn permuted_rows(tokens: usize, k: usize, experts: usize, align: usize) -> usize {
    let pairs = tokens * k;
    pairs + experts.min(pairs) * align.saturating_sub(1)
}

/// Checks the operands every permute shares; returns (tokens, hidden, k, experts, align).
fn gather_shape(
    x: &Tensor<bf16, 2>,
    dest: &Tensor<i32, 2>,
    scale_by: Option<&Tensor<f32, 2>>,
    padding: Option<&Padding>,
) -> Result<[usize; 5]> {
    let [t, h] = x.shape();
    let [dt, k] = dest.shape();
    ensure!(dt == t, "{OP}: dest has {dt} rows for {t} tokens");
    if let Some(w) = scale_by {
        ensure!(w.shape() == [t, k], "{OP}: weights {:?}, want [{t}, {k}]", w.shape());
    }
    let (e, align) = match padding {
        Some(pd) => {
            let [e] = pd.counts.shape();
            ensure!(pd.offsets.shape() == [e + 1], "{OP}: offsets {:?} for {e} experts", pd.offsets.shape());
            (e, pd.align)
        }
        None => (0, 1),
    };
    Ok([t, h, k, e, align])
}

fn int32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{OP}: {what} = {v} is too large")))
}

/// The output side of a permute: its shape, device pointers (already ordered on the stream by the caller's
/// guards) and kind.
struct Target {
    rows: usize,
    hidden: usize,
    out: u64,
    scales: u64,
    kind: i32,
}

fn gather(
    stream: &CudaStream,
    x: &Tensor<bf16, 2>,
    dest: &Tensor<i32, 2>,
    scale_by: Option<&Tensor<f32, 2>>,
    padding: Option<&Padding>,
    target: Target,
) -> Result<()> {
    let [t, h, k, e, align] = gather_shape(x, dest, scale_by, padding)?;
    ensure!(target.hidden == h, "{OP}: out has {} columns, x has {h}", target.hidden);
    let mut streams = vec![x.stream(), dest.stream()];
    streams.extend(scale_by.map(|w| w.stream()));
    if let Some(pd) = padding {
        streams.extend([pd.counts.stream(), pd.offsets.stream()]);
    }
    same_device(stream, &streams)?;
    let (px, _gx) = x.ptr(stream);
    let (pd, _gd) = dest.ptr(stream);
    let w = scale_by.map(|w| w.ptr(stream));
    let c = padding.map(|pd| (pd.counts.ptr(stream), pd.offsets.ptr(stream)));
    let p = PermuteParams {
        x: px as _,
        weights: w.as_ref().map_or(ptr::null(), |w| w.0 as _),
        dest: pd as _,
        counts: c.as_ref().map_or(ptr::null(), |c| c.0 .0 as _),
        offsets: c.as_ref().map_or(ptr::null(), |c| c.1 .0 as _),
        out: target.out as _,
        scales: target.scales as _,
        tokens: t as i64,
        hidden: h as i64,
        rows: target.rows as i64,
        k: int32(k, "k")?,
        experts: int32(e, "experts")?,
        align: int32(align, "align")?,
        out_kind: target.kind,
    };
    launch(&p, stream.cu_stream())
}

/// Gathers `x` [T, H] into `out` [rows, H] bf16 at rows `dest` [T, k], times `scale_by` [T, k] when given.
/// `rows` >= [`permuted_rows`]; with `padding`, padding rows are zeroed.
pub fn permute(
    stream: &CudaStream,
    x: &Tensor<bf16, 2>,
    dest: &Tensor<i32, 2>,
    scale_by: Option<&Tensor<f32, 2>>,
    padding: Option<&Padding>,
    out: &mut TensorMut<bf16, 2>,
) -> Result<()> {
    let [rows, hidden] = out.shape();
    same_device(stream, &[out.stream()])?;
    let (po, _go) = out.ptr_mut(stream);
    gather(stream, x, dest, scale_by, padding, Target { rows, hidden, out: po, scales: 0, kind: PERMUTE_BF16 })
}

/// [`permute`] quantized rowwise to FP8: `q` [rows, H] E4M3 and `scales` [rows] f32.
pub fn permute_fp8(
    stream: &CudaStream,
    x: &Tensor<bf16, 2>,
    dest: &Tensor<i32, 2>,
    scale_by: Option<&Tensor<f32, 2>>,
    padding: Option<&Padding>,
    q: &mut TensorMut<E4M3, 2>,
    scales: &mut TensorMut<f32, 1>,
) -> Result<()> {
    let [rows, hidden] = q.shape();
    ensure!(scales.shape() == [rows], "{OP}: scales {:?} for {rows} rows", scales.shape());
    same_device(stream, &[q.stream(), scales.stream()])?;
    let (pq, _gq) = q.ptr_mut(stream);
    let (ps, _gs) = scales.ptr_mut(stream);
    gather(stream, x, dest, scale_by, padding, Target { rows, hidden, out: pq, scales: ps, kind: PERMUTE_FP8 })
}

pub(crate) fn launch(p: &PermuteParams, stream: CUstream) -> Result<()> {
    check_grid(OP, "tokens", p.tokens)?;
    ensure!(p.hidden >= 1, "{OP}: hidden must be positive (got {})", p.hidden);
    ensure!(p.k >= 1, "{OP}: k must be positive (got {})", p.k);
    if p.k as usize > MAX_TOP_K {
        return Err(Error::Unsupported(format!("{OP}: k = {}; at most {MAX_TOP_K} choices are supported", p.k)));
    }
    ensure!(p.out_kind == PERMUTE_BF16 || p.out_kind == PERMUTE_FP8, "{OP}: unknown output kind {}", p.out_kind);
    ensure!(p.align >= 1 && p.align as usize <= MAX_ALIGN, "{OP}: align {} outside 1..={MAX_ALIGN}", p.align);
    ensure!(p.rows >= 0 && p.rows <= i32::MAX as i64, "{OP}: rows = {} outside the int32 range of dest", p.rows);
    let padded = p.align > 1;
    if padded {
        ensure!(p.experts >= 1, "{OP}: padding needs the expert count (got {})", p.experts);
        if p.experts as usize > ffi::ROUTER_MAX_EXPERTS {
            return Err(Error::Unsupported(format!(
                "{OP}: {} experts; at most {} are supported",
                p.experts,
                ffi::ROUTER_MAX_EXPERTS
            )));
        }
    }
    let need =
        permuted_rows(p.tokens as usize, p.k as usize, if padded { p.experts as usize } else { 0 }, p.align as usize);
    ensure!(
        p.rows as usize >= need,
        "{OP}: out has {} rows; {} tokens x {} choices (align {}) need {need}",
        p.rows,
        p.tokens,
        p.k,
        p.align
    );
    // One CTA per token plus one per possible padding row.
    let grid = p.tokens + if padded { p.experts as i64 * (p.align as i64 - 1) } else { 0 };
    ensure!(grid <= i32::MAX as i64, "{OP}: {grid} CTAs exceed the grid limit");
    if p.tokens == 0 {
        return Ok(());
    }
    check_ptr(OP, "x", p.x, 2)?;
    if !p.weights.is_null() {
        check_ptr(OP, "weights", p.weights as _, 4)?;
    }
    check_ptr(OP, "dest", p.dest as _, 4)?;
    if padded {
        check_ptr(OP, "counts", p.counts as _, 4)?;
        check_ptr(OP, "offsets", p.offsets as _, 4)?;
    }
    if p.out_kind == PERMUTE_FP8 {
        check_ptr(OP, "out", p.out, 1)?;
        check_ptr(OP, "scales", p.scales as _, 4)?;
    } else {
        check_ptr(OP, "out", p.out, 2)?;
    }
    // SAFETY: validated above.
    launched(OP, unsafe { ffi::l4k_launch_permute(p, stream) })
}

/// `out` [T, H] = bf16(sum over c of (`weight_by`[t, c] *)? `expert_out`[dest[t, c]] (+ `shared`[t])).
pub fn unpermute(
    stream: &CudaStream,
    expert_out: &Tensor<bf16, 2>,
    dest: &Tensor<i32, 2>,
    weight_by: Option<&Tensor<f32, 2>>,
    shared: Option<&Tensor<bf16, 2>>,
    out: &mut TensorMut<bf16, 2>,
) -> Result<()> {
    let [rows, h] = expert_out.shape();
    let [t, k] = dest.shape();
    ensure!(out.shape() == [t, h], "{OP_UNPERMUTE}: out {:?}, want [{t}, {h}]", out.shape());
    check_source_shapes(OP_UNPERMUTE, [t, k, h], weight_by, shared)?;
    let mut streams = vec![expert_out.stream(), dest.stream(), out.stream()];
    streams.extend(weight_by.map(|w| w.stream()));
    streams.extend(shared.map(|s| s.stream()));
    same_device(stream, &streams)?;
    let (py, _gy) = expert_out.ptr(stream);
    let (pd, _gd) = dest.ptr(stream);
    let w = weight_by.map(|w| w.ptr(stream));
    let s = shared.map(|s| s.ptr(stream));
    let (po, _go) = out.ptr_mut(stream);
    let p = UnpermuteParams {
        expert_out: py as _,
        weights: w.as_ref().map_or(ptr::null(), |w| w.0 as _),
        dest: pd as _,
        shared: s.as_ref().map_or(ptr::null(), |s| s.0 as _),
        out: po as _,
        tokens: t as i64,
        hidden: h as i64,
        rows: rows as i64,
        k: i32::try_from(k).unwrap_or(i32::MAX),
        _pad: 0,
    };
    launch_unpermute(&p, stream.cu_stream())
}

pub(crate) fn launch_unpermute(p: &UnpermuteParams, stream: CUstream) -> Result<()> {
    let op = OP_UNPERMUTE;
    check_unpermute(op, p.expert_out, p.weights, p.dest, p.shared, p.tokens, p.hidden, p.rows, p.k)?;
    if p.tokens == 0 {
        return Ok(());
    }
    check_ptr(op, "out", p.out, 2)?;
    // SAFETY: validated above.
    launched(op, unsafe { ffi::l4k_launch_unpermute(p, stream) })
}

/// Where the fused [`unpermute_add_rmsnorm`] measured faster than [`unpermute`] followed by
/// [`crate::rmsnorm::add_rmsnorm`] on the H200 (bench/permute.rs, Scout's 5120 columns, kernels/NOTES.md
/// "unpermute + norm"): up to 512 tokens (1: 3.33 vs 4.37 us, 64: 4.29 vs 6.86, 512: 12.07 vs 12.95). From 4096
/// tokens the pair is faster (79.4 vs 78.0 us, 16384: 299 vs 288): the fused kernel is the general unpermute's,
/// without the top-1 kernel's residency, so prefill keeps the two kernels.
pub fn unpermute_norm_is_faster(tokens: usize) -> bool {
    tokens <= 512
}

/// [`unpermute`] fused with the decoder's next residual add and norm (the MoE block's output F goes straight
/// into `residual += F; y = rmsnorm(residual) * weight`, [`crate::rmsnorm::add_rmsnorm`]'s contract), one CTA per
/// token: F is not stored, and the bits of `residual` and `y` are those of [`unpermute`] followed by
/// [`crate::rmsnorm::add_rmsnorm`] (the same summation orders). `residual` and `y` [T, H], `norm_weight` [H];
/// they must not overlap `expert_out` or `shared`.
/// With `fp8`, y's rowwise FP8 copy too, from the same pass (the bytes and scales `quant_fp8` writes from y), for
/// an FP8 linear that reads y.
#[allow(clippy::too_many_arguments)]
pub fn unpermute_add_rmsnorm(
    stream: &CudaStream,
    expert_out: &Tensor<bf16, 2>,
    dest: &Tensor<i32, 2>,
    weight_by: Option<&Tensor<f32, 2>>,
    shared: Option<&Tensor<bf16, 2>>,
    residual: &mut TensorMut<bf16, 2>,
    norm_weight: &Tensor<bf16, 1>,
    eps: f32,
    y: &mut TensorMut<bf16, 2>,
    mut fp8: Option<Fp8Copy<'_, '_>>,
) -> Result<()> {
    let op = OP_UNPERMUTE_NORM;
    let [rows, h] = expert_out.shape();
    let [t, k] = dest.shape();
    ensure!(residual.shape() == [t, h], "{op}: residual {:?}, want [{t}, {h}]", residual.shape());
    ensure!(y.shape() == [t, h], "{op}: y {:?}, want [{t}, {h}]", y.shape());
    ensure!(norm_weight.shape() == [h], "{op}: norm weight {:?}, want [{h}]", norm_weight.shape());
    check_source_shapes(op, [t, k, h], weight_by, shared)?;
    let mut streams = vec![expert_out.stream(), dest.stream(), residual.stream(), norm_weight.stream(), y.stream()];
    streams.extend(weight_by.map(|w| w.stream()));
    streams.extend(shared.map(|s| s.stream()));
    same_device(stream, &streams)?;
    let (py, _gy) = expert_out.ptr(stream);
    let (pd, _gd) = dest.ptr(stream);
    let w = weight_by.map(|w| w.ptr(stream));
    let s = shared.map(|s| s.ptr(stream));
    let (pr, _gr) = residual.ptr_mut(stream);
    let (pn, _gn) = norm_weight.ptr(stream);
    let (po, _go) = y.ptr_mut(stream);
    let copy = fp8.as_mut().map(|c| c.ptrs(op, stream, [t, h])).transpose()?;
    let [pq, ps] = copy.as_ref().map_or([0, 0], |[q, s]| [q.0, s.0]);
    let p = UnpermuteNormParams {
        expert_out: py as _,
        weights: w.as_ref().map_or(ptr::null(), |w| w.0 as _),
        dest: pd as _,
        shared: s.as_ref().map_or(ptr::null(), |s| s.0 as _),
        residual: pr as _,
        weight: pn as _,
        y: po as _,
        tokens: t as i64,
        hidden: h as i64,
        rows: rows as i64,
        k: i32::try_from(k).unwrap_or(i32::MAX),
        eps,
        y_fp8: pq as _,
        y_scales: ps as _,
    };
    launch_unpermute_add_rmsnorm(&p, stream.cu_stream())
}

pub(crate) fn launch_unpermute_add_rmsnorm(p: &UnpermuteNormParams, stream: CUstream) -> Result<()> {
    let op = OP_UNPERMUTE_NORM;
    check_unpermute(op, p.expert_out, p.weights, p.dest, p.shared, p.tokens, p.hidden, p.rows, p.k)?;
    ensure!(p.eps.is_finite() && p.eps >= 0.0, "{op}: eps = {} (want finite, >= 0)", p.eps);
    ensure!(p.y_fp8.is_null() == p.y_scales.is_null(), "{op}: y_fp8 and y_scales go together");
    if p.tokens == 0 {
        return Ok(());
    }
    check_ptr(op, "residual", p.residual, 2)?;
    check_ptr(op, "norm weight", p.weight, 2)?;
    check_ptr(op, "y", p.y, 2)?;
    if !p.y_fp8.is_null() {
        check_ptr(op, "y_scales", p.y_scales as _, 4)?;
    }
    // SAFETY: validated above.
    launched(op, unsafe { ffi::l4k_launch_unpermute_add_rmsnorm(p, stream) })
}

/// The optional sources of both unpermutes: weights [T, k], shared [T, H].
fn check_source_shapes(
    op: &str,
    [t, k, h]: [usize; 3],
    weight_by: Option<&Tensor<f32, 2>>,
    shared: Option<&Tensor<bf16, 2>>,
) -> Result<()> {
    if let Some(w) = weight_by {
        ensure!(w.shape() == [t, k], "{op}: weights {:?}, want [{t}, {k}]", w.shape());
    }
    if let Some(s) = shared {
        ensure!(s.shape() == [t, h], "{op}: shared {:?}, want [{t}, {h}]", s.shape());
    }
    Ok(())
}

/// The unpermute's own operands, both entry points.
#[allow(clippy::too_many_arguments)]
fn check_unpermute(
    op: &str,
    expert_out: *const c_void,
    weights: *const f32,
    dest: *const i32,
    shared: *const c_void,
    tokens: i64,
    hidden: i64,
    rows: i64,
    k: i32,
) -> Result<()> {
    check_grid(op, "tokens", tokens)?;
    ensure!(hidden >= 1, "{op}: hidden must be positive (got {hidden})");
    ensure!(rows >= 0, "{op}: rows is negative ({rows})");
    ensure!(k >= 1, "{op}: k must be positive (got {k})");
    if k as usize > MAX_TOP_K {
        return Err(Error::Unsupported(format!("{op}: k = {k}; at most {MAX_TOP_K} choices are supported")));
    }
    if tokens == 0 {
        return Ok(());
    }
    check_ptr(op, "expert_out", expert_out, 2)?;
    if !weights.is_null() {
        check_ptr(op, "weights", weights as _, 4)?;
    }
    check_ptr(op, "dest", dest as _, 4)?;
    if !shared.is_null() {
        check_ptr(op, "shared", shared, 2)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fused_norm_serves_decode_batches_only() {
        assert!(unpermute_norm_is_faster(1) && unpermute_norm_is_faster(64) && unpermute_norm_is_faster(512));
        assert!(!unpermute_norm_is_faster(4096) && !unpermute_norm_is_faster(16384));
    }

    #[test]
    fn capacity_covers_the_worst_padding() {
        assert_eq!(permuted_rows(100, 1, 16, 1), 100);
        assert_eq!(permuted_rows(100, 2, 16, 128), 200 + 16 * 127);
        // Fewer pairs than experts: at most one padded block per pair.
        assert_eq!(permuted_rows(1, 1, 128, 128), 1 + 127);
        assert_eq!(permuted_rows(0, 1, 128, 128), 0);
        let counts = [3u32, 0, 5, 8, 1];
        let total = llama4_reference::permute::padded_offsets(&counts, 4)[5] as usize;
        assert!(total <= permuted_rows(17, 1, 5, 4));
    }
}
