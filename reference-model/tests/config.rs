//! config.json parsing: both layouts, nesting, the int-or-bool flag, explicit and derived layer lists,
//! defaults, and clear errors.

use llama4_contract::{LayerKind, Llama3Scaling};
use llama4_model::config::{Ffn, Mask, TextConfig};
use llama4_model::Error;
use serde_json::{json, Value};

/// A minimal transformers 5.x style text config with 4 layers.
fn base() -> Value {
    json!({
        "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 16, "intermediate_size_mlp": 24,
        "num_local_experts": 3, "attention_chunk_size": 5,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    })
}

fn parse(v: &Value) -> Result<TextConfig, Error> {
    TextConfig::from_json(v)
}

fn with(mut v: Value, key: &str, val: Value) -> Value {
    v[key] = val;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

fn err(v: &Value) -> String {
    let e = parse(v).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    e.to_string()
}

#[test]
fn both_rope_layouts_mean_the_same() {
    let new = parse(&base()).unwrap();
    let mut old = without(base(), "rope_parameters");
    old["rope_theta"] = json!(10000);
    old["rope_scaling"] = json!({"type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
                                 "original_max_position_embeddings": 64});
    assert_eq!(parse(&old).unwrap(), new);
    let sc = new.rope_scaling.unwrap();
    assert_eq!(
        sc,
        Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0
        }
    );
    // Published Maverick: no scaling at all.
    let plain = with(without(base(), "rope_parameters"), "rope_theta", json!(500000.0));
    let plain = with(plain, "rope_scaling", Value::Null);
    let c = parse(&plain).unwrap();
    assert_eq!((c.rope_theta, c.rope_scaling), (500000.0, None));
    let default = with(base(), "rope_parameters", json!({"rope_type": "default", "rope_theta": 3.0e5}));
    assert_eq!(parse(&default).unwrap().rope_scaling, None);
    // Both layouts at once, agreeing, are fine.
    assert_eq!(parse(&with(base(), "rope_theta", json!(10000.0))).unwrap(), new);
}

#[test]
fn multimodal_configs_nest_the_text_config() {
    let mm = json!({"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
                    "vision_config": {"hidden_size": 1408}, "text_config": base()});
    assert_eq!(parse(&mm).unwrap(), parse(&base()).unwrap());
    let bad = json!({"text_config": 3});
    assert!(err(&bad).contains("text_config is not a JSON object"));
}

#[test]
fn temperature_flag_is_bool_or_int() {
    for (v, want) in
        [(json!(4), true), (json!(0), false), (json!(true), true), (json!(false), false), (json!(1.0), true)]
    {
        assert_eq!(
            parse(&with(base(), "attn_temperature_tuning", v.clone())).unwrap().attn_temperature_tuning,
            want,
            "{v}"
        );
    }
    assert!(parse(&base()).unwrap().attn_temperature_tuning, "transformers defaults it on");
    assert!(err(&with(base(), "attn_temperature_tuning", json!("yes"))).contains("attn_temperature_tuning"));
    assert!(err(&with(base(), "attn_temperature_tuning", json!(0.5))).contains("attn_temperature_tuning"));
}

#[test]
fn moe_layers_explicit_or_derived() {
    let c = parse(&base()).unwrap();
    assert_eq!(c.ffn, [Ffn::Moe; 4], "step 1 (default): every layer MoE");
    let c = parse(&with(base(), "interleave_moe_layer_step", json!(2))).unwrap();
    assert_eq!(c.ffn, [Ffn::Dense, Ffn::Moe, Ffn::Dense, Ffn::Moe]);
    let c = parse(&with(base(), "interleave_moe_layer_step", json!(3))).unwrap();
    assert_eq!(c.ffn, [Ffn::Dense, Ffn::Dense, Ffn::Moe, Ffn::Dense]);
    // An explicit list wins over the step, as in transformers.
    let v = with(with(base(), "interleave_moe_layer_step", json!(1)), "moe_layers", json!([0, 3]));
    assert_eq!(parse(&v).unwrap().ffn, [Ffn::Moe, Ffn::Dense, Ffn::Dense, Ffn::Moe]);
    let none = with(base(), "moe_layers", json!([]));
    let c = parse(&without(without(none, "intermediate_size"), "num_local_experts")).unwrap();
    assert_eq!((c.ffn, c.num_local_experts), (vec![Ffn::Dense; 4], 0));
    assert!(err(&with(base(), "interleave_moe_layer_step", json!(0))).contains("interleave_moe_layer_step is 0"));
}

#[test]
fn no_rope_layers_explicit_or_derived() {
    let c = parse(&base()).unwrap();
    assert_eq!(c.uses_rope, [true, true, true, false], "interval 4: layer 3 is NoPE");
    let (ch, full) = (Mask::Chunked { chunk: 5 }, Mask::Causal);
    assert_eq!(c.masks, [ch, ch, ch, full]);
    let c = parse(&with(base(), "no_rope_layer_interval", json!(2))).unwrap();
    assert_eq!(c.uses_rope, [true, false, true, false]);
    // 1 means "uses RoPE" despite the name.
    let c = parse(&with(base(), "no_rope_layers", json!([0, 1, 1, 0]))).unwrap();
    assert_eq!(c.uses_rope, [false, true, true, false]);
    assert_eq!(c.masks, [full, ch, ch, full]);
    let c = parse(&with(base(), "no_rope_layers", json!([]))).unwrap();
    assert_eq!(c.uses_rope, [true, true, true, false], "empty list: derived");
    assert!(err(&with(base(), "no_rope_layers", json!([1, 2, 1, 1]))).contains("must be 0 or 1"));
}

#[test]
fn layer_types_decide_the_mask_when_present() {
    let v = with(
        base(),
        "layer_types",
        json!(["full_attention", "chunked_attention", "chunked_attention", "full_attention"]),
    );
    let c = parse(&v).unwrap();
    assert_eq!(c.masks[..2], [Mask::Causal, Mask::Chunked { chunk: 5 }]);
    assert!(c.uses_rope[0], "RoPE still follows no_rope_layers");
    // With no chunked layer the chunk size is not needed, and no mask carries one.
    let full = with(without(base(), "attention_chunk_size"), "layer_types", json!(vec!["full_attention"; 4]));
    let c = parse(&full).unwrap();
    assert_eq!((c.masks, c.attention_chunk_size), (vec![Mask::Causal; 4], None));
    assert!(
        err(&with(base(), "layer_types", json!(["sliding", "sliding", "sliding", "sliding"]))).contains("layer_types")
    );
    assert!(err(&with(base(), "layer_types", json!(["full_attention"]))).contains("1 entries for 4 layers"));
}

#[test]
fn defaults_follow_transformers() {
    let c = parse(&without(base(), "head_dim")).unwrap();
    assert_eq!(c.head_dim, 128, "transformers' default head_dim");
    assert_eq!(parse(&with(base(), "head_dim", Value::Null)).unwrap().head_dim, 8, "null: hidden / heads");
    let c = parse(&base()).unwrap();
    assert_eq!((c.rms_norm_eps, c.floor_scale, c.attn_scale), (1e-5, 8192.0, 0.1));
    assert!(c.use_qk_norm && !c.tie_word_embeddings);
}

#[test]
fn unknown_keys_are_ignored() {
    let v = with(with(base(), "some_future_key", json!({"x": [1, 2]})), "quantization_config", json!({}));
    assert_eq!(parse(&v).unwrap(), parse(&base()).unwrap());
}

#[test]
fn missing_required_keys_are_named() {
    for key in [
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "num_local_experts",
        "attention_chunk_size",
    ] {
        assert!(err(&without(base(), key)).contains(&format!("missing required key `{key}`")), "{key}");
    }
    // intermediate_size_mlp only matters once a layer is dense.
    assert!(parse(&without(base(), "intermediate_size_mlp")).is_ok());
    let dense = with(without(base(), "intermediate_size_mlp"), "interleave_moe_layer_step", json!(2));
    assert!(err(&dense).contains("missing required key `intermediate_size_mlp`"));
    assert!(err(&without(base(), "rope_parameters")).contains("rope_theta"));
    let e = err(&json!({"text_config": without(base(), "hidden_size")}));
    assert!(e.contains("text_config: missing required key `hidden_size`"), "{e}");
}

#[test]
fn wrong_types_and_values_are_named() {
    assert!(err(&with(base(), "hidden_size", json!("32"))).contains("`hidden_size` must be a non-negative integer"));
    assert!(err(&with(base(), "hidden_size", json!(-32))).contains("hidden_size"));
    assert!(err(&with(base(), "hidden_size", json!(0))).contains("`hidden_size` is 0"));
    assert!(err(&with(base(), "num_hidden_layers", json!(1u64 << 40))).contains("num_hidden_layers"));
    assert!(err(&with(base(), "head_dim", json!(7))).contains("odd"));
    assert!(err(&with(base(), "attention_chunk_size", json!(0))).contains("attention_chunk_size"));
    assert!(err(&with(base(), "num_experts_per_tok", json!(0))).contains("num_experts_per_tok"));
    assert!(err(&with(base(), "num_experts_per_tok", json!(4))).contains("between 1 and num_local_experts (3)"));
    assert_eq!(parse(&with(base(), "num_experts_per_tok", json!(2))).unwrap().num_experts_per_tok, 2);
    assert!(err(&with(base(), "hidden_act", json!("gelu"))).contains("hidden_act"));
    assert!(err(&with(base(), "attention_bias", json!(true))).contains("attention_bias"));
    assert!(err(&json!([1, 2])).contains("not a JSON object"));
    assert!(TextConfig::parse("{").unwrap_err().to_string().contains("not JSON"));
    let yarn = with(base(), "rope_parameters", json!({"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}));
    assert!(err(&yarn).contains("\"yarn\" is not supported"));
    let partial = json!({"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0});
    assert!(err(&with(base(), "rope_parameters", partial)).contains("missing required key `low_freq_factor`"));
}

#[test]
fn contradictions_are_named() {
    assert!(err(&with(base(), "rope_theta", json!(500000.0))).contains("contradicts"));
    let mut both = base();
    both["rope_scaling"] = json!({"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    assert!(err(&both).contains("rope_scaling.factor = 16.0 contradicts rope_parameters.factor = 8.0"));
    assert!(err(&with(base(), "num_key_value_heads", json!(3))).contains("not a multiple"));
    assert!(err(&with(base(), "moe_layers", json!([5]))).contains("layer 5"));
    assert!(err(&with(base(), "no_rope_layers", json!([1, 1]))).contains("2 entries for 4 layers"));
    let mut inv = base();
    inv["rope_parameters"]["low_freq_factor"] = json!(5.0);
    assert!(err(&inv).contains("inverted"));
}

#[test]
fn equal_low_and_high_factors_are_scouts_setting() {
    let mut v = base();
    v["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                                  "original_max_position_embeddings": 8192});
    let c = parse(&v).unwrap();
    match c.layer_kind(0) {
        LayerKind::Rope { inv_freq, .. } => {
            assert!(inv_freq.iter().all(|f| f.is_finite()))
        }
        k => panic!("{k:?}"),
    }
}
