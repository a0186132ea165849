//! The agent's local state, kept under `--state-dir` so that a restart (or a
//! `kill -9`) loses nothing the agent had acknowledged:
//!
//! - `jobs/<job-id>.json` — the jobs from the master (the target's copy);
//! - `agent.json` — the desired-state revision applied (`{epoch, revision,
//!   changes}`), the start and stop entries already handled (so a start
//!   read again after a crash is not run twice), the ids of runs that
//!   finished here, poll interval, clock reference and skew, the defected
//!   flag. An `agent.json` of the previous design (applied instruction ids)
//!   still reads: every new field has a default;
//! - `runs/<run-id>.json` — a marker for each run in progress; one found at
//!   start-up is a run that the agent died in, reported as `interrupted`;
//! - `spool/` — results not yet confirmed by JetStream (see [`crate::spool`]);
//! - `last-poll` — `<unix seconds> <poll interval seconds>` of the latest
//!   poll that reached NATS (its report stored), for healthchecks that cannot ask the agent
//!   (`deploy/image/target-healthcheck`). A hint, not state: it is written
//!   without fsync, on every poll.
//!
//! - `lock`, `name` — held and written by [`crate::claim`]: one agent, one
//!   name per directory.
//!
//! Every other write goes through [`muster_runtime::fsutil::write_atomic`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use muster_shared::desired::Applied;
use muster_shared::job::JobDef;
use muster_shared::msg::RunRecord;
use muster_shared::name::JobName;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use muster_runtime::fsutil::{remove_durable, write_atomic};

/// How many finished run ids are remembered: a second guard, behind the
/// handled starts, against running a start twice (a start stays in the
/// manifest only until its first record arrives, so a few thousand is far
/// more than enough).
const FINISHED_RUN_MEMORY: usize = 4096;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct AgentFile {
    /// Runs that ended here (final record spooled, or reported
    /// interrupted). The previous design also kept applied instruction ids
    /// here, under the same name; they age out.
    #[serde(default, rename = "applied")]
    finished_runs: VecDeque<Uuid>,
    /// The desired-state revision applied last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    desired: Option<Applied>,
    /// Run ids of the manifest's starts already handled (run, or recorded
    /// `expired`/`failed`); forgotten once the manifest no longer lists them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    handled_starts: BTreeSet<Uuid>,
    /// Ids of the manifest's stops already handled, likewise.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    handled_stops: BTreeSet<Uuid>,
    #[serde(default)]
    poll_interval_secs: Option<u64>,
    /// The id of the clock reference the skew was measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    clock_id: Option<Uuid>,
    #[serde(default)]
    clock_skew_ms: Option<i64>,
    /// Set when the manifest says the target defected; cleared when a
    /// manifest says it is enlisted again.
    #[serde(default)]
    defected: bool,
}

/// What applying one manifest revision changes in `agent.json`, written at
/// once (see [`State::save_applied`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedState {
    pub applied: Applied,
    /// The start run ids the manifest lists that are handled.
    pub handled_starts: BTreeSet<Uuid>,
    pub handled_stops: BTreeSet<Uuid>,
    pub poll_interval_secs: Option<u64>,
    /// A new clock reference: its id and the skew measured.
    pub clock: Option<(Uuid, i64)>,
    pub defected: bool,
}

#[derive(Debug)]
struct Inner {
    jobs: HashMap<Uuid, JobDef>,
    agent: AgentFile,
}

/// Shared handle to the local state. Methods do their own (short) locking and
/// blocking file I/O; callers on the async runtime use `spawn_blocking` for
/// bulk work, single small writes are fine inline.
#[derive(Debug, Clone)]
pub struct State {
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

impl State {
    /// Opens (creating) the state directory and loads jobs and agent state.
    ///
    /// # Errors
    /// When the directory cannot be created or read. A corrupt job file is
    /// logged and skipped (the master's resync restores it).
    pub fn open(dir: &Path) -> io::Result<State> {
        for sub in ["jobs", "runs", "spool"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut jobs = HashMap::new();
        for entry in std::fs::read_dir(dir.join("jobs"))? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path).map(|b| serde_json::from_slice::<JobDef>(&b)) {
                Ok(Ok(job)) => {
                    jobs.insert(job.id, job);
                }
                Ok(Err(e)) => {
                    tracing::error!(path = %path.display(), error = %e, "corrupt job file skipped")
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "unreadable job file skipped")
                }
            }
        }
        let agent = match std::fs::read(dir.join("agent.json")) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::error!(error = %e, "corrupt agent.json; starting with empty agent state");
                AgentFile::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => AgentFile::default(),
            Err(e) => return Err(e),
        };
        Ok(State { dir: dir.to_owned(), inner: Arc::new(Mutex::new(Inner { jobs, agent })) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.join("spool")
    }

    /// Records a poll that reached NATS (see `last-poll` above).
    pub fn mark_polled(&self, at_unix_secs: i64, interval_secs: u64) -> io::Result<()> {
        let tmp = self.dir.join("last-poll.tmp");
        std::fs::write(&tmp, format!("{at_unix_secs} {interval_secs}\n"))?;
        std::fs::rename(tmp, self.dir.join("last-poll"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("state lock poisoned")
    }

    /// Changes `agent.json` durably; memory follows only once the file is
    /// written, so a failed write leaves both as they were.
    fn update_agent(&self, change: impl FnOnce(&mut AgentFile)) -> io::Result<()> {
        let mut inner = self.lock();
        let mut next = inner.agent.clone();
        change(&mut next);
        write_atomic(&self.dir.join("agent.json"), &serde_json::to_vec(&next).expect("serialise"))?;
        inner.agent = next;
        Ok(())
    }

    // ---- jobs ----------------------------------------------------------------

    pub fn jobs(&self) -> Vec<JobDef> {
        let mut jobs: Vec<JobDef> = self.lock().jobs.values().cloned().collect();
        jobs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        jobs
    }

    pub fn job(&self, id: Uuid) -> Option<JobDef> {
        self.lock().jobs.get(&id).cloned()
    }

    pub fn job_by_name(&self, name: &JobName) -> Option<JobDef> {
        self.lock().jobs.values().find(|j| &j.spec.name == name).cloned()
    }

    /// The revision of every job held, for [`Manifest::job_changes`](muster_shared::desired::Manifest::job_changes).
    pub fn job_revisions(&self) -> BTreeMap<Uuid, u64> {
        self.lock().jobs.values().map(|j| (j.id, j.revision)).collect()
    }

    pub fn job_count(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Stores a job unless a newer revision is already here. Returns whether
    /// it was stored.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn upsert_job(&self, job: &JobDef) -> io::Result<bool> {
        let mut inner = self.lock();
        if inner.jobs.get(&job.id).is_some_and(|have| have.revision > job.revision) {
            return Ok(false);
        }
        // A job renamed or re-created under the same name replaces the old one.
        let stale: Vec<Uuid> =
            inner.jobs.values().filter(|j| j.spec.name == job.spec.name && j.id != job.id).map(|j| j.id).collect();
        for id in stale {
            remove_durable(&self.job_path(id))?;
            inner.jobs.remove(&id);
        }
        write_atomic(&self.job_path(job.id), &serde_json::to_vec_pretty(job).expect("serialise"))?;
        inner.jobs.insert(job.id, job.clone());
        Ok(true)
    }

    /// # Errors
    /// When the file cannot be removed.
    pub fn delete_job(&self, id: Uuid) -> io::Result<()> {
        let mut inner = self.lock();
        remove_durable(&self.job_path(id))?;
        inner.jobs.remove(&id);
        Ok(())
    }

    /// # Errors
    /// When a file cannot be removed.
    pub fn delete_all_jobs(&self) -> io::Result<()> {
        let ids: Vec<Uuid> = self.lock().jobs.keys().copied().collect();
        for id in ids {
            self.delete_job(id)?;
        }
        Ok(())
    }

    fn job_path(&self, id: Uuid) -> PathBuf {
        self.dir.join("jobs").join(format!("{id}.json"))
    }

    // ---- desired state applied, runs handled, agent settings -------------------------

    /// The revision applied last (`None`: never, or an agent of the
    /// previous design's state).
    pub fn desired(&self) -> Option<Applied> {
        self.lock().agent.desired
    }

    /// Whether this start (by run id) was already handled.
    pub fn start_handled(&self, run_id: Uuid) -> bool {
        self.lock().agent.handled_starts.contains(&run_id)
    }

    pub fn stop_handled(&self, id: Uuid) -> bool {
        self.lock().agent.handled_stops.contains(&id)
    }

    /// Adds starts (by run id) and stops to the handled sets, durably:
    /// called before any of them acts, so a crash after this can lose one
    /// (the master records a lost start `expired` a day later) but never
    /// act on one twice.
    ///
    /// # Errors
    /// When `agent.json` cannot be written.
    pub fn mark_handled(&self, starts: &[Uuid], stops: &[Uuid]) -> io::Result<()> {
        if starts.is_empty() && stops.is_empty() {
            return Ok(());
        }
        self.update_agent(|a| {
            a.handled_starts.extend(starts);
            a.handled_stops.extend(stops);
        })
    }

    /// Saves a revision as applied, with everything it set, in one write.
    ///
    /// # Errors
    /// When `agent.json` cannot be written; the revision is then applied
    /// again at the next poll (every step of it is idempotent).
    pub fn save_applied(&self, s: AppliedState) -> io::Result<()> {
        self.update_agent(|a| {
            a.desired = Some(s.applied);
            a.handled_starts = s.handled_starts;
            a.handled_stops = s.handled_stops;
            a.poll_interval_secs = s.poll_interval_secs;
            if let Some((id, skew)) = s.clock {
                a.clock_id = Some(id);
                a.clock_skew_ms = Some(skew);
            }
            a.defected = s.defected;
        })
    }

    /// Whether a run with this id ended here.
    pub fn run_finished_here(&self, run_id: Uuid) -> bool {
        self.lock().agent.finished_runs.contains(&run_id)
    }

    /// Remembers a run that ended, durably, before its marker goes.
    ///
    /// # Errors
    /// When `agent.json` cannot be written.
    pub fn mark_run_finished(&self, run_id: Uuid) -> io::Result<()> {
        self.update_agent(|a| {
            a.finished_runs.push_back(run_id);
            let excess = a.finished_runs.len().saturating_sub(FINISHED_RUN_MEMORY);
            a.finished_runs.drain(..excess);
        })
    }

    pub fn poll_interval_secs(&self) -> Option<u64> {
        self.lock().agent.poll_interval_secs
    }

    pub fn clock_skew_ms(&self) -> Option<i64> {
        self.lock().agent.clock_skew_ms
    }

    pub fn clock_id(&self) -> Option<Uuid> {
        self.lock().agent.clock_id
    }

    pub fn defected(&self) -> bool {
        self.lock().agent.defected
    }

    /// # Errors
    /// When `agent.json` cannot be written.
    pub fn set_defected(&self, defected: bool) -> io::Result<()> {
        self.update_agent(|a| a.defected = defected)
    }

    // ---- run markers -----------------------------------------------------------------

    /// Writes the marker of a run in progress.
    ///
    /// # Errors
    /// When the marker cannot be written.
    pub fn run_started(&self, record: &RunRecord) -> io::Result<()> {
        write_atomic(&self.run_path(record.run_id), &serde_json::to_vec(record).expect("serialise"))
    }

    /// # Errors
    /// When the marker cannot be removed.
    pub fn run_finished(&self, run_id: Uuid) -> io::Result<()> {
        remove_durable(&self.run_path(run_id))
    }

    /// Runs whose markers survived: the agent died while they ran.
    ///
    /// # Errors
    /// When the runs directory cannot be read.
    pub fn unfinished_runs(&self) -> io::Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("runs"))? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path).map(|b| serde_json::from_slice::<RunRecord>(&b)) {
                Ok(Ok(r)) => out.push(r),
                _ => {
                    tracing::error!(path = %path.display(), "unreadable run marker removed");
                    remove_durable(&path)?;
                }
            }
        }
        Ok(out)
    }

    fn run_path(&self, run_id: Uuid) -> PathBuf {
        self.dir.join("runs").join(format!("{run_id}.json"))
    }
}
