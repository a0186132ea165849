//! Run history, read straight from `MUSTER_RESULTS`.
//!
//! History needs no master: it is whatever the stream holds (30 days by
//! default, a million records expected). A run has up to two records (start
//! and end) and may have been sent more than once (spool replays after the
//! dedup window), so readers keep exactly one record per run — `(target,
//! run_id)`, the first final record when there is one. That is what makes
//! "a run is recorded once" true for every reader, whatever order the
//! copies arrived in.
//!
//! Reads cost what they return, not the stream:
//! - `--limit N` reads the tail backwards in windows ([`window`]) with the
//!   narrowest subject filter the query allows (a literal
//!   `<t>.run.<job-id>` subject when both are known: the server skips the
//!   rest by its per-subject index), and stops once it has N runs; with no
//!   target and no job it asks for the whole stream and picks the run
//!   records out itself (see `asked`: what a wildcard filter costs the
//!   server per message of a batch);
//! - `--since` seeks by time;
//! - `run show` looks the run up in the `muster-runs` index the master's
//!   ingest keeps, then reads that one message; a run not indexed (no
//!   master, ingest behind) is found by a forward read from its UUIDv7 time.
//!
//! Every read is a batched Direct Get ([`crate::stream`]), read-only by
//! construction, so the viewer reads history with the same code and one
//! permission line (`$JS.API.DIRECT.GET.<results stream>`), without any
//! consumer or stream-info right. Where a read ends comes from the stream
//! itself (the last record on the filter, asked first; each batch's count of
//! what follows), never from silence: it returns everything asked for, or
//! fails.
//!
//! One consumer is left: [`final_record`] waits for a record not yet
//! written (`job start --wait`, an admin's command), which a Direct Get
//! cannot do; what is already stored it reads like every other reader.
//!
//! Identity is the subject: a record whose body names another target or
//! job than its subject is refused by every reader
//! ([`muster_shared::identity::check_run`]), so a target cannot write into
//! another target's history.

mod window;

use std::collections::HashMap;
use std::time::Duration;

use crate::stream::{Reader, Span, Start};
use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use chrono::{DateTime, Utc};
use muster_shared::identity;
use muster_shared::msg::{self, Outcome, RunRecord};
use muster_shared::name::{JobName, TargetName};
use muster_shared::runs::RunIndexEntry;
use muster_shared::subject::{Bucket, Subjects};
use uuid::Uuid;

pub use window::{Window, Windows};

/// Which runs to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub job: Option<JobName>,
    /// Narrows the stream read when the job's id is known.
    pub job_id: Option<Uuid>,
    pub target: Option<TargetName>,
    pub outcome: Option<Outcome>,
    pub since: Option<DateTime<Utc>>,
    pub run_id: Option<Uuid>,
    /// Keep only the N runs recorded last.
    pub limit: Option<usize>,
}

/// How long a history read may go without a message before it fails (it
/// never ends early on silence: it knows how many messages are to come).
const READ_STALL: Duration = Duration::from_secs(30);

/// A run that is not in the index is looked for from this long before the
/// time in its UUIDv7 id (the agent's clock made the id; the server's
/// stamped the record).
const LOOKUP_BEFORE: Duration = Duration::from_secs(600);

/// Reads, de-duplicates and filters runs; oldest first (by start time).
/// With a limit, the runs are the N recorded last (whose latest record is
/// nearest the stream's end).
///
/// # Errors
/// When the stream cannot be read to the end of what was asked.
pub async fn read(js: &jetstream::Context, subjects: &Subjects, q: &HistoryQuery) -> anyhow::Result<Vec<RunRecord>> {
    if let Some(run_id) = q.run_id {
        let hint = q.target.as_ref().zip(q.job_id);
        let found = find_run(js, subjects, run_id, hint).await?;
        return Ok(found.map(|f| f.record).filter(|r| wanted(q, r)).into_iter().collect());
    }
    if q.limit == Some(0) {
        return Ok(Vec::new());
    }
    let reader = results(js, subjects);
    let runs = subjects.runs_filter(q.target.as_ref(), q.job_id);
    let filter = asked(subjects, &runs);
    // The end of the read: the last record on the filter now (none: no
    // runs, or no master has run on this server yet; not an error).
    let Some(last) = reader.last(&filter).await?.map(|m| m.seq) else {
        return Ok(Vec::new());
    };
    let mut kept = Kept::default();
    match (q.since, q.limit) {
        (None, Some(limit)) => {
            // The first window needs no first sequence (a read from before
            // the stream's start begins at its first match). Only when more
            // windows are needed is the filter's first record asked for, so
            // that no window reads from below it (a batch from there would
            // bring records past the window's end); with a wildcard filter
            // that ask costs the server a walk of its subjects.
            let mut windows = Windows::new(1, last, limit);
            let mut at = windows.next();
            let mut bounded = false;
            while let Some(w) = at {
                let span = Span { filter: filter.clone(), from: Start::Seq(w.from), up_to: Some(w.up_to.unwrap_or(last)) };
                read_span(&reader, subjects, span, &runs, None, &mut kept).await?;
                if kept.wanted(q) >= limit {
                    break;
                }
                at = windows.next();
                if !bounded && at.is_some() {
                    bounded = true;
                    let Some(first) = reader.first(&filter, Start::Seq(1)).await?.map(|m| m.seq) else {
                        break;
                    };
                    // The same windows, made knowing the first record.
                    windows = Windows::new(first, last, limit);
                    at = windows.nth(1);
                }
            }
        }
        (since, _) => {
            let from = match since {
                // A run that started before `since` may have ended after it;
                // read a little earlier and filter on started_at below.
                Some(since) => Start::Time(since - chrono::Duration::hours(24)),
                None => Start::Seq(1),
            };
            read_span(&reader, subjects, Span { filter, from, up_to: Some(last) }, &runs, None, &mut kept).await?;
        }
    }
    Ok(kept.into_runs(q))
}

/// The id of the job named `job`, from the master's job records
/// (`muster-jobs`, read directly: no master needed), so a `--job` read can
/// use the job's own subjects. `None` when there is no such job now (a
/// deleted job's runs are then found by name, on every run subject).
pub async fn job_id(js: &jetstream::Context, subjects: &Subjects, job: &JobName) -> Option<Uuid> {
    /// The one field of a job record history needs.
    #[derive(serde::Deserialize)]
    struct JobId {
        id: Uuid,
    }
    let bucket = subjects.bucket(Bucket::Jobs);
    let found = async {
        let jobs = js.get_key_value(&bucket).await?;
        let value = jobs.get(job.as_str()).await?;
        anyhow::Ok(value.map(|v| serde_json::from_slice::<JobId>(&v)).transpose()?)
    };
    match found.await {
        Ok(id) => id.map(|j| j.id),
        Err(e) => {
            tracing::debug!(bucket, %job, error = %e, "job id unknown; reading every run subject");
            None
        }
    }
}

/// How [`find_run`] found a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Through the `muster-runs` index: one message read.
    Index,
    /// Not indexed (no master, or ingest behind): read from the stream,
    /// from the run id's time on.
    Scan,
}

/// A run's kept record, and how it was found.
#[derive(Debug, Clone)]
pub struct FoundRun {
    pub record: RunRecord,
    pub via: Via,
}

/// The kept record of one run (its first final record, else its start):
/// through the run index, else by a forward read from the run id's time
/// (UUIDv7), on `hint`'s subject when the target and job are known.
///
/// # Errors
/// When the stream cannot be read.
pub async fn find_run(
    js: &jetstream::Context,
    subjects: &Subjects,
    run_id: Uuid,
    hint: Option<(&TargetName, Uuid)>,
) -> anyhow::Result<Option<FoundRun>> {
    if let Some(record) = indexed(js, subjects, run_id).await? {
        return Ok(Some(FoundRun { record, via: Via::Index }));
    }
    let from = match run_id.get_timestamp() {
        Some(ts) => {
            let (secs, _) = ts.to_unix();
            let from = secs.saturating_sub(LOOKUP_BEFORE.as_secs());
            Start::Time(DateTime::from_timestamp(i64::try_from(from).unwrap_or(0), 0).unwrap_or_default())
        }
        None => Start::Seq(1),
    };
    let runs = hint.map_or_else(|| subjects.runs_filter(None, None), |(t, job_id)| subjects.result_run(t, job_id));
    let filter = asked(subjects, &runs);
    let reader = results(js, subjects);
    let Some(last) = reader.last(&filter).await?.map(|m| m.seq) else {
        return Ok(None);
    };
    let mut kept = Kept::default();
    read_span(&reader, subjects, Span { filter, from, up_to: Some(last) }, &runs, Some(run_id), &mut kept).await?;
    Ok(kept.into_runs(&HistoryQuery::default()).pop().map(|record| FoundRun { record, via: Via::Scan }))
}

/// The run as the index places it, `None` when the index has no usable
/// entry (no bucket, no key, a deleted key, or an entry that no longer
/// matches the message at its sequence).
///
/// Both reads are Direct Gets, asking for no stream's info: two requests
/// in all (the record by its sequence, on its own subject).
async fn indexed(js: &jetstream::Context, subjects: &Subjects, run_id: Uuid) -> anyhow::Result<Option<RunRecord>> {
    let index = js.get_stream_no_info(subjects.bucket_stream(Bucket::Runs)).await?;
    let key = subjects.bucket_key(Bucket::Runs, &run_id.to_string());
    let value = match index.direct_get_last_for_subject(key.clone()).await {
        Ok(m) => m.payload,
        Err(e) => {
            // Not there, or no index at all (no master has run): both mean "scan".
            tracing::debug!(key, error = %e, "no run index entry");
            return Ok(None);
        }
    };
    // A deleted key reads as an empty delete marker, which parses as no entry.
    let entry: RunIndexEntry = match serde_json::from_slice(&value) {
        Ok(entry) => entry,
        Err(e) => {
            tracing::debug!(%run_id, error = %e, "unreadable run index entry");
            return Ok(None);
        }
    };
    let reader = results(js, subjects);
    let subject = subjects.result_run(&entry.target, entry.job_id);
    let at = reader
        .first(&subject, Start::Seq(entry.seq))
        .await
        .with_context(|| format!("reading record {} of the results stream", entry.seq))?;
    let Some(m) = at.filter(|m| m.seq == entry.seq) else {
        return Ok(None);
    };
    let Some(r) = record(subjects, &m.subject, &m.payload).filter(|r| r.run_id == run_id && r.target == entry.target) else {
        return Ok(None);
    };
    if r.outcome.is_final() {
        return Ok(Some(r));
    }
    // Indexed while it ran: its end, if stored since, is later on the same
    // subject (a literal filter: the read costs that job's later records
    // on that target, not the stream).
    let mut kept = Kept::default();
    kept.keep(r, entry.seq);
    let span = Span { filter: subject.clone(), from: Start::Seq(entry.seq + 1), up_to: None };
    read_span(&reader, subjects, span, &subject, Some(run_id), &mut kept).await?;
    Ok(kept.into_runs(&HistoryQuery::default()).pop())
}

/// The final record of one run of `job_id` on `target`: what history holds
/// already, else the first final record the run publishes from now on.
/// Waits as long as it takes; the caller bounds it.
///
/// # Errors
/// When the stream cannot be read.
pub async fn final_record(
    js: &jetstream::Context,
    subjects: &Subjects,
    target: &TargetName,
    job_id: Uuid,
    run_id: Uuid,
) -> anyhow::Result<RunRecord> {
    let filter = subjects.result_run(target, job_id);
    // Everything up to here is read below; the follow starts after it, so
    // a record stored in between is seen at least once.
    let read_up_to = results(js, subjects).last(&filter).await?.map_or(0, |m| m.seq);
    if let Some(found) = find_run(js, subjects, run_id, Some((target, job_id))).await?.filter(|f| f.record.outcome.is_final()) {
        return Ok(found.record);
    }
    let stream = js.get_stream_no_info(subjects.results_stream()).await?;
    let config = jetstream::consumer::pull::OrderedConfig {
        filter_subject: filter,
        deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: read_up_to + 1 },
        // Waiting, not reading a backlog: one record at a time is plenty,
        // and a pull never asks for more than one message's worth.
        max_batch: 1,
        ..Default::default()
    };
    let mut messages = stream.create_consumer(config).await?.messages().await?;
    while let Some(m) = futures::StreamExt::next(&mut messages).await {
        let m = m.context("following the results stream")?;
        if let Some(r) = record(subjects, m.subject.as_str(), &m.payload).filter(|r| r.run_id == run_id && r.outcome.is_final()) {
            return Ok(r);
        }
    }
    anyhow::bail!("the results stream ended while waiting for run {run_id} on {target}")
}

/// The results stream's last sequence now: what a follow started before
/// a change must read after ([`runs_of_job`]), so no record of it is missed.
///
/// # Errors
/// When the stream cannot be read.
pub async fn last_sequence(js: &jetstream::Context, subjects: &Subjects) -> anyhow::Result<u64> {
    Ok(results_stream(js, subjects).await?.cached_info().state.last_sequence)
}

/// Every run record of job `job_id`, on any target, stored after sequence
/// `after`, as they arrive (waits as long as it takes; the caller bounds
/// it). One ordered consumer whatever the number of targets: what an exec
/// follows, whose job id is its own.
///
/// # Errors
/// When the stream cannot be read; each item, when reading it failed.
pub async fn runs_of_job(
    js: &jetstream::Context,
    subjects: &Subjects,
    job_id: Uuid,
    after: u64,
) -> anyhow::Result<futures::stream::BoxStream<'static, anyhow::Result<RunRecord>>> {
    let stream = results_stream(js, subjects).await?;
    let config = jetstream::consumer::pull::OrderedConfig {
        filter_subject: subjects.runs_filter(None, Some(job_id)),
        deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
        ..Default::default()
    };
    let messages = stream.create_consumer(config).await?.messages().await?;
    let subjects = subjects.clone();
    Ok(futures::StreamExt::boxed(futures::StreamExt::filter_map(messages, move |m| {
        let r = match m {
            Ok(m) => record(&subjects, m.subject.as_str(), &m.payload).map(Ok),
            Err(e) => Some(Err(anyhow::Error::from(e).context("following the results stream"))),
        };
        std::future::ready(r)
    })))
}

async fn results_stream(js: &jetstream::Context, subjects: &Subjects) -> anyhow::Result<jetstream::stream::Stream> {
    let name = subjects.results_stream();
    js.get_stream(&name).await.with_context(|| format!("cannot open stream {name}"))
}

/// The results stream's reader.
fn results(js: &jetstream::Context, subjects: &Subjects) -> Reader {
    Reader::new(js.client(), &subjects.results_stream(), READ_STALL)
}

/// What the server is asked for, for a read of the records on `runs`: a
/// literal subject, or one with a target or job, as it is (the server skips
/// the rest by its subject index); every run subject as the whole stream
/// (`>`), whose records the reader picks out itself. nats-server counts
/// the matches left after each message of a batch (`Nats-Num-Pending`),
/// which for a wildcard filter costs it a walk of the rest of the stream's
/// index per message (at 50,000 records, a batch of 500 from the start took
/// it 13–38 ms with `<prefix>.result.*.run.*`, 3–7 ms with `>`); the whole
/// stream is counted by sequence, and nearly all of it is run records.
fn asked(subjects: &Subjects, runs: &str) -> String {
    if runs == subjects.runs_filter(None, None) {
        ">".to_owned()
    } else {
        runs.to_owned()
    }
}

/// Reads `span` into `kept`: every run record on `runs`, or with `only`,
/// that run's records, stopping at its first final one.
async fn read_span(
    reader: &Reader,
    subjects: &Subjects,
    span: Span,
    runs: &str,
    only: Option<Uuid>,
    kept: &mut Kept,
) -> anyhow::Result<()> {
    let mut messages = reader.read(span).await?;
    while let Some(m) = messages.next().await {
        let m = m?;
        let seq = m.seq;
        if !muster_shared::subject::matches(runs, &m.subject) {
            continue;
        }
        let Some(r) = record(subjects, &m.subject, &m.payload) else {
            continue;
        };
        if only.is_some_and(|id| id != r.run_id) {
            continue;
        }
        let done = only.is_some() && r.outcome.is_final();
        kept.keep(r, seq);
        if done {
            break;
        }
    }
    Ok(())
}

/// A message's run record, if it is one that may stand on its subject
/// (others are left out, and logged at debug level). Every reader of run
/// records from the stream goes through here (history, the console's live
/// updates).
pub fn record(subjects: &Subjects, subject: &str, payload: &[u8]) -> Option<RunRecord> {
    let checked = msg::decode::<RunRecord>(payload)
        .map_err(|e| e.to_string())
        .and_then(|r| identity::check_run(subjects, subject, &r).map(|()| r).map_err(|e| e.to_string()));
    checked.inspect_err(|e| tracing::debug!(subject, error = %e, "record left out of history")).ok()
}

/// Whether a run is one the query asks for (the subject filter did the
/// rest).
fn wanted(q: &HistoryQuery, r: &RunRecord) -> bool {
    q.job.as_ref().is_none_or(|j| &r.job == j)
        && q.outcome.is_none_or(|o| r.outcome == o)
        && q.since.is_none_or(|s| r.started_at >= s)
        && q.run_id.is_none_or(|id| r.run_id == id)
}

/// One record per run, `(target, run_id)`: the first final record in stream
/// order, else the first start record; with the last stream sequence any of
/// its records had (how recently it was recorded).
#[derive(Debug, Default)]
struct Kept {
    runs: HashMap<(TargetName, Uuid), KeptRun>,
}

#[derive(Debug)]
struct KeptRun {
    record: RunRecord,
    /// The kept record's stream sequence.
    seq: u64,
    /// The last stream sequence of any of the run's records.
    last: u64,
}

impl Kept {
    /// Order-free: whatever order the copies are read in (windows are read
    /// newest first), the same record is kept.
    fn keep(&mut self, r: RunRecord, seq: u64) {
        let key = (r.target.clone(), r.run_id);
        match self.runs.get_mut(&key) {
            Some(have) => {
                have.last = have.last.max(seq);
                let rank = |final_: bool, seq: u64| (final_, std::cmp::Reverse(seq));
                if rank(r.outcome.is_final(), seq) > rank(have.record.outcome.is_final(), have.seq) {
                    have.record = r;
                    have.seq = seq;
                }
            }
            None => {
                self.runs.insert(key, KeptRun { record: r, seq, last: seq });
            }
        }
    }

    /// How many kept runs the query asks for.
    fn wanted(&self, q: &HistoryQuery) -> usize {
        self.runs.values().filter(|k| wanted(q, &k.record)).count()
    }

    /// The runs the query asks for (with a limit, the N recorded last),
    /// oldest first by start time.
    fn into_runs(self, q: &HistoryQuery) -> Vec<RunRecord> {
        let mut out: Vec<KeptRun> = self.runs.into_values().filter(|k| wanted(q, &k.record)).collect();
        if let Some(limit) = q.limit {
            out.sort_by_key(|k| std::cmp::Reverse(k.last));
            out.truncate(limit);
        }
        let mut out: Vec<RunRecord> = out.into_iter().map(|k| k.record).collect();
        out.sort_by_key(|r| (r.started_at, r.run_id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_shared::msg::Trigger;

    fn run(target: &str, run_id: Uuid, outcome: Outcome) -> RunRecord {
        RunRecord {
            params: Default::default(),
            v: 1,
            run_id,
            job_id: Uuid::nil(),
            job: JobName::new("j").unwrap(),
            target: TargetName::new(target).unwrap(),
            trigger: Trigger::Manual,
            outcome,
            started_at: Utc::now(),
            finished_at: None,
            message: String::new(),
            steps: Vec::new(),
        }
    }

    #[test]
    fn one_record_per_run_whatever_the_order_of_copies() {
        let id = Uuid::now_v7();
        // start, end, then a replay of the start and of the end beyond the window
        let copies = [(1, Outcome::Running), (2, Outcome::Succeeded), (9, Outcome::Running), (10, Outcome::Succeeded)];
        for reversed in [false, true] {
            let mut kept = Kept::default();
            let mut order = copies.to_vec();
            if reversed {
                order.reverse();
            }
            for (seq, o) in order {
                let mut r = run("a", id, o);
                r.message = format!("copy at {seq}");
                kept.keep(r, seq);
            }
            assert_eq!(kept.runs.len(), 1);
            let k = kept.runs.values().next().unwrap();
            assert_eq!((k.record.outcome, k.seq, k.last), (Outcome::Succeeded, 2, 10), "reversed: {reversed}");
            // the same run id on another target is another run
            kept.keep(run("b", id, Outcome::Running), 11);
            assert_eq!(kept.runs.len(), 2);
        }
    }

    #[test]
    fn a_limit_keeps_the_runs_recorded_last_shown_by_start_time() {
        let mut kept = Kept::default();
        let t0 = Utc::now();
        // A long run: started first, ended last.
        let mut long = run("a", Uuid::now_v7(), Outcome::Running);
        long.started_at = t0;
        kept.keep(long.clone(), 1);
        let mut short = run("a", Uuid::now_v7(), Outcome::Succeeded);
        short.started_at = t0 + chrono::Duration::seconds(5);
        kept.keep(short.clone(), 2);
        let mut old = run("a", Uuid::now_v7(), Outcome::Succeeded);
        old.started_at = t0 + chrono::Duration::seconds(1);
        kept.keep(old, 0);
        long.outcome = Outcome::Failed;
        kept.keep(long.clone(), 3);
        let q = HistoryQuery { limit: Some(2), ..HistoryQuery::default() };
        let got: Vec<(Uuid, Outcome)> = kept.into_runs(&q).iter().map(|r| (r.run_id, r.outcome)).collect();
        assert_eq!(got, vec![(long.run_id, Outcome::Failed), (short.run_id, Outcome::Succeeded)]);
    }
}
