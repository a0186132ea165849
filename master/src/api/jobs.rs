//! Jobs: create, update, enable, delete, assign, start, stop and status.
//!
//! Every change to a job, or to who it reaches, is posted to the targets
//! concerned: an upsert to each target that has or gains it, a delete to
//! each that loses it ([`reach_changes`]). Starts are posted and then
//! force-polled, so online targets start now and offline ones at their next
//! poll; the answer comes once the starts are in the manifests, before the
//! force-polls unless the caller asks for their outcome (`--wait` does).
//! Stops go straight to the control subject, queued only when the target
//! does not answer.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt;
use muster_shared::api::{
    ApiError, CorruptRecord, Delivery, DeliveryState, ErrorCode, JobInfo, JobRef, JobSelect, JobTargetStatus, Listed, Selection,
    StartReply, StartStop,
};
use muster_shared::desired::{self, StartEntry, StopEntry, DEFAULT_EXPIRY};
use muster_shared::job::JobSpec;
use muster_shared::msg::{ControlOp, Instruction, InstructionOp};
use muster_shared::name::{JobName, TargetName};
use muster_shared::params::{self, ParamType};
use muster_shared::sealed::{self, Sealed};
use uuid::Uuid;

use super::desired::{change, changes};
use super::groups::expand_groups;
use super::{Ctx, CONTROL_IN_FLIGHT};
use crate::publish::{Post, Published};
use crate::store::{JobRecord, Store, StoreError};

/// Job-status keys `job status` reads at once.
const STATUS_READS_IN_FLIGHT: usize = 256;

/// Background force-poll sweeps (after a `posted` answer) running at once;
/// each has at most [`CONTROL_IN_FLIGHT`] control requests out.
static POLL_SWEEPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// The parameter values of a start of `spec`, `given` checked and defaults
/// filled in: the plain ones, and the secret ones (to be sealed for each
/// target, never stored as they are).
fn start_params(spec: &JobSpec, given: &params::Values) -> Result<(params::Values, params::Values), ApiError> {
    let values = params::resolve(&spec.params, given).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e))?;
    Ok(values.into_iter().partition(|(k, _)| !spec.params.iter().any(|p| &p.name == k && p.kind == ParamType::Secret)))
}

impl Ctx {
    pub(super) async fn job_create(&self, mut spec: JobSpec) -> Result<JobInfo, ApiError> {
        spec.normalize();
        spec.validate().map_err(|e| ApiError::new(ErrorCode::InvalidJob, e))?;
        if desired::is_reserved_job_name(&spec.name) {
            return Err(ApiError::new(
                ErrorCode::InvalidJob,
                format!("name: '{}' is reserved for the runs of `musterctl exec`; choose another", spec.name),
            ));
        }
        let record = JobRecord::new(Uuid::new_v4(), spec, Utc::now());
        let name = record.spec.name.clone();
        let created = Store::try_modify(&self.store.jobs, name.as_str(), |old: Option<JobRecord>| match old {
            Some(j) if j.deleted_at.is_some() => {
                Err(ApiError::new(ErrorCode::Conflict, format!("a job named '{name}' is being deleted; retry in a moment")))
            }
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
    pub(super) async fn job_update(&self, mut spec: JobSpec) -> Result<JobInfo, ApiError> {
        spec.normalize();
        spec.validate().map_err(|e| ApiError::new(ErrorCode::InvalidJob, e))?;
        let name = spec.name.clone();
        self.change_job(&name, |j| j.spec = spec.clone()).await
    }

    pub(super) async fn job_enable(&self, req: JobRef, enabled: bool) -> Result<JobInfo, ApiError> {
        self.change_job(&req.job, |j| j.spec.enabled = enabled).await
    }

    /// Applies `f`, bumps the revision and posts the new definition.
    async fn change_job(&self, name: &JobName, f: impl Fn(&mut JobRecord)) -> Result<JobInfo, ApiError> {
        self.store.job(name).await?;
        let updated = Store::try_modify(&self.store.jobs, name.as_str(), |old: Option<JobRecord>| {
            let Some(mut j) = old.filter(|j| j.deleted_at.is_none()) else {
                return Err(ApiError::new(ErrorCode::NotFound, format!("no job is named '{name}'")));
            };
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
        let posted = changes(items);
        self.publish_posted(&posted, |_| Post::default()).await;
        Ok(job_info(&updated))
    }

    /// Deletes a job: its record becomes a tombstone (it reaches no
    /// target), every target concerned is republished without it, its
    /// documents are purged, then the record goes. A master killed in
    /// between leaves the tombstone, and reconcile finishes the delete.
    ///
    /// A record that cannot be read (corrupt) reaches no target (every
    /// derivation skips it), so deleting it is deleting its key.
    pub(super) async fn job_delete(&self, req: JobRef) -> Result<Listed<JobInfo>, ApiError> {
        let (job, revision) = match self.store.job(&req.job).await {
            Ok(found) => found,
            Err(StoreError::Corrupt { key, source, .. }) => {
                Store::delete(&self.store.jobs, &key).await?;
                tracing::warn!(job = %req.job, error = %source, "corrupt job record deleted");
                return Ok(Listed::Corrupt(CorruptRecord { key, corrupt: source.to_string() }));
            }
            Err(e) => return Err(e.into()),
        };
        let groups = self.store.all_groups().await?;
        let mut tombstone = job.clone();
        tombstone.deleted_at = Some(Utc::now());
        let conflict = |e| match e {
            StoreError::Conflict { .. } => ApiError::new(ErrorCode::Conflict, "job changed while deleting; try again"),
            e => e.into(),
        };
        let body = serde_json::to_vec(&tombstone).expect("records serialise");
        let revision = match self.store.jobs.update(req.job.as_str(), body.into(), revision).await {
            Ok(r) => r,
            Err(e) if e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
                return Err(conflict(StoreError::Conflict { key: req.job.to_string() }))
            }
            Err(e) => return Err(StoreError::nats(format!("deleting job '{}'", req.job), e).into()),
        };
        let items = Store::concerned(&job, &groups)
            .into_iter()
            .map(|t| (t, InstructionOp::DeleteJob { job_id: job.id, job: job.spec.name.clone() }))
            .collect();
        let posted = changes(items);
        let published = self.publish_posted(&posted, |_| Post::default()).await;
        if published.values().all(Result::is_ok) {
            self.store.purge_job_docs_everywhere(job.id).await?;
            self.store.delete_job(&req.job, revision).await.map_err(conflict)?;
        }
        tracing::info!(job = %req.job, "job deleted");
        Ok(Listed::Ok(job_info(&job)))
    }

    /// Every job in name order, a record that cannot be read included (as
    /// corrupt); jobs being deleted (tombstones) are not listed.
    pub(super) async fn job_list(&self) -> Result<Vec<Listed<JobInfo>>, ApiError> {
        let mut all = Store::scan_all_checked::<JobRecord>(&self.store.jobs).await?;
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all
            .into_iter()
            .filter_map(|(key, record)| match record {
                Ok(j) if j.deleted_at.is_some() => None,
                Ok(j) => Some(Listed::Ok(job_info(&j))),
                Err(corrupt) => Some(Listed::Corrupt(CorruptRecord { key, corrupt })),
            })
            .collect())
    }

    pub(super) async fn job_assign(&self, req: JobSelect, assign: bool) -> Result<JobInfo, ApiError> {
        if req.select.is_empty() || req.select.all {
            return Err(ApiError::new(ErrorCode::InvalidRequest, "name at least one --target or --group"));
        }
        self.store.require_enlisted(&req.select.targets).await?;
        let groups = self.store.all_groups().await?;
        expand_groups(&req.select.groups, &groups)?;
        let (before, _) = self.store.job(&req.job).await?;
        let after = Store::try_modify(&self.store.jobs, req.job.as_str(), |old: Option<JobRecord>| {
            let Some(mut j) = old.filter(|j| j.deleted_at.is_none()) else {
                return Err(ApiError::new(ErrorCode::NotFound, format!("no job is named '{}'", req.job)));
            };
            for t in &req.select.targets {
                if assign {
                    j.targets.insert(t.clone())
                } else {
                    j.targets.remove(t)
                };
            }
            for g in &req.select.groups {
                if assign {
                    j.groups.insert(g.clone())
                } else {
                    j.groups.remove(g)
                };
            }
            j.updated_at = Utc::now();
            Ok(Some(j))
        })
        .await?
        .expect("written");
        let items = reach_changes(&after, &Store::concerned(&before, &groups), &Store::concerned(&after, &groups));
        let posted = changes(items);
        self.publish_posted(&posted, |_| Post::default()).await;
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
                format!(
                    "job '{}' is not assigned to target '{t}' (use `musterctl job assign {} --target {t}`)",
                    job.spec.name, job.spec.name
                ),
            ));
        }
        Ok(chosen.into_iter().collect())
    }

    /// Posts a start to each target, then force-polls them all at once so
    /// online targets start now; offline ones start at their next poll.
    ///
    /// The starts are published concurrently and the answer waits for each
    /// manifest's ack: a target answered `posted`, `delivered` or `queued`
    /// has its start durably in its manifest; one whose publish failed is
    /// `failed`, with no run id (nothing will run). With
    /// [`StartReply::Posted`] the answer goes out then, and the force-polls
    /// follow in the background (the answer does not claim their result);
    /// with [`StartReply::Polled`] it waits for them, each target
    /// `delivered` or `queued`.
    pub(super) async fn job_start(&self, req: StartStop) -> Result<Vec<Delivery>, ApiError> {
        let expires_in = expiry(&req)?;
        let reply = req.reply;
        let given = req.params;
        let req = req.job;
        let began = Instant::now();
        let (job, _) = self.store.job(&req.job).await?;
        let (params, secrets) = start_params(&job.spec, &given)?;
        let targets = self.select_for_job(&job, &req.select).await?;
        let sealed = self.seal_for(&targets, &secrets).await?;
        let now = Utc::now();
        let mut starts = Vec::with_capacity(targets.len());
        for (t, sealed) in targets.into_iter().zip(sealed) {
            let start = StartEntry::new(Uuid::now_v7(), job.id, job.spec.name.clone(), now, expires_in)
                .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e))?;
            starts.push((t, StartEntry { params: params.clone(), sealed, ..start }));
        }
        tracing::debug!(job = %job.spec.name, selected = ?began.elapsed(), "targets of a start selected");
        Ok(self.post_starts(starts, reply).await)
    }

    /// `secrets` sealed for each of `targets` (in their order), or `None`
    /// each when there are none. A target without a key (an older agent,
    /// or one only an operator enlisted) refuses the whole start.
    async fn seal_for(&self, targets: &[TargetName], secrets: &params::Values) -> Result<Vec<Option<Sealed>>, ApiError> {
        if secrets.is_empty() {
            return Ok(vec![None; targets.len()]);
        }
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let record = self.store.target(t).await?;
            let Some(key) = record.xkey else {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("target '{t}' has no key to seal secret parameters for (its agent is older, or has not enlisted itself); not started"),
                ));
            };
            let sealed = sealed::seal(secrets, &key)
                .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("target '{t}': {e}")))?;
            out.push(Some(sealed));
        }
        Ok(out)
    }

    /// Posts each target's start into its manifest, each with its
    /// download-list row (the same run id in both: the run is one run),
    /// then force-polls them (see [`Ctx::job_start`]). Shared by `job
    /// start` and `exec`, whose starts carry their command.
    pub(super) async fn post_starts(&self, starts: Vec<(TargetName, StartEntry)>, reply: StartReply) -> Vec<Delivery> {
        let began = Instant::now();
        let items: Vec<_> = starts
            .iter()
            .map(|(t, s)| (t.clone(), InstructionOp::StartJob { job_id: s.job_id, job: s.job.clone(), run_id: s.run_id }))
            .collect();
        let posted = changes(items);
        let starts: HashMap<TargetName, StartEntry> = starts.into_iter().collect();
        let mut published = self
            .publish_posted(&posted, |t| Post { starts: starts.get(t).cloned().into_iter().collect(), ..Post::default() })
            .await;
        let publish_took = began.elapsed();
        // Each target's start as its publish left it: posted, or failed.
        let mut deliveries = Vec::with_capacity(posted.len());
        let mut to_poll = Vec::with_capacity(posted.len());
        for i in posted {
            let run_id = match &i.op {
                InstructionOp::StartJob { run_id, .. } => *run_id,
                _ => continue,
            };
            let failed =
                |message: String| Delivery { target: i.target.clone(), run_id: None, state: DeliveryState::Failed, message };
            match published.remove(&i.target) {
                Some(Ok(Published::Written { .. })) => {
                    to_poll.push(i.target.clone());
                    deliveries.push(Delivery {
                        target: i.target,
                        run_id: Some(run_id),
                        state: DeliveryState::Posted,
                        message: String::new(),
                    });
                }
                Some(Ok(Published::Unchanged(_))) => deliveries.push(failed(format!("target '{}' is not enlisted", i.target))),
                Some(Err(e)) => deliveries.push(failed(format!("the start was not posted: {e}"))),
                None => deliveries.push(failed("the start was not posted: the master could not read its records".into())),
            }
        }
        match reply {
            StartReply::Posted => {
                tracing::debug!(targets = deliveries.len(), publish = ?publish_took, "starts posted; force-polling after the reply");
                let ctx = self.clone();
                tokio::spawn(async move {
                    // A few sweeps at once: starts in a burst do not pile up control requests.
                    let _permit = POLL_SWEEPS.acquire().await.expect("never closed");
                    let offline = ctx.poll_started(to_poll).await.into_iter().filter(|(_, r)| r.is_err()).count();
                    tracing::debug!(offline, "force-polled the targets of a start");
                });
            }
            StartReply::Polled => {
                let mut polled: HashMap<TargetName, Result<(), ApiError>> =
                    self.poll_started(to_poll).await.into_iter().collect();
                for d in &mut deliveries {
                    match polled.remove(&d.target) {
                        Some(Ok(())) => d.state = DeliveryState::Delivered,
                        Some(Err(e)) => (d.state, d.message) = (DeliveryState::Queued, e.message),
                        None => {}
                    }
                }
                tracing::debug!(targets = deliveries.len(), publish = ?publish_took, total = ?began.elapsed(), "starts posted and force-polled");
            }
        }
        sorted(deliveries)
    }

    /// Force-polls the targets a start was posted to, all at once.
    async fn poll_started(&self, targets: Vec<TargetName>) -> Vec<(TargetName, Result<(), ApiError>)> {
        futures::stream::iter(targets)
            .map(|t| async move {
                let polled = self.force_poll(&t).await.map(|_| ());
                (t, polled)
            })
            .buffer_unordered(CONTROL_IN_FLIGHT)
            .collect()
            .await
    }

    /// Stops a job at once through the control subject where the target is
    /// online, and through a queued instruction where it is not.
    pub(super) async fn job_stop(&self, req: StartStop) -> Result<Vec<Delivery>, ApiError> {
        let expires_in = expiry(&req)?;
        let req = req.job;
        let (job, _) = self.store.job(&req.job).await?;
        let targets = self.select_for_job(&job, &req.select).await?;
        let deliveries = futures::stream::iter(targets)
            .map(|t| {
                let job = job.clone();
                let ctx = self.clone();
                async move {
                    let delivery = |target, state, message| Delivery { target, run_id: None, state, message };
                    match ctx.control(&t, ControlOp::Stop { job: job.spec.name.clone() }).await {
                        Ok(r) => {
                            let message = if r.stopped == Some(true) { "stopped" } else { "was not running" };
                            (delivery(t, DeliveryState::Delivered, message.into()), None)
                        }
                        Err(e) if e.code == ErrorCode::Offline || e.code == ErrorCode::Timeout => {
                            let op = InstructionOp::StopJob { job_id: job.id, job: job.spec.name.clone() };
                            let i = change(&t, op);
                            (delivery(t, DeliveryState::Queued, e.message), Some(i))
                        }
                        Err(e) => (delivery(t, DeliveryState::Failed, e.message), None),
                    }
                }
            })
            .buffer_unordered(CONTROL_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        // Targets that did not answer get a stop entry, for when they read.
        let (deliveries, queued): (Vec<Delivery>, Vec<Option<Instruction>>) = deliveries.into_iter().unzip();
        let queued: Vec<Instruction> = queued.into_iter().flatten().collect();
        let now = Utc::now();
        self.publish_posted(&queued, |_| Post {
            stops: StopEntry::new(Uuid::now_v7(), job.id, job.spec.name.clone(), now, expires_in).ok().into_iter().collect(),
            ..Post::default()
        })
        .await;
        Ok(sorted(deliveries))
    }

    pub(super) async fn job_status(&self, req: JobRef) -> Result<Vec<JobTargetStatus>, ApiError> {
        let (job, _) = self.store.job(&req.job).await?;
        let groups = self.store.all_groups().await?;
        // Read concurrently, kept in target order.
        let reads: Vec<_> = futures::stream::iter(Store::concerned(&job, &groups))
            .map(|t| {
                let kv = self.store.jobstatus.clone();
                async move { Store::read::<JobTargetStatus>(&kv, &Store::status_key(job.id, &t)).await }
            })
            .buffered(STATUS_READS_IN_FLIGHT)
            .collect()
            .await;
        let mut out = Vec::with_capacity(reads.len());
        for r in reads {
            out.extend(r?.map(|(s, _)| s));
        }
        Ok(out)
    }
}

/// How long a start or stop waits for its targets: `--expires`, checked
/// before anything is posted, or [`DEFAULT_EXPIRY`].
fn expiry(req: &StartStop) -> Result<std::time::Duration, ApiError> {
    let Some(secs) = req.expires_secs else {
        return Ok(DEFAULT_EXPIRY);
    };
    let expires_in = std::time::Duration::from_secs(secs);
    desired::check_expiry(expires_in)
        .map(|_| expires_in)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("--expires: {e}")))
}

/// What moves a job from reaching `was` to reaching `now`: an upsert for
/// each target that gains it, a delete for each that loses it.
pub(super) fn reach_changes(
    job: &JobRecord,
    was: &BTreeSet<TargetName>,
    now: &BTreeSet<TargetName>,
) -> Vec<(TargetName, InstructionOp)> {
    let mut items: Vec<_> = now.difference(was).map(|t| (t.clone(), InstructionOp::UpsertJob { job: job.def() })).collect();
    items.extend(
        was.difference(now).map(|t| (t.clone(), InstructionOp::DeleteJob { job_id: job.id, job: job.spec.name.clone() })),
    );
    items
}

/// A job as the API shows it.
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

fn sorted(mut d: Vec<Delivery>) -> Vec<Delivery> {
    d.sort_by(|a, b| a.target.cmp(&b.target));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<TargetName> {
        list.iter().map(|n| TargetName::new(*n).unwrap()).collect()
    }

    #[test]
    fn reach_changes_post_upserts_to_gainers_and_deletes_to_losers_only() {
        let spec = JobSpec::from_commands(JobName::new("j").unwrap(), &["true".to_owned()]);
        let j = JobRecord { targets: names(&["a"]), ..JobRecord::new(Uuid::new_v4(), spec, Utc::now()) };
        let items = reach_changes(&j, &names(&["a", "b"]), &names(&["b", "c"]));
        let got: Vec<(String, &str)> = items.iter().map(|(t, op)| (t.to_string(), op.name())).collect();
        assert_eq!(got, [("c".to_owned(), "upsert_job"), ("a".to_owned(), "delete_job")]);
        assert!(reach_changes(&j, &names(&["a"]), &names(&["a"])).is_empty());
    }
}
