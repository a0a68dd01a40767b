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

mod abi;
mod error;
mod ffi;

pub mod argmax;
pub mod attention;
pub mod attention_decode;
pub mod attention_prefill;
pub mod capi;
pub mod device;
pub mod embedding;
pub mod expert_parallel;
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
