//! Host-side pieces that need no GPU: the C ABI's argument validation, the RoPE frequency table against the
//! reference, and that opening a GPU on a machine without one is an error, not a panic.

use llama4_kernels::capi::*;
use llama4_kernels::rope::{self, Llama3Scaling};
use llama4_kernels::{Error, Gpu, Status};
use proptest::prelude::*;
use std::ffi::CStr;
use std::ptr;

fn last_error() -> String {
    // SAFETY: l4k_last_error returns a valid C string.
    unsafe { CStr::from_ptr(l4k_last_error()) }.to_string_lossy().into_owned()
}

#[test]
fn c_abi_rejects_bad_arguments_before_launching() {
    let p = |a: usize| a as *const std::ffi::c_void;
    let s = l4k_rmsnorm(ptr::null(), p(0x100), p(0x200) as _, 4, 64, 1e-5, ptr::null_mut());
    assert_eq!(s, Status::InvalidArgument);
    assert!(last_error().contains("x is null"), "{}", last_error());
    let s = l4k_rmsnorm(p(0x101), p(0x100), p(0x200) as _, 4, 64, 1e-5, ptr::null_mut());
    assert!(s == Status::InvalidArgument && last_error().contains("2-byte aligned"), "{}", last_error());
    let s = l4k_rmsnorm(p(0x100), p(0x100), p(0x200) as _, 1 << 40, 64, 1e-5, ptr::null_mut());
    assert!(s == Status::InvalidArgument && last_error().contains("grid limit"), "{}", last_error());
    let s = l4k_add_rmsnorm(p(0x100), ptr::null_mut(), p(0x100), p(0x200) as _, 4, 64, 1e-5, ptr::null_mut());
    assert!(s == Status::InvalidArgument && last_error().contains("residual"), "{}", last_error());
    let s = l4k_swiglu(p(0x100), p(0x200) as _, 4, 0, ptr::null_mut());
    assert!(s == Status::InvalidArgument && last_error().contains("inter"), "{}", last_error());
    let s = l4k_quant_fp8(p(0x100), p(0x200) as _, p(0x302) as _, 4, 8, ptr::null_mut());
    assert!(s == Status::InvalidArgument && last_error().contains("scales"), "{}", last_error());
    let s = l4k_dequant_fp8(p(0x100), p(0x200) as _, p(0x300) as _, -1, 8, ptr::null_mut());
    assert!(s == Status::InvalidArgument && last_error().contains("negative"), "{}", last_error());
    // A no-op succeeds and clears the message.
    assert_eq!(l4k_quant_fp8(ptr::null(), ptr::null_mut(), ptr::null_mut(), 0, 8, ptr::null_mut()), Status::Ok);
    assert_eq!(last_error(), "");
}

#[test]
fn c_abi_rope_layer_is_validated() {
    let freqs = [1.0f32; 64];
    let mut layer = RopeLayer {
        n_heads: 40, n_kv_heads: 8, head_dim: 128, kind: LAYER_ROPE, inv_freq: freqs.as_ptr(),
        qk_norm: 1, qk_norm_eps: 1e-5, temperature: 0, floor_scale: 8192.0, attn_scale: 0.1,
    };
    let d = 0x1000 as *mut std::ffi::c_void;
    let call = |l: &RopeLayer| unsafe {
        l4k_rope_qkv(d, d as _, d as _, 3, l, d, d, d, 16, ptr::null_mut(), ptr::null_mut())
    };
    layer.n_kv_heads = 7;
    assert_eq!(call(&layer), Status::InvalidArgument, "{}", last_error());
    layer.n_kv_heads = 8;
    layer.kind = 9;
    assert_eq!(call(&layer), Status::InvalidArgument);
    assert!(last_error().contains("unknown layer kind"));
    layer.kind = LAYER_ROPE;
    layer.inv_freq = ptr::null();
    assert_eq!(call(&layer), Status::InvalidArgument);
    layer.kind = LAYER_NOPE;
    layer.temperature = 1;
    layer.floor_scale = 0.0;
    assert_eq!(call(&layer), Status::InvalidArgument);
    assert!(last_error().contains("floor_scale"));
    assert_eq!(unsafe { l4k_rope_qkv(d, d as _, d as _, 3, ptr::null(), d, d, d, 16, ptr::null_mut(), ptr::null_mut()) }, Status::InvalidArgument);
}

#[test]
fn opening_a_gpu_never_panics() {
    match Gpu::new(0) {
        Ok(g) => println!("GPU present: {}", g.describe()),
        Err(e) => {
            assert!(matches!(e, Error::NoDevice(_)), "{e}");
            assert!(std::env::var_os("L4K_EXPECT_GPU").is_none(), "L4K_EXPECT_GPU is set but {e}");
        }
    }
}

proptest! {
    /// The ops crate computes its frequency table independently of the reference: they must agree bit for bit.
    #[test]
    fn inv_freq_equals_the_reference(half_dim in 1usize..129, theta in prop::sample::select(vec![10000.0f32, 500000.0, 1e6]),
                                     factor in 1.0f32..32.0, low in 0.5f32..2.0, band in 0.0f32..6.0, orig in 8.0f32..16384.0, scaled: bool) {
        let d = 2 * half_dim;
        let s = Llama3Scaling { factor, low_freq_factor: low, high_freq_factor: low + band, original_max_position_embeddings: orig };
        let r = llama4_reference::rope::Llama3Scaling { factor, low_freq_factor: low, high_freq_factor: low + band, original_max_position_embeddings: orig };
        let ours = rope::inv_freq(theta, d, scaled.then_some(s)).unwrap();
        let want = llama4_reference::rope::inv_freq(theta, d, scaled.then_some(r));
        prop_assert!(ours.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{:?} vs {:?}", ours, want);
    }
}
