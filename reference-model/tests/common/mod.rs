//! Shared by the integration tests: the shipped fixtures and their golden data.
#![allow(dead_code)]

use llama4_model::logits_file;
use ndarray::Array2;
use std::path::{Path, PathBuf};

/// Tolerance of the issue: relative L2 error against transformers.
pub const TOL: f64 = 1e-4;

pub fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every fixture directory (each has a golden.json), sorted; at least the six the script writes.
pub fn fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .expect("reference-model/fixtures exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("golden.json").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 6, "expected the six fixtures of scripts/hf_fixtures.py, found {dirs:?}");
    dirs
}

pub struct Golden {
    pub ids: Vec<u32>,
    /// transformers' `generate` (greedy, 8 new tokens) from `greedy_prompt`.
    pub greedy_prompt: Vec<u32>,
    pub greedy_tokens: Vec<u32>,
    /// transformers' logits, [T, vocab].
    pub logits: Array2<f32>,
}

pub fn golden(dir: &Path) -> Golden {
    let text = std::fs::read_to_string(dir.join("golden.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = |k: &str| -> Vec<u32> { v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    let logits = logits_file::load(&dir.join("logits.safetensors"), "logits").unwrap();
    Golden {
        ids: list("input_ids"),
        greedy_prompt: list("greedy_prompt"),
        greedy_tokens: list("greedy_tokens"),
        logits,
    }
}

/// `||a - b|| / ||b||`, failing on anything non-finite.
pub fn rel_l2(a: &Array2<f32>, b: &Array2<f32>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    let a: Vec<f32> = a.iter().copied().collect();
    let b: Vec<f32> = b.iter().copied().collect();
    llama4_reference::check::rel_l2(&a, &b).unwrap()
}

/// A scratch directory in the system temp dir, removed when dropped.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An empty scratch directory, unique to this test process and `name`.
pub fn scratch(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("llama4-model-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// Copies a fixture's files into a fresh scratch directory, to be broken by a test.
pub fn copy_fixture(name: &str, to: &str) -> Scratch {
    let src = fixtures_root().join(name);
    let dst = scratch(to);
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

/// A safetensors file as (name → dtype, shape, bytes), read with the `safetensors` crate (a second opinion on
/// our own reader) so a test can change one entry and write it back.
pub type Entries = std::collections::BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>;

pub fn read_entries(path: &Path) -> Entries {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect()
}

pub fn write_entries(path: &Path, e: &Entries) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = e
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, &None, path).unwrap();
}

/// Edits `dir/config.json` (the text config, nested or not) in place.
pub fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let obj = v.as_object_mut().unwrap();
    let text = if obj.contains_key("text_config") { obj["text_config"].as_object_mut().unwrap() } else { obj };
    f(text);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}
