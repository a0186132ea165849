//! Calling the master's API: one typed request/reply, used by `musterctl`
//! (and by anything else that wants to script Muster from Rust).

use std::time::Duration;

use futures::StreamExt;
use muster_shared::api::{parse_chunk, ApiError, ErrorCode, MasterSeen, Op, Reply, Request, CHUNK_HEADER};
use muster_shared::{msg, MAX_REPLY_BYTES};
use muster_shared::subject::Subjects;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct ApiClient {
    pub client: async_nats::Client,
    pub subjects: Subjects,
    /// Per call. Force-polls and starts wait for targets, so keep it above the
    /// master's own force-poll timeout.
    pub timeout: Duration,
}

impl ApiClient {
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        Self { client, subjects, timeout: Duration::from_secs(30) }
    }

    /// Sends `{"v":1, ...body}` to `muster.api.<op>` and decodes the reply.
    ///
    /// # Errors
    /// `master_unavailable` when no master answers; otherwise the master's
    /// own error.
    pub async fn call<B: Serialize, R: DeserializeOwned>(&self, op: Op, body: B) -> Result<R, ApiError> {
        let payload = msg::encode(&Request::new(body));
        let subject = self.subjects.api(op.subject());
        let reply = tokio::time::timeout(self.timeout, self.exchange(&subject, payload))
            .await
            .map_err(|_| ApiError::new(ErrorCode::Timeout, format!("no answer on {subject} within {:?}", self.timeout)))??;
        msg::decode_within::<Reply<R>>(&reply, MAX_REPLY_BYTES)?.into_result()
    }

    /// One request, and its reply gathered from its parts when the master
    /// had to split it ([`CHUNK_HEADER`]). A subscription of its own rather
    /// than `Client::request`, which takes only the first message.
    async fn exchange(&self, subject: &str, payload: Vec<u8>) -> Result<Vec<u8>, ApiError> {
        let unreachable = |e: &dyn std::fmt::Display| ApiError::new(ErrorCode::MasterUnavailable, format!("calling {subject}: {e}"));
        let inbox = self.client.new_inbox();
        let mut replies = self.client.subscribe(inbox.clone()).await.map_err(|e| unreachable(&e))?;
        self.client.publish_with_reply(subject.to_owned(), inbox, payload.into()).await.map_err(|e| unreachable(&e))?;
        let mut body = Vec::new();
        // How many parts the reply has, once its first part said so.
        let mut parts_seen = 0;
        loop {
            let Some(m) = replies.next().await else {
                return Err(unreachable(&"the connection closed"));
            };
            if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err(ApiError::new(
                    ErrorCode::MasterUnavailable,
                    format!("no master is serving {subject}: is muster-master running and connected to this NATS?"),
                ));
            }
            let part = m.headers.as_ref().and_then(|h| h.get(CHUNK_HEADER)).and_then(|v| parse_chunk(v.as_str()));
            body.extend_from_slice(&m.payload);
            let Some((part, parts)) = part else { return Ok(body) };
            // Parts come in order on one subscription; a gap means one was lost.
            parts_seen += 1;
            if part != parts_seen {
                return Err(ApiError::internal(format!(
                    "the answer on {subject} came with a part missing (got part {part} of {parts} after part {})",
                    parts_seen - 1
                )));
            }
            if body.len() > MAX_REPLY_BYTES {
                return Err(ApiError::internal(format!("the answer on {subject} is over {MAX_REPLY_BYTES} bytes")));
            }
            if part == parts {
                return Ok(body);
            }
        }
    }

    /// Every master replica that answers the Service API's `$SRV.PING` for
    /// this installation's service, collected for `wait`.
    ///
    /// # Errors
    /// `master_unavailable` when NATS cannot be reached.
    pub async fn masters_seen(&self, wait: Duration) -> Result<Vec<MasterSeen>, ApiError> {
        let unreachable = |e: &dyn std::fmt::Display| ApiError::new(ErrorCode::MasterUnavailable, format!("pinging masters: {e}"));
        let inbox = self.client.new_inbox();
        let mut answers = self.client.subscribe(inbox.clone()).await.map_err(|e| unreachable(&e))?;
        let ping = format!("$SRV.PING.{}", self.subjects.service_name());
        self.client.publish_with_reply(ping, inbox, "".into()).await.map_err(|e| unreachable(&e))?;
        self.client.flush().await.map_err(|e| unreachable(&e))?;
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, answers.next()).await {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) {
                let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
                seen.push(MasterSeen { id: field("id"), version: field("version") });
            }
        }
        seen.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(seen)
    }
}
