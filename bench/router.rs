//! router/{sigmoid_top1,sigmoid_top2,softmax_top8}/<tokens>xE<experts>: ids, weights, counts, offsets and destinations from
//! bf16 logits. Latency-bound; bytes = logits read + ids, weights, dest written + dest re-read and rewritten by
//! the fix-up kernel + ids read there + counts and offsets (the [tiles, E] workspace histogram, a few KB, is
//! left out).
//! route_fp8/{fused,three_launches}/<tokens>xE<experts>xH<hidden>: decode routing from the normed hidden states,
//! router logits + routing + the scaled FP8 expert inputs, as route_fp8's one launch and as the three it fuses
//! (the GEMV schedule of linear_bf16, router, permute_fp8). Bytes = the router weight + x read, the FP8 rows
//! and scales written (latency-bound: the figure to read is the time).
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use llama4_kernels::linear::{Blas, LinearSchedule, LINEAR_WORKSPACE_BYTES};
use llama4_kernels::permute::permute_fp8;
use llama4_kernels::router::{
    route_fp8, route_fp8_workspace_size, router, router_workspace_size, RouterKind, RouterOutputs,
};
use llama4_kernels::{bf16, Tensor, TensorMut, E4M3};

const ROUTER_TOKENS: [usize; 5] = [1, 64, 512, 4096, 16384];

fn bench(c: &mut Criterion) {
    let cases = [
        (16, RouterKind::SigmoidTop1, "sigmoid_top1"),
        (128, RouterKind::SigmoidTop1, "sigmoid_top1"),
        (128, RouterKind::SigmoidTopK { k: 2 }, "sigmoid_top2"),
        (128, RouterKind::SoftmaxTopK { k: 8, renormalize: true }, "softmax_top8"),
    ];
    for (e, kind, variant) in cases {
        for t in ROUTER_TOKENS {
            let k = kind.k();
            let sets = rotation(2 * t * e);
            let logits: Vec<_> = (0..sets).map(|i| rand_bf16(t * e, 7 + i as u64)).collect();
            let (mut ids, mut w, mut de) = (zeros::<i32>(t * k), zeros::<f32>(t * k), zeros::<i32>(t * k));
            let (mut counts, mut offsets) = (zeros::<i32>(e), zeros::<i32>(e + 1));
            let mut ws = zeros::<u8>(router_workspace_size::<bf16>(t, e).unwrap());
            let bytes = 2 * t * e + 4 * t * k * 6 + 4 * (2 * e + 1);
            run_case(c, "router", variant, &format!("{t}xE{e}"), t, bytes, |i| {
                let out = RouterOutputs {
                    ids: &mut TensorMut::of(&mut ids, [t, k]).unwrap(),
                    weights: &mut TensorMut::of(&mut w, [t, k]).unwrap(),
                    counts: &mut TensorMut::of(&mut counts, [e]).unwrap(),
                    offsets: &mut TensorMut::of(&mut offsets, [e + 1]).unwrap(),
                    dest: &mut TensorMut::of(&mut de, [t, k]).unwrap(),
                };
                router(stream(), &Tensor::of(&logits[i % sets], [t, e]).unwrap(), kind, 1, out, &mut ws.as_view_mut())
                    .unwrap()
            });
        }
    }
}

fn bench_route(c: &mut Criterion) {
    let blas = Blas::new(stream()).unwrap_or_else(|e| panic!("route bench: {e}"));
    let h = 5120;
    for (t, e) in [(1, 16), (8, 16), (1, 128), (8, 128)] {
        let kind = RouterKind::SigmoidTop1;
        let k = kind.k();
        let (x, w) = (rand_bf16(t * h, 3), rand_bf16(e * h, 4));
        let mut logits = zeros::<bf16>(t * e);
        let (mut ids, mut wt, mut de) = (zeros::<i32>(t * k), zeros::<f32>(t * k), zeros::<i32>(t * k));
        let (mut counts, mut offsets) = (zeros::<i32>(e), zeros::<i32>(e + 1));
        let (mut q, mut scales) = (zeros::<E4M3>(t * k * h), zeros::<f32>(t * k));
        let mut ws =
            zeros::<u8>(route_fp8_workspace_size(e).unwrap().max(router_workspace_size::<bf16>(t, e).unwrap()));
        let mut lws = zeros::<u8>(LINEAR_WORKSPACE_BYTES);
        let bytes = 2 * e * h + 2 * t * h + t * k * (h + 4);
        let shape = format!("{t}xE{e}xH{h}");
        for fused in [true, false] {
            run_case(c, "route_fp8", if fused { "fused" } else { "three_launches" }, &shape, t, bytes, |_| {
                let s = stream();
                let out = RouterOutputs {
                    ids: &mut TensorMut::of(&mut ids, [t, k]).unwrap(),
                    weights: &mut TensorMut::of(&mut wt, [t, k]).unwrap(),
                    counts: &mut TensorMut::of(&mut counts, [e]).unwrap(),
                    offsets: &mut TensorMut::of(&mut offsets, [e + 1]).unwrap(),
                    dest: &mut TensorMut::of(&mut de, [t, k]).unwrap(),
                };
                let (xt, wtn) = (Tensor::of(&x, [t, h]).unwrap(), Tensor::of(&w, [e, h]).unwrap());
                if fused {
                    let (lt, qt, st) = (
                        &mut TensorMut::of(&mut logits, [t, e]).unwrap(),
                        &mut TensorMut::of(&mut q, [t * k, h]).unwrap(),
                        &mut TensorMut::of(&mut scales, [t * k]).unwrap(),
                    );
                    route_fp8(s, &xt, &wtn, kind, lt, out, qt, st, &mut ws.as_view_mut()).unwrap();
                    return;
                }
                let lw = &mut TensorMut::of(&mut lws, [LINEAR_WORKSPACE_BYTES]).unwrap();
                let lt = &mut TensorMut::of(&mut logits, [t, e]).unwrap();
                blas.linear_bf16_with(s, &xt, &wtn, lt, lw, LinearSchedule::Gemv).unwrap();
                router(s, &Tensor::of(&logits, [t, e]).unwrap(), kind, 1, out, &mut ws.as_view_mut()).unwrap();
                let (dt, wts) = (Tensor::of(&de, [t, k]).unwrap(), Tensor::of(&wt, [t, k]).unwrap());
                let (qt, st) = (
                    &mut TensorMut::of(&mut q, [t * k, h]).unwrap(),
                    &mut TensorMut::of(&mut scales, [t * k]).unwrap(),
                );
                permute_fp8(s, &xt, &dt, Some(&wts), None, qt, st).unwrap();
            });
        }
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench, bench_route }
criterion_main!(benches);
