//! The oracle: every op of the Llama 4 text model contract (`shared/spec/llama4-text.md`) in plain Rust on
//! ndarray, written to be read. Computation is f32 (f64 where an accumulation would otherwise decide a test);
//! bf16 inputs are upcast to f32 and [`Precision`] says where the modelled dtype rounds.
//!
//! One module per op family, named as in `kernels/` and `ops/`.

pub mod argmax;
pub mod attention;
pub mod check;
pub mod dtype;
pub mod embedding;
pub mod expert_parallel;
pub mod fp8;
pub mod grouped_gemm;
pub mod linear;
pub mod moe;
pub mod permute;
pub mod random;
pub mod rmsnorm;
pub mod rope;
pub mod router;
pub mod swiglu;
pub mod weight_prep;

pub use dtype::Precision;
