//! Shared by the benches: the GPU, timing by CUDA events around graph replays, rotating input sets so large
//! L2 (50 MB on H100) does not flatter small shapes, the copy ceiling measured in the same process, and one
//! JSON record per case (appended to $L4K_BENCH_JSON) for bench/report.py.
//!
//! The figure of a case is criterion's own estimate (written under $CRITERION_HOME, default target/criterion);
//! the record says what criterion cannot know, the bytes and FLOPs of one call and the criterion id that
//! bench/report.py joins them on, and carries no second timing of its own.
#![allow(dead_code)]

use criterion::{BenchmarkId, Criterion, Throughput};
use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use llama4_kernels::{bf16, Gpu};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let g = Gpu::new(0).unwrap_or_else(|e| panic!("benches need an sm_90 GPU: {e}"));
        // One stream, no cross-stream hazards: cudarc's per-buffer event records would only add host time.
        // SAFETY: nothing in the benches uses a second stream.
        unsafe { g.context().disable_event_tracking() };
        g
    })
}

pub fn stream() -> &'static Arc<CudaStream> {
    gpu().stream()
}

pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .configure_from_args()
}

/// Random bf16 data (never zeros: zeros can run faster than real data).
pub fn rand_bf16(n: usize, seed: u64) -> CudaSlice<bf16> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let host: Vec<bf16> = (0..n).map(|_| bf16::from_f32(r.gen_range(-2.0f32..2.0))).collect();
    stream().clone_htod(&host).unwrap()
}

pub fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(n: usize) -> CudaSlice<T> {
    stream().alloc_zeros(n).unwrap()
}

/// How many input sets to rotate through so one pass over them (about 256 MB) overflows L2.
pub fn rotation(bytes_per_call: usize) -> usize {
    (256usize << 20).div_ceil(bytes_per_call.max(1)).clamp(1, 16)
}

/// Captures `reps` calls of `launch(i)` in a CUDA graph (the ops must be capturable) and returns the median
/// microseconds per call over `samples` timed replays.
pub fn time_per_call(reps: usize, samples: usize, mut launch: impl FnMut(usize)) -> f64 {
    let s = stream();
    for i in 0..3 {
        launch(i);
    }
    s.synchronize().unwrap();
    s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    for i in 0..reps {
        launch(i);
    }
    let graph = s.end_capture(CUgraphInstantiate_flags(0)).unwrap().expect("captured an empty graph");
    let ctx = gpu().context();
    let timed = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
    let (start, end) = (timed(), timed());
    graph.launch().unwrap();
    let mut us: Vec<f64> = (0..samples)
        .map(|_| {
            start.record(s).unwrap();
            graph.launch().unwrap();
            end.record(s).unwrap();
            start.elapsed_ms(&end).unwrap() as f64 * 1e3 / reps as f64
        })
        .collect();
    us.sort_by(f64::total_cmp);
    us[us.len() / 2]
}

/// Device-to-device copy bandwidth in GB/s (bytes read + written), measured now on this GPU: back-to-back
/// cuMemcpyDtoDAsync of 256 MiB outside any graph (a graph's memcpy node may run on a copy engine, slower than
/// the SM copy a plain async copy uses).
pub fn copy_ceiling_gbps() -> f64 {
    static CEIL: OnceLock<f64> = OnceLock::new();
    *CEIL.get_or_init(|| {
        let n = 256usize << 20;
        let src = rand_bf16(n / 2, 1);
        let mut dst = zeros::<bf16>(n / 2);
        let (s, ctx) = (stream(), gpu().context());
        let timed = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).unwrap();
        let (start, end) = (timed(), timed());
        let reps = 8;
        let mut us: Vec<f64> = (0..12)
            .map(|_| {
                start.record(s).unwrap();
                for _ in 0..reps {
                    s.memcpy_dtod(&src, &mut dst).unwrap();
                }
                end.record(s).unwrap();
                start.elapsed_ms(&end).unwrap() as f64 * 1e3 / reps as f64
            })
            .collect();
        us.sort_by(f64::total_cmp);
        let us = us[us.len() / 2];
        let gbps = 2.0 * n as f64 / (us * 1e3);
        write_record(serde_json::json!({
            "source": "llama4-kernels", "family": "copy", "variant": "dtod", "shape": "256MiB", "bytes": 2 * n,
            "us": us, "gbps": gbps, "device": gpu().describe(),
        }));
        gbps
    })
}

/// Which tensor-core rate bounds a matrix case (bench/report.py holds each to its dense peak).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Math {
    Bf16,
    Fp8,
}

/// The matrix work of one call: `count` FLOPs (a multiply-add counts 2) at the `math` rate.
#[derive(Clone, Copy, Debug)]
pub struct Flops {
    pub count: usize,
    pub math: Math,
}

impl Flops {
    pub fn bf16(count: usize) -> Flops {
        Flops { count, math: Math::Bf16 }
    }

    pub fn fp8(count: usize) -> Flops {
        Flops { count, math: Math::Fp8 }
    }
}

/// One measured case, bound by the bytes it moves.
pub fn run_case(
    c: &mut Criterion,
    family: &str,
    variant: &str,
    shape: &str,
    tokens: usize,
    bytes: usize,
    launch: impl FnMut(usize),
) {
    measure(c, family, variant, variant, None, shape, tokens, bytes, None, launch)
}

/// A matrix case: bytes and the FLOPs of one call.
#[allow(clippy::too_many_arguments)]
pub fn run_gemm_case(
    c: &mut Criterion,
    family: &str,
    variant: &str,
    shape: &str,
    tokens: usize,
    bytes: usize,
    flops: Flops,
    launch: impl FnMut(usize),
) {
    measure(c, family, variant, variant, None, shape, tokens, bytes, Some(flops), launch)
}

/// A peer timed in this process (a vendor library called through cudarc), recorded as a peer of our
/// `variant` (bench/report.py pairs it with ours like the PyTorch peers); criterion names it
/// `<family>/<label>/<shape>`.
#[allow(clippy::too_many_arguments)]
pub fn run_peer_case(
    c: &mut Criterion,
    family: &str,
    variant: &str,
    label: &str,
    peer: &str,
    shape: &str,
    tokens: usize,
    bytes: usize,
    flops: Flops,
    launch: impl FnMut(usize),
) {
    measure(c, family, label, variant, Some(peer), shape, tokens, bytes, Some(flops), launch)
}

#[allow(clippy::too_many_arguments)]
fn measure(
    c: &mut Criterion,
    family: &str,
    label: &str,
    variant: &str,
    peer: Option<&str>,
    shape: &str,
    tokens: usize,
    bytes: usize,
    flops: Option<Flops>,
    mut launch: impl FnMut(usize),
) {
    let id = format!("{family}/{label}/{shape}");
    if !selected(&id) {
        return;
    }
    let ceiling = copy_ceiling_gbps();
    let reps = if bytes > (64 << 20) { 4 } else { 64 };
    let mut group = c.benchmark_group(format!("{family}/{label}"));
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function(BenchmarkId::from_parameter(shape), |b| {
        b.iter_custom(|iters| {
            let us = time_per_call(reps, (iters as usize).div_ceil(reps).max(1), &mut launch);
            Duration::from_secs_f64(us * 1e-6 * iters as f64)
        })
    });
    group.finish();
    // What a reader of the log needs to turn criterion's time into a fraction of the ceilings.
    let work = flops.map(|f| format!(", {} {:?} FLOP", f.count, f.math)).unwrap_or_default();
    println!("{id}: {bytes} bytes{work} per call; copy ceiling {ceiling:.0} GB/s");
    let mut line = serde_json::json!({
        "source": "llama4-kernels", "id": id, "family": family, "variant": variant, "shape": shape,
        "tokens": tokens, "bytes": bytes, "flops": flops.map_or(0, |f| f.count), "device": gpu().describe(),
    });
    if let Some(f) = flops {
        line["math"] = (if f.math == Math::Fp8 { "fp8" } else { "bf16" }).into();
    }
    if let Some(peer) = peer {
        line["source"] = "cudarc".into();
        line["peer"] = peer.into();
    }
    write_record(line);
}

/// L4K_BENCH_ONLY=<substring>[,<substring>...]: only cases whose family/variant/shape contains one of them run
/// (criterion's own filter skips only the timing: the case's record would still be written).
fn selected(case: &str) -> bool {
    match std::env::var("L4K_BENCH_ONLY") {
        Ok(only) if !only.is_empty() => only.split(',').any(|f| case.contains(f)),
        _ => true,
    }
}

/// One JSON line appended to $L4K_BENCH_JSON (nothing when it is unset).
fn write_record(line: serde_json::Value) {
    let Some(path) = std::env::var_os("L4K_BENCH_JSON") else { return };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    writeln!(f, "{line}").unwrap();
}

/// Token counts benchmarked for every per-token op: decode, small and large prefill.
pub const TOKENS: [usize; 4] = [1, 64, 4096, 16384];
/// Llama 4 (Scout and Maverick) widths.
pub const HIDDEN: usize = 5120;
pub const INTER: usize = 8192;
pub const N_HEADS: usize = 40;
pub const N_KV_HEADS: usize = 8;
pub const HEAD_DIM: usize = 128;
