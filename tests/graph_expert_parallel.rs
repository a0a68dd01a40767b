//! CUDA graph capture of expert-parallel dispatch + combine at world size 1, in a process of its own (a stream
//! capture must not see other threads' work): over a one-rank NCCL communicator (NCCL's send/recv captured as graph
//! nodes) and over the local transport. Captured once, replayed twice with the outputs poisoned in between, and
//! compared with a direct call: no host synchronization hides inside. Needs an sm_90 GPU and libnccl: run with
//! `--include-ignored` (the staged runner does, with libnccl.so linked on LD_LIBRARY_PATH).

#[path = "gpu/common.rs"]
#[allow(dead_code)]
mod common;

use common::*;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaSlice;
use cudarc::nccl::{Comm, Id};
use llama4_kernels::expert_parallel::{self as ep, Config, Grouped, Handle, Routing, Rows, RowsBy, Transport};
use llama4_kernels::{bf16, Tensor, TensorMut, E4M3};
use rand::Rng;

struct Case {
    config: Config,
    ids: CudaSlice<i32>,
    counts: CudaSlice<i32>,
    offsets: CudaSlice<i32>,
    dest: CudaSlice<i32>,
    q: CudaSlice<E4M3>,
    s: CudaSlice<f32>,
    shared: CudaSlice<bf16>,
    gq: CudaSlice<E4M3>,
    gs: CudaSlice<f32>,
    gc: CudaSlice<i32>,
    go: CudaSlice<i32>,
    y: CudaSlice<bf16>,
    out: CudaSlice<bf16>,
}

impl Case {
    fn new(t: usize, e: usize, h: usize) -> Case {
        let mut r = rng(t as u64);
        let ids: Vec<i32> = (0..t).map(|_| r.gen_range(0..e as i32)).collect();
        let mut counts = vec![0i32; e];
        ids.iter().for_each(|&x| counts[x as usize] += 1);
        let mut offsets = vec![0i32; e + 1];
        (0..e).for_each(|x| offsets[x + 1] = offsets[x] + counts[x]);
        let mut next = offsets.clone();
        let dest: Vec<i32> = ids
            .iter()
            .map(|&x| {
                next[x as usize] += 1;
                next[x as usize] - 1
            })
            .collect();
        let config = Config::new(1, 0, e, 1, h, t).with_align(16);
        let rows = config.layout().unwrap().grouped_rows;
        Case {
            config,
            ids: upload(&ids),
            counts: upload(&counts),
            offsets: upload(&offsets),
            dest: upload(&dest),
            q: upload(&(0..t * h).map(|_| E4M3(r.gen::<u8>() & 0x7E)).collect::<Vec<_>>()),
            s: upload(&(0..t).map(|_| r.gen_range(0.01f32..1.0)).collect::<Vec<_>>()),
            shared: upload_bf16(&rand_bf16(&mut r, t * h, 1.0)),
            gq: poison_e4m3(rows * h),
            gs: poison_f32(rows),
            gc: upload(&vec![0i32; e]),
            go: upload(&vec![0i32; e + 1]),
            y: upload_bf16(&rand_bf16(&mut r, rows * h, 1.0)),
            out: poison_bf16(t * h),
        }
    }

    /// dispatch, then combine of the fixed expert outputs `y`.
    fn run(&mut self, transport: &Transport, h: &mut Handle) {
        let c = self.config;
        let (t, e, hd) = (c.max_tokens, c.experts, c.hidden);
        let rows = c.layout().unwrap().grouped_rows;
        let s = stream();
        {
            let (ids, dest) = (Tensor::of(&self.ids, [t, 1]).unwrap(), Tensor::of(&self.dest, [t, 1]).unwrap());
            let (counts, offsets) =
                (Tensor::of(&self.counts, [e]).unwrap(), Tensor::of(&self.offsets, [e + 1]).unwrap());
            let routing = Routing { ids: &ids, counts: &counts, offsets: &offsets, dest: &dest };
            let (q, sc) = (Tensor::of(&self.q, [t, hd]).unwrap(), Tensor::of(&self.s, [t]).unwrap());
            let mut g = Grouped {
                q: &mut TensorMut::of(&mut self.gq, [rows, hd]).unwrap(),
                scales: &mut TensorMut::of(&mut self.gs, [rows]).unwrap(),
                counts: &mut TensorMut::of(&mut self.gc, [e]).unwrap(),
                offsets: &mut TensorMut::of(&mut self.go, [e + 1]).unwrap(),
            };
            ep::dispatch(transport, s, h, &routing, &Rows { q: &q, scales: &sc, by: RowsBy::Permuted }, &mut g)
                .unwrap();
        }
        ep::combine(
            transport,
            s,
            h,
            &Tensor::of(&self.y, [rows, hd]).unwrap(),
            None,
            Some(&Tensor::of(&self.shared, [t, hd]).unwrap()),
            &mut TensorMut::of(&mut self.out, [t, hd]).unwrap(),
        )
        .unwrap();
    }

    fn poison(&mut self) {
        let s = stream();
        s.memcpy_htod(&vec![E4M3(0x7F); self.gq.len()], &mut self.gq).unwrap();
        s.memcpy_htod(&vec![bf16::from_bits(0x7FC0); self.out.len()], &mut self.out).unwrap();
        s.memcpy_htod(&vec![i32::MIN; self.gc.len()], &mut self.gc).unwrap();
    }

    fn host(&self) -> (Vec<u8>, Vec<i32>, Vec<i32>, Vec<u16>) {
        let q = download(&self.gq).into_iter().map(|b| b.0).collect();
        let out = download(&self.out).into_iter().map(|v| v.to_bits()).collect();
        (q, download(&self.gc), download(&self.go), out)
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn captured_dispatch_and_combine_replay_like_a_direct_call() {
    // One stream in this process: cudarc's per-buffer event records are not needed, and would break a capture.
    // SAFETY: no other stream touches these buffers.
    unsafe { gpu().context().disable_event_tracking() };
    assert!(ep::nccl_available(), "libnccl.so could not be loaded (see scripts/gpu-run.sh)");
    let comm = Comm::from_rank(stream().clone(), 0, 1, Id::new().unwrap()).unwrap();
    for (name, transport) in [("nccl", Transport::Nccl(&comm)), ("local", Transport::Local)] {
        for (t, e, h) in [(128, 128, 5120), (1000, 16, 256)] {
            let mut case = Case::new(t, e, h);
            let mut handle = Handle::new(stream(), case.config).unwrap();
            case.run(&transport, &mut handle);
            let want = case.host();
            case.poison();
            let s = stream();
            s.synchronize().unwrap();
            s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
            case.run(&transport, &mut handle);
            let graph = s.end_capture(CUgraphInstantiate_flags(0)).unwrap().expect("captured an empty graph");
            for replay in 0..2 {
                case.poison();
                graph.launch().unwrap();
                let got = case.host();
                assert!(got == want, "{name}, T = {t}, E = {e}, H = {h}: replay {replay} differs from the direct call");
            }
            handle.status(stream(), true).unwrap().check().unwrap();
        }
    }
}
