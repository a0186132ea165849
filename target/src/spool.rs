//! The result spool: every record a target uploads goes through here.
//!
//! A record is first written to `spool/<seq>.json` (fsync'd file, fsync'd
//! directory), then published by the [`Flusher`] with its `Nats-Msg-Id`, and
//! deleted only once JetStream confirmed it. So a result survives a NATS
//! outage, a stream that refuses writes, and a `kill -9` of the agent, and
//! is replayed in order afterwards. Replays reuse the message id, so
//! JetStream drops duplicates inside its window; beyond it, readers keep one
//! record per run id (see `muster_shared::msg::RunRecord`).
//!
//! Writing ahead costs one fsync per record — runs are rare next to that —
//! and gives one code path for online and offline instead of two.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use muster_shared::KIND_HEADER;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use muster_runtime::backoff::Backoff;
use muster_runtime::fsutil::{remove_durable, sync_dir, write_atomic};

/// Publishes in flight at once while flushing.
const IN_FLIGHT: usize = 64;

/// One record to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub subject: String,
    pub msg_id: String,
    /// Goes in the `Muster-Kind` header.
    pub kind: String,
    /// The JSON body.
    pub body: String,
}

#[derive(Debug)]
struct Queue {
    /// Sequence numbers on disk, oldest first, with their sizes.
    files: VecDeque<(u64, u64)>,
    next_seq: u64,
    bytes: u64,
    warned_full: bool,
}

/// Why a record could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the result spool is full ({bytes} of {max} bytes); results are not being recorded until NATS takes them")]
    Full { bytes: u64, max: u64 },
    #[error("writing the result spool: {0}")]
    Io(#[from] io::Error),
}

/// Handle to the spool, cheap to clone.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
}

impl Spool {
    /// Opens the spool directory and finds what an earlier run left in it.
    ///
    /// # Errors
    /// When the directory cannot be read.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            files.push((seq, entry.metadata()?.len()));
        }
        files.sort_unstable();
        let bytes = files.iter().map(|(_, len)| len).sum();
        let next_seq = files.last().map_or(1, |(s, _)| s + 1);
        if !files.is_empty() {
            tracing::info!(records = files.len(), bytes, "spool holds results from before; replaying them");
        }
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            queue: Arc::new(Mutex::new(Queue { files: files.into(), next_seq, bytes, warned_full: false })),
            wake: Arc::new(Notify::new()),
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    /// Durably appends a record, then wakes the flusher.
    ///
    /// # Errors
    /// [`SpoolError::Full`] past the size cap (logged loudly), or an I/O error.
    pub fn push(&self, entry: &Entry) -> Result<(), SpoolError> {
        let bytes = serde_json::to_vec(entry).expect("serialise");
        let mut q = self.queue.lock().expect("spool lock");
        if q.bytes + bytes.len() as u64 > self.max_bytes {
            tracing::error!(
                bytes = q.bytes,
                max = self.max_bytes,
                subject = entry.subject,
                "result spool is FULL; record refused"
            );
            return Err(SpoolError::Full { bytes: q.bytes, max: self.max_bytes });
        }
        let seq = q.next_seq;
        write_atomic(&self.path(seq), &bytes)?;
        q.next_seq += 1;
        q.bytes += bytes.len() as u64;
        q.files.push_back((seq, bytes.len() as u64));
        if q.bytes * 10 >= self.max_bytes * 8 && !q.warned_full {
            q.warned_full = true;
            tracing::warn!(
                bytes = q.bytes,
                max = self.max_bytes,
                "result spool is over 80% full: NATS has not taken results for a while"
            );
        }
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    /// Records waiting to be confirmed.
    pub fn len(&self) -> u64 {
        self.queue.lock().expect("spool lock").files.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether new runs should wait: the spool is at its cap.
    pub fn is_full(&self) -> bool {
        let q = self.queue.lock().expect("spool lock");
        q.bytes >= self.max_bytes
    }

    /// The oldest `n` records, in order.
    pub(crate) fn peek(&self, n: usize) -> io::Result<Vec<(u64, Entry)>> {
        let seqs: Vec<u64> = self.queue.lock().expect("spool lock").files.iter().take(n).map(|(s, _)| *s).collect();
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let bytes = std::fs::read(self.path(seq))?;
            match serde_json::from_slice(&bytes) {
                Ok(e) => out.push((seq, e)),
                Err(e) => {
                    // Only a torn write outside write_atomic could do this; keep
                    // the file for inspection, out of the queue.
                    tracing::error!(seq, error = %e, "corrupt spool record moved aside");
                    std::fs::rename(self.path(seq), self.dir.join(format!("{seq:020}.corrupt")))?;
                    sync_dir(&self.dir)?;
                    self.forget(seq);
                }
            }
        }
        Ok(out)
    }

    fn forget(&self, seq: u64) {
        let mut q = self.queue.lock().expect("spool lock");
        if let Some(pos) = q.files.iter().position(|(s, _)| *s == seq) {
            let (_, len) = q.files.remove(pos).expect("present");
            q.bytes -= len;
        }
        if q.bytes * 10 < self.max_bytes * 8 {
            q.warned_full = false;
        }
    }

    /// Deletes a confirmed record.
    pub(crate) fn confirm(&self, seq: u64) -> io::Result<()> {
        remove_durable(&self.path(seq))?;
        self.forget(seq);
        Ok(())
    }
}

/// Publishes the spool to JetStream, in order, until shutdown.
#[derive(Debug)]
pub struct Flusher {
    pub spool: Spool,
    pub js: jetstream::Context,
}

impl Flusher {
    /// Runs until `shutdown`; then makes one last attempt to empty the spool
    /// within `final_flush`.
    pub async fn run(self, shutdown: CancellationToken, final_flush: Duration) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let notified = self.spool.wake.notified();
            match self.flush_once().await {
                Ok(0) => {
                    backoff.reset();
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = notified => {}
                    }
                }
                Ok(_) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error = %e, waiting = self.spool.len(), "results not accepted by NATS; kept in the spool");
                    if !backoff.wait(&shutdown).await {
                        break;
                    }
                }
            }
        }
        // Shutdown: flush what is left, briefly; the rest waits on disk.
        let _ = tokio::time::timeout(final_flush, async {
            while !self.spool.is_empty() {
                if self.flush_once().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if !self.spool.is_empty() {
            tracing::info!(waiting = self.spool.len(), "results left in the spool for the next start");
        }
    }

    /// Publishes up to [`IN_FLIGHT`] records, pipelined, and confirms them in
    /// order; stops at the first failure so order is kept (the failed one and
    /// everything after it are sent again, with the same ids).
    async fn flush_once(&self) -> anyhow::Result<usize> {
        let batch = tokio::task::block_in_place(|| self.spool.peek(IN_FLIGHT))?;
        if batch.is_empty() {
            return Ok(0);
        }
        let mut acks = Vec::with_capacity(batch.len());
        for (seq, e) in &batch {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.msg_id.as_str());
            headers.insert(KIND_HEADER, e.kind.as_str());
            let ack = self
                .js
                .publish_with_headers(e.subject.clone(), headers, e.body.clone().into())
                .await
                .map_err(|err| anyhow::anyhow!("publish: {err}"))?;
            acks.push((*seq, ack));
        }
        let mut done = 0;
        for (seq, ack) in acks {
            ack.await.map_err(|e| anyhow::anyhow!("publish not confirmed: {e}"))?;
            tokio::task::block_in_place(|| self.spool.confirm(seq))?;
            done += 1;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Entry {
        Entry { subject: format!("s.{i}"), msg_id: format!("m{i}"), kind: "run".into(), body: "{}".into() }
    }

    #[test]
    fn survives_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..5 {
            spool.push(&entry(i)).unwrap();
        }
        spool.confirm(spool.peek(1).unwrap()[0].0).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let left: Vec<String> = spool.peek(10).unwrap().into_iter().map(|(_, e)| e.msg_id).collect();
        assert_eq!(left, ["m1", "m2", "m3", "m4"]);
        spool.push(&entry(9)).unwrap();
        assert_eq!(spool.peek(10).unwrap().last().unwrap().1.msg_id, "m9");
    }

    #[test]
    fn refuses_past_the_cap_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&entry(0)).unwrap().len() as u64;
        let spool = Spool::open(dir.path(), one * 2).unwrap();
        spool.push(&entry(0)).unwrap();
        spool.push(&entry(1)).unwrap();
        assert!(matches!(spool.push(&entry(2)), Err(SpoolError::Full { .. })));
        assert!(spool.is_full());
        spool.confirm(spool.peek(1).unwrap()[0].0).unwrap();
        spool.push(&entry(2)).unwrap();
        assert_eq!(spool.len(), 2);
    }
}
