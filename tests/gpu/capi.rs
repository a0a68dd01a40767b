//! The C entry points on the device: same validation, same kernels, same results as the safe API.
use crate::common::*;
use cudarc::driver::DevicePtr;
use llama4_kernels::capi;
use llama4_kernels::rmsnorm::rmsnorm;
use llama4_kernels::{Status, Tensor, TensorMut};
use std::ffi::CStr;

#[test]
#[ignore = "needs a CUDA GPU"]
fn c_rmsnorm_equals_the_safe_api() {
    let (rows, cols) = (5, 520);
    let mut r = rng(3);
    let (x, w) = (rand_bf16(&mut r, rows * cols, 2.0), rand_bf16(&mut r, cols, 1.0));
    let (dx, dw) = (upload_bf16(&x), upload_bf16(&w));
    let mut safe = poison_bf16(rows * cols);
    rmsnorm(
        stream(),
        &Tensor::of(&dx, [rows, cols]).unwrap(),
        &Tensor::of(&dw, [cols]).unwrap(),
        1e-5,
        &mut TensorMut::of(&mut safe, [rows, cols]).unwrap(),
    )
    .unwrap();
    let c_out = poison_bf16(rows * cols);
    let s = stream();
    let status = {
        let (px, _a) = dx.device_ptr(s);
        let (pw, _b) = dw.device_ptr(s);
        let (py, _c) = c_out.device_ptr(s);
        capi::l4k_rmsnorm(px as _, pw as _, py as _, rows as i64, cols as i64, 1e-5, s.cu_stream())
    };
    // SAFETY: l4k_last_error returns a valid C string.
    let msg = unsafe { CStr::from_ptr(capi::l4k_last_error()) }.to_string_lossy().into_owned();
    assert_eq!(status, Status::Ok, "{msg}");
    assert_eq!(msg, "");
    let (a, b) = (download_bf16(&safe), download_bf16(&c_out));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "C ABI and safe API differ");
}
