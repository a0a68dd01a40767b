//! Host allocations sized by a checkpoint or a request, made only when the host can hold them: a tensor or a
//! cache larger than the memory available is an error naming it and the bytes it needs, never an abort
//! ("memory allocation failed") or the OOM killer. "Available" is Linux's MemAvailable, lowered to the
//! cgroup's remaining limit when there is one; elsewhere only the allocator's own refusal is caught.

use crate::error::{Error, Result};

/// Bytes this process may still allocate, if the OS says.
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().strip_suffix("kB")?;
    let mut avail = kib.trim().parse::<u64>().ok()?.saturating_mul(1024);
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    // cgroup v2, then v1 ("max" or a huge number when unlimited: parse fails or min keeps MemAvailable).
    for (limit, usage) in [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ] {
        if let (Some(l), Some(u)) = (read(limit), read(usage)) {
            avail = avail.min(l.saturating_sub(u));
        }
    }
    Some(avail)
}

/// Fails unless `bytes` more bytes fit in host memory; `what` names the allocation.
pub fn ensure(bytes: u64, what: &str) -> Result<()> {
    match available() {
        Some(avail) if bytes > avail => {
            Err(Error::Memory(format!("{what} needs {bytes} bytes of host memory; {avail} bytes are available")))
        }
        _ => Ok(()),
    }
}

/// An empty vector with room for `n` elements, or an error naming `what` and the bytes it needs.
pub fn with_capacity<T>(n: usize, what: &str) -> Result<Vec<T>> {
    let bytes = n.checked_mul(size_of::<T>()).ok_or_else(|| Error::Memory(format!("{what}: {n} elements overflow")))?;
    ensure(bytes as u64, what)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::Memory(format!("{what} needs {bytes} bytes of host memory, which cannot be allocated")))?;
    Ok(v)
}

/// `n` copies of `x` (see [`with_capacity`]).
pub fn filled<T: Clone>(n: usize, x: T, what: &str) -> Result<Vec<T>> {
    let mut v = with_capacity(n, what)?;
    v.resize(n, x);
    Ok(v)
}
