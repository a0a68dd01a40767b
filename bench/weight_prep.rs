//! weight_prep/<variant>/<proj>_E<experts>: checkpoint bf16 expert weights [E, K, N] -> the grouped GEMM's
//! [E, N, K] E4M3 + [E, N] scales, at Llama 4 Scout's shapes (E = 16; gate_up K = 5120, N = 16384; down
//! K = 8192, N = 5120). bytes = bf16 read + FP8 written + one f32 scale per (expert, column). Variant `strip` is
//! the fast kernel; `generic` the fallback every other shape takes (K = 8200: past the strip kernel's limit).
//! PyTorch's transpose + amax + scale + cast runs in bench/peers/torch_peers.py (family weight_prep).
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use cudarc::driver::CudaSlice;
use llama4_kernels::weight_prep::{quantize_expert_weights, uses_strip_kernel};
use llama4_kernels::{bf16, Tensor, TensorMut, E4M3};

/// n random bf16 values: one 32 Mi-element random block tiled on the device (host generation of billions of
/// values would take longer than the benchmark).
fn big_rand_bf16(n: usize, seed: u64) -> CudaSlice<bf16> {
    let block = rand_bf16((32usize << 20).min(n), seed);
    let mut out = zeros::<bf16>(n);
    let mut at = 0;
    while at < n {
        let len = block.len().min(n - at);
        stream().memcpy_dtod(&block.slice(..len), &mut out.slice_mut(at..at + len)).unwrap();
        at += len;
    }
    out
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("strip", "gate_up_E16", 16usize, 5120usize, 16384usize),
        ("strip", "down_E16", 16, 8192, 5120),
        ("generic", "down_E4_K8200", 4, 8200, 5120),
    ];
    for (variant, shape, e, k, n) in cases {
        assert_eq!(uses_strip_kernel(k, n), variant == "strip", "{shape}");
        let elems = e * k * n;
        let w = big_rand_bf16(elems, k as u64);
        let mut q = zeros::<E4M3>(elems);
        let mut s = zeros::<f32>(e * n);
        run_case(c, "weight_prep", variant, shape, 0, 3 * elems + 4 * e * n, |_| {
            quantize_expert_weights(
                stream(),
                &Tensor::of(&w, [e, k, n]).unwrap(),
                &mut TensorMut::of(&mut q, [e, n, k]).unwrap(),
                &mut TensorMut::of(&mut s, [e, n]).unwrap(),
            )
            .unwrap()
        });
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
