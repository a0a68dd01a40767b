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
    // SAFETY (every unsafe call of this test): validation refuses the arguments, or they describe no work,
    // before any pointer is used.
    let p = |a: usize| a as *const std::ffi::c_void;
    let s = unsafe { l4k_rmsnorm(ptr::null(), p(0x100), p(0x200) as _, 4, 64, 1e-5, ptr::null_mut()) };
    assert_eq!(s, Status::InvalidArgument);
    assert!(last_error().contains("x is null"), "{}", last_error());
    let s = unsafe { l4k_rmsnorm(p(0x101), p(0x100), p(0x200) as _, 4, 64, 1e-5, ptr::null_mut()) };
    assert!(s == Status::InvalidArgument && last_error().contains("2-byte aligned"), "{}", last_error());
    let s = unsafe { l4k_rmsnorm(p(0x100), p(0x100), p(0x200) as _, 1 << 40, 64, 1e-5, ptr::null_mut()) };
    assert!(s == Status::InvalidArgument && last_error().contains("grid limit"), "{}", last_error());
    let s =
        unsafe { l4k_add_rmsnorm(p(0x100), ptr::null_mut(), p(0x100), p(0x200) as _, 4, 64, 1e-5, ptr::null_mut()) };
    assert!(s == Status::InvalidArgument && last_error().contains("residual"), "{}", last_error());
    let s = unsafe { l4k_swiglu(p(0x100), p(0x200) as _, 4, 0, ptr::null_mut()) };
    assert!(s == Status::InvalidArgument && last_error().contains("inter"), "{}", last_error());
    let s = unsafe { l4k_quant_fp8(p(0x100), p(0x200) as _, p(0x302) as _, 4, 8, ptr::null_mut()) };
    assert!(s == Status::InvalidArgument && last_error().contains("scales"), "{}", last_error());
    let s = unsafe { l4k_dequant_fp8(p(0x100), p(0x200) as _, p(0x300) as _, -1, 8, ptr::null_mut()) };
    assert!(s == Status::InvalidArgument && last_error().contains("negative"), "{}", last_error());
    // A no-op succeeds and clears the message.
    assert_eq!(
        unsafe { l4k_quant_fp8(ptr::null(), ptr::null_mut(), ptr::null_mut(), 0, 8, ptr::null_mut()) },
        Status::Ok
    );
    assert_eq!(last_error(), "");
}

#[test]
fn c_abi_rope_layer_is_validated() {
    let freqs = [1.0f32; 64];
    let mut layer = RopeLayer {
        n_heads: 40,
        n_kv_heads: 8,
        head_dim: 128,
        kind: LAYER_ROPE,
        inv_freq: freqs.as_ptr(),
        qk_norm: 1,
        qk_norm_eps: 1e-5,
        temperature: 0,
        floor_scale: 8192.0,
        attn_scale: 0.1,
    };
    let d = 0x1000 as *mut std::ffi::c_void;
    let call =
        |l: &RopeLayer| unsafe { l4k_rope_qkv(d, d as _, d as _, 3, l, d, d, d, 16, ptr::null_mut(), ptr::null_mut()) };
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
    assert_eq!(
        unsafe { l4k_rope_qkv(d, d as _, d as _, 3, ptr::null(), d, d, d, 16, ptr::null_mut(), ptr::null_mut()) },
        Status::InvalidArgument
    );
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
        let s = scaled.then_some(Llama3Scaling { factor, low_freq_factor: low, high_freq_factor: low + band, original_max_position_embeddings: orig });
        let ours = rope::inv_freq(theta, d, s).unwrap();
        let want = llama4_reference::rope::inv_freq(theta, d, s);
        prop_assert!(ours.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{:?} vs {:?}", ours, want);
    }
}

#[test]
fn c_abi_routing_validation() {
    // SAFETY (every unsafe call of this test): validation refuses the arguments, or they describe no work,
    // before any pointer is used.
    let d = |a: usize| a as *mut std::ffi::c_void;
    let mut ws = 0usize;
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { l4k_router_workspace_size(16384, 128, 0, &mut ws) }, Status::Ok);
    assert!(ws > 16);
    assert_eq!(unsafe { l4k_router_workspace_size(16, 257, 0, &mut ws) }, Status::Unsupported);
    assert!(last_error().contains("257 experts"), "{}", last_error());
    let route = |e: i32, mode: i32, k: i32, align: i32, logits: usize, ws_bytes: usize| unsafe {
        l4k_router(
            d(logits),
            0,
            100,
            e,
            mode,
            k,
            0,
            align,
            d(0x1000) as _,
            d(0x2000) as _,
            d(0x3000) as _,
            d(0x4000) as _,
            d(0x5000) as _,
            d(0x6000),
            ws_bytes,
            ptr::null_mut(),
        )
    };
    let big = 1 << 20;
    assert_eq!(route(300, 0, 1, 1, 0x100, big), Status::Unsupported);
    assert_eq!(route(4, 1, 5, 1, 0x100, big), Status::InvalidArgument);
    assert!(last_error().contains("k = 5 > 4 experts"), "{}", last_error());
    assert_eq!(route(64, 1, 9, 1, 0x100, big), Status::Unsupported);
    assert!(last_error().contains("at most 8"), "{}", last_error());
    // Sigmoid routing takes any k up to 8 (Llama 4's num_experts_per_tok): k = 2 passes the k checks and stops
    // at the pointer checks (a misaligned logits pointer, so nothing is launched).
    assert_eq!(route(64, 0, 2, 1, 0x101, big), Status::InvalidArgument);
    assert!(last_error().contains("logits") && last_error().contains("aligned"), "{}", last_error());
    assert_eq!(route(64, 0, 9, 1, 0x100, big), Status::Unsupported);
    assert_eq!(route(4, 0, 5, 1, 0x100, big), Status::InvalidArgument);
    assert!(last_error().contains("k = 5 > 4 experts"), "{}", last_error());
    assert_eq!(route(64, 0, 1, 1, 0x101, big), Status::InvalidArgument);
    assert!(last_error().contains("logits") && last_error().contains("aligned"), "{}", last_error());
    assert_eq!(route(64, 0, 1, 1, 0x100, 20), Status::InvalidArgument);
    assert!(last_error().contains("workspace is 20 bytes"), "{}", last_error());
    assert_eq!(route(64, 0, 1, 0, 0x100, big), Status::InvalidArgument);
    assert_eq!(route(64, 7, 1, 1, 0x100, big), Status::InvalidArgument);
    assert!(last_error().contains("unknown routing mode"), "{}", last_error());
    // T = 0 is a no-op even with null pointers.
    let s = unsafe {
        l4k_router(
            ptr::null(),
            0,
            0,
            16,
            0,
            1,
            0,
            1,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            0,
            ptr::null_mut(),
        )
    };
    assert_eq!(s, Status::Ok, "{}", last_error());
}

#[test]
fn c_abi_gather_sampling_and_linear_validation() {
    // SAFETY (every unsafe call of this test): validation refuses the arguments, or they describe no work,
    // before any pointer is used.
    let d = |a: usize| a as *mut std::ffi::c_void;
    let emb = |table: usize, rows: i64, tokens: i64, hidden: i64, bad: usize| unsafe {
        l4k_embedding(d(table), d(0x2000) as _, d(0x3000), rows, tokens, hidden, d(bad) as _, ptr::null_mut())
    };
    assert_eq!(emb(0x1001, 10, 4, 8, 0), Status::InvalidArgument);
    assert!(last_error().contains("table") && last_error().contains("aligned"), "{}", last_error());
    assert_eq!(emb(0x1000, 0, 4, 8, 0), Status::InvalidArgument);
    assert!(last_error().contains("at least one row"), "{}", last_error());
    assert_eq!(emb(0x1000, 10, 4, 0, 0), Status::InvalidArgument);
    assert_eq!(emb(0x1000, 10, 4, 8, 0x4002), Status::InvalidArgument);
    assert!(last_error().contains("bad_ids"), "{}", last_error());
    assert_eq!(emb(0x1000, 10, -1, 8, 0), Status::InvalidArgument);
    assert_eq!(emb(0, 10, 0, 8, 0), Status::Ok, "{}", last_error());

    let am = |logits: usize, rows: i64, cols: i64| unsafe {
        l4k_argmax(d(logits) as _, d(0x2000) as _, rows, cols, ptr::null_mut())
    };
    assert_eq!(am(0x1002, 2, 8), Status::InvalidArgument);
    assert!(last_error().contains("logits") && last_error().contains("4-byte aligned"), "{}", last_error());
    assert_eq!(am(0x1000, 2, 1 << 31), Status::InvalidArgument);
    assert!(last_error().contains("cols"), "{}", last_error());
    assert_eq!(am(0, 0, 8), Status::Ok, "{}", last_error());

    // SAFETY: NULL handles are refused or ignored, never dereferenced.
    unsafe {
        assert_eq!(l4k_blas_create(ptr::null_mut()), Status::InvalidArgument);
        assert_eq!(l4k_blas_destroy(ptr::null_mut()), Status::Ok);
        let s = l4k_linear_bf16(
            ptr::null_mut(),
            d(0x1000),
            d(0x2000),
            d(0x3000),
            0,
            4,
            5,
            40,
            d(0x4000),
            32 << 20,
            ptr::null_mut(),
        );
        assert!(s == Status::InvalidArgument && last_error().contains("blas is null"), "{}", last_error());
    }
    let fp8 = |n: i64, k: i64| unsafe {
        l4k_linear_fp8(
            d(0x1000),
            d(0x2000) as _,
            d(0x3000),
            d(0x4000) as _,
            d(0x5000) as _,
            d(0x6000),
            4,
            n,
            k,
            d(0x7000),
            1 << 20,
            ptr::null_mut(),
        )
    };
    assert_eq!(fp8(5, 64), Status::InvalidArgument);
    assert!(last_error().contains("multiple of 8"), "{}", last_error());
    assert_eq!(fp8(64, 40), Status::InvalidArgument);
    assert!(last_error().contains("multiple of 16"), "{}", last_error());
}

#[test]
fn c_abi_permute_validation() {
    // SAFETY (every unsafe call of this test): validation refuses the arguments, or they describe no work,
    // before any pointer is used.
    let d = |a: usize| a as *mut std::ffi::c_void;
    assert_eq!(l4k_permuted_rows(100, 2, 16, 128), 200 + 16 * 127);
    assert_eq!(l4k_permuted_rows(-1, 1, 1, 1), -1);
    let perm = |x: usize, k: i32, align: i32, rows: i64, counts: usize| unsafe {
        l4k_permute_fp8(
            d(x),
            ptr::null(),
            d(0x2000) as _,
            d(counts) as _,
            d(0x4000) as _,
            d(0x5000),
            d(0x6000) as _,
            10,
            64,
            k,
            16,
            align,
            rows,
            ptr::null_mut(),
        )
    };
    assert_eq!(perm(0x1001, 1, 1, 10, 0), Status::InvalidArgument);
    assert!(last_error().contains("x") && last_error().contains("aligned"), "{}", last_error());
    assert_eq!(perm(0x1000, 1, 1, 9, 0), Status::InvalidArgument);
    assert!(last_error().contains("need 10"), "{}", last_error());
    assert_eq!(perm(0x1000, 9, 1, 1000, 0), Status::Unsupported);
    assert_eq!(perm(0x1000, 1, 8, 10 + 16 * 7, 0), Status::InvalidArgument);
    assert!(last_error().contains("counts is null"), "{}", last_error());
    let un = |k: i32, shared: usize| unsafe {
        l4k_unpermute(d(0x1000), ptr::null(), d(0x2000) as _, d(shared), d(0x3000), 10, 64, k, 10, ptr::null_mut())
    };
    assert_eq!(un(9, 0), Status::Unsupported);
    assert_eq!(un(1, 0x3001), Status::InvalidArgument);
    assert!(last_error().contains("shared"), "{}", last_error());
}

#[test]
fn c_abi_grouped_gemm_blockwise_validation() {
    // SAFETY (every unsafe call of this test): validation refuses the arguments, or they describe no work,
    // before any pointer is used.
    let d = |a: usize| a as *mut std::ffi::c_void;
    let call = |rows: i64, n: i64, k: i64, schedule: i32, scale_a: usize| unsafe {
        l4k_grouped_gemm_fp8_blockwise(
            d(0x1000),
            d(scale_a) as _,
            d(0x3000),
            d(0x4000) as _,
            d(0x5000) as _,
            ptr::null(),
            d(0x6000),
            rows,
            n,
            k,
            2,
            schedule,
            d(0x7000),
            1 << 20,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    assert_eq!(call(8, 256, 200, 0, 0x2000), Status::InvalidArgument);
    assert!(last_error().contains("k = 200") && last_error().contains("multiple of 128"), "{}", last_error());
    assert_eq!(call(8, 136, 256, 0, 0x2000), Status::InvalidArgument);
    assert!(last_error().contains("n = 136"), "{}", last_error());
    assert_eq!(call(8, 256, 256, 3, 0x2000), Status::Unsupported);
    assert!(last_error().contains("fast-accumulation"), "{}", last_error());
    assert_eq!(call(8, 256, 256, 7, 0x2000), Status::InvalidArgument);
    assert_eq!(call(8, 256, 256, 1, 0x2002), Status::InvalidArgument);
    assert!(last_error().contains("scale_a") && last_error().contains("aligned"), "{}", last_error());
    assert_eq!(call(0, 256, 256, 0, 0), Status::Ok, "{}", last_error());
}
