//! Running jobs on their schedules.
//!
//! # Missed schedules
//!
//! The scheduler keeps a cursor: every fire time up to the cursor has been
//! handled. It starts at "now" when the agent starts, so **fires missed while
//! the agent was down are skipped, not replayed** (SQL Server Agent does the
//! same): a target that was off for a night does not run a night of
//! `every_secs` fires, or yesterday's backup, when it comes back. Jobs with an
//! `on_start` schedule run once at start instead; that is the way to ask for
//! "catch up after downtime". When the loop itself wakes late (the machine
//! was suspended, the clock stepped forward), every job with one or more
//! fires in the gap is started **once**, named after its earliest due
//! schedule ([`due`]). A fire that finds its job still running is recorded as
//! `skipped` by the runner (the first such fire per run only). A clock stepped backwards fires nothing until it
//! has caught up with the cursor.
//!
//! Schedule arithmetic (cron, time zones, DST) lives in
//! `muster_shared::schedule`; this module only waits and fires.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use muster_shared::job::JobDef;
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
        for job in on_start(&self.state.jobs(), start) {
            self.runner.start(job.clone(), Trigger::OnStart, Uuid::now_v7());
        }
        let mut cursor = start;
        loop {
            let now = Utc::now();
            if now >= cursor {
                self.fire_due(cursor, now);
                cursor = now;
            }
            let next = self.next_fire(cursor);
            let wait = next.map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO)).unwrap_or(MAX_SLEEP).min(MAX_SLEEP);
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
        for (job, schedule) in due(&self.state.jobs(), after, now) {
            tracing::debug!(job = %job.spec.name, %schedule, "schedule fired");
            self.runner.start(job.clone(), Trigger::Schedule { schedule }, Uuid::now_v7());
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

/// The enabled jobs with an `on_start` schedule active at `now`.
pub fn on_start(jobs: &[JobDef], now: DateTime<Utc>) -> Vec<&JobDef> {
    jobs.iter().filter(|j| j.spec.enabled && j.spec.schedules.iter().any(|s| schedule::fires_on_start(s, now))).collect()
}

/// The enabled jobs with at least one fire in `(after, now]`, each once,
/// with the name of its earliest due schedule.
pub fn due(jobs: &[JobDef], after: DateTime<Utc>, now: DateTime<Utc>) -> Vec<(&JobDef, String)> {
    jobs.iter()
        .filter(|j| j.spec.enabled)
        .filter_map(|j| {
            j.spec
                .schedules
                .iter()
                .filter_map(|s| schedule::next_after(s, after).filter(|t| *t <= now).map(|t| (t, s)))
                .min_by_key(|(t, _)| *t)
                .map(|(_, s)| (j, s.name.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(json: &str) -> JobDef {
        let spec = muster_shared::job::JobSpec::from_json(json).unwrap();
        JobDef { id: Uuid::now_v7(), revision: 1, spec }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn names(due: &[(&JobDef, String)]) -> Vec<(String, String)> {
        due.iter().map(|(j, s)| (j.spec.name.to_string(), s.clone())).collect()
    }

    #[test]
    fn a_late_wake_starts_each_job_once_not_once_per_missed_fire() {
        let jobs = [
            job(r#"{"name":"tick","steps":[{"command":"true"}],"schedules":[{"name":"s","every_secs":1}]}"#),
            job(
                r#"{"name":"nightly","steps":[{"command":"true"}],"schedules":[{"name":"n","cron":"30 2 * * *","timezone":"Europe/Berlin"}]}"#,
            ),
        ];
        // Woken ten hours late: 36,000 fires of tick and one of nightly were due.
        let got = due(&jobs, utc("2026-03-10T00:00:00Z"), utc("2026-03-10T10:00:00Z"));
        assert_eq!(names(&got), [("tick".into(), "s".into()), ("nightly".into(), "n".into())]);
    }

    #[test]
    fn the_window_is_after_exclusive_now_inclusive() {
        let jobs = [job(r#"{"name":"j","steps":[{"command":"true"}],"schedules":[{"name":"m","cron":"0 * * * *"}]}"#)];
        assert!(due(&jobs, utc("2026-01-01T10:00:00Z"), utc("2026-01-01T10:59:59Z")).is_empty(), "10:00 was handled");
        assert_eq!(due(&jobs, utc("2026-01-01T10:00:00Z"), utc("2026-01-01T11:00:00Z")).len(), 1);
    }

    #[test]
    fn the_earliest_due_schedule_names_the_run() {
        let jobs = [job(r#"{"name":"j","steps":[{"command":"true"}],"schedules":[
                {"name":"later","cron":"0 12 * * *"},{"name":"sooner","at":"2026-01-01T11:00:00Z"}]}"#)];
        let got = due(&jobs, utc("2026-01-01T10:00:00Z"), utc("2026-01-01T13:00:00Z"));
        assert_eq!(names(&got), [("j".into(), "sooner".into())]);
    }

    #[test]
    fn fires_missed_while_down_are_skipped_and_on_start_runs_once() {
        // The cursor starts at the agent's start: an `at` that passed while it
        // was down is never due, while on_start jobs are started once.
        let jobs = [
            job(r#"{"name":"once","steps":[{"command":"true"}],"schedules":[{"name":"o","at":"2026-01-01T03:00:00Z"}]}"#),
            job(r#"{"name":"boot","steps":[{"command":"true"}],"schedules":[{"name":"b","on_start":true}]}"#),
            job(r#"{"name":"off","enabled":false,"steps":[{"command":"true"}],"schedules":[{"name":"b","on_start":true}]}"#),
        ];
        let start = utc("2026-01-01T08:00:00Z");
        assert!(due(&jobs, start, utc("2026-01-02T08:00:00Z")).is_empty());
        let booted: Vec<&str> = on_start(&jobs, start).iter().map(|j| j.spec.name.as_str()).collect();
        assert_eq!(booted, ["boot"]);
    }

    #[test]
    fn disabled_jobs_never_fire() {
        let jobs =
            [job(r#"{"name":"j","enabled":false,"steps":[{"command":"true"}],"schedules":[{"name":"s","every_secs":1}]}"#)];
        assert!(due(&jobs, utc("2026-01-01T10:00:00Z"), utc("2026-01-01T11:00:00Z")).is_empty());
    }
}
