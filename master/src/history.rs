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
//! job than its subject is refused by every reader ([`check_run`]), so a
//! target cannot write into another target's history.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
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
pub async fn read(js: &jetstream::Context, subjects: &Subjects, q: &HistoryQuery) -> anyhow::Result<Vec<RunRecord>> {
    let mut stream = js.get_stream(subjects.results_stream()).await?;
    let filter = subjects.runs_filter(q.target.as_ref(), q.job_id);
    let info = stream.info().await?;
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    let deliver_policy = match q.since {
        // A run that started before `since` may have ended after it; read a
        // little earlier and filter on started_at below.
        Some(since) => consumer::DeliverPolicy::ByStartTime { start_time: time_from_chrono(since - chrono::Duration::hours(24)) },
        None => consumer::DeliverPolicy::All,
    };
    let config = consumer::pull::OrderedConfig { filter_subject: filter, deliver_policy, ..Default::default() };
    let mut messages = muster_runtime::stream::read_to_end(&stream, config, READ_STALL).await?;
    let mut runs: HashMap<(TargetName, Uuid), RunRecord> = HashMap::new();
    while let Some(m) = messages.next().await {
        let m = m?;
        match msg::decode::<RunRecord>(&m.payload).map_err(|e| e.to_string()).and_then(|r| {
            check_run(subjects, &m.subject, &r)?;
            Ok(r)
        }) {
            Ok(r) => keep(&mut runs, r),
            Err(e) => {
                tracing::debug!(subject = %m.subject, error = %e, "record left out of history")
            }
        }
    }
    let mut out: Vec<RunRecord> = runs
        .into_values()
        .filter(|r| q.job.as_ref().is_none_or(|j| &r.job == j))
        .filter(|r| q.outcome.is_none_or(|o| r.outcome == o))
        .filter(|r| q.since.is_none_or(|s| r.started_at >= s))
        .filter(|r| q.run_id.is_none_or(|id| r.run_id == id))
        .collect();
    out.sort_by(|a, b| (a.started_at, a.run_id).cmp(&(b.started_at, b.run_id)));
    if let Some(limit) = q.limit {
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
    }
    Ok(out)
}

/// Whether a run record may stand on the subject it came on: its body must
/// name the target and the job that the subject carries.
///
/// # Errors
/// A message fit for the log, naming both sides.
pub fn check_run(subjects: &Subjects, subject: &str, r: &RunRecord) -> Result<(), String> {
    let on_subject = subjects.target_of(subject).unwrap_or_default();
    if r.target.as_str() != on_subject {
        return Err(format!("run record names target '{}' but came on target '{on_subject}''s subject", r.target));
    }
    if subject != subjects.result_run(&r.target, r.job_id) {
        return Err(format!("run record is for job {} but came on {subject}", r.job_id));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use muster_shared::msg::Trigger;

    fn record(target: &str, run_id: Uuid, outcome: Outcome) -> RunRecord {
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
        for o in [Outcome::Running, Outcome::Succeeded, Outcome::Running, Outcome::Succeeded] {
            keep(&mut runs, record("a", id, o));
        }
        assert_eq!(runs.len(), 1);
        assert_eq!(runs.values().next().unwrap().outcome, Outcome::Succeeded);
        // the same run id on another target is another run
        keep(&mut runs, record("b", id, Outcome::Running));
        assert_eq!(runs.len(), 2);
    }

    #[test]
    fn a_record_must_match_its_subject() {
        let s = Subjects::default();
        let r = record("a", Uuid::now_v7(), Outcome::Succeeded);
        assert!(check_run(&s, &s.result_run(&r.target, r.job_id), &r).is_ok());
        let b = TargetName::new("b").unwrap();
        assert!(check_run(&s, &s.result_run(&b, r.job_id), &r).unwrap_err().contains("names target 'a'"));
        assert!(check_run(&s, &s.result_run(&r.target, Uuid::now_v7()), &r).unwrap_err().contains("is for job"));
    }
}

fn time_from_chrono(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.timestamp_nanos_opt().unwrap_or(0)))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
