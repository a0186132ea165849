//! A step's whole output, kept by choice (`"keep_output": "full"`,
//! [`muster_shared::kept`]).
//!
//! While the step runs, its output readers write every byte (up to the
//! job's `keep_output_max`) to a file in the agent's state directory
//! ([`KeepFile`], hashed as it is written): the step never waits on NATS,
//! and the agent holds no more than a read's worth in memory. When the
//! step has ended, [`upload`] sends the file to `MUSTER_KEPT` on the
//! target's own subject, in chunks with message ids (a retry stores each
//! once), then the end marker with size and SHA-256, and the file goes.

use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use bytes::Bytes;
use muster_shared::kept::{hex, KeptEnd, KEPT_CHUNK_BYTES, KIND_CHUNK, KIND_END};
use muster_shared::{msg, KIND_HEADER};
use tokio::io::AsyncReadExt as _;

/// Chunks sent and not yet acknowledged during an upload.
const ACKS_IN_FLIGHT: usize = 32;

/// Where a step's output is kept while it runs: the file, and the most
/// kept.
#[derive(Debug, Clone)]
pub struct Keep {
    pub path: PathBuf,
    pub max: u64,
}

/// The file a running step's output is written to.
pub struct KeepFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    max: u64,
    written: u64,
    cut: u64,
    hash: ring::digest::Context,
    error: Option<String>,
}

/// What a step's kept file holds once the step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub path: PathBuf,
    pub bytes: u64,
    /// Bytes past the limit, not kept.
    pub cut: u64,
    pub sha256: String,
    /// Why the file could not be written (a full disk): nothing is sent.
    pub error: Option<String>,
}

impl std::fmt::Debug for KeepFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepFile")
            .field("path", &self.path)
            .field("written", &self.written)
            .field("cut", &self.cut)
            .finish_non_exhaustive()
    }
}

impl KeepFile {
    /// Creates (or empties: a retried step keeps its last attempt) the file.
    pub fn create(keep: &Keep) -> Self {
        let opened = keep
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&keep.path));
        let (file, error) = match opened {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(format!("cannot write {}: {e}", keep.path.display()))),
        };
        Self {
            path: keep.path.clone(),
            file,
            max: keep.max,
            written: 0,
            cut: 0,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            error,
        }
    }

    /// Adds output, up to the limit; past it, counts what is cut.
    pub fn push(&mut self, data: &[u8]) {
        let room = usize::try_from(self.max - self.written).unwrap_or(usize::MAX).min(data.len());
        self.cut += (data.len() - room) as u64;
        let Some(file) = &mut self.file else { return };
        if let Err(e) = file.write_all(&data[..room]) {
            self.error = Some(format!("cannot write {}: {e}", self.path.display()));
            self.file = None;
            return;
        }
        self.hash.update(&data[..room]);
        self.written += room as u64;
    }

    /// Closes the file: what it holds.
    pub fn finish(self) -> Kept {
        Kept { path: self.path, bytes: self.written, cut: self.cut, sha256: hex(self.hash.finish().as_ref()), error: self.error }
    }
}

/// Why kept output could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("storing it in the kept-output stream: {0}")]
    Publish(#[source] async_nats::Error),
    #[error("it was not written whole: {0}")]
    NotWritten(String),
}

/// Sends `kept`'s file to `subject`, then its end marker (`end`, whose
/// size, chunk count and hash this fills in). The file is removed
/// whatever happens.
///
/// # Errors
/// When the file cannot be read or JetStream does not acknowledge a part.
pub async fn upload(js: &jetstream::Context, subject: &str, kept: &Kept, mut end: KeptEnd) -> Result<(), UploadError> {
    let sent = send(js, subject, kept, &mut end).await;
    tokio::fs::remove_file(&kept.path).await.ok();
    sent
}

async fn send(js: &jetstream::Context, subject: &str, kept: &Kept, end: &mut KeptEnd) -> Result<(), UploadError> {
    if let Some(e) = &kept.error {
        return Err(UploadError::NotWritten(e.clone()));
    }
    let read_err = |source| UploadError::Read { path: kept.path.display().to_string(), source };
    let mut file = tokio::fs::File::open(&kept.path).await.map_err(read_err)?;
    let id = format!("{}.{}", end.run_id, end.step);
    let mut acks: VecDeque<PublishAckFuture> = VecDeque::new();
    let mut buf = vec![0u8; KEPT_CHUNK_BYTES];
    let mut chunks = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]).await.map_err(read_err)? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        let headers = headers(KIND_CHUNK, &format!("{id}.{chunks}"));
        let ack = js
            .publish_with_headers(subject.to_owned(), headers, Bytes::copy_from_slice(&buf[..filled]))
            .await
            .map_err(|e| UploadError::Publish(e.into()))?;
        acks.push_back(ack);
        chunks += 1;
        if acks.len() >= ACKS_IN_FLIGHT {
            acks.pop_front().expect("not empty").await.map_err(|e| UploadError::Publish(e.into()))?;
        }
    }
    for ack in acks {
        ack.await.map_err(|e| UploadError::Publish(e.into()))?;
    }
    end.bytes = kept.bytes;
    end.chunks = chunks;
    end.sha256.clone_from(&kept.sha256);
    end.cut_bytes = kept.cut;
    js.publish_with_headers(subject.to_owned(), headers(KIND_END, &format!("{id}.end")), msg::encode(end).into())
        .await
        .map_err(|e| UploadError::Publish(e.into()))?
        .await
        .map_err(|e| UploadError::Publish(e.into()))?;
    Ok(())
}

fn headers(kind: &str, msg_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(KIND_HEADER, kind);
    h.insert("Nats-Msg-Id", msg_id);
    h
}

/// Where the agent keeps step outputs until they are uploaded.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("kept")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keep_file_holds_up_to_its_limit_and_hashes_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Keep { path: dir.path().join("sub/x.out"), max: 10 };
        let mut f = KeepFile::create(&keep);
        f.push(b"hello ");
        f.push(b"world, and more");
        let kept = f.finish();
        assert_eq!((kept.bytes, kept.cut, kept.error.as_deref()), (10, 11, None));
        assert_eq!(std::fs::read(&keep.path).unwrap(), b"hello worl");
        let expect = hex(ring::digest::digest(&ring::digest::SHA256, b"hello worl").as_ref());
        assert_eq!(kept.sha256, expect);
    }
}
