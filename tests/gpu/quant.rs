use crate::common::*;
use llama4_kernels::quant::{dequant_fp8, quant_fp8};
use llama4_kernels::{Tensor, TensorMut, E4M3};
use llama4_reference::fp8;
use ndarray::Array2;
use proptest::prelude::*;
use rand::Rng;

/// Quantizes on the device; returns (bytes, scales).
fn device_quant(x: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let dx = upload_bf16(x);
    let mut dq = poison_e4m3(rows * cols);
    let mut ds = poison_f32(rows);
    quant_fp8(
        stream(),
        &Tensor::of(&dx, [rows, cols]).unwrap(),
        &mut TensorMut::of(&mut dq, [rows, cols]).unwrap(),
        &mut TensorMut::of(&mut ds, [rows]).unwrap(),
    )
    .unwrap();
    (download(&dq).into_iter().map(|b| b.0).collect(), download(&ds))
}

fn assert_bytes_equal(what: &str, got: &[u8], want: &[u8], cols: usize) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: byte ({}, {}) is {:#04x}, reference {:#04x}", i / cols, i % cols, got[i], want[i]);
    }
}

proptest! {
    #![proptest_config(cases(24))]

    /// Same bf16 inputs, same bytes and scales: the device conversion is the reference's, bit for bit.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn quant_is_bit_exact(rows in 0usize..40, cols in row_len(), scale_exp in -20i32..20, seed: u64) {
        let mut r = rng(seed);
        let x = rand_bf16(&mut r, rows * cols, 2f32.powi(scale_exp));
        let (q, s) = device_quant(&x, rows, cols);
        let (wq, ws) = fp8::quantize_rowwise(Array2::from_shape_vec((rows, cols), x).unwrap().view());
        prop_assert_eq!(&s, &ws.to_vec());
        assert_bytes_equal("quant_fp8", &q, wq.as_slice().unwrap(), cols);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn dequant_inverts_the_reference_encoding(rows in 0usize..30, cols in 1usize..600, seed: u64) {
        let mut r = rng(seed);
        let q: Vec<u8> = (0..rows * cols).map(|_| r.gen::<u8>()).map(|b| if b & 0x7F == 0x7F { 0 } else { b }).collect();
        let s: Vec<f32> = (0..rows).map(|_| r.gen_range(1e-4f32..10.0)).collect();
        let dq = upload(&q.iter().map(|&b| E4M3(b)).collect::<Vec<_>>());
        let ds = upload(&s);
        let mut out = poison_f32(rows * cols);
        dequant_fp8(stream(), &Tensor::of(&dq, [rows, cols]).unwrap(), &Tensor::of(&ds, [rows]).unwrap(),
                    &mut TensorMut::of(&mut out, [rows, cols]).unwrap()).unwrap();
        let want = fp8::dequantize_rowwise(Array2::from_shape_vec((rows, cols), q).unwrap().view(), ndarray::Array1::from(s).view());
        let got = download(&out);
        prop_assert!(got.iter().zip(want.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "dequant differs from the reference");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn edge_rows_zero_nan_and_huge() {
    // Row 0 all zeros (scale from MIN_AMAX, bytes 0); row 1 holds a NaN (ignored by amax, encoded 0x7F);
    // row 2 spans bf16's range (saturation never produces NaN); row 3 is a lone subnormal-sized value.
    let cols = 24;
    let mut x = vec![0.0f32; 4 * cols];
    for c in 0..cols {
        x[cols + c] = (c as f32 - 11.5) * 0.25;
        x[2 * cols + c] = if c % 2 == 0 { 3.0e38 } else { -1.0e-30 };
    }
    x[cols + 3] = f32::NAN;
    x[3 * cols + 5] = 1.0e-20;
    let (q, s) = device_quant(&x, 4, cols);
    let (wq, ws) = fp8::quantize_rowwise(
        Array2::from_shape_vec((4, cols), x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect())
            .unwrap()
            .view(),
    );
    assert_eq!(s, ws.to_vec());
    assert_eq!(q[cols + 3], fp8::E4M3_NAN);
    assert_bytes_equal("quant edges", &q, wq.as_slice().unwrap(), cols);
    assert!(q[..cols].iter().all(|&b| b == 0));
}
