//! Posting to chosen targets (`set-poll`, `sync-time`, `resync`) and reading
//! the download list (`musterctl instructions`).
//!
//! Each operation resolves its selection (targets, groups, or `--all`) and
//! posts the same kind of instruction to each target in one pipelined batch;
//! the answer says what was posted where.

use std::collections::BTreeSet;

use chrono::Utc;
use futures::StreamExt;
use muster_shared::api::{self as wire, ApiError, ErrorCode, InstrStatus, InstructionsQuery, PostRequest, Posted, Selection};
use muster_shared::desired::ClockRef;
use muster_shared::msg::InstructionOp;
use muster_shared::name::TargetName;
use uuid::Uuid;

use super::desired::changes;
use super::groups::expand_groups;
use super::{Ctx, CONTROL_IN_FLIGHT};
use crate::publish::Post;
use crate::store::{InstrRow, Store, TargetRecord};

impl Ctx {
    /// The targets a selection names: its targets (each enlisted), its groups'
    /// members, or every enlisted target with `all`.
    pub(super) async fn resolve(&self, select: &Selection) -> Result<Vec<TargetName>, ApiError> {
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
    pub(super) async fn set_poll(&self, req: PostRequest) -> Result<Vec<Posted>, ApiError> {
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
                old.map(|mut r| {
                    r.poll_interval_secs = secs;
                    r.poll_set_secs = Some(secs);
                    r
                })
            })
            .await?;
        }
        self.post_each(targets, |_| vec![InstructionOp::SetPollInterval { secs }], |_| Post::default()).await
    }

    /// `sync-time`: posts the master's clock, then force-polls so online
    /// targets measure their skew now rather than a poll interval later.
    pub(super) async fn sync_time(&self, req: PostRequest) -> Result<Vec<Posted>, ApiError> {
        let targets = self.resolve(&req.select).await?;
        let clock = ClockRef { id: Uuid::now_v7(), master_time: Utc::now() };
        let posted = self
            .post_each(
                targets,
                |_| vec![InstructionOp::SyncTime { master_time: Utc::now() }],
                |_| Post { clock: Some(clock), ..Post::default() },
            )
            .await?;
        futures::stream::iter(&posted)
            .for_each_concurrent(CONTROL_IN_FLIGHT, |p| async move {
                self.force_poll(&p.target).await.ok();
            })
            .await;
        Ok(posted)
    }

    /// `resync`: republishes each target's whole desired state under a new
    /// revision, every job document rewritten, starts and stops kept
    /// (cheap and idempotent; the download list shows it as delete-all-jobs
    /// and one upsert per job that reaches it).
    pub(super) async fn resync(&self, req: PostRequest) -> Result<Vec<Posted>, ApiError> {
        let targets = self.resolve(&req.select).await?;
        let (jobs, groups) = (self.store.all_jobs().await?, self.store.all_groups().await?);
        // Nothing is dropped: the new revision carries the whole state (and
        // the starts and stops still waiting); the rows already posted are
        // settled when the target applies it.
        self.post_each(
            targets,
            |t| {
                std::iter::once(InstructionOp::DeleteAllJobs)
                    .chain(
                        jobs.iter()
                            .filter(|j| Store::concerned(j, &groups).contains(t))
                            .map(|j| InstructionOp::UpsertJob { job: j.def() }),
                    )
                    .collect()
            },
            |_| Post { force: true, ..Post::default() },
        )
        .await
    }

    /// Posts `ops(t)` to each target, in order, in one pipelined batch, then
    /// publishes each target's desired state with what `extra(t)` adds.
    async fn post_each(
        &self,
        targets: Vec<TargetName>,
        ops: impl Fn(&TargetName) -> Vec<InstructionOp>,
        extra: impl Fn(&TargetName) -> Post,
    ) -> Result<Vec<Posted>, ApiError> {
        let mut items = Vec::new();
        let mut posted = Vec::new();
        for t in targets {
            let ops = ops(&t);
            posted.push(Posted { target: t.clone(), ops: ops.iter().map(|o| o.name().to_owned()).collect(), dropped: 0 });
            items.extend(ops.into_iter().map(|o| (t.clone(), o)));
        }
        let instructions = changes(items);
        self.publish_posted(&instructions, extra).await;
        Ok(posted)
    }

    /// The download list, of one target or all, optionally only pending or
    /// failed rows, the latest `limit`.
    pub(super) async fn instructions(&self, q: InstructionsQuery) -> Result<Vec<InstrRow>, ApiError> {
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
}
