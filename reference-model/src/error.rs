//! One error type for everything that can go wrong between a checkpoint directory and logits. Every message is
//! one line that names the file, key or tensor at fault, so the CLI can print it as is and exit non-zero.

use std::fmt;
use std::path::Path;

/// What went wrong, by the part of the checkpoint at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Reading a file failed (missing, unreadable).
    Io(String),
    /// config.json is not JSON, lacks a required key, has a key of the wrong type, or contradicts itself.
    Config(String),
    /// A safetensors file is malformed: bad header, offsets outside the data, truncated.
    Format(String),
    /// A tensor the model needs is missing, or has the wrong shape or dtype.
    Weight(String),
    /// The request cannot be served: token id out of range, empty prompt, unsupported device.
    Input(String),
    /// A backend op failed (a GPU error later; on the CPU only an internal shape mismatch).
    Backend(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        Error::Io(format!("{}: {e}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(m) => write!(f, "cannot read {m}"),
            Error::Config(m) => write!(f, "bad config: {m}"),
            Error::Format(m) => write!(f, "bad safetensors file: {m}"),
            Error::Weight(m) => write!(f, "bad weights: {m}"),
            Error::Input(m) => write!(f, "bad input: {m}"),
            Error::Backend(m) => write!(f, "backend error: {m}"),
        }
    }
}

impl std::error::Error for Error {}
