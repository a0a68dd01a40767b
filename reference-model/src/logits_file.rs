//! Writing and reading the `--save-logits` file: safetensors with one f32 tensor "logits" [T, vocab].

use crate::error::{Error, Result};
use crate::safetensors_file::SafeFile;
use ndarray::{Array2, Ix2};
use safetensors::tensor::{serialize_to_file, Dtype, TensorView};
use std::path::Path;

pub const LOGITS: &str = "logits";

pub fn save(path: &Path, logits: &Array2<f32>) -> Result<()> {
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = vec![logits.nrows(), logits.ncols()];
    let view = TensorView::new(Dtype::F32, shape, &bytes).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    serialize_to_file([(LOGITS, view)], &None, path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))
}

/// Reads tensor `name` of a safetensors file as a 2-D f32 array (fixtures store logits and ids this way).
pub fn load(path: &Path, name: &str) -> Result<Array2<f32>> {
    let f = SafeFile::open(path)?;
    f.read_f32(name)?
        .into_dimensionality::<Ix2>()
        .map_err(|_| Error::Format(format!("{}: tensor `{name}` is not 2-D", path.display())))
}
