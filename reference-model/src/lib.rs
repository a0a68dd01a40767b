//! The Llama 4 text model (`Llama4ForCausalLM`, and the text half of `Llama4ForConditionalGeneration`) on top
//! of the plain-Rust reference ops: config.json parsing, memory-mapped safetensors loading, a KV cache in
//! which chunked layers keep only their chunk, prefill, decode and greedy generation.
//!
//! The decoder is written once over [`backend::Backend`]; [`cpu::Cpu`] implements it with `llama4-reference`
//! (the oracle), a GPU backend will implement it with the fused kernels.
//!
//! ```no_run
//! use llama4_model::{cpu::Cpu, model::Model};
//! let model = Model::load(std::path::Path::new("reference-model/fixtures/scout_tiny"), Cpu)?;
//! let out = model.generate(&[1, 2, 3], 8, false)?;
//! println!("{:?}", out.tokens);
//! # Ok::<(), llama4_model::Error>(())
//! ```

pub mod backend;
pub mod checkpoint;
pub mod config;
mod config_rope;
pub mod cpu;
pub mod error;
#[doc(hidden)]
pub mod fuzz_entry;
mod json;
pub mod kv_cache;
pub mod logits_file;
pub mod model;
pub mod safetensors_file;
pub mod weights;

pub use error::{Error, Result};
