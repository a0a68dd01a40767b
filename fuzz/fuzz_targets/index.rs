//! The shard index (`model.safetensors.index.json`: its weight map and every shard name) on arbitrary bytes:
//! must never panic, and the loader caps the index's size before parsing it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    llama4_model::fuzz_entry::index(data);
});
