//! The GPU handle: a CUDA context (the device's primary context, shared with the CUDA runtime the kernels
//! launch through) and a stream. Creating one never panics: a machine without a driver, without a GPU, or with
//! a GPU this build has no code for gives `Err(Error::NoDevice)`.
//!
//! Launches: every kernel but the CUTLASS grouped GEMMs is launched with programmatic dependent launch
//! (kernels/pdl.cuh), so it may start while the kernel before it in the stream finishes and waits for it on the
//! device before touching memory. `L4K_PDL=0` in the environment (read once, at the first launch) turns the
//! attribute off, for A/B measurements; [`pdl_enabled`] says which way launches go.

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

/// Whether launches carry the programmatic-dependent-launch attribute: true unless `L4K_PDL=0` was in the
/// environment when the first launch (or this call) read it, or `set_pdl` said otherwise.
pub fn pdl_enabled() -> bool {
    // SAFETY: reads a process-wide atomic (and the environment once); no pointers.
    unsafe { crate::ffi::l4k_internal_pdl_enabled() != 0 }
}

/// Turns programmatic dependent launch on or off for every later launch in the process, overriding `L4K_PDL`.
/// For tests that compare both paths in one process; results are the same either way (only start times differ),
/// so a launch racing with the switch in another thread is still correct.
#[doc(hidden)]
pub fn set_pdl(on: bool) {
    // SAFETY: stores to a process-wide atomic; no pointers.
    unsafe { crate::ffi::l4k_internal_set_pdl(on as std::ffi::c_int) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pdl_switch_overrides_the_environment() {
        set_pdl(false);
        assert!(!pdl_enabled());
        set_pdl(true);
        assert!(pdl_enabled());
    }
}
