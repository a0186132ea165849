//! Calling the master's API: one typed request/reply, used by `musterctl`
//! (and by anything else that wants to script Muster from Rust).

use std::time::Duration;

use muster_shared::api::{ApiError, ErrorCode, Op, Reply, Request};
use muster_shared::msg;
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
        let sent = tokio::time::timeout(self.timeout, self.client.request(subject.clone(), payload.into())).await;
        let message = match sent {
            Err(_) => return Err(ApiError::new(ErrorCode::Timeout, format!("no answer on {subject} within {:?}", self.timeout))),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Err(ApiError::new(
                    ErrorCode::MasterUnavailable,
                    format!("no master is serving {subject}: is muster-master running and connected to this NATS?"),
                ))
            }
            Ok(Err(e)) => return Err(ApiError::new(ErrorCode::MasterUnavailable, format!("calling {subject}: {e}"))),
            Ok(Ok(m)) => m,
        };
        msg::decode::<Reply<R>>(&message.payload)?.into_result()
    }
}
