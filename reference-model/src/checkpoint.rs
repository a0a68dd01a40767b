//! A checkpoint directory: config.json plus one or more safetensors files (`model.safetensors`, or the shards
//! a `model.safetensors.index.json` names, or every `*.safetensors` there). Tensor names are looked up after
//! stripping the multimodal `language_model.` prefix; the vision tower's tensors are never read.

use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::files::{read_capped, MAX_CONFIG_BYTES, MAX_INDEX_BYTES};
use crate::host_tensor::HostTensor;
use crate::safetensors_file::SafeFile;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The prefix multimodal (`Llama4ForConditionalGeneration`) checkpoints put on every text-model tensor.
pub const MULTIMODAL_PREFIX: &str = "language_model.";

pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: TextConfig,
    files: Vec<SafeFile>,
    /// Stripped name → (file index, name as stored).
    names: BTreeMap<String, (usize, String)>,
    /// Stripped names read so far, to find text-model tensors the config leaves no place for.
    read: RefCell<BTreeSet<String>>,
}

impl Checkpoint {
    /// Opens `dir/config.json` and the weight files, validating every header.
    pub fn open(dir: &Path) -> Result<Self> {
        let text = read_capped(&dir.join("config.json"), MAX_CONFIG_BYTES)?;
        let config = TextConfig::parse(&text)?;
        let (paths, index) = weight_files(dir)?;
        let files = paths.iter().map(|p| SafeFile::open(p)).collect::<Result<Vec<_>>>()?;
        let mut names = BTreeMap::new();
        for (fi, f) in files.iter().enumerate() {
            for stored in f.header.tensors.keys() {
                let name = stored.strip_prefix(MULTIMODAL_PREFIX).unwrap_or(stored);
                if let Some((fj, other)) = names.insert(name.to_string(), (fi, stored.clone())) {
                    return Err(Error::Weight(format!(
                        "tensor `{name}` is stored twice: as `{other}` in {} and as `{stored}` in {}",
                        files[fj].path.display(),
                        f.path.display()
                    )));
                }
            }
        }
        // The index must say where each tensor is: a tensor it names must be in the shard it names.
        let by_name: BTreeMap<_, _> = files.iter().filter_map(|f| Some((f.path.file_name()?, f))).collect();
        for (name, shard) in &index {
            let held = by_name.get(std::ffi::OsStr::new(shard)).is_some_and(|f| f.header.tensors.contains_key(name));
            if !held {
                return Err(Error::Format(format!(
                    "{}: tensor `{name}` is mapped to shard `{shard}`, which does not hold it",
                    dir.join(INDEX).display()
                )));
            }
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), config, files, names, read: RefCell::default() })
    }

    pub fn has(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Reads `name` (prefix already stripped) in its stored dtype, checking its shape against `want` before
    /// anything is allocated, and its values for NaN and infinity.
    pub fn read_host(&self, name: &str, want: &[usize]) -> Result<HostTensor> {
        let (file, stored) = self.locate(name, want)?;
        let t = file.read_host(stored)?;
        t.check_finite(name)?;
        Ok(t)
    }

    fn locate(&self, name: &str, want: &[usize]) -> Result<(&SafeFile, &str)> {
        let Some((fi, stored)) = self.names.get(name) else {
            return Err(Error::Weight(format!(
                "missing tensor `{name}` (looked in {} with and without the `{MULTIMODAL_PREFIX}` prefix)",
                self.file_list()
            )));
        };
        let file = &self.files[*fi];
        let info = &file.header.tensors[stored];
        self.read.borrow_mut().insert(name.to_string());
        if info.shape != want {
            return Err(Error::Weight(format!(
                "tensor `{name}` in {} has shape {:?}; config.json implies {want:?}",
                file.path.display(),
                info.shape
            )));
        }
        Ok((file, stored))
    }

    /// Bytes of the text model's tensors as stored (what loading reads; the embedding counts twice under tied
    /// embeddings, as it is uploaded twice).
    pub fn text_tensor_bytes(&self) -> u64 {
        let mut total = 0u64;
        for (name, (fi, stored)) in &self.names {
            if name.starts_with("model.") || name.starts_with("lm_head.") {
                let info = &self.files[*fi].header.tensors[stored];
                let n = (info.end - info.start) as u64;
                total += n;
                if self.config.tie_word_embeddings && name == "model.embed_tokens.weight" {
                    total += n;
                }
            }
        }
        total
    }

    /// Text-model tensors (`model.*`, `lm_head.*`) that nothing has read. After loading, one of these means
    /// the config and the weights disagree (more layers or experts on disk than configured), which would
    /// otherwise silently drop weights. `lm_head.weight` is exempt under tied embeddings (transformers ignores
    /// it then too), and so are stale RoPE `inv_freq` buffers that some old exports carry.
    pub fn unread(&self) -> Vec<String> {
        let read = self.read.borrow();
        self.names
            .keys()
            .filter(|n| n.starts_with("model.") || n.starts_with("lm_head."))
            .filter(|n| !read.contains(*n) && !n.ends_with(".inv_freq"))
            .filter(|n| !(self.config.tie_word_embeddings && *n == "lm_head.weight"))
            .cloned()
            .collect()
    }

    fn file_list(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|f| f.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
            .collect();
        names.join(", ")
    }
}

/// The shard index's file name.
pub const INDEX: &str = "model.safetensors.index.json";

/// The `weight_map` of a shard index (tensor name -> shard file name), every shard a plain file name in the
/// checkpoint directory. `what` names the index in errors.
pub fn parse_index(text: &str, what: &str) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let index: Index = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| Error::Format(format!("{what}: `{}`: {}", e.path(), e.inner())))?;
    for shard in index.weight_map.values() {
        // A shard name is a file in this directory, never a path out of it.
        if shard.is_empty() || shard == "." || shard == ".." || shard.contains(['/', '\\', '\0']) {
            return Err(Error::Format(format!("{what}: shard `{shard}` is not a plain file name")));
        }
    }
    Ok(index.weight_map)
}

/// The safetensors files of `dir`, in a fixed order, and the index's weight map if there is an index.
fn weight_files(dir: &Path) -> Result<(Vec<PathBuf>, BTreeMap<String, String>)> {
    // Whatever is there under a weight file's name is opened (and refused unless it is a regular file).
    let present = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    let single = dir.join("model.safetensors");
    if present(&single) {
        return Ok((vec![single], BTreeMap::new()));
    }
    let index = dir.join(INDEX);
    if present(&index) {
        let text = read_capped(&index, MAX_INDEX_BYTES)?;
        let map = parse_index(&text, &index.display().to_string())?;
        let shards: BTreeSet<&str> = map.values().map(String::as_str).collect();
        return Ok((shards.into_iter().map(|f| dir.join(f)).collect(), map));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Io(format!("{}: no model.safetensors, index or *.safetensors file", dir.display())));
    }
    Ok((files, BTreeMap::new()))
}
