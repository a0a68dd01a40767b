//! router/{sigmoid_top1,sigmoid_top2,softmax_top8}/<tokens>xE<experts>: ids, weights, counts, offsets and destinations from
//! bf16 logits. Latency-bound; bytes = logits read + ids, weights, dest written + dest re-read and rewritten by
//! the fix-up kernel + ids read there + counts and offsets (the [tiles, E] workspace histogram, a few KB, is
//! left out).
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use llama4_kernels::router::{router, router_workspace_size, RouterKind, RouterOutputs};
use llama4_kernels::{bf16, Tensor, TensorMut};

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

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
