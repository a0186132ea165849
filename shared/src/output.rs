//! Live output: the chunks a target publishes while a step runs.
//!
//! Each run's output goes to `<prefix>.output.<t>.<run-id>`
//! ([`crate::subject::Subjects::output`]), stored in the stream
//! `MUSTER_OUTPUT` ([`crate::streams::output_stream`]), so a follower that
//! attaches late (`musterctl run logs RUN_ID --follow` a minute into the
//! run) still reads the run's output from its start; core NATS would give
//! it only what is said after it subscribed. The stream is bounded by age
//! ([`OUTPUT_RETENTION`]) and by bytes ([`OUTPUT_MAX_BYTES`], oldest
//! dropped first), has no consumer per target, and holds nothing for a
//! target that runs nothing: nothing grows per idle target.
//!
//! The agent bounds what it sends ([`LIMITS`]): a chunk is flushed every
//! [`Limits::flush`] or at [`Limits::chunk_bytes`], and a run may send
//! [`Limits::rate`] bytes a second on average (bursts of [`Limits::burst`]).
//! What is over, or what the agent could not hand to NATS in time (it never
//! waits on NATS while the step writes), is dropped and counted: the next
//! chunk says how many bytes were dropped before it ([`OutputChunk::dropped`]).
//! The run record's head and tail, and the full output kept by choice, are
//! not affected: the live stream is a tee of what the agent captures.
//!
//! The last chunk of a run has `end: true` (after its last step): a
//! follower may stop there. It is published before the run's final record
//! is spooled, so by the time history has the final record, every chunk
//! the agent managed to send is stored.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::name::TargetName;
use crate::PROTOCOL_VERSION;

/// How long live output stays in `MUSTER_OUTPUT`: long enough to follow a
/// day-long run from its start, short enough that it is not a second
/// history (the run record keeps head and tail for the history's
/// retention; `keep_output` keeps it all).
pub const OUTPUT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The most bytes `MUSTER_OUTPUT` holds; the oldest chunks go first.
pub const OUTPUT_MAX_BYTES: i64 = 1024 * 1024 * 1024;

/// Largest chunk message the stream accepts: a full chunk's data as JSON
/// (every byte escaped at worst as `\u00XX`, 6 bytes) and its fields.
pub const OUTPUT_MAX_MSG_BYTES: i32 = 128 * 1024;

/// The agent's bounds on one run's live output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A chunk is sent at most this long after its first byte was read.
    pub flush: Duration,
    /// A chunk is sent once it holds this many bytes.
    pub chunk_bytes: usize,
    /// Average bytes a second one run may send.
    pub rate: u64,
    /// Bytes one run may send at once above the average.
    pub burst: u64,
    /// Pieces read from the step but not yet handled by the publisher; more
    /// are dropped (and counted) rather than waited for.
    pub queue: usize,
}

/// The limits every agent applies.
pub const LIMITS: Limits =
    Limits { flush: Duration::from_millis(200), chunk_bytes: 16 * 1024, rate: 64 * 1024, burst: 1024 * 1024, queue: 64 };

/// Which of the step's pipes a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pipe {
    Stdout,
    Stderr,
}

/// One piece of a run's live output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    #[serde(default = "v")]
    pub v: u32,
    /// Must equal the subject's target.
    pub target: TargetName,
    pub job_id: Uuid,
    pub run_id: Uuid,
    /// 1, 2, … in the order sent, so a reader sees a gap.
    pub seq: u64,
    /// The step's index in the job (0 for the first).
    pub step: usize,
    pub pipe: Pipe,
    /// The bytes, as lossy UTF-8 (a character is never split across chunks).
    #[serde(default)]
    pub data: String,
    /// Bytes of this run's output dropped since the previous chunk (rate cap,
    /// or the publisher fell behind).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
    /// The run's last chunk: no more follow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end: bool,
}

fn v() -> u32 {
    PROTOCOL_VERSION
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The line a reader shows for dropped bytes.
pub fn dropped_marker(bytes: u64) -> String {
    format!("[... {bytes} bytes of live output dropped (rate limit, or the agent fell behind); the run record keeps head and tail ...]")
}

/// The longest prefix of `bytes` that does not end inside a UTF-8
/// character: what can be sent now without splitting one. Invalid bytes
/// (not a character's beginning) count as complete; they become U+FFFD.
pub fn complete_utf8(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        // An invalid sequence inside: look only at the last 3 bytes.
        Err(_) => {
            let tail_start = bytes.len().saturating_sub(3);
            for i in (tail_start..bytes.len()).rev() {
                let b = bytes[i];
                if b & 0xC0 != 0x80 {
                    // A lead byte: complete if its sequence fits.
                    let need = match b {
                        0xC0..=0xDF => 2,
                        0xE0..=0xEF => 3,
                        0xF0..=0xF7 => 4,
                        _ => 1,
                    };
                    return if bytes.len() - i >= need { bytes.len() } else { i };
                }
            }
            bytes.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_is_never_split() {
        let s = "aé€😀".as_bytes();
        assert_eq!(complete_utf8(s), s.len());
        for cut in 0..s.len() {
            let n = complete_utf8(&s[..cut]);
            assert!(std::str::from_utf8(&s[..n]).is_ok(), "{cut}");
            assert!(cut - n < 4);
        }
        assert_eq!(complete_utf8(b"ok \xff end \xe2\x82"), 9);
        assert_eq!(complete_utf8(b"\xff\xfe"), 2);
    }

    #[test]
    fn a_chunk_reads_back_with_its_version() {
        let c = OutputChunk {
            v: PROTOCOL_VERSION,
            target: TargetName::new("web01").unwrap(),
            job_id: Uuid::nil(),
            run_id: Uuid::nil(),
            seq: 1,
            step: 0,
            pipe: Pipe::Stderr,
            data: "x\n".into(),
            dropped: 0,
            end: false,
        };
        let body = crate::msg::encode(&c);
        assert!(!String::from_utf8_lossy(&body).contains("dropped"));
        assert_eq!(crate::msg::decode::<OutputChunk>(&body).unwrap(), c);
    }
}
