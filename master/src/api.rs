//! The `muster` NATS service: every admin operation, and the calls targets
//! make about themselves.
//!
//! Each [`Op`] is an endpoint on `muster.api.<op>`; agents enlist on
//! `muster.api.agent.<t>.enlist`, a subject that carries their own name so
//! server permissions can pin it. All master replicas serve the same queue
//! group, so any one of them answers. A request is decoded in one place
//! ([`msg::decode`]); bad input gets an error reply, is logged with its
//! subject and counted, and never stops the service.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use chrono::Utc;
use futures::StreamExt;
use muster_shared::api::{
    self as wire, ApiError, Delivery, EnlistRequest, ErrorCode, ForcePollOutcome, GroupInfo, GroupMembers, GroupRef, InstrStatus,
    InstructionsQuery, JobInfo, JobRef, JobSelect, JobTargetStatus, JobWrite, Op, PostRequest, Posted, Reply,
    Request, Selection, StatusSummary, TargetInfo, TargetRef, TargetStatus,
};
use muster_shared::job::JobSpec;
use muster_shared::msg::{self, ControlOp, ControlReply, ControlRequest, InstructionOp, PollReport};
use muster_shared::msg::Outcome;
use muster_shared::name::{GroupName, TargetName};
use muster_shared::PROTOCOL_VERSION;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::MasterConfig;
use crate::post;
use crate::store::{GroupRecord, InstrRow, JobRecord, Store, TargetRecord};

/// Default poll interval for a target that does not say (SQL Server's too).
pub const DEFAULT_POLL_INTERVAL_SECS: u64 = 60;

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
            if let Err(e) = send_reply(&ctx.client, request, reply).await {
                tracing::warn!(subject, error = %e, "could not send the API reply");
            }
            drop(permit);
        });
    }
    service.stop().await.ok();
    Ok(())
}

/// Answers a request: in one message when the server takes it, otherwise
/// in parts marked with [`wire::CHUNK_HEADER`], sent in order.
async fn send_reply(client: &async_nats::Client, request: async_nats::service::Request, reply: Vec<u8>) -> anyhow::Result<()> {
    // Room for the subject and headers next to the body.
    let max = client.server_info().max_payload;
    let room = if max > 16 * 1024 { max - 4096 } else { max / 2 }.max(1);
    if reply.len() <= room {
        return Ok(request.respond(Ok(reply.into())).await?);
    }
    if reply.len() > muster_shared::MAX_REPLY_BYTES {
        let too_big = ApiError::internal(format!(
            "the answer is {} bytes, over the {}-byte limit for one reply; narrow the request",
            reply.len(),
            muster_shared::MAX_REPLY_BYTES
        ));
        return Ok(request.respond(Ok(encode_reply::<()>(Err(too_big)).into())).await?);
    }
    let Some(to) = request.message.reply.clone() else {
        return Ok(());
    };
    let parts = reply.len().div_ceil(room);
    for (i, part) in reply.chunks(room).enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(wire::CHUNK_HEADER, format!("{}/{parts}", i + 1).as_str());
        client.publish_with_headers(to.clone(), headers, bytes::Bytes::copy_from_slice(part)).await?;
    }
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
            Route::AgentDefect => self.agent_defect(subject, payload).await,
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
            Op::TargetForcePollMany => ok(self.force_poll_many(&body(p)?).await?),
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
        }
    }

    // ---- targets ----------------------------------------------------------------

    async fn agent_enlist(&self, subject: &str, p: &[u8]) -> Result<Vec<u8>, ApiError> {
        let req: EnlistRequest = body(p)?;
        self.same_target(subject, &req.name)?;
        if let Some(instance) = req.instance {
            self.refuse_second_agent(&req.name, instance).await?;
        }
        Ok(encode_reply(Ok(self.enlist(req.clone(), req.instance).await?)))
    }

    /// A target defecting itself: the same as `musterctl target defect <t>`.
    async fn agent_defect(&self, subject: &str, p: &[u8]) -> Result<Vec<u8>, ApiError> {
        let req: TargetRef = body(p)?;
        self.same_target(subject, &req.name)?;
        Ok(encode_reply(Ok(self.defect(wire::DefectRequest { name: req.name, force: false }).await?)))
    }

    /// An agent may only speak for the target its subject carries.
    fn same_target(&self, subject: &str, name: &TargetName) -> Result<(), ApiError> {
        let on_subject = self.config.subjects.target_of(subject).unwrap_or_default();
        if on_subject != name.as_str() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("body names target '{name}' but the subject carries '{on_subject}'"),
            ));
        }
        Ok(())
    }

    /// Refuses an agent whose name is already taken by another running agent:
    /// one that still answers on the name's control subject with another
    /// instance id. (A new agent enlists before it serves its own control
    /// subject, so whoever answers is someone else.)
    async fn refuse_second_agent(&self, name: &TargetName, instance: Uuid) -> Result<(), ApiError> {
        let Some((record, _)) = Store::read::<TargetRecord>(&self.store.targets, name.as_str()).await? else {
            return Ok(());
        };
        if record.instance.is_none_or(|i| i == instance) {
            return Ok(());
        }
        match self.force_poll(name).await {
            Ok(report) if report.instance != instance => Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "target '{name}' is already enlisted by another running agent (instance {}, agent {}); \
                     stop that agent first, or start this one with another --name",
                    report.instance, report.agent_version
                ),
            )),
            // Nobody answers (the old agent is gone), or it is this very agent.
            _ => Ok(()),
        }
    }

    /// Records the target and creates its consumer. Enlisting again is
    /// harmless (it updates location and poll interval if given).
    async fn enlist(&self, req: EnlistRequest, instance: Option<Uuid>) -> Result<TargetInfo, ApiError> {
        if let Some(secs) = req.poll_interval_secs {
            // Agents may poll faster than `set-poll` allows (tests, demos), never slower.
            if secs == 0 || secs > *wire::POLL_INTERVAL_RANGE.end() {
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

    /// Defects a target. Without `force` it is told to leave (it deletes its
    /// jobs from this master at its next poll, and its record and consumer go
    /// when it reports that); with `force` it is gone for good, and its
    /// record, consumer and pending instructions are deleted now. Either way
    /// it is taken out of every job and group at once, so nothing more is
    /// posted to it.
    async fn defect(&self, req: wire::DefectRequest) -> Result<TargetInfo, ApiError> {
        let record = self.store.target(&req.name).await?;
        let info = self.target_info(&record).await;
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
        for group in self.store.all_groups().await?.into_values() {
            if group.members.contains(&req.name) {
                Store::modify(&self.store.groups, group.name.as_str(), |g: Option<GroupRecord>| {
                    Ok(g.map(|mut g| {
                        g.members.remove(&req.name);
                        g
                    }))
                })
                .await?;
            }
        }
        if req.force {
            self.store.drop_pending(&req.name).await?;
            self.store.delete_target_consumer(&req.name).await?;
            self.store.targets.delete(req.name.as_str()).await.map_err(|e| ApiError::internal(format!("deleting record: {e}")))?;
            tracing::info!(target = %req.name, "target defected (forced)");
        } else {
            post::post(&self.store, &req.name, InstructionOp::Defect).await?;
            self.force_poll(&req.name).await.ok();
        }
        Ok(info)
    }

    async fn target_list(&self) -> Result<Vec<TargetInfo>, ApiError> {
        let (targets, groups) = tokio::try_join!(self.store.all_targets(), self.store.all_groups())?;
        let groups = Arc::new(groups);
        let infos = targets.into_iter().map(|t| {
            let (ctx, groups) = (self.clone(), groups.clone());
            async move { ctx.target_info_in(&t, &groups).await }
        });
        Ok(futures::stream::iter(infos).buffered(64).collect().await)
    }

    /// A target's registry entry joined with its last poll and queue.
    pub async fn target_info(&self, t: &TargetRecord) -> TargetInfo {
        let groups = self.store.all_groups().await.unwrap_or_default();
        self.target_info_in(t, &groups).await
    }

    /// [`Ctx::target_info`] with the groups already read (listing many targets).
    async fn target_info_in(&self, t: &TargetRecord, groups: &HashMap<GroupName, GroupRecord>) -> TargetInfo {
        let (poll, unread) = tokio::join!(self.store.last_poll(&t.name), self.store.unread(&t.name));
        let groups = groups.values().filter(|g| g.members.contains(&t.name)).map(|g| g.name.clone()).collect();
        // The interval the agent says it uses wins over the record's: a
        // set-poll not yet downloaded has not changed anything yet.
        let interval = poll.as_ref().map_or(t.poll_interval_secs, |p| p.report.poll_interval_secs);
        let now = Utc::now();
        let status = match &poll {
            _ if t.blocked.is_some() => TargetStatus::Blocked,
            None => TargetStatus::NeverPolled,
            Some(p) if (now - p.received_at).num_milliseconds() > 3_000 * i64::try_from(interval).unwrap_or(i64::MAX / 4_000) => {
                TargetStatus::SuspectedOffline
            }
            Some(_) => TargetStatus::Normal,
        };
        TargetInfo {
            name: t.name.clone(),
            location: t.location.clone(),
            enlisted_at: t.enlisted_at,
            poll_interval_secs: interval,
            blocked: t.blocked.clone(),
            status,
            last_poll: poll.as_ref().map(|p| p.received_at),
            local_time: poll.as_ref().map(|p| p.report.polled_at),
            clock_skew_ms: poll.as_ref().and_then(|p| p.report.clock_skew_ms),
            agent_version: poll.as_ref().map(|p| p.report.agent_version.clone()),
            bad_instructions: poll.as_ref().map_or(0, |p| p.report.bad_instructions),
            bad_control: poll.as_ref().map_or(0, |p| p.report.bad_control),
            unread,
            groups,
        }
    }

    /// Force-polls an enlisted target. The registry check and the poll go out
    /// together (one round trip less on the hot path); a poll answered by an
    /// agent that is not enlisted is discarded in favour of `not_enlisted`.
    async fn force_poll_enlisted(&self, name: &TargetName) -> Result<PollReport, ApiError> {
        let (enlisted, polled) = tokio::join!(self.store.target(name), self.force_poll(name));
        enlisted?;
        polled
    }

    /// Force-polls every selected target at once; one outcome per target,
    /// in name order. A target that is offline or slow fails alone, and
    /// holds up only its own slot.
    async fn force_poll_many(&self, select: &Selection) -> Result<Vec<ForcePollOutcome>, ApiError> {
        let targets = self.resolve(select).await?;
        let mut outcomes: Vec<ForcePollOutcome> = futures::stream::iter(targets)
            .map(|target| async move {
                match self.force_poll(&target).await {
                    Ok(report) => ForcePollOutcome { target, report: Some(report), error: None },
                    Err(e) => ForcePollOutcome { target, report: None, error: Some(e) },
                }
            })
            .buffer_unordered(CONTROL_IN_FLIGHT)
            .collect()
            .await;
        outcomes.sort_by(|a, b| a.target.cmp(&b.target));
        Ok(outcomes)
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
        expand_groups(&req.select.groups, &groups)?;
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
        let items = reach_changes(&after, &Store::concerned(&before, &groups), &Store::concerned(&after, &groups));
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
        chosen.extend(expand_groups(&select.groups, &groups)?);
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
            .buffer_unordered(CONTROL_IN_FLIGHT)
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
            .buffer_unordered(CONTROL_IN_FLIGHT)
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

    // ---- posting to chosen targets -------------------------------------------------

    /// The targets a selection names: its targets (each enlisted), its groups'
    /// members, or every enlisted target with `all`.
    async fn resolve(&self, select: &Selection) -> Result<Vec<TargetName>, ApiError> {
        if select.is_empty() {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "name at least one target, --group or --all"));
        }
        if select.all {
            let all: Vec<TargetName> = self.store.all_targets().await?.into_iter().map(|t| t.name).collect();
            if all.is_empty() {
                return Err(ApiError::new(ErrorCode::NotFound, "no target is enlisted (see `musterctl target enlist`)"));
            }
            return Ok(all);
        }
        self.store.require_enlisted(&select.targets).await?;
        let mut chosen: BTreeSet<TargetName> = select.targets.iter().cloned().collect();
        chosen.extend(expand_groups(&select.groups, &self.store.all_groups().await?)?);
        if chosen.is_empty() {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "the groups named have no members (see `musterctl group add`)"));
        }
        Ok(chosen.into_iter().collect())
    }

    /// `set-poll`: records the new interval and posts it; each target uses
    /// it from the poll that downloads it.
    async fn set_poll(&self, req: PostRequest) -> Result<Vec<Posted>, ApiError> {
        let secs = req.secs.ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "set-poll needs the interval in seconds"))?;
        if !wire::POLL_INTERVAL_RANGE.contains(&secs) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "poll interval {secs}s is outside {}..={} seconds",
                    wire::POLL_INTERVAL_RANGE.start(),
                    wire::POLL_INTERVAL_RANGE.end()
                ),
            ));
        }
        let targets = self.resolve(&req.select).await?;
        for t in &targets {
            Store::modify(&self.store.targets, t.as_str(), |old: Option<TargetRecord>| {
                Ok(old.map(|mut r| {
                    r.poll_interval_secs = secs;
                    r
                }))
            })
            .await?;
        }
        self.post_each(targets, |_| vec![InstructionOp::SetPollInterval { secs }]).await
    }

    /// `sync-time`: posts the master's clock, then force-polls so online
    /// targets measure their skew now rather than a poll interval later.
    async fn sync_time(&self, req: PostRequest) -> Result<Vec<Posted>, ApiError> {
        let targets = self.resolve(&req.select).await?;
        let posted = self.post_each(targets, |_| vec![InstructionOp::SyncTime { master_time: Utc::now() }]).await?;
        futures::stream::iter(&posted)
            .for_each_concurrent(CONTROL_IN_FLIGHT, |p| async move {
                self.force_poll(&p.target).await.ok();
            })
            .await;
        Ok(posted)
    }

    /// `resync`: drops each target's pending instructions, then posts
    /// delete-all-jobs and one upsert per job that reaches it.
    async fn resync(&self, req: PostRequest) -> Result<Vec<Posted>, ApiError> {
        let targets = self.resolve(&req.select).await?;
        let (jobs, groups) = (self.store.all_jobs().await?, self.store.all_groups().await?);
        let mut dropped = HashMap::new();
        for t in &targets {
            dropped.insert(t.clone(), self.store.drop_pending(t).await?);
        }
        let mut posted = self
            .post_each(targets, |t| {
                std::iter::once(InstructionOp::DeleteAllJobs)
                    .chain(
                        jobs.iter()
                            .filter(|j| Store::concerned(j, &groups).contains(t))
                            .map(|j| InstructionOp::UpsertJob { job: j.def() }),
                    )
                    .collect()
            })
            .await?;
        for p in &mut posted {
            p.dropped = dropped.get(&p.target).copied().unwrap_or(0);
        }
        Ok(posted)
    }

    /// Posts `ops(t)` to each target, in order, in one pipelined batch.
    async fn post_each(
        &self,
        targets: Vec<TargetName>,
        ops: impl Fn(&TargetName) -> Vec<InstructionOp>,
    ) -> Result<Vec<Posted>, ApiError> {
        let mut items = Vec::new();
        let mut posted = Vec::new();
        for t in targets {
            let ops = ops(&t);
            posted.push(Posted { target: t.clone(), ops: ops.iter().map(|o| o.name().to_owned()).collect(), dropped: 0 });
            items.extend(ops.into_iter().map(|o| (t.clone(), o)));
        }
        post::post_many(&self.store, items).await?;
        Ok(posted)
    }

    // ---- groups ----------------------------------------------------------------------

    async fn group_create(&self, req: GroupRef) -> Result<GroupInfo, ApiError> {
        let record = GroupRecord { name: req.group.clone(), members: BTreeSet::new(), created_at: Utc::now() };
        let created = Store::modify(&self.store.groups, req.group.as_str(), |old: Option<GroupRecord>| match old {
            Some(_) => Err(ApiError::new(ErrorCode::AlreadyExists, format!("a group named '{}' already exists", req.group))),
            None => Ok(Some(record.clone())),
        })
        .await?
        .expect("written");
        Ok(group_info(&created, &[]))
    }

    /// Deletes an empty-handed group: one that no job is assigned to.
    async fn group_delete(&self, req: GroupRef) -> Result<GroupInfo, ApiError> {
        let group = self.group(&req.group).await?;
        let jobs = self.store.all_jobs().await?;
        let users: Vec<String> = jobs.iter().filter(|j| j.groups.contains(&req.group)).map(|j| j.spec.name.to_string()).collect();
        if let Some(first) = users.first() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "group '{g}' is assigned to job(s) {}; unassign them first (`musterctl job unassign {first} --group {g}`)",
                    users.join(", "),
                    g = req.group
                ),
            ));
        }
        self.store.groups.delete(req.group.as_str()).await.map_err(|e| ApiError::internal(format!("deleting group: {e}")))?;
        Ok(group_info(&group, &jobs))
    }

    async fn group_list(&self) -> Result<Vec<GroupInfo>, ApiError> {
        let jobs = self.store.all_jobs().await?;
        let mut groups: Vec<GroupInfo> = self.store.all_groups().await?.values().map(|g| group_info(g, &jobs)).collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(groups)
    }

    async fn group(&self, name: &GroupName) -> Result<GroupRecord, ApiError> {
        Store::read(&self.store.groups, name.as_str())
            .await?
            .map(|(g, _)| g)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no group is named '{name}' (see `musterctl group list`)")))
    }

    /// Adds or removes members, then posts the group's jobs to targets that
    /// now reach them and deletes to targets that no longer do (a target
    /// that still reaches a job directly or through another group keeps it).
    async fn group_members(&self, req: GroupMembers, add: bool) -> Result<GroupInfo, ApiError> {
        if req.targets.is_empty() {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "name at least one target"));
        }
        if add {
            self.store.require_enlisted(&req.targets).await?;
        }
        self.group(&req.group).await?;
        let before = self.store.all_groups().await?;
        let updated = Store::modify(&self.store.groups, req.group.as_str(), |old: Option<GroupRecord>| {
            let mut g = old.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no group is named '{}'", req.group)))?;
            for t in &req.targets {
                if add { g.members.insert(t.clone()) } else { g.members.remove(t) };
            }
            Ok(Some(g))
        })
        .await?
        .expect("written");
        let mut after = before.clone();
        after.insert(updated.name.clone(), updated.clone());
        let jobs = self.store.all_jobs().await?;
        let items = jobs
            .iter()
            .filter(|j| j.groups.contains(&req.group))
            .flat_map(|j| reach_changes(j, &Store::concerned(j, &before), &Store::concerned(j, &after)))
            .collect();
        post::post_many(&self.store, items).await?;
        Ok(group_info(&updated, &jobs))
    }

    // ---- download list and summary ------------------------------------------------

    async fn instructions(&self, q: InstructionsQuery) -> Result<Vec<InstrRow>, ApiError> {
        if let Some(t) = &q.target {
            // A defected target's rows stay readable, so only refuse unknown names
            // that have no rows at all.
            let rows = self.store.instr_rows(Some(t)).await?;
            if rows.is_empty() {
                self.store.target(t).await?;
            }
        }
        let mut rows: Vec<InstrRow> = self
            .store
            .instr_rows(q.target.as_ref())
            .await?
            .into_iter()
            .filter(|r| !q.pending || r.status == InstrStatus::Pending)
            .filter(|r| !q.errors || r.status == InstrStatus::Failed)
            .collect();
        if let Some(limit) = q.limit {
            rows.drain(..rows.len().saturating_sub(limit));
        }
        Ok(rows)
    }

    async fn status(&self) -> Result<StatusSummary, ApiError> {
        let targets = self.target_list().await?;
        let (jobs, groups, rows) =
            tokio::try_join!(self.store.all_jobs(), self.store.all_groups(), self.store.instr_rows(None))?;
        let mut targets_by_status = BTreeMap::new();
        for t in &targets {
            *targets_by_status.entry(t.status.as_str().to_owned()).or_insert(0) += 1;
        }
        // Status keys are `<job-id>.<target>`: keep those of jobs that still exist.
        let job_ids: BTreeSet<String> = jobs.iter().map(|j| j.id.to_string()).collect();
        let mut failing = Vec::new();
        for (key, s) in Store::scan_entries::<JobTargetStatus>(&self.store.jobstatus, "").await? {
            if key.split_once('.').is_some_and(|(id, _)| job_ids.contains(id)) && is_failure(s.outcome) {
                failing.push(s);
            }
        }
        failing.sort_by(|a, b| (&a.job, &a.target).cmp(&(&b.job, &b.target)));
        Ok(StatusSummary {
            targets_by_status,
            pending_instructions: targets.iter().map(|t| t.unread).sum(),
            attention: targets.into_iter().filter(|t| t.status != TargetStatus::Normal).collect(),
            jobs: jobs.len() as u64,
            groups: groups.len() as u64,
            failing,
            failed_instructions: rows.iter().filter(|r| r.status == InstrStatus::Failed).count() as u64,
        })
    }
}

/// Whether a last outcome needs an operator's attention.
fn is_failure(o: Outcome) -> bool {
    matches!(o, Outcome::Failed | Outcome::TimedOut | Outcome::Interrupted | Outcome::Canceled)
}

/// The members of the named groups.
///
/// # Errors
/// `not_found` for a group that does not exist.
fn expand_groups(names: &[GroupName], groups: &HashMap<GroupName, GroupRecord>) -> Result<BTreeSet<TargetName>, ApiError> {
    let mut out = BTreeSet::new();
    for g in names {
        let group = groups
            .get(g)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no group is named '{g}' (see `musterctl group list`)")))?;
        out.extend(group.members.iter().cloned());
    }
    Ok(out)
}

/// What moves a job from reaching `was` to reaching `now`: an upsert for
/// each target that gains it, a delete for each that loses it.
fn reach_changes(job: &JobRecord, was: &BTreeSet<TargetName>, now: &BTreeSet<TargetName>) -> Vec<(TargetName, InstructionOp)> {
    let mut items: Vec<_> = now.difference(was).map(|t| (t.clone(), InstructionOp::UpsertJob { job: job.def() })).collect();
    items.extend(
        was.difference(now).map(|t| (t.clone(), InstructionOp::DeleteJob { job_id: job.id, job: job.spec.name.clone() })),
    );
    items
}

fn group_info(g: &GroupRecord, jobs: &[JobRecord]) -> GroupInfo {
    GroupInfo {
        name: g.name.clone(),
        members: g.members.iter().cloned().collect(),
        jobs: jobs.iter().filter(|j| j.groups.contains(&g.name)).map(|j| j.spec.name.clone()).collect(),
        created_at: g.created_at,
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


#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<TargetName> {
        list.iter().map(|n| TargetName::new(*n).unwrap()).collect()
    }

    fn job() -> JobRecord {
        let spec = JobSpec::from_commands(muster_shared::JobName::new("j").unwrap(), &["true".to_owned()]);
        JobRecord {
            id: Uuid::new_v4(),
            revision: 1,
            spec,
            targets: names(&["a"]),
            groups: BTreeSet::new(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn reach_changes_post_upserts_to_gainers_and_deletes_to_losers_only() {
        let j = job();
        let items = reach_changes(&j, &names(&["a", "b"]), &names(&["b", "c"]));
        let got: Vec<(String, &str)> = items.iter().map(|(t, op)| (t.to_string(), op.name())).collect();
        assert_eq!(got, [("c".to_owned(), "upsert_job"), ("a".to_owned(), "delete_job")]);
        assert!(reach_changes(&j, &names(&["a"]), &names(&["a"])).is_empty());
    }

    #[test]
    fn expand_groups_names_a_missing_group() {
        let g = GroupName::new("web").unwrap();
        let mut groups = HashMap::new();
        groups.insert(g.clone(), GroupRecord { name: g.clone(), members: names(&["a", "b"]), created_at: Utc::now() });
        assert_eq!(expand_groups(&[g], &groups).unwrap(), names(&["a", "b"]));
        let err = expand_groups(&[GroupName::new("db").unwrap()], &groups).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        assert!(err.message.contains("musterctl group list"), "{}", err.message);
    }
}
