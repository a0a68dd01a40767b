//! Shared by the integration tests: the shipped fixtures and their golden data.
#![allow(dead_code)]

use llama4_model::logits_file;
use ndarray::Array2;
use std::path::{Path, PathBuf};

/// Tolerance of the issue: relative L2 error against transformers.
pub const TOL: f64 = 1e-4;

/// `reference-model/fixtures`, or `L4K_FIXTURES` (the staged GPU bundle runs the test binaries elsewhere).
pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("L4K_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    }
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

/// The fixtures the GPU kernels can run (head_dim 64 / 128, GEMM-friendly widths): `gpu_*`.
pub fn gpu_fixtures() -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = fixtures()
        .into_iter()
        .filter(|d| d.file_name().is_some_and(|n| n.to_string_lossy().starts_with("gpu_")))
        .collect();
    assert!(dirs.len() >= 3, "expected the gpu_* fixtures of scripts/hf_fixtures.py, found {dirs:?}");
    dirs
}

/// One sequence of a batching test: `ids[..prompt]` prefilled in pieces of at most `piece` tokens, the rest
/// fed one token at a time (fixed tokens, not sampled, so every run sees the same inputs), joining the engine
/// at step `start`.
#[derive(Clone, Debug)]
pub struct Job {
    pub ids: Vec<u32>,
    pub prompt: usize,
    pub piece: usize,
    pub start: usize,
}

/// Jobs of different lengths from `ids`: mixed prefill and decode in most steps, prompts crossing chunk
/// boundaries, and more jobs than `max_seqs` so that later ones reuse the blocks of freed ones.
pub fn jobs(ids: &[u32], n: usize) -> Vec<Job> {
    (0..n)
        .map(|j| {
            let len = (ids.len() / 2 + j * 37 % ids.len().max(1)).clamp(2, ids.len());
            let prompt = (len * (j % 3 + 1) / 4).max(1);
            // Shift the ids so that sequences differ.
            let ids: Vec<u32> = (0..len).map(|t| ids[(t + 7 * j) % ids.len()]).collect();
            Job { ids, prompt, piece: [5, 64, 17, 1000][j % 4], start: (j * 3) % 11 }
        })
        .collect()
}

/// Runs every job alone in one forward pass: logits of every position.
pub fn alone<B: llama4_model::backend::Backend>(model: &llama4_model::model::Model<B>, job: &Job) -> Array2<f32> {
    let limits = llama4_model::backend::Limits {
        max_tokens: job.ids.len(),
        max_seqs: 1,
        max_context: job.ids.len(),
        max_logit_rows: job.ids.len(),
        ..Default::default()
    };
    let mut e = llama4_model::engine::Engine::new(model, limits).unwrap();
    e.forward(&job.ids, llama4_model::engine::Logits::All).unwrap()
}

/// Runs the jobs together through `engine` (at most its max_seqs at once, at most its max_tokens per step);
/// returns each job's logits of every position, and how many steps mixed prefill with decode.
pub fn together<B: llama4_model::backend::Backend>(
    engine: &mut llama4_model::engine::Engine<'_, B>,
    jobs: &[Job],
) -> (Vec<Array2<f32>>, usize) {
    use llama4_model::engine::{Logits, SeqStep};
    let l = engine.limits();
    let mut rows: Vec<Vec<Array2<f32>>> = vec![Vec::new(); jobs.len()];
    let mut pos = vec![0usize; jobs.len()];
    let mut seq = vec![None; jobs.len()];
    let (mut step, mut mixed) = (0, 0);
    while pos.iter().zip(jobs).any(|(&p, j)| p < j.ids.len()) {
        let mut batch = Vec::new();
        let mut who = Vec::new();
        let mut budget = l.max_tokens;
        for (j, job) in jobs.iter().enumerate() {
            let live = seq.iter().filter(|s| s.is_some()).count();
            if step < job.start || pos[j] >= job.ids.len() || budget == 0 {
                continue;
            }
            if seq[j].is_none() {
                if live >= l.max_seqs {
                    continue;
                }
                seq[j] = Some(engine.add_sequence());
            }
            let n = if pos[j] < job.prompt { job.piece.min(job.prompt - pos[j]) } else { 1 }.min(budget);
            budget -= n;
            batch.push(SeqStep { seq: seq[j].unwrap(), tokens: &job.ids[pos[j]..pos[j] + n], logits: Logits::All });
            who.push(j);
        }
        step += 1;
        if batch.is_empty() {
            continue;
        }
        if batch.iter().any(|b| b.tokens.len() > 1) && batch.iter().any(|b| b.tokens.len() == 1) {
            mixed += 1;
        }
        let out = engine.step(&batch, true).unwrap();
        for (b, (o, &j)) in batch.iter().zip(out.into_iter().zip(&who)) {
            pos[j] += b.tokens.len();
            rows[j].push(o.logits.unwrap());
            if pos[j] == jobs[j].ids.len() {
                engine.free(seq[j].take().unwrap());
            }
        }
    }
    let joined = rows
        .iter()
        .map(|r| ndarray::concatenate(ndarray::Axis(0), &r.iter().map(|a| a.view()).collect::<Vec<_>>()).unwrap())
        .collect();
    (joined, mixed)
}

pub struct Golden {
    pub ids: Vec<u32>,
    /// transformers' `generate` (greedy, 8 new tokens) from `greedy_prompt`.
    pub greedy_prompt: Vec<u32>,
    pub greedy_tokens: Vec<u32>,
    /// transformers' logits, [T, vocab].
    pub logits: Array2<f32>,
}

/// transformers' own run of the checkpoint in bf16 with the routed experts in FP8 as our kernels quantize
/// them (scripts/hf_fixtures.py): the GPU path's error budget is a multiple of this run's error.
pub fn bf16_fp8_logits(dir: &Path) -> Array2<f32> {
    logits_file::load(&dir.join("logits_bf16_fp8.safetensors"), "logits").unwrap()
}

/// transformers' bf16 run (routed experts in bf16 too).
pub fn bf16_logits(dir: &Path) -> Array2<f32> {
    logits_file::load(&dir.join("logits_bf16.safetensors"), "logits").unwrap()
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
    safetensors::serialize_to_file(views, None, path).unwrap();
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

/// The error loading `dir` gives, checked to be one line; a panic if it loads.
pub fn load_err(dir: &Path) -> llama4_model::Error {
    match llama4_model::model::Model::load(dir, llama4_model::cpu::Cpu) {
        Ok(_) => panic!("{} loaded although broken", dir.display()),
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n') && !line.is_empty(), "not one line: {line:?}");
            e
        }
    }
}
