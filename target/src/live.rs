//! Publishing a run's output while it runs ([`muster_shared::output`]).
//!
//! The step's output readers (`process/capture.rs`) hand every piece they
//! read to a [`Tee`] as well as to the head-and-tail capture: one reader,
//! two destinations. The tee never waits: it puts the piece on a bounded
//! queue ([`Limits::queue`]) or, when the queue is full, counts its bytes
//! as dropped. One publisher task per run ([`RunOutput`]) empties the queue
//! into chunks (per pipe, a character never split), flushed every
//! [`Limits::flush`] or at [`Limits::chunk_bytes`], under a byte-rate cap
//! ([`Limits::rate`], bursts of [`Limits::burst`]); what is over the cap,
//! or what NATS did not take, is counted and announced by the next chunk
//! (`dropped`). Only this task waits on NATS (a disconnected client, slow
//! PubAcks): the step never does.
//!
//! At the run's end [`RunOutput::finish`] sends what is left and a last
//! chunk with `end: true`, and waits for their PubAcks at most
//! [`FINISH_WAIT`], before the run's final record is spooled: a follower
//! that sees the final record has every chunk the agent could send.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use muster_shared::msg;
use muster_shared::name::TargetName;
use muster_shared::output::{complete_utf8, Limits, OutputChunk, Pipe, LIMITS};
use muster_shared::subject::Subjects;
use muster_shared::PROTOCOL_VERSION;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The longest a run's end waits for its last chunks to be stored.
pub const FINISH_WAIT: Duration = Duration::from_secs(5);

/// Chunks published and not yet acknowledged, per run; at this many the
/// publisher waits for the oldest (and the queue, not the step, fills).
const ACKS_IN_FLIGHT: usize = 16;

/// Where runs publish their output: the agent's JetStream context, once
/// connected.
#[derive(Debug, Clone)]
pub struct Live {
    js: jetstream::Context,
    subjects: Subjects,
    target: TargetName,
    limits: Limits,
}

impl Live {
    pub fn new(js: jetstream::Context, subjects: Subjects, target: TargetName) -> Self {
        Self { js, subjects, target, limits: LIMITS }
    }

    /// The agent's JetStream context (kept output is uploaded on it too).
    pub fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// Starts publishing one run's output.
    pub fn open(&self, job_id: Uuid, run_id: Uuid) -> RunOutput {
        let (tx, rx) = mpsc::channel(self.limits.queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let finish = CancellationToken::new();
        let publisher = Publisher {
            js: self.js.clone(),
            subject: self.subjects.output(&self.target, run_id),
            template: OutputChunk {
                v: PROTOCOL_VERSION,
                target: self.target.clone(),
                job_id,
                run_id,
                seq: 0,
                step: 0,
                pipe: Pipe::Stdout,
                data: String::new(),
                dropped: 0,
                end: false,
            },
            limits: self.limits,
            dropped: dropped.clone(),
            acks: VecDeque::new(),
            bucket: TokenBucket::new(self.limits),
        };
        let task = tokio::spawn(publisher.run(rx, finish.clone()));
        RunOutput { tx, dropped, finish, task }
    }
}

/// One run's live output: hand out a [`Tee`] per step, [`finish`](Self::finish) at the end.
#[derive(Debug)]
pub struct RunOutput {
    tx: mpsc::Sender<Piece>,
    dropped: Arc<AtomicU64>,
    finish: CancellationToken,
    task: JoinHandle<()>,
}

impl RunOutput {
    /// What the readers of step `step` (its index in the job) write to.
    pub fn tee(&self, step: usize) -> Tee {
        Tee { tx: self.tx.clone(), dropped: self.dropped.clone(), step }
    }

    /// Sends what is left and the end chunk; waits at most [`FINISH_WAIT`].
    /// (Dropped unfinished, the publisher ends when every tee is gone.)
    pub async fn finish(self) {
        self.finish.cancel();
        let mut task = self.task;
        if tokio::time::timeout(FINISH_WAIT, &mut task).await.is_err() {
            tracing::warn!(
                "live output not stored within {FINISH_WAIT:?} of the run's end (NATS slow or away); the rest is dropped"
            );
            task.abort();
        }
    }
}

/// One piece a step's reader read.
#[derive(Debug)]
struct Piece {
    step: usize,
    pipe: Pipe,
    data: Bytes,
}

/// A step's share of its run's live output; cheap to clone, never waits.
#[derive(Debug, Clone)]
pub struct Tee {
    tx: mpsc::Sender<Piece>,
    dropped: Arc<AtomicU64>,
    step: usize,
}

impl Tee {
    /// Queues a piece of output, or counts it dropped if the queue is full.
    pub fn offer(&self, pipe: Pipe, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let piece = Piece { step: self.step, pipe, data: Bytes::copy_from_slice(data) };
        if self.tx.try_send(piece).is_err() {
            self.dropped.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    }
}

/// The average-rate cap with bursts.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(l: Limits) -> Self {
        Self { rate: l.rate as f64, burst: l.burst as f64, tokens: l.burst as f64, at: Instant::now() }
    }

    /// Takes `n` bytes' worth if there is room at `now`.
    fn take(&mut self, n: usize, now: Instant) -> bool {
        self.tokens = (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// Bytes waiting to be sent from one pipe, and the step they came from.
#[derive(Debug)]
struct Pending {
    pipe: Pipe,
    step: usize,
    bytes: Vec<u8>,
}

impl Pending {
    fn new(pipe: Pipe) -> Self {
        Self { pipe, step: 0, bytes: Vec::new() }
    }
}

struct Publisher {
    js: jetstream::Context,
    subject: String,
    template: OutputChunk,
    limits: Limits,
    dropped: Arc<AtomicU64>,
    /// Each chunk's PubAck, with the bytes it carried.
    acks: VecDeque<(PublishAckFuture, u64)>,
    bucket: TokenBucket,
}

impl Publisher {
    async fn run(mut self, mut rx: mpsc::Receiver<Piece>, finish: CancellationToken) {
        let mut pending = [Pending::new(Pipe::Stdout), Pending::new(Pipe::Stderr)];
        let mut due: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                piece = rx.recv() => {
                    let Some(piece) = piece else { break };
                    self.take(piece, &mut pending, &mut due).await;
                }
                () = sleep_until(due) => {
                    for p in &mut pending {
                        self.flush(p, false).await;
                    }
                    due = None;
                }
                () = finish.cancelled() => break,
            }
        }
        // What the readers queued before the end, then the rest and the end.
        while let Ok(piece) = rx.try_recv() {
            self.take(piece, &mut pending, &mut due).await;
        }
        for p in &mut pending {
            self.flush(p, true).await;
        }
        self.send(String::new(), 0, Pipe::Stdout, true).await;
        while let Some((ack, bytes)) = self.acks.pop_front() {
            if let Err(e) = ack.await {
                tracing::debug!(subject = %self.subject, error = %e, bytes, "live output chunk not stored");
            }
        }
    }

    async fn take(&mut self, piece: Piece, pending: &mut [Pending; 2], due: &mut Option<Instant>) {
        if !self.bucket.take(piece.data.len(), Instant::now()) {
            self.dropped.fetch_add(piece.data.len() as u64, Ordering::Relaxed);
            return;
        }
        let p = &mut pending[usize::from(piece.pipe == Pipe::Stderr)];
        if p.step != piece.step {
            self.flush(p, true).await;
            p.step = piece.step;
        }
        p.bytes.extend_from_slice(&piece.data);
        if p.bytes.len() >= self.limits.chunk_bytes {
            self.flush(p, false).await;
        }
        if due.is_none() {
            *due = Some(Instant::now() + self.limits.flush);
        }
    }

    /// Sends a pipe's pending bytes, in chunks of at most
    /// [`Limits::chunk_bytes`] (so a chunk's JSON, every byte escaped at
    /// worst, stays under the stream's message limit); unless `all`, an
    /// unfinished character waits for the next.
    async fn flush(&mut self, p: &mut Pending, all: bool) {
        while !p.bytes.is_empty() {
            let window = p.bytes.len().min(self.limits.chunk_bytes);
            let n = match complete_utf8(&p.bytes[..window]) {
                _ if all && window == p.bytes.len() => window,
                // Only the start of a character is left (at most 3 bytes).
                0 if !all => return,
                0 => window,
                n => n,
            };
            let rest = p.bytes.split_off(n);
            let data = std::mem::replace(&mut p.bytes, rest);
            let text = String::from_utf8_lossy(&data).into_owned();
            self.send(text, p.step, p.pipe, false).await;
        }
    }

    async fn send(&mut self, data: String, step: usize, pipe: Pipe, end: bool) {
        while self.acks.len() >= ACKS_IN_FLIGHT {
            let (ack, bytes) = self.acks.pop_front().expect("not empty");
            if ack.await.is_err() {
                self.dropped.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        self.template.seq += 1;
        let chunk = OutputChunk {
            seq: self.template.seq,
            step,
            pipe,
            dropped: self.dropped.swap(0, Ordering::Relaxed),
            end,
            data,
            ..self.template.clone()
        };
        let bytes = chunk.data.len() as u64;
        match self.js.publish(self.subject.clone(), msg::encode(&chunk).into()).await {
            Ok(ack) => self.acks.push_back((ack, bytes)),
            Err(e) => {
                tracing::debug!(subject = %self.subject, error = %e, "live output chunk not sent");
                self.dropped.fetch_add(bytes + chunk.dropped, Ordering::Relaxed);
            }
        }
    }
}

/// Waits until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tx, mut rx) = mpsc::channel(1);
        let tee = Tee { tx, dropped: Arc::default(), step: 2 };
        tee.offer(Pipe::Stdout, b"first");
        tee.offer(Pipe::Stderr, b"second");
        tee.offer(Pipe::Stderr, b"");
        assert_eq!(tee.dropped.load(Ordering::Relaxed), 6);
        let piece = rx.try_recv().unwrap();
        assert_eq!((piece.step, piece.pipe, &piece.data[..]), (2, Pipe::Stdout, &b"first"[..]));
    }

    #[test]
    fn the_rate_cap_allows_a_burst_then_the_average() {
        let limits = Limits { rate: 1000, burst: 4000, ..LIMITS };
        let mut bucket = TokenBucket::new(limits);
        let t0 = bucket.at;
        assert!(bucket.take(4000, t0));
        assert!(!bucket.take(1, t0), "the burst is spent");
        let t1 = t0 + Duration::from_millis(500);
        assert!(bucket.take(500, t1));
        assert!(!bucket.take(100, t1));
        let t2 = t1 + Duration::from_secs(3600);
        assert!(bucket.take(4000, t2), "refilled up to the burst");
        assert!(!bucket.take(1, t2), "never above the burst");
    }
}
