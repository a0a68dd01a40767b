//! The safetensors reader (header validation, then every tensor upcast to f32) on arbitrary bytes: must
//! never panic, and the header-size, tensor-count and rank caps bound what it allocates.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    llama4_model::fuzz_entry::safetensors(data);
});
