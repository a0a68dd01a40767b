//! Programmatic dependent launch (kernels/pdl.cuh) across a chain of the library's kernels, each consuming the one
//! before: random fill -> embedding -> (random over the table it just read) -> add_rmsnorm -> cuBLASLt qkv ->
//! rope into a random-filled paged cache -> attention decode (split-KV + combine) and prefill -> swiglu -> quant ->
//! (random over the rows quant just read) -> dequant -> argmax, and cuBLASLt router logits -> router -> permute
//! (FP8 and bf16) -> unpermute -> rmsnorm, then random -> weight prep -> dequant -> argmax (a cluster launch). The random fills right after a reader are
//! write-after-read hazards: a kernel that wrote before its griddepcontrol.wait would corrupt its predecessor's
//! input. The chain runs twice back to back per call, at a decode shape (3 tokens, long sequences: the split-KV
//! path) and a wider one (700 tokens: two router tiles, the cooperative launch).
//!
//! Every output is compared bit for bit with the launches made without the attribute (`set_pdl(false)`): eagerly,
//! and replayed from CUDA graphs captured with and without it (a capture records programmatic edges). In a process
//! of its own, like tests/graph.rs: a stream capture must not see other threads' work, and the switch is
//! process-wide. Needs an sm_90 GPU and libcublasLt: run with `--include-ignored`.

#[path = "gpu/common.rs"]
#[allow(dead_code)]
mod common;

use common::*;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaSlice, DeviceRepr};
use llama4_kernels::attention::{default_scale, Mask, PagedKv, QueryBatch};
use llama4_kernels::attention_decode::{attention_decode, splits, workspace_size, DecodeShape};
use llama4_kernels::attention_prefill::attention_prefill;
use llama4_kernels::device::{pdl_enabled, set_pdl};
use llama4_kernels::linear::{Blas, LINEAR_WORKSPACE_BYTES};
use llama4_kernels::permute::{permute, permute_fp8, permuted_rows, unpermute, Padding};
use llama4_kernels::quant::{dequant_fp8, quant_fp8};
use llama4_kernels::random::random_uniform_bf16;
use llama4_kernels::rmsnorm::{add_rmsnorm, rmsnorm};
use llama4_kernels::rope::{inv_freq, rope_qkv, HeadLayout, LayerKind};
use llama4_kernels::router::{router, router_workspace_size, RouterKind, RouterOutputs};
use llama4_kernels::swiglu::swiglu;
use llama4_kernels::weight_prep::quantize_expert_weights;
use llama4_kernels::{argmax::argmax, embedding::embedding};
use llama4_kernels::{bf16, Tensor, TensorMut, E4M3};
use rand::Rng;

const VOCAB: usize = 1000;
const HIDDEN: usize = 512; // = N_HEADS * HEAD_DIM: attention's output is the swiglu's gate_up
const N_HEADS: usize = 8;
const N_KV: usize = 2;
const HEAD_DIM: usize = 64;
const QKV: usize = (N_HEADS + 2 * N_KV) * HEAD_DIM;
const INTER: usize = HIDDEN / 2;
const EXPERTS: usize = 16;
const ALIGN: usize = 8;
const BLOCK: usize = 16;
const EPS: f32 = 1e-5;
// Weight prep: [E, K, N] bf16 -> [E, N, K] FP8 (the strip kernel's shape rules hold).
const PREP: [usize; 3] = [4, 256, 128];

/// A buffer poisoned before each run (or reset to its initial contents), downloaded as bit patterns.
trait Bits: DeviceRepr + Default + Clone {
    fn bits(&self) -> u32;
    fn poison() -> Self;
}
impl Bits for bf16 {
    fn bits(&self) -> u32 {
        self.to_bits() as u32
    }
    fn poison() -> Self {
        bf16::from_bits(0x7FC0)
    }
}
impl Bits for f32 {
    fn bits(&self) -> u32 {
        self.to_bits()
    }
    fn poison() -> Self {
        f32::NAN
    }
}
impl Bits for i32 {
    fn bits(&self) -> u32 {
        *self as u32
    }
    fn poison() -> Self {
        i32::MIN
    }
}
impl Bits for E4M3 {
    fn bits(&self) -> u32 {
        self.0 as u32
    }
    fn poison() -> Self {
        E4M3(0x7F)
    }
}

/// A whole buffer as one row (what the random fill takes).
fn flat(b: &mut CudaSlice<bf16>) -> TensorMut<'_, bf16, 1> {
    let n = b.len();
    TensorMut::new(b.as_view_mut(), [n]).unwrap()
}

fn poisoned<T: Bits>(n: usize) -> CudaSlice<T> {
    upload(&vec![T::poison(); n])
}
fn repoison<T: Bits>(d: &mut CudaSlice<T>) {
    stream().memcpy_htod(&vec![T::poison(); d.len()], d).unwrap();
}
fn bits<T: Bits>(d: &CudaSlice<T>) -> Vec<u32> {
    download(d).iter().map(Bits::bits).collect()
}

/// One shape's inputs, weights and every intermediate of the chain.
struct Chain {
    t: usize,
    rows: usize, // permuted rows
    slots: usize,
    max_blocks: usize,
    // inputs (never written)
    ids: CudaSlice<i32>,
    norm_w: CudaSlice<bf16>,
    wqkv: CudaSlice<bf16>,
    wr: CudaSlice<bf16>,
    pos: CudaSlice<i32>,
    slot: CudaSlice<i64>,
    table_ids: CudaSlice<i32>,
    seq_lens: CudaSlice<i32>,
    cu_q: CudaSlice<i32>,
    residual0: Vec<bf16>,
    // in-out: reset to residual0 before a run
    residual: CudaSlice<bf16>,
    // outputs
    table: CudaSlice<bf16>,
    x: CudaSlice<bf16>,
    y: CudaSlice<bf16>,
    qkv: CudaSlice<bf16>,
    q: CudaSlice<bf16>,
    kc: CudaSlice<bf16>,
    vc: CudaSlice<bf16>,
    ao: CudaSlice<bf16>,
    ap: CudaSlice<bf16>,
    h: CudaSlice<bf16>,
    hq: CudaSlice<E4M3>,
    hs: CudaSlice<f32>,
    deq: CudaSlice<f32>,
    top: CudaSlice<i32>,
    logits: CudaSlice<bf16>,
    rid: CudaSlice<i32>,
    rw: CudaSlice<f32>,
    counts: CudaSlice<i32>,
    offsets: CudaSlice<i32>,
    dest: CudaSlice<i32>,
    aq: CudaSlice<E4M3>,
    as_: CudaSlice<f32>,
    perm: CudaSlice<bf16>,
    fin: CudaSlice<bf16>,
    fin2: CudaSlice<bf16>,
    w: CudaSlice<bf16>,
    wq: CudaSlice<E4M3>,
    wsc: CudaSlice<f32>,
    wdeq: CudaSlice<f32>,
    wtop: CudaSlice<i32>,
    // scratch whose contents do not matter
    blas_ws: CudaSlice<u8>,
    attn_ws: CudaSlice<u8>,
    router_ws: CudaSlice<u8>,
}

impl Chain {
    /// `lens`: each sequence's key count (its one query is its last position).
    fn new(lens: &[usize], seed: u64) -> Chain {
        let mut r = rng(seed);
        let t = lens.len();
        let max_len = *lens.iter().max().unwrap();
        let max_blocks = max_len.div_ceil(BLOCK);
        let n_blocks = t * max_blocks;
        let slots = n_blocks * BLOCK;
        // Blocks handed out in a scrambled order, so the cache is really paged.
        let mut blocks: Vec<i32> = (0..n_blocks as i32).collect();
        for i in (1..blocks.len()).rev() {
            blocks.swap(i, r.gen_range(0..=i));
        }
        let slot: Vec<i64> = lens
            .iter()
            .enumerate()
            .map(|(b, &l)| {
                let p = l - 1;
                blocks[b * max_blocks + p / BLOCK] as i64 * BLOCK as i64 + (p % BLOCK) as i64
            })
            .collect();
        let residual0: Vec<bf16> = rand_bf16(&mut r, t * HIDDEN, 2.0).into_iter().map(bf16::from_f32).collect();
        let rows = permuted_rows(t, 1, EXPERTS, ALIGN);
        let [pe, pk, pn] = PREP;
        Chain {
            t,
            rows,
            slots,
            max_blocks,
            ids: upload(&(0..t).map(|_| r.gen_range(0..VOCAB as i32)).collect::<Vec<_>>()),
            norm_w: upload_bf16(&rand_bf16(&mut r, HIDDEN, 1.5)),
            wqkv: upload_bf16(&rand_bf16(&mut r, QKV * HIDDEN, 0.05)),
            wr: upload_bf16(&rand_bf16(&mut r, EXPERTS * HIDDEN, 0.05)),
            pos: upload(&lens.iter().map(|&l| l as i32 - 1).collect::<Vec<_>>()),
            slot: upload(&slot),
            table_ids: upload(&blocks),
            seq_lens: upload(&lens.iter().map(|&l| l as i32).collect::<Vec<_>>()),
            cu_q: upload(&(0..=t as i32).collect::<Vec<_>>()),
            residual: upload(&residual0),
            residual0,
            table: poisoned(VOCAB * HIDDEN),
            x: poisoned(t * HIDDEN),
            y: poisoned(t * HIDDEN),
            qkv: poisoned(t * QKV),
            q: poisoned(t * N_HEADS * HEAD_DIM),
            kc: poisoned(slots * N_KV * HEAD_DIM),
            vc: poisoned(slots * N_KV * HEAD_DIM),
            ao: poisoned(t * N_HEADS * HEAD_DIM),
            ap: poisoned(t * N_HEADS * HEAD_DIM),
            h: poisoned(t * INTER),
            hq: poisoned(t * INTER),
            hs: poisoned(t),
            deq: poisoned(t * INTER),
            top: poisoned(t),
            logits: poisoned(t * EXPERTS),
            rid: poisoned(t),
            rw: poisoned(t),
            counts: poisoned(EXPERTS),
            offsets: poisoned(EXPERTS + 1),
            dest: poisoned(t),
            aq: poisoned(rows * HIDDEN),
            as_: poisoned(rows),
            perm: poisoned(rows * HIDDEN),
            fin: poisoned(t * HIDDEN),
            fin2: poisoned(t * HIDDEN),
            w: poisoned(pe * pk * pn),
            wq: poisoned(pe * pn * pk),
            wsc: poisoned(pe * pn),
            wdeq: poisoned(pe * pn * pk),
            wtop: poisoned(2),
            blas_ws: stream().alloc_zeros(LINEAR_WORKSPACE_BYTES).unwrap(),
            attn_ws: stream().alloc_zeros(workspace_size(Self::decode_shape(t, max_blocks)).unwrap().max(1)).unwrap(),
            router_ws: stream().alloc_zeros(router_workspace_size::<bf16>(t, EXPERTS).unwrap()).unwrap(),
        }
    }

    fn decode_shape(t: usize, max_blocks: usize) -> DecodeShape {
        DecodeShape {
            batch: t,
            n_heads: N_HEADS,
            n_kv_heads: N_KV,
            head_dim: HEAD_DIM,
            max_q_len: 1,
            max_kv_len: max_blocks * BLOCK,
            mask: Mask::Causal,
        }
    }

    /// Every output poisoned, the residual stream back at its initial values.
    fn reset(&mut self) {
        stream().memcpy_htod(&self.residual0, &mut self.residual).unwrap();
        repoison(&mut self.table);
        for b in [
            &mut self.x,
            &mut self.y,
            &mut self.qkv,
            &mut self.q,
            &mut self.kc,
            &mut self.vc,
            &mut self.ao,
            &mut self.ap,
            &mut self.h,
            &mut self.logits,
            &mut self.perm,
            &mut self.fin,
            &mut self.fin2,
            &mut self.w,
        ] {
            repoison(b);
        }
        for b in [&mut self.hs, &mut self.deq, &mut self.rw, &mut self.as_, &mut self.wsc, &mut self.wdeq] {
            repoison(b);
        }
        for b in [&mut self.top, &mut self.rid, &mut self.counts, &mut self.offsets, &mut self.dest, &mut self.wtop] {
            repoison(b);
        }
        for b in [&mut self.hq, &mut self.aq, &mut self.wq] {
            repoison(b);
        }
    }

    /// The chain, twice back to back (the second pass's writes follow the first pass's reads of the same buffers).
    fn run(&mut self, blas: &Blas) {
        for pass in 0..2u64 {
            self.pass(blas, pass);
        }
    }

    fn pass(&mut self, blas: &Blas, pass: u64) {
        let s = stream();
        let (t, rows, slots) = (self.t, self.rows, self.slots);
        let mut blas_ws = TensorMut::of(&mut self.blas_ws, [LINEAR_WORKSPACE_BYTES]).unwrap();

        random_uniform_bf16(s, &mut flat(&mut self.table), 11 + pass, 0, 1.0).unwrap();
        embedding(
            s,
            &Tensor::of(&self.table, [VOCAB, HIDDEN]).unwrap(),
            &Tensor::of(&self.ids, [t]).unwrap(),
            &mut TensorMut::of(&mut self.x, [t, HIDDEN]).unwrap(),
            None,
        )
        .unwrap();
        // Write-after-read: the table embedding just gathered from.
        random_uniform_bf16(s, &mut flat(&mut self.table), 97 + pass, 0, 1.0).unwrap();
        add_rmsnorm(
            s,
            &Tensor::of(&self.x, [t, HIDDEN]).unwrap(),
            &mut TensorMut::of(&mut self.residual, [t, HIDDEN]).unwrap(),
            &Tensor::of(&self.norm_w, [HIDDEN]).unwrap(),
            EPS,
            &mut TensorMut::of(&mut self.y, [t, HIDDEN]).unwrap(),
        )
        .unwrap();
        blas.linear_bf16(
            s,
            &Tensor::of(&self.y, [t, HIDDEN]).unwrap(),
            &Tensor::of(&self.wqkv, [QKV, HIDDEN]).unwrap(),
            &mut TensorMut::of(&mut self.qkv, [t, QKV]).unwrap(),
            &mut blas_ws,
        )
        .unwrap();

        // Attention: every key of the cache random, then the tokens' own k and v written by rope.
        random_uniform_bf16(s, &mut flat(&mut self.kc), 5 + pass, 0, 1.0).unwrap();
        random_uniform_bf16(s, &mut flat(&mut self.vc), 6 + pass, 0, 1.0).unwrap();
        let layout = HeadLayout { n_heads: N_HEADS, n_kv_heads: N_KV, head_dim: HEAD_DIM };
        let kind = LayerKind::Rope { inv_freq: inv_freq(500000.0, HEAD_DIM, None).unwrap(), qk_norm: Some(EPS) };
        rope_qkv(
            s,
            &Tensor::of(&self.qkv, [t, QKV]).unwrap(),
            &Tensor::of(&self.pos, [t]).unwrap(),
            &Tensor::of(&self.slot, [t]).unwrap(),
            layout,
            &kind,
            &mut TensorMut::of(&mut self.q, [t, N_HEADS, HEAD_DIM]).unwrap(),
            &mut TensorMut::of(&mut self.kc, [slots, N_KV, HEAD_DIM]).unwrap(),
            &mut TensorMut::of(&mut self.vc, [slots, N_KV, HEAD_DIM]).unwrap(),
            None,
        )
        .unwrap();
        {
            let (k, v) = (
                Tensor::of(&self.kc, [slots, N_KV, HEAD_DIM]).unwrap(),
                Tensor::of(&self.vc, [slots, N_KV, HEAD_DIM]).unwrap(),
            );
            let table = Tensor::of(&self.table_ids, [t, self.max_blocks]).unwrap();
            let seq_lens = Tensor::of(&self.seq_lens, [t]).unwrap();
            let kv = PagedKv { k: &k, v: &v, block_table: &table, seq_lens: &seq_lens, block_size: BLOCK };
            let q = Tensor::of(&self.q, [t, N_HEADS, HEAD_DIM]).unwrap();
            let cu = Tensor::of(&self.cu_q, [t + 1]).unwrap();
            let queries = QueryBatch { q: &q, cu_seqlens: &cu, max_q_len: 1 };
            let scale = default_scale(HEAD_DIM);
            let ws_len = self.attn_ws.len();
            attention_decode(
                s,
                &queries,
                &kv,
                Mask::Causal,
                scale,
                &mut TensorMut::of(&mut self.ao, [t, N_HEADS, HEAD_DIM]).unwrap(),
                &mut TensorMut::of(&mut self.attn_ws, [ws_len]).unwrap(),
                None,
            )
            .unwrap();
            attention_prefill(
                s,
                &queries,
                &kv,
                Mask::Causal,
                scale,
                &mut TensorMut::of(&mut self.ap, [t, N_HEADS, HEAD_DIM]).unwrap(),
                None,
            )
            .unwrap();
        }

        // The attention output as a gate_up row: swiglu -> quant -> (scribble) -> dequant -> argmax.
        swiglu(s, &Tensor::of(&self.ao, [t, HIDDEN]).unwrap(), &mut TensorMut::of(&mut self.h, [t, INTER]).unwrap())
            .unwrap();
        quant_fp8(
            s,
            &Tensor::of(&self.h, [t, INTER]).unwrap(),
            &mut TensorMut::of(&mut self.hq, [t, INTER]).unwrap(),
            &mut TensorMut::of(&mut self.hs, [t]).unwrap(),
        )
        .unwrap();
        // Write-after-read: the rows quant just read.
        random_uniform_bf16(s, &mut flat(&mut self.h), 31 + pass, 0, 1.0).unwrap();
        dequant_fp8(
            s,
            &Tensor::of(&self.hq, [t, INTER]).unwrap(),
            &Tensor::of(&self.hs, [t]).unwrap(),
            &mut TensorMut::of(&mut self.deq, [t, INTER]).unwrap(),
        )
        .unwrap();
        argmax(s, &Tensor::of(&self.deq, [t, INTER]).unwrap(), &mut TensorMut::of(&mut self.top, [t]).unwrap())
            .unwrap();

        // Routing: cuBLASLt logits -> router -> permute (FP8, bf16) -> unpermute (+ y as the shared expert) -> norm.
        blas.linear_bf16(
            s,
            &Tensor::of(&self.y, [t, HIDDEN]).unwrap(),
            &Tensor::of(&self.wr, [EXPERTS, HIDDEN]).unwrap(),
            &mut TensorMut::of(&mut self.logits, [t, EXPERTS]).unwrap(),
            &mut blas_ws,
        )
        .unwrap();
        router(
            s,
            &Tensor::of(&self.logits, [t, EXPERTS]).unwrap(),
            RouterKind::SigmoidTop1,
            ALIGN,
            RouterOutputs {
                ids: &mut TensorMut::of(&mut self.rid, [t, 1]).unwrap(),
                weights: &mut TensorMut::of(&mut self.rw, [t, 1]).unwrap(),
                counts: &mut TensorMut::of(&mut self.counts, [EXPERTS]).unwrap(),
                offsets: &mut TensorMut::of(&mut self.offsets, [EXPERTS + 1]).unwrap(),
                dest: &mut TensorMut::of(&mut self.dest, [t, 1]).unwrap(),
            },
            &mut self.router_ws.as_view_mut(),
        )
        .unwrap();
        {
            let counts = Tensor::of(&self.counts, [EXPERTS]).unwrap();
            let offsets = Tensor::of(&self.offsets, [EXPERTS + 1]).unwrap();
            let padding = Padding { counts: &counts, offsets: &offsets, align: ALIGN };
            let x = Tensor::of(&self.residual, [t, HIDDEN]).unwrap();
            let dest = Tensor::of(&self.dest, [t, 1]).unwrap();
            let w = Tensor::of(&self.rw, [t, 1]).unwrap();
            permute_fp8(
                s,
                &x,
                &dest,
                Some(&w),
                Some(&padding),
                &mut TensorMut::of(&mut self.aq, [rows, HIDDEN]).unwrap(),
                &mut TensorMut::of(&mut self.as_, [rows]).unwrap(),
            )
            .unwrap();
            permute(
                s,
                &x,
                &dest,
                Some(&w),
                Some(&padding),
                &mut TensorMut::of(&mut self.perm, [rows, HIDDEN]).unwrap(),
            )
            .unwrap();
            unpermute(
                s,
                &Tensor::of(&self.perm, [rows, HIDDEN]).unwrap(),
                &dest,
                None,
                Some(&Tensor::of(&self.y, [t, HIDDEN]).unwrap()),
                &mut TensorMut::of(&mut self.fin, [t, HIDDEN]).unwrap(),
            )
            .unwrap();
        }
        rmsnorm(
            s,
            &Tensor::of(&self.fin, [t, HIDDEN]).unwrap(),
            &Tensor::of(&self.norm_w, [HIDDEN]).unwrap(),
            EPS,
            &mut TensorMut::of(&mut self.fin2, [t, HIDDEN]).unwrap(),
        )
        .unwrap();

        let [pe, pk, pn] = PREP;
        random_uniform_bf16(s, &mut flat(&mut self.w), 71 + pass, 0, 0.5).unwrap();
        quantize_expert_weights(
            s,
            &Tensor::of(&self.w, [pe, pk, pn]).unwrap(),
            &mut TensorMut::of(&mut self.wq, [pe, pn, pk]).unwrap(),
            &mut TensorMut::of(&mut self.wsc, [pe, pn]).unwrap(),
        )
        .unwrap();
        // The prepared weights read back (f32) and their largest value per half: argmax's cluster path.
        dequant_fp8(
            s,
            &Tensor::of(&self.wq, [pe * pn, pk]).unwrap(),
            &Tensor::of(&self.wsc, [pe * pn]).unwrap(),
            &mut TensorMut::of(&mut self.wdeq, [pe * pn, pk]).unwrap(),
        )
        .unwrap();
        let half = pe * pn * pk / 2;
        argmax(s, &Tensor::of(&self.wdeq, [2, half]).unwrap(), &mut TensorMut::of(&mut self.wtop, [2]).unwrap())
            .unwrap();
    }

    /// Every buffer the chain writes, as bit patterns, with its name.
    fn host(&self) -> Vec<(&'static str, Vec<u32>)> {
        vec![
            ("table", bits(&self.table)),
            ("x", bits(&self.x)),
            ("residual", bits(&self.residual)),
            ("y", bits(&self.y)),
            ("qkv", bits(&self.qkv)),
            ("q", bits(&self.q)),
            ("k_cache", bits(&self.kc)),
            ("v_cache", bits(&self.vc)),
            ("attention_decode", bits(&self.ao)),
            ("attention_prefill", bits(&self.ap)),
            ("h (scribbled)", bits(&self.h)),
            ("quant", bits(&self.hq)),
            ("quant scales", bits(&self.hs)),
            ("dequant", bits(&self.deq)),
            ("argmax", bits(&self.top)),
            ("router logits", bits(&self.logits)),
            ("router ids", bits(&self.rid)),
            ("router weights", bits(&self.rw)),
            ("counts", bits(&self.counts)),
            ("offsets", bits(&self.offsets)),
            ("dest", bits(&self.dest)),
            ("permute_fp8", bits(&self.aq)),
            ("permute_fp8 scales", bits(&self.as_)),
            ("permute", bits(&self.perm)),
            ("unpermute", bits(&self.fin)),
            ("rmsnorm", bits(&self.fin2)),
            ("weight_prep input", bits(&self.w)),
            ("weight_prep", bits(&self.wq)),
            ("weight_prep scales", bits(&self.wsc)),
            ("weight dequant", bits(&self.wdeq)),
            ("weight argmax", bits(&self.wtop)),
        ]
    }
}

fn assert_same(what: &str, got: &[(&str, Vec<u32>)], want: &[(&str, Vec<u32>)]) {
    for ((name, g), (_, w)) in got.iter().zip(want) {
        if let Some(i) = (0..w.len()).find(|&i| g[i] != w[i]) {
            panic!("{what}: {name}[{i}] = {:#x}, without PDL {:#x} ({} elements)", g[i], w[i], w.len());
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn chained_kernels_with_pdl_match_the_plain_launches() {
    // As tests/graph.rs: one stream in this process, so cudarc's event records are not needed (and would
    // invalidate the capture).
    // SAFETY: no other stream touches these buffers.
    unsafe { gpu().context().disable_event_tracking() };
    let blas = Blas::new(stream()).unwrap();
    let mut r = rng(3);
    // A decode batch with long sequences (split-KV + combine) and a wide batch (two router tiles).
    let decode: Vec<usize> = (0..3).map(|_| r.gen_range(1500..4000)).collect();
    let wide: Vec<usize> = (0..700).map(|_| r.gen_range(1..300)).collect();
    for (name, lens) in [("decode", decode), ("wide", wide)] {
        let mut chain = Chain::new(&lens, lens.len() as u64);
        if name == "decode" {
            let shape = Chain::decode_shape(chain.t, chain.max_blocks);
            assert!(splits(shape).unwrap() > 1, "the decode shape should split the keys");
        }

        set_pdl(false);
        assert!(!pdl_enabled());
        chain.reset();
        chain.run(&blas); // also plans the cuBLASLt shapes, outside any capture
        let want = chain.host();
        // The plain launches did the work: argmax found a value in every row (no poison left in its inputs).
        let found = |what: &str, n: usize| {
            let ids = &want.iter().find(|(w, _)| *w == what).unwrap().1;
            assert!(ids.iter().all(|&i| (i as usize) < n), "{name}: {what} {ids:?}");
        };
        found("argmax", INTER);
        found("weight argmax", PREP.iter().product::<usize>() / 2);

        set_pdl(true);
        assert!(pdl_enabled());
        chain.reset();
        chain.run(&blas);
        assert_same(&format!("{name}, eager with PDL"), &chain.host(), &want);

        for pdl in [true, false] {
            set_pdl(pdl);
            let s = stream();
            s.synchronize().unwrap();
            s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
            chain.run(&blas);
            let graph = s.end_capture(CUgraphInstantiate_flags(0)).unwrap().expect("captured an empty graph");
            for replay in 0..2 {
                chain.reset();
                graph.launch().unwrap();
                assert_same(&format!("{name}, graph (PDL {pdl}) replay {replay}"), &chain.host(), &want);
            }
        }
    }
    set_pdl(true);
}
