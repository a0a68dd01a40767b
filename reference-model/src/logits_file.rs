//! Writing and reading the `--save-logits` file: safetensors with one f32 tensor "logits" [T, vocab].

use crate::error::{Error, Result};
use crate::safetensors_file::SafeFile;
use ndarray::{Array2, Ix2};
use safetensors::tensor::{serialize_to_file, Dtype, TensorView};
use std::fs::OpenOptions;
use std::path::Path;

pub const LOGITS: &str = "logits";

/// Fails unless `path` can be written, touching nothing that exists: run before the work whose result goes
/// there, so that a bad path is an error at once rather than after the whole generation.
pub fn check_writable(path: &Path) -> Result<()> {
    let err = |e: std::io::Error| Error::Write(format!("{}: {e}", path.display()));
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::Write(format!("{}: is a directory", path.display()))),
        // Opened for writing without truncating: permission and read-only file systems show here.
        Ok(_) => OpenOptions::new().write(true).open(path).map(drop).map_err(err),
        Err(_) => {
            OpenOptions::new().write(true).create_new(true).open(path).map_err(err)?;
            std::fs::remove_file(path).map_err(err)
        }
    }
}

pub fn save(path: &Path, logits: &Array2<f32>) -> Result<()> {
    let err = |e: safetensors::SafeTensorError| Error::Write(format!("{}: {e}", path.display()));
    if let Some((i, v)) = logits.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let (r, c) = (i / logits.ncols().max(1), i % logits.ncols().max(1));
        return Err(Error::Backend(format!("logit [{r}, {c}] is {v}: refusing to save non-finite logits")));
    }
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = vec![logits.nrows(), logits.ncols()];
    let view = TensorView::new(Dtype::F32, shape, &bytes).map_err(err)?;
    serialize_to_file([(LOGITS, view)], None, path).map_err(err)
}

/// Reads tensor `name` of a safetensors file as a 2-D f32 array (fixtures store logits and ids this way).
pub fn load(path: &Path, name: &str) -> Result<Array2<f32>> {
    let f = SafeFile::open(path)?;
    f.read_f32(name)?
        .into_dimensionality::<Ix2>()
        .map_err(|_| Error::Format(format!("{}: tensor `{name}` is not 2-D", path.display())))
}
