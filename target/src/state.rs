//! The agent's local state, kept under `--state-dir` so that a restart (or a
//! `kill -9`) loses nothing the agent had acknowledged:
//!
//! - `jobs/<job-id>.json` — the jobs from the master (the target's copy);
//! - `agent.json` — applied instruction ids (so re-applying after a crash
//!   between apply and ack is harmless), poll interval, clock skew;
//! - `runs/<run-id>.json` — a marker for each run in progress; one found at
//!   start-up is a run that the agent died in, reported as `interrupted`;
//! - `spool/` — results not yet confirmed by JetStream (see [`crate::spool`]);
//! - `last-poll` — `<unix seconds> <poll interval seconds>` of the latest
//!   poll that reached NATS (its report stored), for healthchecks that cannot ask the agent
//!   (`deploy/image/target-healthcheck`). A hint, not state: it is written
//!   without fsync, on every poll.
//!
//! Every other write goes through [`muster_runtime::fsutil::write_atomic`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use muster_shared::job::JobDef;
use muster_shared::msg::RunRecord;
use muster_shared::name::JobName;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use muster_runtime::fsutil::{remove_durable, write_atomic};

/// How many applied instruction ids are remembered. An instruction is
/// redelivered only if it was not acked, which happens within one poll, so a
/// few thousand is far more than enough.
const APPLIED_MEMORY: usize = 4096;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct AgentFile {
    #[serde(default)]
    applied: VecDeque<Uuid>,
    #[serde(default)]
    poll_interval_secs: Option<u64>,
    #[serde(default)]
    clock_skew_ms: Option<i64>,
    /// Set when the target defected; cleared when it enlists again.
    #[serde(default)]
    defected: bool,
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

    // ---- applied instructions and agent settings ---------------------------------------

    pub fn was_applied(&self, id: Uuid) -> bool {
        self.lock().agent.applied.contains(&id)
    }

    /// Remembers an applied instruction, durably, before it is acked.
    ///
    /// # Errors
    /// When `agent.json` cannot be written.
    pub fn mark_applied(&self, ids: &[Uuid]) -> io::Result<()> {
        self.update_agent(|a| {
            a.applied.extend(ids);
            let excess = a.applied.len().saturating_sub(APPLIED_MEMORY);
            a.applied.drain(..excess);
        })
    }

    pub fn poll_interval_secs(&self) -> Option<u64> {
        self.lock().agent.poll_interval_secs
    }

    /// # Errors
    /// When `agent.json` cannot be written.
    pub fn set_poll_interval_secs(&self, secs: u64) -> io::Result<()> {
        self.update_agent(|a| a.poll_interval_secs = Some(secs))
    }

    pub fn clock_skew_ms(&self) -> Option<i64> {
        self.lock().agent.clock_skew_ms
    }

    /// # Errors
    /// When `agent.json` cannot be written.
    pub fn set_clock_skew_ms(&self, skew: i64) -> io::Result<()> {
        self.update_agent(|a| a.clock_skew_ms = Some(skew))
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
