//! Regression test for the fuzz targets under plain `cargo test`: every seed in fuzz/corpus/ and every
//! fixture file, then truncations and deterministic mutations of them, go through the same entry points the
//! fuzz targets call (`llama4_model::fuzz_entry`). A panic anywhere fails the test.

mod common;

use llama4_model::fuzz_entry;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(kind);
    let seeds: Vec<Vec<u8>> = files_in(&dir).iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(seeds.len() >= 4, "{}: seed corpus missing", dir.display());
    seeds
}

/// Every prefix for small inputs, ~300 spread-out prefixes for large ones.
fn truncations(data: &[u8]) -> Vec<usize> {
    let step = (data.len() / 300).max(1);
    (0..data.len()).step_by(step).chain([data.len().saturating_sub(1)]).collect()
}

/// Byte-level mutations: flips, interesting bytes, duplicated and deleted spans.
fn mutate(data: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        if d.is_empty() {
            d.push(rng.gen());
            continue;
        }
        let i = rng.gen_range(0..d.len());
        match rng.gen_range(0..5) {
            0 => d[i] ^= 1 << rng.gen_range(0..8),
            1 => d[i] = [0u8, 0xff, b'9', b'-', b'"', b'{', b'[', b'e', 0x7f][rng.gen_range(0..9)],
            2 => {
                let j = (i + rng.gen_range(0..16)).min(d.len());
                let span = d[i..j].to_vec();
                d.splice(i..i, span);
            }
            3 => {
                let j = (i + rng.gen_range(0..16)).min(d.len());
                d.drain(i..j);
            }
            _ => d.insert(i, rng.gen()),
        }
    }
    d
}

#[test]
fn config_parser_survives_seeds_truncations_and_mutations() {
    let mut seeds = corpus("config");
    for dir in common::fixtures() {
        seeds.push(std::fs::read(dir.join("config.json")).unwrap());
    }
    survives(&seeds, 3, fuzz_entry::config);
}

/// Every seed, its truncations and 300 mutations of it through `entry`.
fn survives(seeds: &[Vec<u8>], rng_seed: u64, entry: fn(&[u8])) {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    for seed in seeds {
        entry(seed);
        for n in truncations(seed) {
            entry(&seed[..n]);
        }
        for _ in 0..300 {
            entry(&mutate(seed, &mut rng));
        }
    }
}

#[test]
fn config_parser_survives_every_key_set_to_every_odd_value() {
    let odd = [
        json!(null),
        json!(-1),
        json!(0),
        json!(1),
        json!(3),
        json!(1e300),
        json!(-0.5),
        json!(u64::MAX),
        json!("4"),
        json!(true),
        json!([]),
        json!([1, 0, 7]),
        json!({}),
        json!([[1]]),
    ];
    for seed in corpus("config") {
        let v: Value = serde_json::from_slice(&seed).unwrap();
        let text = v.get("text_config").cloned().unwrap_or(v);
        let keys: Vec<String> = text.as_object().unwrap().keys().cloned().collect();
        for key in &keys {
            let mut removed = text.clone();
            removed.as_object_mut().unwrap().remove(key);
            fuzz_entry::config(removed.to_string().as_bytes());
            for val in &odd {
                let mut t = text.clone();
                t[key.as_str()] = val.clone();
                fuzz_entry::config(t.to_string().as_bytes());
                fuzz_entry::config(json!({ "text_config": t }).to_string().as_bytes());
                if let Some(Value::Object(inner)) = text.get(key) {
                    for k in inner.keys() {
                        let mut t = text.clone();
                        t[key.as_str()][k.as_str()] = val.clone();
                        fuzz_entry::config(t.to_string().as_bytes());
                    }
                }
            }
        }
    }
}

#[test]
fn safetensors_reader_survives_seeds_truncations_and_mutations() {
    let mut seeds = corpus("safetensors");
    for dir in common::fixtures() {
        seeds.push(std::fs::read(dir.join("logits.safetensors")).unwrap());
    }
    seeds.push(std::fs::read(common::fixtures_root().join("unfused_f16/model.safetensors")).unwrap());
    let mut rng = StdRng::seed_from_u64(5);
    for seed in &seeds {
        fuzz_entry::safetensors(seed);
        for n in truncations(seed) {
            fuzz_entry::safetensors(&seed[..n]);
        }
        // Mutations aimed at the header, where all the parsing happens.
        let header_end = seed.len().min(8 + u64::from_le_bytes(seed[..8].try_into().unwrap()).min(1 << 20) as usize);
        for _ in 0..300 {
            let mut d = mutate(&seed[..header_end], &mut rng);
            d.extend_from_slice(&seed[header_end..]);
            fuzz_entry::safetensors(&d);
        }
        // Header lengths around and far beyond the real one.
        for len in [0u64, 1, 2, 7, 8, (header_end - 8) as u64 + 1, 1 << 24, 1 << 40, u64::MAX] {
            let mut d = seed.clone();
            d[..8].copy_from_slice(&len.to_le_bytes());
            fuzz_entry::safetensors(&d);
        }
    }
}

#[test]
fn safetensors_headers_with_hostile_entries_are_errors() {
    use llama4_model::safetensors_file::parse_header;
    let file = |header: &str, data: usize| {
        let mut d = (header.len() as u64).to_le_bytes().to_vec();
        d.extend_from_slice(header.as_bytes());
        d.resize(d.len() + data, 0);
        d
    };
    let bad = [
        r#"{"t": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}}"#,
        r#"{"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}"#,
        r#"{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}}"#,
        r#"{"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#,
        r#"{"t": {"dtype": "F32", "shape": [1,1,1,1,1,1,1,1,1], "data_offsets": [0, 4]}}"#,
        r#"{"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#,
        r#"{"t": {"dtype": 3, "shape": [1], "data_offsets": [0, 4]}}"#,
        r#"{"t": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}"#,
        r#"[1, 2]"#,
        r#"{"t": 5}"#,
    ];
    for h in bad {
        let e = parse_header(&file(h, 8), "test").unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
    }
    let ok = file(
        r#"{"__metadata__": {"format": "pt"}, "t": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}"#,
        8,
    );
    let h = parse_header(&ok, "test").unwrap();
    assert_eq!(h.tensors["t"].shape, [2, 2]);
    assert!(!h.tensors.contains_key("__metadata__"));
}

#[test]
fn index_parser_survives_seeds_truncations_and_mutations() {
    let mut seeds = corpus("index");
    seeds.push(std::fs::read(common::fixtures_root().join("multimodal_tiny/model.safetensors.index.json")).unwrap());
    survives(&seeds, 11, fuzz_entry::index);
}

/// The seeds of issue 18's classes are refused by the parsers themselves (the loader tests in hostile.rs run
/// the same attacks on whole checkpoints).
#[test]
fn hostile_seeds_are_refused() {
    use llama4_model::checkpoint::parse_index;
    use llama4_model::config::TextConfig;
    use llama4_model::safetensors_file::{parse_header, read_host};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let read = |p: &str| std::fs::read(dir.join(p)).unwrap();
    for (file, want) in [
        ("header_length_short", "the tensors cover 8 data bytes but the file holds 12"),
        ("name_twice", "tensor `a`: listed twice"),
        ("overlap", "tensor `b`: data_offsets [4, 8] overlaps"),
        ("zero_axis_overflow", "overflows"),
    ] {
        let e = parse_header(&read(&format!("safetensors/{file}.safetensors")), file).unwrap_err().to_string();
        assert!(e.contains(want) && !e.contains('\n'), "{file}: {e}");
    }
    let bytes = read("safetensors/non_finite.safetensors");
    let h = parse_header(&bytes, "non_finite").unwrap();
    for (name, info) in &h.tensors {
        let e = read_host(&bytes, &h, info, name).unwrap().check_finite(name).unwrap_err().to_string();
        assert!(e.contains(&format!("tensor `{name}` holds")), "{e}");
    }
    let odd = read("safetensors/odd_names_dtypes.safetensors");
    assert!(parse_header(&odd, "odd").unwrap().tensors.contains_key("a\nb"));
    for (file, want) in [("rope_factor_tiny", "inverse frequency inf"), ("floor_scale_tiny", "temperature inf")] {
        let text = String::from_utf8(read(&format!("config/{file}.json"))).unwrap();
        let e = TextConfig::parse(&text).unwrap_err().to_string();
        assert!(e.contains(want), "{file}: {e}");
    }
    let text = String::from_utf8(read("config/rope_scaling_beside_parameters.json")).unwrap();
    assert_eq!(TextConfig::parse(&text).unwrap().rope_theta, 10000.0);
    for (file, want) in [("traversal", "not a plain file name"), ("non_string_shard", "`weight_map.a`")] {
        let text = String::from_utf8(read(&format!("index/{file}.json"))).unwrap();
        let e = parse_index(&text, file).unwrap_err().to_string();
        assert!(e.contains(want), "{file}: {e}");
    }
}
