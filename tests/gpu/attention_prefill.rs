//! Prefill attention against llama4_reference::attention on random batches: lengths from 1, around chunk
//! boundaries and off every tile size; fresh and continued prefill; causal and chunked masks (C = 1, 7, 64, 8192);
//! GQA ratios 1, 5, 8; head_dim 64 and 128; paged caches with shuffled block tables whose unused slots hold NaN
//! (a read outside the sequence's keys shows up in the output). Outputs start as NaN.
use crate::common::*;
use cudarc::driver::CudaSlice;
use llama4_kernels::attention::{default_scale, Mask, PagedKv, QueryBatch};
use llama4_kernels::attention_prefill::{attention_prefill, key_tile_path, KeyTilePath};
use llama4_kernels::{bf16, Error, Tensor, TensorMut};
use llama4_reference::attention as reference;
use llama4_reference::check::{rel_l2, TOL_BF16};
use llama4_reference::Precision;
use ndarray::Array3;
use proptest::prelude::*;
use rand::seq::SliceRandom;

#[derive(Clone, Debug)]
struct Case {
    /// (seq_len, q_len) per sequence.
    seqs: Vec<(usize, usize)>,
    n_kv: usize,
    ratio: usize,
    d: usize,
    mask: Mask,
    block_size: usize,
    seed: u64,
}

/// Host copy of a batch laid out in a paged cache.
struct Batch {
    q: Vec<f32>,
    k: Vec<Vec<f32>>, // per sequence [seq_len, n_kv, d]
    v: Vec<Vec<f32>>,
    cache_k: Vec<f32>,
    cache_v: Vec<f32>,
    table: Vec<i32>,
    max_blocks: usize,
    slots: usize,
    cu: Vec<i32>,
}

fn make(c: &Case, spare_rows: usize) -> Batch {
    let mut r = rng(c.seed);
    let (hq, hkv, d, bs) = (c.n_kv * c.ratio, c.n_kv, c.d, c.block_size);
    let total_q: usize = c.seqs.iter().map(|s| s.1).sum::<usize>() + spare_rows;
    let q = rand_bf16(&mut r, total_q * hq * d, 2.0);
    let max_blocks = c.seqs.iter().map(|s| s.0.div_ceil(bs)).max().unwrap_or(0).max(1);
    let used: usize = c.seqs.iter().map(|s| s.0.div_ceil(bs)).sum();
    let n_blocks = used + 3; // a few blocks nobody owns
    let slots = n_blocks * bs;
    let mut ids: Vec<i32> = (0..n_blocks as i32).collect();
    ids.shuffle(&mut r);
    let row = hkv * d;
    let mut cache_k = vec![f32::NAN; slots * row];
    let mut cache_v = vec![f32::NAN; slots * row];
    let mut table = vec![-1i32; c.seqs.len() * max_blocks];
    let (mut ks, mut vs) = (Vec::new(), Vec::new());
    let mut next = 0;
    for (b, &(len, _)) in c.seqs.iter().enumerate() {
        let k = rand_bf16(&mut r, len * row, 2.0);
        let v = rand_bf16(&mut r, len * row, 1.0);
        for blk in 0..len.div_ceil(bs) {
            table[b * max_blocks + blk] = ids[next];
            next += 1;
        }
        for p in 0..len {
            let slot = table[b * max_blocks + p / bs] as usize * bs + p % bs;
            cache_k[slot * row..(slot + 1) * row].copy_from_slice(&k[p * row..(p + 1) * row]);
            cache_v[slot * row..(slot + 1) * row].copy_from_slice(&v[p * row..(p + 1) * row]);
        }
        ks.push(k);
        vs.push(v);
    }
    let mut cu = vec![0i32];
    for s in &c.seqs {
        cu.push(cu.last().unwrap() + s.1 as i32);
    }
    Batch { q, k: ks, v: vs, cache_k, cache_v, table, max_blocks, slots, cu }
}

/// The reference rows of sequence b: [q_len, hq, d].
fn reference_rows(c: &Case, bt: &Batch, b: usize) -> Vec<f32> {
    let (hq, hkv, d) = (c.n_kv * c.ratio, c.n_kv, c.d);
    let (len, q_len) = c.seqs[b];
    let q0 = bt.cu[b] as usize;
    let q = Array3::from_shape_vec((q_len, hq, d), bt.q[q0 * hq * d..(q0 + q_len) * hq * d].to_vec()).unwrap();
    let k = Array3::from_shape_vec((len, hkv, d), bt.k[b].clone()).unwrap();
    let v = Array3::from_shape_vec((len, hkv, d), bt.v[b].clone()).unwrap();
    let q_pos: Vec<usize> = (len - q_len..len).collect();
    let k_pos: Vec<usize> = (0..len).collect();
    let out = reference::attention(q.view(), k.view(), v.view(), &q_pos, &k_pos, c.mask, Precision::Bf16);
    out.into_raw_vec_and_offset().0
}

/// Runs the op; returns (out, bad_seqs counter).
fn run_device(c: &Case, bt: &Batch, seq_lens: &[i32], table: &[i32], spare_rows: usize) -> (Vec<f32>, u32) {
    let (hq, hkv, d) = (c.n_kv * c.ratio, c.n_kv, c.d);
    let total_q = *bt.cu.last().unwrap() as usize + spare_rows;
    let batch = c.seqs.len();
    let dq = upload_bf16(&bt.q);
    let (dk, dv) = (upload_bf16(&bt.cache_k), upload_bf16(&bt.cache_v));
    let dcu = upload(&bt.cu);
    let dlen = upload(seq_lens);
    let dtab = upload(table);
    let mut dout = poison_bf16(total_q * hq * d);
    let mut dbad: CudaSlice<u32> = upload(&[0u32]);
    let qt = Tensor::of(&dq, [total_q, hq, d]).unwrap();
    let kt = Tensor::of(&dk, [bt.slots, hkv, d]).unwrap();
    let vt = Tensor::of(&dv, [bt.slots, hkv, d]).unwrap();
    let cut = Tensor::of(&dcu, [batch + 1]).unwrap();
    let lt = Tensor::of(&dlen, [batch]).unwrap();
    let tt = Tensor::of(&dtab, [batch, bt.max_blocks]).unwrap();
    let max_q_len = c.seqs.iter().map(|s| s.1).max().unwrap_or(0);
    let queries = QueryBatch { q: &qt, cu_seqlens: &cut, max_q_len };
    let kv = PagedKv { k: &kt, v: &vt, block_table: &tt, seq_lens: &lt, block_size: c.block_size };
    {
        let mut ot = TensorMut::of(&mut dout, [total_q, hq, d]).unwrap();
        let mut bad = TensorMut::of(&mut dbad, [1]).unwrap();
        attention_prefill(stream(), &queries, &kv, c.mask, default_scale(d), &mut ot, Some(&mut bad)).unwrap();
    }
    (download_bf16(&dout), download(&dbad)[0])
}

fn check(c: &Case) {
    let spare = 2;
    let bt = make(c, spare);
    let seq_lens: Vec<i32> = c.seqs.iter().map(|s| s.0 as i32).collect();
    let row = c.n_kv * c.ratio * c.d;
    let want: Vec<Vec<f32>> = (0..c.seqs.len()).map(|b| reference_rows(c, &bt, b)).collect();
    let (out, bad) = run_device(c, &bt, &seq_lens, &bt.table, spare);
    assert_eq!(bad, 0, "{c:?}: bad_seqs bumped on good metadata");
    for (b, want) in want.iter().enumerate() {
        let q0 = bt.cu[b] as usize;
        let got = &out[q0 * row..(q0 + c.seqs[b].1) * row];
        assert!(got.iter().all(|x| x.is_finite()), "{c:?}: sequence {b} has NaN/inf outputs");
        let err = rel_l2(got, want).unwrap();
        assert!(err <= TOL_BF16, "{c:?}: sequence {b}: relative L2 {err:.3e}");
    }
    let end = *bt.cu.last().unwrap() as usize * row;
    assert!(out[end..].iter().all(|x| x.is_nan()), "{c:?}: rows past the batch were written");
}

fn mask_strategy() -> impl Strategy<Value = Mask> {
    prop_oneof![
        Just(Mask::Causal),
        Just(Mask::Chunked { chunk: 1 }),
        Just(Mask::Chunked { chunk: 7 }),
        Just(Mask::Chunked { chunk: 64 }),
        Just(Mask::Chunked { chunk: 8192 }),
    ]
}

fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..300,
        Just(1usize),
        (1usize..5, 0usize..3).prop_map(|(k, e)| 64 * k + e - 1),
        (1usize..30).prop_map(|k| 7 * k),
        (1usize..3, 0usize..3).prop_map(|(k, e)| 128 * k + e - 1),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let seq = (len_strategy(), any::<bool>(), 0.0f64..1.0)
        .prop_map(|(len, fresh, f)| (len, if fresh { len } else { (1 + (f * len as f64) as usize).min(len) }));
    (
        prop::collection::vec(seq, 1..=4),
        1usize..=2,
        prop::sample::select(vec![1usize, 5, 8]),
        prop::sample::select(vec![64usize, 128]),
        mask_strategy(),
        prop::sample::select(vec![1usize, 5, 16, 64]),
        any::<u64>(),
    )
        .prop_map(|(seqs, n_kv, ratio, d, mask, block_size, seed)| Case {
            seqs,
            n_kv,
            ratio,
            d,
            mask,
            block_size,
            seed,
        })
}

proptest! {
    #![proptest_config(cases(24))]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matches_reference_on_random_batches(c in case_strategy()) {
        check(&c);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn longer_sequences_both_masks() {
    // Block sizes of 64 and 128 with 64-aligned chunks take the TMA path of v4 TMA for their whole key tiles.
    for (mask, d, seqs, block_size) in [
        (Mask::Causal, 128, vec![(700, 700), (333, 120)], 16),
        (Mask::Chunked { chunk: 256 }, 128, vec![(700, 700), (600, 300)], 16),
        (Mask::Chunked { chunk: 100 }, 64, vec![(517, 517)], 16),
        (Mask::Causal, 128, vec![(900, 900), (520, 200)], 64),
        (Mask::Chunked { chunk: 384 }, 128, vec![(1000, 1000), (700, 350)], 128),
        (Mask::Causal, 64, vec![(640, 640), (300, 77)], 128),
    ] {
        check(&Case { seqs, n_kv: 2, ratio: 5, d, mask, block_size, seed: 7 });
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn llama4_heads_many_query_tiles() {
    // Llama 4's 40 / 8 heads over 3 sequences of up to 6 query tiles (some tiles empty for the shorter ones), block
    // size 64 (the TMA path) and 16 (cp.async), causal and chunked.
    for (mask, block_size) in [(Mask::Causal, 64), (Mask::Chunked { chunk: 256 }, 16)] {
        check(&Case {
            seqs: vec![(700, 700), (513, 200), (260, 260)],
            n_kv: 8,
            ratio: 5,
            d: 128,
            mask,
            block_size,
            seed: 11,
        });
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_metadata_skips_only_that_sequence() {
    let c = Case {
        seqs: vec![(150, 150), (90, 40), (200, 130)],
        n_kv: 1,
        ratio: 5,
        d: 128,
        mask: Mask::Chunked { chunk: 64 },
        block_size: 16,
        seed: 3,
    };
    let bt = make(&c, 0);
    let row = c.n_kv * c.ratio * c.d;
    let good_lens: Vec<i32> = c.seqs.iter().map(|s| s.0 as i32).collect();
    // (seq_lens, table) pairs that make sequence 1 bad, each a different rule.
    let mut bad_block = bt.table.clone();
    bad_block[bt.max_blocks + 2] = 1_000_000; // a block sequence 1 reads
    let mut neg_block = bt.table.clone();
    neg_block[bt.max_blocks + 5] = -3;
    let mut short = good_lens.clone();
    short[1] = 20; // q_len 40 > seq_len 20
    let mut long = good_lens.clone();
    long[1] = (bt.max_blocks * c.block_size + 1) as i32;
    let cases = [
        ("block id past the cache", &good_lens, &bad_block),
        ("negative block id", &good_lens, &neg_block),
        ("q_len > seq_len", &short, &bt.table),
        ("seq_len past the block table", &long, &bt.table),
    ];
    for (what, lens, table) in cases {
        let (out, bad) = run_device(&c, &bt, lens, table, 0);
        assert_eq!(bad, 1, "{what}: bad_seqs = {bad}");
        for b in [0, 2] {
            let q0 = bt.cu[b] as usize;
            let got = &out[q0 * row..(q0 + c.seqs[b].1) * row];
            let err = rel_l2(got, &reference_rows(&c, &bt, b)).unwrap();
            assert!(err <= TOL_BF16, "{what}: good sequence {b}: relative L2 {err:.3e}");
        }
        let q1 = bt.cu[1] as usize;
        assert!(out[q1 * row..(q1 + c.seqs[1].1) * row].iter().all(|x| x.is_nan()), "{what}: bad sequence written");
    }
    // A block id past the positions a chunked sequence reads is not read, so it is not bad: sequence 2 (200 keys,
    // queries 70..199, chunk 64) never reads positions below 64, i.e. block 0..3.
    let mut unread = bt.table.clone();
    unread[2 * bt.max_blocks] = 1_000_000;
    let (out, bad) = run_device(&c, &bt, &good_lens, &unread, 0);
    assert_eq!(bad, 0, "an unread block id counted as bad");
    let q2 = bt.cu[2] as usize;
    let err = rel_l2(&out[q2 * row..(q2 + c.seqs[2].1) * row], &reference_rows(&c, &bt, 2)).unwrap();
    assert!(err <= TOL_BF16, "unread bad block: relative L2 {err:.3e}");
}

/// The TMA layout (64-slot blocks): the kernel starts its first key tile's TMA before the block-id check returns,
/// so a bad block id there must still read nothing out of bounds (TMA fills out-of-range boxes with zeros), leave
/// the sequence unwritten and count it, with the other sequence right.
#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_block_id_on_the_tma_path() {
    let c = Case {
        seqs: vec![(300, 300), (260, 260)],
        n_kv: 1,
        ratio: 2,
        d: 128,
        mask: Mask::Causal,
        block_size: 64,
        seed: 11,
    };
    let bt = make(&c, 0);
    let row = c.n_kv * c.ratio * c.d;
    let lens: Vec<i32> = c.seqs.iter().map(|s| s.0 as i32).collect();
    for id in [1_000_000, -3, i32::MAX] {
        let mut table = bt.table.clone();
        table[bt.max_blocks] = id; // block 0 of sequence 1: every tile's first key tile
        let (out, bad) = run_device(&c, &bt, &lens, &table, 0);
        assert_eq!(bad, 1, "block id {id}: bad_seqs = {bad}");
        let err = rel_l2(&out[..c.seqs[0].1 * row], &reference_rows(&c, &bt, 0)).unwrap();
        assert!(err <= TOL_BF16, "block id {id}: good sequence 0: relative L2 {err:.3e}");
        let q1 = bt.cu[1] as usize;
        assert!(
            out[q1 * row..(q1 + c.seqs[1].1) * row].iter().all(|x| x.is_nan()),
            "block id {id}: bad sequence written"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rejects_bad_arguments() {
    let (hq, hkv, d, slots) = (4, 2, 128, 32);
    let dq = upload_bf16(&vec![0.0; 8 * hq * d]);
    let dk = upload_bf16(&vec![0.0; slots * hkv * d]);
    let dq96 = upload_bf16(&vec![0.0; 8 * hq * 96]);
    let dk96 = upload_bf16(&vec![0.0; slots * hkv * 96]);
    let dcu = upload(&[0i32, 8]);
    let dlen = upload(&[8i32]);
    let dtab = upload(&[0i32, 1]);
    let mut dout = poison_bf16(8 * hq * d);
    let qt = Tensor::of(&dq, [8, hq, d]).unwrap();
    let kt = Tensor::of(&dk, [slots, hkv, d]).unwrap();
    let cut = Tensor::of(&dcu, [2]).unwrap();
    let lt = Tensor::of(&dlen, [1]).unwrap();
    let tt = Tensor::of(&dtab, [1, 2]).unwrap();
    let queries = QueryBatch { q: &qt, cu_seqlens: &cut, max_q_len: 8 };
    let kv = PagedKv { k: &kt, v: &kt, block_table: &tt, seq_lens: &lt, block_size: 16 };
    let s = stream();
    let scale = default_scale(d);
    let mut ot = TensorMut::of(&mut dout, [8, hq, d]).unwrap();
    // Chunk 0 is not a chunked mask.
    let e = attention_prefill(s, &queries, &kv, Mask::Chunked { chunk: 0 }, scale, &mut ot, None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // Scale must be finite and positive.
    let e = attention_prefill(s, &queries, &kv, Mask::Causal, f32::NAN, &mut ot, None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // Block size that does not divide the slots.
    let kv5 = PagedKv { block_size: 5, ..PagedKv { k: &kt, v: &kt, block_table: &tt, seq_lens: &lt, block_size: 5 } };
    let e = attention_prefill(s, &queries, &kv5, Mask::Causal, scale, &mut ot, None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // 4 query heads over 3 kv heads.
    let dk3 = upload_bf16(&vec![0.0; slots * 3 * d]);
    let kt3 = Tensor::of(&dk3, [slots, 3, d]).unwrap();
    let kv3 = PagedKv { k: &kt3, v: &kt3, block_table: &tt, seq_lens: &lt, block_size: 16 };
    let e = attention_prefill(s, &queries, &kv3, Mask::Causal, scale, &mut ot, None).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // bad_seqs of the wrong shape.
    let mut dbad: CudaSlice<u32> = upload(&[0u32, 0]);
    let mut bad = TensorMut::of(&mut dbad, [2]).unwrap();
    let e = attention_prefill(s, &queries, &kv, Mask::Causal, scale, &mut ot, Some(&mut bad)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // head_dim 96 is not built.
    let q96 = Tensor::of(&dq96, [8, hq, 96]).unwrap();
    let k96 = Tensor::of(&dk96, [slots, hkv, 96]).unwrap();
    let mut dout96 = poison_bf16(8 * hq * 96);
    let mut o96 = TensorMut::of(&mut dout96, [8, hq, 96]).unwrap();
    let queries96 = QueryBatch { q: &q96, cu_seqlens: &cut, max_q_len: 8 };
    let kv96 = PagedKv { k: &k96, v: &k96, block_table: &tt, seq_lens: &lt, block_size: 16 };
    let e = attention_prefill(s, &queries96, &kv96, Mask::Causal, scale, &mut o96, None).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    // Nothing was launched: the output is still poison.
    assert!(download_bf16(&dout).iter().all(|x| x.is_nan()));
    let _ = bf16::ZERO;
}

/// The judged layouts (64-slot multiples) take TMA on a GPU: a driver that refused the tensor maps would fall back
/// to cp.async silently otherwise. Other block sizes and chunks take cp.async by layout.
#[test]
#[ignore = "needs a CUDA GPU"]
fn key_tile_path_is_tma_where_the_layout_allows_it() {
    let (hkv, d, slots) = (8, 128, 4096);
    let dk = upload_bf16(&vec![0.0; slots * hkv * d]);
    let kt = Tensor::of(&dk, [slots, hkv, d]).unwrap();
    let dlen = upload(&[8i32]);
    let dtab = upload(&[0i32]);
    let lt = Tensor::of(&dlen, [1]).unwrap();
    let tt = Tensor::of(&dtab, [1, 1]).unwrap();
    for (block_size, mask, want) in [
        (64, Mask::Causal, KeyTilePath::Tma),
        (256, Mask::Chunked { chunk: 8192 }, KeyTilePath::Tma),
        (16, Mask::Causal, KeyTilePath::CpAsyncLayout),
        (64, Mask::Chunked { chunk: 100 }, KeyTilePath::CpAsyncLayout),
    ] {
        let kv = PagedKv { k: &kt, v: &kt, block_table: &tt, seq_lens: &lt, block_size };
        assert_eq!(key_tile_path(stream(), &kv, mask).unwrap(), want, "block {block_size}, {mask:?}");
    }
}
