//! Shared by the GPU tests: the device, random data, poisoned buffers, and comparisons that name the element
//! that disagrees.

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use llama4_kernels::{bf16, Gpu, E4M3};
use proptest::test_runner::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, OnceLock};

/// The test GPU. No GPU is a failure, never a skip: these tests only run when asked to.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(0).unwrap_or_else(|e| panic!("GPU tests were asked to run but {e}")))
}

pub fn stream() -> &'static Arc<CudaStream> {
    gpu().stream()
}

/// Cases per property: PROPTEST_CASES if set (the sanitizer run lowers it), else `default`.
pub fn cases(default: u32) -> Config {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    Config { cases: n, failure_persistence: None, ..Config::default() }
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Random values already on the bf16 grid (so host and device see the same inputs), spread over `scale`.
pub fn rand_bf16(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0) * scale).to_f32()).collect()
}

pub fn upload<T: DeviceRepr>(host: &[T]) -> CudaSlice<T> {
    stream().clone_htod(host).expect("upload")
}

pub fn upload_bf16(v: &[f32]) -> CudaSlice<bf16> {
    upload(&v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())
}

pub fn download<T: DeviceRepr + Default + Clone>(d: &CudaSlice<T>) -> Vec<T> {
    stream().clone_dtoh(d).expect("download")
}

pub fn download_bf16(d: &CudaSlice<bf16>) -> Vec<f32> {
    download(d).into_iter().map(|x| x.to_f32()).collect()
}

/// Output buffers start as NaN (bf16 0x7FC0, E4M3 0x7F, f32 NaN): an element the kernel never wrote fails.
pub fn poison_bf16(n: usize) -> CudaSlice<bf16> {
    upload(&vec![bf16::from_bits(0x7FC0); n])
}
pub fn poison_e4m3(n: usize) -> CudaSlice<E4M3> {
    upload(&vec![E4M3(0x7F); n])
}
pub fn poison_f32(n: usize) -> CudaSlice<f32> {
    upload(&vec![f32::NAN; n])
}

/// Relative L2 error within `tol`, plus at least `min_exact` of the elements bit-identical to the reference
/// (the kernels reproduce the model's bf16 roundings, so almost every element must match exactly; the rest
/// differ by one rounding where device and host transcendental functions differ in the last f32 bit). The
/// allowance of inexact elements, (1 - min_exact) of them, is rounded up to whole elements: an 88-element output
/// at 0.99 may hold one (a fraction would demand all 88), and min_exact = 1 still demands every one.
pub fn assert_matches(what: &str, out: &[f32], reference: &[f32], tol: f64, min_exact: f64) {
    llama4_reference::check::assert_close(what, out, reference, tol);
    let exact = out.iter().zip(reference).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
    let allowed = ((1.0 - min_exact) * out.len() as f64 - 1e-9).ceil().max(0.0) as usize;
    assert!(
        out.len() - exact <= allowed,
        "{what}: only {exact} of {} elements bit-identical to the reference (at most {allowed} may differ)",
        out.len()
    );
}

/// Odd and realistic row lengths: anything from 1, multiples of 8 (the vector path), and model widths.
pub fn row_len() -> impl proptest::strategy::Strategy<Value = usize> {
    use proptest::prelude::*;
    prop_oneof![1usize..400, (1usize..200).prop_map(|k| 8 * k), Just(5120), Just(8192), Just(16384)]
}
