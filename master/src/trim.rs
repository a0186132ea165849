//! Giving memory that was freed back to the operating system.
//!
//! Why: glibc's allocator keeps what a burst of work freed (a fan-out to
//! 10,000 targets, a `target list` of 100,000) in its arenas for reuse, so
//! an idle master kept the resident size of its busiest moment: measured
//! at 10,000 targets, 35 of 62 MB anonymous memory right after a fan-out
//! was free but kept. Nothing in the master may grow per idle target, so
//! the reconcile loop calls [`release`] at each wake (at least once a
//! minute), after the caches dropped what sat idle. On other allocators
//! and systems it does nothing.

use std::time::Instant;

/// Returns freed heap memory to the operating system (glibc's
/// `malloc_trim`), off the async workers: it walks every arena.
pub async fn release() {
    let started = Instant::now();
    tokio::task::spawn_blocking(trim).await.ok();
    tracing::debug!(took = ?started.elapsed(), "freed memory returned to the system");
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
