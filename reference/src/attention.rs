//! Scaled dot-product attention with grouped KV heads, as Hugging Face's Llama 4 `eager_attention_forward`
//! computes it, for the two masks of the model contract:
//! - [`Mask::Causal`] (NoPE layers): key position `k` is visible from query position `q` iff `k <= q`;
//! - [`Mask::Chunked`] (RoPE layers): additionally `k / C == q / C`, so the first token of a chunk sees
//!   only itself and a query never needs more than `C - 1` earlier keys.
//!
//! Positions are absolute (0-based token index in the sequence), so the same function serves prefill
//! (`q_pos == k_pos`) and decode against a KV cache (`q_pos` a suffix of `k_pos`).
//!
//! Rounding in the activation dtype, step by step as PyTorch does it:
//! `scores = round(round(q k^T) * scaling)`, masked keys dropped (HF adds the dtype's minimum, which
//! underflows to exactly 0 after the softmax), `probs = round(softmax_f32(scores))`,
//! `out = round(probs @ v)`. Dot products and sums are f64 so the oracle beats any f32 kernel.

use crate::dtype::Precision;
use ndarray::{Array3, ArrayView3};
use std::ops::Range;

pub use llama4_contract::Mask;

/// Whether a query at absolute position `q_pos` sees the key at absolute position `k_pos`.
///
/// Panics on `Mask::Chunked { chunk: 0 }`.
pub fn visible(mask: Mask, q_pos: usize, k_pos: usize) -> bool {
    match mask {
        Mask::Causal => k_pos <= q_pos,
        Mask::Chunked { chunk } => {
            assert!(chunk > 0, "attention: chunk size must be positive");
            k_pos <= q_pos && k_pos / chunk == q_pos / chunk
        }
    }
}

/// The key positions `[lo, hi)` a query at `q_pos` can see: every mask here allows a contiguous range
/// ending at the query itself, which is what a kernel's key-block loop bounds are computed from.
///
/// Panics on `Mask::Chunked { chunk: 0 }`.
pub fn key_range(mask: Mask, q_pos: usize) -> Range<usize> {
    match mask {
        Mask::Causal => 0..q_pos + 1,
        Mask::Chunked { chunk } => {
            assert!(chunk > 0, "attention: chunk size must be positive");
            (q_pos / chunk) * chunk..q_pos + 1
        }
    }
}

/// Attention of `q` [T, Hq, D] at positions `q_pos` over `k`, `v` [S, Hkv, D] at positions `k_pos`;
/// query head `h` reads KV head `h / (Hq / Hkv)`. Returns [T, Hq, D].
///
/// Panics with a message on inconsistent shapes (position counts, K vs V, head_dim, Hq not a multiple of
/// Hkv) and on a query that sees no key (impossible for these masks when `k_pos` contains `q_pos`).
pub fn attention(
    q: ArrayView3<f32>,
    k: ArrayView3<f32>,
    v: ArrayView3<f32>,
    q_pos: &[usize],
    k_pos: &[usize],
    mask: Mask,
    p: Precision,
) -> Array3<f32> {
    let (t, n_heads, d) = q.dim();
    let (s, n_kv, dk) = k.dim();
    assert_eq!(q_pos.len(), t, "attention: {} query positions for {t} queries", q_pos.len());
    assert_eq!(k_pos.len(), s, "attention: {} key positions for {s} keys", k_pos.len());
    assert_eq!(k.dim(), v.dim(), "attention: k is {:?} but v is {:?}", k.dim(), v.dim());
    assert_eq!(dk, d, "attention: q head_dim {d} but k head_dim {dk}");
    assert!(n_kv > 0 && n_heads % n_kv == 0, "attention: {n_heads} query heads is not a multiple of {n_kv} KV heads");
    let group = n_heads / n_kv;
    // head_dim ** -0.5 as a Python float (f64), applied to the f32 scores as an f32 scalar.
    let scaling = (1.0 / (d as f64).sqrt()) as f32;

    let mut out = Array3::zeros((t, n_heads, d));
    let mut keys: Vec<usize> = Vec::with_capacity(s);
    let mut scores: Vec<f32> = Vec::with_capacity(s);
    for ti in 0..t {
        keys.clear();
        keys.extend((0..s).filter(|&si| visible(mask, q_pos[ti], k_pos[si])));
        assert!(!keys.is_empty(), "attention: query {ti} at position {} sees no key under {mask:?}", q_pos[ti]);
        for h in 0..n_heads {
            let kv = h / group;
            scores.clear();
            scores.extend(keys.iter().map(|&si| {
                let dot: f64 = (0..d).map(|j| q[[ti, h, j]] as f64 * k[[si, kv, j]] as f64).sum();
                p.round(p.round(dot as f32) * scaling)
            }));
            let probs = softmax(&scores, p);
            for j in 0..d {
                let acc: f64 = keys.iter().zip(&probs).map(|(&si, &pr)| pr as f64 * v[[si, kv, j]] as f64).sum();
                out[[ti, h, j]] = p.round(acc as f32);
            }
        }
    }
    out
}

/// Softmax of one row in f32 (max subtracted first, the denominator summed in f64), each probability
/// rounded by `p` (bf16 softmax in PyTorch computes in f32 and writes bf16).
fn softmax(scores: &[f32], p: Precision) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|&x| (x - max).exp()).collect();
    let sum: f64 = exps.iter().map(|&e| e as f64).sum();
    exps.iter().map(|&e| p.round((e as f64 / sum) as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::round_bf16;
    use ndarray::{s, Array3};
    use proptest::prelude::*;

    fn filled(shape: (usize, usize, usize), seed: f32) -> Array3<f32> {
        Array3::from_shape_fn(shape, |(a, b, c)| round_bf16(((a * 13 + b * 7 + c) as f32 * 0.37 + seed).sin()))
    }

    /// The textbook formula in f64: dense scores, -inf on masked entries, softmax, weighted sum.
    fn dense_f64(q: &Array3<f32>, k: &Array3<f32>, v: &Array3<f32>, pos: &[usize], mask: Mask) -> Array3<f64> {
        let (t, hq, d) = q.dim();
        let hkv = k.dim().1;
        Array3::from_shape_fn((t, hq, d), |(ti, h, j)| {
            let kv = h * hkv / hq;
            let sc: Vec<f64> = (0..k.dim().0)
                .map(|si| {
                    if !visible(mask, pos[ti], pos[si]) {
                        return f64::NEG_INFINITY;
                    }
                    let dot: f64 = (0..d).map(|c| q[[ti, h, c]] as f64 * k[[si, kv, c]] as f64).sum();
                    dot / (d as f64).sqrt()
                })
                .collect();
            let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|&x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            (0..sc.len()).map(|si| e[si] / z * v[[si, kv, j]] as f64).sum()
        })
    }

    #[test]
    fn masks_by_hand() {
        let c = Mask::Chunked { chunk: 4 };
        assert!(visible(Mask::Causal, 5, 0) && visible(Mask::Causal, 5, 5));
        assert!(!visible(Mask::Causal, 5, 6));
        assert!(visible(c, 5, 4) && !visible(c, 5, 3) && !visible(c, 3, 4));
        assert_eq!(key_range(c, 4), 4..5); // first token of a chunk sees only itself
        assert_eq!(key_range(c, 7), 4..8);
        assert_eq!(key_range(Mask::Causal, 7), 0..8);
        assert_eq!(key_range(Mask::Chunked { chunk: 1 }, 9), 9..10);
    }

    #[test]
    fn matches_the_dense_formula_in_f32() {
        let (t, hq, hkv, d) = (7, 4, 2, 8);
        let (q, k, v) = (filled((t, hq, d), 0.1), filled((t, hkv, d), 0.2), filled((t, hkv, d), 0.3));
        let pos: Vec<usize> = (0..t).collect();
        for mask in [Mask::Causal, Mask::Chunked { chunk: 3 }] {
            let got = attention(q.view(), k.view(), v.view(), &pos, &pos, mask, Precision::F32);
            let want = dense_f64(&q, &k, &v, &pos, mask);
            for (idx, &w) in want.indexed_iter() {
                assert!((got[idx] as f64 - w).abs() < 1e-5, "{mask:?} {idx:?}: {} vs {w}", got[idx]);
            }
        }
    }

    #[test]
    fn gqa_equals_explicitly_repeated_kv_heads() {
        let (t, hq, hkv, d) = (5, 6, 2, 4);
        let (q, k, v) = (filled((t, hq, d), 1.0), filled((t, hkv, d), 2.0), filled((t, hkv, d), 3.0));
        let rep = |x: &Array3<f32>| Array3::from_shape_fn((t, hq, d), |(a, h, c)| x[[a, h / 3, c]]);
        let pos: Vec<usize> = (0..t).collect();
        for p in [Precision::F32, Precision::Bf16] {
            let a = attention(q.view(), k.view(), v.view(), &pos, &pos, Mask::Causal, p);
            let b = attention(q.view(), rep(&k).view(), rep(&v).view(), &pos, &pos, Mask::Causal, p);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn lone_visible_key_returns_its_value_exactly() {
        // Position 4 with chunk 4 starts a chunk: probability 1 on itself, so out == v even in bf16.
        let (q, k, v) = (filled((5, 2, 4), 0.5), filled((5, 1, 4), 0.6), filled((5, 1, 4), 0.7));
        let pos: Vec<usize> = (0..5).collect();
        let mask = Mask::Chunked { chunk: 4 };
        let out = attention(q.view(), k.view(), v.view(), &pos, &pos, mask, Precision::Bf16);
        for h in 0..2 {
            assert_eq!(out.slice(s![4, h, ..]), v.slice(s![4, 0, ..]));
            assert_eq!(out.slice(s![0, h, ..]), v.slice(s![0, 0, ..]));
        }
    }

    #[test]
    fn decode_row_matches_the_prefill_row() {
        let (t, hq, hkv, d) = (9, 4, 1, 8);
        let (q, k, v) = (filled((t, hq, d), 0.4), filled((t, hkv, d), 0.8), filled((t, hkv, d), 1.2));
        let pos: Vec<usize> = (0..t).collect();
        for mask in [Mask::Causal, Mask::Chunked { chunk: 4 }] {
            let full = attention(q.view(), k.view(), v.view(), &pos, &pos, mask, Precision::Bf16);
            let one =
                attention(q.slice(s![t - 1.., .., ..]), k.view(), v.view(), &pos[t - 1..], &pos, mask, Precision::Bf16);
            assert_eq!(one.slice(s![0, .., ..]), full.slice(s![t - 1, .., ..]));
        }
    }

    #[test]
    fn bf16_output_is_bf16() {
        let (q, k, v) = (filled((6, 2, 8), 0.9), filled((6, 2, 8), 1.1), filled((6, 2, 8), 1.3));
        let pos: Vec<usize> = (0..6).collect();
        let out = attention(q.view(), k.view(), v.view(), &pos, &pos, Mask::Causal, Precision::Bf16);
        assert!(out.iter().all(|&x| round_bf16(x) == x));
    }

    #[test]
    #[should_panic(expected = "sees no key")]
    fn query_without_visible_key_panics() {
        let (q, k) = (filled((1, 1, 2), 0.0), filled((1, 1, 2), 0.0));
        attention(q.view(), k.view(), k.view(), &[0], &[1], Mask::Causal, Precision::F32);
    }

    #[test]
    #[should_panic(expected = "not a multiple")]
    fn bad_head_ratio_panics() {
        let (q, k) = (filled((1, 3, 2), 0.0), filled((1, 2, 2), 0.0));
        attention(q.view(), k.view(), k.view(), &[0], &[0], Mask::Causal, Precision::F32);
    }

    proptest! {
        #[test]
        fn key_range_is_exactly_the_visible_set(q_pos in 0usize..200, chunk in 1usize..40) {
            for mask in [Mask::Causal, Mask::Chunked { chunk }] {
                let r = key_range(mask, q_pos);
                for k_pos in 0..q_pos + 50 {
                    let v = visible(mask, q_pos, k_pos);
                    prop_assert_eq!(r.contains(&k_pos), v, "{:?} {}", mask, k_pos);
                }
                prop_assert!(r.contains(&q_pos));
                if let Mask::Chunked { chunk } = mask {
                    prop_assert!(r.len() <= chunk);
                }
            }
        }
    }
}
