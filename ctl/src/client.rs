//! Calling the master's API: one typed request/reply, used by `musterctl`
//! (and by anything else that wants to script Muster from Rust, such as the
//! benchmark).
//!
//! A reply too big for one NATS message comes in ordered parts
//! ([`CHUNK_HEADER`]); the client puts them back together, refuses a reply
//! with a part missing, and stops reading at [`ApiClient::max_reply_bytes`]
//! so a broken or hostile responder cannot make it buffer without bound.
//!
//! Given the connection's [`Refusals`], a request the server refuses for
//! the user's permissions (a viewer asking for a change: nats-server drops
//! it and says so on the connection) ends at once with
//! `permission_denied`, instead of waiting out the timeout.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use muster_runtime::nats::{Refusal, Refusals};
use muster_shared::api::{parse_chunk, ApiError, ErrorCode, MasterSeen, Op, Reply, Request, CHUNK_HEADER};
use muster_shared::subject::Subjects;
use muster_shared::{msg, MAX_REPLY_BYTES};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How often a call that waits checks that a master is still serving.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ApiClient {
    pub client: async_nats::Client,
    pub subjects: Subjects,
    /// Per call. Force-polls and starts wait for targets, so keep it above the
    /// master's own force-poll timeout.
    pub timeout: Duration,
    /// The largest reply, all parts together, the client takes.
    pub max_reply_bytes: usize,
    /// The server's permission refusals on `client`'s connection, when
    /// known (`muster_runtime::nats::connect_watching`).
    pub refusals: Option<Refusals>,
}

impl ApiClient {
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        Self { client, subjects, timeout: Duration::from_secs(30), max_reply_bytes: MAX_REPLY_BYTES, refusals: None }
    }

    /// Watches `refusals`, the permission refusals of `client`'s connection.
    #[must_use]
    pub fn with_refusals(mut self, refusals: Refusals) -> Self {
        self.refusals = Some(refusals);
        self
    }

    /// Runs `work` (JetStream reads, say), ended at once with
    /// `permission_denied` if the server refuses this user anything while
    /// it runs.
    ///
    /// # Errors
    /// `permission_denied`.
    pub async fn unless_refused<T>(&self, work: impl Future<Output = T>) -> Result<T, ApiError> {
        let mut watch = self.refusals.as_ref().map(Refusals::watch);
        tokio::select! {
            done = work => Ok(done),
            refused = refused(watch.as_mut(), |_| true) => Err(refused),
        }
    }

    /// Sends `{"v":1, ...body}` to `muster.api.<access>.<op>` and decodes the reply.
    ///
    /// While it waits, it checks every [`LIVENESS_EVERY`] that a master is
    /// still serving: a master that died mid-request (and no other one
    /// left) ends the call at once with `master_unavailable`, instead of
    /// the whole timeout and a misleading "timeout".
    ///
    /// # Errors
    /// `master_unavailable` when no master answers or the last one went
    /// away; `permission_denied` when the server refused the request (this
    /// user may not call `op`); otherwise the master's own error.
    pub async fn call<B: Serialize, R: DeserializeOwned>(&self, op: Op, body: B) -> Result<R, ApiError> {
        let payload = msg::encode(&Request::new(body));
        let subject = self.subjects.api(op);
        // Watching before the publish, so a refusal cannot come first.
        let mut watch = self.refusals.as_ref().map(Refusals::watch);
        let answer = async {
            tokio::select! {
                reply = self.exchange(&subject, payload) => reply,
                gone = self.until_no_master() => Err(gone),
                denied = refused(watch.as_mut(), |s| s == subject) => Err(denied),
            }
        };
        let reply = tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| ApiError::new(ErrorCode::Timeout, format!("no answer on {subject} within {:?}", self.timeout)))??;
        msg::decode_within::<Reply<R>>(&reply, self.max_reply_bytes)?.into_result()
    }

    /// Returns once no master serves this installation any more: a ping of
    /// the service (`$SRV.PING.<service>`) every [`LIVENESS_EVERY`] that
    /// NATS answers with "no responders". A ping that is answered, or that
    /// fails otherwise (a reconnect), proves nothing either way.
    async fn until_no_master(&self) -> ApiError {
        let ping = self.subjects.service_ping();
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + LIVENESS_EVERY, LIVENESS_EVERY);
        loop {
            every.tick().await;
            let asked = tokio::time::timeout(LIVENESS_EVERY, self.client.request(ping.clone(), "".into())).await;
            if let Ok(Err(e)) = asked {
                if e.kind() == async_nats::RequestErrorKind::NoResponders {
                    return ApiError::new(
                        ErrorCode::MasterUnavailable,
                        "the master stopped while it handled the request (no master answers any more): \
                         it may or may not have made the change; check, then retry",
                    );
                }
            }
        }
    }

    /// One request, and its reply gathered from its parts when the master
    /// had to split it ([`CHUNK_HEADER`]). A subscription of its own rather
    /// than `Client::request`, which takes only the first message.
    async fn exchange(&self, subject: &str, payload: Vec<u8>) -> Result<Vec<u8>, ApiError> {
        let unreachable =
            |e: &dyn std::fmt::Display| ApiError::new(ErrorCode::MasterUnavailable, format!("calling {subject}: {e}"));
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
            let Some((part, parts)) = part else {
                return Ok(body);
            };
            // Parts come in order on one subscription; a gap means one was lost.
            parts_seen += 1;
            if part != parts_seen {
                return Err(ApiError::internal(format!(
                    "the answer on {subject} came with a part missing (got part {part} of {parts} after part {})",
                    parts_seen - 1
                )));
            }
            if body.len() > self.max_reply_bytes {
                return Err(ApiError::internal(format!("the answer on {subject} is over {} bytes", self.max_reply_bytes)));
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
        let unreachable =
            |e: &dyn std::fmt::Display| ApiError::new(ErrorCode::MasterUnavailable, format!("pinging masters: {e}"));
        let inbox = self.client.new_inbox();
        let mut answers = self.client.subscribe(inbox.clone()).await.map_err(|e| unreachable(&e))?;
        let ping = self.subjects.service_ping();
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

/// The first refusal `wanted` accepts, as `permission_denied`; never, without
/// a watch.
async fn refused(watch: Option<&mut muster_runtime::nats::Watch>, wanted: impl Fn(&str) -> bool) -> ApiError {
    match watch {
        Some(w) => denied(&w.next(wanted).await),
        None => std::future::pending().await,
    }
}

fn denied(r: &Refusal) -> ApiError {
    ApiError::new(ErrorCode::PermissionDenied, r)
}

#[cfg(test)]
mod tests {
    use async_nats::HeaderMap;
    use muster_shared::api::StatusSummary;
    use muster_tests::NatsServer;

    use super::*;

    /// One message of a reply: its chunk header, if any, and its body.
    type Part = (Option<String>, Vec<u8>);

    /// A stand-in for the master's `status` endpoint on a real nats-server
    /// that answers every request with `parts`, each a `(header, body)`.
    async fn answering(client: &async_nats::Client, subjects: &Subjects, parts: Vec<Part>) {
        let mut requests = client.subscribe(subjects.api(Op::Status)).await.unwrap();
        client.flush().await.unwrap();
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let reply = request.reply.expect("a request");
                for (header, body) in &parts {
                    let mut headers = HeaderMap::new();
                    if let Some(h) = header {
                        headers.insert(CHUNK_HEADER, h.as_str());
                    }
                    client.publish_with_headers(reply.clone(), headers, body.clone().into()).await.unwrap();
                }
            }
        });
    }

    /// A whole `status` reply, encoded, cut into `n` parts.
    fn reply_in_parts(n: usize) -> (StatusSummary, Vec<Part>) {
        let summary = StatusSummary {
            targets_by_status: [("normal".to_owned(), 10_000)].into(),
            attention: Vec::new(),
            jobs: 3,
            groups: 2,
            failing: Vec::new(),
            pending_instructions: 7,
            failed_instructions: 1,
        };
        let body = msg::encode(&Reply::from_result(Ok::<_, ApiError>(summary.clone())));
        let size = body.len().div_ceil(n);
        let parts = body.chunks(size).enumerate().map(|(i, c)| (Some(format!("{}/{n}", i + 1)), c.to_vec())).collect();
        (summary, parts)
    }

    async fn client_of(server: &NatsServer) -> ApiClient {
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut api = ApiClient::new(client, Subjects::default());
        api.timeout = Duration::from_secs(10);
        api
    }

    #[tokio::test]
    async fn parts_in_order_make_the_whole_reply() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(dir.path());
        let api = client_of(&server).await;
        let (summary, parts) = reply_in_parts(3);
        assert_eq!(parts.len(), 3);
        answering(&api.client, &api.subjects, parts).await;
        let got: StatusSummary = api.call(Op::Status, ()).await.unwrap();
        assert_eq!(got, summary);
    }

    #[tokio::test]
    async fn a_missing_part_is_refused_not_glued_over() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(dir.path());
        let api = client_of(&server).await;
        let (_, mut parts) = reply_in_parts(3);
        parts.remove(1);
        answering(&api.client, &api.subjects, parts).await;
        let err = api.call::<_, StatusSummary>(Op::Status, ()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Internal, "{err:?}");
        assert!(err.message.contains("got part 3 of 3 after part 1"), "{err:?}");
    }

    #[tokio::test]
    async fn a_reply_over_the_size_limit_is_refused_part_way() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(dir.path());
        let mut api = client_of(&server).await;
        let (_, parts) = reply_in_parts(4);
        let first_two: usize = parts.iter().take(2).map(|(_, b)| b.len()).sum();
        // The first part fits, the second goes over: the client stops there.
        api.max_reply_bytes = first_two - 1;
        answering(&api.client, &api.subjects, parts).await;
        let err = api.call::<_, StatusSummary>(Op::Status, ()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Internal, "{err:?}");
        assert!(err.message.contains(&format!("is over {} bytes", first_two - 1)), "{err:?}");
    }

    #[tokio::test]
    async fn no_master_is_master_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(dir.path());
        let api = client_of(&server).await;
        let err = api.call::<_, StatusSummary>(Op::Status, ()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::MasterUnavailable, "{err:?}");
    }
}
