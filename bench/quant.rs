//! quant/fp8_rowwise/<tokens>x5120: bytes = bf16 read + FP8 written + one f32 scale per row.
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use llama4_kernels::quant::quant_fp8;
use llama4_kernels::{Tensor, TensorMut, E4M3};

fn bench(c: &mut Criterion) {
    let h = HIDDEN;
    for t in TOKENS {
        let n = t * h;
        let k = rotation(3 * n);
        let xs: Vec<_> = (0..k).map(|i| rand_bf16(n, i as u64)).collect();
        let mut qs: Vec<_> = (0..k).map(|_| zeros::<E4M3>(n)).collect();
        let mut ss: Vec<_> = (0..k).map(|_| zeros::<f32>(t)).collect();
        run_case(c, "quant", "fp8_rowwise", &format!("{t}x{h}"), t, 2 * n + n + 4 * t, |i| {
            let i = i % k;
            quant_fp8(
                stream(),
                &Tensor::of(&xs[i], [t, h]).unwrap(),
                &mut TensorMut::of(&mut qs[i], [t, h]).unwrap(),
                &mut TensorMut::of(&mut ss[i], [t]).unwrap(),
            )
            .unwrap()
        });
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
