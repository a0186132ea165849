//! `job start --wait` and `exec`: following the runs a start made until
//! each is final.
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
//! An exec ([`Followed::Exec`]) has no job status (its job id is its own
//! and nothing of it is kept but history), so its runs are followed on the
//! results stream itself, by one consumer on the exec's job id from the
//! stream's last sequence before the exec was posted
//! ([`history::runs_of_job`]); each run's output and exit code are printed
//! as its final record arrives.
//!
//! With `--follow`, the runs' live output is printed as it comes, each line
//! prefixed with its target ([`crate::live::Interleaved`]), and the rest of
//! it once every run is final; an exec's output is then not printed again
//! under its final line.
//!
//! On a terminal, one line per target is redrawn in place (a job start
//! without `--follow`);
//! otherwise, and for an exec's output, each line is printed when it
//! changes; with `--json`, the final states are printed once.

use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use muster_shared::api::{Delivery, DeliveryState, JobInfo, JobRef, JobTargetStatus, Op};
use muster_shared::msg::{Outcome, RunRecord};
use muster_shared::name::{JobName, TargetName};
use muster_shared::subject::Bucket;
use serde::Serialize;
use uuid::Uuid;

use crate::client::ApiClient;
use crate::exit::{Exit, Failure};
use crate::history;
use crate::render;

/// What is followed.
#[derive(Debug, Clone)]
pub enum Followed {
    /// `job start --wait`: the job's keys in job status.
    Job(JobName),
    /// `exec`: the exec's run records, stored after sequence `after` of the
    /// results stream (its last before the exec was posted).
    Exec { job_id: Uuid, after: u64 },
}

impl Followed {
    /// Where to look next, for the messages that end a follow.
    fn see(&self, target: &str) -> String {
        match self {
            Followed::Job(job) => format!("`musterctl history --job {job} --target {target}`"),
            Followed::Exec { .. } => format!("`musterctl history --target {target}`"),
        }
    }

    fn offline_note(&self) -> String {
        match self {
            Followed::Job(job) => {
                format!("each runs the job at its next poll unless the start expires first (see `musterctl job status {job}`)")
            }
            Followed::Exec { .. } => {
                "the command runs there only if the target polls before --timeout passes; otherwise it is recorded `expired`"
                    .into()
            }
        }
    }
}

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
    /// An exec's exit code (its last step's), once final.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// An exec's output, once final.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
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
            exit_code: None,
            output: None,
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

    /// A run record of this run: its status and, once final, its exit code
    /// and output.
    fn update_run(&mut self, r: &RunRecord) {
        self.update(&JobTargetStatus::from(r));
        if r.outcome.is_final() {
            self.exit_code = r.steps.iter().rev().find_map(|s| s.exit_code);
            self.output = Some(r.steps.iter().map(|s| s.output.as_str()).collect());
        }
    }

    /// The line shown for it: `web01: succeeded in 1.0s`, `web02: failed
    /// (exit 3) in 0.1s: …`.
    pub fn line(&self) -> String {
        let took = self.duration_ms.map_or(String::new(), |d| format!(" in {:.1}s", d as f64 / 1000.0));
        let why = if self.message.is_empty() { String::new() } else { format!(": {}", self.message) };
        let exit = self.exit_code.map_or(String::new(), |c| format!(" (exit {c})"));
        format!("{}: {}{exit}{took}{why}", self.target, self.state)
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
/// were offline), until `deadline` at most.
///
/// # Errors
/// Exit 8 when a run did not succeed, 5 when a target was offline or
/// `deadline` passed first, 1 when job status or history cannot be read.
pub async fn follow(
    api: &ApiClient,
    json: bool,
    followed: &Followed,
    started: &[Delivery],
    deadline: tokio::time::Instant,
    live: bool,
) -> Result<(), Failure> {
    let mut progress: Vec<Progress> = started.iter().map(Progress::started).collect();
    if let Followed::Exec { .. } = followed {
        for p in progress.iter_mut().filter(|p| p.offline) {
            "not started: it did not answer; it runs the command only if it polls before --timeout passes"
                .clone_into(&mut p.message);
        }
    }
    // Live output (not with --json, whose stdout is one document), from
    // the runs that started: an offline target's run is not waited for.
    let live = if live && !json {
        let runs: Vec<_> = progress.iter().filter(|p| !p.offline).filter_map(|p| Some((p.target.clone(), p.run_id?))).collect();
        let js = async_nats::jetstream::new(api.client.clone());
        Some(crate::live::Interleaved::start(&js, &api.subjects, &runs).await?)
    } else {
        None
    };
    // An exec prints output between the lines, and live output comes
    // between them too: no redrawing in place then.
    let mut view = View::new(json, matches!(followed, Followed::Job(_)) && live.is_none(), &progress);
    if live.is_some() {
        view.leave_out_outputs();
    }
    let finished = progress.iter().all(|p| p.done)
        || tokio::select! {
            r = async {
                match followed {
                    Followed::Job(job) => watch(api, job, &mut progress, &mut view).await,
                    Followed::Exec { job_id, after } => watch_runs(api, *job_id, *after, &mut progress, &mut view).await,
                }
            } => r.map(|()| true),
            () = tokio::time::sleep_until(deadline) => Ok(false),
        }
        .inspect_err(|_| view.close())?;
    view.close();
    if let Some(live) = live {
        // Every run followed is final: the rest of their output is stored.
        live.finish().await?;
    }
    if !finished {
        if json {
            render::print_json(&progress)?;
        }
        return Err(gave_up(followed, &progress));
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
            format!("offline, not waited for: {}; {}", offline.join(", "), followed.offline_note()),
        )),
        Some(first) => Err(Failure::new(
            Exit::RunFailed,
            format!(
                "{} run(s) did not succeed, e.g. on {}: {}; see {}",
                failed.len(),
                first.target,
                first.state,
                followed.see(first.target.as_str())
            ),
        )),
    }
}

fn gave_up(followed: &Followed, progress: &[Progress]) -> Failure {
    let waiting: Vec<String> = progress.iter().filter(|p| !p.done).map(|p| p.target.to_string()).collect();
    let see = match followed {
        Followed::Job(job) => format!("`musterctl job status {job}`"),
        Followed::Exec { .. } => "`musterctl history --target TARGET`; each run is recorded when it ends".into(),
    };
    Failure::new(Exit::Offline, format!("gave up waiting; still not finished on {} (see {see})", waiting.join(", ")))
}

/// Follows an exec's run records on the results stream until every run in
/// `progress` is final, showing each change.
async fn watch_runs(
    api: &ApiClient,
    job_id: Uuid,
    after: u64,
    progress: &mut [Progress],
    view: &mut View,
) -> Result<(), Failure> {
    let js = async_nats::jetstream::new(api.client.clone());
    let mut runs = history::runs_of_job(&js, &api.subjects, job_id, after)
        .await
        .map_err(|e| Failure::internal(format!("following the exec's runs: {e:#}")))?;
    while !progress.iter().all(|p| p.done) {
        let record = match runs.next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => return Err(Failure::internal(format!("{e:#}"))),
            None => return Err(Failure::internal("the results stream ended while following the exec")),
        };
        if let Some(p) = progress.iter_mut().find(|p| !p.done && p.run_id == Some(record.run_id) && p.target == record.target) {
            p.update_run(&record);
        }
        view.show(progress);
    }
    Ok(())
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
    /// `outputs`: an exec's output under its final line (not when it was
    /// printed live).
    Lines {
        last: Vec<String>,
        outputs: bool,
    },
    Live {
        _bars: MultiProgress,
        lines: Vec<ProgressBar>,
    },
}

impl View {
    fn new(json: bool, redraw: bool, progress: &[Progress]) -> Self {
        use std::io::IsTerminal as _;
        let mut view = if json {
            View::Json
        } else if redraw && std::io::stdout().is_terminal() {
            let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template("{msg}").expect("a valid template");
            let lines = progress.iter().map(|_| bars.add(ProgressBar::new_spinner().with_style(style.clone()))).collect();
            View::Live { _bars: bars, lines }
        } else {
            View::Lines { last: vec![String::new(); progress.len()], outputs: true }
        };
        view.show(progress);
        view
    }

    fn show(&mut self, progress: &[Progress]) {
        match self {
            View::Json => {}
            View::Lines { last, outputs } => {
                use std::io::Write as _;
                for (p, last) in progress.iter().zip(last.iter_mut()) {
                    let line = p.line();
                    if line != *last {
                        crate::say!("{line}");
                        // An exec's output, once, under its final line.
                        if let Some(output) = p.output.as_deref().filter(|_| p.done && *outputs) {
                            for l in output.lines() {
                                crate::say!("    {l}");
                            }
                        }
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

    /// Run outputs were printed live: not again under the final lines.
    fn leave_out_outputs(&mut self) {
        if let View::Lines { outputs, .. } = self {
            *outputs = false;
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
            previous: None,
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
