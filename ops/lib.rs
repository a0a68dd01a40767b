//! Fused CUDA kernels and operators for Llama 4 class mixture-of-experts inference on Hopper (sm_90a).
//!
//! Every op family lines up in four places with one name: `kernels/<family>.cu` (the CUDA kernel and its
//! launcher), `ops/<family>.rs` (this crate: the safe API and the validation the C ABI shares),
//! `reference/src/<family>.rs` (the plain-Rust oracle), `tests/gpu/<family>.rs` and `bench/<family>.rs`.
//!
//! Ops take a stream, typed device views ([`Tensor`], [`TensorMut`]) whose shapes were checked when made, and
//! never synchronize or allocate: a sequence of ops can be captured in a CUDA graph. (cudarc's event tracking
//! records events around each use of a buffer; engines that capture graphs across streams may prefer to turn
//! it off with `CudaContext::disable_event_tracking`.)

mod error;
mod ffi;

pub mod argmax;
pub mod attention;
pub mod attention_decode;
pub mod attention_prefill;
pub mod capi;
pub mod device;
pub mod embedding;
pub mod grouped_gemm;
pub mod linear;
pub mod permute;
pub mod quant;
pub mod random;
pub mod rmsnorm;
pub mod rope;
pub mod router;
pub mod swiglu;
pub mod tensor;
pub mod weight_prep;

pub use cudarc;
pub use device::Gpu;
pub use error::{Error, Result, Status};
pub use tensor::{bf16, Element, Tensor, TensorMut, E4M3};

/// Sizes of the launch parameter structs on the CUDA side, for the ABI test.
#[doc(hidden)]
pub fn cuda_params_sizes() -> [(usize, usize); 13] {
    use std::mem::size_of;
    // SAFETY: a pure function of its argument.
    let c = |id| unsafe { ffi::l4k_internal_params_size(id) };
    [
        (c(ffi::PARAMS_RMSNORM), size_of::<ffi::RmsnormParams>()),
        (c(ffi::PARAMS_ROPE), size_of::<ffi::RopeParams>()),
        (c(ffi::PARAMS_SWIGLU), size_of::<ffi::SwigluParams>()),
        (c(ffi::PARAMS_QUANT), size_of::<ffi::QuantParams>()),
        (c(ffi::PARAMS_ROUTER), size_of::<ffi::RouterParams>()),
        (c(ffi::PARAMS_PERMUTE), size_of::<ffi::PermuteParams>()),
        (c(ffi::PARAMS_UNPERMUTE), size_of::<ffi::UnpermuteParams>()),
        (c(ffi::PARAMS_GROUPED_GEMM), size_of::<ffi::GroupedGemmParams>()),
        (c(ffi::PARAMS_ATTENTION), size_of::<ffi::AttentionParams>()),
        (c(ffi::PARAMS_WEIGHT_PREP), size_of::<ffi::WeightPrepParams>()),
        (c(ffi::PARAMS_EMBEDDING), size_of::<ffi::EmbeddingParams>()),
        (c(ffi::PARAMS_ARGMAX), size_of::<ffi::ArgmaxParams>()),
        (c(ffi::PARAMS_RANDOM), size_of::<ffi::RandomParams>()),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn params_sizes_match_the_cuda_side() {
        for (i, (c, rust)) in super::cuda_params_sizes().into_iter().enumerate() {
            assert_eq!(c, rust, "params struct {i}: {c} bytes in CUDA, {rust} in Rust");
        }
    }
}
