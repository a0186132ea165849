//! Run history, read straight from `MUSTER_RESULTS` by subject filter.
//!
//! History needs no master: it is whatever the stream holds (30 days by
//! default). A run has up to two records (start and end) and may have been
//! sent more than once (spool replays after the dedup window), so readers
//! keep exactly one record per run — `(target, run_id)`, the final record
//! when there is one. That is what makes "a run is recorded once" true for
//! every reader, whatever order the copies arrived in.
//!
//! Identity is the subject: a record whose body names another target or
//! job than its subject is refused by every reader
//! ([`muster_shared::identity::check_run`]), so a target cannot write into
//! another target's history.
//!
//! This is the client's side: `musterctl history`, `run show`, and
//! `job start --wait` when a later run has replaced the one it follows in
//! job status ([`final_record`]).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use muster_shared::identity;
use muster_shared::msg::{self, Outcome, RunRecord};
use muster_shared::name::{JobName, TargetName};
use muster_shared::subject::Subjects;
use uuid::Uuid;

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
    /// Keep only the newest N runs.
    pub limit: Option<usize>,
}

/// How long a history read may go without a message before it fails (it
/// never ends early on silence: it knows how many messages are to come).
const READ_STALL: Duration = Duration::from_secs(30);

/// Reads, de-duplicates and filters runs; oldest first.
///
/// # Errors
/// When the stream cannot be read.
pub async fn read(
    js: &jetstream::Context,
    subjects: &Subjects,
    q: &HistoryQuery,
) -> anyhow::Result<Vec<RunRecord>> {
    let mut stream = js.get_stream(subjects.results_stream()).await?;
    let filter = subjects.runs_filter(q.target.as_ref(), q.job_id);
    let info = stream.info().await?;
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    let deliver_policy = match q.since {
        // A run that started before `since` may have ended after it; read a
        // little earlier and filter on started_at below.
        Some(since) => consumer::DeliverPolicy::ByStartTime {
            start_time: time_from_chrono(since - chrono::Duration::hours(24)),
        },
        None => consumer::DeliverPolicy::All,
    };
    let config = consumer::pull::OrderedConfig {
        filter_subject: filter,
        deliver_policy,
        ..Default::default()
    };
    let mut messages = muster_runtime::stream::read_to_end(&stream, config, READ_STALL).await?;
    let mut runs: HashMap<(TargetName, Uuid), RunRecord> = HashMap::new();
    while let Some(m) = messages.next().await {
        if let Some(r) = record(subjects, &m?) {
            keep(&mut runs, r);
        }
    }
    let mut out: Vec<RunRecord> = runs
        .into_values()
        .filter(|r| q.job.as_ref().is_none_or(|j| &r.job == j))
        .filter(|r| q.outcome.is_none_or(|o| r.outcome == o))
        .filter(|r| q.since.is_none_or(|s| r.started_at >= s))
        .filter(|r| q.run_id.is_none_or(|id| r.run_id == id))
        .collect();
    out.sort_by_key(|r| (r.started_at, r.run_id));
    if let Some(limit) = q.limit {
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
    }
    Ok(out)
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
    let mut stream = js.get_stream(subjects.results_stream()).await?;
    // Everything up to here is read below; the follow starts after it, so
    // a record stored in between is seen at least once.
    let read_up_to = stream.info().await?.state.last_sequence;
    let q = HistoryQuery {
        job_id: Some(job_id),
        target: Some(target.clone()),
        run_id: Some(run_id),
        ..HistoryQuery::default()
    };
    if let Some(r) = read(js, subjects, &q)
        .await?
        .pop()
        .filter(|r| r.outcome.is_final())
    {
        return Ok(r);
    }
    let config = consumer::pull::OrderedConfig {
        filter_subject: subjects.result_run(target, job_id),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
            start_sequence: read_up_to + 1,
        },
        ..Default::default()
    };
    let mut messages = stream.create_consumer(config).await?.messages().await?;
    while let Some(m) = messages.next().await {
        let m = m.context("following the results stream")?;
        if let Some(r) = record(subjects, &m).filter(|r| r.run_id == run_id && r.outcome.is_final())
        {
            return Ok(r);
        }
    }
    anyhow::bail!("the results stream ended while waiting for run {run_id} on {target}")
}

/// A message's run record, if it is one that may stand on its subject
/// (others are left out, and logged at debug level).
fn record(subjects: &Subjects, m: &jetstream::Message) -> Option<RunRecord> {
    let checked = msg::decode::<RunRecord>(&m.payload)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            identity::check_run(subjects, &m.subject, &r)
                .map(|()| r)
                .map_err(|e| e.to_string())
        });
    checked
        .inspect_err(
            |e| tracing::debug!(subject = %m.subject, error = %e, "record left out of history"),
        )
        .ok()
}

/// One record per run: the final record wins over the start record, and the
/// first final record over later copies.
fn keep(runs: &mut HashMap<(TargetName, Uuid), RunRecord>, r: RunRecord) {
    let key = (r.target.clone(), r.run_id);
    match runs.get(&key) {
        Some(have) if have.outcome.is_final() => {}
        _ => {
            runs.insert(key, r);
        }
    }
}

fn time_from_chrono(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
        t.timestamp_nanos_opt().unwrap_or(0),
    ))
    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_shared::msg::Trigger;

    fn run(target: &str, run_id: Uuid, outcome: Outcome) -> RunRecord {
        RunRecord {
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
        let mut runs = HashMap::new();
        // start, end, then a replay of the start and of the end beyond the window
        for o in [
            Outcome::Running,
            Outcome::Succeeded,
            Outcome::Running,
            Outcome::Succeeded,
        ] {
            keep(&mut runs, run("a", id, o));
        }
        assert_eq!(runs.len(), 1);
        assert_eq!(runs.values().next().unwrap().outcome, Outcome::Succeeded);
        // the same run id on another target is another run
        keep(&mut runs, run("b", id, Outcome::Running));
        assert_eq!(runs.len(), 2);
    }
}
