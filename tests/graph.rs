//! CUDA graph capture of the router, in a process of its own: a stream capture must not see other threads'
//! work (the GPU property tests run in parallel on one stream), so this binary holds one test. The router takes
//! two multi-tile paths (kernels/router.cu): one cooperative launch, and memset + kernel + fix-up whose arrival
//! counter the graph itself must reset. Both are captured, replayed twice with the outputs poisoned in between,
//! and compared with a direct call. Needs an sm_90 GPU: run with `--include-ignored` (the staged runner does).

#[path = "gpu/common.rs"]
#[allow(dead_code)]
mod common;

use common::*;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaSlice;
use llama4_kernels::router::{router, router_workspace_size, RouterKind, RouterOutputs};
use llama4_kernels::{bf16, Tensor, TensorMut};

struct Buffers {
    ids: CudaSlice<i32>,
    weights: CudaSlice<f32>,
    counts: CudaSlice<i32>,
    offsets: CudaSlice<i32>,
    dest: CudaSlice<i32>,
    ws: CudaSlice<u8>,
}

impl Buffers {
    fn new(t: usize, e: usize) -> Self {
        let p = |n: usize| upload(&vec![i32::MIN; n]);
        Buffers {
            ids: p(t),
            weights: poison_f32(t),
            counts: p(e),
            offsets: p(e + 1),
            dest: p(t),
            ws: upload(&vec![0xA5u8; router_workspace_size::<bf16>(t, e).unwrap()]),
        }
    }

    fn route(&mut self, logits: &CudaSlice<bf16>, t: usize, e: usize) {
        let out = RouterOutputs {
            ids: &mut TensorMut::of(&mut self.ids, [t, 1]).unwrap(),
            weights: &mut TensorMut::of(&mut self.weights, [t, 1]).unwrap(),
            counts: &mut TensorMut::of(&mut self.counts, [e]).unwrap(),
            offsets: &mut TensorMut::of(&mut self.offsets, [e + 1]).unwrap(),
            dest: &mut TensorMut::of(&mut self.dest, [t, 1]).unwrap(),
        };
        let logits = Tensor::of(logits, [t, e]).unwrap();
        router(stream(), &logits, RouterKind::SigmoidTop1, 8, out, &mut self.ws.as_view_mut()).unwrap();
    }

    fn poison(&mut self) {
        let s = stream();
        s.memcpy_htod(&vec![i32::MIN; self.ids.len()], &mut self.ids).unwrap();
        s.memcpy_htod(&vec![i32::MIN; self.dest.len()], &mut self.dest).unwrap();
        s.memcpy_htod(&vec![i32::MIN; self.counts.len()], &mut self.counts).unwrap();
        s.memcpy_htod(&vec![i32::MIN; self.offsets.len()], &mut self.offsets).unwrap();
    }

    fn host(&self) -> [Vec<i32>; 4] {
        [download(&self.ids), download(&self.counts), download(&self.offsets), download(&self.dest)]
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn captured_router_replays_like_a_direct_call() {
    // As an engine that captures graphs would: cudarc's per-buffer event records (waits on events recorded
    // before the capture began) would invalidate it. One stream in this process, so nothing needs them.
    // SAFETY: no other stream touches these buffers.
    unsafe { gpu().context().disable_event_tracking() };
    // 5000 tokens at E = 128: 40 tiles, the cooperative launch. 65536: 512 tiles, past its histogram bound.
    for t in [5000, 65536] {
        let e = 128;
        let logits = upload_bf16(&rand_bf16(&mut rng(t as u64), t * e, 4.0));
        let mut direct = Buffers::new(t, e);
        direct.route(&logits, t, e);
        let want = direct.host();

        let mut graphed = Buffers::new(t, e);
        graphed.route(&logits, t, e); // the buffers' first use happens outside the capture, as in an engine
        let s = stream();
        s.synchronize().unwrap();
        s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
        graphed.route(&logits, t, e);
        let graph = s.end_capture(CUgraphInstantiate_flags(0)).unwrap().expect("captured an empty graph");
        for replay in 0..2 {
            graphed.poison();
            graph.launch().unwrap();
            let got = graphed.host();
            for (name, (g, w)) in ["ids", "counts", "offsets", "dest"].iter().zip(got.iter().zip(&want)) {
                assert_eq!(g, w, "T = {t}, replay {replay}: {name}");
            }
        }
    }
}
