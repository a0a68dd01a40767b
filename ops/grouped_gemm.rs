//! FP8 (E4M3) grouped GEMM for the routed experts: `D[r] = bf16((A[r] . B[e]^T) * scale_a[r] * scale_b[e])` for
//! the rows r of each expert e, on CUTLASS for sm_90a (kernels/grouped_gemm.cu), and for one row per expert on
//! an mma.sync streaming kernel ([`Schedule::Gemv`], kernels/grouped_gemm_gemv.cu). Reference:
//! llama4_reference::grouped_gemm::grouped_gemm_rowwise.
//!
//! Layout (shared with the permute kernels): A [rows, k] is sorted by expert; expert e owns rows
//! `offsets[e] .. offsets[e] + m_e` with `m_e = counts[e]` when counts are given (a padded layout: the rows
//! past m_e are neither read nor written) else `offsets[e + 1] - offsets[e]`. Offsets and counts stay on the
//! device: the per-expert problem descriptors are built there, so nothing synchronizes and the call can be
//! captured in a CUDA graph. Inconsistent offsets cannot be seen from the host without a sync: the kernel then
//! computes nothing and raises the optional `bad_offsets` flag.
//!
//! [`grouped_gemm_fp8_blockwise`] is the DeepSeek-V3 style variant over the same layout: 1 x 128 activation
//! scales [rows, k / 128] and 128 x 128 weight scales [experts, n / 128, k / 128], applied per K group in the
//! main loop (kernels/grouped_gemm_blockwise.cu; reference:
//! llama4_reference::grouped_gemm::grouped_gemm_blockwise). n and k must be multiples of 128.

use crate::error::{ensure, Error, Result};
use crate::ffi::{self, check_ptr, launched, GroupedGemmParams, QuantParams};
use crate::ffi::{GEMM_AUTO, GEMM_DECODE, GEMM_GEMV, GEMM_PREFILL, GEMM_PREFILL_FAST_ACCUM};
use crate::tensor::{bf16, same_device, Tensor, TensorMut, E4M3};
use cudarc::driver::sys::CUstream;
use cudarc::driver::CudaStream;
use std::ptr;

const OP: &str = "grouped_gemm";

/// Which kernel configuration runs (kernels/grouped_gemm.cu explains both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// By A's row count: `Gemv` for one row where it measured faster ([`gemv_is_faster`]), `Decode` up to
    /// [`DECODE_MAX_ROWS_PER_EXPERT`] rows per expert on average, else `Prefill`. Right for an unpadded layout
    /// (the router's align = 1), where the rows are the routed pairs; a padded layout's rows include up to
    /// experts x (align - 1) padding rows: use [`Schedule::AutoRouted`].
    Auto,
    /// As `Auto`, deciding by `routed_rows`, the number of real (token, expert) rows (tokens x k, which the
    /// caller knows on the host) instead of A's padded row count.
    AutoRouted { routed_rows: usize },
    /// Cooperative tiles with promoted (accurate) FP8 accumulation: tensor-core bound shapes. 128x192, or
    /// 128x128 where n is not within 2% of a multiple of 192 or the experts average at most 128 rows.
    Prefill,
    /// Swapped A/B with 32-token tiles: weight-bandwidth bound shapes (a few tokens per expert).
    Decode,
    /// 256x128 tiles (128x256 where the experts average at most 128 rows) accumulated in the tensor cores
    /// without promotion: faster, less exact at large k.
    PrefillFastAccum,
    /// A streaming kernel for one row per expert (batch-1 decode, the FP8 linears at m = 1): each CTA reads 16
    /// weight rows of every non-empty expert once per 8 of its rows, on mma.sync with a promotion into f32 every
    /// 256 of k. Any row count is correct, but past one row the decode tiles were faster everywhere measured
    /// (kernels/NOTES.md). Rowwise scales only (the blockwise recipe and the SwiGLU epilogue refuse it); needs no
    /// workspace.
    Gemv,
}

/// Decode tiles hold 32 tokens of one expert; past that the weights would be read once per 32 tokens.
pub const DECODE_MAX_ROWS_PER_EXPERT: usize = 32;

/// Where Auto takes [`Schedule::Gemv`], by measurement on the H200 (kernels/NOTES.md, "grouped_gemm GEMV
/// schedule"): one row, n up to 16384 (down 18.2 vs 25.3 us, gate_up 27.6 vs 28.6 us against the decode tiles,
/// which give n / 128 CTAs; lm_head's 202048 stays with them) and up to 16 experts (the kernel's expert loop
/// costs a dependent load per expert). Batch-1 decode's routed experts and the `--fp8-dense` linears but lm_head.
pub fn gemv_is_faster(rows: usize, n: usize, experts: usize) -> bool {
    rows == 1 && n <= 16384 && experts <= 16
}

/// Auto's rule: the streaming GEMV where [`gemv_is_faster`], the decode (swapped) schedule up to
/// [`DECODE_MAX_ROWS_PER_EXPERT`] rows per expert on average, else prefill.
fn auto_code(rows: usize, experts: usize, n: usize) -> i32 {
    if gemv_is_faster(rows, n, experts) {
        GEMM_GEMV
    } else if rows <= DECODE_MAX_ROWS_PER_EXPERT * experts.max(1) {
        GEMM_DECODE
    } else {
        GEMM_PREFILL
    }
}

impl Schedule {
    /// The launcher's code for this schedule (L4kGemmSchedule), AUTO resolved by `rows` (A's row count),
    /// AutoRouted by its routed rows; `n` is B's output width.
    pub(crate) fn code(self, rows: usize, experts: usize, n: usize) -> i32 {
        match self {
            Schedule::Prefill => GEMM_PREFILL,
            Schedule::Decode => GEMM_DECODE,
            Schedule::PrefillFastAccum => GEMM_PREFILL_FAST_ACCUM,
            Schedule::Gemv => GEMM_GEMV,
            Schedule::Auto => auto_code(rows, experts, n),
            Schedule::AutoRouted { routed_rows } => auto_code(routed_rows, experts, n),
        }
    }

    /// The concrete schedule `Auto` picks for `routed_rows` real rows over `experts` experts of width `n`.
    pub fn resolve(routed_rows: usize, experts: usize, n: usize) -> Schedule {
        match auto_code(routed_rows, experts, n) {
            GEMM_GEMV => Schedule::Gemv,
            GEMM_DECODE => Schedule::Decode,
            _ => Schedule::Prefill,
        }
    }
}

/// Device workspace bytes for `experts` groups on the current device (descriptors + CUTLASS's own), enough for
/// every schedule of both [`grouped_gemm_fp8`] and [`grouped_gemm_fp8_blockwise`].
pub fn workspace_size(experts: usize) -> Result<usize> {
    ensure!((1..=MAX_EXPERTS).contains(&experts), "{OP}: experts must be in 1..={MAX_EXPERTS} (got {experts})");
    // SAFETY: pure queries of the current device's SM count and CUTLASS's sizing.
    let (rowwise, blockwise) = unsafe {
        (
            ffi::l4k_internal_grouped_gemm_workspace_size(experts as i32),
            ffi::l4k_internal_grouped_gemm_blockwise_workspace_size(experts as i32),
        )
    };
    Ok(rowwise.max(blockwise))
}

/// The setup kernel is one block; more experts than this are beyond any MoE checkpoint.
pub const MAX_EXPERTS: usize = 4096;

/// The operands of one grouped GEMM.
pub struct GroupedGemm<'a, 'b> {
    pub a: &'b Tensor<'a, E4M3, 2>,
    pub scale_a: &'b Tensor<'a, f32, 1>,
    pub b: &'b Tensor<'a, E4M3, 3>,
    pub scale_b: &'b Tensor<'a, f32, 2>,
    pub offsets: &'b Tensor<'a, i32, 1>,
    pub counts: Option<&'b Tensor<'a, i32, 1>>,
}

/// Runs the grouped GEMM into `d` [rows, n]. `workspace` holds at least [`workspace_size`] bytes.
pub fn grouped_gemm_fp8(
    stream: &CudaStream,
    g: &GroupedGemm,
    d: &mut TensorMut<bf16, 2>,
    workspace: &mut TensorMut<u8, 1>,
    bad_offsets: Option<&mut TensorMut<u32, 1>>,
    schedule: Schedule,
) -> Result<()> {
    let (operands, [rows, experts, n]) = rowwise_operands(g, &bad_offsets)?;
    ensure!(d.shape() == [rows, n], "{OP}: d {:?}, want [{rows}, {n}]", d.shape());
    same_device(stream, &[d.stream()])?;
    let (pd, _gd) = d.ptr_mut(stream);
    bind_and_launch(stream, &operands, pd, workspace, bad_offsets, schedule.code(rows, experts, n), launch)
}

/// The rowwise recipe's operand checks (k, scale shapes, offsets, counts, the flag); returns the operands and
/// [rows, experts, n].
fn rowwise_operands<'a, 'b>(
    g: &GroupedGemm<'a, 'b>,
    bad_offsets: &Option<&mut TensorMut<u32, 1>>,
) -> Result<(Operands<'a, 'b, 1, 2>, [usize; 3])> {
    let [rows, k] = g.a.shape();
    let [experts, n, bk] = g.b.shape();
    ensure!(bk == k, "{OP}: A has k = {k}, B has k = {bk}");
    ensure!(g.scale_a.shape() == [rows], "{OP}: scale_a {:?} for {rows} rows", g.scale_a.shape());
    ensure!(g.scale_b.shape() == [experts, n], "{OP}: scale_b {:?}, want [{experts}, {n}]", g.scale_b.shape());
    check_views(g.offsets, g.counts, experts, bad_offsets)?;
    let operands =
        Operands { a: g.a, scale_a: g.scale_a, b: g.b, scale_b: g.scale_b, offsets: g.offsets, counts: g.counts };
    Ok((operands, [rows, experts, n]))
}

/// gate_up with the SwiGLU epilogue, then rowwise FP8: `q` [rows, n/2] E4M3 and `scales` [rows], the down
/// projection's input, from A and gate_up weights `g.b` [experts, n, k] whose rows are interleaved gate, up
/// ([`crate::weight_prep::quantize_gate_up_interleaved`]; the scales interleaved alike).
///
/// The GEMM's epilogue writes h = bf16(bf16(silu(g)) * u) of the bf16-rounded GEMM outputs into `h` [rows, n/2]
/// (caller scratch; half the bytes of the [rows, n] bf16 output), then [`crate::quant::quant_fp8`]'s kernel
/// quantizes it rowwise: the bytes GEMM + [`crate::swiglu::swiglu_fp8`] give on plain weights with the same
/// schedule (kernels/grouped_gemm.cu). Rows a padded layout leaves out (past `counts[e]`) get unspecified `h`,
/// `q` and scales. Schedules: `Prefill` (and `Auto`) or `PrefillFastAccum`; there is no swapped (decode)
/// variant. n must be a multiple of 16 (16-byte rows of h and of its FP8).
///
/// Measured slower than [`grouped_gemm_fp8`] + [`crate::swiglu::swiglu_fp8`] at Scout's gate_up (H100, T = 512
/// to 16384: by 2.4% to 8.2%, kernels/NOTES.md); kept as an opt-in variant, not used by default.
#[allow(clippy::too_many_arguments)]
pub fn grouped_gemm_swiglu_fp8(
    stream: &CudaStream,
    g: &GroupedGemm,
    h: &mut TensorMut<bf16, 2>,
    q: &mut TensorMut<E4M3, 2>,
    scales: &mut TensorMut<f32, 1>,
    workspace: &mut TensorMut<u8, 1>,
    bad_offsets: Option<&mut TensorMut<u32, 1>>,
    schedule: Schedule,
) -> Result<()> {
    let ([rows, _], [_, n, _]) = (g.a.shape(), g.b.shape());
    ensure!(n % 16 == 0, "{OP}: SwiGLU needs n = {n} (gate and up interleaved) to be a multiple of 16");
    let code = match schedule {
        Schedule::Auto | Schedule::AutoRouted { .. } | Schedule::Prefill => GEMM_PREFILL,
        Schedule::PrefillFastAccum => GEMM_PREFILL_FAST_ACCUM,
        Schedule::Decode | Schedule::Gemv => {
            let which = if schedule == Schedule::Decode { "decode (swapped)" } else { "GEMV" };
            return Err(crate::Error::InvalidArgument(format!(
                "{OP}: the SwiGLU epilogue has no {which} schedule (prefill tiles only)"
            )));
        }
    };
    let half = n / 2;
    ensure!(h.shape() == [rows, half], "{OP}: h {:?}, want [{rows}, {half}]", h.shape());
    ensure!(q.shape() == [rows, half], "{OP}: q {:?}, want [{rows}, {half}]", q.shape());
    ensure!(scales.shape() == [rows], "{OP}: scales {:?} for {rows} rows", scales.shape());
    same_device(stream, &[h.stream(), q.stream(), scales.stream()])?;
    let (operands, _) = rowwise_operands(g, &bad_offsets)?;
    {
        let (ph, _gh) = h.ptr_mut(stream);
        bind_and_launch(stream, &operands, ph, workspace, bad_offsets, code, launch_swiglu)?;
    }
    let (ph, _gh) = h.ptr_mut(stream);
    let (pq, _gq) = q.ptr_mut(stream);
    let (ps, _gs) = scales.ptr_mut(stream);
    let p = QuantParams { x: ph as _, out: pq as _, scales: ps as _, rows: rows as i64, cols: half as i64 };
    crate::quant::launch_quant(&p, stream.cu_stream())
}

/// The blockwise-scaled operands: `scale_a` [rows, k / 128] (one scale per row and 128-wide K group),
/// `scale_b` [experts, n / 128, k / 128] (one per 128 x 128 weight block). The rest as [`GroupedGemm`].
pub struct GroupedGemmBlockwise<'a, 'b> {
    pub a: &'b Tensor<'a, E4M3, 2>,
    pub scale_a: &'b Tensor<'a, f32, 2>,
    pub b: &'b Tensor<'a, E4M3, 3>,
    pub scale_b: &'b Tensor<'a, f32, 3>,
    pub offsets: &'b Tensor<'a, i32, 1>,
    pub counts: Option<&'b Tensor<'a, i32, 1>>,
}

/// The side of a blockwise scale block, along n and k.
pub const SCALE_BLOCK: usize = 128;

/// Runs the 128 x 128 blockwise-scaled grouped GEMM into `d` [rows, n]:
/// `d[r, c] = bf16(sum_j (a[r, J_j] . b[e, c, J_j]) * scale_a[r, j] * scale_b[e, c / 128, j])` over the K groups
/// `J_j = 128 j .. 128 (j + 1)`. `n` and `k` must be multiples of 128. Schedules: `Auto`, `Prefill`, `Decode`
/// (as [`grouped_gemm_fp8`]); `PrefillFastAccum` is `Unsupported` (the per-group promotion is what applies the
/// scales). `workspace` holds at least [`workspace_size`] bytes.
pub fn grouped_gemm_fp8_blockwise(
    stream: &CudaStream,
    g: &GroupedGemmBlockwise,
    d: &mut TensorMut<bf16, 2>,
    workspace: &mut TensorMut<u8, 1>,
    bad_offsets: Option<&mut TensorMut<u32, 1>>,
    schedule: Schedule,
) -> Result<()> {
    let [rows, k] = g.a.shape();
    let [experts, n, bk] = g.b.shape();
    ensure!(bk == k, "{OP}: A has k = {k}, B has k = {bk}");
    check_blocks(n as i64, k as i64)?;
    let (nb, kb) = (n / SCALE_BLOCK, k / SCALE_BLOCK);
    ensure!(
        g.scale_a.shape() == [rows, kb],
        "{OP}: scale_a {:?}, want [{rows}, {kb}] (rows, k / 128)",
        g.scale_a.shape()
    );
    ensure!(
        g.scale_b.shape() == [experts, nb, kb],
        "{OP}: scale_b {:?}, want [{experts}, {nb}, {kb}] (experts, n / 128, k / 128)",
        g.scale_b.shape()
    );
    check_views(g.offsets, g.counts, experts, &bad_offsets)?;
    ensure!(d.shape() == [rows, n], "{OP}: d {:?}, want [{rows}, {n}]", d.shape());
    same_device(stream, &[d.stream()])?;
    let code = blockwise_code(schedule, rows, experts, n)?;
    let (pd, _gd) = d.ptr_mut(stream);
    let operands =
        Operands { a: g.a, scale_a: g.scale_a, b: g.b, scale_b: g.scale_b, offsets: g.offsets, counts: g.counts };
    bind_and_launch(stream, &operands, pd, workspace, bad_offsets, code, launch_blockwise)
}

/// The launcher code of a blockwise schedule: AUTO resolved as for the rowwise op, except that the streaming
/// GEMV (rowwise scales only) gives way to the decode tiles.
pub(crate) fn blockwise_code(schedule: Schedule, rows: usize, experts: usize, n: usize) -> Result<i32> {
    match schedule {
        Schedule::PrefillFastAccum => Err(Error::Unsupported(format!(
            "{OP}: blockwise scaling has no fast-accumulation schedule (its scales are applied by the per-K-group \
             promotion); use Auto, Prefill or Decode"
        ))),
        Schedule::Gemv => Err(Error::Unsupported(format!(
            "{OP}: the streaming GEMV applies rowwise scales only; blockwise scaling takes Auto, Prefill or Decode"
        ))),
        s => Ok(match s.code(rows, experts, n) {
            GEMM_GEMV => GEMM_DECODE,
            code => code,
        }),
    }
}

fn check_blocks(n: i64, k: i64) -> Result<()> {
    let b = SCALE_BLOCK as i64;
    ensure!(
        k >= b && k % b == 0 && k <= i32::MAX as i64,
        "{OP}: blockwise k = {k} must be a positive multiple of 128 (whole 128-wide scale groups)"
    );
    ensure!(
        n >= b && n % b == 0 && n <= i32::MAX as i64,
        "{OP}: blockwise n = {n} must be a positive multiple of 128 (whole 128 x 128 weight blocks)"
    );
    Ok(())
}

/// The shape checks every variant shares: offsets, counts and the flag (the output is the caller's).
fn check_views(
    offsets: &Tensor<i32, 1>,
    counts: Option<&Tensor<i32, 1>>,
    experts: usize,
    bad_offsets: &Option<&mut TensorMut<u32, 1>>,
) -> Result<()> {
    ensure!(offsets.shape() == [experts + 1], "{OP}: offsets {:?} for {experts} experts", offsets.shape());
    if let Some(c) = counts {
        ensure!(c.shape() == [experts], "{OP}: counts {:?} for {experts} experts", c.shape());
    }
    if let Some(f) = bad_offsets {
        ensure!(f.shape() == [1], "{OP}: bad_offsets must hold one flag");
    }
    Ok(())
}

/// The operands of either recipe (the scale tensors' ranks differ).
struct Operands<'a, 'b, const SA: usize, const SB: usize> {
    a: &'b Tensor<'a, E4M3, 2>,
    scale_a: &'b Tensor<'a, f32, SA>,
    b: &'b Tensor<'a, E4M3, 3>,
    scale_b: &'b Tensor<'a, f32, SB>,
    offsets: &'b Tensor<'a, i32, 1>,
    counts: Option<&'b Tensor<'a, i32, 1>>,
}

/// Checks that every operand lives on the stream's device, binds the device addresses (ordered on `stream`)
/// into the launch parameters and calls `launch`; `d` is the output's address, bound (and its device checked)
/// by the caller. Shapes are the caller's to check.
fn bind_and_launch<const SA: usize, const SB: usize>(
    stream: &CudaStream,
    g: &Operands<SA, SB>,
    d: u64,
    workspace: &mut TensorMut<u8, 1>,
    bad_offsets: Option<&mut TensorMut<u32, 1>>,
    schedule: i32,
    launch: fn(&GroupedGemmParams, CUstream) -> Result<()>,
) -> Result<()> {
    let [rows, k] = g.a.shape();
    let [experts, n, _] = g.b.shape();
    let mut streams = vec![g.a.stream(), g.scale_a.stream(), g.b.stream(), g.scale_b.stream(), g.offsets.stream()];
    streams.extend(g.counts.map(|c| c.stream()));
    streams.push(workspace.stream());
    same_device(stream, &streams)?;

    let (pa, _ga) = g.a.ptr(stream);
    let (psa, _gsa) = g.scale_a.ptr(stream);
    let (pb, _gb) = g.b.ptr(stream);
    let (psb, _gsb) = g.scale_b.ptr(stream);
    let (po, _go) = g.offsets.ptr(stream);
    let counts = g.counts.map(|c| c.ptr(stream));
    let ws_bytes = workspace.shape()[0];
    let (pw, _gw) = workspace.ptr_mut(stream);
    let flag = bad_offsets.map(|f| f.ptr_mut(stream));
    let p = GroupedGemmParams {
        a: pa as _,
        scale_a: psa as _,
        b: pb as _,
        scale_b: psb as _,
        offsets: po as _,
        counts: counts.as_ref().map_or(ptr::null(), |c| c.0 as _),
        d: d as _,
        bad_offsets: flag.as_ref().map_or(ptr::null_mut(), |f| f.0 as _),
        workspace: pw as _,
        workspace_bytes: ws_bytes as i64,
        rows: rows as i64,
        n: n as i64,
        k: k as i64,
        experts: experts as i32,
        schedule,
    };
    launch(&p, stream.cu_stream())
}

/// Validates raw parameters (shared with the C ABI) and launches. rows == 0 is a no-op.
pub(crate) fn launch(p: &GroupedGemmParams, stream: CUstream) -> Result<()> {
    if !check_rowwise(p)? {
        return Ok(());
    }
    // SAFETY: validated above; tensor extents are the caller's contract (checked by the safe API's views).
    launched(OP, unsafe {
        if p.schedule == GEMM_GEMV {
            ffi::l4k_launch_grouped_gemm_gemv(p, stream)
        } else {
            ffi::l4k_launch_grouped_gemm(p, stream)
        }
    })
}

/// The SwiGLU epilogue's GEMM: `p.d` is h [rows, n / 2] bf16; `p.n` a multiple of 16.
fn launch_swiglu(p: &GroupedGemmParams, stream: CUstream) -> Result<()> {
    ensure!(p.n % 16 == 0, "{OP}: SwiGLU needs n = {} to be a multiple of 16", p.n);
    let prefill = p.schedule == GEMM_PREFILL || p.schedule == GEMM_PREFILL_FAST_ACCUM;
    ensure!(prefill, "{OP}: SwiGLU runs the prefill schedules only (got {})", p.schedule);
    if !check_rowwise(p)? {
        return Ok(());
    }
    // SAFETY: as in `launch`.
    launched(OP, unsafe { ffi::l4k_launch_grouped_gemm_swiglu(p, stream) })
}

/// The rowwise recipe's checks: k, n, the schedule, then [`check_params`]. Ok(false): nothing to do.
fn check_rowwise(p: &GroupedGemmParams) -> Result<bool> {
    ensure!(
        p.k >= 16 && p.k % 16 == 0 && p.k <= i32::MAX as i64,
        "{OP}: k = {} must be a positive multiple of 16 (16-byte TMA rows of FP8)",
        p.k
    );
    ensure!(
        p.n >= 8 && p.n % 8 == 0 && p.n <= i32::MAX as i64,
        "{OP}: n = {} must be a positive multiple of 8 (16-byte rows of bf16 output)",
        p.n
    );
    ensure!((GEMM_AUTO..=GEMM_GEMV).contains(&p.schedule), "{OP}: unknown schedule {}", p.schedule);
    check_params(p)
}

/// The blockwise launch (shared with the C ABI): `schedule` 0 (auto), 1 (prefill) or 2 (decode); 3 and 4 are
/// `Unsupported`; n and k multiples of 128. rows == 0 is a no-op.
pub(crate) fn launch_blockwise(p: &GroupedGemmParams, stream: CUstream) -> Result<()> {
    check_blocks(p.n, p.k)?;
    ensure!((GEMM_AUTO..=GEMM_GEMV).contains(&p.schedule), "{OP}: unknown schedule {}", p.schedule);
    let mut p = *p;
    let schedule = match p.schedule {
        GEMM_PREFILL => Schedule::Prefill,
        GEMM_DECODE => Schedule::Decode,
        GEMM_PREFILL_FAST_ACCUM => Schedule::PrefillFastAccum,
        GEMM_GEMV => Schedule::Gemv,
        _ => Schedule::Auto,
    };
    p.schedule = blockwise_code(schedule, p.rows.max(0) as usize, p.experts.max(1) as usize, p.n.max(0) as usize)?;
    if !check_params(&p)? {
        return Ok(());
    }
    // SAFETY: validated above; tensor extents are the caller's contract (checked by the safe API's views).
    launched(OP, unsafe { ffi::l4k_launch_grouped_gemm_blockwise(&p, stream) })
}

/// The checks both recipes share: counts, pointers and alignment. Ok(false): nothing to do (rows == 0).
fn check_params(p: &GroupedGemmParams) -> Result<bool> {
    ensure!(p.rows >= 0 && p.rows <= i32::MAX as i64, "{OP}: rows = {} outside 0..=2^31-1", p.rows);
    ensure!(
        p.experts >= 1 && p.experts as usize <= MAX_EXPERTS,
        "{OP}: experts = {} outside 1..={MAX_EXPERTS}",
        p.experts
    );
    if p.rows == 0 {
        return Ok(false);
    }
    check_ptr(OP, "a", p.a, 16)?;
    check_ptr(OP, "scale_a", p.scale_a as _, 4)?;
    check_ptr(OP, "b", p.b, 16)?;
    check_ptr(OP, "scale_b", p.scale_b as _, 4)?;
    check_ptr(OP, "offsets", p.offsets as _, 4)?;
    if !p.counts.is_null() {
        check_ptr(OP, "counts", p.counts as _, 4)?;
    }
    check_ptr(OP, "d", p.d, 16)?;
    check_ptr(OP, "workspace", p.workspace, 256)?;
    if !p.bad_offsets.is_null() {
        check_ptr(OP, "bad_offsets", p.bad_offsets as _, 4)?;
    }
    // The launcher compares the workspace with the chosen configuration's exact need before launching anything
    // (sizing every configuration here as well would ask CUTLASS twice per call).
    ensure!(p.workspace_bytes >= 0, "{OP}: workspace_bytes is negative");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_routed_decides_by_the_routed_rows_not_the_padding() {
        // 512 decode tokens, top-1 over 16 experts, the router's align = 128: up to 16 x 127 padding rows.
        let (tokens, experts, n) = (512, 16, 5120);
        let padded = crate::permute::permuted_rows(tokens, 1, experts, 128);
        assert_eq!(Schedule::Auto.code(padded, experts, n), GEMM_PREFILL, "plain auto sees the padded rows");
        assert_eq!(Schedule::AutoRouted { routed_rows: tokens }.code(padded, experts, n), GEMM_DECODE);
        assert_eq!(Schedule::resolve(tokens, experts, n), Schedule::Decode);
        // Past 32 rows per expert on average the weights are re-read per 32-token tile: prefill.
        assert_eq!(Schedule::AutoRouted { routed_rows: 32 * experts + 1 }.code(0, experts, n), GEMM_PREFILL);
        assert_eq!(Schedule::resolve(32 * experts + 1, experts, n), Schedule::Prefill);
    }

    #[test]
    fn auto_takes_the_gemv_only_where_it_measured_faster() {
        // Batch 1 at top-1: the expert projections (down n 5120, gate_up 16384) and the dense linears (qkv 7168,
        // o 5120) stream; lm_head and Maverick's 128 experts keep the decode tiles, as does every second row.
        assert_eq!(Schedule::AutoRouted { routed_rows: 1 }.code(128 * 16, 16, 5120), GEMM_GEMV);
        assert_eq!(Schedule::Auto.code(1, 1, 7168), GEMM_GEMV);
        assert_eq!(Schedule::resolve(1, 16, 5120), Schedule::Gemv);
        assert_eq!(Schedule::Auto.code(1, 16, 16384), GEMM_GEMV);
        assert_eq!(Schedule::Auto.code(1, 16, 16392), GEMM_DECODE);
        assert_eq!(Schedule::Auto.code(1, 1, 202048), GEMM_DECODE);
        assert_eq!(Schedule::Auto.code(1, 128, 5120), GEMM_DECODE);
        assert_eq!(Schedule::Auto.code(2, 16, 5120), GEMM_DECODE);
    }

    #[test]
    fn blockwise_auto_never_picks_the_rowwise_gemv() {
        assert_eq!(blockwise_code(Schedule::Auto, 1, 16, 5120).unwrap(), GEMM_DECODE);
        assert_eq!(blockwise_code(Schedule::AutoRouted { routed_rows: 1 }, 512, 16, 5120).unwrap(), GEMM_DECODE);
        assert!(matches!(blockwise_code(Schedule::Gemv, 1, 16, 5120), Err(Error::Unsupported(_))));
    }

    #[test]
    fn auto_schedule_through_the_c_abi() {
        let mut code = -1;
        // SAFETY: a valid out pointer; then a null one, which must be refused.
        unsafe {
            let ok = crate::error::Status::Ok;
            assert_eq!(crate::capi::l4k_grouped_gemm_auto_schedule(512, 5120, 16, &mut code), ok);
            assert_eq!(code, GEMM_DECODE);
            assert_eq!(crate::capi::l4k_grouped_gemm_auto_schedule(100_000, 5120, 16, &mut code), ok);
            assert_eq!(code, GEMM_PREFILL);
            assert_eq!(crate::capi::l4k_grouped_gemm_auto_schedule(1, 5120, 16, &mut code), ok);
            assert_eq!(code, GEMM_GEMV);
            assert_ne!(crate::capi::l4k_grouped_gemm_auto_schedule(512, 5120, 0, &mut code), ok);
            assert_ne!(crate::capi::l4k_grouped_gemm_auto_schedule(512, -1, 16, &mut code), ok);
            assert_ne!(crate::capi::l4k_grouped_gemm_auto_schedule(512, 5120, 16, std::ptr::null_mut()), ok);
        }
    }
}
