//! Reading a stream's messages up to a known end.
//!
//! Silence is not the end: a slow server, or a busy client, can go quiet for
//! seconds in the middle of a read. The end is known instead: the
//! consumer's pending count at creation, each message's own count of what is
//! still pending after it, and optionally a last stream sequence wanted. A
//! read that stalls for longer than its `stall` bound, or whose consumer
//! goes away, fails loudly, never returns a shortened answer as if it were
//! whole.
//!
//! Pulls are bounded in bytes as well as in count ([`PULL_BYTES`]): with
//! records near the 1 MiB message limit, a count alone asks the server for
//! hundreds of megabytes at once, more than the client drains before the
//! server gives up on it as a slow consumer.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, Stream as Pull};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, stream::Stream};
use futures::StreamExt as _;

/// Messages asked for per pull.
pub const PULL_MESSAGES: usize = 500;

/// Bytes asked for per pull: above the largest message (1 MiB), a few
/// megabytes in flight at most.
pub const PULL_BYTES: usize = 4 * 1024 * 1024;

/// Why a read could not reach its end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read stream {stream}: {source}")]
    Open {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("reading stream {stream} failed with {pending} messages still to come: {source}")]
    Read {
        stream: String,
        pending: u64,
        #[source]
        source: async_nats::Error,
    },
    #[error("reading stream {stream} stalled for {stall:?} with {pending} messages still to come")]
    Stalled { stream: String, stall: Duration, pending: u64 },
}

/// What to read: the messages on `filter` from where `deliver` says, up to
/// the end of the stream when the read begins, or up to stream sequence
/// `up_to` if that comes first.
#[derive(Debug, Clone)]
pub struct Span {
    pub filter: String,
    pub deliver: DeliverPolicy,
    pub up_to: Option<u64>,
}

/// A read in progress: call [`ToEnd::next`] until it returns `None`.
pub struct ToEnd {
    stream: Stream,
    name: String,
    consumer: Option<String>,
    messages: Option<Pull>,
    pending: u64,
    up_to: Option<u64>,
    stall: Duration,
}

impl std::fmt::Debug for ToEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToEnd")
            .field("stream", &self.name)
            .field("pending", &self.pending)
            .field("up_to", &self.up_to)
            .finish_non_exhaustive()
    }
}

/// Starts reading `span` of `stream` with an ephemeral consumer (no acks, in
/// memory, one replica); the read ends with the last message that matched
/// when it began, or at `span.up_to`. An empty match costs one consumer
/// creation and reads nothing.
///
/// # Errors
/// When the consumer cannot be created.
pub async fn read_to_end(stream: &Stream, span: Span, stall: Duration) -> Result<ToEnd, ReadError> {
    let name = stream.cached_info().config.name.clone();
    let open = |e: async_nats::Error| ReadError::Open { stream: name.clone(), source: e };
    let config = pull::Config {
        filter_subject: span.filter,
        deliver_policy: span.deliver,
        ack_policy: AckPolicy::None,
        memory_storage: true,
        num_replicas: 1,
        // Deleted when the read ends; this only cleans up after a reader
        // that died.
        inactive_threshold: Duration::from_secs(60),
        ..Default::default()
    };
    let consumer = stream.create_consumer(config).await.map_err(|e| open(e.into()))?;
    let pending = consumer.cached_info().num_pending;
    let consumer_name = consumer.cached_info().name.clone();
    let mut read = ToEnd {
        stream: stream.clone(),
        name: name.clone(),
        consumer: Some(consumer_name),
        messages: None,
        pending,
        up_to: span.up_to,
        stall,
    };
    if pending == 0 {
        read.finish().await;
        return Ok(read);
    }
    let messages = consumer
        .stream()
        .max_messages_per_batch(PULL_MESSAGES)
        .max_bytes_per_batch(PULL_BYTES)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await;
    match messages {
        Ok(m) => read.messages = Some(m),
        Err(e) => {
            read.finish().await;
            return Err(open(e.into()));
        }
    }
    Ok(read)
}

impl ToEnd {
    /// The next message, or `None` after the last one.
    ///
    /// # Errors
    /// A read error, or no message within the stall bound while some are
    /// still pending.
    pub async fn next(&mut self) -> Option<Result<jetstream::Message, ReadError>> {
        let messages = self.messages.as_mut()?;
        let pending = self.pending;
        let next = match tokio::time::timeout(self.stall, messages.next()).await {
            Err(_) => Err(ReadError::Stalled { stream: self.name.clone(), stall: self.stall, pending }),
            Ok(None) => Err(ReadError::Read { stream: self.name.clone(), pending, source: "the consumer ended early".into() }),
            Ok(Some(Err(e))) => Err(ReadError::Read { stream: self.name.clone(), pending, source: e.into() }),
            Ok(Some(Ok(m))) => match m.info() {
                Ok(info) => {
                    // Each message says how many matching messages follow it.
                    self.pending = info.pending;
                    let seq = info.stream_sequence;
                    if self.up_to.is_some_and(|last| seq > last) {
                        self.finish().await;
                        return None;
                    }
                    Ok(m)
                }
                Err(e) => Err(ReadError::Read { stream: self.name.clone(), pending, source: e }),
            },
        };
        if next.is_err() || self.pending == 0 || self.up_to.is_some_and(|last| at(&next) >= last) {
            self.finish().await;
        }
        Some(next)
    }

    /// How many matching messages are still to come (to the stream's end).
    pub fn pending(&self) -> u64 {
        if self.messages.is_none() {
            0
        } else {
            self.pending
        }
    }

    /// Stops reading before the end (the caller has what it wanted).
    pub async fn close(mut self) {
        self.finish().await;
    }

    /// Stops reading and deletes the consumer (best effort: it also goes
    /// by itself once inactive).
    async fn finish(&mut self) {
        self.messages = None;
        if let Some(consumer) = self.consumer.take() {
            if let Err(e) = self.stream.delete_consumer(&consumer).await {
                tracing::debug!(stream = %self.name, consumer, error = %e, "read consumer not deleted");
            }
        }
    }
}

/// A message's stream sequence (0 for an error).
fn at(m: &Result<jetstream::Message, ReadError>) -> u64 {
    m.as_ref().ok().and_then(|m| m.info().ok()).map_or(0, |i| i.stream_sequence)
}
