//! Running jobs on their schedules.
//!
//! The scheduler keeps a cursor: every fire time up to the cursor has been
//! handled. It starts at "now" when the agent starts, so **fires missed while
//! the agent was down are skipped, not replayed** (SQL Server Agent does the
//! same); jobs with an `on_start` schedule run once at start instead. A fire
//! that finds its job still running is recorded as `skipped` by the runner.
//! Schedule arithmetic (cron, time zones, DST) lives in
//! `muster_shared::schedule`; this module only waits and fires.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use muster_shared::msg::Trigger;
use muster_shared::schedule;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::runner::Runner;
use crate::state::State;

/// Longest single sleep, so a clock step (NTP) is noticed within a minute.
const MAX_SLEEP: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Scheduler {
    pub state: State,
    pub runner: Runner,
    /// Notified when jobs change.
    pub jobs_changed: Arc<Notify>,
}

impl Scheduler {
    pub async fn run(self, shutdown: CancellationToken) {
        let start = Utc::now();
        for job in self.state.jobs() {
            if !job.spec.enabled {
                continue;
            }
            if job.spec.schedules.iter().any(|s| schedule::fires_on_start(s, start)) {
                self.runner.start(job, Trigger::OnStart, Uuid::now_v7());
            }
        }
        let mut cursor = start;
        loop {
            let now = Utc::now();
            if now >= cursor {
                self.fire_due(cursor, now);
                cursor = now;
            }
            let next = self.next_fire(cursor);
            let wait = next
                .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            let changed = self.jobs_changed.notified();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = changed => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Starts every job with a fire in `(after, now]`, once per job.
    fn fire_due(&self, after: DateTime<Utc>, now: DateTime<Utc>) {
        for job in self.state.jobs() {
            if !job.spec.enabled {
                continue;
            }
            let due = job
                .spec
                .schedules
                .iter()
                .filter_map(|s| schedule::next_after(s, after).filter(|t| *t <= now).map(|t| (t, s)))
                .min_by_key(|(t, _)| *t);
            if let Some((when, s)) = due {
                tracing::debug!(job = %job.spec.name, schedule = %s.name, %when, "schedule fired");
                let trigger = Trigger::Schedule { schedule: s.name.clone() };
                self.runner.start(job.clone(), trigger, Uuid::now_v7());
            }
        }
    }

    fn next_fire(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.state
            .jobs()
            .iter()
            .filter(|j| j.spec.enabled)
            .flat_map(|j| j.spec.schedules.iter().filter_map(|s| schedule::next_after(s, after)))
            .min()
    }
}
