//! attention_prefill/<mask>/<shape>: Llama 4 attention (40 query heads over 8 KV heads, head_dim 128, bf16) over
//! a paged cache (64-slot blocks, shuffled block table). FLOPs count only the unmasked work: 4 * heads * d per
//! visible (query, key) pair (QK^T and PV), the convention FlashAttention and the peers' figures use. Peers
//! (PyTorch SDPA cuDNN / flash for causal, FlexAttention for chunked) in bench/peers/torch_attention_prefill.py.
mod common;
use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use llama4_kernels::attention::{default_scale, Mask, PagedKv, QueryBatch};
use llama4_kernels::attention_prefill::{attention_prefill, key_tile_path};
use llama4_kernels::{Tensor, TensorMut};
use rand::seq::SliceRandom;
use rand::SeedableRng;

const BLOCK: usize = 64;

/// Visible (query, key) pairs of a query at each of positions seq_len - q_len .. seq_len.
fn pairs(seq_len: usize, q_len: usize, mask: Mask) -> usize {
    (seq_len - q_len..seq_len)
        .map(|q| match mask {
            Mask::Causal => q + 1,
            Mask::Chunked { chunk } => q % chunk + 1,
        })
        .sum()
}

/// (variant, shape, [(seq_len, q_len)], mask)
type Case = (&'static str, String, Vec<(usize, usize)>, Mask);

fn cases() -> Vec<Case> {
    vec![
        ("causal", "S8192_B1".into(), vec![(8192, 8192)], Mask::Causal),
        ("chunked", "S32768_C8192_B1".into(), vec![(32768, 32768)], Mask::Chunked { chunk: 8192 }),
        ("causal", "S32768_B1".into(), vec![(32768, 32768)], Mask::Causal),
        ("causal", "S2048_B4".into(), vec![(2048, 2048); 4], Mask::Causal),
        ("causal", "continue_Q2048_K10240_B1".into(), vec![(10240, 2048)], Mask::Causal),
    ]
}

fn bench(c: &mut Criterion) {
    let (hq, hkv, d) = (N_HEADS, N_KV_HEADS, HEAD_DIM);
    let mut r = rand::rngs::StdRng::seed_from_u64(5);
    for (variant, shape, seqs, mask) in cases() {
        let batch = seqs.len();
        let total_q: usize = seqs.iter().map(|s| s.1).sum();
        let max_blocks = seqs.iter().map(|s| s.0.div_ceil(BLOCK)).max().unwrap();
        let n_blocks = batch * max_blocks;
        let slots = n_blocks * BLOCK;
        let mut ids: Vec<i32> = (0..n_blocks as i32).collect();
        ids.shuffle(&mut r);
        let cu: Vec<i32> = std::iter::once(0)
            .chain(seqs.iter().scan(0, |acc, s| {
                *acc += s.1 as i32;
                Some(*acc)
            }))
            .collect();
        let lens: Vec<i32> = seqs.iter().map(|s| s.0 as i32).collect();
        let q = rand_bf16(total_q * hq * d, 1);
        let k = rand_bf16(slots * hkv * d, 2);
        let v = rand_bf16(slots * hkv * d, 3);
        let (dcu, dlen, dtab) = (
            stream().clone_htod(&cu).unwrap(),
            stream().clone_htod(&lens).unwrap(),
            stream().clone_htod(&ids).unwrap(),
        );
        let mut out = zeros(total_q * hq * d);
        let qt = Tensor::of(&q, [total_q, hq, d]).unwrap();
        let (kt, vt) = (Tensor::of(&k, [slots, hkv, d]).unwrap(), Tensor::of(&v, [slots, hkv, d]).unwrap());
        let cut = Tensor::of(&dcu, [batch + 1]).unwrap();
        let lt = Tensor::of(&dlen, [batch]).unwrap();
        let tt = Tensor::of(&dtab, [batch, max_blocks]).unwrap();
        let max_q_len = seqs.iter().map(|s| s.1).max().unwrap();
        let queries = QueryBatch { q: &qt, cu_seqlens: &cut, max_q_len };
        let kv = PagedKv { k: &kt, v: &vt, block_table: &tt, seq_lens: &lt, block_size: BLOCK };
        // The path is part of the figure: a cp.async fallback would show here, not only as a slower time.
        println!("attention_prefill/{variant}/{shape}: key tiles by {:?}", key_tile_path(stream(), &kv, mask).unwrap());
        let flops = seqs.iter().map(|&(s, ql)| pairs(s, ql, mask)).sum::<usize>() * 4 * hq * d;
        let kv_read: usize = seqs.iter().map(|s| s.0).sum::<usize>() * hkv * d * 2 * 2;
        let bytes = 2 * total_q * hq * d * 2 + kv_read;
        run_gemm_case(c, "attention_prefill", variant, &shape, total_q, bytes, Flops::bf16(flops), |_| {
            attention_prefill(
                stream(),
                &queries,
                &kv,
                mask,
                default_scale(d),
                &mut TensorMut::of(&mut out, [total_q, hq, d]).unwrap(),
                None,
            )
            .unwrap()
        });
    }
}

criterion_group! { name = benches; config = criterion(); targets = bench }
criterion_main!(benches);
