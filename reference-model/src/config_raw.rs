//! config.json as written, through `serde` derive: every key the model reads, typed, each optional (required
//! keys are checked by [`crate::config`], which knows when a key is needed). A value of the wrong type is an
//! error naming its path ("text_config.hidden_size") and what it holds, through `serde_path_to_error`.
//! Integers written as 8192.0 are accepted, as Python would; null counts as absent; unknown keys are ignored.

use crate::error::Error;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The text model's keys (top level, or under `text_config`).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct RawText {
    pub vocab_size: Option<Int>,
    pub hidden_size: Option<Int>,
    pub num_hidden_layers: Option<Int>,
    pub num_attention_heads: Option<Int>,
    pub num_key_value_heads: Option<Int>,
    /// Absent: 128; null: hidden_size / num_attention_heads.
    #[serde(deserialize_with = "nullable")]
    pub head_dim: Option<Option<Int>>,
    pub hidden_act: Option<Str>,
    pub attention_bias: Option<Bool>,
    pub num_experts_per_tok: Option<Int>,
    pub moe_layers: Option<Ints>,
    pub interleave_moe_layer_step: Option<Int>,
    pub no_rope_layers: Option<Ints>,
    pub no_rope_layer_interval: Option<Int>,
    pub layer_types: Option<Vec<Str>>,
    pub intermediate_size: Option<Int>,
    pub intermediate_size_mlp: Option<Int>,
    pub num_local_experts: Option<Int>,
    pub attention_chunk_size: Option<Int>,
    pub rope_theta: Option<Num>,
    pub rope_scaling: Option<RawRope>,
    pub rope_parameters: Option<RawRope>,
    pub floor_scale: Option<Num>,
    pub attn_temperature_tuning: Option<Flag>,
    pub rms_norm_eps: Option<Num>,
    pub use_qk_norm: Option<Bool>,
    pub attn_scale: Option<Num>,
    pub tie_word_embeddings: Option<Bool>,
}

/// `rope_scaling` (published checkpoints) or `rope_parameters` (transformers 5.x).
#[derive(Deserialize, Default, PartialEq)]
#[serde(default, expecting = "an object or null")]
pub(crate) struct RawRope {
    pub rope_type: Option<Str>,
    /// The older spelling of `rope_type`.
    #[serde(rename = "type")]
    pub type_: Option<Str>,
    pub rope_theta: Option<Num>,
    pub factor: Option<Num>,
    pub low_freq_factor: Option<Num>,
    pub high_freq_factor: Option<Num>,
    pub original_max_position_embeddings: Option<Num>,
    pub partial_rotary_factor: Option<Num>,
}

/// Reads the text object `v` (reported as `name`) into [`RawText`].
pub(crate) fn read(v: &Value, name: &str) -> Result<RawText, Error> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let msg = e.inner().to_string();
        let sep = if msg.starts_with("must be") { " " } else { ": " };
        Error::Config(format!("{name}: `{}`{sep}{msg}", e.path()))
    })
}

fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Int>>, D::Error> {
    Option::<Int>::deserialize(d).map(Some)
}

/// "must be {want}, found {got}", with a long value cut short so the error stays readable.
fn wrong<E: serde::de::Error>(want: &str, got: &Value) -> E {
    let mut shown = got.to_string();
    if shown.chars().count() > 40 {
        shown = format!("{}...", shown.chars().take(40).collect::<String>());
    }
    E::custom(format!("must be {want}, found {shown}"))
}

/// A non-negative integer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Int(pub usize);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        as_usize(&v).map(Int).ok_or_else(|| wrong("a non-negative integer", &v))
    }
}

/// A list of non-negative integers (bools count as 0/1, as Python would read them).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Ints(pub Vec<usize>);

impl<'de> Deserialize<'de> for Ints {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let items = v.as_array().ok_or_else(|| wrong("a list of integers", &v))?;
        let one = |x: &Value| match x {
            Value::Bool(b) => Some(*b as usize),
            _ => as_usize(x),
        };
        items
            .iter()
            .map(one)
            .collect::<Option<Vec<_>>>()
            .map(Ints)
            .ok_or_else(|| wrong("a list of non-negative integers", &v))
    }
}

/// A finite number within f32's range, kept as written (f64) so that two spellings can be compared.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Num(pub f64);

impl Num {
    pub fn f32(self) -> f32 {
        self.0 as f32
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        match v.as_f64() {
            Some(x) if x.is_finite() && x.abs() <= f32::MAX as f64 => Ok(Num(x)),
            _ => Err(wrong("a finite number", &v)),
        }
    }
}

/// true or false.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bool(pub bool);

impl<'de> Deserialize<'de> for Bool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(Bool(b)),
            v => Err(wrong("true or false", &v)),
        }
    }
}

/// A flag stored as a bool or as an integer (published Llama 4 configs write `attn_temperature_tuning: 4`);
/// any non-zero integer is on, as Python's truthiness has it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(Flag(b)),
            Value::Number(n) if n.as_f64().is_some_and(|x| x.fract() == 0.0) => Ok(Flag(n.as_f64() != Some(0.0))),
            v => Err(wrong("a bool or an integer", &v)),
        }
    }
}

/// A string.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Str(pub String);

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Str(s)),
            v => Err(wrong("a string", &v)),
        }
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    if let Some(n) = v.as_u64() {
        return usize::try_from(n).ok();
    }
    // 2^53 bounds the integers an f64 holds exactly; beyond that "integral" means nothing.
    match v.as_f64() {
        Some(x) if x >= 0.0 && x.fract() == 0.0 && x < 9.007_199_254_740_992e15 => Some(x as usize),
        _ => None,
    }
}
