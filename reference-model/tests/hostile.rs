//! The hostile inputs of issue 18, one test per attack: each is refused with one line naming what is wrong,
//! never a panic, an abort, a hang, an unbounded allocation, a NaN or a silently different answer.

mod common;

use common::{copy_fixture, edit_config, load_err, read_entries, scratch, write_entries};
use llama4_model::checkpoint::{parse_index, Checkpoint};
use llama4_model::cpu::Cpu;
use llama4_model::model::Model;
use llama4_model::Error;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const Q: &str = "model.layers.1.self_attn.q_proj.weight";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llama4-run")).args(args).output().unwrap()
}

/// One line on stderr, no panic, the exit code and the words wanted.
fn one_line(out: &Output, code: i32, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("llama4-run: error: ") && err.contains(want), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The header's JSON text and the data section of a safetensors file.
fn split(path: &Path) -> (String, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (String::from_utf8(b[8..8 + n].to_vec()).unwrap().trim_end().to_string(), b[8 + n..].to_vec())
}

/// Writes `header` padded with `pad` spaces but a length field `short` bytes less than the text: the JSON
/// still parses and every data offset shifts by `short` bytes.
fn write_raw(path: &Path, header: &str, pad: usize, short: usize, data: &[u8]) {
    let text = format!("{header}{}", " ".repeat(pad));
    let mut b = ((text.len() - short) as u64).to_le_bytes().to_vec();
    b.extend_from_slice(text.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

// 1. Wrong answers, silently: the data section must be covered exactly and names must be unique.

#[test]
fn a_header_length_a_few_bytes_short_is_refused() {
    for (fixture, short) in [("scout_tiny", 4), ("bf16_tiny", 2)] {
        let dir = copy_fixture(fixture, &format!("short_header_{short}"));
        let path = dir.join("model.safetensors");
        let (header, data) = split(&path);
        write_raw(&path, &header, 8, short, &data);
        let err = load_err(&dir).to_string();
        assert!(err.contains("the tensors cover") && err.contains("the header length"), "{err}");
    }
}

#[test]
fn a_tensor_name_listed_twice_is_refused() {
    let dir = copy_fixture("scout_tiny", "name_twice");
    let path = dir.join("model.safetensors");
    let (header, data) = split(&path);
    let v: serde_json::Value = serde_json::from_str(&header).unwrap();
    // A second entry for q_proj over the bytes of k_proj's twin in layer 2 (same shape): the last would win.
    let other = v["model.layers.2.self_attn.q_proj.weight"].to_string();
    let twice = format!("{},\"{Q}\":{other}}}", header.strip_suffix('}').unwrap());
    write_raw(&path, &twice, 0, 0, &data);
    let err = load_err(&dir).to_string();
    assert!(err.contains(Q) && err.contains("listed twice"), "{err}");
}

#[test]
fn overlapping_byte_ranges_are_refused() {
    let dir = copy_fixture("scout_tiny", "overlap");
    let path = dir.join("model.safetensors");
    let (header, data) = split(&path);
    let mut v: serde_json::Value = serde_json::from_str(&header).unwrap();
    // q_proj of layer 1 reads layer 2's bytes; its own bytes go to an extra tensor so that the file is covered.
    let own = v[Q].clone();
    v[Q]["data_offsets"] = v["model.layers.2.self_attn.q_proj.weight"]["data_offsets"].clone();
    v["zz.extra"] = own;
    write_raw(&path, &v.to_string(), 0, 0, &data);
    let err = load_err(&dir).to_string();
    assert!(err.contains("overlaps"), "{err}");
}

// 2. NaN and infinity: configs that would compute them, weights that hold them, logits that reach them.

#[test]
fn a_config_that_makes_rope_angles_infinite_is_refused() {
    let dir = copy_fixture("scout_tiny", "rope_tiny_factor");
    edit_config(&dir, |c| c["rope_parameters"]["factor"] = json!(1e-45));
    let err = load_err(&dir);
    assert!(matches!(err, Error::Config(_)) && err.to_string().contains("inverse frequency inf"), "{err}");
    // The CLI says so before writing any logits.
    let file = dir.join("logits.out");
    let d = dir.to_str().unwrap();
    one_line(&run(&[d, "--tokens", "1,2,3,4", "--max-new", "0", "--save-logits", file.to_str().unwrap()]), 1, "RoPE");
    assert!(!file.exists());
}

#[test]
fn a_config_that_makes_the_nope_temperature_infinite_is_refused() {
    let dir = copy_fixture("scout_tiny", "floor_tiny");
    edit_config(&dir, |c| {
        c.insert("floor_scale".into(), json!(1e-45));
    });
    let err = load_err(&dir).to_string();
    assert!(err.contains("floor_scale") && err.contains("temperature inf"), "{err}");
}

#[test]
fn nan_and_infinite_weights_are_named() {
    for (fixture, bad) in [("scout_tiny", f32::NAN), ("bf16_tiny", f32::INFINITY), ("unfused_f16", f32::NEG_INFINITY)] {
        let dir = copy_fixture(fixture, &format!("bad_weight_{fixture}"));
        let path = dir.join("model.safetensors");
        let mut e = read_entries(&path);
        let (dtype, _, bytes) = e.get_mut("model.norm.weight").unwrap();
        match dtype {
            safetensors::Dtype::F32 => bytes[4..8].copy_from_slice(&bad.to_le_bytes()),
            safetensors::Dtype::BF16 => bytes[2..4].copy_from_slice(&half::bf16::from_f32(bad).to_le_bytes()),
            _ => bytes[2..4].copy_from_slice(&half::f16::from_f32(bad).to_le_bytes()),
        }
        write_entries(&path, &e);
        let err = load_err(&dir);
        let line = err.to_string();
        assert!(matches!(err, Error::Weight(_)) && line.contains("model.norm.weight"), "{line}");
        assert!(line.contains(&format!("holds {bad} at element 1")), "{line}");
    }
}

/// Finite weights large enough that the logits overflow: an error naming the position, never saved logits.
#[test]
fn logits_that_overflow_are_an_error_naming_the_position() {
    let dir = copy_fixture("scout_tiny", "overflow");
    let path = dir.join("model.safetensors");
    let mut e = read_entries(&path);
    for name in ["model.norm.weight", "lm_head.weight"] {
        let (_, _, bytes) = e.get_mut(name).unwrap();
        for c in bytes.chunks_mut(4) {
            c.copy_from_slice(&1e30f32.to_le_bytes());
        }
    }
    write_entries(&path, &e);
    let model = Model::load(&dir, Cpu).unwrap();
    for keep in [false, true] {
        let err = model.generate(&[1, 2, 3], 2, keep).err().expect("non-finite logits").to_string();
        assert!(err.contains("position") && err.contains("NaN or infinity"), "{err}");
    }
    let file = dir.join("logits.out");
    let out =
        run(&[dir.to_str().unwrap(), "--tokens", "1,2,3", "--max-new", "0", "--save-logits", file.to_str().unwrap()]);
    one_line(&out, 1, "at position 0");
    assert!(!file.exists());
}

// 3. Request sizes: validated before any work, never overflowing.

#[test]
fn max_new_out_of_range_is_a_usage_error_before_loading() {
    for n in ["18446744073709551615", "1000000000000", "2147483647"] {
        // The directory does not exist: exit 2 (usage), not 1 (loading), shows nothing was loaded.
        one_line(&run(&["/nonexistent", "--tokens", "1,2,3,4", "--max-new", n]), 2, "--max-new");
    }
    let model = Model::load(&common::fixtures_root().join("scout_tiny"), Cpu).unwrap();
    let err = model.generate(&[1, 2], usize::MAX, false).err().unwrap();
    assert!(matches!(err, Error::Input(_)) && err.to_string().contains("positions"), "{err}");
}

#[test]
fn a_cache_larger_than_memory_is_an_error_before_prefill() {
    let dir = common::fixtures_root().join("scout_tiny");
    let out = run(&[dir.to_str().unwrap(), "--tokens", "1,2,3,4", "--max-new", "2000000000"]);
    one_line(&out, 1, "KV cache");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("token    1"));
}

// 4, 6. Sizes from config.json are checked against the tensors present before anything is allocated.

#[test]
fn huge_expert_sizes_in_the_config_allocate_nothing() {
    for (experts, inter) in [(1 << 24, 1 << 24), (3, 1 << 24)] {
        let dir = copy_fixture("unfused_f16", &format!("huge_{experts}"));
        edit_config(&dir, |c| {
            c.insert("num_local_experts".into(), json!(experts));
            c.insert("intermediate_size".into(), json!(inter));
        });
        let err = load_err(&dir);
        assert!(matches!(err, Error::Weight(_)) && err.to_string().contains("16777216"), "{err}");
    }
}

#[test]
fn a_tensor_larger_than_memory_is_named_with_its_bytes() {
    let dir = copy_fixture("scout_tiny", "huge_tensor");
    let (v, h) = (1usize << 24, 1usize << 16);
    edit_config(&dir, |c| {
        c.insert("vocab_size".into(), json!(v));
        c.insert("hidden_size".into(), json!(h));
    });
    // A consistent 2 TiB embedding in a sparse file.
    let header =
        json!({"model.embed_tokens.weight": {"dtype": "BF16", "shape": [v, h], "data_offsets": [0, 2 * v * h]}});
    let path = dir.join("model.safetensors");
    write_raw(&path, &header.to_string(), 0, 0, &[]);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    if f.set_len(f.metadata().unwrap().len() + (2 * v * h) as u64).is_err() {
        eprintln!("skipped: this file system holds no 2 TiB sparse file");
        return;
    }
    let err = load_err(&dir);
    let line = err.to_string();
    assert!(matches!(err, Error::Memory(_)), "{line}");
    assert!(line.contains("model.embed_tokens.weight") && line.contains(&(2 * v * h).to_string()), "{line}");
}

// 5. Output that cannot be written.

#[test]
fn a_closed_pipe_ends_quietly_and_a_full_device_in_one_line() {
    let dir = common::fixtures_root().join("scout_tiny");
    let mut child = Command::new(env!("CARGO_BIN_EXE_llama4-run"))
        .args([dir.to_str().unwrap(), "--tokens", "1,2,3,4", "--max-new", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader leaves at once
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{:?}", String::from_utf8_lossy(&out.stderr));
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        let out = Command::new(env!("CARGO_BIN_EXE_llama4-run"))
            .args([dir.to_str().unwrap(), "--tokens", "1,2,3,4", "--max-new", "5"])
            .stdout(full)
            .output()
            .unwrap();
        one_line(&out, 1, "cannot write stdout");
    }
}

// 7. Files that are not regular files, or too large.

#[test]
fn special_files_are_refused_without_reading_them() {
    let dir = copy_fixture("scout_tiny", "special");
    let cfg = dir.join("config.json");
    std::fs::remove_file(&cfg).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &cfg).unwrap();
    assert!(load_err(&dir).to_string().contains("not a regular file"));
    std::fs::remove_file(&cfg).unwrap();
    std::fs::copy(common::fixtures_root().join("scout_tiny/config.json"), &cfg).unwrap();
    let weights = dir.join("model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    let made = Command::new("mkfifo").arg(&weights).status();
    if made.is_ok_and(|s| s.success()) {
        let t = Instant::now();
        assert!(load_err(&dir).to_string().contains("not a regular file"));
        assert!(t.elapsed() < Duration::from_secs(5));
        std::fs::remove_file(&weights).unwrap();
    }
    std::fs::create_dir(&weights).unwrap();
    let err = load_err(&dir).to_string();
    assert!(err.contains("model.safetensors: is a directory"), "{err}");
}

#[test]
fn oversized_json_files_are_refused() {
    let dir = copy_fixture("scout_tiny", "big_config");
    let cfg = dir.join("config.json");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&" ".repeat(1 << 20));
    std::fs::write(&cfg, text).unwrap();
    assert!(load_err(&dir).to_string().contains("limit"));
}

// 8. A shard index of many names is read in linear time.

#[test]
fn an_index_of_many_shards_is_refused_quickly() {
    let dir = copy_fixture("multimodal_tiny", "many_shards");
    let map: serde_json::Map<String, serde_json::Value> =
        (0..100_000).map(|i| (format!("t{i}"), json!(format!("shard{i}.safetensors")))).collect();
    let text = json!({ "weight_map": map }).to_string();
    std::fs::write(dir.join("model.safetensors.index.json"), &text).unwrap();
    let t = Instant::now();
    assert_eq!(parse_index(&text, "index").unwrap().len(), 100_000);
    assert!(load_err(&dir).to_string().contains("shard0.safetensors"));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn an_index_that_misplaces_a_tensor_is_refused() {
    let dir = copy_fixture("multimodal_tiny", "misplaced");
    let p = dir.join("model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["weight_map"]["language_model.lm_head.weight"] = json!("model-00001-of-00003.safetensors");
    std::fs::write(&p, v.to_string()).unwrap();
    let err = load_err(&dir).to_string();
    assert!(err.contains("language_model.lm_head.weight") && err.contains("does not hold it"), "{err}");
}

// 9. Messages: one line each, and saying what is true.

#[test]
fn usage_errors_are_one_line() {
    let good = common::fixtures_root().join("scout_tiny");
    let g = good.to_str().unwrap();
    for args in
        [vec![], vec![g], vec![g, "--tokens", "1\n2x"], vec![g, "--bogus"], vec![g, "--tokens", "1", "--device", "tpu"]]
    {
        one_line(&run(&args), 2, "");
    }
    let help = run(&["--help"]);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--save-logits"));
}

#[test]
fn names_holding_newlines_stay_on_one_line() {
    let dir = copy_fixture("scout_tiny", "newline_name");
    let path = dir.join("model.safetensors");
    let mut e = read_entries(&path);
    let norm = e["model.norm.weight"].clone();
    e.insert("model.evil\nname".into(), norm);
    write_entries(&path, &e);
    let err = load_err(&dir).to_string();
    assert!(err.contains("model.evil\\nname"), "{err}");
    one_line(&run(&[dir.to_str().unwrap(), "--tokens", "1"]), 1, "model.evil\\nname");
}

#[test]
fn a_save_logits_path_that_cannot_be_written_fails_before_loading() {
    let dir = common::fixtures_root().join("scout_tiny");
    let tmp = scratch("save_path");
    for bad in [tmp.join("no/such/dir/logits.st"), tmp.to_path_buf()] {
        let out = run(&[dir.to_str().unwrap(), "--tokens", "1,2", "--save-logits", bad.to_str().unwrap()]);
        one_line(&out, 1, "cannot write");
        assert!(out.stdout.is_empty(), "work started: {}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn rope_theta_in_rope_parameters_counts_beside_rope_scaling() {
    let dir = copy_fixture("scout_tiny", "theta_beside_scaling");
    edit_config(&dir, |c| {
        let mut scaling = c["rope_parameters"].clone();
        scaling.as_object_mut().unwrap().remove("rope_theta");
        c.insert("rope_scaling".into(), scaling);
    });
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.config.rope_theta, 10000.0);
}
