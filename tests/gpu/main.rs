//! GPU tests: every kernel against the reference on random inputs of random, odd shapes, outputs poisoned
//! before each run. They need an sm_90 GPU and are ignored on CPU-only machines; run them with
//! `cargo test --release --test gpu -- --include-ignored` (the staged runner does). Without a GPU they fail.

mod common;

mod argmax;
mod attention;
mod attention_decode;
mod attention_prefill;
mod capi;
mod embedding;
mod expert_parallel;
mod grouped_gemm;
mod grouped_gemm_blockwise;
mod grouped_gemm_swiglu;
mod linear;
mod permute;
mod quant;
mod random;
mod rmsnorm;
mod rope;
mod router;
mod router_fused;
mod swiglu;
mod weight_prep;
