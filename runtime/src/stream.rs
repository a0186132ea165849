//! Reading a stream's messages up to where it ended when the read began.
//!
//! Silence is not the end: a slow server, or a reader cut off as a slow
//! consumer and resumed, can go quiet for seconds in the middle of a read.
//! The end is known instead: the consumer's pending count at creation, and
//! each message's own count of what is still pending after it. A read that
//! stalls for longer than its `stall` bound fails loudly, never returns a
//! shortened answer as if it were whole.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::{self, stream::Stream};
use futures::StreamExt as _;

/// Why a read could not reach its end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read stream {stream}: {source}")]
    Open {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("reading stream {stream}: {source}")]
    Read {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("reading stream {stream} stalled for {stall:?} with {pending} messages still to come")]
    Stalled { stream: String, stall: Duration, pending: u64 },
}

/// A read in progress: call [`ToEnd::next`] until it returns `None`.
pub struct ToEnd {
    stream: String,
    messages: Option<Ordered>,
    pending: u64,
    stall: Duration,
}

impl std::fmt::Debug for ToEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToEnd").field("stream", &self.stream).field("pending", &self.pending).finish_non_exhaustive()
    }
}

/// Starts reading `stream` with an ordered consumer made from `config`
/// (filter and deliver policy); the read ends with the last message that
/// matched when it began. An empty match costs one consumer creation and
/// reads nothing.
///
/// # Errors
/// When the consumer cannot be created.
pub async fn read_to_end(stream: &Stream, config: OrderedConfig, stall: Duration) -> Result<ToEnd, ReadError> {
    let name = stream.cached_info().config.name.clone();
    let consumer =
        stream.create_consumer(config).await.map_err(|e| ReadError::Open { stream: name.clone(), source: e.into() })?;
    let pending = consumer.cached_info().num_pending;
    let messages = if pending == 0 {
        None
    } else {
        Some(consumer.messages().await.map_err(|e| ReadError::Open { stream: name.clone(), source: e.into() })?)
    };
    Ok(ToEnd { stream: name, messages, pending, stall })
}

impl ToEnd {
    /// The next message, or `None` after the last one.
    ///
    /// # Errors
    /// A read error, or no message within the stall bound while some are
    /// still pending.
    pub async fn next(&mut self) -> Option<Result<jetstream::Message, ReadError>> {
        let messages = self.messages.as_mut()?;
        let next = match tokio::time::timeout(self.stall, messages.next()).await {
            Err(_) => Err(ReadError::Stalled { stream: self.stream.clone(), stall: self.stall, pending: self.pending }),
            Ok(None) => Err(ReadError::Read { stream: self.stream.clone(), source: "the consumer ended early".into() }),
            Ok(Some(Err(e))) => Err(ReadError::Read { stream: self.stream.clone(), source: e.into() }),
            Ok(Some(Ok(m))) => {
                // Each message says how many matching messages follow it.
                self.pending = m.info().map(|i| i.pending).unwrap_or(0);
                Ok(m)
            }
        };
        if next.is_err() || self.pending == 0 {
            self.messages = None;
        }
        Some(next)
    }

    /// How many matching messages are still to come.
    pub fn pending(&self) -> u64 {
        if self.messages.is_none() {
            0
        } else {
            self.pending
        }
    }
}
