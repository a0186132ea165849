//! Reading a stream's messages by batched Direct Get, up to a known end.
//!
//! Direct Get is read-only: a request names a stream and, in its body, where
//! to start (`seq` or `start_time`), which subjects (`next_by_subj`) and how
//! much (`batch`, `max_bytes`); nothing in it can create, change or deliver
//! anything anywhere. So one permission line (`$JS.API.DIRECT.GET.<stream>`)
//! lets a reader (the viewer included) read the stream and do nothing else,
//! which a consumer, whose settings (deliver subject, name, filter) travel
//! in its create request's body where no permission can confine them, cannot
//! offer. nats-server (2.11 and later; checked with 2.15.1) answers a batch
//! with up to `batch` messages, each with `Nats-Sequence`, `Nats-Subject`
//! and `Nats-Num-Pending` (how many matching messages follow it, to the
//! stream's end), then a status message `204 EOB` carrying
//! `Nats-Num-Pending` and `Nats-Last-Sequence`; `404` when nothing matches
//! from there on. It ignores `up_to_seq` for `next_by_subj` batches, so the
//! reader stops at its own end and drops what a batch brought beyond it
//! (at most one batch).
//!
//! Silence is not the end: a slow server, or a busy client, can go quiet for
//! seconds in the middle of a read. The end is known instead: each message's
//! and each batch's count of what is still pending, and the last stream
//! sequence wanted. A read that stalls for longer than its `stall` bound
//! fails loudly, never returns a shortened answer as if it were whole.
//!
//! Batches are bounded in bytes as well as in count ([`BATCH_BYTES`]): with
//! records near the 1 MiB message limit, a count alone would ask the server
//! for hundreds of megabytes at once.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::{Client, HeaderMap, StatusCode, Subscriber};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{FutureExt as _, StreamExt as _};
use muster_shared::subject::JS_API_PREFIX;

/// Messages asked for per batch.
pub const BATCH_MESSAGES: u64 = 500;

/// Bytes asked for per batch: above the largest message (1 MiB), a few
/// megabytes in flight at most.
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The status that ends a batch (`204 EOB`).
const END_OF_BATCH: u16 = 204;

/// Why a read could not reach its end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read stream {stream}: {source}")]
    Request {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("reading stream {stream} stalled for {stall:?} with {pending} messages still to come")]
    Stalled { stream: String, stall: Duration, pending: u64 },
    #[error("reading stream {stream}: the server answered {status} {description}")]
    Status { stream: String, status: u16, description: String },
    #[error("reading stream {stream}: a message without a valid {header} header")]
    Malformed { stream: String, header: &'static str },
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this stream sequence (or the first match after it).
    Seq(u64),
    /// At the first message stored at or after this time.
    Time(DateTime<Utc>),
}

/// What to read: the messages on `filter` from `from`, up to stream
/// sequence `up_to`, or without it to the stream's end (each batch says
/// how many matching messages are left).
#[derive(Debug, Clone)]
pub struct Span {
    pub filter: String,
    pub from: Start,
    pub up_to: Option<u64>,
}

/// One message of the stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
}

/// Direct Gets on one stream.
#[derive(Debug, Clone)]
pub struct Reader {
    client: Client,
    stream: String,
    api: String,
    stall: Duration,
}

/// The body of a Direct Get request (nats-server's `JSApiMsgGetRequest`).
#[derive(Debug, serde::Serialize)]
struct GetRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_by_subj: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_by_subj: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_bytes: Option<usize>,
}

impl GetRequest<'_> {
    fn start(from: Start) -> (Option<u64>, Option<DateTime<Utc>>) {
        match from {
            Start::Seq(seq) => (Some(seq), None),
            Start::Time(t) => (None, Some(t)),
        }
    }
}

impl Reader {
    /// Reads `stream` (which must allow Direct Get) through `client`; a read
    /// fails when no answer comes within `stall`.
    pub fn new(client: Client, stream: &str, stall: Duration) -> Reader {
        Reader { client, stream: stream.to_owned(), api: format!("{JS_API_PREFIX}.DIRECT.GET.{stream}"), stall }
    }

    /// The last message on `filter`; `None` when there is none, or no
    /// stream at all (no one answers).
    ///
    /// # Errors
    /// When the request fails or gets no answer.
    pub async fn last(&self, filter: &str) -> Result<Option<Stored>, ReadError> {
        self.one(&GetRequest {
            seq: None,
            start_time: None,
            next_by_subj: None,
            last_by_subj: Some(filter),
            batch: None,
            max_bytes: None,
        })
        .await
    }

    /// The first message on `filter` at or after `from`; `None` when there
    /// is none, or no stream at all.
    ///
    /// # Errors
    /// When the request fails or gets no answer.
    pub async fn first(&self, filter: &str, from: Start) -> Result<Option<Stored>, ReadError> {
        let (seq, start_time) = GetRequest::start(from);
        self.one(&GetRequest { seq, start_time, next_by_subj: Some(filter), last_by_subj: None, batch: None, max_bytes: None })
            .await
    }

    async fn one(&self, body: &GetRequest<'_>) -> Result<Option<Stored>, ReadError> {
        let payload = Bytes::from(serde_json::to_vec(body).expect("a request serializes"));
        let request = self.client.request(self.api.clone(), payload);
        let m = match tokio::time::timeout(self.stall, request).await {
            Err(_) => return Err(ReadError::Stalled { stream: self.stream.clone(), stall: self.stall, pending: 1 }),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                tracing::debug!(stream = self.stream, "no one answers Direct Gets: no stream");
                return Ok(None);
            }
            Ok(Err(e)) => return Err(ReadError::Request { stream: self.stream.clone(), source: e.into() }),
            Ok(Ok(m)) => m,
        };
        match m.status {
            None => Ok(Some(self.stored(m.headers.as_ref(), m.payload)?.0)),
            Some(StatusCode::NOT_FOUND) => Ok(None),
            Some(status) => Err(self.status(status, m.description)),
        }
    }

    /// Starts reading `span` (asks for its first batch): call
    /// [`ToEnd::next`] until it returns `None`.
    ///
    /// # Errors
    /// When the reply subscription cannot be made or the request sent.
    pub async fn read(&self, span: Span) -> Result<ToEnd, ReadError> {
        let inbox = self.client.new_inbox();
        let replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| ReadError::Request { stream: self.stream.clone(), source: e.into() })?;
        let mut read = ToEnd { reader: self.clone(), inbox, replies, span, arrived: VecDeque::new(), ended: false, pending: 0 };
        read.ask().await?;
        Ok(read)
    }

    /// A message's sequence, subject and count of matches after it.
    fn stored(&self, headers: Option<&HeaderMap>, payload: Bytes) -> Result<(Stored, Option<u64>), ReadError> {
        let header = |name: &'static str| headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
        let malformed = |header| ReadError::Malformed { stream: self.stream.clone(), header };
        let seq = header("Nats-Sequence").and_then(|s| s.parse().ok()).ok_or_else(|| malformed("Nats-Sequence"))?;
        let subject = header("Nats-Subject").ok_or_else(|| malformed("Nats-Subject"))?;
        let pending = header("Nats-Num-Pending").and_then(|s| s.parse().ok());
        Ok((Stored { seq, subject, payload }, pending))
    }

    fn status(&self, status: StatusCode, description: Option<String>) -> ReadError {
        ReadError::Status { stream: self.stream.clone(), status: status.as_u16(), description: description.unwrap_or_default() }
    }
}

/// A read in progress.
///
/// Replies are taken in as they arrive, ahead of the caller, so a batch's
/// end is seen and the next batch asked for while the caller still works
/// through the records: the server serves one batch while the caller reads
/// the previous one. At most two batches are held (one taken in, one on
/// the way), so memory stays within twice [`BATCH_BYTES`].
pub struct ToEnd {
    reader: Reader,
    inbox: String,
    replies: Subscriber,
    span: Span,
    /// Records taken in, not yet handed out.
    arrived: VecDeque<Stored>,
    /// No batch is to come: the end was reached, or the read failed.
    ended: bool,
    /// Matching messages still to come (to the stream's end), as last told.
    pending: u64,
}

impl std::fmt::Debug for ToEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToEnd")
            .field("stream", &self.reader.stream)
            .field("span", &self.span)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl ToEnd {
    /// The next message, or `None` after the last one.
    ///
    /// # Errors
    /// A request error, an error status, or no answer within the stall
    /// bound while some are still to come.
    pub async fn next(&mut self) -> Option<Result<Stored, ReadError>> {
        loop {
            // What has arrived already, without waiting.
            while !self.ended {
                match self.replies.next().now_or_never() {
                    Some(Some(m)) => {
                        if let Err(e) = self.take(m).await {
                            return Some(Err(self.fail(e)));
                        }
                    }
                    Some(None) => return Some(Err(self.fail(self.closed()))),
                    None => break,
                }
            }
            if let Some(m) = self.arrived.pop_front() {
                return Some(Ok(m));
            }
            if self.ended {
                return None;
            }
            let stall = self.reader.stall;
            match tokio::time::timeout(stall, self.replies.next()).await {
                Err(_) => {
                    let pending = self.pending.max(1);
                    let stalled = ReadError::Stalled { stream: self.reader.stream.clone(), stall, pending };
                    return Some(Err(self.fail(stalled)));
                }
                Ok(None) => return Some(Err(self.fail(self.closed()))),
                Ok(Some(m)) => {
                    if let Err(e) = self.take(m).await {
                        return Some(Err(self.fail(e)));
                    }
                }
            }
        }
    }

    /// Takes in one reply: a record (kept unless past the span's end), the
    /// end of a batch (then the next batch is asked for, or the read ends),
    /// or a status.
    async fn take(&mut self, m: async_nats::Message) -> Result<(), ReadError> {
        match m.status {
            None => {
                let (stored, pending) = self.reader.stored(m.headers.as_ref(), m.payload)?;
                // Past the end, the rest of this batch is too.
                if self.span.up_to.is_none_or(|last| stored.seq <= last) {
                    self.pending = pending.unwrap_or(self.pending);
                    self.arrived.push_back(stored);
                }
                Ok(())
            }
            Some(s) if s.as_u16() == END_OF_BATCH => {
                let header = |name| m.headers.as_ref().and_then(|h| h.get(name)).and_then(|v| v.as_str().parse::<u64>().ok());
                let (Some(pending), Some(last)) = (header("Nats-Num-Pending"), header("Nats-Last-Sequence")) else {
                    return Err(ReadError::Malformed { stream: self.reader.stream.clone(), header: "Nats-Num-Pending" });
                };
                self.pending = pending;
                if pending == 0 || self.span.up_to.is_some_and(|up_to| last >= up_to) {
                    self.ended = true;
                    return Ok(());
                }
                self.span.from = Start::Seq(last + 1);
                self.ask().await
            }
            // Nothing matches from where the read began: the end. After a
            // batch said more were to come, it is a short answer (a replica
            // behind the one that answered before, messages removed
            // meanwhile), never taken for the end.
            Some(StatusCode::NOT_FOUND) if self.pending == 0 => {
                self.ended = true;
                Ok(())
            }
            Some(status) => Err(self.reader.status(status, m.description)),
        }
    }

    /// Ends the read with `e`: nothing more is handed out.
    fn fail(&mut self, e: ReadError) -> ReadError {
        self.ended = true;
        self.arrived.clear();
        e
    }

    fn closed(&self) -> ReadError {
        ReadError::Request { stream: self.reader.stream.clone(), source: "the reply subscription ended".into() }
    }

    /// Asks for the next batch: at most [`BATCH_MESSAGES`], and no more than
    /// the span still holds, in at most [`BATCH_BYTES`].
    async fn ask(&mut self) -> Result<(), ReadError> {
        let (seq, start_time) = GetRequest::start(self.span.from);
        let left = match (self.span.from, self.span.up_to) {
            (Start::Seq(from), Some(up_to)) if up_to < from => {
                self.ended = true;
                return Ok(());
            }
            (Start::Seq(from), Some(up_to)) => up_to - from + 1,
            _ => BATCH_MESSAGES,
        };
        let body = GetRequest {
            seq,
            start_time,
            next_by_subj: Some(&self.span.filter),
            last_by_subj: None,
            batch: Some(left.min(BATCH_MESSAGES)),
            max_bytes: Some(BATCH_BYTES),
        };
        let payload = Bytes::from(serde_json::to_vec(&body).expect("a request serializes"));
        self.reader
            .client
            .publish_with_reply(self.reader.api.clone(), self.inbox.clone(), payload)
            .await
            .map_err(|e| ReadError::Request { stream: self.reader.stream.clone(), source: e.into() })
    }
}
