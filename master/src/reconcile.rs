//! Reconcile: every published manifest must say what the records say.
//!
//! Why: a change is two writes, the record and then the publishes, and a
//! master can die between them (or a publish can fail). Because manifests
//! are derived from the records (`desired.rs`), repairing that needs no log
//! of what was meant: derive again, compare, republish what differs
//! (`docs/DESIGN.md`, "Reconcile").
//!
//! A full pass runs at master start (in the background: the API serves at
//! once) and again whenever a publish failed or was published from records
//! a concurrent change overtook ([`Publisher::wait_dirty`]), with backoff
//! until a pass is clean. It costs three bucket scans and one headers-only
//! read of every manifest's `Muster-Summary` (no bodies), and writes only
//! the targets whose digest differs. It also finishes job deletes: a
//! tombstoned job's documents are purged and its record removed once a
//! clean pass shows no manifest lists it.
//!
//! Every minute, the expiry sweep reads the summaries only and rewrites the
//! manifests whose `due` time passed: stops that expired go, and starts
//! nobody answered a day past their expiry are removed and recorded
//! `expired` on the target's run subject, with the message id the target
//! would have used, so the run has one final record whoever writes it.
//!
//! Nothing here is kept between passes. Within one, the summaries are
//! streamed ([`each_summary`]): the sweep keeps only the due targets, a full
//! pass one digest per enlisted target. Between passes the loop drops idle
//! cache entries and returns freed memory ([`crate::trim`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use async_nats::HeaderMap;
use chrono::Utc;
use futures::StreamExt;
use muster_runtime::backoff::Backoff;
use muster_shared::desired::{Digest, ManifestSummary, StartEntry, SUMMARY_HEADER};
use muster_shared::msg::{self, Outcome, RunRecord};
use muster_shared::name::TargetName;
use muster_shared::{KIND_HEADER, PROTOCOL_VERSION};
use tokio_util::sync::CancellationToken;

use crate::desired::{derive, gone};
use crate::publish::{Post, Published, Publisher, Records};
use crate::store::{JobRecord, Store, StoreError};

/// How often the expiry sweep reads the summaries.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How often, between passes, idle cache entries are dropped and freed
/// memory is returned ([`crate::trim`]).
const HOUSEKEEPING: Duration = Duration::from_secs(15);

/// How long a full pass waits after the first failed or overtaken publish,
/// so a burst of concurrent changes is checked once.
const DIRTY_DEBOUNCE: Duration = Duration::from_secs(1);

/// What one pass did, for the log and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Manifests read (their summaries).
    pub surveyed: usize,
    /// Targets republished.
    pub republished: usize,
    /// Targets whose publish failed (the pass is not clean).
    pub failed: usize,
    /// Starts recorded `expired` by the master.
    pub expired: usize,
    /// Deleted jobs whose tombstone was cleared.
    pub tombstones: usize,
}

/// Runs reconcile until `shutdown`: a full pass now and after every failed
/// publish, the expiry sweep every [`SWEEP_EVERY`].
pub async fn run(publisher: Publisher, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let mut full = true;
    loop {
        let pass = if full { reconcile(&publisher).await } else { sweep(&publisher).await };
        match pass {
            Ok(p) if p.failed == 0 => {
                backoff.reset();
                if p.republished + p.expired + p.tombstones > 0 || full {
                    tracing::info!(
                        full,
                        surveyed = p.surveyed,
                        republished = p.republished,
                        expired = p.expired,
                        tombstones = p.tombstones,
                        "desired state reconciled"
                    );
                }
                full = false;
            }
            Ok(p) => {
                tracing::warn!(failed = p.failed, "reconcile left targets unpublished; retrying");
                full = true;
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reconcile failed; retrying");
                full = true;
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
        }
        // Between passes, every [`HOUSEKEEPING`]: the manifest cache drops
        // what sat idle, and what the last burst of work freed goes back.
        let next_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
        loop {
            publisher.expire_cache();
            crate::trim::release().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = publisher.wait_dirty() => {
                    full = true;
                    // Debounce: a burst of changes costs one pass, not one each.
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(DIRTY_DEBOUNCE) => {}
                    }
                    break;
                }
                () = tokio::time::sleep_until(next_sweep) => break,
                () = tokio::time::sleep(HOUSEKEEPING) => {}
            }
        }
    }
}

/// One full pass (see the module docs).
///
/// # Errors
/// When the records or the summaries cannot be read.
pub async fn reconcile(publisher: &Publisher) -> Result<Pass, StoreError> {
    let store = publisher.store();
    let records = Records::read(store).await?;
    // Each enlisted target's digest only (the records and derived states
    // go at once); the summaries are compared as they are read.
    let mut digests: HashMap<TargetName, Digest> = {
        let targets = store.all_targets().await?;
        derive(&targets, &records.jobs, &records.groups).into_iter().map(|(t, d)| (t, d.digest())).collect()
    };
    let now = Utc::now();
    let left = gone().digest();
    let mut items = Vec::new();
    let surveyed = each_summary(store, |t, s| match digests.remove(&t) {
        Some(d) => match s {
            Some(s) if s.digest == d => {
                if s.due.is_some_and(|due| due <= now) {
                    items.push((t, Post { prune: true, ..Post::default() }));
                }
            }
            _ => items.push((t, Post::default())),
        },
        // Manifests of targets with no record any more: defected, and kept.
        None => {
            if s.is_none_or(|s| s.digest != left) {
                items.push((t, Post::default()));
            }
        }
    })
    .await?;
    // Enlisted targets with no manifest yet.
    items.extend(digests.into_keys().map(|t| (t, Post::default())));
    let mut pass = Pass { surveyed, ..Pass::default() };
    let records = Arc::new(records);
    publish(publisher, items, records.clone(), &mut pass).await;
    if pass.failed == 0 {
        if records.overtaken(store).await? {
            publisher.mark_dirty();
        } else {
            pass.tombstones = clear_tombstones(store, &records.jobs).await?;
        }
    }
    Ok(pass)
}

/// The expiry sweep: summaries only; rewrites the manifests that are due.
///
/// # Errors
/// When the summaries cannot be read.
pub async fn sweep(publisher: &Publisher) -> Result<Pass, StoreError> {
    let store = publisher.store();
    let now = Utc::now();
    // Only the targets that are due are kept, not the fleet.
    let mut items: Vec<(TargetName, Post)> = Vec::new();
    let surveyed = each_summary(store, |t, s| {
        if s.is_some_and(|s| s.due.is_some_and(|due| due <= now)) {
            items.push((t, Post { prune: true, ..Post::default() }));
        }
    })
    .await?;
    let mut pass = Pass { surveyed, ..Pass::default() };
    if !items.is_empty() {
        let records = Arc::new(Records::read(store).await?);
        publish(publisher, items, records, &mut pass).await;
    }
    Ok(pass)
}

async fn publish(publisher: &Publisher, items: Vec<(TargetName, Post)>, records: Arc<Records>, pass: &mut Pass) {
    for (t, result) in publisher.publish_with(items, records).await {
        match result {
            Ok(Published::Written { pruned, .. }) => {
                pass.republished += 1;
                for start in pruned {
                    match record_expired(publisher.store(), &t, &start).await {
                        Ok(()) => pass.expired += 1,
                        Err(e) => {
                            tracing::warn!(target = %t, run_id = %start.run_id, error = %e, "could not record an expired start");
                        }
                    }
                }
            }
            Ok(Published::Unchanged(_)) => {}
            Err(_) => pass.failed += 1,
        }
    }
}

/// Every manifest's summary, by target, from one headers-only read (last
/// message per subject). `None`: a manifest whose header is unreadable.
/// Holds the whole fleet: for what must answer with all of it (`target
/// list`); the passes here use [`each_summary`].
///
/// # Errors
/// When the stream cannot be read.
pub async fn summaries(store: &Store) -> Result<HashMap<TargetName, Option<ManifestSummary>>, StoreError> {
    let mut out = HashMap::new();
    each_summary(store, |name, summary| {
        out.insert(name, summary);
    })
    .await?;
    Ok(out)
}

/// Calls `f` with every manifest's summary as it is read (one headers-only
/// read, last message per subject), keeping none of them: a pass over
/// 100,000 targets holds only what `f` keeps. Returns how many were read.
///
/// # Errors
/// When the stream cannot be read.
pub async fn each_summary(store: &Store, mut f: impl FnMut(TargetName, Option<ManifestSummary>)) -> Result<usize, StoreError> {
    const READING: &str = "reading the manifests' summaries";
    let consumer = store
        .desired
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: store.subjects.state_all(),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| StoreError::nats(READING, e))?;
    let total = consumer.cached_info().num_pending;
    let name = consumer.cached_info().name.clone();
    let mut read = 0;
    if total > 0 {
        let mut messages = consumer.messages().await.map_err(|e| StoreError::nats(READING, e))?;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| StoreError::nats(READING, e))?;
            let pending = m.info().map(|i| i.pending).unwrap_or(0);
            let name = store.subjects.target_of(m.subject.as_str()).and_then(|n| TargetName::new(n).ok());
            if let Some(name) = name {
                let summary =
                    m.headers.as_ref().and_then(|h| h.get(SUMMARY_HEADER)).and_then(|v| serde_json::from_str(v.as_str()).ok());
                f(name, summary);
                read += 1;
            }
            if pending == 0 {
                break;
            }
        }
    }
    // Gone now rather than at the server's inactivity timeout.
    store.desired.delete_consumer(&name).await.ok();
    Ok(read)
}

/// Records a start nobody answered as `expired`, on the target's run
/// subject, under the id the target itself would have used.
async fn record_expired(store: &Store, t: &TargetName, start: &StartEntry) -> Result<(), StoreError> {
    let record = RunRecord {
        params: Default::default(),
        v: PROTOCOL_VERSION,
        run_id: start.run_id,
        job_id: start.job_id,
        job: start.job.clone(),
        target: t.clone(),
        trigger: start.trigger(),
        outcome: Outcome::Expired,
        started_at: start.posted_at,
        finished_at: Some(Utc::now()),
        message: format!("start expired at {} and the target never read it; it did not run", start.expires_at),
        steps: Vec::new(),
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", record.msg_id().as_str());
    headers.insert(KIND_HEADER, "run");
    let what = || format!("recording an expired start for '{t}'");
    store
        .js
        .publish_with_headers(store.subjects.result_run(t, start.job_id), headers, msg::encode(&record).into())
        .await
        .map_err(|e| StoreError::nats(what(), e))?
        .await
        .map_err(|e| StoreError::nats(what(), e))?;
    Ok(())
}

/// After a clean pass no manifest lists a tombstoned job: purge its
/// documents everywhere and remove its record (if it is still that
/// tombstone).
async fn clear_tombstones(store: &Store, jobs: &[JobRecord]) -> Result<usize, StoreError> {
    let mut cleared = 0;
    for j in jobs.iter().filter(|j| j.deleted_at.is_some()) {
        store.purge_job_docs_everywhere(j.id).await?;
        if let Some((now, revision)) = Store::read::<JobRecord>(&store.jobs, j.spec.name.as_str()).await? {
            if now.id == j.id && now.deleted_at.is_some() {
                match store.delete_job(&j.spec.name, revision).await {
                    Ok(()) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        cleared += 1;
    }
    Ok(cleared)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::Duration as Days;
    use muster_shared::desired::{Manifest, Revision, DEFAULT_EXPIRY};
    use muster_shared::job::JobSpec;
    use muster_shared::name::JobName;
    use uuid::Uuid;

    use super::*;
    use crate::store::testing::open;
    use crate::store::TargetRecord;

    fn t(n: &str) -> TargetName {
        TargetName::new(n).unwrap()
    }

    async fn enlist(store: &Store, n: &str) {
        let record = TargetRecord::new(t(n), 60, Utc::now());
        Store::put(&store.targets, n, &record).await.unwrap();
    }

    fn job(name: &str, targets: &[&str]) -> JobRecord {
        JobRecord {
            targets: targets.iter().map(|n| t(n)).collect::<BTreeSet<_>>(),
            ..JobRecord::new(
                Uuid::new_v4(),
                JobSpec::from_commands(JobName::new(name).unwrap(), &["true".to_owned()]),
                Utc::now(),
            )
        }
    }

    async fn manifest(store: &Store, n: &str) -> Option<Manifest> {
        let m = store.desired.direct_get_last_for_subject(store.subjects.state(&t(n))).await.ok()?;
        Some(msg::decode(&m.payload).unwrap())
    }

    #[tokio::test]
    async fn records_written_without_a_publish_are_published_and_tombstones_cleared() {
        let ts = open().await;
        let store = &ts.store;
        let p = Publisher::new(store.clone());
        // What a master killed after its record writes leaves: records, no manifests.
        for n in ["a", "b", "c"] {
            enlist(store, n).await;
        }
        let kept = job("kept", &["a", "b"]);
        Store::put(&store.jobs, "kept", &kept).await.unwrap();
        let pass = reconcile(&p).await.unwrap();
        assert_eq!((pass.surveyed, pass.republished, pass.failed), (0, 3, 0));
        assert_eq!(manifest(store, "a").await.unwrap().jobs[0].id, kept.id);
        assert!(manifest(store, "c").await.unwrap().jobs.is_empty());
        let again = reconcile(&p).await.unwrap();
        assert_eq!((again.surveyed, again.republished), (3, 0), "nothing differs: nothing written");

        // A delete that died after its tombstone: reconcile finishes it.
        let mut tomb = kept.clone();
        tomb.deleted_at = Some(Utc::now());
        Store::put(&store.jobs, "kept", &tomb).await.unwrap();
        let pass = reconcile(&p).await.unwrap();
        assert_eq!((pass.republished, pass.tombstones), (2, 1));
        assert!(manifest(store, "a").await.unwrap().jobs.is_empty());
        assert_eq!(Store::read::<JobRecord>(&store.jobs, "kept").await.unwrap(), None);
        let doc = store.desired.direct_get_last_for_subject(store.subjects.job_doc(&t("a"), kept.id)).await;
        assert!(doc.is_err(), "documents purged");

        // A forced defection deleted the record: the manifest stays, defected.
        Store::delete(&store.targets, "c").await.unwrap();
        reconcile(&p).await.unwrap();
        assert!(manifest(store, "c").await.unwrap().defected);
    }

    #[tokio::test]
    async fn a_start_unanswered_a_day_past_its_expiry_is_recorded_expired() {
        let ts = open().await;
        let store = &ts.store;
        let p = Publisher::new(store.clone());
        enlist(store, "a").await;
        let j = job("j", &["a"]);
        Store::put(&store.jobs, "j", &j).await.unwrap();
        let long_ago = Utc::now() - Days::days(3);
        let start = StartEntry::new(Uuid::now_v7(), j.id, j.spec.name.clone(), long_ago, DEFAULT_EXPIRY).unwrap();
        let fresh = StartEntry::new(Uuid::now_v7(), j.id, j.spec.name.clone(), Utc::now(), DEFAULT_EXPIRY).unwrap();
        let records = Records::read(store).await.unwrap();
        let post = Post { starts: vec![start.clone(), fresh.clone()], ..Post::default() };
        p.publish(&t("a"), &post, &records).await.unwrap();

        let pass = sweep(&p).await.unwrap();
        assert_eq!((pass.republished, pass.expired), (1, 1));
        let m = manifest(store, "a").await.unwrap();
        assert_eq!(m.revision, Revision(2));
        assert_eq!(m.starts.iter().map(|s| s.run_id).collect::<Vec<_>>(), [fresh.run_id]);
        let results = store.js.get_stream(store.subjects.results_stream()).await.unwrap();
        let stored = results.get_last_raw_message_by_subject(&store.subjects.result_run(&t("a"), j.id)).await.unwrap();
        let record: RunRecord = msg::decode(&stored.payload).unwrap();
        assert_eq!((record.run_id, record.outcome), (start.run_id, Outcome::Expired));
        assert_eq!(stored.headers.get("Nats-Msg-Id").unwrap().as_str(), format!("run-{}-end", start.run_id));
        assert_eq!(sweep(&p).await.unwrap().republished, 0, "nothing due any more");
    }
}
