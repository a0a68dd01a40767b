//! Expert parallelism against llama4_reference::expert_parallel: world size 1 over a real one-rank NCCL
//! communicator (every path but NCCL's multi-rank transport), the same through the C ABI (no communicator), and
//! N = 2, 4, 8 ranks simulated on one GPU (each rank its own handle, the transport replaced by device copies of
//! the slabs), with skewed routings and empty ranks. Grouped layouts are compared byte for byte, outputs bit for
//! bit; every run's status must be clean, and overflow and bad ids must be reported.
use crate::common::*;
use cudarc::driver::CudaSlice;
use cudarc::nccl::{Comm, Id};
use llama4_kernels::expert_parallel::{self as ep, Config, Grouped, Handle, Phase, Routing, Rows, RowsBy, Transport};
use llama4_kernels::{bf16, capi, Status, Tensor, TensorMut, E4M3};
use llama4_reference::dtype::round_bf16;
use llama4_reference::expert_parallel as reference;
use llama4_reference::permute::padded_offsets;
use llama4_reference::router::Routing as RefRouting;
use llama4_reference::{fp8, Precision};
use ndarray::{Array1, Array2};
use rand::seq::SliceRandom;
use rand::Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Style {
    Random,
    /// Every pair to the experts of one rank.
    Skewed,
    /// Ranks from the middle on have no tokens.
    Empty,
}

/// One rank's inputs: the reference's (unpadded routing, rows in its order) and the device's (the router's layout
/// padded to `router_align`, FP8 rows at the padded destinations or per token).
struct RankData {
    routing: RefRouting,
    q: Array2<u8>,
    scales: Array1<f32>,
    shared: Array2<f32>,
    by: RowsBy,
    ids: CudaSlice<i32>,
    counts: CudaSlice<i32>,
    offsets: CudaSlice<i32>,
    dest: CudaSlice<i32>,
    dq: CudaSlice<E4M3>,
    ds: CudaSlice<f32>,
    rows_in: usize,
    weights: CudaSlice<f32>,
    dshared: CudaSlice<bf16>,
}

/// FP8 bytes without the NaN codes (so dequantized rows stay finite).
fn rand_fp8(r: &mut rand::rngs::StdRng, n: usize) -> Vec<u8> {
    (0..n).map(|_| r.gen::<u8>()).map(|b| if b & 0x7F == 0x7F { b ^ 1 } else { b }).collect()
}

#[allow(clippy::too_many_arguments)]
fn rank_data(
    c: &Config,
    rank: usize,
    t: usize,
    style: Style,
    target: usize,
    by: RowsBy,
    router_align: u32,
    seed: u64,
) -> RankData {
    let (e, k, h, l) = (c.experts, c.k, c.hidden, c.local_experts());
    let mut r = rng(seed);
    let t = if style == Style::Empty && rank >= c.world_size / 2 { 0 } else { t };
    let pool: Vec<u32> = match style {
        Style::Skewed => ((target * l) as u32..((target + 1) * l) as u32).collect(),
        _ => (0..e as u32).collect(),
    };
    let k_eff = k.min(pool.len());
    assert_eq!(k_eff, k, "the case must allow k distinct experts");
    let mut experts = Array2::zeros((t, k));
    for ti in 0..t {
        let pick: Vec<u32> = pool.choose_multiple(&mut r, k).copied().collect();
        for (ci, &x) in pick.iter().enumerate() {
            experts[[ti, ci]] = x;
        }
    }
    let weights = Array2::from_shape_fn((t, k), |_| round_bf16(r.gen_range(0.1f32..1.0)));
    let routing = RefRouting::from_choices(experts, weights, e);
    let rows = match by {
        RowsBy::Permuted => t * k,
        RowsBy::Tokens => t,
    };
    let q = Array2::from_shape_vec((rows, h), rand_fp8(&mut r, rows * h)).unwrap();
    let scales = Array1::from_shape_fn(rows, |_| r.gen_range(1e-3f32..1.0));
    let shared = Array2::from_shape_vec((t, h), rand_bf16(&mut r, t * h, 2.0)).unwrap();
    // The router's padded layout: what the device reads.
    let po = padded_offsets(&routing.counts, router_align);
    let pdest: Vec<i32> = routing
        .dest
        .iter()
        .zip(routing.experts.iter())
        .map(|(&d, &x)| (po[x as usize] + d - routing.offsets[x as usize]) as i32)
        .collect();
    let (dq_host, ds_host, rows_in) = match by {
        RowsBy::Permuted => {
            let n = po[e] as usize;
            let mut dq = rand_fp8(&mut r, n * h);
            let mut ds = vec![f32::NAN; n];
            for (i, &pd) in pdest.iter().enumerate() {
                let src = routing.dest.as_slice().unwrap()[i] as usize;
                dq[pd as usize * h..(pd as usize + 1) * h].copy_from_slice(q.row(src).as_slice().unwrap());
                ds[pd as usize] = scales[src];
            }
            (dq, ds, n)
        }
        RowsBy::Tokens => (q.as_slice().unwrap().to_vec(), scales.to_vec(), t),
    };
    RankData {
        ids: upload(&routing.experts.iter().map(|&x| x as i32).collect::<Vec<_>>()),
        counts: upload(&routing.counts.iter().map(|&x| x as i32).collect::<Vec<_>>()),
        offsets: upload(&po.iter().map(|&x| x as i32).collect::<Vec<_>>()),
        dest: upload(&pdest),
        dq: upload(&dq_host.into_iter().map(E4M3).collect::<Vec<_>>()),
        ds: upload(&ds_host),
        rows_in,
        weights: upload(routing.weights.as_slice().unwrap()),
        dshared: upload_bf16(shared.as_slice().unwrap()),
        routing,
        q,
        scales,
        shared,
        by,
    }
}

fn reference_config(c: &Config) -> reference::Config {
    reference::Config {
        world: c.world_size,
        experts: c.experts,
        k: c.k,
        hidden: c.hidden,
        capacity: c.capacity,
        align: c.align as u32,
    }
}

fn reference_input(d: &RankData) -> reference::RankInput<'_> {
    let by = match d.by {
        RowsBy::Permuted => reference::RowsBy::Permuted,
        RowsBy::Tokens => reference::RowsBy::Tokens,
    };
    reference::RankInput { routing: &d.routing, q: d.q.view(), scales: d.scales.view(), by }
}

/// What an expert makes of a grouped row here: its dequantized value, rounded to bf16 (any function of the
/// row would do: combine only moves rows).
fn expert_rows(q: &Array2<u8>, scales: &[f32]) -> Array2<f32> {
    fp8::dequantize_rowwise(q.view(), Array1::from(scales.to_vec()).view()).mapv(round_bf16)
}

/// The grouped layout's device buffers, poisoned.
struct GroupedBuf {
    q: CudaSlice<E4M3>,
    s: CudaSlice<f32>,
    counts: CudaSlice<i32>,
    offsets: CudaSlice<i32>,
    rows: usize,
}

impl GroupedBuf {
    fn new(c: &Config) -> GroupedBuf {
        let rows = c.layout().unwrap().grouped_rows;
        let l = c.local_experts();
        GroupedBuf {
            q: poison_e4m3(rows * c.hidden),
            s: poison_f32(rows),
            counts: upload(&vec![i32::MIN; l]),
            offsets: upload(&vec![i32::MIN; l + 1]),
            rows,
        }
    }

    fn unpack(&mut self, c: &Config, h: &mut Handle) {
        let l = c.local_experts();
        let mut g = Grouped {
            q: &mut TensorMut::of(&mut self.q, [self.rows, c.hidden]).unwrap(),
            scales: &mut TensorMut::of(&mut self.s, [self.rows]).unwrap(),
            counts: &mut TensorMut::of(&mut self.counts, [l]).unwrap(),
            offsets: &mut TensorMut::of(&mut self.offsets, [l + 1]).unwrap(),
        };
        ep::dispatch_unpack(stream(), h, &mut g).unwrap();
    }

    /// Compares with the reference's layout; returns the expert outputs [rows, H] (NaN outside real rows) for it.
    fn check(&self, c: &Config, want: &reference::Grouped, what: &str) -> Vec<f32> {
        let h = c.hidden;
        let counts: Vec<u32> = download(&self.counts).into_iter().map(|x| x as u32).collect();
        let offsets: Vec<u32> = download(&self.offsets).into_iter().map(|x| x as u32).collect();
        assert_eq!(counts, want.counts, "{what}: grouped counts");
        assert_eq!(offsets, want.offsets, "{what}: grouped offsets");
        let used = *want.offsets.last().unwrap() as usize;
        let q: Vec<u8> = download(&self.q).into_iter().map(|b| b.0).collect();
        let s = download(&self.s);
        for row in 0..used {
            assert_eq!(&q[row * h..(row + 1) * h], want.q.row(row).as_slice().unwrap(), "{what}: grouped row {row}");
            assert_eq!(s[row].to_bits(), want.scales[row].to_bits(), "{what}: scale of grouped row {row}");
        }
        let y = expert_rows(&want.q, &want.scales);
        let mut out = vec![f32::NAN; self.rows * h];
        for rows in &want.row_of_slot {
            for &row in rows {
                out[row * h..(row + 1) * h].copy_from_slice(y.row(row).as_slice().unwrap());
            }
        }
        out
    }
}

fn pack(c: &Config, d: &RankData, h: &mut Handle) {
    let t = d.routing.experts.nrows();
    let (ids, dest) = (Tensor::of(&d.ids, [t, c.k]).unwrap(), Tensor::of(&d.dest, [t, c.k]).unwrap());
    let counts = Tensor::of(&d.counts, [c.experts]).unwrap();
    let offsets = Tensor::of(&d.offsets, [c.experts + 1]).unwrap();
    let routing = Routing { ids: &ids, counts: &counts, offsets: &offsets, dest: &dest };
    let (q, s) = (Tensor::of(&d.dq, [d.rows_in, c.hidden]).unwrap(), Tensor::of(&d.ds, [d.rows_in]).unwrap());
    ep::dispatch_pack(stream(), h, &routing, &Rows { q: &q, scales: &s, by: d.by }).unwrap();
}

fn combine_add(c: &Config, d: &RankData, h: &mut Handle, weighted: bool) -> Vec<f32> {
    let t = d.routing.experts.nrows();
    let mut out = poison_bf16(t * c.hidden);
    let w = Tensor::of(&d.weights, [t, c.k]).unwrap();
    let sh = Tensor::of(&d.dshared, [t, c.hidden]).unwrap();
    ep::combine_add(
        stream(),
        h,
        weighted.then_some(&w),
        Some(&sh),
        &mut TensorMut::of(&mut out, [t, c.hidden]).unwrap(),
    )
    .unwrap();
    download_bf16(&out)
}

fn assert_clean(h: &mut Handle, what: &str) {
    let s = h.status(stream(), true).unwrap();
    s.check().unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// N ranks on one GPU: every step on its own handle, the slabs copied between the handles.
fn simulated(c: &Config, tokens: usize, style: Style, by: RowsBy, weighted: bool, seed: u64) {
    let n = c.world_size;
    let target = (seed as usize) % n;
    let what = format!("{c:?} T={tokens} {style:?} {by:?} weighted={weighted}");
    let data: Vec<RankData> = (0..n)
        .map(|r| rank_data(&c.with_rank(r), r, tokens, style, target, by, 1 << (seed % 4), seed + r as u64))
        .collect();
    // The reference, step by step.
    let rc = reference_config(c);
    let sent: Vec<reference::Sent> =
        data.iter().enumerate().map(|(r, d)| reference::pack(&rc, r, &reference_input(d)).unwrap()).collect();
    let received = reference::exchange(&sent.iter().map(|s| s.slabs.clone()).collect::<Vec<_>>());
    let grouped: Vec<reference::Grouped> = received.iter().map(|r| reference::unpack(&rc, r).unwrap()).collect();
    let returned: Vec<Vec<Array2<f32>>> =
        grouped.iter().map(|g| reference::combine_pack(g, expert_rows(&g.q, &g.scales).view())).collect();
    let back = reference::exchange(&returned);

    let mut handles: Vec<Handle> = (0..n).map(|r| Handle::new(stream(), c.with_rank(r)).unwrap()).collect();
    for (d, h) in data.iter().zip(handles.iter_mut()) {
        pack(c, d, h);
    }
    ep::exchange_simulated(stream(), &mut handles, Phase::Dispatch).unwrap();
    let mut ys = Vec::new();
    for (r, h) in handles.iter_mut().enumerate() {
        let mut g = GroupedBuf::new(c);
        g.unpack(c, h);
        ys.push((g.rows, upload_bf16(&g.check(c, &grouped[r], &format!("rank {r} of {what}")))));
    }
    for (h, (rows, y)) in handles.iter_mut().zip(&ys) {
        ep::combine_pack(stream(), h, &Tensor::of(y, [*rows, c.hidden]).unwrap()).unwrap();
    }
    ep::exchange_simulated(stream(), &mut handles, Phase::Combine).unwrap();
    for (r, (d, h)) in data.iter().zip(handles.iter_mut()).enumerate() {
        let got = combine_add(c, d, h, weighted);
        let want = reference::combine_add(
            &rc,
            &d.routing,
            &sent[r],
            &back[r],
            weighted,
            Some(d.shared.view()),
            Precision::Bf16,
        );
        assert_matches(&format!("rank {r} of {what}"), &got, want.as_slice().unwrap(), 1e-6, 1.0);
        assert_clean(h, &format!("rank {r} of {what}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn simulated_worlds_match_reference() {
    let mut seed = 1;
    for n in [2usize, 4, 8] {
        for (experts, k, hidden, tokens) in [(2 * n, 1, 256, 37), (4 * n, 2, 40, 19), (16 * n, 1, 5120, 128)] {
            for style in [Style::Random, Style::Skewed, Style::Empty] {
                let by = if seed % 3 == 0 && k == 1 { RowsBy::Tokens } else { RowsBy::Permuted };
                let c = Config::new(n, 0, experts, k, hidden, tokens).with_align([1, 8, 128][seed as usize % 3]);
                simulated(&c, tokens, style, by, seed % 2 == 0, seed);
                seed += 1;
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn simulated_worlds_with_a_capped_capacity() {
    // Capacity below the worst case but above every demand of this routing: the same results.
    let n = 4;
    let c = Config::new(n, 0, 32, 1, 256, 64);
    let data: Vec<RankData> = (0..n)
        .map(|r| rank_data(&c.with_rank(r), r, 64, Style::Random, 0, RowsBy::Permuted, 1, 40 + r as u64))
        .collect();
    let demand = data
        .iter()
        .flat_map(|d| (0..n).map(move |x| (d.routing.offsets[(x + 1) * 8] - d.routing.offsets[x * 8]) as usize))
        .max()
        .unwrap();
    assert!(demand < 64);
    simulated(&c.with_capacity(demand), 64, Style::Random, RowsBy::Permuted, false, 40);
}

/// World size 1: dispatch and combine through `transport`; returns the output and checks the layout.
fn world_of_one(c: &Config, d: &RankData, transport: &Transport, weighted: bool) -> Vec<f32> {
    let rc = reference_config(c);
    let sent = reference::pack(&rc, 0, &reference_input(d)).unwrap();
    let grouped = reference::unpack(&rc, &sent.slabs).unwrap();
    let back = reference::combine_pack(&grouped, expert_rows(&grouped.q, &grouped.scales).view());
    let want = reference::combine_add(&rc, &d.routing, &sent, &back, weighted, Some(d.shared.view()), Precision::Bf16);

    let mut h = Handle::new(stream(), *c).unwrap();
    let t = d.routing.experts.nrows();
    let (ids, dest) = (Tensor::of(&d.ids, [t, c.k]).unwrap(), Tensor::of(&d.dest, [t, c.k]).unwrap());
    let counts = Tensor::of(&d.counts, [c.experts]).unwrap();
    let offsets = Tensor::of(&d.offsets, [c.experts + 1]).unwrap();
    let routing = Routing { ids: &ids, counts: &counts, offsets: &offsets, dest: &dest };
    let (q, s) = (Tensor::of(&d.dq, [d.rows_in, c.hidden]).unwrap(), Tensor::of(&d.ds, [d.rows_in]).unwrap());
    let mut g = GroupedBuf::new(c);
    let l = c.local_experts();
    {
        let mut out = Grouped {
            q: &mut TensorMut::of(&mut g.q, [g.rows, c.hidden]).unwrap(),
            scales: &mut TensorMut::of(&mut g.s, [g.rows]).unwrap(),
            counts: &mut TensorMut::of(&mut g.counts, [l]).unwrap(),
            offsets: &mut TensorMut::of(&mut g.offsets, [l + 1]).unwrap(),
        };
        ep::dispatch(transport, stream(), &mut h, &routing, &Rows { q: &q, scales: &s, by: d.by }, &mut out).unwrap();
    }
    let y = upload_bf16(&g.check(c, &grouped, &format!("{c:?}")));
    let mut out = poison_bf16(t * c.hidden);
    let w = Tensor::of(&d.weights, [t, c.k]).unwrap();
    let sh = Tensor::of(&d.dshared, [t, c.hidden]).unwrap();
    ep::combine(
        transport,
        stream(),
        &mut h,
        &Tensor::of(&y, [g.rows, c.hidden]).unwrap(),
        weighted.then_some(&w),
        Some(&sh),
        &mut TensorMut::of(&mut out, [t, c.hidden]).unwrap(),
    )
    .unwrap();
    let got = download_bf16(&out);
    assert_matches(&format!("world of one {c:?}"), &got, want.as_slice().unwrap(), 1e-6, 1.0);
    assert_clean(&mut h, &format!("{c:?}"));
    got
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn world_size_1_over_a_one_rank_nccl_communicator() {
    assert!(
        ep::nccl_available(),
        "libnccl.so could not be loaded: put PyTorch's nvidia-nccl lib directory (with a libnccl.so link) on \
         LD_LIBRARY_PATH, as scripts/gpu-run.sh does"
    );
    let comm = Comm::from_rank(stream().clone(), 0, 1, Id::new().unwrap()).unwrap();
    for (experts, k, hidden, tokens, align, by) in [
        (16, 1, 5120, 128, 1, RowsBy::Permuted),
        (16, 1, 5120, 1000, 128, RowsBy::Permuted),
        (128, 1, 5120, 128, 8, RowsBy::Tokens),
        (8, 2, 72, 33, 4, RowsBy::Permuted),
        (4, 1, 64, 0, 1, RowsBy::Permuted),
    ] {
        let c = Config::new(1, 0, experts, k, hidden, tokens).with_align(align);
        let d = rank_data(&c, 0, tokens, Style::Random, 0, by, 4, tokens as u64);
        for weighted in [false, true] {
            let nccl = world_of_one(&c, &d, &Transport::Nccl(&comm), weighted);
            let local = world_of_one(&c, &d, &Transport::Local, weighted);
            assert_eq!(
                nccl.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                local.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_c_abi_runs_a_world_of_one_without_a_communicator() {
    let c = Config::new(1, 0, 16, 1, 256, 50).with_align(8);
    let d = rank_data(&c, 0, 50, Style::Random, 0, RowsBy::Permuted, 1, 77);
    let want = world_of_one(&c, &d, &Transport::Local, false);
    let cfg = ep::EpConfig {
        world_size: 1,
        rank: 0,
        experts: 16,
        k: 1,
        hidden: 256,
        max_tokens: 50,
        capacity: 50,
        align: 8,
        _pad: 0,
    };
    let (mut bytes, mut rows) = (0usize, 0i64);
    // SAFETY: host pointers to locals.
    unsafe {
        assert_eq!(capi::l4k_ep_workspace_size(&cfg, &mut bytes), Status::Ok);
        assert_eq!(capi::l4k_ep_grouped_rows(&cfg, &mut rows), Status::Ok);
    }
    assert_eq!((bytes, rows as usize), (ep::workspace_size(&c).unwrap(), c.layout().unwrap().grouped_rows));
    let mut ws = upload(&vec![0u8; bytes]);
    let mut g = GroupedBuf::new(&c);
    let mut out = poison_bf16(50 * 256);
    let y = {
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        let s = stream();
        let p = |b: &CudaSlice<i32>| b.device_ptr(s).0 as *const i32;
        let (ids, counts, offsets, dest) = (p(&d.ids), p(&d.counts), p(&d.offsets), p(&d.dest));
        let rows_ptr = d.dq.device_ptr(s).0 as *const std::ffi::c_void;
        let scales_ptr = d.ds.device_ptr(s).0 as *const f32;
        let w = ws.device_ptr_mut(s).0 as *mut std::ffi::c_void;
        // SAFETY: every pointer covers the shape the header gives it; the stream is live.
        let st = unsafe {
            capi::l4k_ep_dispatch(
                std::ptr::null_mut(),
                &cfg,
                50,
                ids,
                counts,
                offsets,
                dest,
                rows_ptr,
                scales_ptr,
                d.rows_in as i64,
                ep::ROWS_PERMUTED,
                g.q.device_ptr_mut(s).0 as _,
                g.s.device_ptr_mut(s).0 as _,
                g.counts.device_ptr_mut(s).0 as _,
                g.offsets.device_ptr_mut(s).0 as _,
                rows,
                w,
                bytes,
                s.cu_stream(),
            )
        };
        assert_eq!(st, Status::Ok);
        let rc = reference_config(&c);
        let sent = reference::pack(&rc, 0, &reference_input(&d)).unwrap();
        let y = upload_bf16(&g.check(&c, &reference::unpack(&rc, &sent.slabs).unwrap(), "C ABI"));
        // SAFETY: as above.
        let st = unsafe {
            capi::l4k_ep_combine(
                std::ptr::null_mut(),
                &cfg,
                50,
                y.device_ptr(s).0 as _,
                rows,
                std::ptr::null(),
                d.dshared.device_ptr(s).0 as _,
                out.device_ptr_mut(s).0 as _,
                w,
                bytes,
                s.cu_stream(),
            )
        };
        assert_eq!(st, Status::Ok);
        let mut status = [7u32; 4];
        // SAFETY: as above; `status` holds 4 u32.
        assert_eq!(unsafe { capi::l4k_ep_status(w, 1, status.as_mut_ptr(), s.cu_stream()) }, Status::Ok);
        assert_eq!(status, [0, 0, 50, 0]);
        y
    };
    drop(y);
    assert_eq!(
        download_bf16(&out).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn overflow_and_bad_ids_are_reported() {
    // Two ranks simulated; rank 0 sends all 40 pairs to rank 1 with a capacity of 30.
    let c = Config::new(2, 0, 8, 1, 64, 40).with_capacity(30);
    let skew = rank_data(&c, 0, 40, Style::Skewed, 1, RowsBy::Permuted, 1, 5);
    let calm = rank_data(&c.with_rank(1), 1, 8, Style::Random, 0, RowsBy::Permuted, 1, 6);
    let mut handles = vec![Handle::new(stream(), c).unwrap(), Handle::new(stream(), c.with_rank(1)).unwrap()];
    pack(&c, &skew, &mut handles[0]);
    pack(&c, &calm, &mut handles[1]);
    let s = handles[0].status(stream(), true).unwrap();
    assert_eq!((s.flags, s.dropped, s.max_demand), (ep::EP_OVERFLOW, 10, 40), "{s:?}");
    assert!(s.check().unwrap_err().to_string().contains("10 pairs not sent"));
    assert_clean(&mut handles[1], "the calm rank");
    // The receiver sees a full slab, never more: the kept 30 land, nothing else is flagged.
    ep::exchange_simulated(stream(), &mut handles, Phase::Dispatch).unwrap();
    let mut g = GroupedBuf::new(&c.with_rank(1));
    g.unpack(&c.with_rank(1), &mut handles[1]);
    let counts = download(&g.counts);
    assert!(counts.iter().sum::<i32>() >= 30, "{counts:?}");
    assert_clean(&mut handles[1], "the receiver");

    // An expert id outside [0, E): that pair is not sent.
    let mut bad = rank_data(&c.with_capacity(40), 0, 10, Style::Random, 0, RowsBy::Permuted, 1, 7);
    let mut ids = download(&bad.ids);
    ids[3] = 999;
    bad.ids = upload(&ids);
    let mut h = Handle::new(stream(), c.with_capacity(40)).unwrap();
    pack(&c.with_capacity(40), &bad, &mut h);
    let s = h.status(stream(), false).unwrap();
    assert_eq!((s.flags, s.dropped), (ep::EP_BAD_EXPERT, 1), "{s:?}");
    // Sticky until cleared.
    assert_eq!(h.status(stream(), true).unwrap(), s);
    assert_eq!(h.status(stream(), false).unwrap(), ep::EpStatus::default());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn steps_out_of_order_are_refused() {
    let c = Config::new(1, 0, 4, 1, 16, 4);
    let mut h = Handle::new(stream(), c).unwrap();
    let y = upload_bf16(&vec![0.0; c.layout().unwrap().grouped_rows * 16]);
    let e = ep::combine_pack(stream(), &mut h, &Tensor::of(&y, [4, 16]).unwrap()).unwrap_err();
    assert!(e.to_string().contains("combine_pack after Idle"), "{e}");
    assert!(ep::exchange(&Transport::Local, stream(), &mut h, Phase::Dispatch).is_err());
}
