//! Run history, read straight from `MUSTER_RESULTS` by subject filter.
//!
//! History needs no master: it is whatever the stream holds (30 days by
//! default). A run has up to two records (start and end) and may have been
//! sent more than once (spool replays after the dedup window), so readers
//! keep exactly one record per `run_id` — the final one when there is one.
//! That is what makes "a run is recorded once" true for every reader.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
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
        Some(since) => consumer::DeliverPolicy::ByStartTime {
            start_time: time_from_chrono(since - chrono::Duration::hours(24)),
        },
        None => consumer::DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let mut runs: HashMap<Uuid, RunRecord> = HashMap::new();
    let mut messages = consumer.messages().await?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
        let m = match next {
            // Nothing more within the wait: the filter matched nothing (more).
            Err(_) | Ok(None) => break,
            Ok(Some(m)) => m?,
        };
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        if let Ok(r) = msg::decode::<RunRecord>(&m.payload) {
            keep(&mut runs, r);
        }
        if pending == 0 {
            break;
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

/// One record per run: the final record wins over the start record.
fn keep(runs: &mut HashMap<Uuid, RunRecord>, r: RunRecord) {
    match runs.get(&r.run_id) {
        Some(have) if have.outcome.is_final() => {}
        _ => {
            runs.insert(r.run_id, r);
        }
    }
}

fn time_from_chrono(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.timestamp_nanos_opt().unwrap_or(0)))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
