//! The grouped GEMM's SwiGLU epilogue (gate_up -> h -> FP8 + row scales) against the host reference, against the
//! unfused GPU pipeline (plain GEMM + swiglu_fp8, which it must equal bit for bit), and its argument checks.

use crate::common::*;
use crate::grouped_gemm::{problem, Problem};
use llama4_kernels::grouped_gemm::{grouped_gemm_fp8, grouped_gemm_swiglu_fp8, workspace_size, GroupedGemm, Schedule};
use llama4_kernels::swiglu::swiglu_fp8;
use llama4_kernels::weight_prep::{quantize_expert_weights, quantize_gate_up_interleaved};
use llama4_kernels::{Error, Tensor, TensorMut, E4M3};
use llama4_reference::check::{assert_close, TOL_BF16};
use llama4_reference::fp8;
use llama4_reference::grouped_gemm::grouped_gemm_rowwise;
use llama4_reference::swiglu::swiglu;
use llama4_reference::weight_prep::gate_up_interleaved_row;
use llama4_reference::{dtype::round_bf16, Precision};
use ndarray::{Array1, Array2, Array3};
use proptest::prelude::*;
use rand::Rng;

/// What one call gave: h [rows, n/2] (bf16 as f32), q bytes [rows, n/2], scales [rows], the bad-offsets flag.
struct Fused {
    h: Vec<f32>,
    q: Vec<u8>,
    s: Vec<f32>,
    flag: u32,
}

fn up_fp8(v: &[u8]) -> cudarc::driver::CudaSlice<E4M3> {
    upload(&v.iter().map(|&b| E4M3(b)).collect::<Vec<_>>())
}

/// The fused op on `p` (p.b / p.sb interleaved gate, up), outputs poisoned first.
fn fused(p: &Problem, offsets: &[i32], counts: Option<&[i32]>, schedule: Schedule) -> Fused {
    let half = p.n / 2;
    let (da, db) = (up_fp8(&p.a), up_fp8(&p.b));
    let (dsa, dsb, doff) = (upload(&p.sa), upload(&p.sb), upload(offsets));
    let dcounts = counts.map(upload);
    let (mut h, mut q, mut s) = (poison_bf16(p.rows * half), poison_e4m3(p.rows * half), poison_f32(p.rows));
    let mut ws = upload(&vec![0u8; workspace_size(p.experts).unwrap()]);
    let mut flag = upload(&[0u32]);
    let ws_len = ws.len();
    let (a, sa) = (Tensor::of(&da, [p.rows, p.k]).unwrap(), Tensor::of(&dsa, [p.rows]).unwrap());
    let (b, sb) = (Tensor::of(&db, [p.experts, p.n, p.k]).unwrap(), Tensor::of(&dsb, [p.experts, p.n]).unwrap());
    let off = Tensor::of(&doff, [p.experts + 1]).unwrap();
    let cnt = dcounts.as_ref().map(|c| Tensor::of(c, [p.experts]).unwrap());
    let g = GroupedGemm { a: &a, scale_a: &sa, b: &b, scale_b: &sb, offsets: &off, counts: cnt.as_ref() };
    grouped_gemm_swiglu_fp8(
        stream(),
        &g,
        &mut TensorMut::of(&mut h, [p.rows, half]).unwrap(),
        &mut TensorMut::of(&mut q, [p.rows, half]).unwrap(),
        &mut TensorMut::of(&mut s, [p.rows]).unwrap(),
        &mut TensorMut::of(&mut ws, [ws_len]).unwrap(),
        Some(&mut TensorMut::of(&mut flag, [1]).unwrap()),
        schedule,
    )
    .unwrap();
    Fused {
        h: download_bf16(&h),
        q: download(&q).into_iter().map(|b| b.0).collect(),
        s: download(&s),
        flag: download(&flag)[0],
    }
}

/// The unfused pipeline on the de-interleaved weights: plain GEMM (same schedule) -> bf16 [rows, n] -> swiglu_fp8.
fn unfused(p: &Problem, offsets: &[i32], counts: Option<&[i32]>, schedule: Schedule) -> (Vec<u8>, Vec<f32>) {
    let (n, k, half) = (p.n, p.k, p.n / 2);
    let mut b = vec![0u8; p.b.len()];
    let mut sb = vec![0f32; p.sb.len()];
    for e in 0..p.experts {
        for r in 0..n {
            let from = e * n + gate_up_interleaved_row(r, n);
            b[(e * n + r) * k..(e * n + r + 1) * k].copy_from_slice(&p.b[from * k..(from + 1) * k]);
            sb[e * n + r] = p.sb[from];
        }
    }
    let (da, db) = (up_fp8(&p.a), up_fp8(&b));
    let (dsa, dsb, doff) = (upload(&p.sa), upload(&sb), upload(offsets));
    let dcounts = counts.map(upload);
    let mut d = poison_bf16(p.rows * n);
    let (mut q, mut s) = (poison_e4m3(p.rows * half), poison_f32(p.rows));
    let mut ws = upload(&vec![0u8; workspace_size(p.experts).unwrap()]);
    let ws_len = ws.len();
    let (a, sa) = (Tensor::of(&da, [p.rows, k]).unwrap(), Tensor::of(&dsa, [p.rows]).unwrap());
    let (tb, tsb) = (Tensor::of(&db, [p.experts, n, k]).unwrap(), Tensor::of(&dsb, [p.experts, n]).unwrap());
    let off = Tensor::of(&doff, [p.experts + 1]).unwrap();
    let cnt = dcounts.as_ref().map(|c| Tensor::of(c, [p.experts]).unwrap());
    let g = GroupedGemm { a: &a, scale_a: &sa, b: &tb, scale_b: &tsb, offsets: &off, counts: cnt.as_ref() };
    let plain = if schedule == Schedule::PrefillFastAccum { schedule } else { Schedule::Prefill };
    grouped_gemm_fp8(
        stream(),
        &g,
        &mut TensorMut::of(&mut d, [p.rows, n]).unwrap(),
        &mut TensorMut::of(&mut ws, [ws_len]).unwrap(),
        None,
        plain,
    )
    .unwrap();
    swiglu_fp8(
        stream(),
        &Tensor::of(&d, [p.rows, n]).unwrap(),
        &mut TensorMut::of(&mut q, [p.rows, half]).unwrap(),
        &mut TensorMut::of(&mut s, [p.rows]).unwrap(),
    )
    .unwrap();
    (download(&q).into_iter().map(|b| b.0).collect(), download(&s))
}

/// The real rows (expert e's first m[e] rows) of a [rows, cols] buffer.
fn real_rows<T: Copy>(p: &Problem, v: &[T], cols: usize) -> Vec<T> {
    let mut out = vec![];
    for e in 0..p.experts {
        let s = p.starts[e];
        out.extend_from_slice(&v[s * cols..(s + p.m[e]) * cols]);
    }
    out
}

/// Reference h of the real rows: the f64 GEMM on the interleaved weights, rounded to bf16, de-interleaved, SwiGLU.
fn reference_h(p: &Problem) -> Vec<f32> {
    let half = p.n / 2;
    let mut out = vec![];
    for e in 0..p.experts {
        let (s, m) = (p.starts[e], p.m[e]);
        if m == 0 {
            continue;
        }
        let a = Array2::from_shape_vec((m, p.k), p.a[s * p.k..(s + m) * p.k].to_vec()).unwrap();
        let b = Array3::from_shape_vec((1, p.n, p.k), p.b[e * p.n * p.k..(e + 1) * p.n * p.k].to_vec()).unwrap();
        let sa = Array1::from(p.sa[s..s + m].to_vec());
        let sb = Array2::from_shape_vec((1, p.n), p.sb[e * p.n..(e + 1) * p.n].to_vec()).unwrap();
        let d = grouped_gemm_rowwise(a.view(), sa.view(), b.view(), sb.view(), &[0, m as u32]).unwrap();
        let gu = Array2::from_shape_fn((m, p.n), |(r, c)| {
            round_bf16(d[[r, if c < half { 2 * c } else { 2 * (c - half) + 1 }]])
        });
        out.extend(swiglu(gu.view(), Precision::Bf16).iter());
    }
    out
}

/// Every check on the real rows: h within the bf16 contract of the reference (the GEMM's error passes through
/// one bf16 rounding of g and u), q and scales exactly the reference quantization of that h, and exactly the
/// unfused GPU pipeline's bytes.
fn check(p: &Problem, offsets: &[i32], counts: Option<&[i32]>, schedule: Schedule, what: &str) {
    let half = p.n / 2;
    let got = fused(p, offsets, counts, schedule);
    assert_eq!(got.flag, 0, "{what}: bad-offsets flag");
    let h = real_rows(p, &got.h, half);
    assert!(h.iter().all(|v| !v.is_nan()), "{what}: h has NaN (unwritten rows)");
    assert_close(&format!("{what}: h"), &h, &reference_h(p), TOL_BF16);
    let (q, s) = (real_rows(p, &got.q, half), real_rows(p, &got.s, 1));
    let rows = s.len();
    let (wq, ws) = fp8::quantize_rowwise(Array2::from_shape_vec((rows, half), h).unwrap().view());
    assert!(s.iter().zip(&ws).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: scales differ from quantize(h)");
    if let Some(i) = q.iter().zip(wq.iter()).position(|(a, b)| a != b) {
        panic!(
            "{what}: q[{}, {}] = {:#04x}, quantize(h) gives {:#04x}",
            i / half,
            i % half,
            q[i],
            wq.as_slice().unwrap()[i]
        );
    }
    let (uq, us) = unfused(p, offsets, counts, schedule);
    let (uq, us) = (real_rows(p, &uq, half), real_rows(p, &us, 1));
    assert!(s.iter().zip(&us).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: scales differ from GEMM + swiglu_fp8");
    if let Some(i) = q.iter().zip(&uq).position(|(a, b)| a != b) {
        panic!("{what}: q[{}, {}] = {:#04x}, GEMM + swiglu_fp8 gives {:#04x}", i / half, i % half, q[i], uq[i]);
    }
}

fn starts(p: &Problem) -> Vec<i32> {
    p.starts.iter().map(|&s| s as i32).collect()
}

proptest! {
    #![proptest_config(cases(12))]

    /// Random groups including empty ones, rows per group no multiple of any tile, n from the 16 minimum up.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn swiglu_epilogue_matches_reference_and_unfused(
        experts in prop::sample::select(vec![1usize, 3, 16]),
        n in prop::sample::select(vec![16usize, 48, 144, 272]),
        k in prop::sample::select(vec![16usize, 48, 272]),
        max_m in prop::sample::select(vec![1usize, 9, 40, 150]),
        schedule in prop::sample::select(vec![Schedule::Auto, Schedule::Prefill, Schedule::PrefillFastAccum]),
        seed: u64,
    ) {
        let mut r = rng(seed);
        let m: Vec<usize> = (0..experts).map(|_| if r.gen_bool(0.25) { 0 } else { r.gen_range(0..=max_m) }).collect();
        let p = problem(&mut r, experts, n, k, m, 0);
        check(&p, &starts(&p), None, schedule, &format!("swiglu {schedule:?} E={experts} n={n} k={k}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn padded_layout_and_model_sized_k() {
    let mut r = rng(31);
    let p = problem(&mut r, 5, 64, 256, vec![3, 0, 70, 1, 129], 7);
    let counts: Vec<i32> = p.m.iter().map(|&m| m as i32).collect();
    check(&p, &starts(&p), Some(&counts), Schedule::Prefill, "padded");
    let p = problem(&mut r, 3, 512, 5120, vec![130, 0, 67], 0);
    for schedule in [Schedule::Prefill, Schedule::PrefillFastAccum] {
        check(&p, &starts(&p), None, schedule, &format!("k=5120 {schedule:?}"));
    }
}

/// Checkpoint bf16 gate_up weights prepared both ways on the device: interleaved + fused gives the bytes that
/// plain + GEMM + swiglu_fp8 give.
#[test]
#[ignore = "needs a CUDA GPU"]
fn prepared_interleaved_weights_give_the_unfused_result() {
    let (experts, k, n, m) = (2usize, 512usize, 384usize, [45usize, 83]);
    let rows: usize = m.iter().sum();
    let mut r = rng(8);
    let dw = upload_bf16(&rand_bf16(&mut r, experts * k * n, 0.05));
    let w = Tensor::of(&dw, [experts, k, n]).unwrap();
    let prep = |interleaved: bool| {
        let (mut q, mut s) = (poison_e4m3(experts * n * k), poison_f32(experts * n));
        let (mut tq, mut ts) =
            (TensorMut::of(&mut q, [experts, n, k]).unwrap(), TensorMut::of(&mut s, [experts, n]).unwrap());
        if interleaved {
            quantize_gate_up_interleaved(stream(), &w, &mut tq, &mut ts).unwrap();
        } else {
            quantize_expert_weights(stream(), &w, &mut tq, &mut ts).unwrap();
        }
        (download(&q).into_iter().map(|b| b.0).collect::<Vec<u8>>(), download(&s))
    };
    let ((bi, si), (bp, sp)) = (prep(true), prep(false));
    for e in 0..experts {
        for row in 0..n {
            let to = e * n + gate_up_interleaved_row(row, n);
            assert_eq!(
                &bi[to * k..(to + 1) * k],
                &bp[(e * n + row) * k..(e * n + row + 1) * k],
                "expert {e} row {row}"
            );
            assert_eq!(si[to].to_bits(), sp[e * n + row].to_bits());
        }
    }
    let mut p = problem(&mut r, experts, n, k, m.to_vec(), 0);
    assert_eq!(p.rows, rows);
    (p.b, p.sb) = (bi, si);
    check(&p, &starts(&p), None, Schedule::Prefill, "prepared weights");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_arguments_are_clear_errors() {
    let (rows, k) = (4usize, 32usize);
    let da = up_fp8(&[0x38; 4 * 32]);
    let db = up_fp8(&[0x38; 2 * 48 * 32]);
    let (dsa, dsb, doff) = (upload(&[1.0f32; 4]), upload(&[1.0f32; 2 * 48]), upload(&[0i32, 2, 4]));
    // Room for the widest (wrong) shapes asked for below: the op must reject them, not the view.
    let mut h = poison_bf16(rows * 48);
    let mut q = poison_e4m3(rows * 48);
    let mut s = poison_f32(rows);
    let mut ws = upload(&vec![0u8; workspace_size(2).unwrap()]);
    let wl = ws.len();
    let (a, sa) = (Tensor::of(&da, [rows, k]).unwrap(), Tensor::of(&dsa, [rows]).unwrap());
    let off = Tensor::of(&doff, [3]).unwrap();
    let mut call = |n: usize, h_cols: usize, q_cols: usize, schedule: Schedule| -> Error {
        let b = Tensor::new(db.slice(..2 * n * k), [2, n, k]).unwrap();
        let sb = Tensor::new(dsb.slice(..2 * n), [2, n]).unwrap();
        let g = GroupedGemm { a: &a, scale_a: &sa, b: &b, scale_b: &sb, offsets: &off, counts: None };
        grouped_gemm_swiglu_fp8(
            stream(),
            &g,
            &mut TensorMut::new(h.slice_mut(..rows * h_cols), [rows, h_cols]).unwrap(),
            &mut TensorMut::new(q.slice_mut(..rows * q_cols), [rows, q_cols]).unwrap(),
            &mut TensorMut::of(&mut s, [rows]).unwrap(),
            &mut TensorMut::of(&mut ws, [wl]).unwrap(),
            None,
            schedule,
        )
        .unwrap_err()
    };
    let e = call(40, 20, 20, Schedule::Prefill);
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("multiple of 16")), "n = 40: {e}");
    let e = call(48, 24, 24, Schedule::Decode);
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("decode")), "decode: {e}");
    let e = call(48, 24, 24, Schedule::Gemv);
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("GEMV")), "gemv: {e}");
    let e = call(48, 48, 24, Schedule::Prefill);
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("h [")), "h as wide as gate_up: {e}");
    let e = call(48, 24, 20, Schedule::Prefill);
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("q [")), "q too narrow: {e}");
    let dq = download(&q);
    assert!(dq.iter().all(|b| b.0 == 0x7F), "a rejected call wrote q");
}
