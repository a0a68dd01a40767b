//! linear/<variant>/<proj>/m<m>: Llama 4 Scout's dense projections at m = 1, 8, 64 (decode) and 8192 (prefill):
//! qkv [5120 -> 7168], o [5120 -> 5120], shared gate_up [5120 -> 16384], shared down [8192 -> 5120], lm_head
//! [5120 -> 202048], the routers [5120 -> 16] (Scout) and [5120 -> 128] (Maverick's width at Scout's k).
//! `bf16`: Blas::linear_bf16 on its Auto schedule (the GEMV at one row where it measured faster, else cuBLASLt),
//! bf16 out (lm_head: f32 logits, what sampling reads), with cuBLASLt forced as its peer in the same process
//! (`cublaslt`) at the decode sizes and the GEMV forced (`gemv`) at m = 1 and 8. `fp8`: linear_fp8 (the grouped
//! GEMM with one expert) on rowwise-quantized x and w, bf16 out. FLOPs = 2 m n k; bytes = weights + x + y (+ the
//! f32 scales for fp8). Weight sets rotate so L2 does not flatter the decode shapes, except the routers': their
//! 16 sets (2.6 / 21 MB) stay in L2 between calls, which the model's do not (500 MB of other weights pass between
//! two layers' routers), so those rows compare the schedules L2-warm.
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use cudarc::driver::{CudaSlice, DeviceRepr};
use llama4_kernels::grouped_gemm::workspace_size;
use llama4_kernels::linear::{linear_fp8, Blas, LinearOut, LinearSchedule, GEMV_MAX_ROWS, LINEAR_WORKSPACE_BYTES};
use llama4_kernels::{bf16, Tensor, TensorMut, E4M3};
use rand::{Rng, SeedableRng};

const MS: [usize; 4] = [1, 8, 64, 8192];
/// (name, k = in features, n = out features)
const SHAPES: [(&str, usize, usize); 7] = [
    ("qkv", HIDDEN, (N_HEADS + 2 * N_KV_HEADS) * HEAD_DIM),
    ("o", N_HEADS * HEAD_DIM, HIDDEN),
    ("gate_up", HIDDEN, 2 * INTER),
    ("down", INTER, HIDDEN),
    ("lm_head", HIDDEN, 202048),
    ("router", HIDDEN, 16),
    ("router128", HIDDEN, 128),
];

/// `sets` buffers holding copies of one random block (drawing gigabytes on the host would take minutes; the
/// speed does not depend on the values).
fn copies<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(one: &CudaSlice<T>, sets: usize) -> Vec<CudaSlice<T>> {
    (0..sets)
        .map(|_| {
            let mut d = zeros::<T>(one.len());
            stream().memcpy_dtod(one, &mut d).unwrap();
            d
        })
        .collect()
}

fn rand_fp8(n: usize, seed: u64) -> CudaSlice<E4M3> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    // Finite codes of moderate magnitude (never the NaN codes 0x7F / 0xFF).
    let host: Vec<E4M3> = (0..n).map(|_| E4M3(r.gen_range(0x20u8..0x50) | if r.gen() { 0x80 } else { 0 })).collect();
    stream().clone_htod(&host).unwrap()
}

fn rand_scales(n: usize, seed: u64) -> CudaSlice<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    stream().clone_htod(&(0..n).map(|_| r.gen_range(1e-3f32..1e-2)).collect::<Vec<_>>()).unwrap()
}

/// The bf16 linear on Auto, then cuBLASLt as its peer (decode sizes) and the GEMV forced (m <= 8).
#[allow(clippy::too_many_arguments)]
fn bf16_cases<O: LinearOut>(
    c: &mut Criterion,
    blas: &Blas,
    shape: &str,
    [m, n, k]: [usize; 3],
    bytes: usize,
    flops: usize,
    decode: bool,
    x: &CudaSlice<bf16>,
    w16: &[CudaSlice<bf16>],
    y: &mut CudaSlice<O>,
    ws: &mut CudaSlice<u8>,
) {
    let sets = w16.len();
    let mut call = |i: usize, schedule| {
        blas.linear_bf16_with(
            stream(),
            &Tensor::of(x, [m, k]).unwrap(),
            &Tensor::of(&w16[i % sets], [n, k]).unwrap(),
            &mut TensorMut::of(y, [m, n]).unwrap(),
            &mut TensorMut::of(ws, [LINEAR_WORKSPACE_BYTES]).unwrap(),
            schedule,
        )
        .unwrap()
    };
    run_gemm_case(c, "linear", "bf16", shape, m, bytes, Flops::bf16(flops), |i| call(i, LinearSchedule::Auto));
    if decode {
        run_peer_case(c, "linear", "bf16", "cublaslt", "cuBLASLt", shape, m, bytes, Flops::bf16(flops), |i| {
            call(i, LinearSchedule::Blas)
        });
    }
    if m <= GEMV_MAX_ROWS {
        run_gemm_case(c, "linear", "gemv", shape, m, bytes, Flops::bf16(flops), |i| call(i, LinearSchedule::Gemv));
    }
}

fn bench(c: &mut Criterion) {
    let blas = Blas::new(stream()).unwrap_or_else(|e| panic!("linear bench: {e}"));
    let mut ws = zeros::<u8>(LINEAR_WORKSPACE_BYTES);
    let mut gws = zeros::<u8>(workspace_size(1).unwrap());
    let gws_len = gws.len();
    for (name, k, n) in SHAPES {
        let lm_head = name == "lm_head";
        let sets = rotation(2 * n * k);
        let w16 = copies(&rand_bf16(n * k, 1), sets);
        let w8 = copies(&rand_fp8(n * k, 2), sets);
        let ws8 = rand_scales(n, 3);
        for m in MS {
            let shape = format!("{name}/m{m}");
            let flops = 2 * m * n * k;
            let x = rand_bf16(m * k, 4);
            let out_elem = if lm_head { 4 } else { 2 };
            let bytes = 2 * n * k + 2 * m * k + out_elem * m * n;
            let decode = m <= 64;
            if lm_head {
                let mut y = zeros::<f32>(m * n);
                bf16_cases(c, &blas, &shape, [m, n, k], bytes, flops, decode, &x, &w16, &mut y, &mut ws);
            } else {
                let mut y = zeros::<bf16>(m * n);
                bf16_cases(c, &blas, &shape, [m, n, k], bytes, flops, decode, &x, &w16, &mut y, &mut ws);
            }
            drop(x);
            let xq = rand_fp8(m * k, 5);
            let xs = rand_scales(m, 6);
            let offsets = stream().clone_htod(&[0i32, m as i32]).unwrap();
            let mut y = zeros::<bf16>(m * n);
            let bytes = n * k + m * k + 2 * m * n + 4 * (m + n);
            run_gemm_case(c, "linear", "fp8", &shape, m, bytes, Flops::fp8(flops), |i| {
                linear_fp8(
                    stream(),
                    &Tensor::of(&xq, [m, k]).unwrap(),
                    &Tensor::of(&xs, [m]).unwrap(),
                    &Tensor::of(&w8[i % sets], [n, k]).unwrap(),
                    &Tensor::of(&ws8, [n]).unwrap(),
                    &Tensor::of(&offsets, [2]).unwrap(),
                    &mut TensorMut::of(&mut y, [m, n]).unwrap(),
                    &mut TensorMut::of(&mut gws, [gws_len]).unwrap(),
                )
                .unwrap()
            });
        }
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
