//! Decode against prefill over one paged cache: decoding a batch token by token (and a few tokens at a time, as
//! speculative decoding does) gives the prefill result for every position, under the causal and chunked masks,
//! and both agree with llama4_reference::attention. Shuffled block tables, GQA ratio 5, head_dim 128.
use crate::common::*;
use cudarc::driver::CudaSlice;
use llama4_kernels::attention::{default_scale, Mask, PagedKv, QueryBatch};
use llama4_kernels::attention_decode::{attention_decode, workspace_size, DecodeShape};
use llama4_kernels::attention_prefill::attention_prefill;
use llama4_kernels::{bf16, Tensor, TensorMut};
use llama4_reference::attention::attention;
use llama4_reference::check::assert_close;
use llama4_reference::dtype::Precision;
use ndarray::ArrayView3;
use rand::seq::SliceRandom;

const HQ: usize = 10;
const HKV: usize = 2;
const D: usize = 128;
const BLOCK: usize = 16;

/// A batch's cache and queries: sequence b holds `lens[b]` tokens, all of them cached; `q` has one row per
/// token of every sequence, in sequence order.
struct Cache {
    lens: Vec<usize>,
    max_blocks: usize,
    table: Vec<i32>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    slots: usize,
    q: Vec<f32>,
    k_host: Vec<f32>,
    v_host: Vec<f32>,
}

impl Cache {
    fn new(lens: Vec<usize>, seed: u64) -> Self {
        let mut r = rng(seed);
        let max_blocks = lens.iter().map(|l| l.div_ceil(BLOCK)).max().unwrap();
        let mut blocks: Vec<i32> = (0..(lens.len() * max_blocks) as i32).collect();
        blocks.shuffle(&mut r);
        let slots = blocks.len() * BLOCK;
        let total: usize = lens.iter().sum();
        let k_host = rand_bf16(&mut r, slots * HKV * D, 1.0);
        let v_host = rand_bf16(&mut r, slots * HKV * D, 1.0);
        let q = rand_bf16(&mut r, total * HQ * D, 1.0);
        Cache {
            k: upload_bf16(&k_host),
            v: upload_bf16(&v_host),
            lens,
            max_blocks,
            table: blocks,
            slots,
            q,
            k_host,
            v_host,
        }
    }

    fn slot(&self, b: usize, pos: usize) -> usize {
        self.table[b * self.max_blocks + pos / BLOCK] as usize * BLOCK + pos % BLOCK
    }

    fn row0(&self, b: usize) -> usize {
        self.lens[..b].iter().sum()
    }

    /// Attention of the queries at positions `from .. to` of each listed sequence over its keys `0 .. to`
    /// (queries are the last positions of the keys), by prefill or decode. Returns [rows, HQ, D] in the order
    /// of `seqs`, then position.
    fn run(&self, seqs: &[(usize, usize, usize)], mask: Mask, decode: bool) -> Vec<f32> {
        let rows: usize = seqs.iter().map(|&(_, from, to)| to - from).sum();
        let mut q = Vec::with_capacity(rows * HQ * D);
        let (mut cu, mut lens, mut table) = (vec![0i32], vec![], vec![]);
        for &(b, from, to) in seqs {
            let r0 = self.row0(b);
            q.extend_from_slice(&self.q[(r0 + from) * HQ * D..(r0 + to) * HQ * D]);
            cu.push(cu.last().unwrap() + (to - from) as i32);
            lens.push(to as i32);
            table.extend_from_slice(&self.table[b * self.max_blocks..(b + 1) * self.max_blocks]);
        }
        let max_q_len = seqs.iter().map(|&(_, from, to)| to - from).max().unwrap();
        let (dq, dcu, dlen, dtab) = (upload_bf16(&q), upload(&cu), upload(&lens), upload(&table));
        let mut out = poison_bf16(rows * HQ * D);
        let qt = Tensor::of(&dq, [rows, HQ, D]).unwrap();
        let cut = Tensor::of(&dcu, [seqs.len() + 1]).unwrap();
        let kt = Tensor::of(&self.k, [self.slots, HKV, D]).unwrap();
        let vt = Tensor::of(&self.v, [self.slots, HKV, D]).unwrap();
        let tt = Tensor::of(&dtab, [seqs.len(), self.max_blocks]).unwrap();
        let lt = Tensor::of(&dlen, [seqs.len()]).unwrap();
        let queries = QueryBatch { q: &qt, cu_seqlens: &cut, max_q_len };
        let kv = PagedKv { k: &kt, v: &vt, block_table: &tt, seq_lens: &lt, block_size: BLOCK };
        let mut o = TensorMut::of(&mut out, [rows, HQ, D]).unwrap();
        if decode {
            let shape = DecodeShape {
                batch: seqs.len(),
                n_heads: HQ,
                n_kv_heads: HKV,
                head_dim: D,
                max_q_len,
                max_kv_len: self.max_blocks * BLOCK,
                mask,
            };
            let n = workspace_size(shape).unwrap().max(1);
            let mut ws = upload(&vec![0xFFu8; n]);
            attention_decode(
                stream(),
                &queries,
                &kv,
                mask,
                default_scale(D),
                &mut o,
                &mut TensorMut::of(&mut ws, [n]).unwrap(),
                None,
            )
            .unwrap();
        } else {
            attention_prefill(stream(), &queries, &kv, mask, default_scale(D), &mut o, None).unwrap();
        }
        download_bf16(&out)
    }

    /// The reference for every position of sequence b: [lens[b], HQ, D].
    fn reference(&self, b: usize, mask: Mask) -> Vec<f32> {
        let n = self.lens[b];
        let gather = |src: &[f32]| -> Vec<f32> {
            (0..n).flat_map(|p| src[self.slot(b, p) * HKV * D..(self.slot(b, p) + 1) * HKV * D].to_vec()).collect()
        };
        let (k, v) = (gather(&self.k_host), gather(&self.v_host));
        let r0 = self.row0(b);
        let q = &self.q[r0 * HQ * D..(r0 + n) * HQ * D];
        let pos: Vec<usize> = (0..n).collect();
        let out = attention(
            ArrayView3::from_shape((n, HQ, D), q).unwrap(),
            ArrayView3::from_shape((n, HKV, D), &k).unwrap(),
            ArrayView3::from_shape((n, HKV, D), &v).unwrap(),
            &pos,
            &pos,
            mask,
            Precision::Bf16,
        );
        out.iter().copied().collect()
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn decoding_token_by_token_gives_the_prefill_result() {
    let cache = Cache::new(vec![1, 37, 64, 131], 11);
    let batch = cache.lens.len();
    for mask in [Mask::Causal, Mask::Chunked { chunk: 7 }, Mask::Chunked { chunk: 64 }] {
        let whole: Vec<_> = (0..batch).map(|b| (b, 0, cache.lens[b])).collect();
        let prefill = cache.run(&whole, mask, false);
        // Decode in steps of `step` new tokens per sequence (1: plain decode; 3: speculative), every sequence
        // that still has tokens in one batch per step.
        for step in [1usize, 3] {
            let mut decoded: Vec<Vec<f32>> = vec![Vec::new(); batch];
            let mut t = 0;
            while t < *cache.lens.iter().max().unwrap() {
                let seqs: Vec<_> =
                    (0..batch).filter(|&b| cache.lens[b] > t).map(|b| (b, t, (t + step).min(cache.lens[b]))).collect();
                let out = cache.run(&seqs, mask, true);
                let mut at = 0;
                for &(b, from, to) in &seqs {
                    let n = (to - from) * HQ * D;
                    decoded[b].extend_from_slice(&out[at..at + n]);
                    at += n;
                }
                t += step;
            }
            let mut at = 0;
            for (b, dec) in decoded.iter().enumerate() {
                let n = cache.lens[b] * HQ * D;
                let what = format!("{mask:?}, sequence {b} ({} tokens), decode step {step}", cache.lens[b]);
                assert_close(&format!("{what}: decode vs prefill"), dec, &prefill[at..at + n], 1e-2);
                at += n;
            }
        }
        let mut at = 0;
        for b in 0..batch {
            let n = cache.lens[b] * HQ * D;
            assert_close(
                &format!("{mask:?}, sequence {b}: prefill vs reference"),
                &prefill[at..at + n],
                &cache.reference(b, mask),
                1e-2,
            );
            at += n;
        }
    }
}
