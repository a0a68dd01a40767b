//! attention_decode/<variant>/b<batch>_l<len>_h40x8_d128: one query per sequence over a cache of `len` keys
//! per sequence (every sequence full length), 40/8 heads, head_dim 128, global causal mask (a chunked layer
//! at C = 8192 reads the same keys at these lengths). Variants: `causal` with 256-slot blocks (paged, each
//! block 64 KiB contiguous per head set), `causal_bs16` with 16-slot blocks (vLLM's default page). Block ids
//! are shuffled. Bytes, counted as the peer counts them: K and V read once, q read and out written.
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use llama4_kernels::attention::{default_scale, Mask, PagedKv, QueryBatch};
use llama4_kernels::attention_decode::{attention_decode, splits, workspace_size, DecodeShape};
use llama4_kernels::{bf16, Tensor, TensorMut};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// (batch, cached tokens per sequence): the two judged shapes, and a short-context one.
const SHAPES: [(usize, usize); 3] = [(64, 8192), (8, 32768), (64, 1024)];

fn bench(c: &mut Criterion) {
    let (h, kvh, d) = (N_HEADS, N_KV_HEADS, HEAD_DIM);
    for (batch, len) in SHAPES {
        for (variant, bs) in [("causal", 256usize), ("causal_bs16", 16)] {
            let blocks_per = len.div_ceil(bs);
            let n_blocks = batch * blocks_per;
            let slots = n_blocks * bs;
            let k = rand_bf16(slots * kvh * d, 1);
            let v = rand_bf16(slots * kvh * d, 2);
            let q = rand_bf16(batch * h * d, 3);
            let mut ids: Vec<i32> = (0..n_blocks as i32).collect();
            ids.shuffle(&mut rand::rngs::StdRng::seed_from_u64(4));
            let table = stream().clone_htod(&ids).unwrap();
            let lens = stream().clone_htod(&vec![len as i32; batch]).unwrap();
            let cu = stream().clone_htod(&(0..=batch as i32).collect::<Vec<_>>()).unwrap();
            let mut out = zeros::<bf16>(batch * h * d);
            let shape = DecodeShape {
                batch,
                n_heads: h,
                n_kv_heads: kvh,
                head_dim: d,
                max_q_len: 1,
                max_kv_len: blocks_per * bs,
                mask: Mask::Causal,
            };
            let ws_len = workspace_size(shape).unwrap().max(1);
            let mut ws = zeros::<u8>(ws_len);
            let qt = Tensor::of(&q, [batch, h, d]).unwrap();
            let (kt, vt) = (Tensor::of(&k, [slots, kvh, d]).unwrap(), Tensor::of(&v, [slots, kvh, d]).unwrap());
            let tt = Tensor::of(&table, [batch, blocks_per]).unwrap();
            let lt = Tensor::of(&lens, [batch]).unwrap();
            let ct = Tensor::of(&cu, [batch + 1]).unwrap();
            let bytes = 2 * batch * len * kvh * d * 2 + 2 * batch * h * d * 2;
            let name = format!("b{batch}_l{len}_h{h}x{kvh}_d{d}");
            println!("attention_decode/{variant}/{name}: {} key splits", splits(shape).unwrap());
            run_case(c, "attention_decode", variant, &name, batch, bytes, |_| {
                let queries = QueryBatch { q: &qt, cu_seqlens: &ct, max_q_len: 1 };
                let kv = PagedKv { k: &kt, v: &vt, block_table: &tt, seq_lens: &lt, block_size: bs };
                attention_decode(
                    stream(),
                    &queries,
                    &kv,
                    Mask::Causal,
                    default_scale(d),
                    &mut TensorMut::of(&mut out, [batch, h, d]).unwrap(),
                    &mut TensorMut::of(&mut ws, [ws_len]).unwrap(),
                    None,
                )
                .unwrap()
            });
        }
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
