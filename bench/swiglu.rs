//! swiglu/{bf16,fp8}/<tokens>x8192: gate_up [T, 16384] bf16 read, h [T, 8192] written as bf16 or as FP8 + scales.
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use llama4_kernels::swiglu::{swiglu, swiglu_fp8};
use llama4_kernels::{Tensor, TensorMut, E4M3};

fn bench(c: &mut Criterion) {
    let i_ = INTER;
    for t in TOKENS {
        let n = t * i_;
        let k = rotation(6 * n);
        let gus: Vec<_> = (0..k).map(|s| rand_bf16(2 * n, s as u64)).collect();
        let mut outs: Vec<_> = (0..k).map(|_| zeros(n)).collect();
        let mut qs: Vec<_> = (0..k).map(|_| zeros::<E4M3>(n)).collect();
        let mut ss: Vec<_> = (0..k).map(|_| zeros::<f32>(t)).collect();
        let shape = format!("{t}x{i_}");
        run_case(c, "swiglu", "bf16", &shape, t, 2 * n * 2 + n * 2, |s| {
            let s = s % k;
            swiglu(
                stream(),
                &Tensor::of(&gus[s], [t, 2 * i_]).unwrap(),
                &mut TensorMut::of(&mut outs[s], [t, i_]).unwrap(),
            )
            .unwrap()
        });
        run_case(c, "swiglu", "fp8", &shape, t, 2 * n * 2 + n + 4 * t, |s| {
            let s = s % k;
            swiglu_fp8(
                stream(),
                &Tensor::of(&gus[s], [t, 2 * i_]).unwrap(),
                &mut TensorMut::of(&mut qs[s], [t, i_]).unwrap(),
                &mut TensorMut::of(&mut ss[s], [t]).unwrap(),
            )
            .unwrap()
        });
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
