//! Targets: enlist, defect, list, show, and the control requests the master
//! sends a target (force poll, stop).
//!
//! A target's registry record is joined here with its latest poll report and
//! its queue for `target list` and `target show`; the status shown comes from
//! [`crate::status`]. Force-polls go to the target's control subject, outside
//! every stream, so an offline target is known at once (no responders).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use muster_shared::api::{
    self as wire, ApiError, CorruptRecord, EnlistRequest, ErrorCode, ForcePollOutcome, Listed, Selection, TargetInfo,
};
use muster_shared::desired::ManifestSummary;
use muster_shared::msg::{self, ControlOp, ControlReply, ControlRequest, InstructionOp, PollReport};
use muster_shared::name::{GroupName, TargetName};
use muster_shared::PROTOCOL_VERSION;
use uuid::Uuid;

use super::desired::change;
use super::{Ctx, CONTROL_IN_FLIGHT};
use crate::publish::Post;
use crate::reconcile;
use crate::status;
use crate::store::{GroupRecord, JobRecord, LastPoll, Store, StoreError, TargetRecord};

/// Default poll interval for a target that does not say (SQL Server's too).
pub const DEFAULT_POLL_INTERVAL_SECS: u64 = 60;

impl Ctx {
    /// Records the target and creates its consumer. Enlisting again is
    /// harmless (it updates location and poll interval if given).
    pub(super) async fn enlist(&self, req: EnlistRequest, instance: Option<Uuid>) -> Result<TargetInfo, ApiError> {
        if let Some(secs) = req.poll_interval_secs {
            // Agents may poll faster than `set-poll` allows (tests, demos), never slower.
            if secs == 0 || secs > *wire::POLL_INTERVAL_RANGE.end() {
                return Err(ApiError::new(ErrorCode::InvalidRequest, format!("poll interval {secs}s is outside 1..=28800")));
            }
        }
        let record = Store::modify(&self.store.targets, req.name.as_str(), |old: Option<TargetRecord>| {
            let mut t = old.unwrap_or_else(|| TargetRecord::new(req.name.clone(), DEFAULT_POLL_INTERVAL_SECS, Utc::now()));
            if let Some(l) = &req.location {
                t.location.clone_from(l);
            }
            if let Some(secs) = req.poll_interval_secs {
                t.poll_interval_secs = secs;
            }
            if instance.is_some() {
                t.instance = instance;
                // Only the agent itself says its key (an operator's enlist keeps it).
                t.xkey.clone_from(&req.xkey);
            }
            // Enlisting again brings a defected target back.
            t.defected_at = None;
            Some(t)
        })
        .await?
        .expect("written");
        self.publish(vec![(req.name.clone(), Post::default())]).await;
        tracing::info!(target = %req.name, agent = instance.is_some(), "target enlisted");
        Ok(self.target_info(&record).await)
    }

    /// Defects a target. Without `force` it is told to leave (it deletes its
    /// jobs from this master at its next poll, and its record and consumer go
    /// when it reports that); with `force` it is gone for good, and its
    /// record, consumer and pending instructions are deleted now. Either way
    /// it is taken out of every job and group at once, so nothing more is
    /// posted to it.
    ///
    /// A record that cannot be read (corrupt) goes with `--force`, as a
    /// target gone for good does; without it, the defection cannot be
    /// recorded in it, and the answer says to use `--force`.
    pub(super) async fn defect(&self, req: wire::DefectRequest) -> Result<Listed<TargetInfo>, ApiError> {
        let info = match self.store.target(&req.name).await {
            Ok(record) => Listed::Ok(self.target_info(&record).await),
            Err(StoreError::Corrupt { key, source, .. }) if req.force => {
                tracing::warn!(target = %req.name, error = %source, "deleting a corrupt target record");
                Listed::Corrupt(CorruptRecord { key, corrupt: source.to_string() })
            }
            Err(e) => return Err(e.into()),
        };
        for job in self.store.all_jobs().await? {
            if job.targets.contains(&req.name) {
                Store::modify(&self.store.jobs, job.spec.name.as_str(), |j: Option<JobRecord>| {
                    j.map(|mut j| {
                        j.targets.remove(&req.name);
                        j
                    })
                })
                .await?;
            }
        }
        for group in self.store.all_groups().await?.into_values() {
            if group.members.contains(&req.name) {
                Store::modify(&self.store.groups, group.name.as_str(), |g: Option<GroupRecord>| {
                    g.map(|mut g| {
                        g.members.remove(&req.name);
                        g
                    })
                })
                .await?;
            }
        }
        if req.force {
            self.store.drop_pending(&req.name).await?;
            Store::delete(&self.store.targets, req.name.as_str()).await?;
            // No record: its manifest says defected, and stays behind so a
            // returning agent stays out; its job documents go now.
            self.publish(vec![(req.name.clone(), Post::default())]).await;
            self.store.purge_job_docs(&req.name).await?;
            tracing::info!(target = %req.name, "target defected (forced)");
        } else {
            Store::modify(&self.store.targets, req.name.as_str(), |t: Option<TargetRecord>| {
                t.map(|mut t| {
                    t.defected_at = Some(Utc::now());
                    t
                })
            })
            .await?;
            let posted = change(&req.name, InstructionOp::Defect);
            self.publish_posted(std::slice::from_ref(&posted), |_| Post::default()).await;
            self.force_poll(&req.name).await.ok();
        }
        Ok(info)
    }

    /// Every target, from bulk reads only (what `target list` and `status`
    /// cost at 100,000 targets): one scan of the records, one read of the
    /// latest poll reports (last message per subject), one headers-only
    /// read of the manifests' summaries, whatever the number of targets.
    /// A record that cannot be read is listed as corrupt, in name order.
    pub(crate) async fn target_list(&self) -> Result<Vec<Listed<TargetInfo>>, ApiError> {
        let (mut targets, groups, polls, summaries) = tokio::try_join!(
            Store::scan_all_checked::<TargetRecord>(&self.store.targets),
            self.store.all_groups(),
            self.store.last_polls(),
            reconcile::summaries(&self.store),
        )?;
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        let now = Utc::now();
        Ok(targets
            .into_iter()
            .map(|(key, record)| match record {
                Ok(t) => {
                    let summary = summaries.get(&t.name).copied().flatten();
                    Listed::Ok(info(&t, polls.get(&t.name), summary.as_ref(), &groups, now))
                }
                Err(corrupt) => Listed::Corrupt(CorruptRecord { key, corrupt }),
            })
            .collect())
    }

    /// A target's registry entry joined with its last poll and manifest;
    /// the groups come from the publisher's snapshot of the records (no
    /// scan per call while they do not change: enlisting is one of these).
    pub async fn target_info(&self, t: &TargetRecord) -> TargetInfo {
        let (records, poll, manifest) =
            tokio::join!(self.publisher.records(), self.store.last_poll(&t.name), self.store.manifest(&t.name));
        let summary = manifest.ok().flatten().map(|m| m.summary());
        let groups = records.map(|r| r.groups.clone()).unwrap_or_default();
        info(t, poll.as_ref(), summary.as_ref(), &groups, Utc::now())
    }

    /// Force-polls an enlisted target. The registry check and the poll go out
    /// together (one round trip less on the hot path); a poll answered by an
    /// agent that is not enlisted is discarded in favour of `not_enlisted`.
    pub(super) async fn force_poll_enlisted(&self, name: &TargetName) -> Result<PollReport, ApiError> {
        let (enlisted, polled) = tokio::join!(self.store.target(name), self.force_poll(name));
        enlisted?;
        polled
    }

    /// Force-polls every selected target at once; one outcome per target,
    /// in name order. A target that is offline or slow fails alone, and
    /// holds up only its own slot.
    pub(super) async fn force_poll_many(&self, select: &Selection) -> Result<Vec<ForcePollOutcome>, ApiError> {
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
        let started = std::time::Instant::now();
        let report = self
            .control(name, ControlOp::Poll)
            .await
            .and_then(|reply| reply.report.ok_or_else(|| ApiError::internal("the target answered without a poll report")));
        self.metrics.force_polled(started.elapsed(), report.as_ref().map(|_| ()).map_err(|e| e.code));
        report
    }

    /// Sends a control request to a target and waits for its answer.
    ///
    /// # Errors
    /// `offline`, `timeout`, or the error the target answered with.
    pub(super) async fn control(&self, name: &TargetName, op: ControlOp) -> Result<ControlReply, ApiError> {
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
}

fn timeout_error(name: &TargetName, after: Duration) -> ApiError {
    ApiError::new(ErrorCode::Timeout, format!("target '{name}' did not answer within {after:?}"))
}

/// A target as `target list` and `show` tell it: its record, its latest
/// poll report and its manifest's summary. Unread = download-list rows
/// published to it above what it applied (the manifest's `changes` minus
/// the applied one's, same lineage); all of them for an agent that applied
/// nothing (an outdated agent reads no manifest).
pub fn info(
    t: &TargetRecord,
    poll: Option<&LastPoll>,
    summary: Option<&ManifestSummary>,
    groups: &HashMap<GroupName, GroupRecord>,
    now: DateTime<Utc>,
) -> TargetInfo {
    let applied = poll.and_then(|p| p.report.applied_revision);
    let unread = summary.map_or(0, |s| match applied {
        Some(a) if a.epoch == s.epoch => s.changes.saturating_sub(a.changes),
        _ => s.changes,
    });
    TargetInfo {
        name: t.name.clone(),
        location: t.location.clone(),
        enlisted_at: t.enlisted_at,
        poll_interval_secs: status::poll_interval_secs(t, poll),
        blocked: t.blocked.clone(),
        status: status::target_status(t, poll, now),
        last_poll: poll.map(|p| p.received_at),
        local_time: poll.map(|p| p.report.polled_at),
        clock_skew_ms: poll.and_then(|p| p.report.clock_skew_ms),
        agent_version: poll.map(|p| p.report.agent_version.clone()),
        bad_instructions: poll.map_or(0, |p| p.report.bad_instructions),
        bad_control: poll.map_or(0, |p| p.report.bad_control),
        unread,
        groups: groups.values().filter(|g| g.members.contains(&t.name)).map(|g| g.name.clone()).collect(),
        applied_revision: applied.map(|a| a.revision),
        published_revision: summary.map(|s| s.revision),
        timezone: poll.map(|p| p.report.timezone.clone()).unwrap_or_default(),
    }
}
