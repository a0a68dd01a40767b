//! The fixtures must be able to fail: each feature they are meant to exercise (temperature tuning, QK norm,
//! the chunk size, the llama3 smooth band, NoPE layers) is switched off or changed in a copy of the config,
//! and the logits must then miss transformers' by far more than the tolerance. A fixture in which a feature
//! never fires would let a bug in that feature through.

mod common;

use common::{copy_fixture, edit_config, golden, rel_l2, TOL};
use llama4_model::cpu::Cpu;
use llama4_model::model::{Logits, Model};
use serde_json::{json, Map, Value};

type Edit = fn(&mut Map<String, Value>);

fn assert_detected(fixture: &str, what: &str, edit: Edit) {
    let dir = copy_fixture(fixture, &format!("cov_{fixture}_{}", what.replace(' ', "_")));
    edit_config(&dir, edit);
    let g = golden(&dir);
    let model = Model::load(&dir, Cpu).unwrap();
    let mut cache = model.new_cache().unwrap();
    let err = rel_l2(&model.forward(&mut cache, &g.ids, Logits::All).unwrap(), &g.logits);
    assert!(err > 10.0 * TOL, "{fixture}: changing {what} moves the logits by only {err:.2e}");
}

#[test]
fn scout_fixture_exercises_every_attention_feature() {
    let cases: [(&str, Edit); 6] = [
        ("temperature off", |c| {
            c.insert("attn_temperature_tuning".into(), json!(false));
        }),
        ("floor_scale beyond the sequence", |c| {
            c.insert("floor_scale".into(), json!(64));
        }),
        ("qk norm off", |c| {
            c.insert("use_qk_norm".into(), json!(false));
        }),
        ("chunk 8 instead of 4", |c| {
            c.insert("attention_chunk_size".into(), json!(8));
        }),
        ("smooth band moved", |c| {
            c["rope_parameters"]["high_freq_factor"] = json!(2.0);
        }),
        ("no llama3 scaling", |c| {
            c.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": 10000.0}));
        }),
    ];
    for (what, edit) in cases {
        assert_detected("scout_tiny", what, edit);
    }
}

#[test]
fn one_kv_head_fixture_exercises_its_explicit_lists() {
    let cases: [(&str, Edit); 3] = [
        ("chunk 4 instead of 3", |c| {
            c.insert("attention_chunk_size".into(), json!(4));
        }),
        ("layer 1 with RoPE", |c| {
            c.insert("no_rope_layers".into(), json!([1, 1, 1]));
        }),
        ("int flag 0", |c| {
            c.insert("attn_temperature_tuning".into(), json!(0));
        }),
    ];
    for (what, edit) in cases {
        assert_detected("one_kv_head", what, edit);
    }
}

#[test]
fn maverick_fixture_exercises_nope_layers_and_its_chunk() {
    let cases: [(&str, Edit); 2] = [
        ("no NoPE layers", |c| {
            c.insert("no_rope_layers".into(), json!([1, 1, 1, 1]));
            c.remove("layer_types");
        }),
        ("chunk 6 instead of 5", |c| {
            c.insert("attention_chunk_size".into(), json!(6));
        }),
    ];
    for (what, edit) in cases {
        assert_detected("maverick_tiny", what, edit);
    }
}
