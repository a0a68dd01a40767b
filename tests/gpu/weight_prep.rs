use crate::common::*;
use llama4_kernels::grouped_gemm::{grouped_gemm_fp8, workspace_size, GroupedGemm, Schedule};
use llama4_kernels::quant::quant_fp8;
use llama4_kernels::weight_prep::{quantize_expert_weights, quantize_gate_up_interleaved, uses_strip_kernel};
use llama4_kernels::{bf16, Error, Tensor, TensorMut};
use llama4_reference::check::{assert_close, TOL_FP8_GEMM};
use llama4_reference::grouped_gemm::grouped_gemm_rowwise;
use llama4_reference::weight_prep;
use ndarray::{Array1, Array2, Array3};
use proptest::prelude::*;

/// Prepares w [e, k, n] on the device into poisoned outputs; returns (bytes [e, n, k], scales [e, n]).
fn device_prep(w: &[f32], e: usize, k: usize, n: usize) -> (Vec<u8>, Vec<f32>) {
    let dw = upload_bf16(w);
    let mut dq = poison_e4m3(e * n * k);
    let mut ds = poison_f32(e * n);
    quantize_expert_weights(
        stream(),
        &Tensor::of(&dw, [e, k, n]).unwrap(),
        &mut TensorMut::of(&mut dq, [e, n, k]).unwrap(),
        &mut TensorMut::of(&mut ds, [e, n]).unwrap(),
    )
    .unwrap();
    (download(&dq).into_iter().map(|b| b.0).collect(), download(&ds))
}

/// Device bytes and scales equal to the reference's, bit for bit; failures name (expert, n, k).
fn assert_exact(what: &str, w: &[f32], e: usize, k: usize, n: usize, q: &[u8], s: &[f32]) {
    let (wq, ws) = weight_prep::quantize_expert_weights(Array3::from_shape_vec((e, k, n), w.to_vec()).unwrap().view());
    for (i, (a, b)) in s.iter().zip(ws.iter()).enumerate() {
        assert!(a.to_bits() == b.to_bits(), "{what}: scale ({}, {}) is {a:e}, reference {b:e}", i / n, i % n);
    }
    assert_eq!(s.len(), ws.len());
    let want = wq.as_slice().unwrap();
    assert_eq!(q.len(), want.len());
    if let Some(i) = q.iter().zip(want).position(|(a, b)| a != b) {
        let (g, r, c) = (i / (n * k), i / k % n, i % k);
        panic!("{what}: byte (expert {g}, n {r}, k {c}) is {:#04x}, reference {:#04x}", q[i], want[i]);
    }
}

/// Sizes from 1 up, multiples of 8 and 16 (the fast kernel's), and a few past its K limit.
fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..300, (1usize..40).prop_map(|d| 8 * d), (1usize..20).prop_map(|d| 16 * d)]
}

proptest! {
    #![proptest_config(cases(32))]

    /// Same bf16 weights, same bytes and scales as the reference (transpose, then quantize_rowwise).
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn weight_prep_is_bit_exact(e in 1usize..4, k in dim(), n in dim(), scale_exp in -20i32..20, seed: u64) {
        let mut r = rng(seed);
        let w = rand_bf16(&mut r, e * k * n, 2f32.powi(scale_exp));
        let (q, s) = device_prep(&w, e, k, n);
        assert_exact(&format!("weight_prep e={e} k={k} n={n} strip={}", uses_strip_kernel(k, n)), &w, e, k, n, &q, &s);
    }
}

proptest! {
    #![proptest_config(cases(16))]

    /// Interleaved gate/up rows (the SwiGLU epilogue's layout): the reference's bytes and scales, both kernels.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gate_up_interleaving_is_bit_exact(e in 1usize..4, k in dim(), half in dim(), seed: u64) {
        let n = 2 * half;
        let mut r = rng(seed);
        let w = rand_bf16(&mut r, e * k * n, 0.5);
        let dw = upload_bf16(&w);
        let (mut dq, mut ds) = (poison_e4m3(e * n * k), poison_f32(e * n));
        quantize_gate_up_interleaved(
            stream(),
            &Tensor::of(&dw, [e, k, n]).unwrap(),
            &mut TensorMut::of(&mut dq, [e, n, k]).unwrap(),
            &mut TensorMut::of(&mut ds, [e, n]).unwrap(),
        )
        .unwrap();
        let (wq, ws) = weight_prep::quantize_gate_up_interleaved(Array3::from_shape_vec((e, k, n), w).unwrap().view());
        let q: Vec<u8> = download(&dq).into_iter().map(|b| b.0).collect();
        let s = download(&ds);
        prop_assert!(s.iter().zip(ws.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "scales e={} k={} n={}", e, k, n);
        let first = q.iter().zip(wq.iter()).position(|(a, b)| a != b);
        prop_assert!(first.is_none(), "byte {:?} differs (e={} k={} n={} strip={})", first, e, k, n, uses_strip_kernel(k, n));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gate_up_interleaving_needs_an_even_n() {
    let dw = upload_bf16(&[1.0; 16 * 7]);
    let (mut dq, mut ds) = (poison_e4m3(16 * 7), poison_f32(7));
    let e = quantize_gate_up_interleaved(
        stream(),
        &Tensor::of(&dw, [1, 16, 7]).unwrap(),
        &mut TensorMut::of(&mut dq, [1, 7, 16]).unwrap(),
        &mut TensorMut::of(&mut ds, [1, 7]).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("even n")), "{e}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn model_sized_and_past_the_strip_limit() {
    // Scout's gate_up K (5120) and down K (8192) on the strip kernel, and K just past its limit (generic).
    for (e, k, n, strip) in [(2, 5120, 1024, true), (1, 8192, 264, true), (1, 8208, 40, false), (2, 16, 8, true)] {
        assert_eq!(uses_strip_kernel(k, n), strip, "k={k} n={n}");
        let mut r = rng(k as u64);
        let w = rand_bf16(&mut r, e * k * n, 0.02);
        let (q, s) = device_prep(&w, e, k, n);
        assert_exact(&format!("weight_prep e={e} k={k} n={n}"), &w, e, k, n, &q, &s);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn columns_with_nan_inf_zeros_and_extremes() {
    // Column 0 all zeros (scale from MIN_AMAX, bytes 0); 1 holds a NaN (not its amax, encoded 0x7F); 2 holds
    // +inf (scale inf: inf * 0 is NaN, the rest 0); 3 spans bf16's range; 4 only tiny values; 5 negative zeros.
    for (k, n) in [(48, 16), (33, 7)] {
        let mut w = vec![0.0f32; 2 * k * n];
        let mut r = rng(9);
        let fill = rand_bf16(&mut r, w.len(), 3.0);
        for g in 0..2 {
            for row in 0..k {
                let at = |c: usize| (g * k + row) * n + c;
                for c in 6..n {
                    w[at(c)] = fill[at(c)];
                }
                w[at(1)] = if row == 5 { f32::NAN } else { fill[at(1)] };
                w[at(2)] = if row == k - 1 { f32::INFINITY } else { fill[at(2)] };
                w[at(3)] = if row % 2 == 0 { 3.0e38 } else { -1.0e-30 };
                w[at(4)] = if row == 3 { 1.0e-20 } else { 0.0 };
                w[at(5)] = -0.0;
            }
        }
        let w: Vec<f32> = w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let (q, s) = device_prep(&w, 2, k, n);
        assert_exact(&format!("edges k={k} n={n} strip={}", uses_strip_kernel(k, n)), &w, 2, k, n, &q, &s);
        assert!(q[..k].iter().all(|&b| b == 0), "zero column");
        assert_eq!(q[k + 5], 0x7F, "NaN element");
        assert!(s[2].is_infinite());
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn misaligned_views_take_the_generic_kernel() {
    // Views one element into their buffers: shapes the strip kernel takes, pointers it cannot.
    let (e, k, n) = (2, 64, 32);
    let mut r = rng(3);
    let w = rand_bf16(&mut r, e * k * n + 1, 1.0);
    let dw = upload_bf16(&w);
    let mut dq = poison_e4m3(e * n * k + 1);
    let mut ds = poison_f32(e * n);
    quantize_expert_weights(
        stream(),
        &Tensor::new(dw.slice(1..), [e, k, n]).unwrap(),
        &mut TensorMut::new(dq.slice_mut(1..), [e, n, k]).unwrap(),
        &mut TensorMut::of(&mut ds, [e, n]).unwrap(),
    )
    .unwrap();
    let q: Vec<u8> = download(&dq).into_iter().map(|b| b.0).collect();
    assert_eq!(q[0], 0x7F, "wrote before the view");
    assert_exact("misaligned", &w[1..], e, k, n, &q[1..], &download(&ds));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_shapes_are_clear_errors() {
    let dw = upload_bf16(&[1.0; 2 * 16 * 8]);
    let mut dq = poison_e4m3(2 * 16 * 8);
    let mut ds = poison_f32(2 * 16);
    let w = Tensor::of(&dw, [2, 16, 8]).unwrap();
    // out given as [E, K, N] (not transposed).
    let e = quantize_expert_weights(
        stream(),
        &w,
        &mut TensorMut::of(&mut dq, [2, 16, 8]).unwrap(),
        &mut TensorMut::new(ds.slice_mut(..16), [2, 8]).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("[experts, n, k]")), "{e}");
    // scales per K instead of per N.
    let e = quantize_expert_weights(
        stream(),
        &w,
        &mut TensorMut::of(&mut dq, [2, 8, 16]).unwrap(),
        &mut TensorMut::of(&mut ds, [2, 16]).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("scales")), "{e}");
}

/// The point of the op: checkpoint weights prepared on the device, activations quantized by quant_fp8, and the
/// grouped GEMM on both computes x @ W. Checked twice: against the reference GEMM on the same bytes (the GEMM's
/// own tolerance, TOL_FP8_GEMM: the prepared layout is the one the GEMM reads), and against x @ W in f64 on the
/// unquantized bf16 values. E4M3 keeps 3 mantissa bits: each operand carries a relative rounding error of about
/// 2.4% RMS on such data, about 3.4% on their product, so the end-to-end bound is 0.06.
#[test]
#[ignore = "needs a CUDA GPU"]
fn prepared_weights_feed_the_grouped_gemm() {
    const TOL_FP8_END_TO_END: f64 = 0.06;
    let (experts, k, n) = (3usize, 5120usize, 256usize);
    let m = [37usize, 0, 70];
    let rows: usize = m.iter().sum();
    let mut r = rng(77);
    let x = rand_bf16(&mut r, rows * k, 1.0);
    let w = rand_bf16(&mut r, experts * k * n, 0.05);

    let (dx, dw) = (upload_bf16(&x), upload_bf16(&w));
    let (mut dxq, mut dsx) = (poison_e4m3(rows * k), poison_f32(rows));
    let (mut dwq, mut dsw) = (poison_e4m3(experts * n * k), poison_f32(experts * n));
    quant_fp8(
        stream(),
        &Tensor::of(&dx, [rows, k]).unwrap(),
        &mut TensorMut::of(&mut dxq, [rows, k]).unwrap(),
        &mut TensorMut::of(&mut dsx, [rows]).unwrap(),
    )
    .unwrap();
    quantize_expert_weights(
        stream(),
        &Tensor::of(&dw, [experts, k, n]).unwrap(),
        &mut TensorMut::of(&mut dwq, [experts, n, k]).unwrap(),
        &mut TensorMut::of(&mut dsw, [experts, n]).unwrap(),
    )
    .unwrap();
    let mut starts = vec![0i32];
    for &me in &m {
        starts.push(starts.last().unwrap() + me as i32);
    }
    let doff = upload(&starts);
    let mut ws = upload(&vec![0u8; workspace_size(experts).unwrap()]);
    let ws_len = ws.len();
    for schedule in [Schedule::Prefill, Schedule::Decode] {
        let mut d = poison_bf16(rows * n);
        let (a, sa) = (Tensor::of(&dxq, [rows, k]).unwrap(), Tensor::of(&dsx, [rows]).unwrap());
        let (b, sb) = (Tensor::of(&dwq, [experts, n, k]).unwrap(), Tensor::of(&dsw, [experts, n]).unwrap());
        let off = Tensor::of(&doff, [experts + 1]).unwrap();
        let g = GroupedGemm { a: &a, scale_a: &sa, b: &b, scale_b: &sb, offsets: &off, counts: None };
        grouped_gemm_fp8(
            stream(),
            &g,
            &mut TensorMut::of(&mut d, [rows, n]).unwrap(),
            &mut TensorMut::of(&mut ws, [ws_len]).unwrap(),
            None,
            schedule,
        )
        .unwrap();
        let got = download_bf16(&d);

        // Same bytes through the reference GEMM.
        let a_q = Array2::from_shape_vec((rows, k), download(&dxq).into_iter().map(|b| b.0).collect()).unwrap();
        let b_q = Array3::from_shape_vec((experts, n, k), download(&dwq).into_iter().map(|b| b.0).collect()).unwrap();
        let offsets: Vec<u32> = starts.iter().map(|&s| s as u32).collect();
        let same_bytes = grouped_gemm_rowwise(
            a_q.view(),
            Array1::from(download(&dsx)).view(),
            b_q.view(),
            Array2::from_shape_vec((experts, n), download(&dsw)).unwrap().view(),
            &offsets,
        )
        .unwrap();
        assert_close(
            &format!("prep + GEMM {schedule:?} vs reference GEMM"),
            &got,
            same_bytes.as_slice().unwrap(),
            TOL_FP8_GEMM,
        );

        // x @ W[e] on the unquantized values.
        let mut exact = vec![0f32; rows * n];
        for g in 0..experts {
            for row in starts[g] as usize..starts[g + 1] as usize {
                for c in 0..n {
                    let mut acc = 0f64;
                    for kk in 0..k {
                        acc += x[row * k + kk] as f64 * w[(g * k + kk) * n + c] as f64;
                    }
                    exact[row * n + c] = acc as f32;
                }
            }
        }
        assert_close(&format!("prep + GEMM {schedule:?} vs x @ W"), &got, &exact, TOL_FP8_END_TO_END);
    }
}
