//! rope/{rope_qknorm,nope_temp}/<tokens>x40x8x128: the fused q/k/v projection read once; q, k and v written
//! once (k/v into cache slots in order).
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use llama4_kernels::rope::{inv_freq, rope_qkv, HeadLayout, LayerKind, Llama3Scaling, Temperature};
use llama4_kernels::{Tensor, TensorMut};

fn bench(c: &mut Criterion) {
    let layout = HeadLayout { n_heads: N_HEADS, n_kv_heads: N_KV_HEADS, head_dim: HEAD_DIM };
    let width = (N_HEADS + 2 * N_KV_HEADS) * HEAD_DIM;
    let scout = Llama3Scaling {
        factor: 16.0,
        low_freq_factor: 1.0,
        high_freq_factor: 1.0,
        original_max_position_embeddings: 8192.0,
    };
    let kinds = [
        (
            "rope_qknorm",
            LayerKind::Rope { inv_freq: inv_freq(500000.0, HEAD_DIM, Some(scout)).unwrap(), qk_norm: Some(1e-5) },
        ),
        ("nope_temp", LayerKind::NoPe { temperature: Some(Temperature { floor_scale: 8192.0, attn_scale: 0.1 }) }),
    ];
    for t in TOKENS {
        let k = rotation(2 * t * width * 2);
        let qkvs: Vec<_> = (0..k).map(|i| rand_bf16(t * width, i as u64)).collect();
        // Positions of a long prefill (or decode far into the context): they decide the RoPE angles.
        let pos: Vec<i32> = (0..t as i32).map(|p| 30000 + p).collect();
        let slots: Vec<i64> = (0..t as i64).collect();
        let (dpos, dslots) = (stream().clone_htod(&pos).unwrap(), stream().clone_htod(&slots).unwrap());
        let mut qs: Vec<_> = (0..k).map(|_| zeros(t * N_HEADS * HEAD_DIM)).collect();
        let mut kcs: Vec<_> = (0..k).map(|_| zeros(t * N_KV_HEADS * HEAD_DIM)).collect();
        let mut vcs: Vec<_> = (0..k).map(|_| zeros(t * N_KV_HEADS * HEAD_DIM)).collect();
        let bytes = 2 * t * width * 2 + t * 12;
        for (name, kind) in &kinds {
            run_case(c, "rope", name, &format!("{t}x{N_HEADS}x{N_KV_HEADS}x{HEAD_DIM}"), t, bytes, |i| {
                let i = i % k;
                rope_qkv(
                    stream(),
                    &Tensor::of(&qkvs[i], [t, width]).unwrap(),
                    &Tensor::of(&dpos, [t]).unwrap(),
                    &Tensor::of(&dslots, [t]).unwrap(),
                    layout,
                    kind,
                    &mut TensorMut::of(&mut qs[i], [t, N_HEADS, HEAD_DIM]).unwrap(),
                    &mut TensorMut::of(&mut kcs[i], [t, N_KV_HEADS, HEAD_DIM]).unwrap(),
                    &mut TensorMut::of(&mut vcs[i], [t, N_KV_HEADS, HEAD_DIM]).unwrap(),
                    None,
                )
                .unwrap()
            });
        }
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
