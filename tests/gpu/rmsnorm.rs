use crate::common::*;
use llama4_kernels::rmsnorm::{add_rmsnorm, rmsnorm};
use llama4_kernels::{Error, Tensor, TensorMut};
use llama4_reference::check::TOL_BF16;
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
