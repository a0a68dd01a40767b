//! rmsnorm/{plain,add}/<tokens>x5120: bytes = every input row read once + every output row written once.
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use llama4_kernels::rmsnorm::{add_rmsnorm, rmsnorm};
use llama4_kernels::{Tensor, TensorMut};

fn bench(c: &mut Criterion) {
    let h = HIDDEN;
    let w = rand_bf16(h, 99);
    for t in TOKENS {
        let n = t * h;
        let k = rotation(4 * n);
        let xs: Vec<_> = (0..k).map(|i| rand_bf16(n, i as u64)).collect();
        let mut res: Vec<_> = (0..k).map(|i| rand_bf16(n, 100 + i as u64)).collect();
        let mut ys: Vec<_> = (0..k).map(|_| zeros(n)).collect();
        let shape = format!("{t}x{h}");
        run_case(c, "rmsnorm", "plain", &shape, t, 2 * n * 2 + 2 * h, |i| {
            let i = i % k;
            rmsnorm(
                stream(),
                &Tensor::of(&xs[i], [t, h]).unwrap(),
                &Tensor::of(&w, [h]).unwrap(),
                1e-5,
                &mut TensorMut::of(&mut ys[i], [t, h]).unwrap(),
            )
            .unwrap()
        });
        run_case(c, "rmsnorm", "add", &shape, t, 4 * n * 2 + 2 * h, |i| {
            let i = i % k;
            add_rmsnorm(
                stream(),
                &Tensor::of(&xs[i], [t, h]).unwrap(),
                &mut TensorMut::of(&mut res[i], [t, h]).unwrap(),
                &Tensor::of(&w, [h]).unwrap(),
                1e-5,
                &mut TensorMut::of(&mut ys[i], [t, h]).unwrap(),
            )
            .unwrap()
        });
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
