//! CUDA graph capture of a decode step's tail: gather each sequence's last hidden row (embedding), lm_head on
//! cuBLASLt (linear_bf16, f32 logits), greedy sampling (argmax, a cluster launch for a vocabulary-sized row),
//! plus a bf16-output linear. In a process of its own, like tests/graph.rs: a stream capture must not see other
//! threads' work. The linear shapes are called once eagerly first (planning runs the heuristic on the host), then
//! the sequence is captured, replayed twice with every output poisoned in between, and compared byte for byte
//! with the eager call. Needs an sm_90 GPU and libcublasLt: run with `--include-ignored`.

#[path = "gpu/common.rs"]
#[allow(dead_code)]
mod common;

use common::*;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaSlice;
use llama4_kernels::argmax::argmax;
use llama4_kernels::embedding::embedding;
use llama4_kernels::linear::{Blas, LINEAR_WORKSPACE_BYTES};
use llama4_kernels::{bf16, Tensor, TensorMut};

const TOKENS: usize = 45;
const HIDDEN: usize = 640;
const VOCAB: usize = 40000; // over the argmax kernel's cluster threshold
const SEQS: usize = 3;
const PROJ: usize = 136;

struct Step {
    hidden: CudaSlice<bf16>,
    last: CudaSlice<i32>,
    lm_head: CudaSlice<bf16>,
    proj: CudaSlice<bf16>,
    ws: CudaSlice<u8>,
    rows: CudaSlice<bf16>,
    logits: CudaSlice<f32>,
    ids: CudaSlice<i32>,
    projected: CudaSlice<bf16>,
}

impl Step {
    fn new() -> Self {
        let mut r = rng(9);
        Step {
            hidden: upload_bf16(&rand_bf16(&mut r, TOKENS * HIDDEN, 2.0)),
            last: upload(&[9i32, 30, 44]),
            lm_head: upload_bf16(&rand_bf16(&mut r, VOCAB * HIDDEN, 0.1)),
            proj: upload_bf16(&rand_bf16(&mut r, PROJ * HIDDEN, 0.1)),
            ws: stream().alloc_zeros(LINEAR_WORKSPACE_BYTES).unwrap(),
            rows: poison_bf16(SEQS * HIDDEN),
            logits: poison_f32(SEQS * VOCAB),
            ids: upload(&[i32::MIN; SEQS]),
            projected: poison_bf16(TOKENS * PROJ),
        }
    }

    fn run(&mut self, blas: &Blas) {
        let s = stream();
        let mut ws = TensorMut::of(&mut self.ws, [LINEAR_WORKSPACE_BYTES]).unwrap();
        embedding(
            s,
            &Tensor::of(&self.hidden, [TOKENS, HIDDEN]).unwrap(),
            &Tensor::of(&self.last, [SEQS]).unwrap(),
            &mut TensorMut::of(&mut self.rows, [SEQS, HIDDEN]).unwrap(),
            None,
        )
        .unwrap();
        blas.linear_bf16(
            s,
            &Tensor::of(&self.rows, [SEQS, HIDDEN]).unwrap(),
            &Tensor::of(&self.lm_head, [VOCAB, HIDDEN]).unwrap(),
            &mut TensorMut::of(&mut self.logits, [SEQS, VOCAB]).unwrap(),
            &mut ws,
        )
        .unwrap();
        argmax(
            s,
            &Tensor::of(&self.logits, [SEQS, VOCAB]).unwrap(),
            &mut TensorMut::of(&mut self.ids, [SEQS]).unwrap(),
        )
        .unwrap();
        blas.linear_bf16(
            s,
            &Tensor::of(&self.hidden, [TOKENS, HIDDEN]).unwrap(),
            &Tensor::of(&self.proj, [PROJ, HIDDEN]).unwrap(),
            &mut TensorMut::of(&mut self.projected, [TOKENS, PROJ]).unwrap(),
            &mut ws,
        )
        .unwrap();
    }

    fn poison(&mut self) {
        let s = stream();
        s.memcpy_htod(&vec![bf16::from_bits(0x7FC0); self.rows.len()], &mut self.rows).unwrap();
        s.memcpy_htod(&vec![f32::NAN; self.logits.len()], &mut self.logits).unwrap();
        s.memcpy_htod(&vec![i32::MIN; SEQS], &mut self.ids).unwrap();
        s.memcpy_htod(&vec![bf16::from_bits(0x7FC0); self.projected.len()], &mut self.projected).unwrap();
    }

    /// Every output as bytes: gathered rows, logits, ids, projection.
    fn host(&self) -> [Vec<u32>; 4] {
        let b16 = |d: &CudaSlice<bf16>| download(d).iter().map(|v| v.to_bits() as u32).collect();
        [
            b16(&self.rows),
            download(&self.logits).iter().map(|v| v.to_bits()).collect(),
            download(&self.ids).iter().map(|&v| v as u32).collect(),
            b16(&self.projected),
        ]
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn captured_decode_tail_replays_like_a_direct_call() {
    // As tests/graph.rs: one stream in this process, so cudarc's event records are not needed (and would
    // invalidate the capture).
    // SAFETY: no other stream touches these buffers.
    unsafe { gpu().context().disable_event_tracking() };
    let blas = Blas::new(stream()).unwrap();
    let mut step = Step::new();
    step.run(&blas); // plans both shapes outside the capture
    let want = step.host();
    assert!(want[2].iter().all(|&id| (id as usize) < VOCAB), "eager ids {:?}", want[2]);
    let plans = blas.cached_plans();

    let s = stream();
    s.synchronize().unwrap();
    s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    step.run(&blas);
    let graph = s.end_capture(CUgraphInstantiate_flags(0)).unwrap().expect("captured an empty graph");
    assert_eq!(blas.cached_plans(), plans, "the capture planned nothing new");
    for replay in 0..2 {
        step.poison();
        graph.launch().unwrap();
        let got = step.host();
        for (name, (g, w)) in ["rows", "logits", "ids", "projected"].iter().zip(got.iter().zip(&want)) {
            assert_eq!(g, w, "replay {replay}: {name}");
        }
    }
}
