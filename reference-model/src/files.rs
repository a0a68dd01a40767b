//! Opening the files of a checkpoint directory without trusting them: only regular files (a FIFO would block
//! forever, `/dev/zero` never ends, a directory cannot be mapped), and the JSON files read with a size cap.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Largest config.json read (a real one is a few KB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest model.safetensors.index.json read (Maverick's per-expert index is under 2 MB).
pub const MAX_INDEX_BYTES: u64 = 16 << 20;

/// Opens `path` for reading if it is a regular file (after following symlinks), else names what it is.
pub fn open_regular(path: &Path) -> Result<File> {
    // Checked before opening: opening a FIFO for reading blocks until a writer comes.
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    refuse_irregular(path, &meta)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // And again on what was opened, in case the path changed in between.
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    refuse_irregular(path, &meta)?;
    Ok(file)
}

fn refuse_irregular(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    let kind = if meta.is_dir() { "a directory" } else { "not a regular file (a device, FIFO or socket?)" };
    Err(Error::Io(format!("{}: is {kind}", path.display())))
}

/// Reads a regular UTF-8 file of at most `cap` bytes.
pub fn read_capped(path: &Path, cap: u64) -> Result<String> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(Error::Io(format!("{}: larger than the {cap}-byte limit for this file", path.display())));
    }
    String::from_utf8(bytes).map_err(|_| Error::Io(format!("{}: not UTF-8 text", path.display())))
}
