//! route_fp8 (kernels/router_fused.cu) against the three launches it fuses, bit for bit: the GEMV schedule of
//! linear_bf16 (logits), router with align 1 (ids, weights, counts, offsets, dest) and permute_fp8 scaled by the
//! routing weights (E4M3 rows and scales); the logits also within TOL_BF16 of the reference linear and the
//! routing against llama4_reference::router on them. Random odd shapes (1-8 tokens, 1-256 experts, hidden any
//! multiple of 8 up to 16384), every output poisoned, the workspace filled with garbage; the refusals; the C ABI.
use crate::common::*;
use crate::router::{assert_routing, reference_route, Routed};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use llama4_kernels::linear::{Blas, LinearSchedule, LINEAR_WORKSPACE_BYTES};
use llama4_kernels::permute::permute_fp8;
use llama4_kernels::router::{
    route_fp8, route_fp8_workspace_size, router, router_workspace_size, RouterKind, RouterOutputs, ROUTE_MAX_HIDDEN,
    ROUTE_MAX_TOKENS,
};
use llama4_kernels::{bf16, capi, Error, Status, Tensor, TensorMut, E4M3};
use llama4_reference::check::TOL_BF16;
use llama4_reference::linear::linear;
use llama4_reference::Precision;
use ndarray::Array2;
use proptest::prelude::*;
use std::sync::OnceLock;

fn blas() -> &'static Blas {
    static B: OnceLock<Blas> = OnceLock::new();
    B.get_or_init(|| Blas::new(stream()).unwrap_or_else(|e| panic!("cuBLASLt: {e}")))
}

/// Every output of one routing, on the device.
struct Outputs {
    logits: CudaSlice<bf16>,
    ids: CudaSlice<i32>,
    weights: CudaSlice<f32>,
    counts: CudaSlice<i32>,
    offsets: CudaSlice<i32>,
    dest: CudaSlice<i32>,
    q: CudaSlice<E4M3>,
    scales: CudaSlice<f32>,
}

impl Outputs {
    /// Poisoned: NaN logits, weights and scales, i32::MIN integers, 0x7F (NaN) bytes.
    fn poisoned(t: usize, e: usize, k: usize, h: usize) -> Outputs {
        let int = |n: usize| upload(&vec![i32::MIN; n]);
        Outputs {
            logits: poison_bf16(t * e),
            ids: int(t * k),
            weights: poison_f32(t * k),
            counts: int(e),
            offsets: int(e + 1),
            dest: int(t * k),
            q: poison_e4m3(t * k * h),
            scales: poison_f32(t * k),
        }
    }

    fn routed(&self) -> Routed {
        Routed {
            ids: download(&self.ids),
            weights: download(&self.weights),
            counts: download(&self.counts),
            offsets: download(&self.offsets),
            dest: download(&self.dest),
        }
    }
}

fn fused(x: &CudaSlice<bf16>, w: &CudaSlice<bf16>, [t, e, h]: [usize; 3], kind: RouterKind) -> Result<Outputs, Error> {
    let k = kind.k();
    let mut o = Outputs::poisoned(t, e, k, h);
    let mut ws = upload(&vec![0xA5u8; route_fp8_workspace_size(e).unwrap()]);
    let out = RouterOutputs {
        ids: &mut TensorMut::of(&mut o.ids, [t, k]).unwrap(),
        weights: &mut TensorMut::of(&mut o.weights, [t, k]).unwrap(),
        counts: &mut TensorMut::of(&mut o.counts, [e]).unwrap(),
        offsets: &mut TensorMut::of(&mut o.offsets, [e + 1]).unwrap(),
        dest: &mut TensorMut::of(&mut o.dest, [t, k]).unwrap(),
    };
    route_fp8(
        stream(),
        &Tensor::of(x, [t, h]).unwrap(),
        &Tensor::of(w, [e, h]).unwrap(),
        kind,
        &mut TensorMut::of(&mut o.logits, [t, e]).unwrap(),
        out,
        &mut TensorMut::of(&mut o.q, [t * k, h]).unwrap(),
        &mut TensorMut::of(&mut o.scales, [t * k]).unwrap(),
        &mut ws.as_view_mut(),
    )?;
    Ok(o)
}

/// The three launches route_fp8 replaces, into fresh poisoned buffers.
fn composed(x: &CudaSlice<bf16>, w: &CudaSlice<bf16>, [t, e, h]: [usize; 3], kind: RouterKind) -> Outputs {
    let k = kind.k();
    let s = stream();
    let mut o = Outputs::poisoned(t, e, k, h);
    let mut lws = s.alloc_zeros::<u8>(LINEAR_WORKSPACE_BYTES).unwrap();
    blas()
        .linear_bf16_with(
            s,
            &Tensor::of(x, [t, h]).unwrap(),
            &Tensor::of(w, [e, h]).unwrap(),
            &mut TensorMut::of(&mut o.logits, [t, e]).unwrap(),
            &mut TensorMut::of(&mut lws, [LINEAR_WORKSPACE_BYTES]).unwrap(),
            LinearSchedule::Gemv,
        )
        .unwrap();
    let mut rws = upload(&vec![0xA5u8; router_workspace_size::<bf16>(t, e).unwrap()]);
    let out = RouterOutputs {
        ids: &mut TensorMut::of(&mut o.ids, [t, k]).unwrap(),
        weights: &mut TensorMut::of(&mut o.weights, [t, k]).unwrap(),
        counts: &mut TensorMut::of(&mut o.counts, [e]).unwrap(),
        offsets: &mut TensorMut::of(&mut o.offsets, [e + 1]).unwrap(),
        dest: &mut TensorMut::of(&mut o.dest, [t, k]).unwrap(),
    };
    router(s, &Tensor::of(&o.logits, [t, e]).unwrap(), kind, 1, out, &mut rws.as_view_mut()).unwrap();
    permute_fp8(
        s,
        &Tensor::of(x, [t, h]).unwrap(),
        &Tensor::of(&o.dest, [t, k]).unwrap(),
        Some(&Tensor::of(&o.weights, [t, k]).unwrap()),
        None,
        &mut TensorMut::of(&mut o.q, [t * k, h]).unwrap(),
        &mut TensorMut::of(&mut o.scales, [t * k]).unwrap(),
    )
    .unwrap();
    o
}

fn bits_f32(d: &CudaSlice<f32>) -> Vec<u32> {
    download(d).iter().map(|v| v.to_bits()).collect()
}
fn bits_bf16(d: &CudaSlice<bf16>) -> Vec<u16> {
    download(d).iter().map(|v| v.to_bits()).collect()
}

fn check(t: usize, e: usize, h: usize, kind: RouterKind, seed: u64) {
    let mut r = rng(seed);
    // Router weights at about 1 / sqrt(h): logits of order one, as a trained router's.
    let xs = rand_bf16(&mut r, t * h, 2.0);
    let ws = rand_bf16(&mut r, e * h, 2.0 / (h as f32).sqrt());
    let (x, w) = (upload_bf16(&xs), upload_bf16(&ws));
    let shape = [t, e, h];
    let what = format!("route_fp8 {kind:?} T={t} E={e} H={h}");
    let got = fused(&x, &w, shape, kind).unwrap();
    let want = composed(&x, &w, shape, kind);
    assert_eq!(bits_bf16(&got.logits), bits_bf16(&want.logits), "{what}: logits differ from the GEMV's");
    let (g, c) = (got.routed(), want.routed());
    assert_eq!((&g.ids, &g.counts, &g.offsets, &g.dest), (&c.ids, &c.counts, &c.offsets, &c.dest), "{what}: routing");
    assert_eq!(bits_f32(&got.weights), bits_f32(&want.weights), "{what}: weights");
    let bytes = |d: &CudaSlice<E4M3>| download(d).iter().map(|v| v.0).collect::<Vec<u8>>();
    if let Some(i) = bytes(&got.q).iter().zip(bytes(&want.q)).position(|(a, b)| *a != b) {
        panic!("{what}: q byte {i} (row {}, column {}) differs from permute_fp8's", i / h, i % h);
    }
    assert_eq!(bits_f32(&got.scales), bits_f32(&want.scales), "{what}: scales");
    // Independently of the fused ops: the logits against the f64 reference, the routing against the reference
    // router on the kernel's own logits.
    let (xa, wa) = (Array2::from_shape_vec((t, h), xs).unwrap(), Array2::from_shape_vec((e, h), ws).unwrap());
    let logits = download_bf16(&got.logits);
    let reference = linear(xa.view(), wa.view(), Precision::Bf16);
    llama4_reference::check::assert_close(&format!("{what}: logits"), &logits, reference.as_slice().unwrap(), TOL_BF16);
    let sigmoid = matches!(kind, RouterKind::SigmoidTop1 | RouterKind::SigmoidTopK { .. });
    let routing = reference_route(&logits, t, e, kind, Precision::Bf16);
    assert_routing(&what, &g, &routing, 1, if sigmoid { 1e-2 } else { 1e-5 });
}

fn kinds(e: usize) -> impl Strategy<Value = RouterKind> {
    let top = e.min(8);
    prop_oneof![
        Just(RouterKind::SigmoidTop1),
        (1..=top).prop_map(|k| RouterKind::SigmoidTopK { k }),
        (1..=top, any::<bool>()).prop_map(|(k, renormalize)| RouterKind::SoftmaxTopK { k, renormalize }),
    ]
}

fn shape() -> impl Strategy<Value = (usize, usize, usize)> {
    let e = prop_oneof![Just(1usize), Just(16), Just(128), Just(256), 1usize..=256];
    let h = prop_oneof![Just(8usize), Just(5120), (1usize..=2048).prop_map(|v| 8 * v)];
    (1..=ROUTE_MAX_TOKENS, e, h)
}

proptest! {
    #![proptest_config(cases(48))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn route_fp8_is_the_three_launches_bit_for_bit(
        (t, e, h, kind) in shape().prop_flat_map(|(t, e, h)| (Just(t), Just(e), Just(h), kinds(e))),
        seed: u64,
    ) {
        check(t, e, h, kind, seed);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn scout_and_maverick_shapes() {
    for t in [1, 2, 5, 8] {
        check(t, 16, 5120, RouterKind::SigmoidTop1, 1 + t as u64);
        check(t, 128, 5120, RouterKind::SigmoidTop1, 2 + t as u64);
    }
    check(8, 256, ROUTE_MAX_HIDDEN, RouterKind::SoftmaxTopK { k: 8, renormalize: true }, 3);
    check(3, 7, 8, RouterKind::SigmoidTopK { k: 7 }, 4);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn refusals_and_zero_tokens() {
    let (e, h) = (16, 64);
    let (x, w) = (upload_bf16(&vec![0.5; 9 * h]), upload_bf16(&vec![0.25; e * h]));
    assert!(matches!(fused(&x, &w, [9, e, h], RouterKind::SigmoidTop1), Err(Error::Unsupported(_))));
    let o = fused(&upload_bf16(&[]), &w, [0, e, h], RouterKind::SigmoidTop1).unwrap();
    assert!(download(&o.counts).iter().all(|&c| c == i32::MIN), "zero tokens wrote counts");
    // hidden not a multiple of 8, and a misaligned x (one element in): invalid arguments, nothing launched.
    let (x7, w7) = (upload_bf16(&vec![0.5; 7]), upload_bf16(&vec![0.25; e * 7]));
    assert!(matches!(fused(&x7, &w7, [1, e, 7], RouterKind::SigmoidTop1), Err(Error::InvalidArgument(_))));
    let full = route_fp8_workspace_size(e).unwrap();
    for (misaligned, ws_bytes) in [(true, full), (false, full - 4)] {
        let xv = if misaligned { x.slice(1..1 + h) } else { x.slice(0..h) };
        let mut o = Outputs::poisoned(1, e, 1, h);
        let mut ws = upload(&vec![0u8; full]);
        let res = {
            let out = RouterOutputs {
                ids: &mut TensorMut::of(&mut o.ids, [1, 1]).unwrap(),
                weights: &mut TensorMut::of(&mut o.weights, [1, 1]).unwrap(),
                counts: &mut TensorMut::of(&mut o.counts, [e]).unwrap(),
                offsets: &mut TensorMut::of(&mut o.offsets, [e + 1]).unwrap(),
                dest: &mut TensorMut::of(&mut o.dest, [1, 1]).unwrap(),
            };
            route_fp8(
                stream(),
                &Tensor::new(xv, [1, h]).unwrap(),
                &Tensor::of(&w, [e, h]).unwrap(),
                RouterKind::SigmoidTop1,
                &mut TensorMut::of(&mut o.logits, [1, e]).unwrap(),
                out,
                &mut TensorMut::of(&mut o.q, [1, h]).unwrap(),
                &mut TensorMut::of(&mut o.scales, [1]).unwrap(),
                &mut ws.slice_mut(..ws_bytes),
            )
        };
        assert!(matches!(res, Err(Error::InvalidArgument(_))), "misaligned {misaligned}, {ws_bytes} bytes: {res:?}");
        assert!(download(&o.counts).iter().all(|&c| c == i32::MIN), "a refused call wrote counts");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn c_route_fp8_equals_the_safe_api() {
    let (t, e, h, k) = (5usize, 16usize, 5120usize, 2usize);
    let mut r = rng(11);
    let (xs, ws) = (rand_bf16(&mut r, t * h, 2.0), rand_bf16(&mut r, e * h, 0.03));
    let (x, w) = (upload_bf16(&xs), upload_bf16(&ws));
    let kind = RouterKind::SigmoidTopK { k };
    let safe = fused(&x, &w, [t, e, h], kind).unwrap();
    let mut bytes = 0usize;
    // SAFETY: bytes is a valid out-pointer.
    assert_eq!(unsafe { capi::l4k_route_fp8_workspace_size(e as i32, &mut bytes) }, Status::Ok);
    let mut o = Outputs::poisoned(t, e, k, h);
    let mut wsp = upload(&vec![0x5Au8; bytes]);
    let s = stream();
    let status = {
        let (px, _a) = x.device_ptr(s);
        let (pw, _b) = w.device_ptr(s);
        let (pl, _c) = o.logits.device_ptr_mut(s);
        let (pi, _d) = o.ids.device_ptr_mut(s);
        let (pwt, _e) = o.weights.device_ptr_mut(s);
        let (pc, _f) = o.counts.device_ptr_mut(s);
        let (po, _g) = o.offsets.device_ptr_mut(s);
        let (pd, _h) = o.dest.device_ptr_mut(s);
        let (pq, _i) = o.q.device_ptr_mut(s);
        let (ps, _j) = o.scales.device_ptr_mut(s);
        let (pws, _k) = wsp.device_ptr_mut(s);
        // SAFETY: device buffers of the sizes the header gives, on the stream's device, alive until synchronized.
        unsafe {
            capi::l4k_route_fp8(
                px as _,
                pw as _,
                t as i64,
                h as i64,
                e as i32,
                0,
                k as i32,
                0,
                pl as _,
                pi as _,
                pwt as _,
                pc as _,
                po as _,
                pd as _,
                pq as _,
                ps as _,
                (t * k) as i64,
                pws as _,
                bytes,
                s.cu_stream(),
            )
        }
    };
    assert_eq!(status, Status::Ok);
    assert_eq!(bits_bf16(&o.logits), bits_bf16(&safe.logits));
    let (a, b) = (o.routed(), safe.routed());
    assert_eq!((a.ids, a.counts, a.offsets, a.dest), (b.ids, b.counts, b.offsets, b.dest));
    assert_eq!(bits_f32(&o.weights), bits_f32(&safe.weights));
    assert_eq!(
        download(&o.q).iter().map(|v| v.0).collect::<Vec<_>>(),
        download(&safe.q).iter().map(|v| v.0).collect::<Vec<_>>()
    );
    assert_eq!(bits_f32(&o.scales), bits_f32(&safe.scales));
    // SAFETY: null out-pointer: an error, nothing written.
    assert_eq!(unsafe { capi::l4k_route_fp8_workspace_size(e as i32, std::ptr::null_mut()) }, Status::InvalidArgument);
}
