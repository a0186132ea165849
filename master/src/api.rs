//! The `muster` NATS service: every admin operation, and the calls targets
//! make about themselves.
//!
//! Each [`Op`] is an endpoint on `muster.api.<op>`; agents enlist on
//! `muster.api.agent.<t>.enlist`, a subject that carries their own name so
//! server permissions can pin it. All master replicas serve the same queue
//! group, so any one of them answers. A request is decoded in one place
//! ([`msg::decode`]); bad input gets an error reply, is logged with its
//! subject and counted, and never stops the service.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use chrono::Utc;
use futures::StreamExt;
use muster_shared::api::{
    self as wire, ApiError, Delivery, EnlistRequest, ErrorCode, JobInfo, JobRef, JobSelect,
    JobTargetStatus, JobWrite, Op, Reply, Request, Selection, TargetInfo, TargetRef, TargetStatus,
};
use muster_shared::job::JobSpec;
use muster_shared::msg::{self, ControlOp, ControlReply, ControlRequest, InstructionOp, PollReport};
use muster_shared::name::TargetName;
use muster_shared::PROTOCOL_VERSION;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::MasterConfig;
use crate::post;
use crate::store::{JobRecord, Store, TargetRecord};

/// Default poll interval for a target that does not say (SQL Server's too).
pub const DEFAULT_POLL_INTERVAL_SECS: u64 = 60;
/// The range `set-poll` accepts, as in SQL Server.
pub const POLL_INTERVAL_RANGE: std::ops::RangeInclusive<u64> = 10..=28_800;

/// Where a request came in.
#[derive(Debug, Clone, Copy)]
enum Route {
    Admin(Op),
    AgentEnlist,
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
}

/// Serves the API until `shutdown`.
///
/// # Errors
/// When the service or one of its endpoints cannot be registered.
pub async fn serve(
    client: async_nats::Client,
    store: Store,
    config: MasterConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let stats_metrics = metrics.clone();
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
            .add(config.subjects.api(op.subject()))
            .await
            .map_err(|e| anyhow::anyhow!("endpoint {}: {e}", op.subject()))?;
        endpoints.push(ep.map(move |r| (Route::Admin(op), r)).boxed());
    }
    let ep = service
        .endpoint_builder()
        .name("agent-enlist")
        .add(config.subjects.agent_api_pattern(wire::AGENT_ENLIST))
        .await
        .map_err(|e| anyhow::anyhow!("agent endpoint: {e}"))?;
    endpoints.push(ep.map(|r| (Route::AgentEnlist, r)).boxed());
    let mut requests = futures::stream::select_all(endpoints);
    tracing::info!(service = %config.subjects.service_name(), api = %config.subjects.api(">"), "serving the API");

    let limit = Arc::new(Semaphore::new(config.max_concurrent_requests));
    let ctx = Ctx { client, store, config, metrics };
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
            let reply = ctx.handle(route, &subject, &request.message.payload).await;
            if let Err(e) = request.respond(Ok(reply.into())).await {
                tracing::warn!(subject, error = %e, "could not send the API reply");
            }
            drop(permit);
        });
    }
    service.stop().await.ok();
    Ok(())
}

fn encode_reply<T: Serialize>(r: Result<T, ApiError>) -> Vec<u8> {
    msg::encode(&Reply::from_result(r))
}

impl Ctx {
    async fn handle(&self, route: Route, subject: &str, payload: &[u8]) -> Vec<u8> {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let reply = match route {
            Route::AgentEnlist => self.agent_enlist(subject, payload).await,
            Route::Admin(op) => self.admin(op, payload).await,
        };
        if let Err(e) = &reply {
            if matches!(e.code, ErrorCode::InvalidRequest | ErrorCode::BadVersion) {
                self.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject, error = %e, "refused bad API request");
            } else {
                tracing::debug!(subject, error = %e, "API request failed");
            }
        }
        match reply {
            Ok(bytes) => bytes,
            Err(e) => encode_reply::<()>(Err(e)),
        }
    }

    async fn admin(&self, op: Op, p: &[u8]) -> Result<Vec<u8>, ApiError> {
        fn ok<T: Serialize>(v: T) -> Result<Vec<u8>, ApiError> {
            Ok(encode_reply(Ok(v)))
        }
        match op {
            Op::TargetEnlist => ok(self.enlist(body(p)?, None).await?),
            Op::TargetDefect => ok(self.defect(body(p)?).await?),
            Op::TargetList => ok(self.target_list().await?),
            Op::TargetShow => ok(self.target_info(&self.store.target(&body::<TargetRef>(p)?.name).await?).await),
            Op::TargetForcePoll => ok(self.force_poll_enlisted(&body::<TargetRef>(p)?.name).await?),
            Op::JobCreate => ok(self.job_create(body::<JobWrite>(p)?.spec).await?),
            Op::JobUpdate => ok(self.job_update(body::<JobWrite>(p)?.spec).await?),
            Op::JobDelete => ok(self.job_delete(body(p)?).await?),
            Op::JobList => ok(self.store.all_jobs().await?.iter().map(job_info).collect::<Vec<_>>()),
            Op::JobShow => ok(job_info(&self.store.job(&body::<JobRef>(p)?.job).await?.0)),
            Op::JobAssign => ok(self.job_assign(body(p)?, true).await?),
            Op::JobUnassign => ok(self.job_assign(body(p)?, false).await?),
            Op::JobStart => ok(self.job_start(body(p)?).await?),
            Op::JobStop => ok(self.job_stop(body(p)?).await?),
            Op::JobEnable => ok(self.job_enable(body(p)?, true).await?),
            Op::JobDisable => ok(self.job_enable(body(p)?, false).await?),
            Op::JobStatus => ok(self.job_status(body(p)?).await?),
        }
    }

    // ---- targets ----------------------------------------------------------------

    async fn agent_enlist(&self, subject: &str, p: &[u8]) -> Result<Vec<u8>, ApiError> {
        let req: EnlistRequest = body(p)?;
        let on_subject = self.config.subjects.target_of(subject).unwrap_or_default();
        if on_subject != req.name.as_str() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("body names target '{}' but the subject carries '{on_subject}'", req.name),
            ));
        }
        Ok(encode_reply(Ok(self.enlist(req.clone(), req.instance).await?)))
    }

    /// Records the target and creates its consumer. Enlisting again is
    /// harmless (it updates location and poll interval if given).
    async fn enlist(&self, req: EnlistRequest, instance: Option<Uuid>) -> Result<TargetInfo, ApiError> {
        if let Some(secs) = req.poll_interval_secs {
            if secs == 0 || secs > *POLL_INTERVAL_RANGE.end() {
                return Err(ApiError::new(ErrorCode::InvalidRequest, format!("poll interval {secs}s is outside 1..=28800")));
            }
        }
        let record = Store::modify(&self.store.targets, req.name.as_str(), |old: Option<TargetRecord>| {
            let mut t = old.unwrap_or_else(|| TargetRecord {
                name: req.name.clone(),
                location: String::new(),
                enlisted_at: Utc::now(),
                poll_interval_secs: DEFAULT_POLL_INTERVAL_SECS,
                instance: None,
                blocked: None,
            });
            if let Some(l) = &req.location {
                t.location.clone_from(l);
            }
            if let Some(secs) = req.poll_interval_secs {
                t.poll_interval_secs = secs;
            }
            if instance.is_some() {
                t.instance = instance;
            }
            Ok(Some(t))
        })
        .await?
        .expect("written");
        self.store.ensure_target_consumer(&req.name).await?;
        tracing::info!(target = %req.name, agent = instance.is_some(), "target enlisted");
        Ok(self.target_info(&record).await)
    }

    async fn defect(&self, req: wire::DefectRequest) -> Result<TargetInfo, ApiError> {
        let record = self.store.target(&req.name).await?;
        let info = self.target_info(&record).await;
        // Unassign it from every job, so nothing is posted to it again.
        for job in self.store.all_jobs().await? {
            if job.targets.contains(&req.name) {
                Store::modify(&self.store.jobs, job.spec.name.as_str(), |j: Option<JobRecord>| {
                    Ok(j.map(|mut j| {
                        j.targets.remove(&req.name);
                        j
                    }))
                })
                .await?;
            }
        }
        if req.force {
            // Gone for good: drop its queue, its consumer and its record.
            if let Ok(stream) = self.store.js.get_stream_no_info(self.store.subjects.assign_stream()).await {
                stream.purge().filter(self.store.subjects.assign(&req.name)).await.ok();
            }
            self.store.delete_target_consumer(&req.name).await?;
            self.store.targets.delete(req.name.as_str()).await.map_err(|e| ApiError::internal(format!("deleting record: {e}")))?;
        } else {
            // The target deletes its jobs at its next poll; the record goes when
            // it reports the defection applied.
            post::post(&self.store, &req.name, InstructionOp::Defect).await?;
            self.force_poll(&req.name).await.ok();
        }
        Ok(info)
    }

    async fn target_list(&self) -> Result<Vec<TargetInfo>, ApiError> {
        let targets = self.store.all_targets().await?;
        let infos = targets.into_iter().map(|t| {
            let ctx = self.clone();
            async move { ctx.target_info(&t).await }
        });
        Ok(futures::stream::iter(infos).buffered(64).collect().await)
    }

    /// A target's registry entry joined with its last poll and queue.
    pub async fn target_info(&self, t: &TargetRecord) -> TargetInfo {
        let (poll, unread, groups) =
            tokio::join!(self.store.last_poll(&t.name), self.store.unread(&t.name), self.store.all_groups());
        let groups = groups
            .map(|g| g.into_values().filter(|g| g.members.contains(&t.name)).map(|g| g.name).collect())
            .unwrap_or_default();
        let now = Utc::now();
        let status = match &poll {
            _ if t.blocked.is_some() => TargetStatus::Blocked,
            None => TargetStatus::NeverPolled,
            Some(p) if (now - p.received_at).num_seconds() > 3 * t.poll_interval_secs as i64 => {
                TargetStatus::SuspectedOffline
            }
            Some(_) => TargetStatus::Normal,
        };
        TargetInfo {
            name: t.name.clone(),
            location: t.location.clone(),
            enlisted_at: t.enlisted_at,
            poll_interval_secs: t.poll_interval_secs,
            status,
            last_poll: poll.as_ref().map(|p| p.received_at),
            local_time: poll.as_ref().map(|p| p.report.polled_at),
            clock_skew_ms: poll.as_ref().and_then(|p| p.report.clock_skew_ms),
            agent_version: poll.as_ref().map(|p| p.report.agent_version.clone()),
            unread,
            groups,
        }
    }

    async fn force_poll_enlisted(&self, name: &TargetName) -> Result<PollReport, ApiError> {
        self.store.target(name).await?;
        self.force_poll(name).await
    }

    /// Asks a target to poll now; its answer is the poll report.
    ///
    /// # Errors
    /// `offline` when no agent listens (its instructions stay queued),
    /// `timeout` when it did not answer in time.
    pub async fn force_poll(&self, name: &TargetName) -> Result<PollReport, ApiError> {
        let reply = self.control(name, ControlOp::Poll).await?;
        reply.report.ok_or_else(|| ApiError::internal("the target answered without a poll report"))
    }

    async fn control(&self, name: &TargetName, op: ControlOp) -> Result<ControlReply, ApiError> {
        let body = msg::encode(&ControlRequest { v: PROTOCOL_VERSION, op });
        let request = self.client.request(self.config.subjects.control(name), body.into());
        let answer = tokio::time::timeout(self.config.force_poll_timeout, request).await;
        let message = match answer {
            Err(_) => return Err(timeout_error(name, self.config.force_poll_timeout)),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Err(ApiError::new(
                    ErrorCode::Offline,
                    format!("target '{name}' is offline (no agent answers on its control subject); its instructions stay queued for its next poll"),
                ))
            }
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                return Err(timeout_error(name, self.config.force_poll_timeout))
            }
            Ok(Err(e)) => return Err(ApiError::internal(format!("control request to '{name}': {e}"))),
            Ok(Ok(m)) => m,
        };
        let reply: ControlReply = msg::decode(&message.payload)?;
        match reply.error {
            Some(e) => Err(e),
            None => Ok(reply),
        }
    }

    // ---- jobs -----------------------------------------------------------------------

    async fn job_create(&self, mut spec: JobSpec) -> Result<JobInfo, ApiError> {
        spec.normalize();
        spec.validate().map_err(|e| ApiError::new(ErrorCode::InvalidJob, e))?;
        let now = Utc::now();
        let record = JobRecord {
            id: Uuid::new_v4(),
            revision: 1,
            spec,
            targets: BTreeSet::new(),
            groups: BTreeSet::new(),
            created_at: now,
            updated_at: now,
        };
        let name = record.spec.name.clone();
        let created = Store::modify(&self.store.jobs, name.as_str(), |old: Option<JobRecord>| match old {
            Some(_) => Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("a job named '{name}' already exists (use `musterctl job update`)"),
            )),
            None => Ok(Some(record.clone())),
        })
        .await?
        .expect("written");
        tracing::info!(job = %name, id = %created.id, "job created");
        Ok(job_info(&created))
    }

    /// Replaces a job's definition and posts it to every target concerned.
    async fn job_update(&self, mut spec: JobSpec) -> Result<JobInfo, ApiError> {
        spec.normalize();
        spec.validate().map_err(|e| ApiError::new(ErrorCode::InvalidJob, e))?;
        let name = spec.name.clone();
        self.change_job(&name, |j| j.spec = spec.clone()).await
    }

    async fn job_enable(&self, req: JobRef, enabled: bool) -> Result<JobInfo, ApiError> {
        self.change_job(&req.job, |j| j.spec.enabled = enabled).await
    }

    /// Applies `f`, bumps the revision and posts the new definition.
    async fn change_job(&self, name: &muster_shared::JobName, f: impl Fn(&mut JobRecord)) -> Result<JobInfo, ApiError> {
        self.store.job(name).await?;
        let updated = Store::modify(&self.store.jobs, name.as_str(), |old: Option<JobRecord>| {
            let mut j = old.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no job is named '{name}'")))?;
            f(&mut j);
            j.revision += 1;
            j.updated_at = Utc::now();
            Ok(Some(j))
        })
        .await?
        .expect("written");
        let groups = self.store.all_groups().await?;
        let items = Store::concerned(&updated, &groups)
            .into_iter()
            .map(|t| (t, InstructionOp::UpsertJob { job: updated.def() }))
            .collect();
        post::post_many(&self.store, items).await?;
        Ok(job_info(&updated))
    }

    async fn job_delete(&self, req: JobRef) -> Result<JobInfo, ApiError> {
        let (job, revision) = self.store.job(&req.job).await?;
        let groups = self.store.all_groups().await?;
        self.store
            .jobs
            .delete_expect_revision(req.job.as_str(), Some(revision))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Conflict, format!("job changed while deleting; try again ({e})")))?;
        let items = Store::concerned(&job, &groups)
            .into_iter()
            .map(|t| (t, InstructionOp::DeleteJob { job_id: job.id, job: job.spec.name.clone() }))
            .collect();
        post::post_many(&self.store, items).await?;
        tracing::info!(job = %req.job, "job deleted");
        Ok(job_info(&job))
    }

    /// Assigns (or unassigns) a job to targets and groups, posting upserts to
    /// targets that gain it and deletes to targets that lose it.
    async fn job_assign(&self, req: JobSelect, assign: bool) -> Result<JobInfo, ApiError> {
        if req.select.is_empty() || req.select.all {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "name at least one --target or --group"));
        }
        self.store.require_enlisted(&req.select.targets).await?;
        let groups = self.store.all_groups().await?;
        for g in &req.select.groups {
            if !groups.contains_key(g) {
                return Err(ApiError::new(ErrorCode::NotFound, format!("no group is named '{g}' (see `musterctl group list`)")));
            }
        }
        let (before, _) = self.store.job(&req.job).await?;
        let after = Store::modify(&self.store.jobs, req.job.as_str(), |old: Option<JobRecord>| {
            let mut j = old.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no job is named '{}'", req.job)))?;
            for t in &req.select.targets {
                if assign { j.targets.insert(t.clone()) } else { j.targets.remove(t) };
            }
            for g in &req.select.groups {
                if assign { j.groups.insert(g.clone()) } else { j.groups.remove(g) };
            }
            j.updated_at = Utc::now();
            Ok(Some(j))
        })
        .await?
        .expect("written");
        let (was, now) = (Store::concerned(&before, &groups), Store::concerned(&after, &groups));
        let mut items: Vec<_> =
            now.difference(&was).map(|t| (t.clone(), InstructionOp::UpsertJob { job: after.def() })).collect();
        items.extend(
            was.difference(&now)
                .map(|t| (t.clone(), InstructionOp::DeleteJob { job_id: after.id, job: after.spec.name.clone() })),
        );
        post::post_many(&self.store, items).await?;
        Ok(job_info(&after))
    }

    /// The targets an operation on a job reaches: the selection, which must be
    /// among the job's targets, or all of them when the selection is empty.
    async fn select_for_job(&self, job: &JobRecord, select: &Selection) -> Result<Vec<TargetName>, ApiError> {
        let groups = self.store.all_groups().await?;
        let concerned = Store::concerned(job, &groups);
        if select.is_empty() || select.all {
            if concerned.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("job '{}' is not assigned to any target (use `musterctl job assign`)", job.spec.name),
                ));
            }
            return Ok(concerned.into_iter().collect());
        }
        self.store.require_enlisted(&select.targets).await?;
        let mut chosen: BTreeSet<TargetName> = select.targets.iter().cloned().collect();
        for g in &select.groups {
            let group = groups
                .get(g)
                .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no group is named '{g}'")))?;
            chosen.extend(group.members.iter().cloned());
        }
        if let Some(t) = chosen.iter().find(|t| !concerned.contains(*t)) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("job '{}' is not assigned to target '{t}' (use `musterctl job assign {} --target {t}`)", job.spec.name, job.spec.name),
            ));
        }
        Ok(chosen.into_iter().collect())
    }

    /// Posts a start to each target, then force-polls them all at once so
    /// online targets start now; offline ones start at their next poll.
    async fn job_start(&self, req: JobSelect) -> Result<Vec<Delivery>, ApiError> {
        let (job, _) = self.store.job(&req.job).await?;
        let targets = self.select_for_job(&job, &req.select).await?;
        let items: Vec<_> = targets
            .iter()
            .map(|t| {
                let op = InstructionOp::StartJob { job_id: job.id, job: job.spec.name.clone(), run_id: Uuid::now_v7() };
                (t.clone(), op)
            })
            .collect();
        let posted = post::post_many(&self.store, items).await?;
        let deliveries = futures::stream::iter(posted)
            .map(|i| {
                let ctx = self.clone();
                async move {
                let run_id = match &i.op {
                    InstructionOp::StartJob { run_id, .. } => Some(*run_id),
                    _ => None,
                };
                let (state, message) = match ctx.force_poll(&i.target).await {
                    Ok(_) => ("delivered", String::new()),
                    Err(e) => ("queued", e.message),
                };
                Delivery { target: i.target, run_id, state: state.to_owned(), message }
            }})
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        Ok(sorted(deliveries))
    }

    /// Stops a job at once through the control subject where the target is
    /// online, and through a queued instruction where it is not.
    async fn job_stop(&self, req: JobSelect) -> Result<Vec<Delivery>, ApiError> {
        let (job, _) = self.store.job(&req.job).await?;
        let targets = self.select_for_job(&job, &req.select).await?;
        let deliveries = futures::stream::iter(targets)
            .map(|t| {
                let job = job.clone();
                let ctx = self.clone();
                async move {
                    match ctx.control(&t, ControlOp::Stop { job: job.spec.name.clone() }).await {
                        Ok(r) => Delivery {
                            target: t,
                            run_id: None,
                            state: "delivered".to_owned(),
                            message: if r.stopped == Some(true) { "stopped".into() } else { "was not running".into() },
                        },
                        Err(e) if e.code == ErrorCode::Offline || e.code == ErrorCode::Timeout => {
                            let op = InstructionOp::StopJob { job_id: job.id, job: job.spec.name.clone() };
                            match post::post(&ctx.store, &t, op).await {
                                Ok(_) => Delivery { target: t, run_id: None, state: "queued".into(), message: e.message },
                                Err(e) => Delivery { target: t, run_id: None, state: "failed".into(), message: e.message },
                            }
                        }
                        Err(e) => Delivery { target: t, run_id: None, state: "failed".into(), message: e.message },
                    }
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        Ok(sorted(deliveries))
    }

    async fn job_status(&self, req: JobRef) -> Result<Vec<JobTargetStatus>, ApiError> {
        let (job, _) = self.store.job(&req.job).await?;
        let groups = self.store.all_groups().await?;
        let mut out = Vec::new();
        for t in Store::concerned(&job, &groups) {
            if let Some((s, _)) = Store::read::<JobTargetStatus>(&self.store.jobstatus, &Store::status_key(job.id, &t)).await? {
                out.push(s);
            }
        }
        Ok(out)
    }
}

fn sorted(mut d: Vec<Delivery>) -> Vec<Delivery> {
    d.sort_by(|a, b| a.target.cmp(&b.target));
    d
}

fn timeout_error(name: &TargetName, after: Duration) -> ApiError {
    ApiError::new(ErrorCode::Timeout, format!("target '{name}' did not answer within {after:?}"))
}

/// Decodes a request body (`{"v":1,...}`).
fn body<T: DeserializeOwned>(p: &[u8]) -> Result<T, ApiError> {
    msg::decode::<Request<T>>(p).map(|r| r.body)
}

pub fn job_info(j: &JobRecord) -> JobInfo {
    JobInfo {
        id: j.id,
        revision: j.revision,
        spec: j.spec.clone(),
        targets: j.targets.iter().cloned().collect(),
        groups: j.groups.iter().cloned().collect(),
        created_at: j.created_at,
        updated_at: j.updated_at,
    }
}

