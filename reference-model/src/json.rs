//! Typed reads of one JSON object with errors that name the key and where it lives ("text_config.hidden_size").
//! JSON numbers written as 8192.0 are accepted where an integer is meant, as Python would.

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// A JSON object and the name it is reported under.
#[derive(Clone, Copy)]
pub(crate) struct Obj<'a> {
    map: &'a Map<String, Value>,
    name: &'a str,
}

impl<'a> Obj<'a> {
    pub fn new(v: &'a Value, name: &'a str) -> Result<Self> {
        match v {
            Value::Object(map) => Ok(Obj { map, name }),
            _ => Err(Error::Config(format!("{name} is not a JSON object"))),
        }
    }

    pub fn name(&self) -> &'a str {
        self.name
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    pub fn err(&self, msg: String) -> Error {
        Error::Config(format!("{}: {msg}", self.name))
    }

    fn wrong(&self, key: &str, want: &str, got: &Value) -> Error {
        let mut shown = got.to_string();
        if shown.len() > 40 {
            // A huge value would make the one-line error unreadable.
            shown = format!("{}...", shown.chars().take(40).collect::<String>());
        }
        self.err(format!("`{key}` must be {want}, found {shown}"))
    }

    /// Present and not null.
    fn present(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn usize_req(&self, key: &str) -> Result<usize> {
        let v = self.present(key).ok_or_else(|| self.err(format!("missing required key `{key}`")))?;
        as_usize(v).ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.present(key) {
            None => Ok(default),
            Some(_) => self.usize_req(key),
        }
    }

    pub fn f32_req(&self, key: &str) -> Result<f32> {
        let v = self.present(key).ok_or_else(|| self.err(format!("missing required key `{key}`")))?;
        match v.as_f64() {
            Some(x) if x.is_finite() && x.abs() <= f32::MAX as f64 => Ok(x as f32),
            _ => Err(self.wrong(key, "a finite number", v)),
        }
    }

    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.present(key) {
            None => Ok(default),
            Some(_) => self.f32_req(key),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.present(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.wrong(key, "true or false", v)),
        }
    }

    /// A flag stored as a bool or as an integer (published Llama 4 configs write `attn_temperature_tuning: 4`);
    /// any non-zero integer is on, as Python's truthiness has it.
    pub fn flag_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.present(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v @ Value::Number(n)) => match n.as_f64() {
                Some(x) if x.fract() == 0.0 => Ok(x != 0.0),
                _ => Err(self.wrong(key, "a bool or an integer", v)),
            },
            Some(v) => Err(self.wrong(key, "a bool or an integer", v)),
        }
    }

    pub fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.present(key) {
            None => Ok(default),
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    /// A list of non-negative integers (bools count as 0/1, as Python would read them).
    pub fn usize_list(&self, key: &str) -> Result<Vec<usize>> {
        let v = self.present(key).ok_or_else(|| self.err(format!("missing required key `{key}`")))?;
        let items = v.as_array().ok_or_else(|| self.wrong(key, "a list of integers", v))?;
        items
            .iter()
            .map(|x| match x {
                Value::Bool(b) => Ok(*b as usize),
                _ => as_usize(x).ok_or_else(|| self.wrong(key, "a list of non-negative integers", v)),
            })
            .collect()
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
