//! The Llama 4 text model (`Llama4ForCausalLM`, and the text half of `Llama4ForConditionalGeneration`) on the
//! plain-Rust reference ops and on the GPU kernels: config.json parsing, memory-mapped safetensors loading, a KV cache in
//! which chunked layers keep only their chunk, prefill, decode and greedy generation.
//!
//! The decoder is written once over [`backend::Backend`], a step interface (several sequences, one flat token
//! batch, metadata uploaded once); [`cpu::Cpu`] implements it with `llama4-reference` (the oracle), [`gpu::Gpu`]
//! with the fused kernels. [`engine::Engine`] holds the sequences, the paged KV cache and the recorded decode
//! graphs.
//!
//! ```no_run
//! use llama4_model::{cpu::Cpu, engine::{Engine, Logits, SeqStep}, backend::Limits, model::Model};
//! let model = Model::load(std::path::Path::new("reference-model/fixtures/scout_tiny"), Cpu)?;
//! let out = model.generate(&[1, 2, 3], 8, false)?;
//! println!("{:?}", out.tokens);
//! // Two sequences in one step: a prefill and, once it has a cache, decodes beside it.
//! let mut engine = Engine::new(&model, Limits::default())?;
//! let (a, b) = (engine.add_sequence(), engine.add_sequence());
//! let first = engine.step(&[SeqStep { seq: a, tokens: &[1, 2, 3], logits: Logits::Last }], false)?;
//! let next = first[0].tokens[0];
//! engine.step(&[SeqStep { seq: a, tokens: &[next], logits: Logits::Last },
//!               SeqStep { seq: b, tokens: &[4, 5, 6, 7], logits: Logits::Last }], false)?;
//! engine.free(a);
//! # Ok::<(), llama4_model::Error>(())
//! ```

pub mod backend;
pub mod checkpoint;
pub mod config;
mod config_raw;
mod config_rope;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod files;
#[doc(hidden)]
pub mod fuzz_entry;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod host_memory;
pub mod host_tensor;
pub mod kv_cache;
pub mod logits_file;
pub mod model;
#[cfg(feature = "cuda")]
pub mod perf;
pub mod safetensors_file;
pub mod synthetic;
pub mod weights;

pub use error::{Error, Result};
