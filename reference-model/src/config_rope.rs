//! The RoPE part of config.json, in either layout:
//! - published checkpoints: `rope_theta` and `rope_scaling` (null, or {rope_type | type: "llama3", factor,
//!   low_freq_factor, high_freq_factor, original_max_position_embeddings});
//! - transformers 5.x: `rope_parameters` holding `rope_type`, `rope_theta` and the same scaling fields.
//!
//! transformers lets `rope_scaling` win over `rope_parameters`, and a `rope_theta` inside either win over the
//! top-level one; a checkpoint that states two different values is ambiguous, so that is an error here.

use crate::config::{Keys, MAX_POSITION};
use crate::config_raw::{Num, RawRope, Str};
use crate::error::{Error, Result};
use llama4_reference::rope::{inv_freq, Llama3Scaling};

/// One of the two RoPE objects and its key.
#[derive(Clone, Copy)]
struct Rope<'a> {
    raw: &'a RawRope,
    name: &'static str,
}

impl Rope<'_> {
    fn err(&self, msg: String) -> Error {
        Error::Config(format!("{}: {msg}", self.name))
    }

    fn req(&self, key: &str, x: Option<Num>) -> Result<f32> {
        x.map(Num::f32).ok_or_else(|| self.err(format!("missing required key `{key}`")))
    }

    /// The fields two objects may both state, by key, shown as written.
    fn fields(&self) -> [(&'static str, Option<String>); 6] {
        let n = |x: Option<Num>| x.map(|v| format!("{:?}", v.0));
        let r = self.raw;
        [
            ("factor", n(r.factor)),
            ("low_freq_factor", n(r.low_freq_factor)),
            ("high_freq_factor", n(r.high_freq_factor)),
            ("original_max_position_embeddings", n(r.original_max_position_embeddings)),
            ("rope_theta", n(r.rope_theta)),
            ("rope_type", r.rope_type.as_ref().map(|s| format!("{:?}", s.0))),
        ]
    }
}

/// An object that is absent, null or empty (transformers treats an empty dict as "no scaling") is none.
fn sub<'a>(raw: &'a Option<RawRope>, name: &'static str) -> Option<Rope<'a>> {
    raw.as_ref().filter(|r| **r != RawRope::default()).map(|raw| Rope { raw, name })
}

/// `(theta, llama3 scaling or None)`.
pub(crate) fn rope(c: &Keys) -> Result<(f32, Option<Llama3Scaling>)> {
    let scaling = sub(&c.raw.rope_scaling, "rope_scaling");
    let params = sub(&c.raw.rope_parameters, "rope_parameters");
    if let (Some(s), Some(p)) = (scaling, params) {
        for ((key, a), (_, b)) in s.fields().into_iter().zip(p.fields()) {
            if let (Some(a), Some(b)) = (a, b) {
                if a != b {
                    return Err(c.err(format!("rope_scaling.{key} = {a} contradicts rope_parameters.{key} = {b}")));
                }
            }
        }
    }
    // theta from the first place that states it; any other place that states it must agree.
    let stated = [scaling, params]
        .into_iter()
        .flatten()
        .filter_map(|m| m.raw.rope_theta.map(|t| (format!("{}.rope_theta", m.name), t)))
        .chain(c.raw.rope_theta.map(|t| ("rope_theta".to_string(), t)));
    let mut theta: Option<(String, Num)> = None;
    for (key, t) in stated {
        match &theta {
            None => theta = Some((key, t)),
            Some((first, t0)) if t0.0 != t.0 => {
                return Err(c.err(format!("{key} = {:?} contradicts {first} = {:?}", t.0, t0.0)))
            }
            Some(_) => {}
        }
    }
    let Some((_, theta)) = theta else {
        return Err(c.err("missing required key `rope_theta` (or `rope_parameters.rope_theta`)".into()));
    };
    let theta = theta.f32();
    if theta <= 1.0 {
        return Err(c.err(format!("rope_theta {theta} must be greater than 1")));
    }
    // The object that carries the scaling fields, as transformers reads it.
    let Some(m) = scaling.or(params) else {
        return Ok((theta, None));
    };
    if m.raw.partial_rotary_factor.is_some_and(|f| f.0 != 1.0) {
        return Err(
            m.err("partial_rotary_factor other than 1 is not supported (Llama 4 rotates all of head_dim)".into())
        );
    }
    let kind = m.raw.rope_type.as_ref().or(m.raw.type_.as_ref()).map_or("default", |s: &Str| s.0.as_str());
    match kind {
        "default" => Ok((theta, None)),
        "llama3" => Ok((theta, Some(llama3(m)?))),
        other => Err(m.err(format!("rope_type {other:?} is not supported (Llama 4 uses \"llama3\" or none)"))),
    }
}

fn llama3(m: Rope) -> Result<Llama3Scaling> {
    let r = m.raw;
    let s = Llama3Scaling {
        factor: m.req("factor", r.factor)?,
        low_freq_factor: m.req("low_freq_factor", r.low_freq_factor)?,
        high_freq_factor: m.req("high_freq_factor", r.high_freq_factor)?,
        original_max_position_embeddings: m
            .req("original_max_position_embeddings", r.original_max_position_embeddings)?,
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

/// Values that pass every check above can still make RoPE's angles (position x inverse frequency) infinite
/// or NaN, say a scaling factor of 1e-45: refused here, naming the values, rather than computed into NaN logits.
pub(crate) fn check_angles(c: &Keys, theta: f32, head_dim: usize, scaling: Option<Llama3Scaling>) -> Result<()> {
    let freqs = inv_freq(theta, head_dim, scaling);
    let bad = freqs.iter().enumerate().find(|(_, &f)| !(f.is_finite() && (f * MAX_POSITION as f32).is_finite()));
    match bad {
        None => Ok(()),
        Some((j, f)) => {
            let sc = scaling.map_or("no scaling".to_string(), |s| {
                format!(
                    "llama3 factor {:?}, low_freq_factor {:?}, high_freq_factor {:?}, original_max_position_embeddings {:?}",
                    s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings
                )
            });
            Err(c.err(format!(
                "RoPE with rope_theta {theta:?} and {sc} gives pair {j} of head_dim {head_dim} the inverse frequency \
                 {f}: its angles up to position {MAX_POSITION} would not be finite"
            )))
        }
    }
}
