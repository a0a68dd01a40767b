//! Permute (bf16 and FP8, scaled, padded) and unpermute against llama4_reference::permute, on routings made by
//! the device router (checked against the reference routing first).
use crate::common::*;
use crate::router::{assert_routing, device_route, distinct_logits, padded_dest, reference_route};
use cudarc::driver::CudaSlice;
use llama4_kernels::permute::{permute, permute_fp8, permuted_rows, unpermute, unpermute_add_rmsnorm, Padding};
use llama4_kernels::quant::Fp8Copy;
use llama4_kernels::rmsnorm::add_rmsnorm;
use llama4_kernels::router::RouterKind;
use llama4_kernels::{bf16, Tensor, TensorMut};
use llama4_reference::check::TOL_BF16;
use llama4_reference::permute as reference;
use llama4_reference::{fp8, Precision};
use ndarray::{Array1, Array2};
use proptest::prelude::*;

struct Case {
    t: usize,
    e: usize,
    h: usize,
    kind: RouterKind,
    align: usize,
    scaled: bool,
    seed: u64,
}

fn run(c: &Case) {
    let (t, e, h, k) = (c.t, c.e, c.h, c.kind.k());
    if t == 0 {
        // Nothing routed, nothing written (the router leaves counts/offsets untouched at T = 0).
        let (dx, dd) = (upload_bf16(&[]), upload::<i32>(&[]));
        let mut out = poison_bf16(h);
        permute(
            stream(),
            &Tensor::of(&dx, [0, h]).unwrap(),
            &Tensor::of(&dd, [0, k]).unwrap(),
            None,
            None,
            &mut TensorMut::of(&mut out, [1, h]).unwrap(),
        )
        .unwrap();
        assert!(download_bf16(&out).iter().all(|v| v.is_nan()));
        return;
    }
    let mut r = rng(c.seed);
    let logits = distinct_logits(&mut r, t, e);
    let x = rand_bf16(&mut r, t * h, 3.0);
    let dl = upload_bf16(&logits);
    let dr = device_route::<bf16>(&dl, t, e, c.kind, c.align);
    let want_r = reference_route(&logits, t, e, c.kind, Precision::Bf16);
    assert_routing("routing for permute", &dr.host, &want_r, c.align, 1e-2);
    let rows = permuted_rows(t, k, e, c.align);
    let used = *dr.host.offsets.last().unwrap() as usize;
    let dest_p = padded_dest(&want_r, c.align);
    let dx = upload_bf16(&x);
    let xv = Array2::from_shape_vec((t, h), x.clone()).unwrap();
    let dest_t = Tensor::of(&dr.dest, [t, k]).unwrap();
    let w_t = Tensor::of(&dr.weights, [t, k]).unwrap();
    let scale_by = c.scaled.then_some(&w_t);
    let (ct, ot) = (Tensor::of(&dr.counts, [e]).unwrap(), Tensor::of(&dr.offsets, [e + 1]).unwrap());
    let pad = Padding { counts: &ct, offsets: &ot, align: c.align };
    let padding = (c.align > 1).then_some(&pad);
    // Which padded row holds reference row i, and which padded rows are padding.
    let mut is_real = vec![false; used];
    let src: Vec<usize> = dest_p.iter().map(|&d| d as usize).collect();
    for &d in &src {
        is_real[d] = true;
    }
    let ref_rows: Vec<usize> = want_r.dest.iter().map(|&d| d as usize).collect();
    let what = format!("T={t} E={e} H={h} {:?} align={} scaled={}", c.kind, c.align, c.scaled);

    // bf16 permute.
    let want = reference::permute(xv.view(), &want_r, c.scaled, Precision::Bf16);
    let mut out = poison_bf16(rows * h);
    permute(
        stream(),
        &Tensor::of(&dx, [t, h]).unwrap(),
        &dest_t,
        scale_by,
        padding,
        &mut TensorMut::of(&mut out, [rows, h]).unwrap(),
    )
    .unwrap();
    let got = download_bf16(&out);
    let (mut g, mut w) = (vec![], vec![]);
    for (&pr, &rr) in src.iter().zip(&ref_rows) {
        g.extend_from_slice(&got[pr * h..(pr + 1) * h]);
        w.extend(want.row(rr).iter().copied());
    }
    assert_matches(&format!("permute {what}"), &g, &w, TOL_BF16, 1.0);
    for row in (0..used).filter(|&i| !is_real[i]) {
        assert!(
            got[row * h..(row + 1) * h].iter().all(|&v| v.to_bits() == 0),
            "permute {what}: padding row {row} not zero"
        );
    }

    // FP8 permute: dequantized rows and scales.
    let (wq, ws) = reference::permute_fp8(xv.view(), &want_r, c.scaled, Precision::Bf16);
    let mut q = poison_e4m3(rows * h);
    let mut s = poison_f32(rows);
    permute_fp8(
        stream(),
        &Tensor::of(&dx, [t, h]).unwrap(),
        &dest_t,
        scale_by,
        padding,
        &mut TensorMut::of(&mut q, [rows, h]).unwrap(),
        &mut TensorMut::of(&mut s, [rows]).unwrap(),
    )
    .unwrap();
    let qb: Vec<u8> = download(&q).into_iter().map(|b| b.0).collect();
    let sc = download(&s);
    let (mut gq, mut gs) = (vec![], vec![]);
    for &pr in &src {
        gq.extend_from_slice(&qb[pr * h..(pr + 1) * h]);
        gs.push(sc[pr]);
    }
    let want_s: Vec<f32> = ref_rows.iter().map(|&rr| ws[rr]).collect();
    let want_q: Vec<u8> = ref_rows.iter().flat_map(|&rr| wq.row(rr).to_vec()).collect();
    llama4_reference::check::assert_close(&format!("permute_fp8 scales {what}"), &gs, &want_s, 1e-6);
    let n = src.len();
    let gd = fp8::dequantize_rowwise(Array2::from_shape_vec((n, h), gq).unwrap().view(), Array1::from(gs).view());
    let wd =
        fp8::dequantize_rowwise(Array2::from_shape_vec((n, h), want_q).unwrap().view(), Array1::from(want_s).view());
    assert_matches(&format!("permute_fp8 {what}"), gd.as_slice().unwrap(), wd.as_slice().unwrap(), TOL_BF16, 0.99);
    for row in (0..used).filter(|&i| !is_real[i]) {
        assert!(qb[row * h..(row + 1) * h].iter().all(|&b| b == 0), "permute_fp8 {what}: padding row {row} not zero");
        assert_eq!(sc[row], fp8::MIN_AMAX / fp8::E4M3_MAX, "permute_fp8 {what}: padding scale of row {row}");
    }

    // unpermute: random expert outputs over the padded rows, with output weighting and the shared expert.
    let y = rand_bf16(&mut r, rows * h, 2.0);
    let shared = rand_bf16(&mut r, t * h, 2.0);
    let (dy, dsh) = (upload_bf16(&y), upload_bf16(&shared));
    let mut unpadded = Array2::zeros((t * k, h));
    for (&pr, &rr) in src.iter().zip(&ref_rows) {
        unpadded.row_mut(rr).assign(&ndarray::ArrayView1::from(&y[pr * h..(pr + 1) * h]));
    }
    let sv = Array2::from_shape_vec((t, h), shared).unwrap();
    for (weighted, with_shared) in [(false, true), (true, true), (c.scaled, false)] {
        let want =
            reference::unpermute(unpadded.view(), &want_r, weighted, with_shared.then_some(sv.view()), Precision::Bf16);
        let mut out = poison_bf16(t * h);
        let sh_t = Tensor::of(&dsh, [t, h]).unwrap();
        unpermute(
            stream(),
            &Tensor::of(&dy, [rows, h]).unwrap(),
            &dest_t,
            weighted.then_some(&w_t),
            with_shared.then_some(&sh_t),
            &mut TensorMut::of(&mut out, [t, h]).unwrap(),
        )
        .unwrap();
        assert_matches(
            &format!("unpermute weighted={weighted} shared={with_shared} {what}"),
            &download_bf16(&out),
            want.as_slice().unwrap(),
            TOL_BF16,
            0.99,
        );

        // Fused with the next residual add and norm: bit for bit the unpermute above then add_rmsnorm, and the
        // reference composition.
        let (x0, nw) = (rand_bf16(&mut r, t * h, 4.0), rand_bf16(&mut r, h, 1.0));
        let eps = 1e-5;
        let dnw = upload_bf16(&nw);
        let nw_t = Tensor::of(&dnw, [h]).unwrap();
        let (mut res_fused, mut res_pair) = (upload_bf16(&x0), upload_bf16(&x0));
        let (mut y_fused, mut y_pair) = (poison_bf16(t * h), poison_bf16(t * h));
        let fused = |res: &mut CudaSlice<bf16>, y: &mut CudaSlice<bf16>, copy: Option<Fp8Copy>| {
            unpermute_add_rmsnorm(
                stream(),
                &Tensor::of(&dy, [rows, h]).unwrap(),
                &dest_t,
                weighted.then_some(&w_t),
                with_shared.then_some(&sh_t),
                &mut TensorMut::of(res, [t, h]).unwrap(),
                &nw_t,
                eps,
                &mut TensorMut::of(y, [t, h]).unwrap(),
                copy,
            )
            .unwrap()
        };
        fused(&mut res_fused, &mut y_fused, None);
        add_rmsnorm(
            stream(),
            &Tensor::of(&out, [t, h]).unwrap(),
            &mut TensorMut::of(&mut res_pair, [t, h]).unwrap(),
            &nw_t,
            eps,
            &mut TensorMut::of(&mut y_pair, [t, h]).unwrap(),
        )
        .unwrap();
        let tag = format!("unpermute_add_rmsnorm weighted={weighted} shared={with_shared} {what}");
        let bits = |d: &CudaSlice<bf16>| download(d).iter().map(|v| v.to_bits()).collect::<Vec<u16>>();
        assert_eq!(bits(&res_fused), bits(&res_pair), "{tag}: residual differs from unpermute + add_rmsnorm");
        assert_eq!(bits(&y_fused), bits(&y_pair), "{tag}: y differs from unpermute + add_rmsnorm");
        // With y's FP8 copy: the same residual and y, and the copy is quant_fp8's of y (the reference's bytes).
        let (mut res_fp8, mut y_fp8) = (upload_bf16(&x0), poison_bf16(t * h));
        let (mut q, mut qs) = (poison_e4m3(t * h), poison_f32(t));
        let copy = Fp8Copy {
            q: &mut TensorMut::of(&mut q, [t, h]).unwrap(),
            scales: &mut TensorMut::of(&mut qs, [t]).unwrap(),
        };
        fused(&mut res_fp8, &mut y_fp8, Some(copy));
        assert_eq!(bits(&res_fp8), bits(&res_fused), "{tag}: the FP8 copy changed the residual");
        assert_eq!(bits(&y_fp8), bits(&y_fused), "{tag}: the FP8 copy changed y");
        let (want_q, want_qs) =
            fp8::quantize_rowwise(Array2::from_shape_vec((t, h), download_bf16(&y_fused)).unwrap().view());
        assert_eq!(download(&qs), want_qs.to_vec(), "{tag}: FP8 copy scales");
        let got_q: Vec<u8> = download(&q).iter().map(|b| b.0).collect();
        assert!(got_q == want_q.as_slice().unwrap(), "{tag}: FP8 copy bytes differ from quant_fp8 of y");
        let xv = Array2::from_shape_vec((t, h), x0).unwrap();
        let (want_res, want_y) = reference::unpermute_add_rmsnorm(
            unpadded.view(),
            &want_r,
            weighted,
            with_shared.then_some(sv.view()),
            xv.view(),
            Array1::from(nw).view(),
            eps,
            Precision::Bf16,
        );
        assert_matches(
            &format!("{tag}: residual"),
            &download_bf16(&res_fused),
            want_res.as_slice().unwrap(),
            TOL_BF16,
            0.99,
        );
        let y_got = download_bf16(&y_fused);
        assert!(y_got.iter().all(|v| v.is_finite()), "{tag}: y holds a NaN or infinity");
        assert_matches(&format!("{tag}: y"), &y_got, want_y.as_slice().unwrap(), TOL_BF16, 0.99);
    }
}

proptest! {
    #![proptest_config(cases(16))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn permute_and_unpermute_match_reference(t in 0usize..400, e in prop_oneof![Just(1usize), Just(3), Just(16), Just(128), 1usize..=256],
                                             h in prop_oneof![1usize..300, (1usize..100).prop_map(|k| 8 * k), Just(2048)],
                                             top_k in 0usize..=4, align in prop::sample::select(vec![1usize, 8, 32]), scaled: bool, seed: u64) {
        let kind = if top_k == 0 { RouterKind::SigmoidTop1 } else { RouterKind::SoftmaxTopK { k: top_k.min(e), renormalize: true } };
        run(&Case { t, e, h, kind, align, scaled, seed });
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn llama4_shapes() {
    run(&Case { t: 4096, e: 16, h: 5120, kind: RouterKind::SigmoidTop1, align: 128, scaled: true, seed: 1 });
    run(&Case { t: 1000, e: 128, h: 5120, kind: RouterKind::SigmoidTop1, align: 64, scaled: true, seed: 2 });
    run(&Case {
        t: 333,
        e: 256,
        h: 2048,
        kind: RouterKind::SoftmaxTopK { k: 8, renormalize: true },
        align: 16,
        scaled: false,
        seed: 3,
    });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn out_of_range_destinations_are_skipped() {
    // dest is caller memory: -1 and past-the-end rows must neither be written (permute) nor read (unpermute).
    let (t, h, rows) = (4, 16, 4);
    let x = rand_bf16(&mut rng(4), t * h, 1.0);
    let dx = upload_bf16(&x);
    let dest: CudaSlice<i32> = upload(&[2, -1, 1_000_000, 0]);
    let mut out = poison_bf16(rows * h);
    let dt = Tensor::of(&dest, [t, 1]).unwrap();
    permute(
        stream(),
        &Tensor::of(&dx, [t, h]).unwrap(),
        &dt,
        None,
        None,
        &mut TensorMut::of(&mut out, [rows, h]).unwrap(),
    )
    .unwrap();
    let got = download_bf16(&out);
    assert_eq!(&got[2 * h..3 * h], &x[..h]);
    assert_eq!(&got[..h], &x[3 * h..]);
    assert!(got[h..2 * h].iter().chain(&got[3 * h..]).all(|v| v.is_nan()), "rows nobody maps to stay untouched");
    let y = upload_bf16(&x);
    let mut back = poison_bf16(t * h);
    unpermute(
        stream(),
        &Tensor::of(&y, [rows, h]).unwrap(),
        &dt,
        None,
        None,
        &mut TensorMut::of(&mut back, [t, h]).unwrap(),
    )
    .unwrap();
    let b = download_bf16(&back);
    assert!(b[h..3 * h].iter().all(|&v| v == 0.0), "skipped destinations contribute nothing");
}
