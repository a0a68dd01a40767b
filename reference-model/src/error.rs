//! One error type for everything that can go wrong between a checkpoint directory and logits. Every message is
//! one line that names the file, key or tensor at fault, so the CLI can print it as is and exit non-zero: a
//! control character that reaches a message (a newline in a file or tensor name) is written escaped.

use std::fmt;
use std::path::Path;

/// What went wrong, by the part of the checkpoint at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Reading a file failed (missing, unreadable, not a regular file, over its size limit).
    Io(String),
    /// config.json is not JSON, lacks a required key, has a key of the wrong type, or contradicts itself.
    Config(String),
    /// A safetensors file is malformed: bad header, offsets outside the data, truncated.
    Format(String),
    /// A tensor the model needs is missing, has the wrong shape or dtype, or holds NaN or infinity.
    Weight(String),
    /// The request cannot be served: token id out of range, empty prompt, unsupported device.
    Input(String),
    /// A backend op failed (a GPU error; on the CPU only an internal shape mismatch), or the model computed
    /// NaN or infinity.
    Backend(String),
    /// The host cannot hold an allocation: what it was for and the bytes it needs.
    Memory(String),
    /// Writing an output file failed.
    Write(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        Error::Io(format!("{}: {e}", path.display()))
    }

    /// The same error with `what: ` before its message.
    pub fn context(self, what: &str) -> Self {
        let f = |m: String| format!("{what}: {m}");
        match self {
            Error::Io(m) => Error::Io(f(m)),
            Error::Config(m) => Error::Config(f(m)),
            Error::Format(m) => Error::Format(f(m)),
            Error::Weight(m) => Error::Weight(f(m)),
            Error::Input(m) => Error::Input(f(m)),
            Error::Backend(m) => Error::Backend(f(m)),
            Error::Memory(m) => Error::Memory(f(m)),
            Error::Write(m) => Error::Write(f(m)),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, m) = match self {
            Error::Io(m) => ("cannot read ", m),
            Error::Config(m) => ("bad config: ", m),
            Error::Format(m) => ("bad safetensors file: ", m),
            Error::Weight(m) => ("bad weights: ", m),
            Error::Input(m) => ("bad input: ", m),
            Error::Backend(m) => ("backend error: ", m),
            Error::Memory(m) => ("out of memory: ", m),
            Error::Write(m) => ("cannot write ", m),
        };
        write!(f, "{what}{}", one_line(m))
    }
}

impl std::error::Error for Error {}

/// `s` with every control character escaped (`\n`, `\u{1b}`, ...), so that it prints as one line.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c.is_control() {
            true => out.extend(c.escape_default()),
            false => out.push(c),
        }
    }
    out
}
