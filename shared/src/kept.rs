//! Full output kept by choice (`"keep_output": "full"`, [`crate::job::KeepOutput`]).
//!
//! After a step of such a job ends, the agent uploads what the step printed
//! (stdout and stderr interleaved as read, up to the job's
//! `keep_output_max`) to the stream `MUSTER_KEPT`
//! ([`crate::streams::kept_stream`]), on `<prefix>.kept.<t>.<run-id>.<n>`
//! ([`crate::subject::Subjects::kept`]), where `n` is the step record's
//! place in the run record (0 for the first step run): raw chunks of
//! [`KEPT_CHUNK_BYTES`] (header `Muster-Kind: kept-chunk`), then one
//! [`KeptEnd`] (`Muster-Kind: kept-end`) with the size and SHA-256 of the
//! whole, which `musterctl run output` checks.
//!
//! Why a stream and not the JetStream Object Store: an object's chunks go
//! to `$O.<bucket>.C.<nuid>` and its metadata to `$O.<bucket>.M.<name in
//! base64>`, and replacing an object purges its old chunks by a filter in
//! the request body: no permission can confine any of these to one
//! target. Here every subject carries the target's name, so a target may
//! write only its own (`perms::target`), like its results. The stream keeps
//! messages for the history's retention (`MUSTER_RESULTS`' max age), so a
//! run's output lives as long as its record.
//!
//! Chunks carry raw bytes, not JSON (the output may be binary); the end
//! marker is a versioned body like every other.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::name::TargetName;
use crate::PROTOCOL_VERSION;

/// Bytes per chunk message.
pub const KEPT_CHUNK_BYTES: usize = 256 * 1024;

/// [`crate::KIND_HEADER`] of a chunk.
pub const KIND_CHUNK: &str = "kept-chunk";

/// [`crate::KIND_HEADER`] of the end marker.
pub const KIND_END: &str = "kept-end";

/// The last message of one step's kept output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptEnd {
    #[serde(default = "v")]
    pub v: u32,
    /// Must equal the subject's target.
    pub target: TargetName,
    pub run_id: Uuid,
    /// The step record's place in the run record.
    pub step: usize,
    /// The step's name.
    pub name: String,
    /// Bytes kept (the chunks' total).
    pub bytes: u64,
    /// Chunks sent before this.
    pub chunks: u64,
    /// SHA-256 of the bytes kept, lowercase hex.
    pub sha256: String,
    /// Bytes the step printed past `keep_output_max`, not kept.
    #[serde(default)]
    pub cut_bytes: u64,
}

fn v() -> u32 {
    PROTOCOL_VERSION
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
