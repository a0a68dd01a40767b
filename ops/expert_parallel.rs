//! Expert parallelism: the routed experts sharded over the ranks of an NCCL communicator, each (token, choice) row
//! sent to the rank owning its expert and its output sent back. Kernels: kernels/expert_parallel.cu (design and
//! byte counts in kernels/NOTES.md, "Expert parallelism over NCCL"). Reference:
//! llama4_reference::expert_parallel (N ranks simulated in one process).
//!
//! A world of N ranks, E experts; rank d owns the L = E / N local experts `d * L .. d * L + L`. Every rank routes
//! its own tokens over all E experts ([`crate::router`]) and makes their FP8 rows ([`crate::permute::permute_fp8`]
//! with the routing weights, Llama 4's input scaling, or [`crate::quant`]). Then:
//! - [`dispatch`]: every row (FP8 + its f32 scale) goes to its expert's rank, and the rows a rank receives land in
//!   the grouped GEMM's layout over its L local experts ([`Grouped`]: counts and padded offsets on the device,
//!   rows ordered by local expert, then source rank, then the source's (token, choice) order).
//! - the experts run there ([`crate::grouped_gemm`], with `counts`);
//! - [`combine`]: every output row (bf16) goes back to its token's rank, where
//!   `out[t] = bf16(sum_c (w[t, c] *)? y(t, c) (+ shared[t]))` exactly as [`crate::permute::unpermute`] sums it.
//!
//! No count reaches the host: each rank sends every rank (itself included) one slab of [`Config::capacity`] rows
//! plus a header of L counts, in one NCCL group of send/recv pairs, so dispatch and combine can be captured in a
//! CUDA graph. More pairs for one destination than the capacity is an error, never a silent drop: they are not
//! sent, and [`Handle::status`] reports it (with the capacity that would have sufficed). The default capacity,
//! `max_tokens * k`, cannot overflow.
//!
//! The [`Handle`] owns the workspace (the slabs, the status, where every row came from) between a dispatch and its
//! combine. The steps ([`dispatch_pack`], [`exchange`], [`dispatch_unpack`], [`combine_pack`], [`combine_add`])
//! are public so that another transport can replace NCCL's: [`exchange_simulated`] runs N ranks' handles on one
//! GPU with device copies (tests, benches). [`Transport::Local`] is world size 1 without NCCL.
//!
//! NCCL is loaded at run time through cudarc (`libnccl.so`; PyTorch's nvidia-nccl wheel ships `libnccl.so.2`:
//! scripts/gpu-run.sh links it under the name cudarc looks for).

use crate::abi::c_struct;
use crate::error::{ensure, Error, Result};
use crate::ffi::{self, check_ptr, launched, ExpertParallelParams, UnpermuteParams};
use crate::router::{MAX_EXPERTS, MAX_TOP_K};
use crate::tensor::{bf16, same_device, Tensor, TensorMut, E4M3};
use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use cudarc::nccl::Comm;
use std::ffi::c_void;
use std::ops::Range;
use std::ptr;
use std::sync::Arc;

const OP: &str = "expert_parallel";
/// Ranks a world may have.
pub const MAX_RANKS: usize = ffi::EP_MAX_RANKS;
/// Largest padding multiple of the grouped layout (as [`crate::permute::MAX_ALIGN`]).
pub const MAX_ALIGN: usize = crate::permute::MAX_ALIGN;
/// Regions of the workspace start on this boundary.
const REGION_ALIGN: usize = 256;

pub use ffi::{EP_BAD_EXPERT, EP_BAD_HEADER, EP_BAD_ROUTING, EP_BAD_ROW, EP_OVERFLOW};
/// `rows_by` of `l4k_ep_dispatch`: pair (t, c) is row dest[t, c] ([`RowsBy::Permuted`]).
pub const ROWS_PERMUTED: i32 = ffi::EP_ROWS_PERMUTED;
/// `rows_by` of `l4k_ep_dispatch`: pair (t, c) is row t ([`RowsBy::Tokens`]).
pub const ROWS_TOKENS: i32 = ffi::EP_ROWS_TOKENS;

c_struct! {
    /// `l4k_ep_config`: the C ABI's [`Config`].
    pub struct EpConfig as "l4k_ep_config" {
        pub world_size: i32,
        pub rank: i32,
        pub experts: i32,
        pub k: i32,
        pub hidden: i64,
        pub max_tokens: i64,
        pub capacity: i64,
        pub align: i32,
        pub _pad: i32,
    }
}

/// One rank's view of the world. Every rank must use the same values but `rank`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// N, 1 ..= [`MAX_RANKS`]: the communicator's size.
    pub world_size: usize,
    /// This rank, the communicator's.
    pub rank: usize,
    /// E, 1 ..= [`MAX_EXPERTS`], a multiple of N.
    pub experts: usize,
    /// Choices per token, 1 ..= [`MAX_TOP_K`].
    pub k: usize,
    /// Row width in elements.
    pub hidden: usize,
    /// Tokens per call at most (on every rank).
    pub max_tokens: usize,
    /// Rows one rank may send another per call, 1 ..= max_tokens * k.
    pub capacity: usize,
    /// Each local expert's rows padded to a multiple of this in the grouped layout, 1 ..= [`MAX_ALIGN`].
    pub align: usize,
}

impl Config {
    /// The worst-case capacity (`max_tokens * k`: no routing overflows) and no padding.
    pub fn new(world_size: usize, rank: usize, experts: usize, k: usize, hidden: usize, max_tokens: usize) -> Config {
        let capacity = max_tokens.saturating_mul(k).max(1);
        Config { world_size, rank, experts, k, hidden, max_tokens, capacity, align: 1 }
    }

    pub fn with_capacity(self, capacity: usize) -> Config {
        Config { capacity, ..self }
    }

    pub fn with_align(self, align: usize) -> Config {
        Config { align, ..self }
    }

    pub fn with_rank(self, rank: usize) -> Config {
        Config { rank, ..self }
    }

    /// L = E / N.
    pub fn local_experts(&self) -> usize {
        self.experts / self.world_size.max(1)
    }

    /// The C ABI's struct, read with the same checks.
    pub fn from_c(c: &EpConfig) -> Result<Config> {
        let n = |v: i64, what: &str| {
            usize::try_from(v).map_err(|_| Error::InvalidArgument(format!("{OP}: {what} = {v} is negative")))
        };
        ensure!(c._pad == 0, "{OP}: config._pad must be 0 (got {})", c._pad);
        let config = Config {
            world_size: n(c.world_size as i64, "world_size")?,
            rank: n(c.rank as i64, "rank")?,
            experts: n(c.experts as i64, "experts")?,
            k: n(c.k as i64, "k")?,
            hidden: n(c.hidden, "hidden")?,
            max_tokens: n(c.max_tokens, "max_tokens")?,
            capacity: n(c.capacity, "capacity")?,
            align: n(c.align as i64, "align")?,
        };
        config.layout()?;
        Ok(config)
    }

    /// Where everything lives in the workspace; every limit checked.
    pub fn layout(&self) -> Result<Layout> {
        let c = self;
        ensure!((1..=MAX_RANKS).contains(&c.world_size), "{OP}: world_size = {} outside 1..={MAX_RANKS}", c.world_size);
        ensure!(c.rank < c.world_size, "{OP}: rank {} in a world of {}", c.rank, c.world_size);
        if c.experts > MAX_EXPERTS {
            return Err(Error::Unsupported(format!(
                "{OP}: {} experts; at most {MAX_EXPERTS} are supported",
                c.experts
            )));
        }
        ensure!(
            c.experts >= 1 && c.experts % c.world_size == 0,
            "{OP}: {} experts cannot be split evenly over {} ranks",
            c.experts,
            c.world_size
        );
        ensure!((1..=MAX_TOP_K).contains(&c.k), "{OP}: k = {} outside 1..={MAX_TOP_K}", c.k);
        ensure!(c.k <= c.experts, "{OP}: k = {} > {} experts", c.k, c.experts);
        ensure!(c.hidden >= 1, "{OP}: hidden must be positive");
        ensure!((1..=MAX_ALIGN).contains(&c.align), "{OP}: align = {} outside 1..={MAX_ALIGN}", c.align);
        let pairs = c.max_tokens.checked_mul(c.k).filter(|&p| p <= i32::MAX as usize);
        let pairs = pairs.ok_or_else(|| Error::InvalidArgument(format!("{OP}: max_tokens x k over int32")))?;
        ensure!(
            c.capacity >= 1 && c.capacity <= pairs.max(1),
            "{OP}: capacity = {} outside 1..={} (max_tokens x k, which no routing can overflow)",
            c.capacity,
            pairs.max(1)
        );
        let l = c.local_experts();
        let big = || Error::InvalidArgument(format!("{OP}: sizes overflow for {c:?}"));
        let mul = |a: usize, b: usize| a.checked_mul(b).ok_or_else(big);
        let slots = mul(c.world_size, c.capacity)?;
        let grouped_rows = mul(l, c.align - 1)?.checked_add(slots).ok_or_else(big)?;
        ensure!(grouped_rows <= i32::MAX as usize, "{OP}: {grouped_rows} grouped rows over int32");
        let rows_off = (4 * l).next_multiple_of(16);
        let scales_off = mul(c.capacity, c.hidden)?.checked_add(rows_off).ok_or_else(big)?.next_multiple_of(16);
        let slab_bytes = (scales_off + 4 * c.capacity).next_multiple_of(REGION_ALIGN);
        let combine_bytes = mul(mul(slots, c.hidden)?, 2)?;
        let mut at = 0usize;
        let mut region = |bytes: usize| -> Result<Range<usize>> {
            let start = at;
            at = start.checked_add(bytes).ok_or_else(big)?.next_multiple_of(REGION_ALIGN);
            Ok(start..start + bytes)
        };
        let status = region(16)?;
        let slot = region(4 * pairs)?;
        let send = region(mul(c.world_size, slab_bytes)?)?;
        let recv = region(mul(c.world_size, slab_bytes)?)?;
        let row_of_slot = region(mul(4, slots)?)?;
        let table = region(4 * (c.world_size * (l + 1) + c.world_size * l))?;
        let combine_send = region(combine_bytes)?;
        let combine_recv = region(combine_bytes)?;
        Ok(Layout {
            local_experts: l,
            grouped_rows,
            slab_bytes,
            rows_off,
            scales_off,
            combine_slab_bytes: c.capacity * c.hidden * 2,
            status,
            slot,
            send,
            recv,
            row_of_slot,
            table,
            combine_send,
            combine_recv,
            bytes: at,
        })
    }
}

/// The workspace plan of a [`Config`] (byte ranges of the workspace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub local_experts: usize,
    /// Rows the grouped layout needs: N * capacity + L * (align - 1).
    pub grouped_rows: usize,
    /// One dispatch slab: header (L int32, padded to `rows_off`), capacity FP8 rows, their scales.
    pub slab_bytes: usize,
    pub rows_off: usize,
    pub scales_off: usize,
    /// One combine slab: capacity bf16 rows.
    pub combine_slab_bytes: usize,
    pub status: Range<usize>,
    pub slot: Range<usize>,
    pub send: Range<usize>,
    pub recv: Range<usize>,
    pub row_of_slot: Range<usize>,
    pub table: Range<usize>,
    pub combine_send: Range<usize>,
    pub combine_recv: Range<usize>,
    /// The workspace's size.
    pub bytes: usize,
}

/// Workspace bytes of a [`Handle`] (and of the C ABI's calls) for `config`.
pub fn workspace_size(config: &Config) -> Result<usize> {
    Ok(config.layout()?.bytes)
}

/// Which exchange: the FP8 rows out (dispatch) or the bf16 outputs back (combine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Dispatch,
    Combine,
}

/// How slabs travel.
pub enum Transport<'c> {
    /// ncclSend / ncclRecv to every rank (itself included) in one group, on the communicator's stream (which must be
    /// the op's stream: cudarc's `Comm` enqueues on its own).
    Nccl(&'c Comm),
    /// World size 1 without NCCL: the slab is copied on the device.
    Local,
}

/// What the device reported, from [`Handle::status`] (sticky until cleared).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpStatus {
    /// `EP_*` bits.
    pub flags: u32,
    /// Pairs not sent (bad expert id, bad routing, over capacity).
    pub dropped: u32,
    /// The most pairs one destination was sent in one call: the capacity that would have sufficed.
    pub max_demand: u32,
    /// Rows a receiver ignored (inconsistent header).
    pub ignored: u32,
}

impl EpStatus {
    /// `Ok` when nothing went wrong, else an error naming every flag.
    pub fn check(&self) -> Result<()> {
        if self.flags == 0 && self.dropped == 0 && self.ignored == 0 {
            return Ok(());
        }
        let names = [
            (EP_BAD_EXPERT, "an expert id outside [0, experts)"),
            (EP_BAD_ROUTING, "a dest outside its expert's block, a row past the rows given, or a negative count"),
            (EP_OVERFLOW, "more pairs for one destination than the capacity"),
            (EP_BAD_HEADER, "a received header with a negative count or more rows than the capacity"),
            (EP_BAD_ROW, "an internal row index out of range"),
        ];
        let why: Vec<&str> = names.iter().filter(|(b, _)| self.flags & b != 0).map(|(_, n)| *n).collect();
        Err(Error::InvalidArgument(format!(
            "{OP}: {} pairs not sent, {} rows ignored ({}); the largest demand of one destination was {}",
            self.dropped,
            self.ignored,
            why.join("; "),
            self.max_demand
        )))
    }
}

/// Where a handle is between a dispatch and its combine: each step checks that the steps it needs ran (pack ->
/// exchange -> unpack -> combine pack -> exchange -> add), so a combine cannot read slabs no dispatch wrote. A step
/// may be repeated on the same received data (unpack, combine pack, add), which the benches do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Idle,
    Packed,
    Received,
    Unpacked,
    CombinePacked,
    CombineReceived,
}

/// One rank's state between a dispatch and its combine: the config, its workspace, and the dispatch's tokens.
pub struct Handle {
    config: Config,
    layout: Layout,
    workspace: CudaSlice<u8>,
    stage: Stage,
    tokens: usize,
    grouped_rows: usize,
}

impl Handle {
    /// Allocates a zeroed workspace on `stream` (once: the ops themselves never allocate).
    pub fn new(stream: &Arc<CudaStream>, config: Config) -> Result<Handle> {
        let layout = config.layout()?;
        let workspace = stream.alloc_zeros::<u8>(layout.bytes)?;
        Ok(Handle { config, layout, workspace, stage: Stage::Idle, tokens: 0, grouped_rows: 0 })
    }

    /// Takes a caller's buffer (at least [`workspace_size`] bytes, any contents) as the workspace; its status is
    /// zeroed on `stream`.
    pub fn from_workspace(stream: &Arc<CudaStream>, config: Config, mut workspace: CudaSlice<u8>) -> Result<Handle> {
        let layout = config.layout()?;
        ensure!(
            workspace.len() >= layout.bytes,
            "{OP}: workspace of {} bytes; {config:?} needs {}",
            workspace.len(),
            layout.bytes
        );
        stream.memset_zeros(&mut workspace.slice_mut(layout.status.clone()))?;
        Ok(Handle { config, layout, workspace, stage: Stage::Idle, tokens: 0, grouped_rows: 0 })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn into_workspace(self) -> CudaSlice<u8> {
        self.workspace
    }

    /// Waits for `stream` and reads the status (`clear`: then zeroes it). Synchronizes: not inside a graph.
    pub fn status(&mut self, stream: &Arc<CudaStream>, clear: bool) -> Result<EpStatus> {
        let words = stream.clone_dtoh(&self.workspace.slice(self.layout.status.clone()))?;
        if clear {
            stream.memset_zeros(&mut self.workspace.slice_mut(self.layout.status.clone()))?;
            stream.synchronize()?;
        }
        let w = |i: usize| u32::from_ne_bytes(words[4 * i..4 * i + 4].try_into().unwrap());
        Ok(EpStatus { flags: w(0), dropped: w(1), max_demand: w(2), ignored: w(3) })
    }

    fn expect(&self, want: &[Stage], what: &str) -> Result<()> {
        ensure!(want.contains(&self.stage), "{OP}: {what} after {:?} (want {want:?})", self.stage);
        Ok(())
    }

    /// The kernels' parameters over the workspace bound for `stream`, and its address.
    fn params<'s>(&'s mut self, stream: &'s CudaStream) -> (ExpertParallelParams, u64, cudarc::driver::SyncOnDrop<'s>) {
        let (base, guard) = self.workspace.device_ptr_mut(stream);
        (bind(&self.config, &self.layout, base), base, guard)
    }
}

/// The kernels' parameters with every workspace region bound at `base`; the per-call operands left null.
fn bind(c: &Config, l: &Layout, base: u64) -> ExpertParallelParams {
    let at = |r: &Range<usize>| (base + r.start as u64) as *mut c_void;
    ExpertParallelParams {
        ids: ptr::null(),
        counts: ptr::null(),
        offsets: ptr::null(),
        dest: ptr::null(),
        rows: ptr::null(),
        row_scales: ptr::null(),
        grouped: ptr::null_mut(),
        grouped_scales: ptr::null_mut(),
        grouped_counts: ptr::null_mut(),
        grouped_offsets: ptr::null_mut(),
        expert_out: ptr::null(),
        status: at(&l.status) as _,
        slot: at(&l.slot) as _,
        send: at(&l.send),
        recv: at(&l.recv),
        row_of_slot: at(&l.row_of_slot) as _,
        table: at(&l.table) as _,
        tokens: 0,
        hidden: c.hidden as i64,
        rows_in: 0,
        grouped_rows: l.grouped_rows as i64,
        capacity: c.capacity as i64,
        slab_bytes: l.slab_bytes as i64,
        rows_off: l.rows_off as i64,
        scales_off: l.scales_off as i64,
        world_size: c.world_size as i32,
        rank: c.rank as i32,
        experts: c.experts as i32,
        k: c.k as i32,
        align: c.align as i32,
        rows_by: ffi::EP_ROWS_PERMUTED,
    }
}

/// The router's outputs for this rank's tokens (any align).
pub struct Routing<'t, 'a> {
    /// [T, k] expert ids.
    pub ids: &'t Tensor<'a, i32, 2>,
    /// [E] pairs per expert.
    pub counts: &'t Tensor<'a, i32, 1>,
    /// [E + 1] row starts.
    pub offsets: &'t Tensor<'a, i32, 1>,
    /// [T, k] row of each pair in the router's expert-sorted layout.
    pub dest: &'t Tensor<'a, i32, 2>,
}

/// Which FP8 row holds pair (t, c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowsBy {
    /// Row `dest[t, c]`: the output of [`crate::permute::permute_fp8`] over the same routing (Llama 4: scaled by the
    /// routing weight, one row per pair).
    Permuted,
    /// Row `t`: the token's own row ([`crate::quant`] of x), shared by its k choices.
    Tokens,
}

/// This rank's FP8 rows: `q` [rows, H], `scales` [rows].
pub struct Rows<'t, 'a> {
    pub q: &'t Tensor<'a, E4M3, 2>,
    pub scales: &'t Tensor<'a, f32, 1>,
    pub by: RowsBy,
}

/// The grouped layout of the rows this rank receives: `q` [rows, H] and `scales` [rows] with rows >=
/// [`Layout::grouped_rows`], `counts` [L], `offsets` [L + 1] (the grouped GEMM's `counts` and `offsets`).
pub struct Grouped<'o, 'a> {
    pub q: &'o mut TensorMut<'a, E4M3, 2>,
    pub scales: &'o mut TensorMut<'a, f32, 1>,
    pub counts: &'o mut TensorMut<'a, i32, 1>,
    pub offsets: &'o mut TensorMut<'a, i32, 1>,
}

/// Sends this rank's rows to their experts' ranks and lands what it receives in `out`: [`dispatch_pack`],
/// [`exchange`], [`dispatch_unpack`]. No host synchronization.
pub fn dispatch(
    transport: &Transport,
    stream: &Arc<CudaStream>,
    handle: &mut Handle,
    routing: &Routing,
    rows: &Rows,
    out: &mut Grouped,
) -> Result<()> {
    check_grouped(handle, out)?;
    dispatch_pack(stream, handle, routing, rows)?;
    exchange(transport, stream, handle, Phase::Dispatch)?;
    dispatch_unpack(stream, handle, out)
}

/// Sends the experts' outputs `expert_out` [grouped rows, H] (rows of the dispatch's [`Grouped`] layout) back
/// and writes `out` [T, H] = bf16(sum_c (`weight_by`[t, c] *)? y(t, c) (+ `shared`[t])): [`combine_pack`],
/// [`exchange`], [`combine_add`]. No host synchronization.
pub fn combine(
    transport: &Transport,
    stream: &Arc<CudaStream>,
    handle: &mut Handle,
    expert_out: &Tensor<bf16, 2>,
    weight_by: Option<&Tensor<f32, 2>>,
    shared: Option<&Tensor<bf16, 2>>,
    out: &mut TensorMut<bf16, 2>,
) -> Result<()> {
    check_combine_add(handle, weight_by, shared, out)?;
    combine_pack(stream, handle, expert_out)?;
    exchange(transport, stream, handle, Phase::Combine)?;
    combine_add(stream, handle, weight_by, shared, out)
}

/// Packs this rank's (token, choice) rows into the send slabs of their destination ranks.
pub fn dispatch_pack(stream: &Arc<CudaStream>, handle: &mut Handle, routing: &Routing, rows: &Rows) -> Result<()> {
    let c = handle.config;
    let [t, k] = routing.ids.shape();
    ensure!(k == c.k, "{OP}: ids {:?}: k = {k}, the config has {}", routing.ids.shape(), c.k);
    ensure!(t <= c.max_tokens, "{OP}: {t} tokens, the config holds at most {}", c.max_tokens);
    ensure!(routing.dest.shape() == [t, k], "{OP}: dest {:?}, want [{t}, {k}]", routing.dest.shape());
    ensure!(
        routing.counts.shape() == [c.experts],
        "{OP}: counts {:?} for {} experts",
        routing.counts.shape(),
        c.experts
    );
    ensure!(
        routing.offsets.shape() == [c.experts + 1],
        "{OP}: offsets {:?} for {} experts",
        routing.offsets.shape(),
        c.experts
    );
    let [rows_in, h] = rows.q.shape();
    ensure!(h == c.hidden, "{OP}: rows have {h} columns, the config {}", c.hidden);
    ensure!(rows.scales.shape() == [rows_in], "{OP}: scales {:?} for {rows_in} rows", rows.scales.shape());
    if rows.by == RowsBy::Tokens {
        ensure!(rows_in >= t, "{OP}: {rows_in} token rows for {t} tokens");
    }
    same_device(
        stream,
        &[
            routing.ids.stream(),
            routing.counts.stream(),
            routing.offsets.stream(),
            routing.dest.stream(),
            rows.q.stream(),
            rows.scales.stream(),
        ],
    )?;
    let (pi, _gi) = routing.ids.ptr(stream);
    let (pc, _gc) = routing.counts.ptr(stream);
    let (po, _go) = routing.offsets.ptr(stream);
    let (pd, _gd) = routing.dest.ptr(stream);
    let (pq, _gq) = rows.q.ptr(stream);
    let (ps, _gs) = rows.scales.ptr(stream);
    {
        let (mut p, _, _gw) = handle.params(stream);
        (p.ids, p.counts, p.offsets, p.dest, p.rows, p.row_scales) =
            (pi as _, pc as _, po as _, pd as _, pq as _, ps as _);
        p.tokens = t as i64;
        p.rows_in = rows_in as i64;
        p.rows_by = match rows.by {
            RowsBy::Permuted => ffi::EP_ROWS_PERMUTED,
            RowsBy::Tokens => ffi::EP_ROWS_TOKENS,
        };
        launch_pack(&p, stream.cu_stream())?;
    }
    handle.stage = Stage::Packed;
    handle.tokens = t;
    Ok(())
}

/// Every slab to its rank, every rank's slab for this one received (one group of send/recv pairs).
pub fn exchange(transport: &Transport, stream: &Arc<CudaStream>, handle: &mut Handle, phase: Phase) -> Result<()> {
    let (want, next) = match phase {
        Phase::Dispatch => (Stage::Packed, Stage::Received),
        Phase::Combine => (Stage::CombinePacked, Stage::CombineReceived),
    };
    handle.expect(&[want], &format!("the {phase:?} exchange"))?;
    let (send, recv, slab) = regions(&handle.layout, phase);
    let n = handle.config.world_size;
    match transport {
        Transport::Local => {
            ensure!(n == 1, "{OP}: the local transport is for world size 1 (this world has {n})");
            same_device(stream, &[handle.workspace.stream()])?;
            let (base, _g) = handle.workspace.device_ptr_mut(stream);
            // SAFETY: both ranges lie in the workspace (Layout) and do not overlap.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    base + recv.start as u64,
                    base + send.start as u64,
                    slab,
                    stream.cu_stream(),
                )
            }?;
        }
        Transport::Nccl(comm) => {
            check_comm(comm.world_size(), comm.rank(), &handle.config)?;
            ensure!(
                comm.stream().cu_stream() == stream.cu_stream(),
                "{OP}: the op's stream is not the communicator's (cudarc's Comm enqueues NCCL on its own stream)"
            );
            same_device(stream, &[handle.workspace.stream()])?;
            nccl_group(|| {
                for p in 0..n {
                    let s = send.start + p * slab..send.start + (p + 1) * slab;
                    let r = recv.start + p * slab..recv.start + (p + 1) * slab;
                    comm.send(&handle.workspace.slice(s), p as i32).map_err(|e| nccl("ncclSend", e))?;
                    comm.recv(&mut handle.workspace.slice_mut(r), p as i32).map_err(|e| nccl("ncclRecv", e))?;
                }
                Ok(())
            })?;
        }
    }
    handle.stage = next;
    Ok(())
}

/// The send and receive regions of a phase, and one rank's slab bytes.
fn regions(l: &Layout, phase: Phase) -> (Range<usize>, Range<usize>, usize) {
    match phase {
        Phase::Dispatch => (l.send.clone(), l.recv.clone(), l.slab_bytes),
        Phase::Combine => (l.combine_send.clone(), l.combine_recv.clone(), l.combine_slab_bytes),
    }
}

fn check_comm(world: usize, rank: usize, c: &Config) -> Result<()> {
    ensure!(
        world == c.world_size && rank == c.rank,
        "{OP}: the communicator is rank {rank} of {world}, the config rank {} of {}",
        c.rank,
        c.world_size
    );
    Ok(())
}

fn nccl(what: &str, e: cudarc::nccl::result::NcclError) -> Error {
    // SAFETY: ncclGetErrorString returns a static string for any code.
    let msg = unsafe { std::ffi::CStr::from_ptr(cudarc::nccl::sys::ncclGetErrorString(e.0)) };
    Error::Cuda(format!("{OP}: {what} failed: {:?} ({})", e.0, msg.to_string_lossy()))
}

/// Runs `body` (sends and receives) between ncclGroupStart and ncclGroupEnd; the group is always closed.
fn nccl_group(body: impl FnOnce() -> Result<()>) -> Result<()> {
    cudarc::nccl::result::group_start().map_err(|e| nccl("ncclGroupStart", e))?;
    let r = body();
    let end = cudarc::nccl::result::group_end().map_err(|e| nccl("ncclGroupEnd", e));
    r.and(end.map(|_| ()))
}

/// Whether libnccl can be loaded: cudarc panics on first use otherwise.
pub fn nccl_available() -> bool {
    // SAFETY: only tries to dlopen libnccl by the names cudarc knows.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

fn require_nccl() -> Result<()> {
    if nccl_available() {
        return Ok(());
    }
    Err(Error::NoDevice(format!(
        "{OP}: libnccl.so could not be loaded (LD_LIBRARY_PATH = {:?}); PyTorch's nvidia-nccl wheel ships \
         libnccl.so.2: link it as libnccl.so in a directory on LD_LIBRARY_PATH (scripts/gpu-run.sh does)",
        std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
    )))
}

fn check_grouped(handle: &Handle, out: &Grouped) -> Result<()> {
    let (c, l) = (&handle.config, &handle.layout);
    let [rows, h] = out.q.shape();
    ensure!(h == c.hidden, "{OP}: grouped rows have {h} columns, the config {}", c.hidden);
    ensure!(rows >= l.grouped_rows, "{OP}: grouped has {rows} rows; {} needed (Layout::grouped_rows)", l.grouped_rows);
    ensure!(out.scales.shape() == [rows], "{OP}: grouped scales {:?} for {rows} rows", out.scales.shape());
    let le = l.local_experts;
    ensure!(out.counts.shape() == [le], "{OP}: grouped counts {:?} for {le} local experts", out.counts.shape());
    ensure!(out.offsets.shape() == [le + 1], "{OP}: grouped offsets {:?} for {le} local experts", out.offsets.shape());
    Ok(())
}

/// Lands the received slabs in the grouped layout `out`.
pub fn dispatch_unpack(stream: &Arc<CudaStream>, handle: &mut Handle, out: &mut Grouped) -> Result<()> {
    // The received slabs stay until the next dispatch exchange: unpacking them again is allowed.
    handle
        .expect(&[Stage::Received, Stage::Unpacked, Stage::CombinePacked, Stage::CombineReceived], "dispatch_unpack")?;
    check_grouped(handle, out)?;
    same_device(stream, &[out.q.stream(), out.scales.stream(), out.counts.stream(), out.offsets.stream()])?;
    let rows = out.q.shape()[0];
    let (pq, _gq) = out.q.ptr_mut(stream);
    let (ps, _gs) = out.scales.ptr_mut(stream);
    let (pc, _gc) = out.counts.ptr_mut(stream);
    let (po, _go) = out.offsets.ptr_mut(stream);
    {
        let (mut p, _, _gw) = handle.params(stream);
        (p.grouped, p.grouped_scales, p.grouped_counts, p.grouped_offsets) = (pq as _, ps as _, pc as _, po as _);
        p.grouped_rows = rows as i64;
        launch_unpack(&p, stream.cu_stream())?;
    }
    handle.stage = Stage::Unpacked;
    handle.grouped_rows = rows;
    Ok(())
}

/// Packs the expert outputs `expert_out` [grouped rows, H] bf16 into the combine slabs of their source ranks.
pub fn combine_pack(stream: &Arc<CudaStream>, handle: &mut Handle, expert_out: &Tensor<bf16, 2>) -> Result<()> {
    handle.expect(&[Stage::Unpacked, Stage::CombinePacked, Stage::CombineReceived], "combine_pack")?;
    let [rows, h] = expert_out.shape();
    ensure!(h == handle.config.hidden, "{OP}: expert_out has {h} columns, the config {}", handle.config.hidden);
    ensure!(
        rows == handle.grouped_rows,
        "{OP}: expert_out has {rows} rows, the dispatch's grouped layout {}",
        handle.grouped_rows
    );
    same_device(stream, &[expert_out.stream()])?;
    let (py, _gy) = expert_out.ptr(stream);
    {
        let combine_send = handle.layout.combine_send.start as u64;
        let (mut p, base, _gw) = handle.params(stream);
        p.send = (base + combine_send) as *mut c_void;
        p.expert_out = py as _;
        p.grouped_rows = rows as i64;
        launch_combine_pack(&p, stream.cu_stream())?;
    }
    handle.stage = Stage::CombinePacked;
    Ok(())
}

fn check_combine_add(
    handle: &Handle,
    weight_by: Option<&Tensor<f32, 2>>,
    shared: Option<&Tensor<bf16, 2>>,
    out: &TensorMut<bf16, 2>,
) -> Result<()> {
    let (t, k, h) = (handle.tokens, handle.config.k, handle.config.hidden);
    ensure!(out.shape() == [t, h], "{OP}: out {:?}, want [{t}, {h}] (the dispatch's tokens)", out.shape());
    if let Some(w) = weight_by {
        ensure!(w.shape() == [t, k], "{OP}: weights {:?}, want [{t}, {k}]", w.shape());
    }
    if let Some(s) = shared {
        ensure!(s.shape() == [t, h], "{OP}: shared {:?}, want [{t}, {h}]", s.shape());
    }
    Ok(())
}

/// Adds the returned rows into their tokens: `out` [T, H] as [`crate::permute::unpermute`] computes it, over the
/// received combine slabs with the dispatch's slots as destinations.
pub fn combine_add(
    stream: &Arc<CudaStream>,
    handle: &mut Handle,
    weight_by: Option<&Tensor<f32, 2>>,
    shared: Option<&Tensor<bf16, 2>>,
    out: &mut TensorMut<bf16, 2>,
) -> Result<()> {
    handle.expect(&[Stage::CombineReceived], "combine_add")?;
    check_combine_add(handle, weight_by, shared, out)?;
    let mut streams = vec![out.stream()];
    streams.extend(weight_by.map(|w| w.stream()));
    streams.extend(shared.map(|s| s.stream()));
    same_device(stream, &streams)?;
    let w = weight_by.map(|w| w.ptr(stream));
    let s = shared.map(|s| s.ptr(stream));
    let (po, _go) = out.ptr_mut(stream);
    {
        let (c, l, t) = (handle.config, handle.layout.clone(), handle.tokens);
        let (base, _gw) = handle.workspace.device_ptr_mut(stream);
        let p = unpermute_params(&c, &l, base, t, w.as_ref().map_or(ptr::null(), |w| w.0 as _));
        let p = UnpermuteParams { shared: s.as_ref().map_or(ptr::null(), |s| s.0 as _), out: po as _, ..p };
        launch_combine_add(&p, stream.cu_stream())?;
    }
    // The returned rows stay until the next combine exchange: adding them again is allowed.
    Ok(())
}

/// The final add as an unpermute: expert rows are the received combine slabs ([N * capacity, H]), destinations
/// the dispatch's slots. `shared` and `out` left null.
fn unpermute_params(c: &Config, l: &Layout, base: u64, tokens: usize, weights: *const f32) -> UnpermuteParams {
    UnpermuteParams {
        expert_out: (base + l.combine_recv.start as u64) as *const c_void,
        weights,
        dest: (base + l.slot.start as u64) as *const i32,
        shared: ptr::null(),
        out: ptr::null_mut(),
        tokens: tokens as i64,
        hidden: c.hidden as i64,
        rows: (c.world_size * c.capacity) as i64,
        k: c.k as i32,
        _pad: 0,
    }
}

/// The transport replaced by device copies: `handles[s]`'s slab for rank p lands in `handles[p]`'s slab from s,
/// every handle on `stream`'s device (N ranks simulated on one GPU, for tests and benches).
pub fn exchange_simulated(stream: &Arc<CudaStream>, handles: &mut [Handle], phase: Phase) -> Result<()> {
    let n = handles.len();
    ensure!(n >= 1, "{OP}: no handles");
    for (i, h) in handles.iter().enumerate() {
        ensure!(
            h.config == handles[0].config.with_rank(i),
            "{OP}: handle {i} has {:?}, handle 0 {:?} (want the same config, rank {i})",
            h.config,
            handles[0].config
        );
        ensure!(h.config.world_size == n, "{OP}: {n} handles for a world of {}", h.config.world_size);
        let want = match phase {
            Phase::Dispatch => Stage::Packed,
            Phase::Combine => Stage::CombinePacked,
        };
        h.expect(&[want], &format!("the simulated {phase:?} exchange"))?;
        same_device(stream, &[h.workspace.stream()])?;
    }
    let (send, recv, slab) = regions(&handles[0].layout, phase);
    let bound: Vec<_> = handles.iter_mut().map(|h| h.workspace.device_ptr_mut(stream)).collect();
    for (s, (src, _)) in bound.iter().enumerate() {
        for (p, (dst, _)) in bound.iter().enumerate() {
            // SAFETY: the ranges lie inside each workspace (same layout); distinct regions never overlap.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    dst + (recv.start + s * slab) as u64,
                    src + (send.start + p * slab) as u64,
                    slab,
                    stream.cu_stream(),
                )
            }?;
        }
    }
    drop(bound);
    for h in handles.iter_mut() {
        h.stage = match phase {
            Phase::Dispatch => Stage::Received,
            Phase::Combine => Stage::CombineReceived,
        };
    }
    Ok(())
}

/// The pack's operands (shared with the C ABI); the workspace regions were bound from a validated config.
pub(crate) fn launch_pack(p: &ExpertParallelParams, stream: CUstream) -> Result<()> {
    ensure!(p.tokens >= 0 && p.rows_in >= 0, "{OP}: negative sizes (tokens {}, rows_in {})", p.tokens, p.rows_in);
    ensure!(
        p.rows_by == ffi::EP_ROWS_PERMUTED || p.rows_by == ffi::EP_ROWS_TOKENS,
        "{OP}: unknown rows_by {}",
        p.rows_by
    );
    if p.tokens > 0 {
        check_ptr(OP, "ids", p.ids as _, 4)?;
        check_ptr(OP, "counts", p.counts as _, 4)?;
        check_ptr(OP, "offsets", p.offsets as _, 4)?;
        check_ptr(OP, "dest", p.dest as _, 4)?;
        check_ptr(OP, "rows", p.rows, 1)?;
        check_ptr(OP, "row_scales", p.row_scales as _, 4)?;
    }
    // SAFETY: validated above and by the config's layout.
    launched(OP, unsafe { ffi::l4k_launch_ep_pack(p, stream) })
}

pub(crate) fn launch_unpack(p: &ExpertParallelParams, stream: CUstream) -> Result<()> {
    ensure!(p.grouped_rows >= 0 && p.grouped_rows <= i32::MAX as i64, "{OP}: grouped_rows = {}", p.grouped_rows);
    check_ptr(OP, "grouped", p.grouped, 1)?;
    check_ptr(OP, "grouped_scales", p.grouped_scales as _, 4)?;
    check_ptr(OP, "grouped_counts", p.grouped_counts as _, 4)?;
    check_ptr(OP, "grouped_offsets", p.grouped_offsets as _, 4)?;
    // SAFETY: validated above and by the config's layout.
    launched(OP, unsafe { ffi::l4k_launch_ep_unpack(p, stream) })
}

pub(crate) fn launch_combine_pack(p: &ExpertParallelParams, stream: CUstream) -> Result<()> {
    ensure!(p.grouped_rows >= 0 && p.grouped_rows <= i32::MAX as i64, "{OP}: grouped_rows = {}", p.grouped_rows);
    check_ptr(OP, "expert_out", p.expert_out, 2)?;
    // SAFETY: validated above and by the config's layout.
    launched(OP, unsafe { ffi::l4k_launch_ep_combine_pack(p, stream) })
}

fn launch_combine_add(p: &UnpermuteParams, stream: CUstream) -> Result<()> {
    crate::permute::launch_unpermute(p, stream)
}

// ---- the C ABI's bodies (ops/capi.rs exports them) -----------------------------------------------------------

/// A C caller's config and workspace: the layout, checked against the workspace's size and alignment.
fn c_workspace(config: *const EpConfig, workspace: *mut c_void, bytes: usize) -> Result<(Config, Layout, u64)> {
    // SAFETY: NULL or valid, per the C ABI's contract.
    let c = unsafe { config.as_ref() }.ok_or_else(|| Error::InvalidArgument(format!("{OP}: config is null")))?;
    let config = Config::from_c(c)?;
    let layout = config.layout()?;
    check_ptr(OP, "workspace", workspace, REGION_ALIGN)?;
    ensure!(bytes >= layout.bytes, "{OP}: workspace is {bytes} bytes; {} needed (l4k_ep_workspace_size)", layout.bytes);
    Ok((config, layout, workspace as u64))
}

pub(crate) fn c_sizes(config: *const EpConfig) -> Result<Layout> {
    // SAFETY: NULL or valid, per the C ABI's contract.
    let c = unsafe { config.as_ref() }.ok_or_else(|| Error::InvalidArgument(format!("{OP}: config is null")))?;
    Config::from_c(c)?.layout()
}

/// The exchange of the C ABI: NCCL over a raw communicator, or a device copy for world size 1 without one.
///
/// # Safety
/// `comm` is NULL or a live `ncclComm_t` of the current device; the workspace covers `layout`.
unsafe fn c_exchange(
    comm: *mut c_void,
    c: &Config,
    l: &Layout,
    base: u64,
    phase: Phase,
    stream: CUstream,
) -> Result<()> {
    let (send, recv, slab) = regions(l, phase);
    if comm.is_null() {
        ensure!(c.world_size == 1, "{OP}: comm is null in a world of {} ranks", c.world_size);
        // SAFETY: both ranges lie in the caller's workspace.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(base + recv.start as u64, base + send.start as u64, slab, stream)
        }?;
        return Ok(());
    }
    require_nccl()?;
    use cudarc::nccl::{result, sys};
    let comm = comm as sys::ncclComm_t;
    // SAFETY: a live communicator per the contract; host queries only.
    let (world, rank) = unsafe {
        (
            result::comm_count(comm).map_err(|e| nccl("ncclCommCount", e))?,
            result::comm_user_rank(comm).map_err(|e| nccl("ncclCommUserRank", e))?,
        )
    };
    check_comm(world as usize, rank as usize, c)?;
    nccl_group(|| {
        for p in 0..c.world_size {
            let s = base + (send.start + p * slab) as u64;
            let r = base + (recv.start + p * slab) as u64;
            let u8t = sys::ncclDataType_t::ncclUint8;
            // SAFETY: the slabs lie in the caller's workspace; comm and stream per the contract.
            unsafe {
                result::send(s as *const c_void, slab, u8t, p as i32, comm, stream as _)
                    .map_err(|e| nccl("ncclSend", e))?;
                result::recv(r as *mut c_void, slab, u8t, p as i32, comm, stream as _)
                    .map_err(|e| nccl("ncclRecv", e))?;
            }
        }
        Ok(())
    })
}

/// `l4k_ep_dispatch`'s body.
///
/// # Safety
/// As ops/capi.rs's contract: pointers cover the shapes the header gives; `comm` NULL or live.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn c_dispatch(
    comm: *mut c_void,
    config: *const EpConfig,
    tokens: i64,
    routing: [*const i32; 4],
    rows: *const c_void,
    row_scales: *const f32,
    rows_in: i64,
    rows_by: i32,
    grouped: (*mut c_void, *mut f32, *mut i32, *mut i32, i64),
    workspace: (*mut c_void, usize),
    stream: CUstream,
) -> Result<()> {
    let (c, l, base) = c_workspace(config, workspace.0, workspace.1)?;
    ensure!(tokens >= 0 && tokens as usize <= c.max_tokens, "{OP}: tokens = {tokens} outside 0..={}", c.max_tokens);
    ensure!(rows_in >= 0, "{OP}: rows_in = {rows_in} < 0");
    if rows_by == ffi::EP_ROWS_TOKENS {
        ensure!(rows_in >= tokens, "{OP}: {rows_in} token rows for {tokens} tokens");
    }
    ensure!(grouped.4 >= l.grouped_rows as i64, "{OP}: grouped_rows = {}; {} needed", grouped.4, l.grouped_rows);
    let mut p = bind(&c, &l, base);
    let [ids, counts, offsets, dest] = routing;
    (p.ids, p.counts, p.offsets, p.dest, p.rows, p.row_scales) = (ids, counts, offsets, dest, rows, row_scales);
    (p.tokens, p.rows_in, p.rows_by) = (tokens, rows_in, rows_by);
    (p.grouped, p.grouped_scales, p.grouped_counts, p.grouped_offsets, p.grouped_rows) = grouped;
    // Everything is checked before the first launch.
    ensure!(p.grouped_rows <= i32::MAX as i64, "{OP}: grouped_rows = {} over int32", p.grouped_rows);
    check_ptr(OP, "grouped", p.grouped, 1)?;
    check_ptr(OP, "grouped_scales", p.grouped_scales as _, 4)?;
    check_ptr(OP, "grouped_counts", p.grouped_counts as _, 4)?;
    check_ptr(OP, "grouped_offsets", p.grouped_offsets as _, 4)?;
    if comm.is_null() {
        ensure!(c.world_size == 1, "{OP}: comm is null in a world of {} ranks", c.world_size);
    }
    launch_pack(&p, stream)?;
    // SAFETY: the caller's promise, passed on.
    unsafe { c_exchange(comm, &c, &l, base, Phase::Dispatch, stream) }?;
    launch_unpack(&p, stream)
}

/// `l4k_ep_combine`'s body.
///
/// # Safety
/// As [`c_dispatch`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn c_combine(
    comm: *mut c_void,
    config: *const EpConfig,
    tokens: i64,
    expert_out: *const c_void,
    grouped_rows: i64,
    weights: *const f32,
    shared: *const c_void,
    out: *mut c_void,
    workspace: (*mut c_void, usize),
    stream: CUstream,
) -> Result<()> {
    let (c, l, base) = c_workspace(config, workspace.0, workspace.1)?;
    ensure!(tokens >= 0 && tokens as usize <= c.max_tokens, "{OP}: tokens = {tokens} outside 0..={}", c.max_tokens);
    ensure!(
        grouped_rows >= l.grouped_rows as i64 && grouped_rows <= i32::MAX as i64,
        "{OP}: grouped_rows = {grouped_rows}; {} needed",
        l.grouped_rows
    );
    let mut p = bind(&c, &l, base);
    p.send = (base + l.combine_send.start as u64) as *mut c_void;
    (p.expert_out, p.grouped_rows) = (expert_out, grouped_rows);
    let add = UnpermuteParams { shared, out, ..unpermute_params(&c, &l, base, tokens as usize, weights) };
    check_ptr(OP, "expert_out", expert_out, 2)?;
    if tokens > 0 {
        check_ptr(OP, "out", out, 2)?;
    }
    if comm.is_null() {
        ensure!(c.world_size == 1, "{OP}: comm is null in a world of {} ranks", c.world_size);
    }
    launch_combine_pack(&p, stream)?;
    // SAFETY: the caller's promise, passed on.
    unsafe { c_exchange(comm, &c, &l, base, Phase::Combine, stream) }?;
    launch_combine_add(&add, stream)
}

/// `l4k_ep_status`'s body: synchronizes `stream`, reads (and optionally clears) the status.
///
/// # Safety
/// `workspace` is a live workspace of the current device; `status` holds 4 writable u32.
pub(crate) unsafe fn c_status(workspace: *mut c_void, clear: i32, status: *mut u32, stream: CUstream) -> Result<()> {
    check_ptr(OP, "workspace", workspace, REGION_ALIGN)?;
    check_ptr(OP, "status", status as _, 4)?;
    let mut words = [0u32; 4];
    let base = workspace as u64;
    use cudarc::driver::result;
    // SAFETY: 16 bytes at the start of the workspace (the status region); `words` lives past the sync below.
    unsafe {
        result::memcpy_dtoh_async(&mut words[..], base, stream)?;
        if clear != 0 {
            result::memset_d8_async(base, 0, 16, stream)?;
        }
        result::stream::synchronize(stream)?;
        ptr::copy_nonoverlapping(words.as_ptr(), status, 4);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maverick(world: usize) -> Config {
        Config::new(world, 0, 128, 1, 5120, 128)
    }

    #[test]
    fn layout_sizes_slabs_and_regions() {
        let c = maverick(8);
        let l = c.layout().unwrap();
        assert_eq!(l.local_experts, 16);
        assert_eq!(c.capacity, 128);
        assert_eq!(l.grouped_rows, 8 * 128);
        assert_eq!(l.rows_off, 64);
        assert_eq!(l.scales_off, 64 + 128 * 5120);
        assert_eq!(l.slab_bytes, (64 + 128 * 5120 + 4 * 128usize).next_multiple_of(256));
        assert_eq!(l.combine_slab_bytes, 128 * 5120 * 2);
        let regions =
            [&l.status, &l.slot, &l.send, &l.recv, &l.row_of_slot, &l.table, &l.combine_send, &l.combine_recv];
        for w in regions.windows(2) {
            assert!(w[0].end <= w[1].start, "{:?} overlaps {:?}", w[0], w[1]);
        }
        for r in regions {
            assert_eq!(r.start % REGION_ALIGN, 0, "{r:?}");
        }
        assert!(l.bytes >= l.combine_recv.end && l.bytes % REGION_ALIGN == 0);
        assert_eq!(workspace_size(&c).unwrap(), l.bytes);
        // Padding adds fewer than align rows per local expert.
        assert_eq!(c.with_align(128).layout().unwrap().grouped_rows, 8 * 128 + 16 * 127);
    }

    #[test]
    fn configs_outside_the_limits_are_refused() {
        let bad = |c: Config, needle: &str| {
            let e = c.layout().unwrap_err().to_string();
            assert!(e.contains(needle), "{c:?}: {e}");
        };
        bad(Config::new(3, 0, 128, 1, 5120, 128), "cannot be split evenly over 3 ranks");
        bad(Config::new(0, 0, 128, 1, 5120, 128), "world_size = 0");
        bad(Config::new(65, 0, 130, 1, 5120, 128), "world_size = 65");
        bad(Config::new(4, 4, 128, 1, 5120, 128), "rank 4 in a world of 4");
        bad(Config::new(2, 0, 512, 1, 5120, 128), "at most 256");
        bad(Config::new(2, 0, 16, 9, 5120, 128), "k = 9");
        bad(Config::new(2, 0, 16, 1, 0, 128), "hidden");
        bad(maverick(4).with_capacity(129), "capacity = 129");
        bad(maverick(4).with_capacity(0), "capacity = 0");
        bad(maverick(4).with_align(0), "align = 0");
        bad(maverick(4).with_align(5000), "align = 5000");
        bad(Config::new(64, 0, 128, 8, 65536, 1 << 28), "over int32");
        assert!(matches!(Config::new(2, 0, 512, 1, 8, 8).layout(), Err(Error::Unsupported(_))));
        // A capacity below the worst case is allowed (overflow is then reported, not dropped silently).
        assert!(maverick(8).with_capacity(32).layout().is_ok());
        // T = 0 still has a slab (capacity 1) to send.
        assert_eq!(Config::new(2, 1, 16, 1, 64, 0).capacity, 1);
    }

    #[test]
    fn the_c_config_reads_like_the_rust_one() {
        let c = EpConfig {
            world_size: 4,
            rank: 1,
            experts: 128,
            k: 1,
            hidden: 5120,
            max_tokens: 128,
            capacity: 64,
            align: 8,
            _pad: 0,
        };
        let r = Config::from_c(&c).unwrap();
        assert_eq!(r, Config::new(4, 1, 128, 1, 5120, 128).with_capacity(64).with_align(8));
        assert!(Config::from_c(&EpConfig { hidden: -1, ..c }).unwrap_err().to_string().contains("negative"));
        assert!(Config::from_c(&EpConfig { experts: 126, ..c }).is_err());
        assert!(Config::from_c(&EpConfig { _pad: 1, ..c }).is_err());
    }

    fn last_error() -> String {
        // SAFETY: l4k_last_error returns a valid C string.
        unsafe { std::ffi::CStr::from_ptr(crate::capi::l4k_last_error()) }.to_string_lossy().into_owned()
    }

    /// The C entry points refuse every bad argument before anything is launched (no GPU here: a launch would fail
    /// with a CUDA error, not the message checked).
    #[test]
    fn the_c_abi_refuses_bad_arguments_before_launching() {
        use crate::capi::{l4k_ep_combine, l4k_ep_dispatch, l4k_ep_grouped_rows, l4k_ep_status, l4k_ep_workspace_size};
        use crate::error::Status;
        let one = EpConfig {
            world_size: 1,
            rank: 0,
            experts: 16,
            k: 1,
            hidden: 64,
            max_tokens: 8,
            capacity: 8,
            align: 4,
            _pad: 0,
        };
        let two = EpConfig { world_size: 2, ..one };
        let (mut bytes, mut rows) = (0usize, 0i64);
        // SAFETY: host pointers to locals or null; nothing reaches a device.
        unsafe {
            assert_eq!(l4k_ep_workspace_size(ptr::null(), &mut bytes), Status::InvalidArgument);
            assert!(last_error().contains("config is null"));
            assert_eq!(l4k_ep_workspace_size(&one, ptr::null_mut()), Status::InvalidArgument);
            assert_eq!(l4k_ep_workspace_size(&EpConfig { experts: 15, ..two }, &mut bytes), Status::InvalidArgument);
            assert!(last_error().contains("split evenly over 2 ranks"), "{}", last_error());
            assert_eq!(l4k_ep_workspace_size(&one, &mut bytes), Status::Ok);
            assert_eq!(bytes, workspace_size(&Config::from_c(&one).unwrap()).unwrap());
            assert_eq!(l4k_ep_grouped_rows(&two, &mut rows), Status::Ok);
            assert_eq!(rows, 2 * 8 + 8 * 3);
        }
        let fake = |at: usize| at as *mut c_void; // aligned, never dereferenced
        let p = fake(1 << 20) as *const i32;
        type Dispatch = (*mut c_void, EpConfig, i64, *const i32, i32, *mut c_void, i64, *mut c_void, usize);
        let dispatch = |(comm, cfg, tokens, ids, rows_by, grouped, grouped_rows, ws, ws_bytes): Dispatch| {
            // SAFETY: validation refuses these arguments before any pointer is used.
            let st = unsafe {
                l4k_ep_dispatch(
                    comm,
                    &cfg,
                    tokens,
                    ids,
                    p,
                    p,
                    p,
                    fake(1 << 21),
                    fake(1 << 22) as _,
                    8,
                    rows_by,
                    grouped,
                    fake(1 << 23) as _,
                    fake(1 << 24) as _,
                    fake(1 << 25) as _,
                    grouped_rows,
                    ws,
                    ws_bytes,
                    ptr::null_mut(),
                )
            };
            (st, last_error())
        };
        let ws = fake(1 << 26);
        let ok: Dispatch = (ptr::null_mut(), one, 8, p, ROWS_PERMUTED, fake(1 << 27), 64, ws, bytes);
        let refused = |args: Dispatch, needle: &str| {
            let (st, msg) = dispatch(args);
            assert_eq!(st, Status::InvalidArgument, "{msg}");
            assert!(msg.contains(needle), "want {needle:?}: {msg}");
        };
        refused((ok.0, one, 8, ptr::null(), ok.4, ok.5, ok.6, ok.7, ok.8), "ids is null");
        refused((ok.0, one, 9, ok.3, ok.4, ok.5, ok.6, ok.7, ok.8), "tokens = 9");
        refused((ok.0, one, 8, ok.3, 7, ok.5, ok.6, ok.7, ok.8), "unknown rows_by 7");
        refused((ok.0, one, 8, ok.3, ok.4, ptr::null_mut(), ok.6, ok.7, ok.8), "grouped is null");
        refused((ok.0, one, 8, ok.3, ok.4, ok.5, 10, ok.7, ok.8), "grouped_rows = 10");
        refused((ok.0, one, 8, ok.3, ok.4, ok.5, ok.6, ptr::null_mut(), ok.8), "workspace is null");
        refused((ok.0, one, 8, ok.3, ok.4, ok.5, ok.6, fake(4), ok.8), "not 256-byte aligned");
        refused((ok.0, one, 8, ok.3, ok.4, ok.5, ok.6, ok.7, 100), "l4k_ep_workspace_size");
        refused((ok.0, two, 8, ok.3, ok.4, ok.5, ok.6, ok.7, 1 << 30), "comm is null in a world of 2");
        refused((ok.0, EpConfig { k: 0, ..one }, 8, ok.3, ok.4, ok.5, ok.6, ok.7, ok.8), "k = 0");
        // combine and status.
        // SAFETY: as above.
        unsafe {
            let st = l4k_ep_combine(
                ptr::null_mut(),
                &one,
                8,
                ptr::null(),
                64,
                ptr::null(),
                ptr::null(),
                fake(64),
                ws,
                bytes,
                ptr::null_mut(),
            );
            assert_eq!((st, last_error().contains("expert_out is null")), (Status::InvalidArgument, true));
            let st = l4k_ep_combine(
                ptr::null_mut(),
                &one,
                8,
                fake(64),
                64,
                ptr::null(),
                ptr::null(),
                ptr::null_mut(),
                ws,
                bytes,
                ptr::null_mut(),
            );
            assert_eq!((st, last_error().contains("out is null")), (Status::InvalidArgument, true));
            let st = l4k_ep_combine(
                ptr::null_mut(),
                &one,
                8,
                fake(64),
                3,
                ptr::null(),
                ptr::null(),
                fake(64),
                ws,
                bytes,
                ptr::null_mut(),
            );
            assert_eq!((st, last_error().contains("grouped_rows = 3")), (Status::InvalidArgument, true));
            let mut status = [0u32; 4];
            assert_eq!(
                l4k_ep_status(ptr::null_mut(), 0, status.as_mut_ptr(), ptr::null_mut()),
                Status::InvalidArgument
            );
            assert_eq!(l4k_ep_status(ws, 0, ptr::null_mut(), ptr::null_mut()), Status::InvalidArgument);
        }
    }

    #[test]
    fn status_names_every_flag() {
        assert_eq!(EpStatus::default().check(), Ok(()));
        let s = EpStatus { flags: EP_OVERFLOW | EP_BAD_EXPERT, dropped: 3, max_demand: 130, ignored: 0 };
        let e = s.check().unwrap_err().to_string();
        assert!(
            e.contains("3 pairs not sent") && e.contains("capacity") && e.contains("expert id") && e.contains("130")
        );
    }
}
