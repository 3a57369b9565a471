//! Allocator tuning for processes that move file bytes.

/// Keep glibc from returning freed transfer buffers (up to `largest` bytes each) to the
/// kernel: by default a buffer of a MiB or more is mmapped (or the heap trimmed) and faulted
/// in again for the next one, which costs more CPU than the copies themselves. Memory stays
/// bounded by the buffers in flight. Call first thing in `main`, before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_buffers(largest: usize) {
    let threshold = i32::try_from(largest).unwrap_or(i32::MAX);
    // SAFETY: mallopt only sets allocator parameters; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, threshold);
        libc::mallopt(libc::M_TRIM_THRESHOLD, threshold.saturating_mul(2));
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_buffers(_largest: usize) {}
