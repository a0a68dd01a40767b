//! One error type for the safe API and one status code per variant for the C ABI.

use std::fmt;

/// Why an op did not run (or its launch failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shapes, dtypes, alignment, null pointers or values the op rejects; nothing was launched.
    InvalidArgument(String),
    /// A valid request this library does not implement (a head_dim over 256, a row over the kernel's limit).
    Unsupported(String),
    /// The CUDA driver or runtime reported an error.
    Cuda(String),
    /// No usable GPU: no driver library, no device, or a device this build has no code for.
    NoDevice(String),
}

/// C ABI status codes (`l4k_status` in include/llama4_kernels.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    InvalidArgument = 1,
    Unsupported = 2,
    Cuda = 3,
    NoDevice = 4,
    /// A panic inside the library, caught at the C boundary: a bug, whatever the arguments were.
    Panic = 5,
}

impl Error {
    pub fn status(&self) -> Status {
        match self {
            Error::InvalidArgument(_) => Status::InvalidArgument,
            Error::Unsupported(_) => Status::Unsupported,
            Error::Cuda(_) => Status::Cuda,
            Error::NoDevice(_) => Status::NoDevice,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::Cuda(m) => write!(f, "CUDA error: {m}"),
            Error::NoDevice(m) => write!(f, "no usable GPU: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Cuda(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `Err(InvalidArgument)` with a formatted message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::Error::InvalidArgument(format!($($msg)+)));
        }
    };
}
pub(crate) use ensure;
