//! Deriving events ([`muster_shared::event`]) from the run records the
//! results drain handles, and publishing them.
//!
//! The drain ([`crate::ingest`]) handles each record on one master at a time
//! and acks a batch only after its writes, events included, are confirmed.
//! A batch handled again (redelivered, maybe to another master) derives the
//! same events with the same message ids, and the stream keeps one of each:
//! with two masters, each event is stored once.
//!
//! - `job_failed`: from each final `failed` or `timed_out` record itself.
//! - `job_recovered`: from the job status the drain stored for a
//!   `succeeded` run, whose `previous` (the last finished outcome before it,
//!   carried from status to status) was `failed` or `timed_out`. Read from
//!   the stored status, so a redelivered record, whose status is already
//!   there, derives it again.
//! - `target_blocked`: from each applied record that refused the manifest
//!   or failed a job (what makes [`crate::applied`] mark the target blocked).

use futures::StreamExt;
use muster_shared::api::JobTargetStatus;
use muster_shared::desired::AppliedRecord;
use muster_shared::event::{Event, EventKind};
use muster_shared::msg::{self, Outcome, RunRecord};

use crate::store::{Store, StoreError};

/// Events published at once.
const IN_FLIGHT: usize = 64;

fn failed(outcome: Option<Outcome>) -> bool {
    matches!(outcome, Some(Outcome::Failed | Outcome::TimedOut))
}

/// `job_failed` for a final failed or timed-out run record.
pub fn from_record(r: &RunRecord) -> Option<Event> {
    failed(Some(r.outcome)).then(|| Event {
        v: 1,
        kind: EventKind::JobFailed,
        target: r.target.clone(),
        job: Some(r.job.clone()),
        run_id: Some(r.run_id),
        id: r.run_id.to_string(),
        at: r.finished_at.unwrap_or(r.started_at),
        message: r.message.clone(),
    })
}

/// `job_recovered` when `stored` is a succeeded run after a failed one.
pub fn from_status(stored: &JobTargetStatus) -> Option<Event> {
    (stored.outcome == Outcome::Succeeded && failed(stored.previous)).then(|| Event {
        v: 1,
        kind: EventKind::JobRecovered,
        target: stored.target.clone(),
        job: Some(stored.job.clone()),
        run_id: Some(stored.run_id),
        id: stored.run_id.to_string(),
        at: stored.finished_at.unwrap_or(stored.started_at),
        message: stored.message.clone(),
    })
}

/// `target_blocked` for an applied record that refused the manifest or
/// failed some of its jobs.
pub fn from_applied(r: &AppliedRecord) -> Option<Event> {
    let jobs: Vec<String> = r.errors.iter().map(|e| format!("job '{}': {}", e.job, e.error)).collect();
    let message = r.refused.iter().cloned().chain(jobs).collect::<Vec<_>>().join("; ");
    (!message.is_empty()).then(|| Event {
        v: 1,
        kind: EventKind::TargetBlocked,
        target: r.target.clone(),
        job: None,
        run_id: None,
        id: r.msg_id(),
        at: r.at,
        message,
    })
}

/// Publishes `events`, each with its message id, and waits for the stream
/// to confirm them all.
pub async fn publish(store: &Store, events: Vec<Event>) -> Result<(), StoreError> {
    let results = futures::stream::iter(events)
        .map(|e| async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.msg_id().as_str());
            let what = || format!("publishing event {}", e.msg_id());
            store
                .js
                .publish_with_headers(store.subjects.event(e.kind, &e.target), headers, msg::encode(&e).into())
                .await
                .map_err(|err| StoreError::nats(what(), err))?
                .await
                .map(drop)
                .map_err(|err| StoreError::nats(what(), err))
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(outcome: Outcome, previous: Option<Outcome>) -> JobTargetStatus {
        let mut s: JobTargetStatus = serde_json::from_value(serde_json::json!({
            "job": "j", "target": "web01", "outcome": "running", "run_id": uuid::Uuid::now_v7(),
            "started_at": "2026-01-01T00:00:00Z", "finished_at": null, "duration_ms": null,
        }))
        .unwrap();
        (s.outcome, s.previous) = (outcome, previous);
        s
    }

    #[test]
    fn a_success_after_a_failure_or_timeout_is_a_recovery_and_nothing_else_is() {
        for prev in [Outcome::Failed, Outcome::TimedOut] {
            let e = from_status(&status(Outcome::Succeeded, Some(prev))).expect("recovered");
            assert_eq!(e.kind, EventKind::JobRecovered);
        }
        for (now, prev) in [
            (Outcome::Succeeded, None),
            (Outcome::Succeeded, Some(Outcome::Succeeded)),
            (Outcome::Running, Some(Outcome::Failed)),
            (Outcome::Failed, Some(Outcome::Failed)),
        ] {
            assert_eq!(from_status(&status(now, prev)), None, "{now:?} after {prev:?}");
        }
    }
}
