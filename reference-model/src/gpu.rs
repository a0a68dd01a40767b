//! The GPU backend: the model's ops as the fused kernels of `llama4-kernels` on one Hopper GPU.
//!
//! Weights (Meta's FP8 recipe): routed experts quantized on the device to FP8 E4M3 with one scale per expert
//! and output channel (`weight_prep`), everything else bf16; [`GpuOptions::fp8_dense`] also quantizes the
//! attention projections, the shared expert and the dense MLP rowwise (`quant_fp8`), which then run as FP8
//! GEMMs with per-token activation scales. Activations are bf16 with the model's roundings; logits are f32.
//!
//! Every buffer is allocated by [`Backend::plan`] from the engine's limits: the activations, the FFN and
//! routing scratch, the KV pools (`[blocks * block_size, Hkv, D]` bf16 per layer), the workspaces, and one
//! metadata arena that [`Backend::set_step`] fills with a single host-to-device copy. The ops only launch
//! kernels on the one stream, so a step can be captured as a CUDA graph and replayed; nothing in a step
//! synchronizes with the host until [`Backend::tokens`] reads the greedy ids (and the device's error
//! counters: out-of-range ids or slots, inconsistent attention metadata, bad expert offsets).

use crate::backend::{Act, Backend, Init, LayerSpec, MoeRef, Plan, StepMeta, StepShape};
use crate::config::{Ffn, TextConfig};
use crate::error::{Error, Result};
use crate::host_tensor::HostTensor;
use crate::weights::Role;
use llama4_contract::HeadLayout;
use llama4_kernels::attention::{self, PagedKv, QueryBatch};
use llama4_kernels::attention_decode::{self, DecodeShape};
use llama4_kernels::cudarc::driver::sys::{self, CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use llama4_kernels::cudarc::driver::{
    CudaEvent, CudaGraph, CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, PinnedHostSlice, ValidAsZeroBits,
};
use llama4_kernels::grouped_gemm::{self, GroupedGemm, Schedule};
use llama4_kernels::linear::{gemv_is_faster, linear_fp8, Blas, LinearSchedule, LINEAR_WORKSPACE_BYTES};
use llama4_kernels::quant::Fp8Copy;
use llama4_kernels::router::{
    route_fp8, route_fp8_workspace_size, router, router_workspace_size, RouterKind, RouterOutputs, ROUTE_MAX_TOKENS,
};
use llama4_kernels::{argmax, bf16, embedding, permute, quant, random, rmsnorm, rope, swiglu, weight_prep};
use llama4_kernels::{Element, Tensor, TensorMut, E4M3};
use ndarray::Array2;
use std::cell::RefCell;
use std::sync::Arc;

/// Steps whose sequences bring at most this many tokens each run the decode attention kernel (split-KV, one
/// CTA per KV group); longer ones the prefill kernel.
pub const DECODE_MAX_Q: usize = 4;
/// Expert weights are quantized in groups of at most this many bytes of bf16 (bounds the device scratch).
const PREP_GROUP_BYTES: usize = 1 << 30;

/// How the GPU backend stores weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// Device ordinal.
    pub device: usize,
    /// Quantize the dense linears (attention, shared expert, dense MLP) rowwise to FP8 too.
    pub fp8_dense: bool,
}

pub struct Gpu {
    gpu: llama4_kernels::Gpu,
    blas: Blas,
    opts: GpuOptions,
    /// While profiling ([`Gpu::start_profile`]): an event recorded at the start of each op, with its label.
    profile: RefCell<Option<Vec<(&'static str, CudaEvent)>>>,
    /// Set by [`Gpu::start_timeline`]: the next captured step records event nodes at the ops of one layer.
    timeline: RefCell<Option<Timeline>>,
    /// Whether a capture is in progress (an event node can only be recorded then).
    capturing: std::cell::Cell<bool>,
    /// Every op's stream but the shared expert's. It has the device's greatest priority, and graphs keep it per
    /// kernel node (instantiated with USE_NODE_PRIORITY): the shared expert's GEMVs are grids of many short CTAs,
    /// and without it every kernel of the routed path launched behind one waited until all of that grid's CTAs
    /// had been dispatched (kernels/NOTES.md, "The MoE block's two streams").
    main: Arc<CudaStream>,
    /// The shared expert's stream (the default priority): it runs beside the routed path (router, permute, expert
    /// GEMMs) and joins before the combine. Events fork and join it, so a captured step holds both branches.
    side: Arc<CudaStream>,
    fork: CudaEvent,
    join: CudaEvent,
    overlap: std::cell::Cell<bool>,
    /// Whether decode batches route in one launch (router::route_fp8); off by default (kernels/NOTES.md, "Decode
    /// routing in one kernel": slower inside the batch-1 step).
    fused_routing: std::cell::Cell<bool>,
    /// A bound on the CTAs of the shared expert's gate_up GEMV beside the routed path (None: a CTA per tile).
    shared_ctas: std::cell::Cell<Option<u32>>,
    /// Whether, with FP8 dense linears, the norms that write Y write its FP8 copy too (read by qkv, the shared
    /// expert's and the dense MLP's gate_up in place of a quant_fp8 launch each).
    norm_fp8: std::cell::Cell<bool>,
}

/// A timeline of one layer inside a captured step: events recorded as graph nodes from `rope(layer)` to
/// `rope(layer + 1)` (one whole layer: rope, attention, o, norm, MoE with the next input norm, the next qkv).
struct Timeline {
    layer: usize,
    active: bool,
    marks: Vec<(&'static str, CudaEvent)>,
}

/// Time of one op family within profiled steps.
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    pub label: &'static str,
    /// Summed over its calls, milliseconds.
    pub ms: f64,
    pub calls: usize,
}

fn kerr(e: llama4_kernels::Error) -> Error {
    Error::Backend(e.to_string())
}
fn derr(e: llama4_kernels::cudarc::driver::DriverError) -> Error {
    Error::Backend(format!("CUDA: {e}"))
}

impl Gpu {
    /// Opens the GPU; `Err` (never a panic) without a driver or an sm_90 device.
    pub fn new(opts: GpuOptions) -> Result<Gpu> {
        let gpu = llama4_kernels::Gpu::new(opts.device).map_err(|e| Error::Input(format!("--device cuda: {e}")))?;
        // Two streams, ordered by construction (the side stream forks from the main one and joins it through
        // events): cudarc's per-buffer events would only cost time and break stream capture (they wait on events
        // recorded outside the graph).
        // SAFETY: this backend launches everything on its two streams, ordered by its own fork and join events.
        unsafe { gpu.context().disable_event_tracking() };
        let ctx = gpu.context();
        let (_, greatest) = llama4_kernels::cudarc::driver::result::stream::get_priority_range().map_err(derr)?;
        let main = ctx.new_stream_with_priority(greatest).map_err(derr)?;
        let side = ctx.new_stream().map_err(derr)?;
        let blas = Blas::new(&main).map_err(kerr)?;
        let fork = ctx.new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING)).map_err(derr)?;
        let join = ctx.new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING)).map_err(derr)?;
        let overlap = std::cell::Cell::new(true);
        Ok(Gpu {
            gpu,
            blas,
            opts,
            profile: RefCell::new(None),
            timeline: RefCell::new(None),
            capturing: std::cell::Cell::new(false),
            main,
            side,
            fork,
            join,
            overlap,
            fused_routing: std::cell::Cell::new(false),
            shared_ctas: std::cell::Cell::new(None),
            norm_fp8: std::cell::Cell::new(false),
        })
    }

    /// How this backend was opened (the recipe: `fp8_dense`).
    pub fn options(&self) -> GpuOptions {
        self.opts
    }

    pub fn describe(&self) -> String {
        self.gpu.describe()
    }

    fn stream(&self) -> &Arc<CudaStream> {
        &self.main
    }

    fn alloc<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.stream().alloc_zeros::<T>(n.max(1)).map_err(derr)
    }

    fn upload_bf16(&self, v: &[bf16]) -> Result<CudaSlice<bf16>> {
        self.stream().clone_htod(v).map_err(derr)
    }

    /// Rowwise FP8 of a [rows, cols] bf16 matrix on the device: one scale per row (an output channel).
    fn quantize_rows(
        &self,
        w: &CudaSlice<bf16>,
        rows: usize,
        cols: usize,
    ) -> Result<(CudaSlice<E4M3>, CudaSlice<f32>)> {
        let s = self.stream();
        let mut q = self.alloc::<E4M3>(rows * cols)?;
        let mut sc = self.alloc::<f32>(rows)?;
        quant::quant_fp8(s, &tv(w, [rows, cols])?, &mut tm(&mut q, [rows, cols])?, &mut tm(&mut sc, [rows])?)
            .map_err(kerr)?;
        Ok((q, sc))
    }

    /// Routed experts `[E, K, N]` (as `x @ W`) -> FP8 `[E, N, K]` + scales `[E, N]`, a group of experts at a time:
    /// `fill(scratch, e0, g)` writes experts `e0 .. e0 + g` in bf16 (from the host, or drawn on the device).
    fn prep_experts(
        &self,
        shape: &[usize],
        fill: &mut dyn FnMut(&mut CudaViewMut<bf16>, usize, usize) -> Result<()>,
    ) -> Result<GpuWeight> {
        let [e, k, n] = shape[..] else {
            return Err(Error::Weight(format!("expert weights of shape {shape:?}")));
        };
        let per = k * n;
        let group = (PREP_GROUP_BYTES / (2 * per).max(1)).clamp(1, e.max(1));
        let mut q = self.alloc::<E4M3>(e * per)?;
        let mut sc = self.alloc::<f32>(e * n)?;
        let mut scratch = self.alloc::<bf16>(group * per)?;
        let s = self.stream();
        for e0 in (0..e).step_by(group) {
            let g = group.min(e - e0);
            fill(&mut scratch.slice_mut(..g * per), e0, g)?;
            let w = Tensor::new(scratch.slice(..g * per), [g, k, n]).map_err(kerr)?;
            let mut out = TensorMut::new(q.slice_mut(e0 * per..(e0 + g) * per), [g, n, k]).map_err(kerr)?;
            let mut scales = TensorMut::new(sc.slice_mut(e0 * n..(e0 + g) * n), [g, n]).map_err(kerr)?;
            weight_prep::quantize_expert_weights(s, &w, &mut out, &mut scales).map_err(kerr)?;
        }
        // The scratch is freed when the prep above has run (stream order).
        Ok(GpuWeight::Fp8 { q, scales: sc, shape: vec![e, n, k] })
    }

    /// A bf16 weight already on the device, stored the way `role` is (FP8 rows for a linear under fp8_dense).
    fn store(&self, role: Role, w: CudaSlice<bf16>, shape: Vec<usize>) -> Result<GpuWeight> {
        match (role, &shape[..]) {
            (Role::Linear, &[n, k]) if self.opts.fp8_dense => {
                let (q, scales) = self.quantize_rows(&w, n, k)?;
                Ok(GpuWeight::Fp8 { q, scales, shape })
            }
            (Role::Linear, _) if self.opts.fp8_dense => Err(Error::Weight(format!("linear weight of shape {shape:?}"))),
            _ => Ok(GpuWeight::Bf16 { w, shape }),
        }
    }

    /// Whether the shared expert runs on its own stream beside the routed experts (the default), or in line.
    /// Profiled steps run it in line, so that each op's time is its own.
    pub fn set_overlap_shared_expert(&self, on: bool) {
        self.overlap.set(on);
    }

    /// Whether decode batches (up to router::ROUTE_MAX_TOKENS tokens) route in one launch, logits, routing and
    /// FP8 expert inputs together (router::route_fp8), or in the three launches it fuses (the default; the same
    /// bits). The one launch measured slower inside the batch-1 step (its cooperative grid waits for slots behind
    /// the shared expert's GEMV grid and keeps no PDL overlap; kernels/NOTES.md), so it is an opt-in for A/Bs.
    /// Larger batches always take the three.
    pub fn set_fused_routing(&self, on: bool) {
        self.fused_routing.set(on);
    }

    /// Bounds the grid of the shared expert's gate_up GEMV, where it runs beside the routed path (one row, a bf16
    /// weight, the two streams on), to `ctas` CTAs looping over its tiles (linear's `GemvBounded`, the same
    /// bits), for A/Bs of how the two branches share the SMs; None (the default) keeps a CTA per 16 columns (1024
    /// CTAs of 8 warps at Scout's widths, 2 resident per SM). Bounded, the step measured no faster on an H100
    /// (kernels/NOTES.md, "A bounded shared-expert grid").
    pub fn set_shared_gemv_ctas(&self, ctas: Option<u32>) {
        self.shared_ctas.set(ctas);
    }

    /// Whether, with `--fp8-dense`, the norms that write Y also write its rowwise FP8 copy for the FP8 linears
    /// that read Y (qkv, the shared expert's and the dense MLP's gate_up), so those skip their quant_fp8 launch:
    /// the same bytes (the copy is quant_fp8's of Y), one launch fewer each. Off by default until it has run and
    /// been measured on a GPU (kernels/NOTES.md, "The norms' FP8 copy"); on for A/Bs. It applies to the states
    /// planned after the call (a state holds the copy's buffer or not, and its steps use it if it does). Meta's
    /// recipe has no FP8 linear on Y and ignores it.
    pub fn set_norm_fp8_copy(&self, on: bool) {
        self.norm_fp8.set(on);
    }

    /// `n` zeroed bytes of page-locked host memory.
    fn pinned_zeros(&self, n: usize) -> Result<PinnedHostSlice<u8>> {
        // SAFETY: the bytes are zeroed through the raw pointer before any slice of them is made.
        unsafe {
            let mut p = self.gpu.context().alloc_pinned::<u8>(n).map_err(derr)?;
            std::ptr::write_bytes(p.as_mut_ptr().map_err(derr)?, 0, n);
            Ok(p)
        }
    }

    /// Device memory (free, total) in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.gpu.context().mem_get_info().map_err(derr)
    }

    /// Device-to-device copy bandwidth in GB/s (bytes read + written) measured now: back-to-back async copies of
    /// 256 MiB between events, the median of 5 samples of 10 (the ceiling the benches hold memory-bound work to).
    pub fn copy_ceiling_gbps(&self) -> Result<f64> {
        let n = 256usize << 20;
        let s = self.stream();
        let src = self.alloc::<u8>(n)?;
        let mut dst = self.alloc::<u8>(n)?;
        let ev = || self.gpu.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(derr);
        let (a, b) = (ev()?, ev()?);
        for _ in 0..3 {
            s.memcpy_dtod(&src, &mut dst).map_err(derr)?;
        }
        let mut gbps = Vec::new();
        for _ in 0..5 {
            a.record(s).map_err(derr)?;
            for _ in 0..10 {
                s.memcpy_dtod(&src, &mut dst).map_err(derr)?;
            }
            b.record(s).map_err(derr)?;
            let ms = a.elapsed_ms(&b).map_err(derr)? as f64;
            gbps.push(10.0 * 2.0 * n as f64 / (ms * 1e-3) / 1e9);
        }
        gbps.sort_by(f64::total_cmp);
        Ok(gbps[2])
    }

    /// Starts timing every op of the steps that follow, which must run eagerly (not captured).
    pub fn start_profile(&self) {
        *self.profile.borrow_mut() = Some(Vec::new());
    }

    /// Ends a profile: waits for the steps and returns each op family's time (from the start of one op to the
    /// start of the next, launch gaps included), in the order first seen.
    pub fn finish_profile(&self) -> Result<Vec<OpTime>> {
        self.mark("end")?;
        let marks = self.profile.borrow_mut().take().unwrap_or_default();
        self.stream().synchronize().map_err(derr)?;
        let mut out: Vec<OpTime> = Vec::new();
        for op in op_times(&marks)? {
            match out.iter_mut().find(|o| o.label == op.label) {
                Some(o) => {
                    o.ms += op.ms;
                    o.calls += 1;
                }
                None => out.push(op),
            }
        }
        Ok(out)
    }

    /// Arms a timeline of layer `layer` (not the last) for the next captured step: its graph holds an event
    /// node at the start of each of the layer's ops. Every node is a full dependency, so the layer's ops lose
    /// their programmatic (PDL) overlap at those points: the timeline shows where a replayed step's time goes,
    /// a little slower than the clean graph. The caller drops that graph after [`Gpu::finish_timeline`].
    pub fn start_timeline(&self, layer: usize) {
        *self.timeline.borrow_mut() = Some(Timeline { layer, active: false, marks: Vec::new() });
    }

    /// The timeline of the last replay of the step captured after [`Gpu::start_timeline`]: each op's time from
    /// its start to the next op's start, in order (an op seen twice is listed twice). Waits for the stream.
    pub fn finish_timeline(&self) -> Result<Vec<OpTime>> {
        let t = self.timeline.borrow_mut().take();
        let Some(t) = t else { return Err(Error::Backend("no timeline was started".into())) };
        if t.marks.len() < 2 {
            return Err(Error::Backend(format!(
                "the captured step never reached layers {} and {}",
                t.layer,
                t.layer + 1
            )));
        }
        self.stream().synchronize().map_err(derr)?;
        op_times(&t.marks)
    }

    /// Starts or ends the armed timeline at the start of `layer`'s rope.
    fn timeline_layer(&self, layer: usize) -> Result<()> {
        let end = match self.timeline.borrow_mut().as_mut() {
            Some(t) if self.capturing.get() && layer == t.layer => {
                t.active = true;
                false
            }
            Some(t) if t.active && layer == t.layer + 1 => true,
            _ => false,
        };
        if end {
            self.mark("end")?;
            if let Some(t) = self.timeline.borrow_mut().as_mut() {
                t.active = false;
            }
        }
        Ok(())
    }

    fn timing_event(&self) -> Result<CudaEvent> {
        self.gpu.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(derr)
    }

    /// Marks the start of an op (on the main stream) while profiling, or inside the armed timeline's layer.
    fn mark(&self, label: &'static str) -> Result<()> {
        let s = self.stream();
        let mut p = self.profile.borrow_mut();
        if let Some(marks) = p.as_mut() {
            let ev = self.timing_event()?;
            ev.record(s).map_err(derr)?;
            marks.push((label, ev));
        }
        let mut tl = self.timeline.borrow_mut();
        if let Some(t) = tl.as_mut().filter(|t| t.active) {
            let ev = self.timing_event()?;
            // SAFETY: a live event and the backend's stream, which is capturing (`active` is only set then): the
            // record becomes an event node of the graph, re-recorded at every replay.
            unsafe {
                sys::cuEventRecordWithFlags(
                    ev.cu_event(),
                    s.cu_stream(),
                    sys::CUevent_record_flags::CU_EVENT_RECORD_EXTERNAL as u32,
                )
            }
            .result()
            .map_err(derr)?;
            t.marks.push((label, ev));
        }
        Ok(())
    }
}

/// Each mark's op time, from its event to the next one's, in order (the events have completed).
fn op_times(marks: &[(&'static str, CudaEvent)]) -> Result<Vec<OpTime>> {
    marks
        .windows(2)
        .map(|w| Ok(OpTime { label: w[0].0, ms: w[0].1.elapsed_ms(&w[1].1).map_err(derr)? as f64, calls: 1 }))
        .collect()
}

/// A weight on the device.
pub enum GpuWeight {
    /// bf16, in the checkpoint's layout.
    Bf16 { w: CudaSlice<bf16>, shape: Vec<usize> },
    /// FP8 E4M3 rows `[.., N, K]` with one f32 scale per row.
    Fp8 { q: CudaSlice<E4M3>, scales: CudaSlice<f32>, shape: Vec<usize> },
}

impl GpuWeight {
    /// Device bytes the weight holds (scales included).
    pub fn bytes(&self) -> usize {
        match self {
            GpuWeight::Bf16 { w, .. } => 2 * w.len(),
            GpuWeight::Fp8 { q, scales, .. } => q.len() + 4 * scales.len(),
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            GpuWeight::Bf16 { shape, .. } | GpuWeight::Fp8 { shape, .. } => shape,
        }
    }

    fn bf16(&self, what: &str) -> Result<&CudaSlice<bf16>> {
        match self {
            GpuWeight::Bf16 { w, .. } => Ok(w),
            GpuWeight::Fp8 { .. } => Err(Error::Backend(format!("{what}: expected a bf16 weight"))),
        }
    }

    fn fp8(&self, what: &str) -> Result<(&CudaSlice<E4M3>, &CudaSlice<f32>)> {
        match self {
            GpuWeight::Fp8 { q, scales, .. } => Ok((q, scales)),
            GpuWeight::Bf16 { .. } => Err(Error::Backend(format!("{what}: expected an FP8 weight"))),
        }
    }
}

/// A view of the first `shape.product()` elements of a planned buffer.
fn tv<'a, T: Element, const N: usize>(b: &'a CudaSlice<T>, shape: [usize; N]) -> Result<Tensor<'a, T, N>> {
    let n: usize = shape.iter().product();
    if n > b.len() {
        return Err(Error::Backend(format!("a {shape:?} view of a buffer of {} elements", b.len())));
    }
    Tensor::new(b.slice(..n), shape).map_err(kerr)
}

fn tm<'a, T: Element, const N: usize>(b: &'a mut CudaSlice<T>, shape: [usize; N]) -> Result<TensorMut<'a, T, N>> {
    let n: usize = shape.iter().product();
    if n > b.len() {
        return Err(Error::Backend(format!("a {shape:?} view of a buffer of {} elements", b.len())));
    }
    TensorMut::new(b.slice_mut(..n), shape).map_err(kerr)
}

/// One section of the metadata arena: byte offset and capacity in elements.
#[derive(Clone, Copy, Debug, Default)]
struct Sec {
    off: usize,
    cap: usize,
    elem: usize,
}

/// Where each metadata array lives in the arena (256-byte aligned sections).
#[derive(Clone, Copy, Debug, Default)]
struct MetaLayout {
    ids: Sec,
    pos: Sec,
    slots: [Sec; 2],
    cu: Sec,
    seq_lens: Sec,
    tables: [Sec; 2],
    logit_rows: Sec,
    /// [0, tokens, 0, logit_rows]: the one-group offsets of the dense FP8 GEMMs.
    gemm_off: Sec,
    bytes: usize,
}

impl MetaLayout {
    fn new(max_t: usize, max_s: usize, max_blocks: usize, max_r: usize) -> MetaLayout {
        let mut at = 0usize;
        let mut sec = |cap: usize, elem: usize| {
            let s = Sec { off: at, cap, elem };
            at = (at + cap * elem).div_ceil(256) * 256;
            s
        };
        let ids = sec(max_t, 4);
        let pos = sec(max_t, 4);
        let slots = [sec(max_t, 8), sec(max_t, 8)];
        let cu = sec(max_s + 1, 4);
        let seq_lens = sec(max_s, 4);
        let tables = [sec(max_s * max_blocks, 4), sec(max_s * max_blocks, 4)];
        let logit_rows = sec(max_r, 4);
        let gemm_off = sec(4, 4);
        MetaLayout { ids, pos, slots, cu, seq_lens, tables, logit_rows, gemm_off, bytes: at }
    }
}

/// A typed view of `n` elements of an arena section.
fn meta<'a, T: Element>(arena: &'a CudaSlice<u8>, s: Sec, n: usize) -> Result<CudaView<'a, T>> {
    if n > s.cap || std::mem::size_of::<T>() != s.elem {
        return Err(Error::Backend(format!("metadata view of {n} elements in a section of {}", s.cap)));
    }
    // SAFETY: the section holds `cap` elements of T (4- or 8-byte aligned: sections start on 256 bytes).
    unsafe { arena.slice(s.off..s.off + s.cap * s.elem).transmute::<T>(n) }
        .ok_or_else(|| Error::Backend("metadata section too small".into()))
}

fn meta1<'a, T: Element>(arena: &'a CudaSlice<u8>, s: Sec, n: usize) -> Result<Tensor<'a, T, 1>> {
    Tensor::new(meta(arena, s, n)?, [n]).map_err(kerr)
}

fn put<T: Copy>(staging: &mut [u8], s: Sec, v: &[T]) -> Result<()> {
    if v.len() > s.cap || std::mem::size_of::<T>() != s.elem {
        return Err(Error::Backend(format!("{} metadata entries for a section of {}", v.len(), s.cap)));
    }
    // SAFETY: plain integers reinterpreted as their bytes.
    let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) };
    staging[s.off..s.off + bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// Scratch of the dense linears: the FP8 copy of an input and the two GEMM workspaces.
struct LinScratch {
    xq: CudaSlice<E4M3>,
    xs: CudaSlice<f32>,
    blas_ws: CudaSlice<u8>,
    gemm_ws: CudaSlice<u8>,
}

/// Scratch of the FFN blocks.
struct FfnScratch {
    /// [rows, 2I] gate|up outputs (routed rows or tokens).
    gu: CudaSlice<bf16>,
    /// [T, I] bf16 SwiGLU output of the shared expert / dense MLP.
    h: CudaSlice<bf16>,
    /// [rows, I] FP8 SwiGLU output of the routed experts and its scales.
    hq: CudaSlice<E4M3>,
    hs: CudaSlice<f32>,
    router_logits: CudaSlice<bf16>,
    ids: CudaSlice<i32>,
    weights: CudaSlice<f32>,
    counts: CudaSlice<i32>,
    offsets: CudaSlice<i32>,
    dest: CudaSlice<i32>,
    /// [rows, H] FP8 permuted, scaled inputs and their scales.
    aq: CudaSlice<E4M3>,
    as_: CudaSlice<f32>,
    /// [rows, H] routed expert outputs.
    eo: CudaSlice<bf16>,
    /// [T, H] shared expert output, and its own [T, 2I] gate|up and [T, I] SwiGLU scratch (it runs beside
    /// the routed path).
    shared: CudaSlice<bf16>,
    shared_gu: CudaSlice<bf16>,
    shared_h: CudaSlice<bf16>,
    router_ws: CudaSlice<u8>,
}

/// Device error counters, checked when a step's tokens are read.
const BAD_IDS: usize = 0;
const BAD_SLOTS: usize = 1;
const BAD_SEQS: usize = 2;
const BAD_OFFSETS: usize = 3;
const COUNTERS: [&str; 4] = [
    "token ids outside the embedding table",
    "KV slots outside the cache",
    "sequences with inconsistent attention metadata",
    "inconsistent expert offsets",
];

pub struct GpuState {
    shape: StepShape,
    heads: HeadLayout,
    hidden: usize,
    vocab: usize,
    experts: usize,
    block_size: usize,
    max_blocks: usize,
    layout: MetaLayout,
    /// Page-locked, so the step's one upload is a true async copy (a pageable source may block the host).
    staging: PinnedHostSlice<u8>,
    arena: CudaSlice<u8>,
    acts: [CudaSlice<bf16>; 5],
    q: CudaSlice<bf16>,
    lin: LinScratch,
    /// The shared expert's linears' scratch (on the side stream).
    side_lin: LinScratch,
    ffn: FfnScratch,
    attn_ws: CudaSlice<u8>,
    kv: Vec<(CudaSlice<bf16>, CudaSlice<bf16>)>,
    ysel: CudaSlice<bf16>,
    logits: CudaSlice<f32>,
    tokens: CudaSlice<i32>,
    counters: CudaSlice<u32>,
    /// Y's rowwise FP8 copy ([T, H] E4M3 and [T] scales, quant_fp8's bytes of Y), planned when the FP8 linears
    /// read Y (`--fp8-dense` with the copy on). Where it is, every writer of Y writes it too (Y is written before
    /// it is read in every step), so the FP8 linears on Y read it in place of a quant_fp8 launch.
    y_fp8: Option<Fp8Buf>,
    /// Bytes of device memory the state holds (KV pools included).
    pub bytes: usize,
}

impl GpuState {
    fn width(&self, a: Act) -> usize {
        let h = self.heads;
        match a {
            Act::X | Act::Y | Act::F => self.hidden,
            Act::Qkv => (h.n_heads + 2 * h.n_kv_heads) * h.head_dim,
            Act::Attn => h.n_heads * h.head_dim,
        }
    }
}

/// A rowwise FP8 copy of an activation: E4M3 bytes and one scale per row.
type Fp8Buf = (CudaSlice<E4M3>, CudaSlice<f32>);
/// The same, to read.
type Fp8Rows<'a> = (&'a CudaSlice<E4M3>, &'a CudaSlice<f32>);

/// Y's FP8 copy for an FP8 linear to read, where the state has one.
fn y_copy_of(copy: &Option<Fp8Buf>) -> Option<Fp8Rows<'_>> {
    copy.as_ref().map(|(q, s)| (q, s))
}

/// `(&acts[i], &mut acts[o])` for two different activations.
fn in_out(acts: &mut [CudaSlice<bf16>; 5], i: Act, o: Act) -> Result<(&CudaSlice<bf16>, &mut CudaSlice<bf16>)> {
    let (i, o) = (i as usize, o as usize);
    if i == o {
        return Err(Error::Backend("an op's input and output are the same activation".into()));
    }
    let (lo, hi) = acts.split_at_mut(i.max(o));
    Ok(if i < o { (&lo[i], &mut hi[0]) } else { (&hi[0], &mut lo[o]) })
}

impl Gpu {
    /// `y [m, n] = x [m, k] @ w^T` for a bf16 or FP8 nn.Linear weight, a bf16 weight on `schedule` (an FP8 weight
    /// has one path); `off` is the arena's one-group offsets `[0, m]` for the FP8 GEMM. An FP8 weight reads
    /// `x_fp8` (x's rowwise FP8 copy, written with x) where given, else quantizes x into the scratch first.
    #[allow(clippy::too_many_arguments)]
    fn lin(
        &self,
        s: &CudaStream,
        lin: &mut LinScratch,
        x: &CudaSlice<bf16>,
        x_fp8: Option<Fp8Rows<'_>>,
        m: usize,
        w: &GpuWeight,
        y: &mut CudaSlice<bf16>,
        off: &Tensor<i32, 1>,
        what: &str,
        schedule: LinearSchedule,
    ) -> Result<()> {
        let (n, k) = match w.shape() {
            [n, k] => (*n, *k),
            sh => return Err(Error::Backend(format!("{what}: linear weight of shape {sh:?}"))),
        };
        let x = tv(x, [m, k])?;
        let mut y = tm(y, [m, n])?;
        match w {
            GpuWeight::Bf16 { w, .. } => {
                let mut ws = tm(&mut lin.blas_ws, [LINEAR_WORKSPACE_BYTES])?;
                self.blas.linear_bf16_with(s, &x, &tv(w, [n, k])?, &mut y, &mut ws, schedule).map_err(kerr)
            }
            GpuWeight::Fp8 { .. } => match x_fp8 {
                Some((xq, xs)) => self.lin_fp8(s, &mut lin.gemm_ws, xq, xs, m, w, &mut y, off),
                None => {
                    quant::quant_fp8(s, &x, &mut tm(&mut lin.xq, [m, k])?, &mut tm(&mut lin.xs, [m])?).map_err(kerr)?;
                    self.lin_quantized(s, lin, m, w, &mut y, off)
                }
            },
        }
    }

    /// The FP8 linear of `w` on the rows already quantized into `lin.xq` / `lin.xs` ([m, k] and [m]).
    fn lin_quantized(
        &self,
        s: &CudaStream,
        lin: &mut LinScratch,
        m: usize,
        w: &GpuWeight,
        y: &mut TensorMut<bf16, 2>,
        off: &Tensor<i32, 1>,
    ) -> Result<()> {
        self.lin_fp8(s, &mut lin.gemm_ws, &lin.xq, &lin.xs, m, w, y, off)
    }

    /// The FP8 linear of `w` on FP8 rows `xq` [m, k] with scales `xs` [m].
    #[allow(clippy::too_many_arguments)]
    fn lin_fp8(
        &self,
        s: &CudaStream,
        gemm_ws: &mut CudaSlice<u8>,
        xq: &CudaSlice<E4M3>,
        xs: &CudaSlice<f32>,
        m: usize,
        w: &GpuWeight,
        y: &mut TensorMut<bf16, 2>,
        off: &Tensor<i32, 1>,
    ) -> Result<()> {
        let GpuWeight::Fp8 { q, scales, .. } = w else {
            return Err(Error::Backend("an FP8 linear on a bf16 weight".into()));
        };
        let [n, k] = w.shape()[..] else { return Err(Error::Backend("linear weight rank".into())) };
        let ws_len = gemm_ws.len();
        linear_fp8(
            s,
            &tv(xq, [m, k])?,
            &tv(xs, [m])?,
            &tv(q, [n, k])?,
            &tv(scales, [n])?,
            off,
            y,
            &mut tm(gemm_ws, [ws_len])?,
        )
        .map_err(kerr)
    }
}

/// Views [t, h] and [t] of Y's FP8 copy for a writer of Y to fill, where the state has one.
fn y_copy_mut(
    copy: &mut Option<Fp8Buf>,
    t: usize,
    h: usize,
) -> Result<Option<(TensorMut<'_, E4M3, 2>, TensorMut<'_, f32, 1>)>> {
    copy.as_mut().map(|(q, qs)| Ok((tm(q, [t, h])?, tm(qs, [t])?))).transpose()
}

impl Backend for Gpu {
    type Weight = GpuWeight;
    type State = GpuState;
    type Graph = CudaGraph;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn check_config(&self, c: &TextConfig) -> Result<()> {
        let refuse = |m: String| Err(Error::Config(format!("the GPU kernels cannot serve this model: {m}")));
        if !attention::HEAD_DIMS.contains(&c.head_dim) {
            return refuse(format!(
                "head_dim {} (the attention kernels are built for {:?})",
                c.head_dim,
                attention::HEAD_DIMS
            ));
        }
        let any_moe = c.ffn.contains(&Ffn::Moe);
        if any_moe {
            let (h, i) = (c.hidden_size, c.intermediate_size);
            if h % 16 != 0 || i % 16 != 0 {
                return refuse(format!(
                    "hidden_size {h} and intermediate_size {i} must be multiples of 16 (the FP8 expert GEMMs read \
                     16-byte rows)"
                ));
            }
            if c.num_local_experts > llama4_kernels::router::MAX_EXPERTS {
                return refuse(format!(
                    "{} experts (the router is built for at most {})",
                    c.num_local_experts,
                    llama4_kernels::router::MAX_EXPERTS
                ));
            }
            if c.num_experts_per_tok > llama4_kernels::router::MAX_TOP_K {
                return refuse(format!(
                    "num_experts_per_tok {} (at most {})",
                    c.num_experts_per_tok,
                    llama4_kernels::router::MAX_TOP_K
                ));
            }
        }
        if self.opts.fp8_dense {
            let q = c.num_attention_heads * c.head_dim;
            let qkv = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim;
            let mut dims = vec![("hidden_size", c.hidden_size), ("q width", q), ("qkv width", qkv)];
            if any_moe {
                dims.push(("intermediate_size", c.intermediate_size));
            }
            if c.ffn.contains(&Ffn::Dense) {
                dims.push(("intermediate_size_mlp", c.intermediate_size_mlp));
            }
            if let Some((name, d)) = dims.into_iter().find(|(_, d)| d % 16 != 0) {
                return refuse(format!("--fp8-dense needs {name} ({d}) to be a multiple of 16 (FP8 GEMM rows)"));
            }
        }
        Ok(())
    }

    fn upload(&self, role: Role, name: &str, t: HostTensor) -> Result<GpuWeight> {
        let what = |e: Error| Error::Weight(format!("{name}: {e}"));
        let host = t.data.to_bf16();
        match role {
            Role::ExpertsGateUp | Role::ExpertsDown => {
                let per = t.shape.get(1..).map_or(0, |d| d.iter().product::<usize>());
                let s = self.stream();
                let mut fill = |dst: &mut CudaViewMut<bf16>, e0: usize, g: usize| {
                    s.memcpy_htod(&host[e0 * per..(e0 + g) * per], dst).map_err(derr)
                };
                self.prep_experts(&t.shape, &mut fill).map_err(what)
            }
            _ => self.store(role, self.upload_bf16(&host).map_err(what)?, t.shape).map_err(what),
        }
    }

    fn synthesize(&self, role: Role, name: &str, shape: &[usize], init: Init) -> Result<GpuWeight> {
        // Norm weights (ones) are a few KB: drawn on the host.
        let Init::Uniform { seed, bound } = init else { return self.upload(role, name, init.host(shape)?) };
        let what = |e: Error| Error::Weight(format!("synthetic {name}: {e}"));
        let s = self.stream();
        match role {
            Role::ExpertsGateUp | Role::ExpertsDown => {
                let per = shape.get(1..).map_or(0, |d| d.iter().product::<usize>());
                let mut fill = |dst: &mut CudaViewMut<bf16>, e0: usize, _g: usize| {
                    let n = dst.len();
                    let mut v = TensorMut::new(dst.slice_mut(..), [n]).map_err(kerr)?;
                    random::random_uniform_bf16(s, &mut v, seed, (e0 * per) as u64, bound).map_err(kerr)
                };
                self.prep_experts(shape, &mut fill).map_err(what)
            }
            _ => {
                let n = shape.iter().product();
                let mut w = self.alloc::<bf16>(n).map_err(what)?;
                random::random_uniform_bf16(s, &mut tm(&mut w, [n])?, seed, 0, bound).map_err(kerr).map_err(what)?;
                self.store(role, w, shape.to_vec()).map_err(what)
            }
        }
    }

    fn plan(&self, c: &TextConfig, plan: &Plan) -> Result<GpuState> {
        let l = plan.limits;
        let heads = c.head_layout();
        let (t, h, v) = (l.max_tokens, c.hidden_size, c.vocab_size);
        let qkv = (heads.n_heads + 2 * heads.n_kv_heads) * heads.head_dim;
        let qw = heads.n_heads * heads.head_dim;
        let any_moe = c.ffn.contains(&Ffn::Moe);
        let (e, k) = if any_moe { (c.num_local_experts, c.num_experts_per_tok) } else { (1, 1) };
        let (i, im) = (c.intermediate_size, if c.ffn.contains(&Ffn::Dense) { c.intermediate_size_mlp } else { 0 });
        let rows = t * k;
        let layout = MetaLayout::new(t, l.max_seqs, plan.max_blocks, l.max_logit_rows);
        // The decode kernel's split-KV workspace for every batch and query count it may see.
        let mut attn_ws = 0usize;
        for spec in &plan.layers {
            for batch in 1..=l.max_seqs {
                for q in 1..=DECODE_MAX_Q.min(l.max_tokens) {
                    let shape = DecodeShape {
                        batch,
                        n_heads: heads.n_heads,
                        n_kv_heads: heads.n_kv_heads,
                        head_dim: heads.head_dim,
                        max_q_len: q,
                        max_kv_len: plan.max_blocks * l.block_size,
                        mask: spec.mask,
                    };
                    attn_ws = attn_ws.max(attention_decode::workspace_size(shape).map_err(kerr)?);
                }
            }
        }
        let gemm_ws =
            grouped_gemm::workspace_size(e).map_err(kerr)?.max(grouped_gemm::workspace_size(1).map_err(kerr)?);
        let kmax = h.max(qw).max(i).max(im);
        let lin_scratch = |rows: usize, kmax: usize| -> Result<LinScratch> {
            Ok(LinScratch {
                xq: self.alloc(rows * kmax)?,
                xs: self.alloc(rows)?,
                blas_ws: self.alloc(LINEAR_WORKSPACE_BYTES)?,
                gemm_ws: self.alloc(gemm_ws)?,
            })
        };
        let lin = lin_scratch(t.max(l.max_logit_rows), kmax)?;
        let side_lin = lin_scratch(if any_moe { t } else { 1 }, if any_moe { h.max(i) } else { 1 })?;
        let ffn = FfnScratch {
            gu: self.alloc((rows * 2 * i).max(t * 2 * i.max(im)))?,
            h: self.alloc(t * i.max(im))?,
            hq: self.alloc(rows * i)?,
            hs: self.alloc(rows)?,
            router_logits: self.alloc(t * e)?,
            ids: self.alloc(rows)?,
            weights: self.alloc(rows)?,
            counts: self.alloc(e)?,
            offsets: self.alloc(e + 1)?,
            dest: self.alloc(rows)?,
            aq: self.alloc(rows * h)?,
            as_: self.alloc(rows)?,
            eo: self.alloc(rows * h)?,
            shared: self.alloc(t * h)?,
            shared_gu: self.alloc(if any_moe { t * 2 * i } else { 1 })?,
            shared_h: self.alloc(if any_moe { t * i } else { 1 })?,
            // Room for either routing: the router's own, or route_fp8's at decode batches.
            router_ws: self.alloc(if any_moe {
                router_workspace_size::<bf16>(t, e).map_err(kerr)?.max(route_fp8_workspace_size(e).map_err(kerr)?)
            } else {
                1
            })?,
        };
        let kv_row = heads.n_kv_heads * heads.head_dim;
        let kv = plan
            .layers
            .iter()
            .map(|spec| {
                let n = plan.blocks[spec.kv as usize] * l.block_size * kv_row;
                Ok((self.alloc::<bf16>(n)?, self.alloc::<bf16>(n)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let kv_bytes: usize = kv.iter().map(|(a, b)| (a.len() + b.len()) * 2).sum();
        let acts =
            [self.alloc(t * h)?, self.alloc(t * h)?, self.alloc(t * qkv)?, self.alloc(t * qw)?, self.alloc(t * h)?];
        let scratch_bytes = 2 * t * (3 * h + qkv + 2 * qw)
            + lin.xq.len()
            + 4 * lin.xs.len()
            + LINEAR_WORKSPACE_BYTES
            + gemm_ws
            + attn_ws
            + 2 * (ffn.gu.len() + ffn.h.len() + ffn.eo.len() + ffn.shared.len() + ffn.router_logits.len())
            + 2 * (ffn.shared_gu.len() + ffn.shared_h.len())
            + side_lin.xq.len()
            + 4 * side_lin.xs.len()
            + LINEAR_WORKSPACE_BYTES
            + gemm_ws
            + ffn.hq.len()
            + ffn.aq.len()
            + 4 * l.max_logit_rows * v;
        Ok(GpuState {
            shape: StepShape { tokens: 0, seqs: 0, max_q_len: 0, logit_rows: 0 },
            heads,
            hidden: h,
            vocab: v,
            experts: e,
            block_size: l.block_size,
            max_blocks: plan.max_blocks,
            staging: self.pinned_zeros(layout.bytes.max(1))?,
            arena: self.alloc(layout.bytes)?,
            layout,
            acts,
            q: self.alloc(t * qw)?,
            lin,
            side_lin,
            ffn,
            attn_ws: self.alloc(attn_ws)?,
            kv,
            ysel: self.alloc(l.max_logit_rows * h)?,
            logits: self.alloc(l.max_logit_rows * v)?,
            tokens: self.alloc(l.max_logit_rows)?,
            counters: self.alloc(4)?,
            y_fp8: match self.opts.fp8_dense && self.norm_fp8.get() {
                true => Some((self.alloc(t * h)?, self.alloc(t)?)),
                false => None,
            },
            bytes: kv_bytes
                + scratch_bytes
                + if self.opts.fp8_dense && self.norm_fp8.get() { t * h + 4 * t } else { 0 },
        })
    }

    fn set_step(&self, st: &mut GpuState, m: &StepMeta) -> Result<()> {
        let shape = m.shape();
        let l = st.layout;
        if m.max_blocks != st.max_blocks {
            return Err(Error::Backend(format!("block tables of {} columns; planned {}", m.max_blocks, st.max_blocks)));
        }
        // Waits only for the previous step's copy out of this buffer (long done: its tokens were read).
        let buf = st.staging.as_mut_slice().map_err(derr)?;
        put(buf, l.ids, &m.ids)?;
        put(buf, l.pos, &m.pos)?;
        for k in 0..2 {
            put(buf, l.slots[k], &m.slots[k])?;
            put(buf, l.tables[k], &m.block_tables[k])?;
        }
        put(buf, l.cu, &m.cu_seqlens)?;
        put(buf, l.seq_lens, &m.seq_lens)?;
        put(buf, l.logit_rows, &m.logit_rows)?;
        put(buf, l.gemm_off, &[0i32, shape.tokens as i32, 0, shape.logit_rows as i32])?;
        // The step's one upload.
        self.stream().memcpy_htod(&st.staging, &mut st.arena).map_err(derr)?;
        st.shape = shape;
        Ok(())
    }

    fn embed(&self, st: &mut GpuState, table: &GpuWeight) -> Result<()> {
        self.mark("embedding")?;
        let (t, h) = (st.shape.tokens, st.hidden);
        let [v, _] = table.shape()[..] else { return Err(Error::Backend("embedding table rank".into())) };
        let table = tv(table.bf16("embedding")?, [v, h])?;
        let ids = meta1::<i32>(&st.arena, st.layout.ids, t)?;
        let mut bad = TensorMut::new(st.counters.slice_mut(BAD_IDS..BAD_IDS + 1), [1]).map_err(kerr)?;
        let mut x = tm(&mut st.acts[Act::X as usize], [t, h])?;
        embedding::embedding(self.stream(), &table, &ids, &mut x, Some(&mut bad)).map_err(kerr)
    }

    fn norm(&self, st: &mut GpuState, w: &GpuWeight, eps: f32, add: bool) -> Result<()> {
        self.mark("rmsnorm")?;
        let (t, h) = (st.shape.tokens, st.hidden);
        let w = tv(w.bf16("norm")?, [h])?;
        let [x, y, _, _, f] = &mut st.acts;
        let mut y = tm(y, [t, h])?;
        let s = self.stream();
        let mut copy = y_copy_mut(&mut st.y_fp8, t, h)?;
        let fp8 = copy.as_mut().map(|(q, qs)| Fp8Copy { q, scales: qs });
        match (add, fp8) {
            (true, None) => rmsnorm::add_rmsnorm(s, &tv(f, [t, h])?, &mut tm(x, [t, h])?, &w, eps, &mut y),
            (true, Some(c)) => {
                rmsnorm::add_rmsnorm_with_fp8(s, &tv(f, [t, h])?, &mut tm(x, [t, h])?, &w, eps, &mut y, c)
            }
            (false, None) => rmsnorm::rmsnorm(s, &tv(x, [t, h])?, &w, eps, &mut y),
            (false, Some(c)) => rmsnorm::rmsnorm_with_fp8(s, &tv(x, [t, h])?, &w, eps, &mut y, c),
        }
        .map_err(kerr)
    }

    fn linear(&self, st: &mut GpuState, input: Act, output: Act, w: &GpuWeight) -> Result<()> {
        let t = st.shape.tokens;
        let (wi, wo) = (st.width(input), st.width(output));
        if w.shape() != [wo, wi] {
            return Err(Error::Backend(format!(
                "linear {input:?} -> {output:?}: weight {:?}, want [{wo}, {wi}]",
                w.shape()
            )));
        }
        self.mark(match (input, output) {
            (Act::Y, Act::Qkv) => "qkv_proj",
            (Act::Attn, Act::F) => "o_proj",
            _ => "linear",
        })?;
        let off = meta1::<i32>(&st.arena, st.layout.gemm_off, 2)?;
        let copy = if input == Act::Y { y_copy_of(&st.y_fp8) } else { None };
        let (x, y) = in_out(&mut st.acts, input, output)?;
        self.lin(self.stream(), &mut st.lin, x, copy, t, w, y, &off, "linear", LinearSchedule::Auto)
    }

    fn rope(&self, st: &mut GpuState, layer: usize, spec: &LayerSpec) -> Result<()> {
        self.timeline_layer(layer)?;
        self.mark("rope")?;
        let (t, h) = (st.shape.tokens, st.heads);
        let qkv = tv(&st.acts[Act::Qkv as usize], [t, (h.n_heads + 2 * h.n_kv_heads) * h.head_dim])?;
        let pos = meta1::<i32>(&st.arena, st.layout.pos, t)?;
        let slots = meta1::<i64>(&st.arena, st.layout.slots[spec.kv as usize], t)?;
        let (kc, vc) = &mut st.kv[layer];
        let slots_n = kc.len() / (h.n_kv_heads * h.head_dim);
        let mut k = tm(kc, [slots_n, h.n_kv_heads, h.head_dim])?;
        let mut v = tm(vc, [slots_n, h.n_kv_heads, h.head_dim])?;
        let mut q = tm(&mut st.q, [t, h.n_heads, h.head_dim])?;
        let mut bad = TensorMut::new(st.counters.slice_mut(BAD_SLOTS..BAD_SLOTS + 1), [1]).map_err(kerr)?;
        rope::rope_qkv(self.stream(), &qkv, &pos, &slots, h, &spec.kind, &mut q, &mut k, &mut v, Some(&mut bad))
            .map_err(kerr)
    }

    fn attention(&self, st: &mut GpuState, layer: usize, spec: &LayerSpec) -> Result<()> {
        let (sh, h) = (st.shape, st.heads);
        let q = tv(&st.q, [sh.tokens, h.n_heads, h.head_dim])?;
        let cu = meta1::<i32>(&st.arena, st.layout.cu, sh.seqs + 1)?;
        let seq_lens = meta1::<i32>(&st.arena, st.layout.seq_lens, sh.seqs)?;
        let table = Tensor::new(
            meta::<i32>(&st.arena, st.layout.tables[spec.kv as usize], sh.seqs * st.max_blocks)?,
            [sh.seqs, st.max_blocks],
        )
        .map_err(kerr)?;
        let (kc, vc) = &st.kv[layer];
        let slots_n = kc.len() / (h.n_kv_heads * h.head_dim);
        let (k, v) = (tv(kc, [slots_n, h.n_kv_heads, h.head_dim])?, tv(vc, [slots_n, h.n_kv_heads, h.head_dim])?);
        let kv = PagedKv { k: &k, v: &v, block_table: &table, seq_lens: &seq_lens, block_size: st.block_size };
        let queries = QueryBatch { q: &q, cu_seqlens: &cu, max_q_len: sh.max_q_len };
        let mut out = tm(&mut st.acts[Act::Attn as usize], [sh.tokens, h.n_heads, h.head_dim])?;
        let mut bad = TensorMut::new(st.counters.slice_mut(BAD_SEQS..BAD_SEQS + 1), [1]).map_err(kerr)?;
        let (mask, scale, s) = (spec.mask, attention::default_scale(h.head_dim), self.stream());
        if sh.max_q_len <= DECODE_MAX_Q {
            self.mark("attention_decode")?;
            let n = st.attn_ws.len();
            let mut ws = tm(&mut st.attn_ws, [n])?;
            attention_decode::attention_decode(s, &queries, &kv, mask, scale, &mut out, &mut ws, Some(&mut bad))
        } else {
            self.mark("attention_prefill")?;
            llama4_kernels::attention_prefill::attention_prefill(
                s,
                &queries,
                &kv,
                mask,
                scale,
                &mut out,
                Some(&mut bad),
            )
        }
        .map_err(kerr)
    }

    fn mlp(&self, st: &mut GpuState, gate_up: &GpuWeight, down: &GpuWeight) -> Result<()> {
        self.mark("dense_mlp")?;
        let t = st.shape.tokens;
        let off = meta1::<i32>(&st.arena, st.layout.gemm_off, 2)?;
        let copy = y_copy_of(&st.y_fp8);
        let [_, y, _, _, f] = &mut st.acts;
        let scratch = (&mut st.ffn.gu, &mut st.ffn.h);
        dense_ffn(self, self.stream(), &mut st.lin, scratch, (y, copy), t, gate_up, down, f, &off, None)
    }

    fn moe(&self, st: &mut GpuState, w: MoeRef<'_, GpuWeight>) -> Result<()> {
        self.moe_then(st, w, None)
    }

    /// The unpermute and the norm after it in one kernel (permute::unpermute_add_rmsnorm, F not written) where that
    /// measured faster (decode batches), else the two kernels.
    fn moe_norm(&self, st: &mut GpuState, w: MoeRef<'_, GpuWeight>, norm: &GpuWeight, eps: f32) -> Result<()> {
        if permute::unpermute_norm_is_faster(st.shape.tokens) {
            return self.moe_then(st, w, Some((norm, eps)));
        }
        self.moe_then(st, w, None)?;
        self.norm(st, norm, eps, true)
    }

    fn logits(&self, st: &mut GpuState, lm_head: &GpuWeight) -> Result<()> {
        let (t, r, h, v) = (st.shape.tokens, st.shape.logit_rows, st.hidden, st.vocab);
        if r == 0 {
            return Ok(());
        }
        self.mark("lm_head")?;
        let s = self.stream();
        let rows = meta1::<i32>(&st.arena, st.layout.logit_rows, r)?;
        embedding::embedding(s, &tv(&st.acts[Act::Y as usize], [t, h])?, &rows, &mut tm(&mut st.ysel, [r, h])?, None)
            .map_err(kerr)?;
        let w = lm_head.bf16("lm_head")?;
        let mut ws = tm(&mut st.lin.blas_ws, [LINEAR_WORKSPACE_BYTES])?;
        self.blas
            .linear_bf16(s, &tv(&st.ysel, [r, h])?, &tv(w, [v, h])?, &mut tm(&mut st.logits, [r, v])?, &mut ws)
            .map_err(kerr)?;
        argmax::argmax(s, &tv(&st.logits, [r, v])?, &mut tm(&mut st.tokens, [r])?).map_err(kerr)
    }

    fn tokens(&self, st: &mut GpuState) -> Result<Vec<i32>> {
        let s = self.stream();
        let r = st.shape.logit_rows;
        let tokens = if r == 0 { Vec::new() } else { s.clone_dtoh(&st.tokens.slice(..r)).map_err(derr)? };
        let counters = s.clone_dtoh(&st.counters).map_err(derr)?;
        if let Some((i, n)) = counters.iter().enumerate().find(|(_, &n)| n != 0) {
            s.memset_zeros(&mut st.counters).map_err(derr)?;
            return Err(Error::Backend(format!("the step found {n} {} on the device", COUNTERS[i])));
        }
        Ok(tokens)
    }

    fn read_logits(&self, st: &mut GpuState) -> Result<Array2<f32>> {
        let (r, v) = (st.shape.logit_rows, st.vocab);
        let host =
            if r == 0 { Vec::new() } else { self.stream().clone_dtoh(&st.logits.slice(..r * v)).map_err(derr)? };
        Array2::from_shape_vec((r, v), host).map_err(|e| Error::Backend(e.to_string()))
    }

    fn capture(&self, st: &mut GpuState, f: &mut dyn FnMut(&mut GpuState) -> Result<()>) -> Result<Option<CudaGraph>> {
        if self.profile.borrow().is_some() {
            return Err(Error::Backend("a profiled step cannot be captured: run it eagerly".into()));
        }
        let s = self.stream();
        s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(derr)?;
        self.capturing.set(true);
        let ran = f(st);
        self.capturing.set(false);
        // The capture ends whatever happened, so a failed op leaves the stream usable.
        // The per-node priorities, captured from each kernel's stream (`main`'s doc says why).
        let graph =
            s.end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY).map_err(derr);
        ran?;
        graph?.map(Some).ok_or_else(|| Error::Backend("the captured step holds no work".into()))
    }

    fn replay(&self, _st: &mut GpuState, g: &CudaGraph) -> Result<()> {
        g.launch().map_err(derr)
    }
}

impl Gpu {
    /// The MoE block of [`Backend::moe`], its last kernel fused with the norm after it when `norm` is given.
    fn moe_then(&self, st: &mut GpuState, w: MoeRef<'_, GpuWeight>, norm: Option<(&GpuWeight, f32)>) -> Result<()> {
        let (t, h, e, k) = (st.shape.tokens, st.hidden, st.experts, w.top_k);
        let s = self.stream();
        let off = meta1::<i32>(&st.arena, st.layout.gemm_off, 2)?;
        let [x, y, _, _, f] = &mut st.acts;

        let ffn = &mut st.ffn;
        // The shared expert sees the unscaled y.
        // On its own stream unless profiling (then each op's time must be its own); it has its own scratch.
        self.mark("shared_expert")?;
        let overlap = self.overlap.get() && self.profile.borrow().is_none();
        let side: &CudaStream = match overlap {
            true => {
                self.fork.record(s).map_err(derr)?;
                self.side.wait(&self.fork).map_err(derr)?;
                &self.side
            }
            false => s,
        };
        dense_ffn(
            self,
            side,
            &mut st.side_lin,
            (&mut ffn.shared_gu, &mut ffn.shared_h),
            (y, y_copy_of(&st.y_fp8)),
            t,
            w.shared_gate_up,
            w.shared_down,
            &mut ffn.shared,
            &off,
            if overlap { self.shared_ctas.get() } else { None },
        )?;
        if overlap {
            self.join.record(&self.side).map_err(derr)?;
        }
        // Routing on the bf16 router logits (as transformers' bf16 model): ids, sigmoid weights, the sorted layout,
        // and the expert inputs: the score scales the expert INPUT, bf16(y * w), then rowwise FP8. Three launches,
        // or for decode batches with fused routing switched on, route_fp8's one (the same bits).
        let rw = w.router.bf16("router")?;
        let kind = if k == 1 { RouterKind::SigmoidTop1 } else { RouterKind::SigmoidTopK { k } };
        let rows = t * k;
        {
            let mut ids = tm(&mut ffn.ids, [t, k])?;
            let mut weights = tm(&mut ffn.weights, [t, k])?;
            let mut counts = tm(&mut ffn.counts, [e])?;
            let mut offsets = tm(&mut ffn.offsets, [e + 1])?;
            let mut dest = tm(&mut ffn.dest, [t, k])?;
            let out = RouterOutputs {
                ids: &mut ids,
                weights: &mut weights,
                counts: &mut counts,
                offsets: &mut offsets,
                dest: &mut dest,
            };
            let mut ws = ffn.router_ws.slice_mut(..);
            if t <= ROUTE_MAX_TOKENS && self.fused_routing.get() {
                self.mark("route")?;
                route_fp8(
                    s,
                    &tv(y, [t, h])?,
                    &tv(rw, [e, h])?,
                    kind,
                    &mut tm(&mut ffn.router_logits, [t, e])?,
                    out,
                    &mut tm(&mut ffn.aq, [rows, h])?,
                    &mut tm(&mut ffn.as_, [rows])?,
                    &mut ws,
                )
                .map_err(kerr)?;
            } else {
                self.mark("router")?;
                {
                    let mut lws = tm(&mut st.lin.blas_ws, [LINEAR_WORKSPACE_BYTES])?;
                    let logits = &mut tm(&mut ffn.router_logits, [t, e])?;
                    self.blas.linear_bf16(s, &tv(y, [t, h])?, &tv(rw, [e, h])?, logits, &mut lws).map_err(kerr)?;
                }
                self.mark("router_topk")?;
                router(s, &tv(&ffn.router_logits, [t, e])?, kind, 1, out, &mut ws).map_err(kerr)?;
                self.mark("permute")?;
                permute::permute_fp8(
                    s,
                    &tv(y, [t, h])?,
                    &tv(&ffn.dest, [t, k])?,
                    Some(&tv(&ffn.weights, [t, k])?),
                    None,
                    &mut tm(&mut ffn.aq, [rows, h])?,
                    &mut tm(&mut ffn.as_, [rows])?,
                )
                .map_err(kerr)?;
            }
        }
        let (gq, gs) = w.gate_up.fp8("experts.gate_up")?;
        let (dq, ds) = w.down.fp8("experts.down")?;
        let [_, two_i, _] = w.gate_up.shape()[..] else { return Err(Error::Backend("expert gate_up rank".into())) };
        let i = two_i / 2;
        let ws_len = st.lin.gemm_ws.len();
        let offsets = tv(&ffn.offsets, [e + 1])?;
        self.mark("experts_gate_up")?;
        {
            let g = GroupedGemm {
                a: &tv(&ffn.aq, [rows, h])?,
                scale_a: &tv(&ffn.as_, [rows])?,
                b: &tv(gq, [e, two_i, h])?,
                scale_b: &tv(gs, [e, two_i])?,
                offsets: &offsets,
                counts: None,
            };
            let mut bad = TensorMut::new(st.counters.slice_mut(BAD_OFFSETS..BAD_OFFSETS + 1), [1]).map_err(kerr)?;
            grouped_gemm::grouped_gemm_fp8(
                s,
                &g,
                &mut tm(&mut ffn.gu, [rows, two_i])?,
                &mut tm(&mut st.lin.gemm_ws, [ws_len])?,
                Some(&mut bad),
                Schedule::Auto,
            )
            .map_err(kerr)?;
        }
        self.mark("swiglu")?;
        swiglu::swiglu_fp8(
            s,
            &tv(&ffn.gu, [rows, two_i])?,
            &mut tm(&mut ffn.hq, [rows, i])?,
            &mut tm(&mut ffn.hs, [rows])?,
        )
        .map_err(kerr)?;
        self.mark("experts_down")?;
        {
            let g = GroupedGemm {
                a: &tv(&ffn.hq, [rows, i])?,
                scale_a: &tv(&ffn.hs, [rows])?,
                b: &tv(dq, [e, h, i])?,
                scale_b: &tv(ds, [e, h])?,
                offsets: &offsets,
                counts: None,
            };
            let mut bad = TensorMut::new(st.counters.slice_mut(BAD_OFFSETS..BAD_OFFSETS + 1), [1]).map_err(kerr)?;
            grouped_gemm::grouped_gemm_fp8(
                s,
                &g,
                &mut tm(&mut ffn.eo, [rows, h])?,
                &mut tm(&mut st.lin.gemm_ws, [ws_len])?,
                Some(&mut bad),
                Schedule::Auto,
            )
            .map_err(kerr)?;
        }
        // F = bf16(sum of the chosen experts' outputs + shared), one rounding; with the norm, straight into
        // X += F, Y = rmsnorm(X) * w.
        if overlap {
            // In a timeline, the time the routed path waits for the shared expert.
            self.mark("shared_expert_wait")?;
            s.wait(&self.join).map_err(derr)?;
        }
        let (eo, dest, shared) = (tv(&ffn.eo, [rows, h])?, tv(&ffn.dest, [t, k])?, tv(&ffn.shared, [t, h])?);
        match norm {
            None => {
                self.mark("unpermute")?;
                permute::unpermute(s, &eo, &dest, None, Some(&shared), &mut tm(f, [t, h])?).map_err(kerr)
            }
            Some((nw, eps)) => {
                self.mark("unpermute_norm")?;
                let nw = tv(nw.bf16("norm")?, [h])?;
                let (mut x, mut y) = (tm(x, [t, h])?, tm(y, [t, h])?);
                let mut copy = y_copy_mut(&mut st.y_fp8, t, h)?;
                let fp8 = copy.as_mut().map(|(q, qs)| Fp8Copy { q, scales: qs });
                permute::unpermute_add_rmsnorm(s, &eo, &dest, None, Some(&shared), &mut x, &nw, eps, &mut y, fp8)
                    .map_err(kerr)
            }
        }
    }
}

/// `out = down(silu(gate(y)) * up(y))` with gate|up stacked: the shared expert and the dense MLP. `scratch`: the
/// gate|up and SwiGLU outputs; `input`: y, with its FP8 copy where an FP8 gate_up may read it.
#[allow(clippy::too_many_arguments)]
fn dense_ffn(
    gpu: &Gpu,
    s: &CudaStream,
    lin: &mut LinScratch,
    (gu, hbuf): (&mut CudaSlice<bf16>, &mut CudaSlice<bf16>),
    (y, y_fp8): (&CudaSlice<bf16>, Option<Fp8Rows<'_>>),
    t: usize,
    gate_up: &GpuWeight,
    down: &GpuWeight,
    out: &mut CudaSlice<bf16>,
    off: &Tensor<i32, 1>,
    bound: Option<u32>,
) -> Result<()> {
    let (two_i, n) = (gate_up.shape()[0], down.shape()[0]);
    let i = two_i / 2;
    let schedule = match (bound, gate_up) {
        (Some(ctas), GpuWeight::Bf16 { .. }) if gemv_is_faster(t, two_i) => LinearSchedule::GemvBounded { ctas },
        _ => LinearSchedule::Auto,
    };
    gpu.lin(s, lin, y, y_fp8, t, gate_up, gu, off, "gate_up", schedule)?;
    let g = tv(gu, [t, two_i])?;
    match down {
        // An FP8 down projection takes h quantized: SwiGLU and the quantization are one kernel.
        GpuWeight::Fp8 { .. } => {
            swiglu::swiglu_fp8(s, &g, &mut tm(&mut lin.xq, [t, i])?, &mut tm(&mut lin.xs, [t])?).map_err(kerr)?;
            gpu.lin_quantized(s, lin, t, down, &mut tm(out, [t, n])?, off)
        }
        GpuWeight::Bf16 { .. } => {
            swiglu::swiglu(s, &g, &mut tm(hbuf, [t, i])?).map_err(kerr)?;
            gpu.lin(s, lin, hbuf, None, t, down, out, off, "down", LinearSchedule::Auto)
        }
    }
}
