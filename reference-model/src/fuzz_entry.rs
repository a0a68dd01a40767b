//! The entry points the fuzz targets (`fuzz/fuzz_targets/`) drive, kept in the library so that the plain
//! `cargo test` regression test (tests/no_panic.rs) runs exactly the same code on the seed corpora.
//! None may panic or allocate more than a small multiple of its input, whatever the bytes.

use crate::checkpoint::parse_index;
use crate::config::TextConfig;
use crate::safetensors_file::{parse_header, read_f32};

/// config.json bytes → parse and validate; with a valid config, also derive every layer's RoPE setup.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = TextConfig::parse(text) {
        // A few layers cover every code path; all 4096 allowed would only slow the fuzzer down.
        for i in 0..c.num_hidden_layers.min(8) {
            let _ = c.layer_kind(i);
        }
    }
}

/// safetensors bytes → parse the header and read every tensor as f32 (unsupported dtypes are errors).
pub fn safetensors(data: &[u8]) {
    if let Ok(h) = parse_header(data, "fuzz input") {
        for (name, info) in &h.tensors {
            let _ = read_f32(data, &h, info, name);
        }
    }
}

/// model.safetensors.index.json bytes → its weight map, every shard name checked.
pub fn index(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_index(text, "fuzz input");
    }
}
