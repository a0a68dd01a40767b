//! config.json parsing (`TextConfig::parse` and the per-layer RoPE setup) on arbitrary bytes: must never
//! panic, and sizes are capped so no config makes it allocate without limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    llama4_model::fuzz_entry::config(data);
});
