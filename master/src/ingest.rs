//! Draining `MUSTER_RESULTS` into job status, the download list and the
//! run index (`muster-runs`: where each run's kept record is, for `run show`).
//! Applied records and answered starts are handed to [`crate::applied`].
//!
//! Every master replica pulls from the one durable consumer `master`, so each
//! record is handled by one replica at a time. Records are handled in batches;
//! a batch is acked only after its KV writes are confirmed, so a master killed
//! mid-drain redelivers the batch, and the writes are idempotent (a record
//! never moves job status backwards), so redelivery duplicates nothing.
//!
//! A record that cannot be read (not JSON, another version, too big) or that
//! contradicts its subject (another target, another job) is logged with its
//! subject, counted (`muster_bad_messages_total{kind="result_…"}`), and
//! terminated: it is never redelivered and never blocks the records behind
//! it. Records acknowledged are counted by kind, and final run records by
//! outcome, once their batch is acked ([`crate::metrics`]).
//!
//! Batches are bounded in bytes as well as in count ([`BATCH_BYTES`], also
//! the most one pull asks for): run records reach 1 MiB, and a count alone
//! would hold hundreds of megabytes and get the master dropped as a slow
//! consumer while it drains a backlog.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::AckKind;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use muster_shared::api::JobTargetStatus;
use muster_shared::desired::AppliedRecord;
use muster_shared::identity;
use muster_shared::msg::{self, InstrRecord, InstructionKind, Outcome, RunRecord, Trigger};
use muster_shared::runs::RunIndexEntry;
use muster_shared::streams::MASTER_CONSUMER;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::applied;
use crate::metrics::{Inbound, Metrics, ResultKind};
use crate::publish::Publisher;
use crate::store::{reported_row, Change, Current, InstrRow, Store, StoreError};

/// Records handled per batch.
pub const BATCH: usize = 512;

/// Bytes of records per batch, and per pull: with [`BATCHES_IN_FLIGHT`],
/// the master holds at most a few tens of megabytes of records.
pub const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Runs until `shutdown`, reconnecting to the consumer whenever it fails.
///
/// # Errors
/// Never in practice: failures are logged and retried.
pub async fn run(publisher: Publisher, metrics: Arc<Metrics>, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = drain(&publisher, &metrics, &shutdown) => r,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "results drain interrupted; resuming");
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn drain(publisher: &Publisher, metrics: &Arc<Metrics>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let store = publisher.store();
    let stream = store.js.get_stream_no_info(store.subjects.results_stream()).await?;
    let consumer: PullConsumer =
        stream.get_consumer(MASTER_CONSUMER).await.map_err(|e| anyhow::anyhow!("results consumer: {e}"))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .max_bytes_per_batch(BATCH_BYTES)
        .heartbeat(Duration::from_secs(1))
        // Short pull requests: a killed master's outstanding request holds
        // records (until ack_wait) only while it has not expired.
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    let cache = Arc::new(StatusCache::default());
    // Batches are written concurrently (each acks its own records once its
    // writes are confirmed), so the next batch arrives while one is written.
    let mut in_flight = FuturesUnordered::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut batch_bytes = 0;
    let mut flush_at: Option<tokio::time::Instant> = None;
    let mut turn = tokio::time::interval(StatusCache::TURN);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = turn.tick() => cache.turn(),
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let () = done?;
            }
            next = messages.next(), if in_flight.len() < BATCHES_IN_FLIGHT => match next {
                Some(m) => {
                    let m = m?;
                    batch_bytes += m.payload.len();
                    batch.push(m);
                    // Gather for a moment: more records per batch, fewer writes.
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
                }
                None => anyhow::bail!("results consumer ended"),
            },
            () = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                flush_at = None;
            }
        }
        if !batch.is_empty() && (batch.len() >= BATCH || batch_bytes >= BATCH_BYTES || flush_at.is_none()) {
            flush_at = None;
            batch_bytes = 0;
            let (publisher, cache, metrics, records) =
                (publisher.clone(), cache.clone(), metrics.clone(), std::mem::take(&mut batch));
            in_flight.push(async move { write_and_ack(&publisher, &cache, &metrics, &records).await });
        }
    }
    // Shutdown: finish what is being written, so its acks go out.
    while let Some(done) = in_flight.next().await {
        done?;
    }
    Ok(())
}

/// Batches being written at once.
const BATCHES_IN_FLIGHT: usize = 4;

/// How long the first record of a batch waits for others to join it.
const GATHER: Duration = Duration::from_millis(2);

async fn write_and_ack(
    publisher: &Publisher,
    cache: &StatusCache,
    metrics: &Metrics,
    batch: &[async_nats::jetstream::Message],
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let Handled { bad, ended } = handle_batch(publisher, cache, metrics, batch).await?;
    tracing::debug!(records = batch.len(), bad = bad.len(), took = ?started.elapsed(), "results batch written");
    for (i, m) in batch.iter().enumerate() {
        let is_bad = bad.contains(&i);
        m.ack_with(if is_bad { AckKind::Term } else { AckKind::Ack }).await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        if !is_bad {
            metrics.ingested(ResultKind::of(&m.subject));
        }
    }
    for outcome in ended {
        metrics.run_ended(outcome);
    }
    Ok(())
}

/// What a batch held, once written.
#[derive(Debug, Default)]
struct Handled {
    /// The indexes of bad records, to be terminated.
    bad: Vec<usize>,
    /// The outcomes of the final run records.
    ended: Vec<Outcome>,
}

/// Writes a batch's job status and download-list rows.
async fn handle_batch(
    publisher: &Publisher,
    cache: &StatusCache,
    metrics: &Metrics,
    batch: &[async_nats::jetstream::Message],
) -> Result<Handled, StoreError> {
    let store = publisher.store();
    // Applied records, and the manual runs whose start entries they answer.
    let mut applied_records: Vec<AppliedRecord> = Vec::new();
    let mut answered = Vec::new();
    // Keep only the newest record per (job, target); older ones in the same
    // batch would be overwritten anyway.
    let mut newest: HashMap<String, JobTargetStatus> = HashMap::new();
    let mut instr: Vec<InstrRecord> = Vec::new();
    // The run index entry each run's records in this batch make.
    let mut index: HashMap<Uuid, RunIndexEntry> = HashMap::new();
    // Events derived from the records (see crate::events).
    let mut events = Vec::new();
    let mut handled = Handled::default();
    for (i, m) in batch.iter().enumerate() {
        let subject = m.subject.as_str();
        let kind = ResultKind::of(subject);
        let verdict = if kind == ResultKind::Applied {
            msg::decode::<AppliedRecord>(&m.payload).map_err(|e| e.to_string()).and_then(|r| {
                identity::check_applied(&store.subjects, subject, &r).map_err(|e| e.to_string())?;
                events.extend(crate::events::from_applied(&r));
                applied_records.push(r);
                Ok(())
            })
        } else if kind == ResultKind::Instr {
            msg::decode::<InstrRecord>(&m.payload).map_err(|e| e.to_string()).and_then(|r| {
                identity::check_instr(&store.subjects, subject, &r).map_err(|e| e.to_string())?;
                instr.push(r);
                Ok(())
            })
        } else {
            msg::decode::<RunRecord>(&m.payload).map_err(|e| e.to_string()).and_then(|r| {
                identity::check_run(&store.subjects, subject, &r).map_err(|e| e.to_string())?;
                if matches!(r.trigger, Trigger::Manual | Trigger::Exec) {
                    answered.push((r.target.clone(), r.run_id));
                }
                let seq = m.info().map_err(|e| format!("not a stream message: {e}"))?.stream_sequence;
                if r.outcome.is_final() {
                    handled.ended.push(r.outcome);
                }
                let entry =
                    RunIndexEntry { v: 1, target: r.target.clone(), job_id: r.job_id, seq, is_final: r.outcome.is_final() };
                match index.get(&r.run_id) {
                    Some(have) if !entry.supersedes(have) => {}
                    _ => {
                        index.insert(r.run_id, entry);
                    }
                }
                // An exec has no job to show a status for, and a key per
                // exec would only pile up: its runs live in history.
                if r.trigger == Trigger::Exec {
                    return Ok(());
                }
                events.extend(crate::events::from_record(&r));
                let mut status = JobTargetStatus::from(&r);
                let key = Store::status_key(r.job_id, &r.target);
                match newest.get(&key) {
                    Some(have) if !supersedes(&status, have) => {}
                    have => {
                        // What came before in this batch; else what is stored.
                        status.previous = have.and_then(JobTargetStatus::last_final);
                        newest.insert(key, status);
                    }
                }
                Ok(())
            })
        };
        if let Err(error) = verdict {
            metrics.bad_message(Inbound::Result(kind));
            let count = metrics.bad_messages(&Inbound::RESULTS);
            tracing::warn!(subject, error, bad_results = count, "bad result record terminated");
            handled.bad.push(i);
        }
    }
    let writes = futures::stream::iter(newest)
        .map(|(key, status)| async move {
            // One write per key at a time: batches in flight together often
            // carry the same keys, and racing compare-and-sets would fail.
            let slot = cache.slot(&key);
            let mut known = slot.lock().await;
            let run_id = status.run_id;
            write_status(store, &key, status, &mut known).await?;
            // What is stored for this run, whoever wrote it (a redelivery).
            Ok::<_, StoreError>(
                known.as_ref().filter(|(s, _)| s.run_id == run_id).and_then(|(s, _)| crate::events::from_status(s)),
            )
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect::<Vec<_>>();
    // The index is another bucket, written alongside job status; what the
    // applied records and answered starts mean for the download list and
    // the manifests touches neither, so it goes at the same time.
    let desired = async {
        applied::record_applied_many(store, applied_records).await?;
        applied::answered(publisher, &answered).await
    };
    let (writes, indexed, desired) = futures::join!(writes, write_index(store, index), desired);
    indexed?;
    for w in writes {
        events.extend(w?);
    }
    crate::events::publish(store, events).await?;
    desired?;
    let instr_writes = futures::stream::iter(instr)
        .map(|r| async move { apply_instr_record(store, &r).await })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    for w in instr_writes {
        w?;
    }
    Ok(handled)
}

/// KV writes in flight at once while draining.
const WRITES_IN_FLIGHT: usize = 256;

/// The job status this master last wrote or read per key, with its KV
/// revision, each behind its own lock. With it, a write is one
/// compare-and-set and no read, and two batches never race on one key; when
/// another master replica wrote in between, the compare-and-set fails and
/// the key is read again.
///
/// Bounded in count and in time, since it only saves reads: keys live in
/// two generations, and each turn ([`StatusCache::TURN`], or when the
/// current one is full) drops the older one but for the slots being
/// written, so a key unused for two turns is gone and a master whose
/// targets went quiet holds nothing here.
#[derive(Debug, Default)]
pub struct StatusCache {
    slots: Mutex<Generations>,
}

type Slot = Arc<tokio::sync::Mutex<Known>>;

#[derive(Debug, Default)]
struct Generations {
    current: HashMap<String, Slot>,
    previous: HashMap<String, Slot>,
}

/// What a key is known to hold, and at which revision.
type Known = Current<JobTargetStatus>;

impl StatusCache {
    /// Keys in one generation (so at most twice this, plus the slots being
    /// written).
    const MAX_ENTRIES: usize = 16_384;

    /// How often the generations turn.
    pub const TURN: Duration = Duration::from_secs(30);

    fn slot(&self, key: &str) -> Slot {
        let mut g = self.slots.lock().expect("status cache lock");
        if let Some(slot) = g.current.get(key) {
            return slot.clone();
        }
        if let Some(slot) = g.previous.remove(key) {
            g.current.insert(key.to_owned(), slot.clone());
            return slot;
        }
        if g.current.len() >= Self::MAX_ENTRIES {
            g.turn();
        }
        g.current.entry(key.to_owned()).or_default().clone()
    }

    /// Drops the keys not used since the last turn.
    pub fn turn(&self) {
        self.slots.lock().expect("status cache lock").turn();
    }

    /// Keys held, both generations.
    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.slots.lock().expect("status cache lock");
        g.current.len() + g.previous.len()
    }
}

impl Generations {
    fn turn(&mut self) {
        let old = std::mem::replace(&mut self.previous, std::mem::take(&mut self.current));
        // A slot being written stays: one write per key at a time.
        self.current.extend(old.into_iter().filter(|(_, slot)| Arc::strong_count(slot) > 1));
    }
}

/// Makes `status` the job status at `key` unless what is there supersedes
/// it; `known` is what the key held, and is kept up to date.
async fn write_status(store: &Store, key: &str, status: JobTargetStatus, known: &mut Known) -> Result<(), StoreError> {
    Store::compare_and_set(&store.jobstatus, key, known, |have| {
        Ok(match have {
            Some(have) if !supersedes(&status, have) => Change::Keep,
            have => Change::Put(JobTargetStatus {
                previous: status.previous.or_else(|| have.and_then(JobTargetStatus::last_final)),
                ..status.clone()
            }),
        })
    })
    .await
}

/// Makes each entry its run's index entry, final wins: a final record's
/// entry is put whatever is there (a start entry, or another copy of the
/// same final record), a start record's entry is only created (the server
/// refuses it when the key exists). In whatever order batches land, a run
/// that has a final record ends up pointing at one.
///
/// The index only speeds up `run show` (the stream is the truth, and a run
/// missing from the index is found by a bounded read), so its writes are
/// plain publishes on the bucket's subjects, sent in one go and flushed
/// before the batch is acked, rather than one acknowledged write per run:
/// awaiting an ack for each halved the drain rate.
async fn write_index(store: &Store, index: HashMap<Uuid, RunIndexEntry>) -> Result<(), StoreError> {
    if index.is_empty() {
        return Ok(());
    }
    let client = store.js.client();
    let prefix = store.runs.put_prefix.as_deref().unwrap_or(&store.runs.prefix).to_owned();
    for (run_id, entry) in index {
        let body = bytes::Bytes::from(serde_json::to_vec(&entry).expect("index entries serialise"));
        let mut headers = async_nats::HeaderMap::new();
        if !entry.is_final {
            headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        }
        client
            .publish_with_headers(format!("{prefix}{run_id}"), headers, body)
            .await
            .map_err(|e| StoreError::nats("indexing runs", e))?;
    }
    client.flush().await.map_err(|e| StoreError::nats("indexing runs", e))
}

/// Whether `new` should replace `have` as the last outcome: a later run, or
/// the end of the same run. Replays of older records never win.
pub fn supersedes(new: &JobTargetStatus, have: &JobTargetStatus) -> bool {
    if new.run_id == have.run_id {
        return new.outcome.is_final() && !have.outcome.is_final();
    }
    (new.started_at, new.run_id) > (have.started_at, have.run_id)
}

/// Records a target's report on the instructions a poll applied: their
/// download-list rows, and whether the target is blocked.
pub(crate) async fn apply_instr_record(store: &Store, r: &InstrRecord) -> Result<(), StoreError> {
    let mut failure = None;
    for o in &r.outcomes {
        let key = Store::instr_key(&r.target, o.id);
        Store::modify(&store.instructions, &key, |old: Option<InstrRow>| Some(reported_row(&r.target, o, old))).await?;
        if let Some(e) = &o.error {
            failure = Some(format!("{} {}: {e}", o.op, o.id));
        }
        if o.op == InstructionKind::Defect && o.error.is_none() {
            // The target left: its record goes (its manifest stays, defected).
            store.targets.delete(r.target.as_str()).await.ok();
            tracing::info!(target = %r.target, "target defected");
            return Ok(());
        }
    }
    // Blocked while its latest poll had a failure; a clean poll clears it.
    applied::set_blocked(store, &r.target, failure).await
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, Utc};
    use muster_shared::api::InstrStatus;
    use muster_shared::msg::{InstrOutcome, InstructionOp, Outcome};
    use muster_shared::name::{JobName, TargetName};
    use uuid::Uuid;

    use super::*;
    use crate::store::testing::open;

    fn status(run_id: Uuid, started_at: DateTime<Utc>, outcome: Outcome) -> JobTargetStatus {
        JobTargetStatus {
            job: JobName::new("backup").unwrap(),
            target: TargetName::new("web01").unwrap(),
            outcome,
            run_id,
            started_at,
            finished_at: outcome.is_final().then_some(started_at),
            duration_ms: None,
            message: String::new(),
            previous: None,
        }
    }

    #[test]
    fn the_status_cache_forgets_keys_unused_for_two_turns_but_never_a_slot_being_written() {
        let cache = StatusCache::default();
        for k in ["a", "b", "c"] {
            cache.slot(k);
        }
        let held = cache.slot("held");
        cache.turn();
        cache.slot("a");
        cache.turn();
        let mut kept: Vec<String> = {
            let g = cache.slots.lock().unwrap();
            g.current.keys().chain(g.previous.keys()).cloned().collect()
        };
        kept.sort();
        assert_eq!(kept, ["a", "held"]);
        assert!(Arc::ptr_eq(&held, &cache.slot("held")), "one lock per key while it is written");
        drop(held);
        cache.turn();
        cache.turn();
        assert_eq!(cache.len(), 0, "a quiet master holds nothing");
        for n in 0..5 * StatusCache::MAX_ENTRIES {
            cache.slot(&format!("k{n}"));
            assert!(cache.len() <= 2 * StatusCache::MAX_ENTRIES);
        }
    }

    #[test]
    fn the_end_of_a_run_supersedes_its_start_never_the_reverse() {
        let (run, at) = (Uuid::now_v7(), Utc::now());
        let running = status(run, at, Outcome::Running);
        let done = status(run, at, Outcome::Succeeded);
        assert!(supersedes(&done, &running));
        assert!(!supersedes(&running, &done), "a replayed start does not undo the end");
        assert!(!supersedes(&done, &done), "a replayed end changes nothing");
        assert!(!supersedes(&status(run, at, Outcome::Failed), &done), "one run ends once");
    }

    #[test]
    fn a_later_run_supersedes_an_earlier_one_whatever_their_outcomes() {
        let at = Utc::now();
        let earlier = status(Uuid::now_v7(), at, Outcome::Succeeded);
        let later = status(Uuid::now_v7(), at + Duration::seconds(1), Outcome::Running);
        assert!(supersedes(&later, &earlier));
        assert!(!supersedes(&earlier, &later), "a replay of an older run never wins");
    }

    #[test]
    fn runs_started_at_the_same_instant_are_ordered_by_run_id() {
        let at = Utc::now();
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(first < second);
        assert!(supersedes(&status(second, at, Outcome::Succeeded), &status(first, at, Outcome::Succeeded)));
        assert!(!supersedes(&status(first, at, Outcome::Succeeded), &status(second, at, Outcome::Succeeded)));
    }

    #[tokio::test]
    async fn an_older_record_does_not_overwrite_job_status_with_a_cold_cache() {
        let t = open().await;
        let at = Utc::now();
        let newer = status(Uuid::now_v7(), at + Duration::seconds(1), Outcome::Succeeded);
        let older = status(Uuid::now_v7(), at, Outcome::Failed);
        let key = "k";
        write_status(&t.store, key, newer.clone(), &mut None).await.unwrap();
        // This replica's cache knows nothing of the key (another replica wrote it).
        let mut known = None;
        write_status(&t.store, key, older, &mut known).await.unwrap();
        let stored = Store::read::<JobTargetStatus>(&t.store.jobstatus, key).await.unwrap();
        assert_eq!(stored.as_ref().map(|(s, _)| s), Some(&newer));
        assert_eq!(known, stored, "the cache learnt what is there");
    }

    #[tokio::test]
    async fn the_run_index_points_at_a_final_record_whatever_the_order() {
        let t = open().await;
        let entry = |seq: u64, is_final: bool| RunIndexEntry {
            v: 1,
            target: TargetName::new("web01").unwrap(),
            job_id: Uuid::nil(),
            seq,
            is_final,
        };
        // start, end, and a replayed start; in stream order and reversed
        for (order, want) in [
            ([(3, false), (5, true), (9, false)], entry(5, true)),
            ([(9, false), (5, true), (3, false)], entry(5, true)),
            ([(3, false), (9, false), (12, false)], entry(3, false)),
        ] {
            let run_id = Uuid::now_v7();
            for (seq, is_final) in order {
                write_index(&t.store, HashMap::from([(run_id, entry(seq, is_final))])).await.unwrap();
            }
            // The writes are plain publishes, stored a moment after they were
            // sent. An acknowledged write behind them on the same connection
            // and stream returns once they were all taken or refused.
            t.store.runs.put("settled", "".into()).await.unwrap();
            let stored = Store::read::<RunIndexEntry>(&t.store.runs, &run_id.to_string()).await.unwrap();
            assert_eq!(stored.map(|(e, _)| e), Some(want), "{order:?}");
        }
    }

    /// The bug this guards against: when the target's report was written
    /// first, the master's own row used to be dropped, leaving `job: None`
    /// and the apply time as the post time.
    #[tokio::test]
    async fn a_report_that_arrives_before_the_posted_row_keeps_what_was_posted() {
        let t = open().await;
        let target = TargetName::new("web01").unwrap();
        let job = JobName::new("backup").unwrap();
        for target_first in [true, false] {
            let op = InstructionOp::StartJob { job_id: Uuid::nil(), job: job.clone(), run_id: Uuid::now_v7() };
            let i =
                muster_shared::msg::Instruction { v: 1, id: Uuid::now_v7(), target: target.clone(), posted_at: Utc::now(), op };
            let applied_at = i.posted_at + Duration::seconds(3);
            let outcome = InstrOutcome { id: i.id, op: i.op.kind(), applied_at, error: None };
            let report = InstrRecord { v: 1, target: target.clone(), outcomes: vec![outcome] };
            if target_first {
                apply_instr_record(&t.store, &report).await.unwrap();
                Store::modify(&t.store.instructions, &Store::instr_key(&target, i.id), |old| {
                    Some(crate::store::posted_row(&i, old))
                })
                .await
                .unwrap();
            } else {
                Store::modify(&t.store.instructions, &Store::instr_key(&target, i.id), |old| {
                    Some(crate::store::posted_row(&i, old))
                })
                .await
                .unwrap();
                apply_instr_record(&t.store, &report).await.unwrap();
            }
            let key = Store::instr_key(&target, i.id);
            let (row, _) = Store::read::<InstrRow>(&t.store.instructions, &key).await.unwrap().expect("a row");
            let expected = InstrRow {
                id: i.id,
                target: target.clone(),
                op: "start_job".into(),
                job: Some(job.clone()),
                posted_at: i.posted_at,
                status: InstrStatus::Applied,
                applied_at: Some(applied_at),
                error: None,
                revision: None,
            };
            assert_eq!(row, expected, "target reported first: {target_first}");
        }
    }
}
