//! The RoPE part of config.json, in either layout:
//! - published checkpoints: `rope_theta` and `rope_scaling` (null, or {rope_type | type: "llama3", factor,
//!   low_freq_factor, high_freq_factor, original_max_position_embeddings});
//! - transformers 5.x: `rope_parameters` holding `rope_type`, `rope_theta` and the same scaling fields.
//!
//! transformers lets `rope_scaling` win over `rope_parameters` and `rope_parameters.rope_theta` win over
//! `rope_theta`; a checkpoint that states two different values is ambiguous, so that is an error here.

use crate::error::Result;
use crate::json::Obj;
use llama4_reference::rope::Llama3Scaling;
use serde_json::Value;

const SCALING_KEYS: [&str; 5] =
    ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings", "rope_theta"];

/// `(theta, llama3 scaling or None)`.
pub(crate) fn rope(c: &Obj) -> Result<(f32, Option<Llama3Scaling>)> {
    let scaling = sub(c, "rope_scaling")?;
    let params = sub(c, "rope_parameters")?;
    if let (Some(s), Some(p)) = (scaling, params) {
        for key in SCALING_KEYS.iter().copied().chain(["rope_type"]) {
            if let (Some(a), Some(b)) = (s.get(key), p.get(key)) {
                if !same(a, b) {
                    return Err(c.err(format!("rope_scaling.{key} = {a} contradicts rope_parameters.{key} = {b}")));
                }
            }
        }
    }
    // The object that carries the scaling fields, as transformers reads it.
    let main = scaling.or(params);

    let top_theta = c.get("rope_theta").filter(|v| !v.is_null());
    let inner = main.filter(|m| m.get("rope_theta").is_some_and(|v| !v.is_null()));
    let theta = match (inner, top_theta) {
        (Some(m), Some(b)) if m.get("rope_theta").is_some_and(|a| !same(a, b)) => {
            return Err(c.err(format!("rope_theta = {b} contradicts {}.rope_theta", m.name())))
        }
        (Some(m), _) => m.f32_req("rope_theta")?,
        (None, Some(_)) => c.f32_req("rope_theta")?,
        (None, None) => return Err(c.err("missing required key `rope_theta` (or `rope_parameters.rope_theta`)".into())),
    };
    if theta <= 1.0 {
        return Err(c.err(format!("rope_theta {theta} must be greater than 1")));
    }
    let Some(m) = main else {
        return Ok((theta, None));
    };
    if m.f32_or("partial_rotary_factor", 1.0)? != 1.0 {
        return Err(
            m.err("partial_rotary_factor other than 1 is not supported (Llama 4 rotates all of head_dim)".into())
        );
    }
    let kind = match m.get("rope_type").filter(|v| !v.is_null()) {
        Some(_) => m.str_or("rope_type", "default")?,
        None => m.str_or("type", "default")?,
    };
    match kind {
        "default" => Ok((theta, None)),
        "llama3" => Ok((theta, Some(llama3(&m)?))),
        other => Err(m.err(format!("rope_type \"{other}\" is not supported (Llama 4 uses \"llama3\" or none)"))),
    }
}

fn sub<'a>(c: &Obj<'a>, key: &'a str) -> Result<Option<Obj<'a>>> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        // transformers treats an empty dict as "no scaling".
        Some(Value::Object(m)) if m.is_empty() => Ok(None),
        Some(v) => Obj::new(v, key).map(Some).map_err(|_| c.err(format!("`{key}` must be an object or null"))),
    }
}

/// Numbers compare by value (8192 equals 8192.0), everything else structurally.
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn llama3(m: &Obj) -> Result<Llama3Scaling> {
    let s = Llama3Scaling {
        factor: m.f32_req("factor")?,
        low_freq_factor: m.f32_req("low_freq_factor")?,
        high_freq_factor: m.f32_req("high_freq_factor")?,
        original_max_position_embeddings: m.f32_req("original_max_position_embeddings")?,
    };
    let all = [s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings];
    if all.iter().any(|&x| x <= 0.0) {
        return Err(m.err(
            "llama3 factor, low_freq_factor, high_freq_factor and original_max_position_embeddings \
                          must be positive"
                .into(),
        ));
    }
    if s.low_freq_factor > s.high_freq_factor {
        return Err(m.err(format!(
            "low_freq_factor {} exceeds high_freq_factor {}: the smooth band would be inverted",
            s.low_freq_factor, s.high_freq_factor
        )));
    }
    Ok(s)
}
