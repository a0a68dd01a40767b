//! Router against llama4_reference::router: ids, counts, offsets and destinations exact (inputs without ties),
//! weights within tolerance; padded layouts against reference padded_offsets; NaN rows; skewed routings.
use crate::common::*;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use llama4_kernels::router::{router, router_workspace_size, RouterKind, RouterLogits, RouterOutputs};
use llama4_kernels::{bf16, capi, Status, Tensor, TensorMut};
use llama4_reference::permute::padded_offsets;
use llama4_reference::router::{route_sigmoid_top1, route_sigmoid_topk, route_softmax_topk, Routing};
use llama4_reference::Precision;
use ndarray::Array2;
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::Rng;

/// The router's outputs, downloaded.
pub struct Routed {
    pub ids: Vec<i32>,
    pub weights: Vec<f32>,
    pub counts: Vec<i32>,
    pub offsets: Vec<i32>,
    pub dest: Vec<i32>,
}

/// Device buffers of one routing, kept for permute tests.
pub struct DeviceRouting {
    pub weights: CudaSlice<f32>,
    pub counts: CudaSlice<i32>,
    pub offsets: CudaSlice<i32>,
    pub dest: CudaSlice<i32>,
    pub host: Routed,
}

/// Logits without ties in any row: a shuffled ladder of distinct bf16 values times a power of two.
pub fn distinct_logits(r: &mut rand::rngs::StdRng, t: usize, e: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(t * e);
    for _ in 0..t {
        let mut row: Vec<f32> = (0..e).map(|i| (i as f32 - e as f32 / 2.0) / 16.0).collect();
        row.shuffle(r);
        let s = 2f32.powi(r.gen_range(-2..2));
        out.extend(row.iter().map(|v| v * s));
    }
    out
}

fn poison_i32(n: usize) -> CudaSlice<i32> {
    upload(&vec![i32::MIN; n])
}

/// Runs the router on `logits` (bf16 when `L` is bf16, f32 otherwise) with every output poisoned first.
pub fn device_route<L: RouterLogits>(
    logits: &CudaSlice<L>,
    t: usize,
    e: usize,
    kind: RouterKind,
    align: usize,
) -> DeviceRouting {
    let k = kind.k();
    let mut ids = poison_i32(t * k);
    let mut weights = poison_f32(t * k);
    let mut counts = poison_i32(e);
    let mut offsets = poison_i32(e + 1);
    let mut dest = poison_i32(t * k);
    let mut ws = upload(&vec![0xA5u8; router_workspace_size::<L>(t, e).unwrap()]);
    {
        let out = RouterOutputs {
            ids: &mut TensorMut::of(&mut ids, [t, k]).unwrap(),
            weights: &mut TensorMut::of(&mut weights, [t, k]).unwrap(),
            counts: &mut TensorMut::of(&mut counts, [e]).unwrap(),
            offsets: &mut TensorMut::of(&mut offsets, [e + 1]).unwrap(),
            dest: &mut TensorMut::of(&mut dest, [t, k]).unwrap(),
        };
        router(stream(), &Tensor::of(logits, [t, e]).unwrap(), kind, align, out, &mut ws.as_view_mut()).unwrap();
    }
    let host = Routed {
        ids: download(&ids),
        weights: download(&weights),
        counts: download(&counts),
        offsets: download(&offsets),
        dest: download(&dest),
    };
    DeviceRouting { weights, counts, offsets, dest, host }
}

pub fn reference_route(logits: &[f32], t: usize, e: usize, kind: RouterKind, p: Precision) -> Routing {
    let l = Array2::from_shape_vec((t, e), logits.to_vec()).unwrap();
    match kind {
        RouterKind::SigmoidTop1 => route_sigmoid_top1(l.view(), p),
        RouterKind::SigmoidTopK { k } => route_sigmoid_topk(l.view(), k, p),
        RouterKind::SoftmaxTopK { k, renormalize } => route_softmax_topk(l.view(), k, renormalize),
    }
}

/// The reference destination of (t, c) in the layout padded to `align`.
pub fn padded_dest(r: &Routing, align: usize) -> Vec<i32> {
    let po = padded_offsets(&r.counts, align as u32);
    r.dest.iter().zip(r.experts.iter()).map(|(&d, &e)| (po[e as usize] + d - r.offsets[e as usize]) as i32).collect()
}

/// Integers exact; weights NaN where the reference's are, else within `tol` relative L2.
pub fn assert_routing(what: &str, got: &Routed, want: &Routing, align: usize, tol: f64) {
    let ids: Vec<i32> = want.experts.iter().map(|&e| e as i32).collect();
    if let Some(i) = got.ids.iter().zip(&ids).position(|(a, b)| a != b) {
        panic!(
            "{what}: ids[{i}] (token {}, choice {}) = {}, reference {}",
            i / want.experts.ncols(),
            i % want.experts.ncols(),
            got.ids[i],
            ids[i]
        );
    }
    assert_eq!(got.counts, want.counts.iter().map(|&c| c as i32).collect::<Vec<_>>(), "{what}: counts");
    let po: Vec<i32> = padded_offsets(&want.counts, align as u32).iter().map(|&o| o as i32).collect();
    assert_eq!(got.offsets, po, "{what}: offsets");
    let dest = padded_dest(want, align);
    if let Some(i) = got.dest.iter().zip(&dest).position(|(a, b)| a != b) {
        panic!("{what}: dest[{i}] = {}, reference {}", got.dest[i], dest[i]);
    }
    let (mut g, mut w) = (vec![], vec![]);
    for (i, (&a, &b)) in got.weights.iter().zip(want.weights.iter()).enumerate() {
        assert_eq!(a.is_nan(), b.is_nan(), "{what}: weight {i} is {a}, reference {b}");
        if !b.is_nan() {
            g.push(a);
            w.push(b);
        }
    }
    llama4_reference::check::assert_close(&format!("{what}: weights"), &g, &w, tol);
}

fn check<L: RouterLogits>(
    logits: &[f32],
    to_dev: impl Fn(&[f32]) -> CudaSlice<L>,
    t: usize,
    e: usize,
    kind: RouterKind,
    align: usize,
    p: Precision,
) {
    let d = to_dev(logits);
    let got = device_route::<L>(&d, t, e, kind, align).host;
    let want = reference_route(logits, t, e, kind, p);
    // A bf16 sigmoid weight may differ by one bf16 rounding where device and host expf differ in the last bit.
    let sigmoid = matches!(kind, RouterKind::SigmoidTop1 | RouterKind::SigmoidTopK { .. });
    let tol = if sigmoid && p == Precision::Bf16 { 1e-2 } else { 1e-5 };
    assert_routing(&format!("router {kind:?} T={t} E={e} align={align}"), &got, &want, align, tol);
}

fn check_both(logits: &[f32], t: usize, e: usize, kind: RouterKind, align: usize) {
    check::<bf16>(logits, upload_bf16, t, e, kind, align, Precision::Bf16);
    check::<f32>(logits, upload, t, e, kind, align, Precision::F32);
}

fn experts() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(3), Just(16), Just(128), Just(256), 1usize..=256]
}

proptest! {
    #![proptest_config(cases(24))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn sigmoid_top1_matches_reference(t in 0usize..3000, e in experts(), align in prop::sample::select(vec![1usize, 8, 128]), seed: u64) {
        let logits = distinct_logits(&mut rng(seed), t, e);
        check_both(&logits, t, e, RouterKind::SigmoidTop1, align);
    }

    /// Llama 4 with num_experts_per_tok = k > 1: the general top-k path of the kernel in sigmoid mode.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn sigmoid_topk_matches_reference(t in 0usize..3000, e in experts(), k_raw in 2usize..=8,
                                      align in prop::sample::select(vec![1usize, 8, 128]), seed: u64) {
        let k = k_raw.min(e);
        let logits = distinct_logits(&mut rng(seed), t, e);
        check_both(&logits, t, e, RouterKind::SigmoidTopK { k }, align);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn softmax_topk_matches_reference(t in 0usize..3000, e in experts(), k_raw in 1usize..=8, renormalize: bool,
                                      align in prop::sample::select(vec![1usize, 4, 64]), seed: u64) {
        let k = k_raw.min(e);
        let logits = distinct_logits(&mut rng(seed), t, e);
        check_both(&logits, t, e, RouterKind::SoftmaxTopK { k, renormalize }, align);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn large_token_counts() {
    let mut r = rng(7);
    // Up to 256 tiles take the cooperative single launch (one warp per expert column after the grid barrier):
    // 128 tokens at E = 256 (2 tiles: each warp scans 16 columns), 4096 at E = 128 (32 tiles, 4 columns per
    // CTA), 16384 at E = 16, 128 (128 tiles) and 256 (256 tiles: 8 rows per lane); 65536 tokens at E >= 128 are
    // past that bound and take the last-CTA scan + fix-up.
    for (t, e, kind) in [
        (128, 256, RouterKind::SigmoidTop1),
        (4096, 128, RouterKind::SigmoidTop1),
        (16384, 256, RouterKind::SigmoidTop1),
        (16384, 16, RouterKind::SigmoidTop1),
        (16384, 128, RouterKind::SigmoidTop1),
        (16384, 128, RouterKind::SoftmaxTopK { k: 4, renormalize: false }),
        (65536, 16, RouterKind::SigmoidTop1),
        (65536, 128, RouterKind::SigmoidTop1),
        (65536, 256, RouterKind::SoftmaxTopK { k: 8, renormalize: true }),
        (16384, 128, RouterKind::SigmoidTopK { k: 2 }),
        (65536, 128, RouterKind::SigmoidTopK { k: 4 }),
    ] {
        let logits = distinct_logits(&mut r, t, e);
        check_both(&logits, t, e, kind, 128);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn skewed_routing_every_token_to_one_expert() {
    let mut r = rng(8);
    for (t, e) in [(65536, 16), (4097, 128), (1000, 3)] {
        let mut logits = distinct_logits(&mut r, t, e);
        let hot = e - 1;
        for row in logits.chunks_mut(e) {
            row[hot] = 100.0;
        }
        check_both(&logits, t, e, RouterKind::SigmoidTop1, 1);
        check_both(&logits, t, e, RouterKind::SoftmaxTopK { k: 2.min(e), renormalize: false }, 16);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn nan_and_infinite_logits_follow_the_reference_rule() {
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let e = 5;
    let rows: Vec<[f32; 5]> = vec![
        [nan, -1.0, nan, 0.5, -2.0],
        [nan, nan, nan, nan, nan],
        [nan, -inf, nan, nan, nan],
        [-inf, -inf, -inf, -inf, -inf],
        [0.0, -0.0, 0.0, -1.0, -1.0],
        [1.0, inf, 2.0, nan, -inf],
        [nan, 0.0, -200.0, nan, -300.0],
    ];
    let logits: Vec<f32> = rows.iter().flatten().copied().collect();
    let t = rows.len();
    check_both(&logits, t, e, RouterKind::SigmoidTop1, 1);
    for k in 1..=4 {
        check_both(&logits, t, e, RouterKind::SigmoidTopK { k }, 2);
        for renormalize in [false, true] {
            check_both(&logits, t, e, RouterKind::SoftmaxTopK { k, renormalize }, 2);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn zero_tokens_write_nothing() {
    let d = upload_bf16(&[]);
    let got = device_route::<bf16>(&d, 0, 16, RouterKind::SigmoidTop1, 1).host;
    assert!(got.counts.iter().all(|&c| c == i32::MIN) && got.ids.is_empty());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn c_router_equals_the_safe_api() {
    let (t, e, k) = (777, 16, 2);
    let logits = distinct_logits(&mut rng(10), t, e);
    let d = upload(&logits);
    let safe = device_route::<f32>(&d, t, e, RouterKind::SoftmaxTopK { k, renormalize: true }, 4).host;
    let mut bytes = 0usize;
    // SAFETY: bytes is a valid out-pointer.
    assert_eq!(unsafe { capi::l4k_router_workspace_size(t as i64, e as i32, 1, &mut bytes) }, Status::Ok);
    let (mut ids, mut w, mut c, mut o, mut de) =
        (poison_i32(t * k), poison_f32(t * k), poison_i32(e), poison_i32(e + 1), poison_i32(t * k));
    let mut ws = upload(&vec![0u8; bytes]);
    let s = stream();
    let status = {
        let (pl, _a) = d.device_ptr(s);
        let (pi, _b) = ids.device_ptr_mut(s);
        let (pw, _c) = w.device_ptr_mut(s);
        let (pc, _d) = c.device_ptr_mut(s);
        let (po, _e) = o.device_ptr_mut(s);
        let (pd, _f) = de.device_ptr_mut(s);
        let (pws, _g) = ws.device_ptr_mut(s);
        // SAFETY: device buffers of the sizes the header gives, on the stream's device, alive until synchronized.
        unsafe {
            capi::l4k_router(
                pl as _,
                1,
                t as i64,
                e as i32,
                1,
                k as i32,
                1,
                4,
                pi as _,
                pw as _,
                pc as _,
                po as _,
                pd as _,
                pws as _,
                bytes,
                s.cu_stream(),
            )
        }
    };
    assert_eq!(status, Status::Ok);
    assert_eq!(
        (download(&ids), download(&c), download(&o), download(&de)),
        (safe.ids, safe.counts, safe.offsets, safe.dest)
    );
    let wb: Vec<u32> = download(&w).iter().map(|x| x.to_bits()).collect();
    assert_eq!(wb, safe.weights.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
}
