//! `job start --wait`: following the runs a start made until each is final.
//!
//! The runs are followed by events, not by asking again and again: the
//! master writes every job × target's last outcome to the job-status bucket
//! as it drains `MUSTER_RESULTS`, and this watches the job's keys there
//! (current values first, then every change). When a later run has already
//! replaced the one followed (a scheduled fire on the same target), the run's
//! own final record is taken from history instead
//! ([`history::final_record`]), which waits on the results stream for it if
//! it is not there yet.
//!
//! A target that was offline when the start was posted is reported as
//! such and not waited for (its start waits for it on the server until it
//! expires, and is then recorded `expired`); an expired run is final like
//! any other; and `--wait` always has a deadline, so it never waits forever.
//!
//! On a terminal, one line per target is redrawn in place; otherwise each
//! line is printed when it changes; with `--json`, the final states are
//! printed once.

use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use muster_shared::api::{Delivery, DeliveryState, JobInfo, JobRef, JobTargetStatus, Op};
use muster_shared::msg::Outcome;
use muster_shared::name::{JobName, TargetName};
use muster_shared::subject::Bucket;
use serde::Serialize;
use uuid::Uuid;

use crate::client::ApiClient;
use crate::exit::{Exit, Failure};
use crate::history;
use crate::render;

/// Where one target's run is, as `--wait` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    pub target: TargetName,
    pub run_id: Option<Uuid>,
    /// `offline` (runs at its next poll unless it expires first, not
    /// waited for), `starting`, or the run's outcome.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip)]
    pub done: bool,
    /// Offline when the start was posted: reported, not waited for.
    #[serde(skip)]
    pub offline: bool,
    /// A later run replaced this one in job status: its end comes from history.
    #[serde(skip)]
    superseded: bool,
}

impl Progress {
    /// Where a run is right after the start: a target that polled at once
    /// is starting it; one that was offline is reported and done (the
    /// start waits for it until it expires); one without a run (the start
    /// failed) is done.
    pub fn started(d: &Delivery) -> Self {
        let offline = d.state == DeliveryState::Queued;
        Progress {
            target: d.target.clone(),
            run_id: d.run_id,
            state: match d.state {
                DeliveryState::Delivered | DeliveryState::Posted => "starting".into(),
                DeliveryState::Queued => "offline".into(),
                other => other.to_string(),
            },
            duration_ms: None,
            message: if offline {
                "not started: runs at its next poll unless the start expires first".into()
            } else {
                d.message.clone()
            },
            done: offline || d.run_id.is_none(),
            offline,
            superseded: false,
        }
    }

    fn update(&mut self, s: &JobTargetStatus) {
        self.state = s.outcome.to_string();
        self.duration_ms = s.duration_ms;
        self.message.clone_from(&s.message);
        self.done = s.outcome.is_final();
    }

    /// The line shown for it: `web01: succeeded in 1.0s`.
    pub fn line(&self) -> String {
        let took = self.duration_ms.map_or(String::new(), |d| format!(" in {:.1}s", d as f64 / 1000.0));
        let why = if self.message.is_empty() { String::new() } else { format!(": {}", self.message) };
        format!("{}: {}{took}{why}", self.target, self.state)
    }
}

/// What a job-status change means for one followed run.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Not about this run (another target, or an older run).
    Other,
    /// This run's own status.
    Mine,
    /// A later run on the target replaced it before it was seen final;
    /// the followed run's id.
    Replaced(Uuid),
}

fn seen(p: &Progress, s: &JobTargetStatus) -> Seen {
    if p.done || p.target != s.target {
        return Seen::Other;
    }
    match p.run_id {
        Some(id) if id == s.run_id => Seen::Mine,
        // Run ids are UUIDv7: a greater one is a later run.
        Some(id) if s.run_id > id && !p.superseded => Seen::Replaced(id),
        _ => Seen::Other,
    }
}

/// Follows the runs a start made until all are final (or their targets
/// were offline), at most `timeout`.
///
/// # Errors
/// Exit 8 when a run did not succeed, 5 when a target was offline or
/// `timeout` passed first, 1 when job status or history cannot be read.
pub async fn follow(api: &ApiClient, json: bool, job: &JobName, started: &[Delivery], timeout: Duration) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut progress: Vec<Progress> = started.iter().map(Progress::started).collect();
    let mut view = View::new(json, &progress);
    let finished = progress.iter().all(|p| p.done)
        || tokio::select! {
            r = watch(api, job, &mut progress, &mut view) => r.map(|()| true),
            () = tokio::time::sleep_until(deadline) => Ok(false),
        }
        .inspect_err(|_| view.close())?;
    view.close();
    if !finished {
        if json {
            render::print_json(&progress)?;
        }
        return Err(gave_up(job, &progress));
    }
    let failed: Vec<&Progress> = progress.iter().filter(|p| !p.offline && p.state != Outcome::Succeeded.as_str()).collect();
    let offline: Vec<String> = progress.iter().filter(|p| p.offline).map(|p| p.target.to_string()).collect();
    if json {
        render::print_json(&progress)?;
    } else {
        let succeeded = progress.len() - failed.len() - offline.len();
        let offline_note = if offline.is_empty() { String::new() } else { format!(", {} offline", offline.len()) };
        crate::say!("{succeeded} of {} succeeded{offline_note}", progress.len());
    }
    match failed.first() {
        None if offline.is_empty() => Ok(()),
        None => Err(Failure::new(
            Exit::Offline,
            format!(
                "offline, not waited for: {}; each runs the job at its next poll unless the start expires first (see `musterctl job status {job}`)",
                offline.join(", ")
            ),
        )),
        Some(first) => Err(Failure::new(
            Exit::RunFailed,
            format!(
                "{} run(s) did not succeed, e.g. on {}: {}; see `musterctl history --job {job} --target {}`",
                failed.len(),
                first.target,
                first.state,
                first.target
            ),
        )),
    }
}

fn gave_up(job: &JobName, progress: &[Progress]) -> Failure {
    let waiting: Vec<String> = progress.iter().filter(|p| !p.done).map(|p| p.target.to_string()).collect();
    Failure::new(
        Exit::Offline,
        format!("gave up waiting; still not finished on {} (see `musterctl job status {job}`)", waiting.join(", ")),
    )
}

/// Watches the job's status keys (and history for replaced runs) until
/// every run in `progress` is final, showing each change.
async fn watch(api: &ApiClient, job: &JobName, progress: &mut [Progress], view: &mut View) -> Result<(), Failure> {
    let internal = |what: &str, e: &dyn std::fmt::Display| Failure::internal(format!("{what}: {e}"));
    let info: JobInfo = api.call(Op::JobShow, JobRef { job: job.clone() }).await?;
    let js = async_nats::jetstream::new(api.client.clone());
    let bucket = api.subjects.bucket(Bucket::JobStatus);
    let kv = js.get_key_value(bucket.as_str()).await.map_err(|e| internal(&format!("opening {bucket}"), &e))?;
    let mut changes =
        kv.watch_with_history(Bucket::jobstatus_keys_of(info.id)).await.map_err(|e| internal("watching job status", &e))?;
    let mut from_history = FuturesUnordered::new();
    while !progress.iter().all(|p| p.done) {
        tokio::select! {
            change = changes.next() => {
                let entry = match change {
                    Some(Ok(entry)) => entry,
                    Some(Err(e)) => return Err(internal("watching job status", &e)),
                    None => return Err(Failure::internal("the job-status watch ended")),
                };
                if entry.operation != async_nats::jetstream::kv::Operation::Put {
                    continue;
                }
                let status: JobTargetStatus = serde_json::from_slice(&entry.value)
                    .map_err(|e| internal(&format!("job status '{}' is corrupt", entry.key), &e))?;
                for (i, p) in progress.iter_mut().enumerate() {
                    match seen(p, &status) {
                        Seen::Other => {}
                        Seen::Mine => p.update(&status),
                        Seen::Replaced(run_id) => {
                            p.superseded = true;
                            let (js, subjects, target) = (js.clone(), api.subjects.clone(), p.target.clone());
                            from_history.push(async move {
                                (i, history::final_record(&js, &subjects, &target, info.id, run_id).await)
                            });
                        }
                    }
                }
            }
            Some((i, record)) = from_history.next(), if !from_history.is_empty() => {
                let record = record.map_err(Failure::from)?;
                progress[i].update(&JobTargetStatus::from(&record));
            }
        }
        view.show(progress);
    }
    Ok(())
}

/// How progress is shown: redrawn in place on a terminal, a line per change
/// otherwise, nothing until the end with `--json`.
enum View {
    Json,
    Lines { last: Vec<String> },
    Live { _bars: MultiProgress, lines: Vec<ProgressBar> },
}

impl View {
    fn new(json: bool, progress: &[Progress]) -> Self {
        use std::io::IsTerminal as _;
        let mut view = if json {
            View::Json
        } else if std::io::stdout().is_terminal() {
            let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template("{msg}").expect("a valid template");
            let lines = progress.iter().map(|_| bars.add(ProgressBar::new_spinner().with_style(style.clone()))).collect();
            View::Live { _bars: bars, lines }
        } else {
            View::Lines { last: vec![String::new(); progress.len()] }
        };
        view.show(progress);
        view
    }

    fn show(&mut self, progress: &[Progress]) {
        match self {
            View::Json => {}
            View::Lines { last } => {
                use std::io::Write as _;
                for (p, last) in progress.iter().zip(last.iter_mut()) {
                    let line = p.line();
                    if line != *last {
                        crate::say!("{line}");
                        *last = line;
                    }
                }
                std::io::stdout().flush().ok();
            }
            View::Live { lines, .. } => {
                for (p, bar) in progress.iter().zip(lines.iter()) {
                    bar.set_message(p.line());
                }
            }
        }
    }

    /// Leaves the last lines on the screen.
    fn close(&mut self) {
        if let View::Live { lines, .. } = self {
            for bar in lines.iter() {
                bar.finish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn delivery(target: &str, state: &str, run_id: Option<Uuid>) -> Delivery {
        serde_json::from_value(serde_json::json!({"target": target, "run_id": run_id, "state": state})).unwrap()
    }

    fn status(target: &str, run_id: Uuid, outcome: Outcome) -> JobTargetStatus {
        JobTargetStatus {
            job: JobName::new("j").unwrap(),
            target: TargetName::new(target).unwrap(),
            outcome,
            run_id,
            started_at: Utc::now(),
            finished_at: None,
            duration_ms: Some(1500),
            message: String::new(),
        }
    }

    #[test]
    fn a_start_shows_as_starting_queued_or_done() {
        let run = Some(Uuid::now_v7());
        let p = Progress::started(&delivery("web01", "delivered", run));
        assert_eq!((p.state.as_str(), p.done), ("starting", false));
        let p = Progress::started(&delivery("late", "queued", run));
        assert!(p.line().starts_with("late: offline: not started"), "{}", p.line());
        assert!(p.done && p.offline, "an offline target is reported, not waited for");
        let id = Uuid::now_v7();
        let mut p = Progress::started(&delivery("web01", "delivered", Some(id)));
        p.update(&status("web01", id, Outcome::Expired));
        assert!(p.done, "an expired start is final");
        let p = Progress::started(&delivery("gone", "failed", None));
        assert!(p.done);
    }

    #[test]
    fn only_this_runs_status_moves_it_and_a_later_run_sends_it_to_history() {
        let before = Uuid::now_v7();
        let mine = Uuid::now_v7();
        let mut p = Progress::started(&delivery("web01", "delivered", Some(mine)));
        assert_eq!(seen(&p, &status("web01", before, Outcome::Succeeded)), Seen::Other, "an older run");
        assert_eq!(seen(&p, &status("web02", mine, Outcome::Succeeded)), Seen::Other, "another target");
        assert_eq!(seen(&p, &status("web01", mine, Outcome::Running)), Seen::Mine);
        p.update(&status("web01", mine, Outcome::Running));
        assert_eq!((p.line().as_str(), p.done), ("web01: running in 1.5s", false));

        let later = Uuid::now_v7();
        assert_eq!(seen(&p, &status("web01", later, Outcome::Skipped)), Seen::Replaced(mine));
        p.superseded = true;
        assert_eq!(seen(&p, &status("web01", later, Outcome::Skipped)), Seen::Other, "history is asked once");

        p.update(&status("web01", mine, Outcome::Failed));
        assert!(p.done);
        assert_eq!(seen(&p, &status("web01", mine, Outcome::Failed)), Seen::Other, "a final run stays final");
    }
}
