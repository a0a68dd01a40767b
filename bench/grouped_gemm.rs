//! grouped_gemm/<variant>/<proj>_T<tokens>_E<experts>: Llama 4's routed experts, tokens spread evenly over the
//! experts: Scout (E = 16) and Maverick (E = 128). gate_up: [T, 5120] x [E, 16384, 5120]; down: [T, 8192] x
//! [E, 5120, 8192]. FLOPs = 2 T N K; bytes = the weights of every expert with rows + A + D. PyTorch's
//! _scaled_grouped_mm runs in bench/peers.
//!
//! grouped_gemm/swiglu_{fused,unfused}[_fast]/gate_up_T<tokens>_E16: Scout's gate_up all the way to the down
//! projection's FP8 input (q [T, 8192] + row scales): the SwiGLU epilogue + rowwise quant
//! (grouped_gemm_swiglu_fp8) against the GEMM into bf16 [T, 16384] + swiglu_fp8, same accumulation (`_fast`:
//! both with fast accumulation; the unfused plain one uses Auto, the decode schedule at T = 512). Bytes: weights
//! + A + q + scales; FLOPs of the GEMM.
//!
//! grouped_gemm/{gemv,decode}/<proj>_T<tokens>_E<experts>_top1, T = 1, 2, 4, 8: batch-1-to-8 decode at top-1,
//! each token routed to its own expert (T experts touched): the streaming GEMV schedule (what Auto picks there)
//! against the CUTLASS decode tiles. Bytes: the touched experts' weights + A + D.
//!
//! Scout (E = 16) also times the 128x128 blockwise-scaled variant (`blockwise_*`) and, as a peer of `auto`, a
//! loop of cuBLASLt FP8 GEMMs, one per expert (`cublaslt_per_expert`, bench/peers/cublaslt.rs).
mod common;
#[path = "peers/cublaslt.rs"]
mod cublaslt;
use common::*;
use criterion::{criterion_group, Criterion};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set when the cuBLASLt peer could not be timed somewhere: the bench then exits non-zero after the rest.
static PEER_FAILED: AtomicBool = AtomicBool::new(false);

fn peer_failed(what: &str) {
    eprintln!("grouped_gemm: cuBLASLt peer FAILED: {what}");
    PEER_FAILED.store(true, Ordering::Relaxed);
}
use llama4_kernels::grouped_gemm::{
    grouped_gemm_fp8, grouped_gemm_fp8_blockwise, grouped_gemm_swiglu_fp8, workspace_size, GroupedGemm,
    GroupedGemmBlockwise, Schedule,
};
use llama4_kernels::swiglu::swiglu_fp8;
use llama4_kernels::{Tensor, TensorMut, E4M3};

fn bench(c: &mut Criterion) {
    let cublaslt = cublaslt::available().map_err(|e| peer_failed(&e)).is_ok();
    for (experts, (proj, n, k)) in [16usize, 128]
        .into_iter()
        .flat_map(|e| [("gate_up", 16384usize, 5120usize), ("down", 5120, 8192)].map(move |p| (e, p)))
    {
        let weights = expert_weights(experts, n * k);
        let scale_b = rand_scales(experts * n, 8);
        let mut ws = zeros::<u8>(workspace_size(experts).unwrap());
        for t in [16384usize, 4096, 512, 128] {
            let a = rand_fp8(t * k, t as u64);
            let scale_a = rand_scales(t, 9);
            let offsets: Vec<i32> = (0..=experts).map(|e| (e * t / experts) as i32).collect();
            let offs = stream().clone_htod(&offsets).unwrap();
            let mut d = zeros(t * n);
            let ws_len = ws.len();
            let flops = 2 * t * n * k;
            let bytes = experts * n * k + t * k + 2 * t * n;
            let mut variants =
                vec![("auto", Schedule::Auto), ("prefill", Schedule::Prefill), ("decode", Schedule::Decode)];
            if t >= 4096 {
                variants.push(("prefill_fast_accum", Schedule::PrefillFastAccum));
            }
            for (name, schedule) in variants {
                let (ta, tsa) = (Tensor::of(&a, [t, k]).unwrap(), Tensor::of(&scale_a, [t]).unwrap());
                let (tb, tsb) =
                    (Tensor::of(&weights, [experts, n, k]).unwrap(), Tensor::of(&scale_b, [experts, n]).unwrap());
                let to = Tensor::of(&offs, [experts + 1]).unwrap();
                let g = GroupedGemm { a: &ta, scale_a: &tsa, b: &tb, scale_b: &tsb, offsets: &to, counts: None };
                run_gemm_case(
                    c,
                    "grouped_gemm",
                    name,
                    &format!("{proj}_T{t}_E{experts}"),
                    t,
                    bytes,
                    Flops::fp8(flops),
                    |_| gemm_into(&g, &mut d, [t, n], &mut ws, schedule),
                );
            }
            // The router's align = 128 layout at decode sizes: each expert's rows padded to a multiple of 128, the
            // GEMM told the real counts. Plain auto sees the padded row count; AutoRouted the routed one.
            if t <= 512 {
                let per = t / experts;
                let padded = per.div_ceil(128) * 128;
                let rows = padded * experts;
                let a = rand_fp8(rows * k, 3 * t as u64);
                let scale_a = rand_scales(rows, 14);
                let offs =
                    stream().clone_htod(&(0..=experts).map(|e| (e * padded) as i32).collect::<Vec<_>>()).unwrap();
                let cnts = stream().clone_htod(&vec![per as i32; experts]).unwrap();
                let mut d = zeros(rows * n);
                for (name, schedule) in [
                    ("auto_padded128", Schedule::Auto),
                    ("auto_routed_padded128", Schedule::AutoRouted { routed_rows: t }),
                ] {
                    let (ta, tsa) = (Tensor::of(&a, [rows, k]).unwrap(), Tensor::of(&scale_a, [rows]).unwrap());
                    let (tb, tsb) =
                        (Tensor::of(&weights, [experts, n, k]).unwrap(), Tensor::of(&scale_b, [experts, n]).unwrap());
                    let (to, tc) = (Tensor::of(&offs, [experts + 1]).unwrap(), Tensor::of(&cnts, [experts]).unwrap());
                    let g =
                        GroupedGemm { a: &ta, scale_a: &tsa, b: &tb, scale_b: &tsb, offsets: &to, counts: Some(&tc) };
                    run_gemm_case(
                        c,
                        "grouped_gemm",
                        name,
                        &format!("{proj}_T{t}_E{experts}"),
                        t,
                        bytes,
                        Flops::fp8(flops),
                        |_| gemm_into(&g, &mut d, [rows, n], &mut ws, schedule),
                    );
                }
            }
            if experts == 16 {
                let shape = format!("{proj}_T{t}_E{experts}");
                let (dsa, dsb) = (rand_scales(1, 10), rand_scales(1, 11));
                let per_expert = if cublaslt { Some(cublaslt::PerExpert::new(n, k, t / experts)) } else { None };
                match per_expert
                    .map(|p| p.and_then(|mut p| p.check(&a, &weights, &dsa, &dsb, &mut d, experts).map(|_| p)))
                {
                    None => {}
                    Some(Ok(mut per_expert)) => run_peer_case(
                        c,
                        "grouped_gemm",
                        "auto",
                        "cublaslt_per_expert",
                        "cuBLASLt FP8 per expert (per-tensor scales)",
                        &shape,
                        t,
                        bytes,
                        Flops::fp8(flops),
                        |_| per_expert.run(&a, &weights, &dsa, &dsb, &mut d, experts),
                    ),
                    Some(Err(e)) => peer_failed(&format!("{shape}: {e}")),
                }
                // The blockwise variant: 1x128 activation scales, 128x128 weight scales.
                let (kb, nb) = (k / 128, n / 128);
                let scale_a = rand_scales(t * kb, 12);
                let scale_b = rand_scales(experts * nb * kb, 13);
                for (name, schedule) in [
                    ("blockwise_auto", Schedule::Auto),
                    ("blockwise_prefill", Schedule::Prefill),
                    ("blockwise_decode", Schedule::Decode),
                ] {
                    let (ta, tsa) = (Tensor::of(&a, [t, k]).unwrap(), Tensor::of(&scale_a, [t, kb]).unwrap());
                    let tb = Tensor::of(&weights, [experts, n, k]).unwrap();
                    let tsb = Tensor::of(&scale_b, [experts, nb, kb]).unwrap();
                    let to = Tensor::of(&offs, [experts + 1]).unwrap();
                    let g = GroupedGemmBlockwise {
                        a: &ta,
                        scale_a: &tsa,
                        b: &tb,
                        scale_b: &tsb,
                        offsets: &to,
                        counts: None,
                    };
                    run_gemm_case(c, "grouped_gemm", name, &shape, t, bytes, Flops::fp8(flops), |_| {
                        grouped_gemm_fp8_blockwise(
                            stream(),
                            &g,
                            &mut TensorMut::of(&mut d, [t, n]).unwrap(),
                            &mut TensorMut::of(&mut ws, [ws_len]).unwrap(),
                            None,
                            schedule,
                        )
                        .unwrap()
                    });
                }
            }
        }
    }
}

fn bench_swiglu(c: &mut Criterion) {
    let (experts, n, k) = (16usize, 16384usize, 5120usize);
    let half = n / 2;
    // Random bytes: the speed does not depend on whether the rows are interleaved.
    let weights = expert_weights(experts, n * k);
    let scale_b = rand_scales(experts * n, 8);
    let mut ws = zeros::<u8>(workspace_size(experts).unwrap());
    let ws_len = ws.len();
    for t in [16384usize, 4096, 512] {
        let a = rand_fp8(t * k, t as u64);
        let scale_a = rand_scales(t, 9);
        let offsets: Vec<i32> = (0..=experts).map(|e| (e * t / experts) as i32).collect();
        let offs = stream().clone_htod(&offsets).unwrap();
        let (mut d, mut h) = (zeros(t * n), zeros(t * half));
        let (mut q, mut sq) = (zeros::<E4M3>(t * half), zeros::<f32>(t));
        let flops = 2 * t * n * k;
        let bytes = experts * n * k + t * k + t * half + 4 * t;
        let shape = format!("gate_up_T{t}_E{experts}");
        let (ta, tsa) = (Tensor::of(&a, [t, k]).unwrap(), Tensor::of(&scale_a, [t]).unwrap());
        let (tb, tsb) = (Tensor::of(&weights, [experts, n, k]).unwrap(), Tensor::of(&scale_b, [experts, n]).unwrap());
        let to = Tensor::of(&offs, [experts + 1]).unwrap();
        let g = GroupedGemm { a: &ta, scale_a: &tsa, b: &tb, scale_b: &tsb, offsets: &to, counts: None };
        let mut variants = vec![("", Schedule::Auto, Schedule::Prefill)];
        if t >= 4096 {
            variants.push(("_fast", Schedule::PrefillFastAccum, Schedule::PrefillFastAccum));
        }
        for (suffix, plain, fused) in variants {
            run_gemm_case(
                c,
                "grouped_gemm",
                &format!("swiglu_unfused{suffix}"),
                &shape,
                t,
                bytes,
                Flops::fp8(flops),
                |_| {
                    gemm_into(&g, &mut d, [t, n], &mut ws, plain);
                    swiglu_fp8(
                        stream(),
                        &Tensor::of(&d, [t, n]).unwrap(),
                        &mut TensorMut::of(&mut q, [t, half]).unwrap(),
                        &mut TensorMut::of(&mut sq, [t]).unwrap(),
                    )
                    .unwrap()
                },
            );
            run_gemm_case(
                c,
                "grouped_gemm",
                &format!("swiglu_fused{suffix}"),
                &shape,
                t,
                bytes,
                Flops::fp8(flops),
                |_| {
                    grouped_gemm_swiglu_fp8(
                        stream(),
                        &g,
                        &mut TensorMut::of(&mut h, [t, half]).unwrap(),
                        &mut TensorMut::of(&mut q, [t, half]).unwrap(),
                        &mut TensorMut::of(&mut sq, [t]).unwrap(),
                        &mut TensorMut::of(&mut ws, [ws_len]).unwrap(),
                        None,
                        fused,
                    )
                    .unwrap()
                },
            );
        }
    }
}

/// `experts` copies of one random expert: Maverick's 128 x 16384 x 5120 bytes would take minutes to draw on the
/// host, and the GEMM's speed does not depend on the values.
/// One rowwise grouped GEMM into `d` (`shape` = [rows, n]) with the whole of `ws` as its workspace, no flag.
fn gemm_into(
    g: &GroupedGemm,
    d: &mut cudarc::driver::CudaSlice<half::bf16>,
    shape: [usize; 2],
    ws: &mut cudarc::driver::CudaSlice<u8>,
    schedule: Schedule,
) {
    let ws_len = ws.len();
    grouped_gemm_fp8(
        stream(),
        g,
        &mut TensorMut::of(d, shape).unwrap(),
        &mut TensorMut::of(ws, [ws_len]).unwrap(),
        None,
        schedule,
    )
    .unwrap()
}

fn expert_weights(experts: usize, per_expert: usize) -> cudarc::driver::CudaSlice<E4M3> {
    let one = rand_fp8(per_expert, 7);
    let mut all = zeros::<E4M3>(experts * per_expert);
    for e in 0..experts {
        stream().memcpy_dtod(&one, &mut all.slice_mut(e * per_expert..(e + 1) * per_expert)).unwrap();
    }
    all
}

fn rand_fp8(n: usize, seed: u64) -> cudarc::driver::CudaSlice<E4M3> {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    // Random finite codes of moderate magnitude (never the NaN codes 0x7F / 0xFF).
    let host: Vec<E4M3> = (0..n).map(|_| E4M3(r.gen_range(0x20u8..0x50) | if r.gen() { 0x80 } else { 0 })).collect();
    stream().clone_htod(&host).unwrap()
}

fn rand_scales(n: usize, seed: u64) -> cudarc::driver::CudaSlice<f32> {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    stream().clone_htod(&(0..n).map(|_| r.gen_range(1e-3f32..1e-2)).collect::<Vec<_>>()).unwrap()
}

fn bench_gemv(c: &mut Criterion) {
    for (experts, (proj, n, k)) in [16usize, 128]
        .into_iter()
        .flat_map(|e| [("gate_up", 16384usize, 5120usize), ("down", 5120, 8192)].map(move |p| (e, p)))
    {
        let weights = expert_weights(experts, n * k);
        let scale_b = rand_scales(experts * n, 8);
        let mut ws = zeros::<u8>(workspace_size(experts).unwrap());
        for t in [1usize, 2, 4, 8] {
            let a = rand_fp8(t * k, 40 + t as u64);
            let scale_a = rand_scales(t, 41);
            // Call i routes token j to expert (i % sets) t + j: consecutive calls read disjoint experts, so a
            // down projection's 42 MB is not served from the 60 MB L2 by the previous call.
            let sets = experts / t;
            let offs: Vec<_> = (0..sets)
                .map(|set| {
                    let offsets: Vec<i32> = (0..=experts).map(|e| e.saturating_sub(set * t).min(t) as i32).collect();
                    stream().clone_htod(&offsets).unwrap()
                })
                .collect();
            let mut d = zeros(t * n);
            let bytes = t * n * k + t * k + 2 * t * n;
            for (name, schedule) in [("gemv", Schedule::Gemv), ("decode", Schedule::Decode)] {
                let (ta, tsa) = (Tensor::of(&a, [t, k]).unwrap(), Tensor::of(&scale_a, [t]).unwrap());
                let (tb, tsb) =
                    (Tensor::of(&weights, [experts, n, k]).unwrap(), Tensor::of(&scale_b, [experts, n]).unwrap());
                let to: Vec<_> = offs.iter().map(|o| Tensor::of(o, [experts + 1]).unwrap()).collect();
                run_gemm_case(
                    c,
                    "grouped_gemm",
                    name,
                    &format!("{proj}_T{t}_E{experts}_top1"),
                    t,
                    bytes,
                    Flops::fp8(2 * t * n * k),
                    |i| {
                        let g = GroupedGemm {
                            a: &ta,
                            scale_a: &tsa,
                            b: &tb,
                            scale_b: &tsb,
                            offsets: &to[i % sets],
                            counts: None,
                        };
                        gemm_into(&g, &mut d, [t, n], &mut ws, schedule)
                    },
                );
            }
        }
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench_gemv, bench_swiglu, bench }

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if PEER_FAILED.load(Ordering::Relaxed) {
        eprintln!("grouped_gemm: the cuBLASLt peer failed (see above); every other case ran");
        std::process::exit(1);
    }
}
