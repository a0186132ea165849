//! What targets report about their desired state, turned into the download
//! list and into manifests without the starts that were answered.
//!
//! Why here and not in [`crate::ingest`]: ingest drains `MUSTER_RESULTS`
//! and routes each record; what an applied record or a run's first record
//! *means* for the download list and the manifest is a rule of the
//! desired-state design, kept in one room.
//!
//! - An applied record (`muster.result.<t>.applied`) settles every pending
//!   download-list row of that target whose revision is at or below the
//!   applied revision: `applied`, or `failed` with the target's error (the
//!   whole revision refused, or the row's job not applied). The target is
//!   `blocked` while its latest applied record had a failure, as with the
//!   previous design's instruction records.
//!   An applied record at or above the revision that told a target to
//!   defect ends its record (the manifest stays, saying `defected`).
//! - A manual run's first record (any outcome: running, or at once expired,
//!   failed, skipped) answers its start entry, which leaves the manifest: a
//!   start is never run twice, and the manifest does not grow. One publish
//!   per target per batch, through [`crate::publish`]; a run id the
//!   manifest no longer lists changes nothing.

use std::collections::BTreeMap;

use muster_shared::api::{InstrRow, InstrStatus};
use muster_shared::desired::AppliedRecord;
use muster_shared::name::TargetName;
use uuid::Uuid;

use crate::publish::{Post, PublishError, Publisher};
use crate::store::{Change, Store, StoreError, TargetRecord};

/// Download-list rows written at once for one applied record.
const ROW_WRITES_IN_FLIGHT: usize = 64;

/// Targets whose applied records are settled at once (each reads its rows
/// through a consumer of its own, created and deleted).
const TARGETS_IN_FLIGHT: usize = 32;

/// What an applied record makes of one download-list row: `None` when the
/// record does not cover it (posted above the applied revision, already
/// settled, or a row of the previous design, which has no revision).
pub fn row_outcome(r: &AppliedRecord, row: &InstrRow) -> Option<(InstrStatus, Option<String>)> {
    if row.status != InstrStatus::Pending || row.revision.is_none_or(|v| v > r.applied.revision) {
        return None;
    }
    if let Some(refused) = &r.refused {
        return Some((InstrStatus::Failed, Some(refused.clone())));
    }
    let failed = row.job.as_ref().and_then(|job| r.errors.iter().find(|e| &e.job == job));
    Some(match failed {
        Some(e) => (InstrStatus::Failed, Some(e.error.clone())),
        None => (InstrStatus::Applied, None),
    })
}

/// Why the target is blocked after this record (`None`: it is not).
pub fn failure(r: &AppliedRecord) -> Option<String> {
    let revision = r.applied.revision;
    if let Some(refused) = &r.refused {
        return Some(format!("revision {revision} refused: {refused}"));
    }
    r.errors.first().map(|e| format!("revision {revision}: job '{}': {}", e.job, e.error))
}

/// Settles what a batch's applied records say: the download-list rows they
/// cover, and `blocked`. Targets are handled concurrently (each reads its
/// rows once), each target's records in order.
///
/// # Errors
/// NATS errors writing the rows or the targets' records (the batch is
/// redelivered; every write is idempotent).
pub async fn record_applied_many(store: &Store, records: Vec<AppliedRecord>) -> Result<(), StoreError> {
    use futures::StreamExt;
    let mut per_target: BTreeMap<TargetName, Vec<AppliedRecord>> = BTreeMap::new();
    for r in records {
        per_target.entry(r.target.clone()).or_default().push(r);
    }
    let results: Vec<Result<(), StoreError>> = futures::stream::iter(per_target)
        .map(|(t, records)| async move {
            let mut rows = store.instr_rows_with_revisions(&t).await?;
            for r in &records {
                settle(store, r, &mut rows).await?;
            }
            Ok(())
        })
        .buffer_unordered(TARGETS_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Settles the rows of `r`'s target that `r` covers (`rows`: the target's
/// rows with their revisions, kept up to date) and sets or clears `blocked`.
async fn settle(store: &Store, r: &AppliedRecord, rows: &mut [(InstrRow, u64)]) -> Result<(), StoreError> {
    use futures::StreamExt;
    let due: Vec<(usize, InstrRow, u64)> = rows
        .iter()
        .enumerate()
        .filter(|(_, (row, _))| row_outcome(r, row).is_some())
        .map(|(i, (row, revision))| (i, row.clone(), *revision))
        .collect();
    let writes = due.into_iter().map(|(i, row, revision)| async move {
        let key = Store::instr_key(&r.target, row.id);
        // One compare-and-set on the revision read; re-read only if it moved.
        let mut current = Some((row, revision));
        Store::compare_and_set(&store.instructions, &key, &mut current, |old: Option<&InstrRow>| {
            // Settled meanwhile (another replica, a redelivery), or gone: kept.
            Ok::<_, StoreError>(match old.and_then(|old| row_outcome(r, old).map(|o| (old, o))) {
                Some((old, (status, error))) => {
                    let mut next = old.clone();
                    next.status = status;
                    next.applied_at = Some(r.at);
                    next.error = error;
                    Change::Put(next)
                }
                None => Change::Keep,
            })
        })
        .await?;
        Ok::<_, StoreError>((i, current))
    });
    let results: Vec<_> = futures::stream::iter(writes).buffer_unordered(ROW_WRITES_IN_FLIGHT).collect().await;
    for w in results {
        if let (i, Some(now)) = w? {
            rows[i] = now;
        }
    }
    // The target's record, read once for both questions.
    let record = Store::read::<TargetRecord>(&store.targets, r.target.as_str()).await?.map(|(t, _)| t);
    if defection_applied(store, r, record.as_ref()).await? {
        return Ok(());
    }
    set_blocked_as(store, &r.target, failure(r), record.as_ref()).await
}

/// When the record says the target applied the defection its record marks
/// (the manifest that says `defected`, or a later one), the record goes, as
/// with a forced defection; the manifest stays and keeps the agent out.
/// Returns whether it went.
async fn defection_applied(store: &Store, r: &AppliedRecord, record: Option<&TargetRecord>) -> Result<bool, StoreError> {
    if r.refused.is_some() || record.is_none_or(|t| t.defected_at.is_none()) {
        return Ok(false);
    }
    let Some(m) = store.manifest(&r.target).await? else {
        return Ok(false);
    };
    if !m.defected || m.epoch != r.applied.epoch || r.applied.revision < m.revision {
        return Ok(false);
    }
    // Only while still defected: an operator may have enlisted it meanwhile.
    Store::modify(&store.targets, r.target.as_str(), |old: Option<TargetRecord>| match old {
        Some(t) if t.defected_at.is_some() => None,
        other => other,
    })
    .await?;
    tracing::info!(target = %r.target, "target defected");
    Ok(true)
}

/// Makes the target `blocked` with `failure`, or clears it. Most reports
/// change nothing: the write is skipped then, and a target with no record
/// (defected) is left alone.
///
/// # Errors
/// NATS errors reading or writing the target's record.
pub async fn set_blocked(store: &Store, target: &TargetName, failure: Option<String>) -> Result<(), StoreError> {
    let record = Store::read::<TargetRecord>(&store.targets, target.as_str()).await?.map(|(t, _)| t);
    set_blocked_as(store, target, failure, record.as_ref()).await
}

/// [`set_blocked`] with the target's record already read.
async fn set_blocked_as(
    store: &Store,
    target: &TargetName,
    failure: Option<String>,
    record: Option<&TargetRecord>,
) -> Result<(), StoreError> {
    match record {
        Some(t) if t.blocked != failure => {}
        _ => return Ok(()),
    }
    Store::modify(&store.targets, target.as_str(), |old: Option<TargetRecord>| {
        old.map(|mut t| {
            t.blocked.clone_from(&failure);
            t
        })
    })
    .await?;
    Ok(())
}

/// Takes the start entries these runs answered out of their targets'
/// manifests, one publish per target.
///
/// # Errors
/// When the records cannot be read, or a target's manifest could not be
/// written (the batch is redelivered, so the start is taken out later). A
/// manifest the change cannot fix (too big, invalid) is only logged:
/// reconcile and the expiry sweep deal with it.
pub async fn answered(publisher: &Publisher, runs: &[(TargetName, Uuid)]) -> Result<(), StoreError> {
    let mut per_target: BTreeMap<TargetName, Post> = BTreeMap::new();
    for (t, run_id) in runs {
        per_target.entry(t.clone()).or_default().answered.push(*run_id);
    }
    if per_target.is_empty() {
        return Ok(());
    }
    for (t, result) in publisher.publish_many(per_target.into_iter().collect()).await? {
        match result {
            Ok(_) => {}
            Err(PublishError::Store(e)) => return Err(e),
            Err(PublishError::Conflict { .. }) => return Err(StoreError::Conflict { key: publisher.store().subjects.state(&t) }),
            Err(e) => {
                tracing::warn!(target = %t, error = %e, "answered starts left in the manifest")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use muster_shared::desired::{Applied, JobError, Revision};
    use muster_shared::name::JobName;

    use super::*;

    fn record(revision: u64) -> AppliedRecord {
        AppliedRecord {
            v: 1,
            target: TargetName::new("web01").unwrap(),
            applied: Applied { epoch: Uuid::nil(), revision: Revision(revision), changes: revision },
            at: Utc::now(),
            refused: None,
            errors: Vec::new(),
        }
    }

    fn row(revision: Option<u64>, job: Option<&str>) -> InstrRow {
        InstrRow {
            id: Uuid::now_v7(),
            target: TargetName::new("web01").unwrap(),
            op: "upsert_job".into(),
            job: job.map(|j| JobName::new(j).unwrap()),
            posted_at: Utc::now(),
            status: InstrStatus::Pending,
            applied_at: None,
            error: None,
            revision: revision.map(Revision),
        }
    }

    #[test]
    fn rows_at_or_below_the_applied_revision_are_applied_the_rest_stay_unread() {
        let r = record(5);
        assert_eq!(row_outcome(&r, &row(Some(4), None)), Some((InstrStatus::Applied, None)));
        assert_eq!(row_outcome(&r, &row(Some(5), Some("j"))), Some((InstrStatus::Applied, None)));
        assert_eq!(row_outcome(&r, &row(Some(6), None)), None, "posted above: unread");
        assert_eq!(row_outcome(&r, &row(None, None)), None, "previous design's row");
        let mut settled = row(Some(3), None);
        settled.status = InstrStatus::Dropped;
        assert_eq!(row_outcome(&r, &settled), None);
        assert_eq!(failure(&r), None);
    }

    #[test]
    fn a_refused_revision_fails_every_row_it_covers_and_a_job_error_only_that_jobs() {
        let mut refused = record(5);
        refused.refused = Some("manifest names another target".into());
        assert_eq!(
            row_outcome(&refused, &row(Some(2), Some("j"))),
            Some((InstrStatus::Failed, Some("manifest names another target".into())))
        );
        assert!(failure(&refused).unwrap().contains("revision 5 refused"));

        let mut partial = record(5);
        partial.errors.push(JobError {
            job_id: Uuid::nil(),
            job: JobName::new("bad").unwrap(),
            error: "invalid document".into(),
        });
        assert_eq!(
            row_outcome(&partial, &row(Some(5), Some("bad"))),
            Some((InstrStatus::Failed, Some("invalid document".into())))
        );
        assert_eq!(row_outcome(&partial, &row(Some(5), Some("good"))), Some((InstrStatus::Applied, None)));
        assert_eq!(failure(&partial).as_deref(), Some("revision 5: job 'bad': invalid document"));
    }

    #[tokio::test]
    async fn a_batch_settles_the_rows_of_each_of_its_targets_and_only_theirs() {
        let ts = crate::store::testing::open().await;
        let store = &ts.store;
        // `web0` is a prefix of `web01`'s name, not of its keys' tokens.
        let names = ["web01", "web02", "web0"];
        let mut posted = Vec::new();
        for n in names {
            let t = TargetName::new(n).unwrap();
            Store::put(&store.targets, n, &TargetRecord::new(t.clone(), 60, Utc::now())).await.unwrap();
            for revision in [2, 3] {
                let r = InstrRow { target: t.clone(), ..row(Some(revision), None) };
                Store::put(&store.instructions, &Store::instr_key(&t, r.id), &r).await.unwrap();
                posted.push(r);
            }
        }
        let at = |n: &str, revision| AppliedRecord { target: TargetName::new(n).unwrap(), ..record(revision) };
        let mut failing = at("web02", 3);
        failing.refused = Some("bad manifest".into());
        // web01 twice: in order, the second settles what the first left.
        record_applied_many(store, vec![at("web01", 2), failing, at("web01", 3)]).await.unwrap();

        let stored = store.instr_rows(None).await.unwrap();
        let status = |n: &str, revision: u64| {
            let r = stored.iter().find(|r| r.target.as_str() == n && r.revision == Some(Revision(revision))).unwrap();
            (r.status, r.error.clone())
        };
        assert_eq!(status("web01", 2), (InstrStatus::Applied, None));
        assert_eq!(status("web01", 3), (InstrStatus::Applied, None));
        assert_eq!(status("web02", 3), (InstrStatus::Failed, Some("bad manifest".into())));
        assert_eq!(status("web0", 2), (InstrStatus::Pending, None), "no record of its own: untouched");
        assert_eq!(stored.len(), posted.len());
        let blocked =
            |n: &'static str| async move { Store::read::<TargetRecord>(&store.targets, n).await.unwrap().unwrap().0.blocked };
        assert!(blocked("web02").await.unwrap().contains("refused"));
        assert_eq!(blocked("web01").await, None);
    }
}
