//! The GPU handle: a CUDA context (the device's primary context, shared with the CUDA runtime the kernels
//! launch through) and a stream. Creating one never panics: a machine without a driver, without a GPU, or with
//! a GPU this build has no code for gives `Err(Error::NoDevice)`.

use crate::{Error, Result};
use cudarc::driver::{CudaContext, CudaStream};
use std::sync::Arc;

/// The kernels are compiled for exactly this architecture (sm_90a: H100, H200).
pub const REQUIRED_COMPUTE_CAPABILITY: (i32, i32) = (9, 0);

pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

impl Gpu {
    /// Opens device `ordinal` and a new stream on it.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        // cudarc panics on first use when libcuda cannot be loaded: look for it first.
        // SAFETY: only tries to dlopen the driver library by its usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::NoDevice("the NVIDIA driver library (libcuda.so) is not installed".into()));
        }
        let count = CudaContext::device_count().map_err(|e| Error::NoDevice(format!("cuInit failed: {e}")))?;
        if count <= 0 {
            return Err(Error::NoDevice("the driver reports no CUDA device".into()));
        }
        if ordinal >= count as usize {
            return Err(Error::InvalidArgument(format!("device {ordinal} requested, {count} present")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::NoDevice(format!("opening device {ordinal}: {e}")))?;
        let cc = ctx.compute_capability()?;
        if cc != REQUIRED_COMPUTE_CAPABILITY {
            return Err(Error::NoDevice(format!(
                "device {ordinal} ({}) is sm_{}{}; this build has kernels for sm_90a (H100/H200) only",
                ctx.name().unwrap_or_default(),
                cc.0,
                cc.1
            )));
        }
        let stream = ctx.new_stream()?;
        Ok(Gpu { ctx, stream })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Device name and memory, for logs and bench headers.
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "?".into());
        let mem = self.ctx.total_mem().map(|b| b >> 30).unwrap_or(0);
        format!("{name} ({mem} GiB)")
    }
}
