use crate::common::*;
use llama4_kernels::quant::Fp8Copy;
use llama4_kernels::rmsnorm::{add_rmsnorm, add_rmsnorm_with_fp8, rmsnorm, rmsnorm_with_fp8};
use llama4_kernels::{Error, Tensor, TensorMut};
use llama4_reference::check::TOL_BF16;
use llama4_reference::fp8;
use llama4_reference::{rmsnorm as reference, Precision};
use ndarray::{Array1, Array2};
use proptest::prelude::*;

const EPS: f32 = 1e-5;

proptest! {
    #![proptest_config(cases(24))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn rmsnorm_matches_reference(rows in 0usize..40, cols in row_len(), seed: u64) {
        let mut r = rng(seed);
        let x = rand_bf16(&mut r, rows * cols, 4.0);
        let w: Vec<f32> = rand_bf16(&mut r, cols, 1.0).iter().map(|v| 1.0 + v).map(|v| half::bf16::from_f32(v).to_f32()).collect();
        let (dx, dw) = (upload_bf16(&x), upload_bf16(&w));
        let mut dy = poison_bf16(rows * cols);
        rmsnorm(stream(), &Tensor::of(&dx, [rows, cols]).unwrap(), &Tensor::of(&dw, [cols]).unwrap(), EPS,
                &mut TensorMut::of(&mut dy, [rows, cols]).unwrap()).unwrap();
        let want = reference::rmsnorm(Array2::from_shape_vec((rows, cols), x).unwrap().view(),
                                      Array1::from(w).view(), EPS, Precision::Bf16);
        assert_matches("rmsnorm", &download_bf16(&dy), want.as_slice().unwrap(), TOL_BF16, 0.99);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn add_rmsnorm_matches_reference(rows in 0usize..40, cols in row_len(), seed: u64) {
        let mut r = rng(seed);
        let x = rand_bf16(&mut r, rows * cols, 2.0);
        let res = rand_bf16(&mut r, rows * cols, 8.0);
        let w = rand_bf16(&mut r, cols, 2.0);
        let (dx, dw) = (upload_bf16(&x), upload_bf16(&w));
        let mut dres = upload_bf16(&res);
        let mut dy = poison_bf16(rows * cols);
        add_rmsnorm(stream(), &Tensor::of(&dx, [rows, cols]).unwrap(), &mut TensorMut::of(&mut dres, [rows, cols]).unwrap(),
                    &Tensor::of(&dw, [cols]).unwrap(), EPS, &mut TensorMut::of(&mut dy, [rows, cols]).unwrap()).unwrap();
        let a = |v: Vec<f32>| Array2::from_shape_vec((rows, cols), v).unwrap();
        let (sum, y) = reference::add_rmsnorm(a(x).view(), a(res).view(), Array1::from(w).view(), EPS, Precision::Bf16);
        // The sum is one bf16 addition: exact.
        assert_matches("add_rmsnorm residual", &download_bf16(&dres), sum.as_slice().unwrap(), 0.0, 1.0);
        assert_matches("add_rmsnorm y", &download_bf16(&dy), y.as_slice().unwrap(), TOL_BF16, 0.99);
    }
}

proptest! {
    #![proptest_config(cases(24))]

    /// The norms with y's FP8 copy: y (and the residual) bit for bit the plain norm's, and the copy exactly the
    /// reference's rowwise quantization of that y (quant_fp8's bytes and scales). `offset` starts the copy's view
    /// 0-7 bytes into its buffer: a misaligned copy is stored a byte at a time, with the same bytes, and y keeps
    /// its bits (the kernel stays on its vector path).
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn the_fp8_copy_is_quant_of_y(rows in 0usize..24, cols in row_len(), add: bool, offset in 0usize..8,
                                  scale_exp in -12i32..12, seed: u64) {
        let mut r = rng(seed);
        let x = rand_bf16(&mut r, rows * cols, 2f32.powi(scale_exp));
        let res = rand_bf16(&mut r, rows * cols, 2f32.powi(scale_exp));
        let w = rand_bf16(&mut r, cols, 2.0);
        let (dx, dw) = (upload_bf16(&x), upload_bf16(&w));
        let (xt, wt) = (Tensor::of(&dx, [rows, cols]).unwrap(), Tensor::of(&dw, [cols]).unwrap());
        let (mut res_plain, mut res_fp8) = (upload_bf16(&res), upload_bf16(&res));
        let (mut y_plain, mut y_fp8) = (poison_bf16(rows * cols), poison_bf16(rows * cols));
        let (mut q, mut qs) = (poison_e4m3(rows * cols + offset), poison_f32(rows));
        {
            let mut qv = TensorMut::new(q.slice_mut(offset..), [rows, cols]).unwrap();
            let copy = Fp8Copy { q: &mut qv, scales: &mut TensorMut::of(&mut qs, [rows]).unwrap() };
            let mut yp = TensorMut::of(&mut y_plain, [rows, cols]).unwrap();
            let mut yf = TensorMut::of(&mut y_fp8, [rows, cols]).unwrap();
            if add {
                add_rmsnorm(stream(), &xt, &mut TensorMut::of(&mut res_plain, [rows, cols]).unwrap(), &wt, EPS, &mut yp)
                    .unwrap();
                add_rmsnorm_with_fp8(stream(), &xt, &mut TensorMut::of(&mut res_fp8, [rows, cols]).unwrap(), &wt, EPS,
                                     &mut yf, copy).unwrap();
            } else {
                rmsnorm(stream(), &xt, &wt, EPS, &mut yp).unwrap();
                rmsnorm_with_fp8(stream(), &xt, &wt, EPS, &mut yf, copy).unwrap();
            }
        }
        let bits = |d: &llama4_kernels::cudarc::driver::CudaSlice<llama4_kernels::bf16>| {
            download(d).iter().map(|v| v.to_bits()).collect::<Vec<u16>>()
        };
        prop_assert_eq!(bits(&y_fp8), bits(&y_plain), "y");
        prop_assert_eq!(bits(&res_fp8), bits(&res_plain), "residual");
        let y = download_bf16(&y_fp8);
        prop_assert!(y.iter().all(|v| v.is_finite()), "y holds a NaN or infinity");
        let (want_q, want_s) = fp8::quantize_rowwise(Array2::from_shape_vec((rows, cols), y).unwrap().view());
        prop_assert_eq!(download(&qs), want_s.to_vec(), "scales");
        let got: Vec<u8> = download(&q)[offset..].iter().map(|b| b.0).collect();
        if let Some(i) = got.iter().zip(want_q.iter()).position(|(a, b)| a != b) {
            panic!("FP8 copy byte ({}, {}) is {:#04x}, reference {:#04x}", i / cols, i % cols, got[i], want_q.as_slice().unwrap()[i]);
        }
        let before: Vec<u8> = download(&q)[..offset].iter().map(|b| b.0).collect();
        prop_assert!(before.iter().all(|&b| b == 0x7F), "a byte before the copy's view was written");
    }
}

/// The FP8 copy's operands are checked like the others: a shape that is not y's, and scales of the wrong length.
#[test]
#[ignore = "needs a CUDA GPU"]
fn fp8_copy_shapes_are_checked() {
    let (dx, dw) = (upload_bf16(&[1.0; 64]), upload_bf16(&[1.0; 16]));
    let mut dy = poison_bf16(64);
    let (mut q, mut qs) = (poison_e4m3(64), poison_f32(4));
    let (xt, wt) = (Tensor::of(&dx, [4, 16]).unwrap(), Tensor::of(&dw, [16]).unwrap());
    let mut norm = |q_shape: [usize; 2], scales: usize| {
        let copy = Fp8Copy {
            q: &mut TensorMut::of(&mut q, q_shape).unwrap(),
            scales: &mut TensorMut::new(qs.slice_mut(..scales), [scales]).unwrap(),
        };
        rmsnorm_with_fp8(stream(), &xt, &wt, EPS, &mut TensorMut::of(&mut dy, [4, 16]).unwrap(), copy).unwrap_err()
    };
    let e = norm([2, 32], 4);
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("FP8 copy [2, 32] != y [4, 16]")), "{e}");
    let e = norm([4, 16], 3);
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("FP8 scales [3] for 4 rows")), "{e}");
    assert!(download(&q).iter().all(|b| b.0 == 0x7F) && download_bf16(&dy).iter().all(|v| v.is_nan()), "written");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn misaligned_views_take_the_scalar_path() {
    // A view starting one element into the buffer is 2-byte aligned only: results must not change.
    let (rows, cols) = (3, 64);
    let mut r = rng(7);
    let x = rand_bf16(&mut r, rows * cols + 1, 3.0);
    let w = rand_bf16(&mut r, cols, 1.0);
    let (dx, dw) = (upload_bf16(&x), upload_bf16(&w));
    let mut dy = poison_bf16(rows * cols + 1);
    let xv = Tensor::new(dx.slice(1..), [rows, cols]).unwrap();
    let mut yv = TensorMut::new(dy.slice_mut(1..), [rows, cols]).unwrap();
    rmsnorm(stream(), &xv, &Tensor::of(&dw, [cols]).unwrap(), EPS, &mut yv).unwrap();
    let want = reference::rmsnorm(
        Array2::from_shape_vec((rows, cols), x[1..].to_vec()).unwrap().view(),
        Array1::from(w).view(),
        EPS,
        Precision::Bf16,
    );
    let got = download_bf16(&dy);
    assert!(got[0].is_nan(), "the element before the view was written");
    assert_matches("rmsnorm misaligned", &got[1..], want.as_slice().unwrap(), TOL_BF16, 0.99);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_shapes_are_clear_errors() {
    let dx = upload_bf16(&[1.0; 64]);
    let dw = upload_bf16(&[1.0; 16]);
    let mut dy = poison_bf16(64);
    let e = rmsnorm(
        stream(),
        &Tensor::of(&dx, [4, 16]).unwrap(),
        &Tensor::of(&dw, [16]).unwrap(),
        EPS,
        &mut TensorMut::of(&mut dy, [2, 32]).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("y [2, 32] != x [4, 16]")), "{e}");
    assert!(Tensor::of(&dx, [4, 17]).is_err(), "a view larger than its buffer");
    let e = rmsnorm(
        stream(),
        &Tensor::of(&dx, [4, 16]).unwrap(),
        &Tensor::of(&dw, [16]).unwrap(),
        f32::NAN,
        &mut TensorMut::of(&mut dy, [4, 16]).unwrap(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("eps"), "{e}");
    // Longer rows than the kernel holds: refused, never mishandled.
    let long = 32768 + 8;
    let dl = upload_bf16(&vec![1.0; long]);
    let dwl = upload_bf16(&vec![1.0; long]);
    let mut dyl = poison_bf16(long);
    let e = rmsnorm(
        stream(),
        &Tensor::of(&dl, [1, long]).unwrap(),
        &Tensor::of(&dwl, [long]).unwrap(),
        EPS,
        &mut TensorMut::of(&mut dyl, [1, long]).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
}
