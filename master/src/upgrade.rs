//! Upgrading an installation made by the previous design, which queued
//! instructions on `MUSTER_ASSIGN` with a durable consumer per target.
//!
//! Why a conversion and not a fresh start: what the old queue still holds
//! was promised to someone. Job definitions and assignments live in the
//! records and reach every target by its manifest anyway (reconcile
//! publishes every enlisted target's desired state); what only the queue
//! holds is the starts an operator posted to targets that had not read them
//! yet. So, when the old stream is there:
//!
//! 1. every consumer on it is deleted (nothing per target stays on the
//!    server; it also lets one reader read the whole stream);
//! 2. its messages are read to the end (by Direct Get: a work-queue stream
//!    takes no other reader);
//! 3. each queued `start_job` not yet expired (the default expiry, counted
//!    from when it was posted) becomes a start entry in its target's
//!    manifest, with the same run id, and its download-list row stays
//!    pending under the revision that carries it; a start whose run already
//!    has a record, or that the manifest already lists, is not added again;
//! 4. every other queued instruction's row is marked `dropped` (the
//!    manifest says the same thing, as state);
//! 5. the stream is deleted.
//!
//! Each step is idempotent and the stream goes last, so a master killed
//! midway converts again at its next start and loses nothing.

use std::collections::BTreeMap;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::ErrorCode as JsErrorCode;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use muster_shared::api::{InstrRow, InstrStatus, JobTargetStatus};
use muster_shared::desired::{Revision, StartEntry, DEFAULT_EXPIRY};
use muster_shared::msg::{self, Instruction, InstructionOp};
use muster_shared::name::TargetName;
use uuid::Uuid;

use crate::publish::{Post, PublishError, Publisher, Row};
use crate::store::{Store, StoreError, TargetRecord};

/// What a conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Converted {
    pub consumers: usize,
    pub queued: usize,
    pub starts: usize,
    pub dropped: usize,
}

/// What to do with the queued instructions, decided from them alone.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Starts still within their expiry, per target, each with its row.
    pub starts: BTreeMap<TargetName, Vec<(StartEntry, Row)>>,
    /// Rows of everything else: `(target, instruction id)`.
    pub dropped: Vec<(TargetName, Uuid)>,
}

/// Sorts queued instructions into starts to carry over and rows to drop.
pub fn plan(queued: Vec<Instruction>, now: DateTime<Utc>) -> Plan {
    let expiry = chrono::Duration::from_std(DEFAULT_EXPIRY).expect("an hour");
    let mut plan = Plan::default();
    for i in queued {
        match &i.op {
            InstructionOp::StartJob { job_id, job, run_id } if i.posted_at + expiry > now => {
                let start = StartEntry {
                    run_id: *run_id,
                    job_id: *job_id,
                    job: job.clone(),
                    revision: Revision::ZERO,
                    posted_at: i.posted_at,
                    expires_at: i.posted_at + expiry,
                    exec: None,
                    params: Default::default(),
                    sealed: None,
                };
                let row = Row { id: i.id, op: i.op.name().to_owned(), job: Some(job.clone()) };
                plan.starts.entry(i.target.clone()).or_default().push((start, row));
            }
            _ => plan.dropped.push((i.target.clone(), i.id)),
        }
    }
    plan
}

/// Converts the previous design's queue, if there is one (`None`: nothing
/// to convert).
///
/// # Errors
/// NATS errors, or a target whose manifest could not take its starts: the
/// stream is kept, and the next start of the master converts again.
pub async fn convert(publisher: &Publisher) -> Result<Option<Converted>, StoreError> {
    let store = publisher.store();
    let name = store.subjects.assign_stream();
    let stream = match store.js.get_stream(&name).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == JsErrorCode::STREAM_NOT_FOUND) => {
            return Ok(None)
        }
        Err(e) => return Err(StoreError::nats(format!("opening {name}"), e)),
    };
    let mut done = Converted::default();

    let consumers: Vec<String> = stream
        .consumer_names()
        .try_collect()
        .await
        .map_err(|e| StoreError::nats(format!("listing the consumers of {name}"), e))?;
    for consumer in &consumers {
        stream
            .delete_consumer(consumer)
            .await
            .map_err(|e| StoreError::nats(format!("deleting consumer {consumer} of {name}"), e))?;
    }
    done.consumers = consumers.len();

    // A work-queue stream takes no reader but an acking consumer: read it
    // by Direct Get, one message after another, over the gaps acks left.
    let mut queued = Vec::new();
    let mut seq = 1;
    loop {
        let m = match stream.direct_get_next_for_subject(store.subjects.assign_all(), Some(seq)).await {
            Ok(m) => m,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
            Err(e) => return Err(StoreError::nats(format!("reading {name}"), e)),
        };
        seq = m.sequence + 1;
        match msg::decode::<Instruction>(&m.payload) {
            Ok(i) if store.subjects.assign(&i.target) == m.subject.as_str() => queued.push(i),
            _ => {
                tracing::warn!(subject = %m.subject, "unreadable queued instruction left out of the upgrade")
            }
        }
    }
    done.queued = queued.len();

    let plan = plan(queued, Utc::now());
    let mut items = Vec::new();
    let mut dropped = plan.dropped;
    for (t, starts) in plan.starts {
        let enlisted =
            Store::read::<TargetRecord>(&store.targets, t.as_str()).await?.is_some_and(|(r, _)| r.defected_at.is_none());
        let listed = store.manifest(&t).await?.map(|m| m.starts).unwrap_or_default();
        let mut post = Post::default();
        for (start, row) in starts {
            if !enlisted || already_ran(store, &t, &start).await? {
                dropped.push((t.clone(), row.id));
            } else if !listed.iter().any(|s| s.run_id == start.run_id) {
                post.starts.push(start);
                post.rows.push(row);
            }
        }
        if !post.starts.is_empty() {
            items.push((t, post));
        }
    }
    for (t, result) in publisher.publish_many(items).await? {
        match result {
            Ok(_) => {}
            Err(PublishError::Store(e)) => return Err(e),
            Err(e) => {
                return Err(StoreError::Conflict { key: format!("{}: {e}", store.subjects.state(&t)) });
            }
        }
        done.starts += 1;
    }

    let marks = futures::stream::iter(dropped)
        .map(|(t, id)| async move {
            Store::modify(&store.instructions, &Store::instr_key(&t, id), |old: Option<InstrRow>| {
                old.map(|mut row| {
                    if row.status == InstrStatus::Pending {
                        row.status = InstrStatus::Dropped;
                    }
                    row
                })
            })
            .await
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for m in marks {
        m?;
        done.dropped += 1;
    }

    store.js.delete_stream(&name).await.map_err(|e| StoreError::nats(format!("deleting {name}"), e))?;
    tracing::info!(
        consumers = done.consumers,
        queued = done.queued,
        targets_with_starts = done.starts,
        dropped = done.dropped,
        "converted the previous design's instruction queue ({name}) and deleted it"
    );
    Ok(Some(done))
}

/// Whether the start's run, or a later run of the job on the target, has
/// a record already (job status): carrying it over could run it twice.
async fn already_ran(store: &Store, t: &TargetName, start: &StartEntry) -> Result<bool, StoreError> {
    let key = Store::status_key(start.job_id, t);
    Ok(Store::read::<JobTargetStatus>(&store.jobstatus, &key).await?.is_some_and(|(s, _)| s.run_id >= start.run_id))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use muster_shared::job::JobSpec;
    use muster_shared::name::JobName;

    use super::*;
    use crate::store::testing::open;
    use crate::store::JobRecord;
    use crate::store::{consumer_config, stream_config};
    use muster_shared::streams;

    fn t(n: &str) -> TargetName {
        TargetName::new(n).unwrap()
    }

    #[test]
    fn unexpired_starts_are_carried_over_and_the_rest_dropped() {
        let now = Utc::now();
        let job = JobName::new("j").unwrap();
        let start = |posted_at| Instruction {
            v: 1,
            id: Uuid::now_v7(),
            target: t("a"),
            posted_at,
            op: InstructionOp::StartJob { job_id: Uuid::nil(), job: job.clone(), run_id: Uuid::now_v7() },
        };
        let fresh = start(now - chrono::Duration::minutes(5));
        let stale = start(now - chrono::Duration::hours(2));
        let other = Instruction { op: InstructionOp::DeleteAllJobs, ..start(now) };
        let p = plan(vec![fresh.clone(), stale.clone(), other.clone()], now);
        let carried = &p.starts[&t("a")];
        assert_eq!(carried.len(), 1);
        let InstructionOp::StartJob { run_id, .. } = fresh.op else { unreachable!() };
        assert_eq!(carried[0].0.run_id, run_id, "the same run id");
        assert_eq!(carried[0].0.expires_at, fresh.posted_at + chrono::Duration::hours(1));
        assert_eq!(carried[0].1.id, fresh.id, "its row");
        assert_eq!(p.dropped, vec![(t("a"), stale.id), (t("a"), other.id)]);
    }

    #[tokio::test]
    async fn the_old_queue_becomes_start_entries_and_goes_with_its_consumers() {
        let ts = open().await;
        let store = &ts.store;
        let publisher = Publisher::new(store.clone());
        let now = Utc::now();
        for name in ["a", "b"] {
            let record = TargetRecord::new(t(name), 60, now);
            Store::put(&store.targets, name, &record).await.unwrap();
        }
        let spec = JobSpec::from_commands(JobName::new("j").unwrap(), &["true".to_owned()]);
        let job = JobRecord { targets: BTreeSet::from([t("a"), t("b")]), ..JobRecord::new(Uuid::new_v4(), spec, now) };
        Store::put(&store.jobs, "j", &job).await.unwrap();
        let run_id = Uuid::now_v7();
        // The previous version's queue: the stream, a consumer per target,
        // instructions queued on it.
        let options = streams::StoreOptions::default();
        store.js.create_stream(stream_config(&streams::assign_stream(&store.subjects, &options))).await.unwrap();
        for name in ["a", "b"] {
            let spec = streams::target_consumer(&store.subjects, &t(name), &options);
            store.js.create_consumer_on_stream(consumer_config(&spec), store.subjects.assign_stream()).await.unwrap();
        }
        let mut posted = Vec::new();
        for (target, op) in [
            (t("a"), InstructionOp::UpsertJob { job: job.def() }),
            (t("a"), InstructionOp::StartJob { job_id: job.id, job: job.spec.name.clone(), run_id }),
            (t("b"), InstructionOp::UpsertJob { job: job.def() }),
        ] {
            let i = Instruction { v: 1, id: Uuid::now_v7(), target: target.clone(), posted_at: Utc::now(), op };
            store.js.publish(store.subjects.assign(&target), msg::encode(&i).into()).await.unwrap().await.unwrap();
            Store::modify(&store.instructions, &Store::instr_key(&target, i.id), |old| Some(crate::store::posted_row(&i, old)))
                .await
                .unwrap();
            posted.push(i);
        }

        let done = convert(&publisher).await.unwrap().expect("an old queue");
        assert_eq!((done.consumers, done.queued, done.starts, done.dropped), (2, 3, 1, 2));
        let m = store.manifest(&t("a")).await.unwrap().expect("a's manifest");
        assert_eq!(m.starts.iter().map(|s| s.run_id).collect::<Vec<_>>(), [run_id]);
        assert_eq!(m.jobs.len(), 1, "published with its derived half");
        let rows = store.instr_rows(None).await.unwrap();
        let status = |id: Uuid| rows.iter().find(|r| r.id == id).map(|r| (r.status, r.revision));
        assert_eq!(status(posted[0].id), Some((InstrStatus::Dropped, None)));
        assert_eq!(status(posted[1].id), Some((InstrStatus::Pending, Some(m.revision))));
        assert_eq!(status(posted[2].id), Some((InstrStatus::Dropped, None)));
        assert!(store.js.get_stream(store.subjects.assign_stream()).await.is_err(), "the stream is gone");

        assert_eq!(convert(&publisher).await.unwrap(), None, "nothing left to convert");
    }
}
