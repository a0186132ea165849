//! Draining `MUSTER_RESULTS` into job status and the download list.
//!
//! Every master replica pulls from the one durable consumer `master`, so each
//! record is handled by one replica at a time. Records are handled in batches;
//! a batch is acked only after its KV writes are confirmed, so a master killed
//! mid-drain redelivers the batch, and the writes are idempotent (a record
//! never moves job status backwards), so redelivery duplicates nothing.
//!
//! A record that cannot be read (not JSON, another version, too big) or that
//! contradicts its subject (another target, another job) is logged with its
//! subject, counted, and terminated: it is never redelivered and never
//! blocks the records behind it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::kv;
use async_nats::jetstream::AckKind;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use muster_shared::api::{ApiError, JobTargetStatus};
use muster_shared::identity;
use muster_shared::msg::{self, InstrRecord, RunRecord};
use muster_shared::streams::MASTER_CONSUMER;
use tokio_util::sync::CancellationToken;

use crate::store::{InstrRow, InstrStatus, Store, TargetRecord};

/// Bad records terminated since the master started (logged with each one).
static BAD_RESULTS: AtomicU64 = AtomicU64::new(0);

/// Records handled per batch.
pub const BATCH: usize = 512;

/// Runs until `shutdown`, reconnecting to the consumer whenever it fails.
///
/// # Errors
/// Never in practice: failures are logged and retried.
pub async fn run(store: Store, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = drain(&store, &shutdown) => r,
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

async fn drain(store: &Store, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let stream = store.js.get_stream_no_info(store.subjects.results_stream()).await?;
    let consumer: PullConsumer =
        stream.get_consumer(MASTER_CONSUMER).await.map_err(|e| anyhow::anyhow!("results consumer: {e}"))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
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
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let () = done?;
            }
            next = messages.next(), if in_flight.len() < BATCHES_IN_FLIGHT => match next {
                Some(m) => {
                    batch.push(m?);
                    // Gather for a moment: more records per batch, fewer writes.
                    flush_at.get_or_insert_with(|| tokio::time::Instant::now() + GATHER);
                }
                None => anyhow::bail!("results consumer ended"),
            },
            () = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                flush_at = None;
            }
        }
        if !batch.is_empty() && (batch.len() >= BATCH || flush_at.is_none()) {
            flush_at = None;
            let (store, cache, records) = (store.clone(), cache.clone(), std::mem::take(&mut batch));
            in_flight.push(async move { write_and_ack(&store, &cache, &records).await });
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
    store: &Store,
    cache: &StatusCache,
    batch: &[async_nats::jetstream::Message],
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let bad = handle_batch(store, cache, batch).await?;
    tracing::debug!(records = batch.len(), bad = bad.len(), took = ?started.elapsed(), "results batch written");
    for (i, m) in batch.iter().enumerate() {
        let kind = if bad.contains(&i) { AckKind::Term } else { AckKind::Ack };
        m.ack_with(kind).await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
    }
    Ok(())
}

/// Writes a batch's job status and download-list rows; returns the indexes
/// of bad records, to be terminated.
async fn handle_batch(
    store: &Store,
    cache: &StatusCache,
    batch: &[async_nats::jetstream::Message],
) -> Result<Vec<usize>, ApiError> {
    // Keep only the newest record per (job, target); older ones in the same
    // batch would be overwritten anyway.
    let mut newest: HashMap<String, JobTargetStatus> = HashMap::new();
    let mut instr: Vec<InstrRecord> = Vec::new();
    let mut bad = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        let subject = m.subject.as_str();
        let verdict = if subject.ends_with(".instr") {
            msg::decode::<InstrRecord>(&m.payload).map_err(|e| e.to_string()).and_then(|r| {
                identity::check_instr(&store.subjects, subject, &r).map_err(|e| e.to_string())?;
                instr.push(r);
                Ok(())
            })
        } else {
            msg::decode::<RunRecord>(&m.payload).map_err(|e| e.to_string()).and_then(|r| {
                identity::check_run(&store.subjects, subject, &r).map_err(|e| e.to_string())?;
                let status = JobTargetStatus::from(&r);
                let key = Store::status_key(r.job_id, &r.target);
                match newest.get(&key) {
                    Some(have) if !supersedes(&status, have) => {}
                    _ => {
                        newest.insert(key, status);
                    }
                }
                Ok(())
            })
        };
        if let Err(error) = verdict {
            let count = BAD_RESULTS.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(subject, error, bad_results = count, "bad result record terminated");
            bad.push(i);
        }
    }
    let writes = futures::stream::iter(newest)
        .map(|(key, status)| async move {
            // One write per key at a time: batches in flight together often
            // carry the same keys, and racing compare-and-sets would fail.
            let slot = cache.slot(&key);
            let mut known = slot.lock().await;
            write_status(store, &key, status, &mut known).await
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    for w in writes {
        w?;
    }
    let instr_writes = futures::stream::iter(instr)
        .map(|r| async move { apply_instr_record(store, &r).await })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    for w in instr_writes {
        w?;
    }
    Ok(bad)
}

/// KV writes in flight at once while draining.
const WRITES_IN_FLIGHT: usize = 256;

/// The job status this master last wrote or read per key, with its KV
/// revision, each behind its own lock. With it, a write is one
/// compare-and-set and no read, and two batches never race on one key; when
/// another master replica wrote in between, the compare-and-set fails and
/// the key is read again. Bounded: idle entries are dropped when full (the
/// cache only saves reads).
#[derive(Debug, Default)]
pub struct StatusCache {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Known>>>>,
}

/// What a key is known to hold, and at which revision.
type Known = Option<(JobTargetStatus, u64)>;

impl StatusCache {
    const MAX_ENTRIES: usize = 100_000;

    fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Known>> {
        let mut slots = self.slots.lock().expect("status cache lock");
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        if slots.len() >= Self::MAX_ENTRIES {
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        slots.entry(key.to_owned()).or_default().clone()
    }
}

/// Makes `status` the job status at `key` unless what is there supersedes
/// it; `known` is what the key held, and is kept up to date.
async fn write_status(store: &Store, key: &str, status: JobTargetStatus, known: &mut Known) -> Result<(), ApiError> {
    let body = || bytes::Bytes::from(msg::encode(&status));
    for _ in 0..32 {
        let attempt = match known.as_ref() {
            Some((have, _)) if !supersedes(&status, have) => return Ok(()),
            Some((_, revision)) => store.jobstatus.update(key, body(), *revision).await.map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision { None } else { Some(e.to_string()) }
            }),
            None => store.jobstatus.create(key, body()).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists { None } else { Some(e.to_string()) }
            }),
        };
        match attempt {
            Ok(revision) => {
                *known = Some((status, revision));
                return Ok(());
            }
            // Someone else wrote it: read what is there and decide again.
            Err(None) => *known = Store::read::<JobTargetStatus>(&store.jobstatus, key).await?,
            Err(Some(e)) => return Err(ApiError::internal(format!("writing job status '{key}': {e}"))),
        }
    }
    Err(ApiError::internal(format!("job status '{key}' kept changing under us")))
}

/// Whether `new` should replace `have` as the last outcome: a later run, or
/// the end of the same run. Replays of older records never win.
pub fn supersedes(new: &JobTargetStatus, have: &JobTargetStatus) -> bool {
    if new.run_id == have.run_id {
        return new.outcome.is_final() && !have.outcome.is_final();
    }
    (new.started_at, new.run_id) > (have.started_at, have.run_id)
}

async fn apply_instr_record(store: &Store, r: &InstrRecord) -> Result<(), ApiError> {
    let mut failure = None;
    for o in &r.outcomes {
        let key = Store::instr_key(&r.target, o.id);
        Store::modify(&store.instructions, &key, |old: Option<InstrRow>| {
            let mut row = old.unwrap_or_else(|| InstrRow {
                id: o.id,
                target: r.target.clone(),
                op: o.op.clone(),
                job: None,
                posted_at: o.applied_at,
                status: InstrStatus::Pending,
                applied_at: None,
                error: None,
            });
            row.status = if o.error.is_some() { InstrStatus::Failed } else { InstrStatus::Applied };
            row.applied_at = Some(o.applied_at);
            row.error.clone_from(&o.error);
            Ok(Some(row))
        })
        .await?;
        if let Some(e) = &o.error {
            failure = Some(format!("{} {}: {e}", o.op, o.id));
        }
        if o.op == "defect" && o.error.is_none() {
            // The target left: its record and consumer go with it.
            store.delete_target_consumer(&r.target).await?;
            store.targets.delete(r.target.as_str()).await.ok();
            tracing::info!(target = %r.target, "target defected");
            return Ok(());
        }
    }
    // Blocked while its latest poll had a failure; a clean poll clears it.
    // Most polls change nothing: skip the write then.
    match Store::read::<TargetRecord>(&store.targets, r.target.as_str()).await? {
        Some((t, _)) if t.blocked != failure => {}
        _ => return Ok(()),
    }
    Store::modify(&store.targets, r.target.as_str(), |old: Option<TargetRecord>| {
        Ok(old.map(|mut t| {
            t.blocked.clone_from(&failure);
            t
        }))
    })
    .await?;
    Ok(())
}
