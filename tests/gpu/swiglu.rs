use crate::common::*;
use llama4_kernels::swiglu::{swiglu, swiglu_fp8};
use llama4_kernels::{Error, Tensor, TensorMut};
use llama4_reference::check::TOL_BF16;
use llama4_reference::{fp8, swiglu as reference, Precision};
use ndarray::Array2;
use proptest::prelude::*;

proptest! {
    #![proptest_config(cases(24))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn swiglu_matches_reference(t in 0usize..40, inter in row_len(), seed: u64) {
        let mut r = rng(seed);
        let gu = rand_bf16(&mut r, t * 2 * inter, 6.0);
        let dgu = upload_bf16(&gu);
        let mut out = poison_bf16(t * inter);
        swiglu(stream(), &Tensor::of(&dgu, [t, 2 * inter]).unwrap(), &mut TensorMut::of(&mut out, [t, inter]).unwrap()).unwrap();
        let want = reference::swiglu(Array2::from_shape_vec((t, 2 * inter), gu).unwrap().view(), Precision::Bf16);
        assert_matches("swiglu", &download_bf16(&out), want.as_slice().unwrap(), TOL_BF16, 0.99);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn swiglu_fp8_matches_reference(t in 0usize..40, inter in row_len(), seed: u64) {
        let mut r = rng(seed);
        let gu = rand_bf16(&mut r, t * 2 * inter, 6.0);
        let dgu = upload_bf16(&gu);
        let mut q = poison_e4m3(t * inter);
        let mut s = poison_f32(t);
        swiglu_fp8(stream(), &Tensor::of(&dgu, [t, 2 * inter]).unwrap(), &mut TensorMut::of(&mut q, [t, inter]).unwrap(),
                   &mut TensorMut::of(&mut s, [t]).unwrap()).unwrap();
        let (wq, ws) = reference::swiglu_quant(Array2::from_shape_vec((t, 2 * inter), gu).unwrap().view(), Precision::Bf16);
        let q: Vec<u8> = download(&q).into_iter().map(|b| b.0).collect();
        let s = download(&s);
        llama4_reference::check::assert_close("swiglu_fp8 scales", &s, ws.as_slice().unwrap(), TOL_BF16);
        let got = fp8::dequantize_rowwise(Array2::from_shape_vec((t, inter), q).unwrap().view(), ndarray::Array1::from(s).view());
        let want = fp8::dequantize_rowwise(wq.view(), ws.view());
        assert_matches("swiglu_fp8 dequantized", got.as_slice().unwrap(), want.as_slice().unwrap(), TOL_BF16, 0.99);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn odd_gate_up_width_is_rejected() {
    let d = upload_bf16(&[1.0; 14]);
    let mut out = poison_bf16(7);
    let e =
        swiglu(stream(), &Tensor::of(&d, [2, 7]).unwrap(), &mut TensorMut::of(&mut out, [1, 7]).unwrap()).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("even")), "{e}");
}
