//! attention_decode against llama4_reference::attention on random batches over a really paged cache: shuffled
//! block tables, random block sizes, unused slots and the tails of partly used blocks filled with NaN (a read
//! of a slot the kernel must not touch poisons the output), outputs poisoned with NaN before each run.
use crate::common::*;
use llama4_kernels::attention::{default_scale, Mask, PagedKv, QueryBatch};
use llama4_kernels::attention_decode::{
    attention_decode, key_tile_path, splits, workspace_size, DecodeShape, KeyTilePath,
};
use llama4_kernels::{bf16, Error, Tensor, TensorMut};
use llama4_reference::attention::attention;
use llama4_reference::dtype::Precision;
use ndarray::{Array3, ArrayView3};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

const NAN_BF16: u16 = 0x7FC0;

/// One batch on the host.
struct Batch {
    n_heads: usize,
    n_kv: usize,
    d: usize,
    block_size: usize,
    mask: Mask,
    seq_lens: Vec<usize>,
    q_lens: Vec<usize>,
    max_q_len: usize,
    max_blocks: usize,
    slots: usize,
    /// [total_q, n_heads, d]; one spare row past the last sequence's queries, which nothing may write.
    q: Vec<f32>,
    cu: Vec<i32>,
    table: Vec<i32>,
    /// [slots, n_kv, d] as bf16 bits: NaN wherever no sequence keeps a key.
    k_bits: Vec<u16>,
    v_bits: Vec<u16>,
}

impl Batch {
    fn total_q(&self) -> usize {
        *self.cu.last().unwrap() as usize + 1
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    r: &mut StdRng,
    n_heads: usize,
    n_kv: usize,
    d: usize,
    block_size: usize,
    mask: Mask,
    seq_lens: Vec<usize>,
    q_lens: Vec<usize>,
) -> Batch {
    let batch = seq_lens.len();
    let max_q_len = q_lens.iter().copied().max().unwrap_or(0).max(1);
    let blocks_of: Vec<usize> = seq_lens.iter().map(|&s| s.div_ceil(block_size)).collect();
    let max_blocks = blocks_of.iter().copied().max().unwrap_or(0) + r.gen_range(0..2);
    let used: usize = blocks_of.iter().sum();
    let n_blocks = used + r.gen_range(0..4);
    let slots = n_blocks * block_size;
    let mut ids: Vec<i32> = (0..n_blocks as i32).collect();
    ids.shuffle(r);
    let mut table = vec![-1i32; batch * max_blocks];
    let mut next = 0;
    for b in 0..batch {
        for j in 0..blocks_of[b] {
            table[b * max_blocks + j] = ids[next];
            next += 1;
        }
    }
    let row = n_kv * d;
    let mut k_bits = vec![NAN_BF16; slots * row];
    let mut v_bits = vec![NAN_BF16; slots * row];
    for b in 0..batch {
        for p in 0..seq_lens[b] {
            let slot = table[b * max_blocks + p / block_size] as usize * block_size + p % block_size;
            for i in 0..row {
                k_bits[slot * row + i] = bf16::from_f32(r.gen_range(-1.0f32..1.0)).to_bits();
                v_bits[slot * row + i] = bf16::from_f32(r.gen_range(-1.0f32..1.0)).to_bits();
            }
        }
    }
    let mut cu = vec![0i32];
    for &ql in &q_lens {
        cu.push(cu.last().unwrap() + ql as i32);
    }
    let total_q = *cu.last().unwrap() as usize + 1;
    // Queries spread wider than keys: peaked and flat softmax rows both occur.
    let scale = r.gen_range(0.5f32..6.0);
    let q = rand_bf16(r, total_q * n_heads * d, scale);
    Batch {
        n_heads,
        n_kv,
        d,
        block_size,
        mask,
        seq_lens,
        q_lens,
        max_q_len,
        max_blocks,
        slots,
        q,
        cu,
        table,
        k_bits,
        v_bits,
    }
}

fn shape(bt: &Batch) -> DecodeShape {
    DecodeShape {
        batch: bt.seq_lens.len(),
        n_heads: bt.n_heads,
        n_kv_heads: bt.n_kv,
        head_dim: bt.d,
        max_q_len: bt.max_q_len,
        max_kv_len: bt.max_blocks * bt.block_size,
        mask: bt.mask,
    }
}

/// Runs the op with `seq_lens` / `cu` / `table` as given (possibly corrupted); returns out and the counter.
fn run_with(bt: &Batch, seq_lens: &[i32], cu: &[i32], table: &[i32]) -> (Vec<f32>, u32) {
    let batch = seq_lens.len();
    let total_q = bt.total_q();
    let (h, d) = (bt.n_heads, bt.d);
    let dq = upload_bf16(&bt.q);
    let dk = upload(&bt.k_bits.iter().map(|&b| bf16::from_bits(b)).collect::<Vec<_>>());
    let dv = upload(&bt.v_bits.iter().map(|&b| bf16::from_bits(b)).collect::<Vec<_>>());
    let (dcu, dlen) = (upload(cu), upload(seq_lens));
    // cudarc refuses empty allocations: a table with no columns still gets one element.
    let dtab = upload(if table.is_empty() { &[0i32][..] } else { table });
    let mut out = poison_bf16(total_q * h * d);
    let ws_len = workspace_size(shape(bt)).unwrap().max(1);
    let mut ws = upload(&vec![0xFFu8; ws_len]);
    let mut counter = upload(&[0u32]);
    let qt = Tensor::of(&dq, [total_q, h, d]).unwrap();
    let cut = Tensor::of(&dcu, [batch + 1]).unwrap();
    let kt = Tensor::of(&dk, [bt.slots, bt.n_kv, d]).unwrap();
    let vt = Tensor::of(&dv, [bt.slots, bt.n_kv, d]).unwrap();
    let tt = Tensor::new(dtab.slice(0..batch * bt.max_blocks), [batch, bt.max_blocks]).unwrap();
    let lt = Tensor::of(&dlen, [batch]).unwrap();
    let queries = QueryBatch { q: &qt, cu_seqlens: &cut, max_q_len: bt.max_q_len };
    let kv = PagedKv { k: &kt, v: &vt, block_table: &tt, seq_lens: &lt, block_size: bt.block_size };
    attention_decode(
        stream(),
        &queries,
        &kv,
        bt.mask,
        default_scale(d),
        &mut TensorMut::of(&mut out, [total_q, h, d]).unwrap(),
        &mut TensorMut::of(&mut ws, [ws_len]).unwrap(),
        Some(&mut TensorMut::of(&mut counter, [1]).unwrap()),
    )
    .unwrap();
    (download_bf16(&out), download(&counter)[0])
}

fn run(bt: &Batch) -> (Vec<f32>, u32) {
    let lens: Vec<i32> = bt.seq_lens.iter().map(|&s| s as i32).collect();
    run_with(bt, &lens, &bt.cu, &bt.table)
}

/// The reference rows of sequence b: [q_len, n_heads, d], f32 math (the kernel's softmax is f32).
fn reference(bt: &Batch, b: usize) -> Vec<f32> {
    let (h, d, kvh, sl, ql) = (bt.n_heads, bt.d, bt.n_kv, bt.seq_lens[b], bt.q_lens[b]);
    let q0 = bt.cu[b] as usize;
    let q = ArrayView3::from_shape((ql, h, d), &bt.q[q0 * h * d..(q0 + ql) * h * d]).unwrap();
    let gather = |bits: &[u16]| {
        Array3::from_shape_fn((sl, kvh, d), |(p, g, j)| {
            let slot = bt.table[b * bt.max_blocks + p / bt.block_size] as usize * bt.block_size + p % bt.block_size;
            bf16::from_bits(bits[(slot * kvh + g) * d + j]).to_f32()
        })
    };
    let (k, v) = (gather(&bt.k_bits), gather(&bt.v_bits));
    let q_pos: Vec<usize> = (sl - ql..sl).collect();
    let k_pos: Vec<usize> = (0..sl).collect();
    attention(q, k.view(), v.view(), &q_pos, &k_pos, bt.mask, Precision::F32).iter().copied().collect()
}

fn rows(out: &[f32], bt: &Batch, b: usize) -> Vec<f32> {
    let w = bt.n_heads * bt.d;
    let q0 = bt.cu[b] as usize;
    out[q0 * w..(q0 + bt.q_lens[b]) * w].to_vec()
}

/// Every sequence within the bf16 tolerance of the reference, nothing else written.
fn check(what: &str, bt: &Batch, out: &[f32], skip: &[usize]) {
    let w = bt.n_heads * bt.d;
    for b in 0..bt.seq_lens.len() {
        let got = rows(out, bt, b);
        if skip.contains(&b) {
            assert!(got.iter().all(|x| x.is_nan()), "{what}: sequence {b} is bad but some of its rows were written");
            continue;
        }
        let want = reference(bt, b);
        llama4_reference::check::assert_close(
            &format!("{what}: sequence {b} (seq_len {}, q_len {})", bt.seq_lens[b], bt.q_lens[b]),
            &got,
            &want,
            1e-2,
        );
    }
    let spare = *bt.cu.last().unwrap() as usize;
    assert!(out[spare * w..].iter().all(|x| x.is_nan()), "{what}: the spare row past the batch was written");
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

/// A sequence length for `q_len` queries: 1-ish, around a chunk boundary, or anywhere up to `long`.
fn seq_len(r: &mut StdRng, mask: Mask, q_len: usize, long: usize) -> usize {
    let c = match mask {
        Mask::Chunked { chunk } if chunk <= long => chunk,
        _ => 64,
    };
    let len = match r.gen_range(0..4) {
        0 => r.gen_range(1..4),
        1 => (c * r.gen_range(1..=(long / c).max(1))).saturating_add_signed(r.gen_range(-2isize..=2)),
        _ => r.gen_range(1..=long),
    };
    len.max(q_len)
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matches_the_reference(
        seed in any::<u64>(),
        batch in 1usize..=8,
        ratio in prop::sample::select(vec![1usize, 5, 8]),
        n_kv in 1usize..=2,
        d in prop::sample::select(vec![64usize, 128]),
        mask in mask_strategy(),
        max_q in 1usize..=8,
        block_size in prop_oneof![Just(1usize), Just(16), Just(64), 1usize..100],
    ) {
        let mut r = rng(seed);
        let q_lens: Vec<usize> = (0..batch).map(|_| r.gen_range(1..=max_q)).collect();
        let seq_lens: Vec<usize> = q_lens.iter().map(|&ql| seq_len(&mut r, mask, ql, 2500)).collect();
        let bt = build(&mut r, ratio * n_kv, n_kv, d, block_size, mask, seq_lens, q_lens);
        let (out, bad) = run(&bt);
        prop_assert_eq!(bad, 0);
        check("random batch", &bt, &out, &[]);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn long_contexts_take_several_splits() {
    let mut r = rng(7);
    for (mask, lens, q_lens) in [
        (Mask::Causal, vec![20000, 33000], vec![1, 3]),
        (Mask::Chunked { chunk: 8192 }, vec![8191, 8192, 8193, 30000], vec![1, 2, 4, 1]),
    ] {
        let bt = build(&mut r, 5, 1, 128, 16, mask, lens, q_lens);
        let s = splits(shape(&bt)).unwrap();
        assert!(s > 1, "{mask:?}: expected several key splits, got {s}");
        let (out, bad) = run(&bt);
        assert_eq!(bad, 0);
        check(&format!("long {mask:?}, {s} splits"), &bt, &out, &[]);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn llama4_heads_full_batch_single_split() {
    let mut r = rng(11);
    for (d, mask) in [(128, Mask::Chunked { chunk: 64 }), (64, Mask::Causal)] {
        let q_lens: Vec<usize> = (0..64).map(|i| 1 + i % 2).collect();
        let lens: Vec<usize> = q_lens.iter().map(|&ql| r.gen_range(ql..400)).collect();
        let bt = build(&mut r, 40, 8, d, 64, mask, lens, q_lens);
        assert_eq!(splits(shape(&bt)).unwrap(), 1, "a full batch needs no key split");
        let (out, bad) = run(&bt);
        assert_eq!(bad, 0);
        check("40/8 heads, batch 64", &bt, &out, &[]);
    }
}

/// The same batch in blocks of `block_size / f` slots: block j of a sequence becomes blocks f j .. f j + f - 1, which
/// hold the same slots, so the cache bytes and `max_blocks * block_size` (the split plan's input) are unchanged.
fn split_blocks(bt: &Batch, f: usize) -> Batch {
    assert_eq!(bt.block_size % f, 0);
    let table = bt.table.iter().flat_map(|&id| (0..f as i32).map(move |i| if id < 0 { -1 } else { id * f as i32 + i }));
    Batch {
        block_size: bt.block_size / f,
        max_blocks: bt.max_blocks * f,
        table: table.collect(),
        seq_lens: bt.seq_lens.clone(),
        q_lens: bt.q_lens.clone(),
        q: bt.q.clone(),
        cu: bt.cu.clone(),
        k_bits: bt.k_bits.clone(),
        v_bits: bt.v_bits.clone(),
        ..*bt
    }
}

/// The cache's path for `bt` (the op picks its main loop by it).
fn path(bt: &Batch) -> KeyTilePath {
    let dk = upload_bf16(&vec![0.0; bt.slots * bt.n_kv * bt.d]);
    let kt = Tensor::of(&dk, [bt.slots, bt.n_kv, bt.d]).unwrap();
    let (dlen, dtab) = (upload(&[1i32]), upload(&[0i32]));
    let (lt, tt) = (Tensor::of(&dlen, [1]).unwrap(), Tensor::of(&dtab, [1, 1]).unwrap());
    let kv = PagedKv { k: &kt, v: &kt, block_table: &tt, seq_lens: &lt, block_size: bt.block_size };
    key_tile_path(stream(), &kv, bt.mask).unwrap()
}

/// The TMA loop (blocks of 64 or 256 slots) and the cp.async loop (the same cache in blocks of 32 or 16) give the
/// same bits on ragged batches: partial last tiles over NaN tails, split and unsplit plans, 2 KV heads per CTA (even
/// KV head counts) and 1 (odd), head_dim 64 and 128, causal and chunked masks, q_len up to 4 (several row tiles).
#[test]
#[ignore = "needs a CUDA GPU"]
fn tma_and_cp_async_loops_give_the_same_bits() {
    let mut r = rng(13);
    for (n_heads, n_kv, d, block_size, mask, batch, max_q, long) in [
        (40, 8, 128, 64, Mask::Causal, 5, 1, 9000),
        (40, 8, 128, 256, Mask::Chunked { chunk: 8192 }, 3, 3, 20000),
        (40, 8, 128, 64, Mask::Chunked { chunk: 64 }, 64, 2, 700),
        (5, 1, 128, 64, Mask::Causal, 4, 4, 5000),
        (24, 3, 64, 256, Mask::Chunked { chunk: 1024 }, 6, 2, 4000),
        (16, 2, 64, 64, Mask::Causal, 40, 1, 900),
    ] {
        let q_lens: Vec<usize> = (0..batch).map(|_| r.gen_range(1..=max_q)).collect();
        let seq_lens: Vec<usize> = q_lens.iter().map(|&ql| seq_len(&mut r, mask, ql, long)).collect();
        let tma = build(&mut r, n_heads, n_kv, d, block_size, mask, seq_lens, q_lens);
        let cp = split_blocks(&tma, block_size / 16);
        let what = format!("{n_heads}/{n_kv} heads, d {d}, block {block_size}, {mask:?}, batch {batch}");
        assert_eq!(path(&tma), KeyTilePath::Tma, "{what}");
        assert_eq!(path(&cp), KeyTilePath::CpAsyncLayout, "{what}");
        assert_eq!(splits(shape(&tma)).unwrap(), splits(shape(&cp)).unwrap(), "{what}: one plan");
        let ((a, bad_a), (b, bad_b)) = (run(&tma), run(&cp));
        assert_eq!((bad_a, bad_b), (0, 0), "{what}");
        check(&format!("{what}, TMA"), &tma, &a, &[]);
        let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert_eq!(
            differ,
            0,
            "{what} ({} splits): {differ} of {} outputs differ",
            splits(shape(&tma)).unwrap(),
            a.len()
        );
    }
}

/// Corrupt metadata in sequences 1 (a block id outside the cache at a position it reads) and 2 (q_len 1 >
/// seq_len 0): both counted, neither written, the others right. Sequence 0's table has a bad id in a column it
/// never reads: not counted. Run with a small batch (several splits: the combine kernel decides) and a large
/// one (one split: the main kernel decides).
#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_metadata_writes_nothing_and_is_counted() {
    let mut r = rng(3);
    // Blocks of 16 slots take the cp.async loop, blocks of 64 the TMA loop (key_tile_path).
    for (batch, block_size) in [(4usize, 16usize), (64, 16), (4, 64), (64, 64)] {
        let q_lens = vec![1; batch];
        let lens: Vec<usize> = (0..batch).map(|b| if batch == 4 { 3000 + 500 * b } else { 300 + b }).collect();
        let bt = build(&mut r, 8, 2, 128, block_size, Mask::Causal, lens, q_lens);
        let many = splits(shape(&bt)).unwrap();
        assert_eq!(many > 1, batch == 4, "batch {batch}: {many} splits");
        let mut table = bt.table.clone();
        // Sequence 1, positions 80 .. 96 (16-slot blocks) or 64 .. 128 (64-slot blocks): keys it reads.
        table[bt.max_blocks + 80 / block_size] = (bt.slots / bt.block_size) as i32;
        table[bt.max_blocks - 1] = -7; // past sequence 0's keys: never read
        let mut lens: Vec<i32> = bt.seq_lens.iter().map(|&s| s as i32).collect();
        lens[2] = 0;
        let (out, bad) = run_with(&bt, &lens, &bt.cu, &table);
        assert_eq!(bad, 2, "batch {batch}, block {block_size} ({many} splits): sequences 1 and 2 are bad");
        check(&format!("batch {batch}, block {block_size}, corrupt metadata"), &bt, &out, &[1, 2]);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn host_rejects_bad_arguments() {
    let mut r = rng(5);
    let bt = build(&mut r, 8, 2, 128, 16, Mask::Causal, vec![5000], vec![1]);
    let need = workspace_size(shape(&bt)).unwrap();
    assert!(need > 0, "one long sequence must split");
    let (dq, dk) = (upload_bf16(&bt.q), upload(&bt.k_bits.iter().map(|&b| bf16::from_bits(b)).collect::<Vec<_>>()));
    let (dcu, dlen, dtab) = (upload(&bt.cu), upload(&[5000i32]), upload(&bt.table));
    let total_q = bt.total_q();
    let qt = Tensor::of(&dq, [total_q, 8, 128]).unwrap();
    let cut = Tensor::of(&dcu, [2]).unwrap();
    let kt = Tensor::of(&dk, [bt.slots, 2, 128]).unwrap();
    let tt = Tensor::of(&dtab, [1, bt.max_blocks]).unwrap();
    let lt = Tensor::of(&dlen, [1]).unwrap();
    let queries = QueryBatch { q: &qt, cu_seqlens: &cut, max_q_len: 1 };
    let kv = PagedKv { k: &kt, v: &kt, block_table: &tt, seq_lens: &lt, block_size: 16 };
    let mut out = poison_bf16(total_q * 8 * 128);
    let mut small = upload(&vec![0u8; need - 1]);
    let e = attention_decode(
        stream(),
        &queries,
        &kv,
        Mask::Causal,
        default_scale(128),
        &mut TensorMut::of(&mut out, [total_q, 8, 128]).unwrap(),
        &mut TensorMut::of(&mut small, [need - 1]).unwrap(),
        None,
    );
    assert!(matches!(e, Err(Error::InvalidArgument(ref m)) if m.contains("workspace")), "{e:?}");
    // head_dim 96: unsupported.
    let q96 = upload_bf16(&vec![0.0; total_q * 8 * 96]);
    let k96 = upload_bf16(&vec![0.0; bt.slots * 2 * 96]);
    let mut o96 = poison_bf16(total_q * 8 * 96);
    let q96t = Tensor::of(&q96, [total_q, 8, 96]).unwrap();
    let k96t = Tensor::of(&k96, [bt.slots, 2, 96]).unwrap();
    let kv96 = PagedKv { k: &k96t, v: &k96t, block_table: &tt, seq_lens: &lt, block_size: 16 };
    let mut ws = upload(&vec![0u8; need]);
    let e = attention_decode(
        stream(),
        &QueryBatch { q: &q96t, cu_seqlens: &cut, max_q_len: 1 },
        &kv96,
        Mask::Causal,
        default_scale(96),
        &mut TensorMut::of(&mut o96, [total_q, 8, 96]).unwrap(),
        &mut TensorMut::of(&mut ws, [need]).unwrap(),
        None,
    );
    assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
    // Output of the wrong shape.
    let mut short = poison_bf16(8 * 128);
    let e = attention_decode(
        stream(),
        &queries,
        &kv,
        Mask::Causal,
        default_scale(128),
        &mut TensorMut::of(&mut short, [1, 8, 128]).unwrap(),
        &mut TensorMut::of(&mut ws, [need]).unwrap(),
        None,
    );
    assert!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");
    // A chunk of 0 and a non-finite scale.
    let mut ws2 = upload(&vec![0u8; need]);
    for (mask, scale) in [(Mask::Chunked { chunk: 0 }, 0.1f32), (Mask::Causal, f32::NAN)] {
        let e = attention_decode(
            stream(),
            &queries,
            &kv,
            mask,
            scale,
            &mut TensorMut::of(&mut out, [total_q, 8, 128]).unwrap(),
            &mut TensorMut::of(&mut ws2, [need]).unwrap(),
            None,
        );
        assert!(matches!(e, Err(Error::InvalidArgument(_))), "{mask:?} {scale}: {e:?}");
    }
    // Nothing was launched: the output is untouched.
    assert!(download_bf16(&out).iter().all(|x| x.is_nan()));
}
