//! Running jobs: step flow, retries, timeouts, stop, and the records of it all.
//!
//! A job never runs twice at once on one target: a start while it runs is
//! recorded as `skipped`. Manual starts are recorded every time; of the
//! schedule fires that find one run still going, only the first is, so a
//! stuck job on a 1-second schedule adds one `skipped` record per run, not
//! one per second. Each run writes a marker before it starts and
//! removes it after its final record is spooled, so a run the agent died in
//! is found at the next start and reported as `interrupted` — with the same
//! run id, so it replaces the `running` record instead of adding one. A
//! run that cannot start (its marker cannot be written: a full disk) is
//! recorded `failed`, when there is room if not at once ([`unstarted`]).

mod unstarted;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use muster_shared::desired::StartEntry;
use muster_shared::job::{JobDef, Next};
use muster_shared::msg::{self, Outcome, RunRecord, StepRecord, Trigger};
use muster_shared::name::{JobName, TargetName};
use muster_shared::params::{self, ParamType};
use muster_shared::sealed::{self, Sealed};
use muster_shared::subject::Subjects;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use muster_runtime::backoff::Backoff;

use crate::kept::{self, Keep, Kept};
use crate::live::{Live, RunOutput};
use crate::metrics::AgentMetrics;
use crate::process::{self, add_note, run_step, Ended, OutputCapture, Program, RunAs, StepCommand};
use crate::spool::{Entry, Spool};
use crate::state::State;
use muster_shared::kept::KeptEnd;

/// Steps one run may execute, `goto` loops included, when the job has no
/// timeout to end them.
pub const MAX_STEP_EXECUTIONS: usize = 10_000;

/// The largest run record sent, JSON-encoded. The results stream refuses
/// bodies over [`muster_shared::MAX_BODY_BYTES`], and a refused record would
/// hold up every result behind it in the spool; the rest is headroom for
/// headers. See [`fit_record`].
pub const MAX_RECORD_BYTES: usize = muster_shared::MAX_BODY_BYTES / 4 * 3;

/// Step records kept from each end of a run that executed more steps than
/// twice this (a `goto` loop); the ones in between are left out.
const KEEP_STEP_RECORDS: usize = 100;

/// How much later than a queued stop's posting time a run may have
/// started and still be stopped by it: room for clock skew between master
/// and target. See [`Runner::stop_started_before`].
pub const STOP_CLOCK_TOLERANCE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// The longest the upload of one step's kept output may take
/// (`keep_output: full`), before the run goes on without it.
pub const KEPT_UPLOAD_WAIT: Duration = Duration::from_secs(300);

/// The variable that carries the run id into every step's environment; it is
/// also how leftover processes of an interrupted run are found.
pub const RUN_ID_VAR: &str = "MUSTER_RUN_ID";

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub target: TargetName,
    pub subjects: Subjects,
    pub output_cap: usize,
    pub kill_grace: Duration,
    pub max_concurrent_runs: usize,
}

#[derive(Debug)]
struct Running {
    run_id: Uuid,
    name: JobName,
    cancel: CancellationToken,
    /// When the run was started (this agent's clock).
    started_at: DateTime<Utc>,
    /// A schedule fire was already recorded `skipped` during this run.
    schedule_skip_recorded: bool,
}

/// The run whose steps run: its id, and its live output if published.
#[derive(Debug, Clone, Copy)]
struct ThisRun<'a> {
    run_id: Uuid,
    live: Option<&'a RunOutput>,
    /// Its parameter values, unmasked: the steps' `MUSTER_PARAM_*`.
    params: &'a params::Values,
}

/// What a start request led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    Running(Uuid),
    /// The job was already running; a `skipped` record was written.
    Skipped(Uuid),
    /// The run marker could not be written (disk full?): recorded `failed`,
    /// once the spool has room if not at once.
    Failed(Uuid),
}

#[derive(Debug, Clone)]
pub struct Runner {
    cfg: Arc<RunnerConfig>,
    state: State,
    spool: Spool,
    running: Arc<Mutex<HashMap<Uuid, Running>>>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    /// Cancelled when the shutdown grace is over: a final record still
    /// waiting for room in the spool is then left to the run marker.
    stopping: CancellationToken,
    /// Final records waiting for room in the spool ([`Runner::waiting_records`]).
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Records of runs that could not start, waiting for room.
    unstarted: Arc<unstarted::Unstarted>,
    /// Runs by outcome, and the agent's other counters.
    metrics: Arc<AgentMetrics>,
    /// Where runs publish their output while they run, once connected.
    live: Arc<std::sync::OnceLock<Live>>,
    /// This agent's key pair, which secret parameters are sealed for.
    xkey: Arc<std::sync::OnceLock<nkeys::XKey>>,
}

impl Runner {
    pub fn new(cfg: RunnerConfig, state: State, spool: Spool, metrics: Arc<AgentMetrics>) -> Self {
        let slots = Arc::new(Semaphore::new(cfg.max_concurrent_runs.max(1)));
        Self {
            cfg: Arc::new(cfg),
            state,
            spool,
            running: Arc::default(),
            slots,
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            waiting: Arc::default(),
            unstarted: Arc::default(),
            metrics,
            live: Arc::default(),
            xkey: Arc::default(),
        }
    }

    /// The agent's counters, shared with the poller.
    pub fn metrics(&self) -> &Arc<AgentMetrics> {
        &self.metrics
    }

    /// Runs started from now on publish their output live ([`crate::live`]).
    /// Set once, when the agent has its connection; a second call changes
    /// nothing.
    pub fn attach_live(&self, live: Live) {
        self.live.set(live).ok();
    }

    /// Gives the runner the agent's key pair ([`crate::xkey`]); a second
    /// call changes nothing.
    pub fn attach_key(&self, key: nkeys::XKey) {
        self.xkey.set(key).ok();
    }

    /// A start's secret parameter values, opened with the agent's key.
    ///
    /// # Errors
    /// Why they cannot be opened, for the run's `failed` record.
    pub fn open_secrets(&self, sealed: &Sealed) -> Result<params::Values, String> {
        let key = self.xkey.get().ok_or("this agent has no key to open secret parameters with")?;
        sealed::open(sealed, key).map_err(|e| e.to_string())
    }

    /// Reports runs the agent died in as `interrupted`. Call once at start.
    ///
    /// # Errors
    /// When markers cannot be read or the records cannot be spooled.
    pub fn report_interrupted(&self) -> anyhow::Result<usize> {
        let runs = self.state.unfinished_runs()?;
        for mut r in runs.iter().cloned() {
            let id = r.run_id.to_string();
            let leftovers = tokio::task::block_in_place(|| process::terminate_leftovers(RUN_ID_VAR, &id, self.cfg.kill_grace));
            r.outcome = Outcome::Interrupted;
            r.finished_at = Some(Utc::now());
            r.message = "the agent stopped while this run was in progress".into();
            if leftovers > 0 {
                add_note(&mut r.message, &format!("{leftovers} leftover processes of it were terminated at restart"));
            }
            self.record(&r)?;
            self.state.mark_run_finished(r.run_id)?;
            self.state.run_finished(r.run_id)?;
            tracing::warn!(job = %r.job, run_id = %r.run_id, "reported interrupted run");
        }
        // Kept output of the runs the agent died in: their records say
        // `interrupted`, and nothing will upload it.
        match std::fs::remove_dir_all(kept::dir(self.state.dir())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, "cannot remove the kept output of interrupted runs");
            }
            _ => {}
        }
        Ok(runs.len())
    }

    /// Starts a run with the job's default parameters (a scheduled run, an
    /// `on_start` one) unless the job is already running.
    pub fn start(&self, job: JobDef, trigger: Trigger, run_id: Uuid) -> Started {
        self.start_with(job, trigger, run_id, params::Values::new())
    }

    /// Starts a run with the parameter values of its start entry (the
    /// job's defaults under them, for a start from a master that sent
    /// none) unless the job is already running.
    pub fn start_with(&self, job: JobDef, trigger: Trigger, run_id: Uuid, given: params::Values) -> Started {
        let mut values = params::defaults(&job.spec.params);
        values.extend(given);
        let mut running = self.running.lock().expect("runner lock");
        if let Some(r) = running.get_mut(&job.id) {
            if matches!(trigger, Trigger::Schedule { .. }) {
                if r.schedule_skip_recorded {
                    tracing::debug!(job = %job.spec.name, %trigger, "schedule fire skipped: already running");
                    return Started::Skipped(run_id);
                }
                r.schedule_skip_recorded = true;
            }
            let mut record = self.new_record(&job, trigger, run_id);
            record.outcome = Outcome::Skipped;
            record.finished_at = Some(record.started_at);
            record.message = format!("already running (run {})", r.run_id);
            drop(running);
            if let Err(e) = self.record(&record) {
                tracing::error!(job = %job.spec.name, error = %e, "could not record skipped run");
            }
            tracing::info!(job = %job.spec.name, %run_id, "start skipped: already running");
            return Started::Skipped(run_id);
        }
        let mut record = self.new_record(&job, trigger, run_id);
        record.params = params::masked(&job.spec.params, &values);
        // The marker is durable before start() returns: from here on the
        // run is either recorded or reported as interrupted, under its id.
        if let Err(e) = tokio::task::block_in_place(|| self.state.run_started(&record)) {
            tracing::error!(job = %job.spec.name, error = %e, "cannot write the run marker; run not started");
            drop(running);
            let mut failed = record;
            failed.outcome = Outcome::Failed;
            failed.finished_at = Some(failed.started_at);
            failed.message = format!("the run could not be started: its run marker could not be written ({e})");
            self.record_unstarted(failed);
            return Started::Failed(run_id);
        }
        let cancel = CancellationToken::new();
        running.insert(
            job.id,
            Running {
                run_id,
                name: job.spec.name.clone(),
                cancel: cancel.clone(),
                started_at: record.started_at,
                schedule_skip_recorded: false,
            },
        );
        drop(running);
        let this = self.clone();
        self.tasks.spawn(async move {
            let job_id = job.id;
            let name = job.spec.name.clone();
            if let Err(e) = this.execute(job, record, values, cancel).await {
                tracing::error!(job = %name, %run_id, error = %e, "run could not be recorded");
            }
            this.running.lock().expect("runner lock").remove(&job_id);
        });
        Started::Running(run_id)
    }

    /// Answers a start that is not run (`expired`, or `failed` when its
    /// job is not here) with one final record under the start's run id, so
    /// every start has exactly one answer.
    ///
    /// # Errors
    /// When the record cannot be spooled.
    pub fn record_not_run(&self, start: &StartEntry, outcome: Outcome, message: String) -> anyhow::Result<()> {
        let now = Utc::now();
        let record = RunRecord {
            params: Default::default(),
            v: muster_shared::PROTOCOL_VERSION,
            run_id: start.run_id,
            job_id: start.job_id,
            job: start.job.clone(),
            target: self.cfg.target.clone(),
            trigger: start.trigger(),
            outcome,
            started_at: now,
            finished_at: Some(now),
            message,
            steps: Vec::new(),
        };
        self.record(&record)?;
        tracing::info!(job = %start.job, run_id = %start.run_id, %outcome, "start not run");
        Ok(())
    }

    /// A `running` record for a new run of `job`, starting now.
    fn new_record(&self, job: &JobDef, trigger: Trigger, run_id: Uuid) -> RunRecord {
        RunRecord {
            params: Default::default(),
            v: muster_shared::PROTOCOL_VERSION,
            run_id,
            job_id: job.id,
            job: job.spec.name.clone(),
            target: self.cfg.target.clone(),
            trigger,
            outcome: Outcome::Running,
            started_at: Utc::now(),
            finished_at: None,
            message: String::new(),
            steps: Vec::new(),
        }
    }

    /// Stops a running job. Returns whether it was running.
    pub fn stop(&self, name: &JobName) -> bool {
        self.stop_run(name, |_| true)
    }

    /// Stops a running job if its run began before a stop posted at
    /// `posted_at` (master clock) — a queued stop read late, say
    /// after the agent restarted, must not stop a run that began after the
    /// operator asked (an `on_start` run, the next scheduled one).
    /// [`STOP_CLOCK_TOLERANCE`] allows for the master's and the target's
    /// clocks disagreeing. Returns whether a run was stopped.
    pub fn stop_started_before(&self, name: &JobName, posted_at: DateTime<Utc>) -> bool {
        let limit = posted_at + STOP_CLOCK_TOLERANCE;
        let stopped = self.stop_run(name, |r| r.started_at <= limit);
        if !stopped && self.running_jobs().contains(name) {
            tracing::info!(job = %name, %posted_at, "queued stop is older than the running run; ignored");
        }
        stopped
    }

    fn stop_run(&self, name: &JobName, applies: impl Fn(&Running) -> bool) -> bool {
        let running = self.running.lock().expect("runner lock");
        match running.values().find(|r| &r.name == name && applies(r)) {
            Some(r) => {
                tracing::info!(job = %name, run_id = %r.run_id, "stopping");
                r.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Stops the run of a job the master took away (deleted, unassigned,
    /// defected): its record says `canceled`, and no process is left that
    /// Muster can no longer name. Returns whether it was running.
    pub fn stop_removed(&self, job_id: Uuid) -> bool {
        let running = self.running.lock().expect("runner lock");
        match running.get(&job_id) {
            Some(r) => {
                tracing::info!(job = %r.name, run_id = %r.run_id, "job removed from this target while it ran; stopping it");
                r.cancel.cancel();
                true
            }
            None => false,
        }
    }

    pub fn is_running(&self, job_id: Uuid) -> bool {
        self.running.lock().expect("runner lock").contains_key(&job_id)
    }

    /// Whether this run id was already started here (running, finished or
    /// reported interrupted): a start naming it must not run again.
    pub fn knows_run(&self, run_id: Uuid) -> bool {
        self.state.run_finished_here(run_id) || self.running.lock().expect("runner lock").values().any(|r| r.run_id == run_id)
    }

    pub fn running_jobs(&self) -> Vec<JobName> {
        let mut names: Vec<JobName> = self.running.lock().expect("runner lock").values().map(|r| r.name.clone()).collect();
        names.sort();
        names
    }

    /// Lets running jobs finish within `grace`, then cancels the rest (their
    /// runs are recorded as `canceled`) and waits for their records.
    pub async fn shutdown(&self, grace: Duration) {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            {
                let running = self.running.lock().expect("runner lock");
                tracing::warn!(jobs = running.len(), "shutdown grace over: canceling running jobs");
                for r in running.values() {
                    r.cancel.cancel();
                }
            }
            self.stopping.cancel();
            self.tasks.wait().await;
        }
    }

    /// Spools a run record (start or end).
    fn record(&self, r: &RunRecord) -> anyhow::Result<()> {
        let entry = Entry {
            subject: self.cfg.subjects.result_run(&r.target, r.job_id),
            msg_id: r.msg_id(),
            kind: if r.outcome.is_final() { "run-end".into() } else { "run-start".into() },
            body: String::from_utf8(msg::encode(r)).expect("JSON is UTF-8"),
        };
        tokio::task::block_in_place(|| self.spool.push(&entry))?;
        if r.outcome.is_final() {
            self.metrics.run_ended(r.outcome);
        }
        Ok(())
    }

    /// Spools a run's final record, waiting for room when the spool or the
    /// disk is full: the run stays `running` (its marker kept, the job not
    /// started again) until its outcome is written, instead of the outcome
    /// being lost and the run reported `interrupted` at the next start.
    /// Gives up only when the shutdown grace is over. Returns whether the
    /// record was written.
    async fn record_final(&self, r: &RunRecord) -> bool {
        let Err(e) = self.record(r) else {
            return true;
        };
        tracing::error!(job = %r.job, run_id = %r.run_id, error = %e, "cannot spool the run's final record (disk or spool full?); retrying until there is room");
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let written = loop {
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = self.stopping.cancelled() => {
                    tracing::warn!(job = %r.job, run_id = %r.run_id, "shut down before the final record had room; the run is reported interrupted at the next start");
                    break false;
                }
            }
            if self.record(r).is_ok() {
                tracing::info!(job = %r.job, run_id = %r.run_id, outcome = %r.outcome, "the run's final record is written at last");
                break true;
            }
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        written
    }

    /// Records a run that could not start; when the spool cannot take it
    /// (the disk is full), holds it and writes it once there is room
    /// ([`unstarted`]), until the shutdown grace is over.
    fn record_unstarted(&self, record: RunRecord) {
        if self.record(&record).is_ok() {
            return;
        }
        tracing::warn!(job = %record.job, run_id = %record.run_id, "cannot spool the record of a run that could not start; held until there is room");
        if !self.unstarted.hold(record) {
            return;
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
            loop {
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = this.stopping.cancelled() => {
                        tracing::warn!(records = this.unstarted.len(), "shut down before the records of runs that could not start had room; dropped");
                        return;
                    }
                }
                for r in this.unstarted.records() {
                    if this.record(&r).is_err() {
                        break;
                    }
                    tracing::info!(job = %r.job, run_id = %r.run_id, "the record of a run that could not start is written at last");
                    this.unstarted.written(r.run_id);
                }
                if this.unstarted.done() {
                    return;
                }
            }
        });
    }

    /// Records of runs that could not start, waiting for room in the spool.
    pub fn unstarted_records(&self) -> usize {
        self.unstarted.len()
    }

    /// Runs that ended but whose final record waits for room in the spool.
    pub fn waiting_records(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    async fn execute(
        &self,
        job: JobDef,
        mut record: RunRecord,
        values: params::Values,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let _slot = self.slots.acquire().await.expect("semaphore never closes");
        let run_id = record.run_id;
        record.started_at = Utc::now();
        // The `running` record is news, not the truth: without room for it
        // (a full disk) the run goes on, and its final record says all.
        if let Err(e) = self.record(&record) {
            tracing::error!(job = %record.job, %run_id, error = %e, "cannot spool the run's start record (disk or spool full?); running it anyway");
        }
        tracing::info!(job = %record.job, %run_id, trigger = %record.trigger, "run started");

        // The job timeout cancels whatever step is running, like a stop, but
        // is told apart by this flag.
        let job_timed_out = Arc::new(AtomicBool::new(false));
        let step_cancel = cancel.child_token();
        let timer = job.spec.timeout_secs.map(|secs| {
            let (flag, token) = (job_timed_out.clone(), step_cancel.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                flag.store(true, Ordering::SeqCst);
                token.cancel();
            })
        });

        let live = self.live.get().map(|l| l.open(record.job_id, run_id));
        let (outcome, message) = self
            .run_steps(
                &job,
                ThisRun { run_id, live: live.as_ref(), params: &values },
                &mut record.steps,
                &step_cancel,
                &job_timed_out,
                &cancel,
            )
            .await;
        if let Some(t) = timer {
            t.abort();
        }
        // Before the final record: whoever sees it has the output.
        if let Some(live) = live {
            live.finish().await;
        }
        record.outcome = outcome;
        record.message = message;
        record.finished_at = Some(Utc::now());
        fit_record(&mut record, MAX_RECORD_BYTES);
        if !self.record_final(&record).await {
            // Shut down before there was room: the marker stays, and the run
            // is reported `interrupted` at the next start.
            return Ok(());
        }
        // Remember the run id before dropping the marker, so a start read
        // again after a crash is not run again.
        tokio::task::block_in_place(|| {
            self.state.mark_run_finished(run_id)?;
            self.state.run_finished(run_id)
        })?;
        tracing::info!(job = %record.job, %run_id, outcome = %record.outcome, "run finished");
        Ok(())
    }

    async fn run_steps(
        &self,
        job: &JobDef,
        run: ThisRun<'_>,
        steps: &mut Vec<StepRecord>,
        step_cancel: &CancellationToken,
        job_timed_out: &AtomicBool,
        stop: &CancellationToken,
    ) -> (Outcome, String) {
        let ThisRun { run_id, live, params } = run;
        let mut index = 0;
        for _ in 0..MAX_STEP_EXECUTIONS {
            let step = &job.spec.steps[index];
            let mut retries = 0;
            let (exit, started_at) = loop {
                let started_at = Utc::now();
                let mut command = self.step_command(job, run_id, params, step);
                command.live = live.map(|l| l.tee(index));
                command.keep = self.keep_for(job, run_id, steps.len());
                let exit = run_step(&command, step_cancel).await;
                let retry = !exit.succeeded() && !step_cancel.is_cancelled() && retries < step.retries;
                if !retry {
                    break (exit, started_at);
                }
                // A retry counts once it runs: a stop during the interval
                // leaves the count at the attempts made.
                tokio::select! {
                    () = step_cancel.cancelled() => break (exit, started_at),
                    () = tokio::time::sleep(Duration::from_secs(step.retry_interval_secs)) => {}
                }
                retries += 1;
                tracing::info!(job = %job.spec.name, step = %step.name, attempt = retries + 1, "retrying step");
            };
            let outcome = match exit.ended {
                Ended::Exited if exit.succeeded() => Outcome::Succeeded,
                Ended::Exited | Ended::SpawnFailed => Outcome::Failed,
                Ended::TimedOut => Outcome::TimedOut,
                Ended::Canceled if job_timed_out.load(Ordering::SeqCst) => Outcome::TimedOut,
                Ended::Canceled => Outcome::Canceled,
            };
            let message = if job_timed_out.load(Ordering::SeqCst) && exit.ended == Ended::Canceled {
                format!("job timeout of {}s reached", job.spec.timeout_secs.unwrap_or_default())
            } else {
                exit.message.clone()
            };
            let mut step_message = message.clone();
            if let Some(kept) = &exit.kept {
                add_note(&mut step_message, &self.store_kept(run_id, steps.len(), &step.name, kept).await);
            }
            steps.push(StepRecord {
                name: step.name.clone(),
                index,
                outcome,
                exit_code: exit.exit_code,
                signal: exit.signal,
                started_at,
                duration_ms: u64::try_from(exit.duration.as_millis()).unwrap_or(u64::MAX),
                retries,
                output: exit.output,
                output_cut_bytes: exit.output_cut_bytes,
                message: step_message,
            });
            if job_timed_out.load(Ordering::SeqCst) {
                return (Outcome::TimedOut, format!("job timeout reached in step '{}'", step.name));
            }
            if stop.is_cancelled() {
                return (Outcome::Canceled, format!("stopped in step '{}'", step.name));
            }
            let success = outcome == Outcome::Succeeded;
            match job.spec.next_after(index, success) {
                Next::Step(next) => index = next,
                Next::QuitSuccess => return (Outcome::Succeeded, String::new()),
                Next::QuitFailure if success => {
                    return (Outcome::Failed, format!("step '{}' succeeded and its flow is quit_failure", step.name))
                }
                Next::QuitFailure => {
                    let why = match (exit.exit_code, message.is_empty()) {
                        (_, false) => message,
                        (Some(code), true) => format!("exit code {code}"),
                        (None, true) => "failed".into(),
                    };
                    let outcome = if outcome == Outcome::TimedOut { Outcome::TimedOut } else { Outcome::Failed };
                    return (outcome, format!("step '{}' failed: {why}", step.name));
                }
            }
        }
        (Outcome::Failed, format!("stopped after {MAX_STEP_EXECUTIONS} step executions (a goto loop without a job timeout?)"))
    }

    /// Where step record `n`'s whole output is written while it runs, when
    /// the job keeps it (and the agent is connected, so it can be stored).
    fn keep_for(&self, job: &JobDef, run_id: Uuid, n: usize) -> Option<Keep> {
        let max = job.spec.kept_output_max()?;
        self.live.get()?;
        Some(Keep { path: kept::dir(self.state.dir()).join(format!("{run_id}.{n}.out")), max })
    }

    /// Uploads step record `n`'s whole output; what the step's message
    /// should say about it (nothing when all of it was stored).
    async fn store_kept(&self, run_id: Uuid, n: usize, name: &str, k: &Kept) -> String {
        let Some(live) = self.live.get() else {
            return "full output not kept: not connected".into();
        };
        let end = KeptEnd {
            v: muster_shared::PROTOCOL_VERSION,
            target: self.cfg.target.clone(),
            run_id,
            step: n,
            name: name.to_owned(),
            bytes: 0,
            chunks: 0,
            sha256: String::new(),
            cut_bytes: 0,
        };
        let subject = self.cfg.subjects.kept(&self.cfg.target, run_id, n);
        match tokio::time::timeout(KEPT_UPLOAD_WAIT, kept::upload(live.js(), &subject, k, end)).await {
            Ok(Ok(())) if k.cut > 0 => format!("full output kept up to keep_output_max: {} bytes cut", k.cut),
            Ok(Ok(())) => String::new(),
            Ok(Err(e)) => {
                tracing::warn!(%run_id, step = n, error = %e, "full output not kept");
                format!("full output not kept: {e}")
            }
            Err(_) => {
                tokio::fs::remove_file(&k.path).await.ok();
                format!("full output not kept: not stored within {KEPT_UPLOAD_WAIT:?}")
            }
        }
    }

    /// The process to run for `step`. Besides the step's own environment it
    /// gets `MUSTER_PARAM_<NAME>` for each parameter value, and
    /// `MUSTER_JOB`, `MUSTER_RUN_ID`, `MUSTER_TARGET` and `MUSTER_STEP`,
    /// which win over step variables of the same name.
    fn step_command(&self, job: &JobDef, run_id: Uuid, values: &params::Values, step: &muster_shared::job::Step) -> StepCommand {
        let program = match (&step.command, &step.argv) {
            (Some(c), _) => Program::Shell(c.clone()),
            (None, Some(argv)) => Program::Argv(argv.clone()),
            (None, None) => Program::Shell(String::new()),
        };
        let mut env = step.env.clone();
        env.extend(params::env(values));
        env.extend([
            ("MUSTER_JOB".to_owned(), job.spec.name.to_string()),
            (RUN_ID_VAR.to_owned(), run_id.to_string()),
            ("MUSTER_TARGET".to_owned(), self.cfg.target.to_string()),
            ("MUSTER_STEP".to_owned(), step.name.clone()),
        ]);
        StepCommand {
            program,
            cwd: step.cwd.as_ref().map(Into::into),
            run_as: step.user.clone().map(|user| RunAs { user, group: step.group.clone() }),
            env,
            timeout: step.timeout_secs.map(Duration::from_secs),
            output_cap: self.cfg.output_cap,
            kill_grace: self.cfg.kill_grace,
            live: None,
            keep: None,
            secrets: job
                .spec
                .params
                .iter()
                .filter(|p| p.kind == ParamType::Secret)
                .filter_map(|p| values.get(&p.name).cloned())
                .collect(),
        }
    }
}

/// Shrinks a run record until it encodes to at most `max` bytes, so it can
/// always be sent: the step records in the middle of a long `goto` loop are
/// left out, then step outputs are cut in the middle to one size that fits
/// (head and tail kept, as with the output cap). What was left out is said in the
/// record's message and each step's `output_cut_bytes`.
pub fn fit_record(record: &mut RunRecord, max: usize) {
    if record.steps.len() > 2 * KEEP_STEP_RECORDS {
        let left_out = record.steps.len() - 2 * KEEP_STEP_RECORDS;
        record.steps.drain(KEEP_STEP_RECORDS..KEEP_STEP_RECORDS + left_out);
        add_note(&mut record.message, &format!("{left_out} step records in the middle of the run left out"));
    }
    if msg::encode(record).len() <= max {
        return;
    }
    add_note(&mut record.message, &format!("step output shortened to fit the {max}-byte record limit"));
    // The largest per-step output size that fits, found by bisection: every
    // step keeps the same share, so one chatty step does not wipe the others.
    let (mut fits, mut too_big) = (0, record.steps.iter().map(|s| s.output.len()).max().unwrap_or(0));
    while too_big - fits > 1 {
        let cap = fits + (too_big - fits) / 2;
        let mut trial = record.clone();
        cap_outputs(&mut trial, cap);
        if msg::encode(&trial).len() <= max {
            fits = cap;
        } else {
            too_big = cap;
        }
    }
    cap_outputs(record, fits);
}

/// Cuts every step output longer than `cap` to its head and tail.
fn cap_outputs(record: &mut RunRecord, cap: usize) {
    for step in record.steps.iter_mut().filter(|s| s.output.len() > cap) {
        let mut capture = OutputCapture::new(cap);
        capture.push(step.output.as_bytes());
        let (output, cut) = capture.finish();
        step.output = output;
        step.output_cut_bytes += cut;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(steps: usize, output: &str) -> RunRecord {
        let step = StepRecord {
            name: "s".into(),
            index: 0,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            signal: None,
            started_at: Utc::now(),
            duration_ms: 1,
            retries: 0,
            output: output.to_owned(),
            output_cut_bytes: 0,
            message: String::new(),
        };
        RunRecord {
            params: Default::default(),
            v: muster_shared::PROTOCOL_VERSION,
            run_id: Uuid::now_v7(),
            job_id: Uuid::now_v7(),
            job: JobName::new("j").unwrap(),
            target: TargetName::new("t").unwrap(),
            trigger: Trigger::Manual,
            outcome: Outcome::Succeeded,
            started_at: Utc::now(),
            finished_at: Some(Utc::now()),
            message: String::new(),
            steps: vec![step; steps],
        }
    }

    /// Run records in the spool, oldest first.
    fn spooled(state: &State) -> Vec<RunRecord> {
        let mut files: Vec<_> = std::fs::read_dir(state.spool_dir()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
            .iter()
            .filter_map(|f| serde_json::from_slice::<Entry>(&std::fs::read(f).ok()?).ok())
            .map(|e| serde_json::from_str(&e.body).unwrap())
            .collect()
    }

    /// A runner for target `t` on `state` and `spool`.
    fn test_runner(state: &State, spool: Spool) -> Runner {
        let cfg = RunnerConfig {
            target: TargetName::new("t").unwrap(),
            subjects: Subjects::default(),
            output_cap: 1024,
            kill_grace: Duration::from_secs(1),
            max_concurrent_runs: 4,
        };
        Runner::new(cfg, state.clone(), spool, Arc::default())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeated_schedule_fires_are_recorded_skipped_once_and_stale_stops_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let spool = Spool::open(&state.spool_dir(), 1 << 20).unwrap();
        let runner = test_runner(&state, spool);
        let spec = muster_shared::job::JobSpec::from_json(r#"{"name":"slow","steps":[{"command":"sleep 60"}]}"#).unwrap();
        let job = JobDef { id: Uuid::now_v7(), revision: 1, spec };
        let tick = || Trigger::Schedule { schedule: "tick".into() };
        assert!(matches!(runner.start(job.clone(), tick(), Uuid::now_v7()), Started::Running(_)));
        for trigger in [tick(), tick(), Trigger::Manual, tick(), Trigger::Manual] {
            assert!(matches!(runner.start(job.clone(), trigger, Uuid::now_v7()), Started::Skipped(_)));
        }
        let skipped: Vec<String> =
            spooled(&state).iter().filter(|r| r.outcome == Outcome::Skipped).map(|r| r.trigger.to_string()).collect();
        assert_eq!(skipped, ["schedule:tick", "manual", "manual"]);

        // A stop posted a minute before this run began is stale.
        assert!(!runner.stop_started_before(&job.spec.name, Utc::now() - chrono::TimeDelta::minutes(1)));
        assert!(runner.is_running(job.id));
        assert!(runner.stop_started_before(&job.spec.name, Utc::now()));
        runner.shutdown(Duration::from_secs(10)).await;
        let last = spooled(&state).pop().unwrap();
        assert_eq!(last.outcome, Outcome::Canceled, "{last:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_final_record_waits_for_room_instead_of_being_lost() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        // A spool with room for the filler only, as on a full disk.
        let filler = Entry { subject: "x".into(), msg_id: "filler".into(), kind: "run-end".into(), body: "y".repeat(2000) };
        let cap = serde_json::to_vec(&filler).unwrap().len() as u64 + 100;
        let spool = Spool::open(&state.spool_dir(), cap).unwrap();
        spool.push(&filler).unwrap();
        let runner = test_runner(&state, spool.clone());
        let spec = muster_shared::job::JobSpec::from_json(r#"{"name":"quick","steps":[{"command":"echo done"}]}"#).unwrap();
        let job = JobDef { id: Uuid::now_v7(), revision: 1, spec };
        let run_id = Uuid::now_v7();
        assert!(matches!(runner.start(job.clone(), Trigger::Manual, run_id), Started::Running(_)));
        let until = |what: &str, ok: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !ok() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        until("the final record to wait for room", &|| runner.waiting_records() == 1);
        assert!(runner.is_running(job.id), "still running until its outcome is written");
        assert!(state.spool_dir().parent().unwrap().join("runs").join(format!("{run_id}.json")).exists(), "marker kept");

        // Room again (the flusher sent the filler): the outcome lands.
        for (seq, _) in spool.peek(10).unwrap() {
            spool.confirm(seq).unwrap();
        }
        until("the final record written", &|| runner.waiting_records() == 0 && !runner.is_running(job.id));
        let records = spooled(&state);
        let last = records.last().expect("a record");
        assert_eq!((last.run_id, last.outcome), (run_id, Outcome::Succeeded), "{records:?}");
        assert!(!state.spool_dir().parent().unwrap().join("runs").join(format!("{run_id}.json")).exists(), "marker gone");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fires_that_could_not_start_are_recorded_once_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        // No run marker can be written (`runs` is not a directory), and the
        // spool has room for the filler only: a full disk.
        let runs = dir.path().join("runs");
        std::fs::remove_dir(&runs).unwrap();
        std::fs::write(&runs, b"").unwrap();
        let filler = Entry { subject: "x".into(), msg_id: "filler".into(), kind: "run-end".into(), body: "y".repeat(2000) };
        let cap = serde_json::to_vec(&filler).unwrap().len() as u64 + 100;
        let spool = Spool::open(&state.spool_dir(), cap).unwrap();
        spool.push(&filler).unwrap();
        let runner = test_runner(&state, spool.clone());
        let spec = muster_shared::job::JobSpec::from_json(r#"{"name":"tick","steps":[{"command":"true"}]}"#).unwrap();
        let job = JobDef { id: Uuid::now_v7(), revision: 1, spec };
        let tick = || Trigger::Schedule { schedule: "every-second".into() };
        let first = Uuid::now_v7();
        assert_eq!(runner.start(job.clone(), tick(), first), Started::Failed(first));
        for _ in 0..2 {
            assert!(matches!(runner.start(job.clone(), tick(), Uuid::now_v7()), Started::Failed(_)));
        }
        let manual = Uuid::now_v7();
        assert_eq!(runner.start(job.clone(), Trigger::Manual, manual), Started::Failed(manual));
        assert_eq!(runner.unstarted_records(), 2, "the fires held as one record, the manual start as its own");
        assert!(!runner.is_running(job.id));

        // Room again (the flusher sent the filler): both records land.
        for (seq, _) in spool.peek(10).unwrap() {
            spool.confirm(seq).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while runner.unstarted_records() > 0 {
            assert!(std::time::Instant::now() < deadline, "the held records to be written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let records = spooled(&state);
        let got: Vec<(Uuid, Outcome, String)> = records.iter().map(|r| (r.run_id, r.outcome, r.trigger.to_string())).collect();
        assert_eq!(
            got,
            [(first, Outcome::Failed, "schedule:every-second".to_owned()), (manual, Outcome::Failed, "manual".to_owned())],
            "{records:?}"
        );
        assert!(records[0].message.contains("run marker could not be written"), "{}", records[0].message);
        assert!(records[0].message.contains("(3 fires from "), "{}", records[0].message);
        assert!(records.iter().all(|r| r.finished_at.is_some()));
        runner.shutdown(Duration::from_secs(5)).await;
    }

    #[test]
    fn a_small_record_is_left_alone() {
        let mut r = record(3, "hello\n");
        let before = r.clone();
        fit_record(&mut r, MAX_RECORD_BYTES);
        assert_eq!(r, before);
    }

    #[test]
    fn big_outputs_are_cut_to_fit() {
        // 30 steps of 64 KiB: about 2 MB, over the limit.
        let mut r = record(30, &"x".repeat(64 * 1024));
        fit_record(&mut r, MAX_RECORD_BYTES);
        let size = msg::encode(&r).len();
        assert!(size <= MAX_RECORD_BYTES, "{size}");
        assert!(size > MAX_RECORD_BYTES / 4, "not cut much more than needed: {size}");
        assert_eq!(r.steps.len(), 30);
        assert!(r.steps.iter().all(|s| s.output_cut_bytes > 0 && s.output.contains("bytes cut ...]")));
        assert!(r.message.contains("shortened"), "{}", r.message);
    }

    #[test]
    fn escaping_heavy_output_is_cut_to_fit() {
        // Control characters take six bytes each in JSON.
        let mut r = record(2, &"\u{1}".repeat(400 * 1024));
        fit_record(&mut r, MAX_RECORD_BYTES);
        assert!(msg::encode(&r).len() <= MAX_RECORD_BYTES);
    }

    #[test]
    fn long_goto_loops_keep_both_ends() {
        let mut r = record(1000, "tick\n");
        for (i, s) in r.steps.iter_mut().enumerate() {
            s.index = i;
        }
        fit_record(&mut r, MAX_RECORD_BYTES);
        assert_eq!(r.steps.len(), 2 * KEEP_STEP_RECORDS);
        assert_eq!(r.steps[KEEP_STEP_RECORDS - 1].index, KEEP_STEP_RECORDS - 1);
        assert_eq!(r.steps[KEEP_STEP_RECORDS].index, 1000 - KEEP_STEP_RECORDS);
        assert!(r.message.contains("800 step records"), "{}", r.message);
    }
}
