//! permute/{fp8_scaled,bf16_scaled}/<tokens>x5120, permute/unpermute_shared/<tokens>x5120 and
//! permute/{unpermute_norm,unpermute_then_norm}/<tokens>x5120, Scout routing (16 experts, top-1, no padding).
//! Bytes, counted honestly: permute reads x (bf16), the weight and the destination of each token, and writes one
//! row (FP8 + f32 scale, or bf16); unpermute reads one expert row, the shared-expert row and the destination, and
//! writes one bf16 row; unpermute_norm (the fused kernel) also reads and writes the residual row and writes y
//! instead of the unpermuted row; unpermute_then_norm (the two kernels it replaces) moves that row out and back
//! in between.
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use cudarc::driver::CudaSlice;
use llama4_kernels::permute::{permute, permute_fp8, unpermute, unpermute_add_rmsnorm};
use llama4_kernels::rmsnorm::add_rmsnorm;
use llama4_kernels::router::{router, router_workspace_size, RouterKind, RouterOutputs};
use llama4_kernels::{bf16, Tensor, TensorMut, E4M3};

const PERMUTE_TOKENS: [usize; 5] = [1, 64, 512, 4096, 16384];
const EXPERTS: usize = 16;

/// Destinations and weights of a Scout routing of random logits, made by the router itself.
fn route(t: usize) -> (CudaSlice<i32>, CudaSlice<f32>) {
    let e = EXPERTS;
    let logits = rand_bf16(t * e, 3);
    let (mut ids, mut w, mut de) = (zeros::<i32>(t), zeros::<f32>(t), zeros::<i32>(t));
    let (mut counts, mut offsets) = (zeros::<i32>(e), zeros::<i32>(e + 1));
    let mut ws = zeros::<u8>(router_workspace_size::<bf16>(t, e).unwrap());
    let out = RouterOutputs {
        ids: &mut TensorMut::of(&mut ids, [t, 1]).unwrap(),
        weights: &mut TensorMut::of(&mut w, [t, 1]).unwrap(),
        counts: &mut TensorMut::of(&mut counts, [e]).unwrap(),
        offsets: &mut TensorMut::of(&mut offsets, [e + 1]).unwrap(),
        dest: &mut TensorMut::of(&mut de, [t, 1]).unwrap(),
    };
    router(stream(), &Tensor::of(&logits, [t, e]).unwrap(), RouterKind::SigmoidTop1, 1, out, &mut ws.as_view_mut())
        .unwrap();
    (de, w)
}

fn bench(c: &mut Criterion) {
    let h = HIDDEN;
    for t in PERMUTE_TOKENS {
        let n = t * h;
        let (dest, w) = route(t);
        let shape = format!("{t}x{h}");
        let sets = rotation(3 * n);
        let xs: Vec<_> = (0..sets).map(|i| rand_bf16(n, 10 + i as u64)).collect();
        let mut qs: Vec<_> = (0..sets).map(|_| zeros::<E4M3>(n)).collect();
        let mut ss: Vec<_> = (0..sets).map(|_| zeros::<f32>(t)).collect();
        let dt = Tensor::of(&dest, [t, 1]).unwrap();
        let wt = Tensor::of(&w, [t, 1]).unwrap();
        run_case(c, "permute", "fp8_scaled", &shape, t, 2 * n + n + 4 * t * 3, |i| {
            let i = i % sets;
            permute_fp8(
                stream(),
                &Tensor::of(&xs[i], [t, h]).unwrap(),
                &dt,
                Some(&wt),
                None,
                &mut TensorMut::of(&mut qs[i], [t, h]).unwrap(),
                &mut TensorMut::of(&mut ss[i], [t]).unwrap(),
            )
            .unwrap()
        });
        drop(qs);
        let sets = rotation(4 * n);
        let mut outs: Vec<CudaSlice<bf16>> = (0..sets).map(|_| zeros(n)).collect();
        run_case(c, "permute", "bf16_scaled", &shape, t, 4 * n + 8 * t, |i| {
            let i = i % sets;
            permute(
                stream(),
                &Tensor::of(&xs[i % xs.len()], [t, h]).unwrap(),
                &dt,
                Some(&wt),
                None,
                &mut TensorMut::of(&mut outs[i], [t, h]).unwrap(),
            )
            .unwrap()
        });
        drop((xs, outs));
        let sets = rotation(6 * n);
        let ys: Vec<_> = (0..sets).map(|i| rand_bf16(n, 30 + i as u64)).collect();
        let shared: Vec<_> = (0..sets).map(|i| rand_bf16(n, 60 + i as u64)).collect();
        let mut outs: Vec<CudaSlice<bf16>> = (0..sets).map(|_| zeros(n)).collect();
        // Llama 4's unpermute: top-1, unweighted, the shared expert's row added.
        let unpermute_into = |i: usize, out: &mut CudaSlice<bf16>| {
            unpermute(
                stream(),
                &Tensor::of(&ys[i], [t, h]).unwrap(),
                &dt,
                None,
                Some(&Tensor::of(&shared[i], [t, h]).unwrap()),
                &mut TensorMut::of(out, [t, h]).unwrap(),
            )
            .unwrap()
        };
        run_case(c, "permute", "unpermute_shared", &shape, t, 6 * n + 4 * t, |i| {
            let i = i % sets;
            unpermute_into(i, &mut outs[i])
        });
        // The MoE block's end as the model runs it: unpermute fused with the next residual add and norm, and the
        // two kernels it replaces (unpermute, then add_rmsnorm) in the same process.
        let nw = rand_bf16(h, 90);
        let nwt = Tensor::of(&nw, [h]).unwrap();
        let mut res: Vec<CudaSlice<bf16>> = (0..sets).map(|i| rand_bf16(n, 120 + i as u64)).collect();
        let mut yn: Vec<CudaSlice<bf16>> = (0..sets).map(|_| zeros(n)).collect();
        run_case(c, "permute", "unpermute_norm", &shape, t, 10 * n + 4 * t, |i| {
            let i = i % sets;
            unpermute_add_rmsnorm(
                stream(),
                &Tensor::of(&ys[i], [t, h]).unwrap(),
                &dt,
                None,
                Some(&Tensor::of(&shared[i], [t, h]).unwrap()),
                &mut TensorMut::of(&mut res[i], [t, h]).unwrap(),
                &nwt,
                1e-5,
                &mut TensorMut::of(&mut yn[i], [t, h]).unwrap(),
                None,
            )
            .unwrap()
        });
        run_case(c, "permute", "unpermute_then_norm", &shape, t, 14 * n + 4 * t, |i| {
            let i = i % sets;
            unpermute_into(i, &mut outs[i]);
            add_rmsnorm(
                stream(),
                &Tensor::of(&outs[i], [t, h]).unwrap(),
                &mut TensorMut::of(&mut res[i], [t, h]).unwrap(),
                &nwt,
                1e-5,
                &mut TensorMut::of(&mut yn[i], [t, h]).unwrap(),
            )
            .unwrap()
        });
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
