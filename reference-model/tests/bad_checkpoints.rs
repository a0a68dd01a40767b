//! Broken checkpoints give one clear error each, never a panic and never logits.

mod common;

use common::{copy_fixture, edit_config, load_err, read_entries, write_entries};
use llama4_model::Error;
use std::path::Path;

const Q: &str = "model.layers.1.self_attn.q_proj.weight";

fn weights_path(dir: &Path) -> std::path::PathBuf {
    dir.join("model.safetensors")
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("scout_tiny", "missing");
    let mut e = read_entries(&weights_path(&dir));
    e.remove(Q).unwrap();
    write_entries(&weights_path(&dir), &e);
    let err = load_err(&dir);
    assert!(matches!(err, Error::Weight(_)), "{err}");
    assert!(err.to_string().contains(&format!("missing tensor `{Q}`")), "{err}");
}

#[test]
fn missing_expert_of_a_per_expert_export_is_named() {
    let dir = copy_fixture("unfused_f16", "missing_expert");
    let mut e = read_entries(&weights_path(&dir));
    let name = "model.layers.1.feed_forward.experts.2.up_proj.weight";
    e.remove(name).unwrap();
    write_entries(&weights_path(&dir), &e);
    let err = load_err(&dir);
    assert!(err.to_string().contains(name), "{err}");
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let dir = copy_fixture("scout_tiny", "shape");
    let mut e = read_entries(&weights_path(&dir));
    let (_, shape, _) = e.get_mut(Q).unwrap();
    shape.reverse(); // [64, 48] -> [48, 64]: same bytes, wrong layout
    write_entries(&weights_path(&dir), &e);
    let err = load_err(&dir).to_string();
    assert!(err.contains(Q) && err.contains("[48, 64]") && err.contains("[64, 48]"), "{err}");
}

#[test]
fn wrong_dtype_is_named() {
    let dir = copy_fixture("scout_tiny", "dtype");
    let mut e = read_entries(&weights_path(&dir));
    let (dtype, _, _) = e.get_mut(Q).unwrap();
    *dtype = safetensors::Dtype::I32; // same size as F32, so only the dtype is wrong
    write_entries(&weights_path(&dir), &e);
    let err = load_err(&dir);
    assert!(matches!(err, Error::Weight(_)), "{err}");
    assert!(err.to_string().contains("dtype I32") && err.to_string().contains(Q), "{err}");
}

#[test]
fn truncated_file_is_reported_as_truncated() {
    let dir = copy_fixture("maverick_tiny", "truncated");
    let path = weights_path(&dir);
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() - 1, bytes.len() / 2, 100, 7] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = load_err(&dir);
        assert!(matches!(err, Error::Format(_)), "{keep}: {err}");
        assert!(err.to_string().contains("truncated") || err.to_string().contains("too short"), "{keep}: {err}");
    }
}

#[test]
fn garbage_header_length_is_refused_without_allocating() {
    let dir = copy_fixture("maverick_tiny", "garbage");
    let path = weights_path(&dir);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert!(load_err(&dir).to_string().contains("header length"));
}

#[test]
fn missing_config_key_is_named() {
    for key in ["hidden_size", "num_hidden_layers", "vocab_size", "num_key_value_heads", "attention_chunk_size"] {
        let dir = copy_fixture("one_kv_head", &format!("nokey_{key}"));
        edit_config(&dir, |c| {
            c.remove(key).unwrap();
        });
        let err = load_err(&dir);
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(err.to_string().contains(&format!("missing required key `{key}`")), "{key}: {err}");
    }
}

#[test]
fn missing_rope_theta_in_both_layouts_is_named() {
    let dir = copy_fixture("one_kv_head", "notheta");
    edit_config(&dir, |c| {
        c.remove("rope_theta").unwrap();
    });
    assert!(load_err(&dir).to_string().contains("rope_theta"));
}

#[test]
fn missing_config_file_is_named() {
    let dir = copy_fixture("scout_tiny", "noconfig");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = load_err(&dir);
    assert!(matches!(err, Error::Io(_)) && err.to_string().contains("config.json"), "{err}");
}

#[test]
fn contradictory_configs_are_refused() {
    use serde_json::json;
    type Edit = fn(&mut serde_json::Map<String, serde_json::Value>);
    let cases: Vec<(&str, Edit)> = vec![
        ("contradicts", |c| {
            c.insert("rope_theta".into(), json!(20000.0));
        }),
        ("not a multiple", |c| {
            c.insert("num_key_value_heads".into(), json!(3));
        }),
        ("entries for 4 layers", |c| {
            c.insert("no_rope_layers".into(), json!([1, 1, 0]));
        }),
        ("num_hidden_layers is 4", |c| {
            c.insert("moe_layers".into(), json!([0, 4]));
        }),
        ("inverted", |c| {
            c["rope_parameters"]["low_freq_factor"] = json!(8.0);
        }),
        ("twice", |c| {
            c.insert("moe_layers".into(), json!([1, 1]));
        }),
    ];
    for (i, (want, f)) in cases.into_iter().enumerate() {
        let dir = copy_fixture("scout_tiny", &format!("contra{i}"));
        edit_config(&dir, f);
        let err = load_err(&dir);
        assert!(matches!(err, Error::Config(_)) && err.to_string().contains(want), "case {i}: {err}");
    }
}

#[test]
fn config_sizes_that_disagree_with_the_weights_are_shape_errors() {
    let dir = copy_fixture("maverick_tiny", "sizes");
    edit_config(&dir, |c| {
        c.insert("intermediate_size_mlp".into(), serde_json::json!(57));
    });
    let err = load_err(&dir).to_string();
    assert!(err.contains("model.layers.0.feed_forward.gate_proj.weight") && err.contains("[57, 64]"), "{err}");
}

#[test]
fn a_tensor_stored_with_and_without_the_prefix_is_ambiguous() {
    let dir = copy_fixture("scout_tiny", "twice");
    let mut e = read_entries(&weights_path(&dir));
    let q = e[Q].clone();
    e.insert(format!("language_model.{Q}"), q);
    write_entries(&weights_path(&dir), &e);
    assert!(load_err(&dir).to_string().contains("stored twice"));
}

#[test]
fn weights_the_config_has_no_place_for_are_an_error() {
    // Fewer layers in the config than on disk would silently drop the last layer.
    let dir = copy_fixture("scout_tiny", "extra_layer");
    edit_config(&dir, |c| {
        c.insert("num_hidden_layers".into(), serde_json::json!(3));
        c.insert("no_rope_layers".into(), serde_json::json!([]));
        c.remove("layer_types");
        c.remove("moe_layers");
    });
    let err = load_err(&dir).to_string();
    assert!(err.contains("model.layers.3.") && err.contains("no place for it"), "{err}");
    // Fewer experts in the config than in a per-expert export would silently drop an expert: the fused
    // layout catches this as a shape error, the per-expert one only through the unread check.
    let dir = copy_fixture("unfused_f16", "extra_expert");
    edit_config(&dir, |c| {
        c.insert("num_local_experts".into(), serde_json::json!(2));
    });
    let mut e = read_entries(&weights_path(&dir));
    // The router must shrink with the config, or its shape check would fire first.
    let (_, shape, bytes) = e.get_mut("model.layers.1.feed_forward.router.weight").unwrap();
    shape[0] = 2;
    bytes.truncate(2 * shape[1] * 2);
    write_entries(&weights_path(&dir), &e);
    let err = load_err(&dir).to_string();
    assert!(err.contains("experts.2.") && err.contains("no place for it"), "{err}");
}
