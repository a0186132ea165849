//! The `muster` NATS service: every admin operation, and the calls targets
//! make about themselves.
//!
//! Each [`Op`] is an endpoint on `muster.api.read.<op>` or
//! `muster.api.admin.<op>` ([`Op::access`]: one permission line keeps a
//! viewer out of every change); agents enlist on
//! `muster.api.agent.<t>.enlist`, a subject that carries their own name so
//! server permissions can pin it. All master replicas serve the same queue
//! group, so any one of them answers. A request is decoded in one place
//! ([`msg::decode`]); bad input gets an error reply, is logged with its
//! subject and counted, and never stops the service.
//!
//! This file is the service's plumbing: registering the endpoints, the
//! request loop and the dispatch of each operation to its handler. The
//! handlers live one file per resource: `targets`, `agent` (what agents
//! call about themselves), `jobs`, `exec` (one-off commands, as start entries), `groups`, `posting` (set-poll,
//! sync-time, resync, the download list) and `summary`; `desired` publishes
//! what each change means for the targets' desired state; `reply` encodes
//! answers and splits big ones, and `error` is where store errors become
//! wire errors.

mod agent;
mod desired;
mod error;
mod exec;
mod groups;
mod jobs;
mod posting;
mod reply;
mod summary;
mod targets;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use muster_shared::api::{self as wire, ApiError, ErrorCode, JobRef, JobWrite, Op, Request, TargetRef};
use muster_shared::msg;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::MasterConfig;
use crate::publish::Publisher;
use crate::store::Store;

pub use jobs::job_info;
pub use targets::DEFAULT_POLL_INTERVAL_SECS;

/// Control requests (force-polls, stops) one operation has out at once.
const CONTROL_IN_FLIGHT: usize = 128;

/// Where a request came in.
#[derive(Debug, Clone, Copy)]
enum Route {
    Admin(Op),
    AgentEnlist,
    AgentDefect,
}

/// Counters exposed in the service's stats (`nats micro stats muster`).
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub bad_requests: AtomicU64,
}

/// Everything a handler needs.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub client: async_nats::Client,
    pub store: Store,
    pub config: MasterConfig,
    pub metrics: Arc<Metrics>,
    pub publisher: Publisher,
}

impl Ctx {
    pub fn new(client: async_nats::Client, store: Store, publisher: Publisher, config: MasterConfig) -> Ctx {
        Ctx { client, store, config, metrics: Arc::new(Metrics::default()), publisher }
    }

    /// Calls `op` in-process, through the same dispatch as a request on its
    /// NATS endpoint (decoding, validation, counting, logging), for the web
    /// console. Callers decide who may call what ([`Op::access`]) before.
    ///
    /// # Errors
    /// The operation's error, as a client would get it.
    pub async fn call<B: Serialize, R: DeserializeOwned>(&self, op: Op, body: B) -> Result<R, ApiError> {
        let payload = msg::encode(&Request::new(body));
        // Boxed: the dispatch holds every operation's future, too big to
        // sit inside each caller's (the API loop spawns it for the same reason).
        let subject = self.config.subjects.api(op);
        let reply = Box::pin(self.handle(Route::Admin(op), &subject, &payload)).await;
        // Not `msg::decode`: an in-process answer has no message size cap.
        serde_json::from_slice::<wire::Reply<R>>(&reply)
            .map_err(|e| ApiError::internal(format!("decoding the answer to {}: {e}", op.subject())))?
            .into_result()
    }
}

/// Serves the API until `shutdown`; `serving` is told once every endpoint
/// is registered.
///
/// # Errors
/// When the service or one of its endpoints cannot be registered.
pub async fn serve(ctx: Ctx, shutdown: CancellationToken, serving: tokio::sync::oneshot::Sender<()>) -> anyhow::Result<()> {
    let (client, config) = (ctx.client.clone(), ctx.config.clone());
    let stats_metrics = ctx.metrics.clone();
    let service = client
        .service_builder()
        .description("Muster master: multiserver job administration")
        .stats_handler(move |_endpoint, _stats| {
            serde_json::json!({
                "requests": stats_metrics.requests.load(Ordering::Relaxed),
                "bad_requests": stats_metrics.bad_requests.load(Ordering::Relaxed),
            })
        })
        .start(config.subjects.service_name(), muster_shared::AGENT_VERSION)
        .await
        .map_err(|e| anyhow::anyhow!("starting the NATS service: {e}"))?;

    let mut endpoints = Vec::new();
    for &op in Op::ALL {
        let ep = service
            .endpoint_builder()
            .name(op.endpoint_name())
            .add(config.subjects.api(op))
            .await
            .map_err(|e| anyhow::anyhow!("endpoint {}: {e}", op.subject()))?;
        endpoints.push(ep.map(move |r| (Route::Admin(op), r)).boxed());
    }
    for (op, route) in [(wire::AGENT_ENLIST, Route::AgentEnlist), (wire::AGENT_DEFECT, Route::AgentDefect)] {
        let ep = service
            .endpoint_builder()
            .name(format!("agent-{op}"))
            .add(config.subjects.agent_api_pattern(op))
            .await
            .map_err(|e| anyhow::anyhow!("agent endpoint {op}: {e}"))?;
        endpoints.push(ep.map(move |r| (route, r)).boxed());
    }
    let mut requests = futures::stream::select_all(endpoints);
    tracing::info!(
        service = %config.subjects.service_name(),
        read = %config.subjects.api_all(wire::Access::Read),
        admin = %config.subjects.api_all(wire::Access::Admin),
        "serving the API"
    );
    // Background work that should not delay the service (reconcile) starts now.
    serving.send(()).ok();

    let limit = Arc::new(Semaphore::new(config.max_concurrent_requests));
    loop {
        let (route, request) = tokio::select! {
            () = shutdown.cancelled() => break,
            next = requests.next() => match next {
                Some(r) => r,
                None => anyhow::bail!("the API subscription ended"),
            },
        };
        let permit = limit.clone().acquire_owned().await.expect("semaphore never closes");
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let subject = request.message.subject.to_string();
            if matches!(route, Route::AgentEnlist | Route::AgentDefect)
                && !ctx.agent_reply_ok(&subject, request.message.reply.as_deref())
            {
                return;
            }
            let answer = ctx.handle(route, &subject, &request.message.payload).await;
            if let Err(e) = reply::send(&ctx.client, request, answer).await {
                tracing::warn!(subject, error = %e, "could not send the API reply");
            }
            drop(permit);
        });
    }
    service.stop().await.ok();
    Ok(())
}

impl Ctx {
    async fn handle(&self, route: Route, subject: &str, payload: &[u8]) -> Vec<u8> {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let answer = match route {
            Route::AgentEnlist => self.agent_enlist(subject, payload).await,
            Route::AgentDefect => self.agent_defect(subject, payload).await,
            Route::Admin(op) => self.admin(op, payload).await,
        };
        if let Err(e) = &answer {
            if matches!(e.code, ErrorCode::InvalidRequest | ErrorCode::BadVersion) {
                self.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject, error = %e, "refused bad API request");
            } else {
                tracing::debug!(subject, error = %e, "API request failed");
            }
        }
        match answer {
            Ok(bytes) => bytes,
            Err(e) => reply::encode::<()>(Err(e)),
        }
    }

    async fn admin(&self, op: Op, p: &[u8]) -> Result<Vec<u8>, ApiError> {
        fn ok<T: Serialize>(v: T) -> Result<Vec<u8>, ApiError> {
            Ok(reply::encode(Ok(v)))
        }
        match op {
            Op::TargetEnlist => ok(self.enlist(body(p)?, None).await?),
            Op::TargetDefect => ok(self.defect(body(p)?).await?),
            Op::TargetList => ok(self.target_list().await?),
            Op::TargetShow => ok(self.target_info(&self.store.target(&body::<TargetRef>(p)?.name).await?).await),
            Op::TargetForcePoll => ok(self.force_poll_enlisted(&body::<TargetRef>(p)?.name).await?),
            Op::TargetForcePollMany => ok(self.force_poll_many(&body(p)?).await?),
            Op::JobCreate => ok(self.job_create(body::<JobWrite>(p)?.spec).await?),
            Op::JobUpdate => ok(self.job_update(body::<JobWrite>(p)?.spec).await?),
            Op::JobDelete => ok(self.job_delete(body(p)?).await?),
            Op::JobList => ok(self.job_list().await?),
            Op::JobShow => ok(job_info(&self.store.job(&body::<JobRef>(p)?.job).await?.0)),
            Op::JobAssign => ok(self.job_assign(body(p)?, true).await?),
            Op::JobUnassign => ok(self.job_assign(body(p)?, false).await?),
            Op::JobStart => ok(self.job_start(body(p)?).await?),
            Op::JobStop => ok(self.job_stop(body(p)?).await?),
            Op::JobEnable => ok(self.job_enable(body(p)?, true).await?),
            Op::JobDisable => ok(self.job_enable(body(p)?, false).await?),
            Op::JobStatus => ok(self.job_status(body(p)?).await?),
            Op::TargetSetPoll => ok(self.set_poll(body(p)?).await?),
            Op::TargetSyncTime => ok(self.sync_time(body(p)?).await?),
            Op::TargetResync => ok(self.resync(body(p)?).await?),
            Op::GroupCreate => ok(self.group_create(body(p)?).await?),
            Op::GroupDelete => ok(self.group_delete(body(p)?).await?),
            Op::GroupList => ok(self.group_list().await?),
            Op::GroupAdd => ok(self.group_members(body(p)?, true).await?),
            Op::GroupRemove => ok(self.group_members(body(p)?, false).await?),
            Op::Instructions => ok(self.instructions(body(p)?).await?),
            Op::Status => ok(self.status().await?),
            Op::Exec => ok(self.exec(body(p)?).await?),
        }
    }
}

/// Decodes a request body (`{"v":1,...}`).
fn body<T: DeserializeOwned>(p: &[u8]) -> Result<T, ApiError> {
    msg::decode::<Request<T>>(p).map(|r| r.body)
}
