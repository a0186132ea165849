//! Giving memory that was freed back to the operating system.
//!
//! Why: glibc's allocator keeps what a burst of work freed (a fan-out to
//! 10,000 targets, a `target list` of 100,000) in its arenas for reuse, so
//! an idle master kept the resident size of its busiest moment: measured
//! at 10,000 targets, 35 of 62 MB anonymous memory right after a fan-out
//! was free but kept. Nothing in the master may grow per idle target, so
//! the reconcile loop calls [`release`] at each wake (at least once a
//! minute), after the caches dropped what sat idle.
//!
//! And at start, [`big_allocations_apart`]: glibc serves an allocation of
//! 128 KiB or more with a mapping of its own, returned whole when freed,
//! but after the first such free it raises that threshold (up to 32 MiB),
//! so the large buffers of whole-fleet work (a reply of 100,000 targets,
//! the maps of a pass) then come from the arenas and fragment them, and
//! `malloc_trim` cannot give back pages that still hold a few small live
//! chunks. Measured at 100,000 targets right after the fan-out: 126 MB
//! with the threshold moving, 31.8 MB with it fixed at 128 KiB (same
//! build, `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072`); the
//! fan-out was no slower beside its raw baseline.
//!
//! On other allocators and systems both do nothing.

use std::time::Instant;

/// Returns freed heap memory to the operating system (glibc's
/// `malloc_trim`), off the async workers: it walks every arena.
pub async fn release() {
    let started = Instant::now();
    tokio::task::spawn_blocking(trim).await.ok();
    tracing::debug!(took = ?started.elapsed(), "freed memory returned to the system");
}

/// Fixes glibc's mmap threshold at its default, 128 KiB, so it no longer
/// rises (see the module docs). Once, at start, before the big work.
pub fn big_allocations_apart() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `mallopt` only sets an allocator parameter, under its lock,
    // and may be called at any time; 128 KiB is within its range.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: `malloc_trim` has no preconditions: it only releases free
    // pages of the allocator's own arenas, under the arenas' locks, and
    // may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
