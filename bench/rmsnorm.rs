//! rmsnorm/{plain,add}/<tokens>x5120: bytes = every input row read once + every output row written once.
//! rmsnorm/{add_fp8,add_then_quant}/<tokens>x5120: the add with y's FP8 copy from the same pass, and the two
//! launches it replaces (add_rmsnorm, then quant_fp8 of y); bytes = the fused kernel's (the pair moves more).
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use cudarc::driver::CudaSlice;
use llama4_kernels::quant::{quant_fp8, Fp8Copy};
use llama4_kernels::rmsnorm::{add_rmsnorm, add_rmsnorm_with_fp8, rmsnorm};
use llama4_kernels::{bf16, Tensor, TensorMut, E4M3};

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
            add_norm(&xs[i], &mut res[i], &w, &mut ys[i], [t, h])
        });
        let mut qs: Vec<CudaSlice<E4M3>> = (0..k).map(|_| zeros(n)).collect();
        let mut ss: Vec<CudaSlice<f32>> = (0..k).map(|_| zeros(t)).collect();
        let fused_bytes = 4 * n * 2 + 2 * h + n + 4 * t;
        run_case(c, "rmsnorm", "add_fp8", &shape, t, fused_bytes, |i| {
            let i = i % k;
            let copy = Fp8Copy {
                q: &mut TensorMut::of(&mut qs[i], [t, h]).unwrap(),
                scales: &mut TensorMut::of(&mut ss[i], [t]).unwrap(),
            };
            add_rmsnorm_with_fp8(
                stream(),
                &Tensor::of(&xs[i], [t, h]).unwrap(),
                &mut TensorMut::of(&mut res[i], [t, h]).unwrap(),
                &Tensor::of(&w, [h]).unwrap(),
                1e-5,
                &mut TensorMut::of(&mut ys[i], [t, h]).unwrap(),
                copy,
            )
            .unwrap()
        });
        run_case(c, "rmsnorm", "add_then_quant", &shape, t, fused_bytes, |i| {
            let i = i % k;
            add_norm(&xs[i], &mut res[i], &w, &mut ys[i], [t, h]);
            quant_fp8(
                stream(),
                &Tensor::of(&ys[i], [t, h]).unwrap(),
                &mut TensorMut::of(&mut qs[i], [t, h]).unwrap(),
                &mut TensorMut::of(&mut ss[i], [t]).unwrap(),
            )
            .unwrap()
        });
    }
}

fn add_norm(
    x: &CudaSlice<bf16>,
    res: &mut CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    y: &mut CudaSlice<bf16>,
    th: [usize; 2],
) {
    let [t, h] = th;
    add_rmsnorm(
        stream(),
        &Tensor::of(x, [t, h]).unwrap(),
        &mut TensorMut::of(res, [t, h]).unwrap(),
        &Tensor::of(w, [h]).unwrap(),
        1e-5,
        &mut TensorMut::of(y, [t, h]).unwrap(),
    )
    .unwrap()
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
