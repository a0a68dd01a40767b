//! Dense linear against llama4_reference: bf16 x bf16 -> bf16 within TOL_BF16 of linear(.., Bf16) and -> f32
//! within TOL_F32 of the f64 product, on both schedules (cuBLASLt and the streaming GEMV, each forced, and Auto),
//! over odd and model shapes (n = 5 like a 5-expert router, k = 40, 5120...); the GEMV's multi-pass row counts,
//! partial 16-column tiles and its refusals; the FP8 rowwise linear (the grouped GEMM with one expert) within TOL_FP8_GEMM of
//! grouped_gemm_rowwise on the same quantized inputs; the plan cache; the C entry points. Outputs poisoned.
use crate::common::*;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use llama4_kernels::grouped_gemm::workspace_size;
use llama4_kernels::linear::{linear_fp8, Blas, LinearOut, LinearSchedule, LINEAR_WORKSPACE_BYTES};
use llama4_kernels::quant::quant_fp8;
use llama4_kernels::{bf16, capi, Error, Status, Tensor, TensorMut, E4M3};
use llama4_reference::check::{TOL_BF16, TOL_F32, TOL_FP8_GEMM};
use llama4_reference::dtype::round_bf16;
use llama4_reference::grouped_gemm::grouped_gemm_rowwise;
use llama4_reference::linear::linear;
use llama4_reference::Precision;
use ndarray::{Array2, Array3};
use proptest::prelude::*;
use std::sync::OnceLock;

/// One handle for the property tests (plans accumulate across cases, as in an engine).
fn blas() -> &'static Blas {
    static B: OnceLock<Blas> = OnceLock::new();
    B.get_or_init(|| Blas::new(stream()).unwrap_or_else(|e| panic!("cuBLASLt: {e}")))
}

fn workspace() -> CudaSlice<u8> {
    stream().alloc_zeros(LINEAR_WORKSPACE_BYTES).unwrap()
}

/// m x n x k capped near 2^31 multiply-adds: the f64 reference stays a few seconds at most.
fn cap_m(m: usize, n: usize, k: usize) -> usize {
    if m == 0 {
        0
    } else {
        m.min((1usize << 31) / (n * k)).max(1)
    }
}

fn to_array(v: &[f32], rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_vec((rows, cols), v.to_vec()).unwrap()
}

/// `y = x w^T` on the device into a poisoned `y`, schedule Auto; `O` picks the output type.
fn device_linear<O: LinearOut>(
    blas: &Blas,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    y: &mut CudaSlice<O>,
    m: usize,
    n: usize,
    k: usize,
) {
    device_linear_on(blas, x, w, y, [m, n, k], LinearSchedule::Auto).unwrap()
}

/// As [`device_linear`] on a chosen schedule (y poisoned first).
fn device_linear_on<O: LinearOut>(
    blas: &Blas,
    x: &CudaSlice<bf16>,
    w: &CudaSlice<bf16>,
    y: &mut CudaSlice<O>,
    [m, n, k]: [usize; 3],
    schedule: LinearSchedule,
) -> Result<(), Error> {
    let mut ws = workspace();
    blas.linear_bf16_with(
        stream(),
        &Tensor::of(x, [m, k]).unwrap(),
        &Tensor::of(w, [n, k]).unwrap(),
        &mut TensorMut::of(y, [m, n]).unwrap(),
        &mut TensorMut::of(&mut ws, [LINEAR_WORKSPACE_BYTES]).unwrap(),
        schedule,
    )
}

/// Both outputs of `x w^T` on `schedule` (fresh poisoned buffers) against the reference.
fn check_schedule(blas: &Blas, x: &[f32], w: &[f32], [m, n, k]: [usize; 3], schedule: LinearSchedule) {
    let (dx, dw) = (upload_bf16(x), upload_bf16(w));
    let mut y16 = poison_bf16(m * n);
    let mut y32 = poison_f32(m * n);
    device_linear_on(blas, &dx, &dw, &mut y16, [m, n, k], schedule).unwrap();
    device_linear_on(blas, &dx, &dw, &mut y32, [m, n, k], schedule).unwrap();
    let (xa, wa) = (to_array(x, m, k), to_array(w, n, k));
    let want16 = linear(xa.view(), wa.view(), Precision::Bf16);
    let want32 = linear(xa.view(), wa.view(), Precision::F32);
    let shape = format!("{schedule:?} m = {m}, n = {n}, k = {k}");
    assert_bf16(&format!("linear bf16 {shape}"), &download_bf16(&y16), want16.as_slice().unwrap());
    llama4_reference::check::assert_close(
        &format!("linear f32 {shape}"),
        &download(&y32),
        want32.as_slice().unwrap(),
        TOL_F32,
    );
    if schedule == LinearSchedule::Gemv {
        // A fixed summation order: a second call gives the same bits.
        let mut again = poison_f32(m * n);
        device_linear_on(blas, &dx, &dw, &mut again, [m, n, k], schedule).unwrap();
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(download(&again)), bits(download(&y32)), "GEMV {shape}: not deterministic");
    }
}

/// The tolerance, and (on outputs large enough for the fraction to mean something) almost every element
/// bit-identical: a bf16 rounding of the f32 sum differs only where the f32 and f64 sums straddle a rounding
/// boundary.
fn assert_bf16(what: &str, got: &[f32], want: &[f32]) {
    let min_exact = if got.len() >= 1000 { 0.98 } else { 0.0 };
    assert_matches(what, got, want, TOL_BF16, min_exact);
}

fn dim_n() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(5), 1usize..64, Just(40), Just(128), Just(1000), Just(5120)]
}
fn dim_k() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(40), 1usize..200, Just(128), Just(640), Just(5120)]
}
fn dim_m() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), Just(1), 1usize..300]
}

proptest! {
    #![proptest_config(cases(24))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn linear_bf16_matches_reference(m in dim_m(), n in dim_n(), k in dim_k(), seed: u64) {
        let m = cap_m(m, n, k);
        let mut r = rng(seed);
        let (x, w) = (rand_bf16(&mut r, m * k, 2.0), rand_bf16(&mut r, n * k, 0.1));
        check_schedule(blas(), &x, &w, [m, n, k], LinearSchedule::Auto);
        check_schedule(blas(), &x, &w, [m, n, k], LinearSchedule::Blas);
        if k % 8 == 0 {
            check_schedule(blas(), &x, &w, [m, n, k], LinearSchedule::Gemv);
        }
    }

    /// The GEMV on what it is built for and around it: 1 to 8 rows (one pass) and up to 20 (three passes),
    /// n not a multiple of 16 (a partial last tile, rows g + 8 past n), k from one 8-element lane to 5120 and
    /// not a multiple of the 64-byte step; n = 6151 with k <= 5120 runs the 8-warp configuration.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn linear_gemv_matches_reference(m in prop_oneof![1usize..=8, 9usize..=20],
                                     n in prop_oneof![1usize..40, Just(2047), Just(2049), Just(5123), Just(6151)],
                                     k8 in prop_oneof![1usize..80, Just(640), Just(1001)], seed: u64) {
        let k = 8 * k8;
        let mut r = rng(seed);
        let (x, w) = (rand_bf16(&mut r, m * k, 2.0), rand_bf16(&mut r, n * k, 0.1));
        check_schedule(blas(), &x, &w, [m, n, k], LinearSchedule::Gemv);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn linear_fp8_matches_reference(m in dim_m(), n in prop_oneof![Just(8usize), Just(40), Just(128), Just(1000), Just(5120)],
                                    k in prop_oneof![Just(16usize), Just(48), Just(128), Just(640), Just(5120)], seed: u64) {
        let m = cap_m(m, n, k);
        let mut r = rng(seed);
        let (x, w) = (rand_bf16(&mut r, m * k, 2.0), rand_bf16(&mut r, n * k, 0.1));
        let (xq, xs, dxq, dxs) = quantize(&x, m, k);
        let (wq, wsc, dwq, dws) = quantize(&w, n, k);
        let offsets = upload(&[0i32, m as i32]);
        let mut y = poison_bf16(m * n);
        let mut ws: CudaSlice<u8> = stream().alloc_zeros(workspace_size(1).unwrap()).unwrap();
        let ws_len = ws.len();
        linear_fp8(
            stream(),
            &Tensor::of(&dxq, [m, k]).unwrap(),
            &Tensor::of(&dxs, [m]).unwrap(),
            &Tensor::of(&dwq, [n, k]).unwrap(),
            &Tensor::of(&dws, [n]).unwrap(),
            &Tensor::of(&offsets, [2]).unwrap(),
            &mut TensorMut::of(&mut y, [m, n]).unwrap(),
            &mut TensorMut::of(&mut ws, [ws_len]).unwrap(),
        ).unwrap();
        let want = grouped_gemm_rowwise(
            Array2::from_shape_vec((m, k), xq).unwrap().view(),
            ndarray::Array1::from(xs).view(),
            Array3::from_shape_vec((1, n, k), wq).unwrap().view(),
            Array2::from_shape_vec((1, n), wsc).unwrap().view(),
            &[0, m as u32],
        ).unwrap().mapv(round_bf16);
        llama4_reference::check::assert_close(&format!("linear fp8 m = {m}, n = {n}, k = {k}"), &download_bf16(&y), want.as_slice().unwrap(), TOL_FP8_GEMM);
    }
}

/// quant_fp8 of `v` [rows, cols] on the device: host bytes and scales, and the device buffers.
fn quantize(v: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>, CudaSlice<E4M3>, CudaSlice<f32>) {
    let d = upload_bf16(v);
    let mut q = poison_e4m3(rows * cols);
    let mut s = poison_f32(rows);
    quant_fp8(
        stream(),
        &Tensor::of(&d, [rows, cols]).unwrap(),
        &mut TensorMut::of(&mut q, [rows, cols]).unwrap(),
        &mut TensorMut::of(&mut s, [rows]).unwrap(),
    )
    .unwrap();
    (download(&q).iter().map(|b| b.0).collect(), download(&s), q, s)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn llama4_scout_shapes() {
    // The projections of one Scout layer and the router (16 experts), at decode and small-prefill sizes;
    // lm_head at m = 2 with f32 logits.
    let mut r = rng(21);
    for (n, k, ms) in [
        (7168usize, 5120usize, &[1usize, 37][..]),
        (5120, 5120, &[8][..]),
        (16384, 5120, &[3][..]),
        (5120, 8192, &[5][..]),
        (16, 5120, &[1, 255][..]),
        (202048, 5120, &[2][..]),
    ] {
        let w = rand_bf16(&mut r, n * k, 0.05);
        let dw = upload_bf16(&w);
        let wa = to_array(&w, n, k);
        for &m in ms {
            let x = rand_bf16(&mut r, m * k, 2.0);
            let dx = upload_bf16(&x);
            let xa = to_array(&x, m, k);
            let lm_head = n == 202048;
            let want = linear(xa.view(), wa.view(), if lm_head { Precision::F32 } else { Precision::Bf16 });
            for schedule in [LinearSchedule::Auto, LinearSchedule::Blas, LinearSchedule::Gemv] {
                let shape = format!("{schedule:?} m = {m}, n = {n}, k = {k}");
                if lm_head {
                    let mut y = poison_f32(m * n);
                    device_linear_on(blas(), &dx, &dw, &mut y, [m, n, k], schedule).unwrap();
                    let what = format!("lm_head {shape}");
                    llama4_reference::check::assert_close(&what, &download(&y), want.as_slice().unwrap(), TOL_F32);
                } else {
                    let mut y = poison_bf16(m * n);
                    device_linear_on(blas(), &dx, &dw, &mut y, [m, n, k], schedule).unwrap();
                    assert_bf16(&format!("linear {shape}"), &download_bf16(&y), want.as_slice().unwrap());
                }
            }
        }
    }
}

/// The GEMV on a bounded grid ([`LinearSchedule::GemvBounded`]: CTAs looping over tiles, the next tile prefetched)
/// against the reference (both outputs) and bit for bit against the one-CTA-a-tile GEMV (f32).
fn check_bounded(x: &[f32], w: &[f32], [m, n, k]: [usize; 3], ctas: u32) {
    check_schedule(blas(), x, w, [m, n, k], LinearSchedule::GemvBounded { ctas });
    let (dx, dw) = (upload_bf16(x), upload_bf16(w));
    let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (mut once, mut bounded) = (poison_f32(m * n), poison_f32(m * n));
    device_linear_on(blas(), &dx, &dw, &mut once, [m, n, k], LinearSchedule::Gemv).unwrap();
    device_linear_on(blas(), &dx, &dw, &mut bounded, [m, n, k], LinearSchedule::GemvBounded { ctas }).unwrap();
    assert_eq!(bits(download(&bounded)), bits(download(&once)), "bounded to {ctas} CTAs, m {m} n {n} k {k}");
}

proptest! {
    #![proptest_config(cases(24))]

    /// From one CTA to more CTAs than tiles, at one pass and several (m up to 20), partial last tiles and both
    /// configurations (n = 6151 at k <= 5120 runs 8 warps); Scout's shapes are in `bounded_gemv_at_scout_shapes`.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn bounded_gemv_gives_the_gemv_bits(m in prop_oneof![1usize..=8, 9usize..=20],
                                        n in prop_oneof![513usize..700, Just(2049), Just(5123), Just(6151)],
                                        k8 in prop_oneof![1usize..80, Just(640), Just(1001)],
                                        ctas in prop_oneof![Just(1u32), 2u32..40, Just(131), Just(385), Just(100_000)],
                                        seed: u64) {
        let k = 8 * k8;
        let mut r = rng(seed);
        let (x, w) = (rand_bf16(&mut r, m * k, 2.0), rand_bf16(&mut r, n * k, 0.1));
        check_bounded(&x, &w, [m, n, k], ctas);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bounded_gemv_at_scout_shapes() {
    let mut r = rng(77);
    // The shared expert's gate_up and down, qkv (8 warps) at one row; the bounds around the H200's 132 SMs.
    for (n, k) in [(16384usize, 5120usize), (5120, 8192), (7168, 5120)] {
        let (x, w) = (rand_bf16(&mut r, k, 2.0), rand_bf16(&mut r, n * k, 0.05));
        for ctas in [132u32, 264, 396, 1023] {
            check_bounded(&x, &w, [1, n, k], ctas);
        }
    }
}

/// A bounded grid refuses what it cannot serve, writing nothing: zero CTAs (InvalidArgument), a shape whose k
/// the GEMV splits over a cluster (n <= 512 at up to 8 rows: Unsupported), what the GEMV itself cannot read.
#[test]
#[ignore = "needs a CUDA GPU"]
fn bounded_gemv_refusals() {
    let mut r = rng(35);
    for (m, n, k, ctas, want) in [
        (1usize, 2048usize, 64usize, 0u32, "ctas must be 1..=2^31-1"),
        (1, 2048, 64, u32::MAX, "ctas must be 1..=2^31-1"),
        (1, 512, 64, 8, "needs m > 8 or n > 512"),
        (8, 16, 64, 1, "needs m > 8 or n > 512"),
        (2, 2048, 44, 8, "k % 8 == 0"),
    ] {
        let (x, w) = (rand_bf16(&mut r, m * k, 2.0), rand_bf16(&mut r, n * k, 0.1));
        let (dx, dw) = (upload_bf16(&x), upload_bf16(&w));
        let mut y = poison_bf16(m * n);
        let e =
            device_linear_on(blas(), &dx, &dw, &mut y, [m, n, k], LinearSchedule::GemvBounded { ctas }).unwrap_err();
        let kind_ok = match &e {
            Error::InvalidArgument(msg) | Error::Unsupported(msg) => msg.contains(want),
            _ => false,
        };
        assert!(kind_ok, "m {m} n {n} k {k} ctas {ctas}: {e}");
        assert!(download_bf16(&y).iter().all(|v| v.is_nan()), "a refused call writes nothing");
    }
    // The split (hence the refusal) stops at 8 rows: 9 rows of the same 16 columns are served.
    let (m, n, k) = (9usize, 16usize, 64usize);
    let (x, w) = (rand_bf16(&mut r, m * k, 2.0), rand_bf16(&mut r, n * k, 0.1));
    check_bounded(&x, &w, [m, n, k], 1);
}

/// The GEMV refuses (Unsupported, saying why) what its 16-byte lanes cannot read; Auto serves the same calls on
/// cuBLASLt, correctly.
#[test]
#[ignore = "needs a CUDA GPU"]
fn linear_gemv_refusals_and_auto_around_them() {
    let mut r = rng(33);
    let (m, n) = (2usize, 2050usize);
    for (k, x_at) in [(44usize, 0usize), (48, 1)] {
        let x = rand_bf16(&mut r, m * k + 1, 2.0);
        let w = rand_bf16(&mut r, n * k, 0.1);
        let (dx, dw) = (upload_bf16(&x), upload_bf16(&w));
        let xv = Tensor::new(dx.slice(x_at..x_at + m * k), [m, k]).unwrap();
        let mut ws = workspace();
        let mut y = poison_bf16(m * n);
        let mut call = |y: &mut CudaSlice<bf16>, schedule| {
            blas().linear_bf16_with(
                stream(),
                &xv,
                &Tensor::of(&dw, [n, k]).unwrap(),
                &mut TensorMut::of(y, [m, n]).unwrap(),
                &mut TensorMut::of(&mut ws, [LINEAR_WORKSPACE_BYTES]).unwrap(),
                schedule,
            )
        };
        let e = call(&mut y, LinearSchedule::Gemv).unwrap_err();
        assert!(matches!(&e, Error::Unsupported(msg) if msg.contains("k % 8 == 0 and x, w 16-byte aligned")), "{e}");
        assert!(download_bf16(&y).iter().all(|v| v.is_nan()), "a refused call writes nothing");
        call(&mut y, LinearSchedule::Auto).unwrap();
        let want = linear(to_array(&x[x_at..x_at + m * k], m, k).view(), to_array(&w, n, k).view(), Precision::Bf16);
        assert_bf16(
            &format!("Auto around the GEMV, k = {k}, x at {x_at}"),
            &download_bf16(&y),
            want.as_slice().unwrap(),
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_shape_is_planned_once() {
    let blas = Blas::new(stream()).unwrap();
    let (m, n, k) = (3, 5, 40);
    let mut r = rng(4);
    let (x, w) = (rand_bf16(&mut r, (m + 1) * k + 1, 1.0), rand_bf16(&mut r, n * k, 1.0));
    let (dx, dw) = (upload_bf16(&x), upload_bf16(&w));
    let mut first = poison_bf16(m * n);
    let mut second = poison_bf16(m * n);
    let dx_m = stream().clone_dtod(&dx.slice(..m * k)).unwrap();
    device_linear(&blas, &dx_m, &dw, &mut first, m, n, k);
    assert_eq!(blas.cached_plans(), 1);
    device_linear(&blas, &dx_m, &dw, &mut second, m, n, k);
    assert_eq!(blas.cached_plans(), 1, "the second call of a shape reuses its plan");
    assert_eq!(download(&first), download(&second));
    let mut y32 = poison_f32(m * n);
    device_linear(&blas, &dx_m, &dw, &mut y32, m, n, k);
    assert_eq!(blas.cached_plans(), 2, "f32 output is another plan");
    let dx_m1 = stream().clone_dtod(&dx.slice(..(m + 1) * k)).unwrap();
    let mut y4 = poison_bf16((m + 1) * n);
    device_linear(&blas, &dx_m1, &dw, &mut y4, m + 1, n, k);
    assert_eq!(blas.cached_plans(), 3, "another m is another plan");
    // x one element into its buffer: 2-byte aligned, its own plan, the same result.
    let mut ws = workspace();
    let mut y_mis = poison_bf16(m * n);
    blas.linear_bf16(
        stream(),
        &Tensor::new(dx.slice(1..1 + m * k), [m, k]).unwrap(),
        &Tensor::of(&dw, [n, k]).unwrap(),
        &mut TensorMut::of(&mut y_mis, [m, n]).unwrap(),
        &mut TensorMut::of(&mut ws, [LINEAR_WORKSPACE_BYTES]).unwrap(),
    )
    .unwrap();
    assert_eq!(blas.cached_plans(), 4, "a 2-byte aligned x is another plan");
    let want = linear(to_array(&x[1..1 + m * k], m, k).view(), to_array(&w, n, k).view(), Precision::Bf16);
    assert_bf16("misaligned x", &download_bf16(&y_mis), want.as_slice().unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_arguments_are_clear_errors() {
    let blas = blas();
    let dx = upload_bf16(&[1.0; 80]);
    let dw = upload_bf16(&[1.0; 200]);
    let mut y = poison_bf16(20);
    let mut ws = workspace();
    let call = |x: Tensor<bf16, 2>,
                w: Tensor<bf16, 2>,
                y: &mut CudaSlice<bf16>,
                shape: [usize; 2],
                ws: &mut CudaSlice<u8>,
                wsn: usize| {
        blas.linear_bf16(
            stream(),
            &x,
            &w,
            &mut TensorMut::new(y.slice_mut(..shape[0] * shape[1]), shape).unwrap(),
            &mut TensorMut::new(ws.slice_mut(..wsn), [wsn]).unwrap(),
        )
    };
    let e =
        call(Tensor::of(&dx, [2, 40]).unwrap(), Tensor::of(&dw, [5, 40]).unwrap(), &mut y, [2, 5], &mut ws, 1 << 20)
            .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("LINEAR_WORKSPACE_BYTES")), "{e}");
    let e = call(
        Tensor::of(&dx, [4, 20]).unwrap(),
        Tensor::of(&dw, [5, 40]).unwrap(),
        &mut y,
        [4, 5],
        &mut ws,
        LINEAR_WORKSPACE_BYTES,
    )
    .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("k 40")), "{e}");
    let e = call(
        Tensor::of(&dx, [2, 40]).unwrap(),
        Tensor::of(&dw, [5, 40]).unwrap(),
        &mut y,
        [5, 2],
        &mut ws,
        LINEAR_WORKSPACE_BYTES,
    )
    .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("want [2, 5]")), "{e}");
    let e = call(
        Tensor::of(&dx, [2, 40]).unwrap(),
        Tensor::new(dw.slice(0..0), [0, 40]).unwrap(),
        &mut y,
        [2, 0],
        &mut ws,
        LINEAR_WORKSPACE_BYTES,
    )
    .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("n = 0")), "{e}");
    // m = 0: a no-op that writes nothing.
    call(
        Tensor::new(dx.slice(0..0), [0, 40]).unwrap(),
        Tensor::of(&dw, [5, 40]).unwrap(),
        &mut y,
        [0, 5],
        &mut ws,
        LINEAR_WORKSPACE_BYTES,
    )
    .unwrap();
    assert!(download_bf16(&y).iter().all(|v| v.is_nan()));
    // FP8: the grouped GEMM's limits.
    let q = upload(&[E4M3(0x38); 200]);
    let s = upload(&[1.0f32; 5]);
    let off = upload(&[0i32, 2]);
    let mut gws: CudaSlice<u8> = stream().alloc_zeros(workspace_size(1).unwrap()).unwrap();
    let gl = gws.len();
    let e = linear_fp8(
        stream(),
        &Tensor::new(q.slice(..80), [2, 40]).unwrap(),
        &Tensor::new(s.slice(..2), [2]).unwrap(),
        &Tensor::of(&q, [5, 40]).unwrap(),
        &Tensor::of(&s, [5]).unwrap(),
        &Tensor::of(&off, [2]).unwrap(),
        &mut TensorMut::new(y.slice_mut(..10), [2, 5]).unwrap(),
        &mut TensorMut::of(&mut gws, [gl]).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("multiple of")), "{e}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn c_linear_equals_the_safe_api() {
    let (m, n, k) = (17, 40, 128);
    let mut r = rng(13);
    let (x, w) = (rand_bf16(&mut r, m * k, 2.0), rand_bf16(&mut r, n * k, 0.1));
    let (dx, dw) = (upload_bf16(&x), upload_bf16(&w));
    let mut safe = poison_f32(m * n);
    device_linear(blas(), &dx, &dw, &mut safe, m, n, k);
    let mut handle = std::ptr::null_mut();
    // SAFETY: a valid out-pointer; the handle is destroyed below, after its last use.
    assert_eq!(unsafe { capi::l4k_blas_create(&mut handle) }, Status::Ok);
    let mut y = poison_f32(m * n);
    let mut ws = workspace();
    let s = stream();
    let status = {
        let (px, _a) = dx.device_ptr(s);
        let (pw, _b) = dw.device_ptr(s);
        let (py, _c) = y.device_ptr_mut(s);
        let (pws, _d) = ws.device_ptr_mut(s);
        // SAFETY: a live handle and device buffers of the stated sizes.
        unsafe {
            capi::l4k_linear_bf16(
                handle,
                px as _,
                pw as _,
                py as _,
                1,
                m as i64,
                n as i64,
                k as i64,
                pws as _,
                LINEAR_WORKSPACE_BYTES,
                s.cu_stream(),
            )
        }
    };
    assert_eq!(status, Status::Ok);
    let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(download(&y)), bits(download(&safe)));

    // FP8 through the C ABI and the safe API: the same bytes.
    let (_, _, dxq, dxs) = quantize(&x, m, k);
    let (_, _, dwq, dws) = quantize(&w, n, k);
    let off = upload(&[0i32, m as i32]);
    let mut gws: CudaSlice<u8> = stream().alloc_zeros(workspace_size(1).unwrap()).unwrap();
    let gl = gws.len();
    let mut y_safe = poison_bf16(m * n);
    linear_fp8(
        stream(),
        &Tensor::of(&dxq, [m, k]).unwrap(),
        &Tensor::of(&dxs, [m]).unwrap(),
        &Tensor::of(&dwq, [n, k]).unwrap(),
        &Tensor::of(&dws, [n]).unwrap(),
        &Tensor::of(&off, [2]).unwrap(),
        &mut TensorMut::of(&mut y_safe, [m, n]).unwrap(),
        &mut TensorMut::of(&mut gws, [gl]).unwrap(),
    )
    .unwrap();
    let mut y_c = poison_bf16(m * n);
    let status = {
        let (pq, _a) = dxq.device_ptr(s);
        let (ps, _b) = dxs.device_ptr(s);
        let (pwq, _c) = dwq.device_ptr(s);
        let (pws, _d) = dws.device_ptr(s);
        let (po, _e) = off.device_ptr(s);
        let (py, _f) = y_c.device_ptr_mut(s);
        let (pg, _g) = gws.device_ptr_mut(s);
        // SAFETY: device buffers of the sizes the header gives, on the stream's device, alive until synchronized.
        unsafe {
            capi::l4k_linear_fp8(
                pq as _,
                ps as _,
                pwq as _,
                pws as _,
                po as _,
                py as _,
                m as i64,
                n as i64,
                k as i64,
                pg as _,
                gl,
                s.cu_stream(),
            )
        }
    };
    assert_eq!(status, Status::Ok);
    let b16 = |v: Vec<bf16>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(b16(download(&y_c)), b16(download(&y_safe)));
    // SAFETY: made above, no call in flight after the downloads.
    assert_eq!(unsafe { capi::l4k_blas_destroy(handle) }, Status::Ok);
}
