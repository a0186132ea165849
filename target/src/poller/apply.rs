//! Applying a manifest revision to the agent: everything a poll does between
//! reading its manifest (and the job documents that changed) and reporting,
//! and none of it needs NATS.
//!
//! Order matters for a crash at any point, since the revision is saved as
//! applied only at the end and the next poll applies it again:
//! - job documents are written (atomically) and unlisted jobs removed (a
//!   run of a removed job is stopped and recorded `canceled`) —
//!   idempotent, and a job already at its listed revision is not fetched
//!   again;
//! - starts and stops are saved as handled *before* any of them acts, so a
//!   start is never run twice (a crash right after the save loses it; the
//!   master then records it `expired` a day past its expiry);
//! - an exec start carries its command: it runs as a one-step job that is
//!   never written to the state directory (trigger `exec`);
//! - a start read after its expiry, or naming a job the target does not
//!   hold, is answered by one `expired`/`failed` record under its run id,
//!   spooled before it is saved as handled (a repeat is dropped by the
//!   results stream's de-duplication, which keys on the run id);
//! - then the revision, poll interval, clock reference and defected flag,
//!   in one write, and the applied record for the master.
//!
//! Kept apart from the reads (in [`super`]) so that what a manifest does to
//! the agent's state can be tested on a directory alone.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use muster_shared::desired::{AppliedRecord, DocError, JobDoc, JobError, JobRef, Manifest, StartVerdict};
use muster_shared::msg::{self, Outcome};
use muster_shared::name::TargetName;
use muster_shared::subject::Subjects;
use muster_shared::PROTOCOL_VERSION;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::metrics::{AgentMetrics, Bad};
use crate::runner::Runner;
use crate::spool::{Entry, Spool};
use crate::state::{AppliedState, State};

/// The parts of the agent that a manifest changes, borrowed for one poll.
#[derive(Debug, Clone, Copy)]
pub(super) struct Applier<'a> {
    /// This target: a manifest or document naming another is refused.
    pub name: &'a TargetName,
    pub subjects: &'a Subjects,
    pub state: &'a State,
    pub runner: &'a Runner,
    /// Where applied records go, for the master's download list.
    pub spool: &'a Spool,
    /// Woken when jobs changed, so the scheduler recomputes.
    pub jobs_changed: &'a Notify,
    pub metrics: &'a AgentMetrics,
}

/// What applying one revision led to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ApplyOutcome {
    /// The revision is now held (possibly with job errors). `false`: a
    /// listed document is missing or older than listed (a lagging
    /// replica, or a master between its writes); the next poll tries again.
    pub applied: bool,
    /// Jobs written or removed, starts and stops handled.
    pub changed: u32,
    /// Jobs refused (each keeps the target's previous copy).
    pub failed: u32,
}

impl Applier<'_> {
    /// Reads a manifest body: decoded, and checked for this target.
    ///
    /// # Errors
    /// The refusal, already logged, counted (`bad_instructions`) and — when
    /// the body names a revision — spooled as an applied record that says
    /// why. The target keeps what it has.
    pub(super) fn read(&self, body: &[u8]) -> Result<Manifest, String> {
        let (answered, error) = match msg::decode::<Manifest>(body) {
            Err(e) => (None, format!("manifest unreadable: {e}")),
            Ok(m) => match m.validate(self.name) {
                Ok(()) => return Ok(m),
                // A manifest naming another target is not this target's to answer.
                Err(e) => ((m.target == *self.name).then(|| m.applied()), format!("manifest refused: {e}")),
            },
        };
        let total = self.metrics.bad(Bad::Instruction);
        tracing::warn!(
            subject = %self.subjects.state(self.name),
            error,
            bad_instructions = total,
            "desired state refused; keeping the jobs held"
        );
        if let Some(applied) = answered {
            self.spool_record(&AppliedRecord {
                v: PROTOCOL_VERSION,
                target: self.name.clone(),
                applied,
                at: Utc::now(),
                refused: Some(error.clone()),
                errors: Vec::new(),
            });
        }
        Err(error)
    }

    /// Applies a manifest this target has not applied yet, given the job
    /// documents fetched for it (each listed job the target lacked or held
    /// at a lower revision, with its body, or `None` when the stream has
    /// none). `now` is the target's clock, which alone decides expiry.
    ///
    /// # Errors
    /// When local state cannot be written; nothing is saved as applied then,
    /// and the next poll applies the revision again.
    pub(super) fn apply(
        &self,
        m: &Manifest,
        fetched: Vec<(&JobRef, Option<&[u8]>)>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<ApplyOutcome> {
        let mut out = ApplyOutcome::default();
        let mut errors = Vec::new();
        let mut waiting = false;
        for (listed, body) in fetched {
            let checked = match body {
                None => Err(DocError::Stale { have: 0, listed: listed.revision }),
                Some(b) => msg::decode::<JobDoc>(b)
                    .map_err(|e| DocError::Invalid(format!("job document unreadable: {e}")))
                    .and_then(|doc| doc.check(self.name, listed).map(|()| doc)),
            };
            match checked {
                Ok(doc) => {
                    tokio::task::block_in_place(|| self.state.upsert_job(&doc.job))?;
                    out.changed += 1;
                }
                Err(DocError::Stale { have, listed: want }) => {
                    tracing::debug!(job = %listed.name, have, want, "job document not there yet; the revision waits");
                    waiting = true;
                }
                Err(DocError::Invalid(error)) => {
                    tracing::warn!(job = %listed.name, job_id = %listed.id, error, "job refused; keeping the previous copy");
                    out.failed += 1;
                    errors.push(JobError { job_id: listed.id, job: listed.name.clone(), error });
                }
            }
        }
        if waiting {
            if out.changed > 0 {
                self.jobs_changed.notify_one();
            }
            return Ok(out);
        }

        // Jobs from this master the manifest no longer lists (all of them
        // for a defected target).
        let listed: BTreeSet<Uuid> = m.jobs.iter().map(|j| j.id).collect();
        let gone: Vec<Uuid> = self.state.job_revisions().into_keys().filter(|id| !listed.contains(id)).collect();
        for id in gone {
            // A run of a job that is no longer ours is stopped (recorded
            // `canceled`), never left running beyond `job stop`'s reach.
            self.runner.stop_removed(id);
            tokio::task::block_in_place(|| self.state.delete_job(id))?;
            out.changed += 1;
        }
        if out.changed > 0 {
            self.jobs_changed.notify_one();
        }

        let (handled_starts, handled_stops) = self.starts_and_stops(m, now, &mut out)?;

        let clock =
            m.clock.filter(|c| self.state.clock_id() != Some(c.id)).map(|c| (c.id, (now - c.master_time).num_milliseconds()));
        tokio::task::block_in_place(|| {
            self.state.save_applied(AppliedState {
                applied: m.applied(),
                handled_starts,
                handled_stops,
                poll_interval_secs: m.poll_interval_secs,
                clock,
                defected: m.defected,
            })
        })?;
        if m.defected {
            tracing::warn!(revision = %m.revision, "defected: the master's jobs are deleted; not enlisting again");
        }
        self.spool_record(&AppliedRecord {
            v: PROTOCOL_VERSION,
            target: self.name.clone(),
            applied: m.applied(),
            at: now,
            refused: None,
            errors,
        });
        out.applied = true;
        Ok(out)
    }

    /// Handles the starts and stops not handled before, and returns the
    /// handled sets to keep: those the manifest still lists.
    fn starts_and_stops(
        &self,
        m: &Manifest,
        now: DateTime<Utc>,
        out: &mut ApplyOutcome,
    ) -> anyhow::Result<(BTreeSet<Uuid>, BTreeSet<Uuid>)> {
        let mut to_run = Vec::new();
        let mut new_starts = Vec::new();
        for start in m.starts.iter().filter(|s| !self.state.start_handled(s.run_id)) {
            new_starts.push(start.run_id);
            out.changed += 1;
            if self.runner.knows_run(start.run_id) {
                // Answered already (its run record carries the run id).
                continue;
            }
            // An exec carries its one-step job; it is run, never stored.
            let job = match &start.exec {
                Some(exec) => Some(exec.job(start.job_id)),
                None => self.state.job(start.job_id),
            };
            match (start.verdict(now), job) {
                (StartVerdict::Expired, _) => self.runner.record_not_run(
                    start,
                    Outcome::Expired,
                    format!("start read at {now}, after it expired at {}; not run", start.expires_at),
                )?,
                (StartVerdict::Run, None) => self.runner.record_not_run(
                    start,
                    Outcome::Failed,
                    format!("job '{}' ({}) is not on this target", start.job, start.job_id),
                )?,
                (StartVerdict::Run, Some(def)) => to_run.push((start, def)),
            }
        }
        let new_stops: Vec<_> = m.stops.iter().filter(|s| !self.state.stop_handled(s.id)).collect();
        let stop_ids: Vec<Uuid> = new_stops.iter().map(|s| s.id).collect();
        // Saved before any of them acts: never twice.
        tokio::task::block_in_place(|| self.state.mark_handled(&new_starts, &stop_ids))?;

        for (start, def) in to_run {
            // A run that cannot start (no room for its marker) is recorded
            // `failed` by the runner, when there is room if not at once.
            let mut values = start.params.clone();
            if let Some(sealed) = &start.sealed {
                match self.runner.open_secrets(sealed) {
                    Ok(secrets) => values.extend(secrets),
                    Err(why) => {
                        self.runner.record_not_run(start, Outcome::Failed, format!("not run: {why}"))?;
                        continue;
                    }
                }
            }
            self.runner.start_with(def, start.trigger(), start.run_id, values);
        }
        for stop in new_stops {
            out.changed += 1;
            if stop.is_live(now) {
                self.runner.stop_started_before(&stop.job, stop.posted_at);
            } else {
                tracing::info!(job = %stop.job, stop = %stop.id, "stop read after its expiry; ignored");
            }
        }
        let starts = m.starts.iter().map(|s| s.run_id).filter(|id| self.state.start_handled(*id)).collect();
        let stops = m.stops.iter().map(|s| s.id).filter(|id| self.state.stop_handled(*id)).collect();
        Ok((starts, stops))
    }

    /// Spools an applied record. A record that cannot be spooled (the spool
    /// is full) is logged: the poll report still carries the revision.
    fn spool_record(&self, record: &AppliedRecord) {
        let entry = Entry {
            subject: self.subjects.result_applied(self.name),
            msg_id: record.msg_id(),
            kind: "applied".into(),
            body: String::from_utf8(msg::encode(record)).expect("JSON is UTF-8"),
        };
        if let Err(e) = tokio::task::block_in_place(|| self.spool.push(&entry)) {
            tracing::error!(error = %e, revision = %record.applied.revision, "applied record not spooled");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use chrono::TimeDelta;
    use futures::FutureExt as _;
    use muster_shared::desired::{ClockRef, DerivedState, Revision, StartEntry, StopEntry, DEFAULT_EXPIRY, MIN_EXPIRY};
    use muster_shared::job::{JobDef, JobSpec};
    use muster_shared::msg::{RunRecord, Trigger};

    use super::*;
    use crate::runner::RunnerConfig;

    const TARGET: &str = "web01";

    /// What applying needs, opened on a state directory the way the agent
    /// opens it at start. Opening the same directory again is a restart.
    struct Agent {
        name: TargetName,
        subjects: Subjects,
        state: State,
        spool: Spool,
        runner: Runner,
        jobs_changed: Notify,
        metrics: std::sync::Arc<AgentMetrics>,
    }

    impl Agent {
        fn open(dir: &Path) -> Agent {
            let name = TargetName::new(TARGET).unwrap();
            let state = State::open(dir).unwrap();
            let spool = Spool::open(&state.spool_dir(), 1 << 20).unwrap();
            let runner = Runner::new(
                RunnerConfig {
                    target: name.clone(),
                    subjects: Subjects::default(),
                    output_cap: 1024,
                    kill_grace: Duration::from_secs(1),
                    max_concurrent_runs: 4,
                },
                state.clone(),
                spool.clone(),
                std::sync::Arc::default(),
            );
            let metrics = runner.metrics().clone();
            Agent { name, subjects: Subjects::default(), state, spool, runner, jobs_changed: Notify::new(), metrics }
        }

        fn applier(&self) -> Applier<'_> {
            Applier {
                name: &self.name,
                subjects: &self.subjects,
                state: &self.state,
                runner: &self.runner,
                spool: &self.spool,
                jobs_changed: &self.jobs_changed,
                metrics: &self.metrics,
            }
        }

        /// What a poll does with a manifest: read it, and if it is news,
        /// apply it with the documents `docs` holds (the stream), fetching
        /// only what the target lacks. Returns `None` when it was not news.
        fn poll(&self, m: &Manifest, docs: &[JobDef]) -> Option<ApplyOutcome> {
            self.poll_at(m, docs, Utc::now())
        }

        fn poll_at(&self, m: &Manifest, docs: &[JobDef], now: DateTime<Utc>) -> Option<ApplyOutcome> {
            let m = self.applier().read(&msg::encode(m)).unwrap();
            if !m.is_news_to(self.state.desired().as_ref()) {
                return None;
            }
            let held = self.state.job_revisions();
            let bodies: Vec<(&JobRef, Option<Vec<u8>>)> = m
                .job_changes(&held)
                .fetch
                .into_iter()
                .map(|listed| (listed, docs.iter().find(|d| d.id == listed.id).map(|d| msg::encode(&doc(d)))))
                .collect();
            let fetched = bodies.iter().map(|(l, b)| (*l, b.as_deref())).collect();
            Some(self.applier().apply(&m, fetched, now).unwrap())
        }

        /// Whether the poll woke the scheduler (and takes the wake-up).
        fn woke_scheduler(&self) -> bool {
            self.jobs_changed.notified().now_or_never().is_some()
        }

        /// What the spool holds for the master, oldest first.
        fn spooled(&self) -> Vec<Entry> {
            let mut files: Vec<_> = std::fs::read_dir(self.state.spool_dir()).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            files.iter().map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()).collect()
        }

        /// The applied records spooled, oldest first.
        fn applied_records(&self) -> Vec<AppliedRecord> {
            let records = self.spooled().into_iter().filter(|e| e.kind == "applied");
            records.map(|e| msg::decode::<AppliedRecord>(e.body.as_bytes()).unwrap()).collect()
        }

        /// The run records spooled for `run_id`, oldest first.
        fn runs(&self, run_id: Uuid) -> Vec<RunRecord> {
            let records = self.spooled().into_iter().filter(|e| e.kind.starts_with("run-"));
            records.map(|e| msg::decode::<RunRecord>(e.body.as_bytes()).unwrap()).filter(|r| r.run_id == run_id).collect()
        }
    }

    fn job(name: &str, command: &str) -> JobDef {
        let spec = JobSpec::from_json(&format!(r#"{{"name":"{name}","steps":[{{"command":"{command}"}}]}}"#)).unwrap();
        JobDef { id: Uuid::now_v7(), revision: 1, spec }
    }

    fn doc(job: &JobDef) -> JobDoc {
        JobDoc { v: PROTOCOL_VERSION, target: TargetName::new(TARGET).unwrap(), job: job.clone() }
    }

    fn listed(job: &JobDef) -> JobRef {
        JobRef { id: job.id, name: job.spec.name.clone(), revision: job.revision }
    }

    fn first(jobs: &[&JobDef]) -> Manifest {
        Manifest::first(
            TargetName::new(TARGET).unwrap(),
            Uuid::from_u128(7),
            DerivedState::new(jobs.iter().map(|j| listed(j)).collect(), None, false),
            Utc::now(),
        )
    }

    fn next(m: &Manifest, jobs: &[&JobDef]) -> Manifest {
        m.successor(DerivedState::new(jobs.iter().map(|j| listed(j)).collect(), m.poll_interval_secs, false), Utc::now())
    }

    fn start(job: &JobDef, posted_at: DateTime<Utc>, expires_in: Duration) -> StartEntry {
        StartEntry::new(Uuid::now_v7(), job.id, job.spec.name.clone(), posted_at, expires_in).unwrap()
    }

    fn job_ids(state: &State) -> Vec<Uuid> {
        state.job_revisions().into_keys().collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revision_writes_its_jobs_removes_the_unlisted_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let (a, b) = (job("a", "true"), job("b", "true"));
        let m1 = first(&[&a, &b]);

        let outcome = agent.poll(&m1, &[a.clone(), b.clone()]).unwrap();
        assert_eq!(outcome, ApplyOutcome { applied: true, changed: 2, failed: 0 });
        assert!(agent.woke_scheduler());
        assert_eq!(agent.state.desired(), Some(m1.applied()));
        assert_eq!(agent.poll(&m1, &[]), None, "the same revision again: nothing to do");

        // b goes, a moves to revision 2: only a is fetched.
        let mut a2 = a.clone();
        a2.revision = 2;
        a2.spec.description = "second revision".into();
        let m2 = next(&m1, &[&a2]);
        let outcome = agent.poll(&m2, std::slice::from_ref(&a2)).unwrap();
        assert_eq!(outcome, ApplyOutcome { applied: true, changed: 2, failed: 0 });
        let reopened = State::open(dir.path()).unwrap();
        assert_eq!(job_ids(&reopened), [a.id]);
        assert_eq!(reopened.job(a.id).unwrap().spec.description, "second revision");
        assert_eq!(reopened.desired(), Some(m2.applied()));

        // A lagging replica's older revision is ignored.
        assert_eq!(agent.poll(&m1, &[a.clone(), b.clone()]), None);
        assert_eq!(job_ids(&agent.state), [a.id]);

        let records = agent.applied_records();
        assert_eq!(records.iter().map(|r| r.applied.revision).collect::<Vec<_>>(), [Revision(1), Revision(2)]);
        assert!(records.iter().all(|r| r.refused.is_none() && r.errors.is_empty()), "{records:?}");
        assert_eq!(agent.spooled()[1].msg_id, format!("applied-web01-{}-2", m2.epoch));
        assert_eq!(agent.spooled()[1].subject, "muster.result.web01.applied");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exec_runs_its_command_once_and_stores_no_job() {
        use muster_shared::desired::{exec_job_name, ExecCommand};
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let exec_id = Uuid::now_v7();
        let exec = |argv: &[&str], expires_in| StartEntry {
            exec: Some(ExecCommand { argv: argv.iter().map(|a| (*a).to_owned()).collect(), timeout_secs: 30 }),
            ..StartEntry::new(Uuid::now_v7(), exec_id, exec_job_name(), Utc::now(), expires_in).unwrap()
        };
        let mut m = first(&[]);
        m.add_start(exec(&["sh", "-c", "echo from $0; exit 3", "exec"], DEFAULT_EXPIRY)).unwrap();
        let late = exec(&["true"], MIN_EXPIRY);
        m.add_start(late.clone()).unwrap();

        let outcome = agent.poll_at(&m, &[], Utc::now() + MIN_EXPIRY).unwrap();
        assert!(outcome.applied);
        agent.runner.shutdown(Duration::from_secs(30)).await;
        let runs = agent.runs(m.starts[0].run_id);
        let last = runs.last().unwrap();
        assert_eq!((last.trigger.clone(), last.outcome, last.job_id), (Trigger::Exec, Outcome::Failed, exec_id));
        assert_eq!(last.job.as_str(), muster_shared::desired::EXEC_JOB_NAME);
        assert_eq!((last.steps[0].exit_code, last.steps[0].output.as_str()), (Some(3), "from exec\n"));
        let expired = agent.runs(late.run_id);
        assert_eq!((expired.len(), expired[0].outcome, expired[0].trigger.clone()), (1, Outcome::Expired, Trigger::Exec));
        assert!(job_ids(&State::open(dir.path()).unwrap()).is_empty(), "an exec leaves no job behind");

        // Read again (its record not ingested yet): not run twice.
        let again = Agent::open(dir.path());
        again.poll(&next(&m, &[]), &[]).unwrap();
        again.runner.shutdown(Duration::from_secs(30)).await;
        assert_eq!(again.runs(m.starts[0].run_id).len(), runs.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_document_holds_the_revision_back_until_it_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let (a, b) = (job("a", "true"), job("b", "true"));
        let mut m = first(&[&a, &b]);
        m.add_start(start(&a, Utc::now(), DEFAULT_EXPIRY)).unwrap();

        let outcome = agent.poll(&m, std::slice::from_ref(&a)).unwrap();
        assert_eq!(outcome, ApplyOutcome { applied: false, changed: 1, failed: 0 });
        assert_eq!(agent.state.desired(), None);
        assert!(agent.applied_records().is_empty());
        assert!(!agent.runner.is_running(a.id), "starts wait for the revision");

        // The next poll fetches only b.
        let outcome = agent.poll(&m, std::slice::from_ref(&b)).unwrap();
        assert_eq!(outcome, ApplyOutcome { applied: true, changed: 2, failed: 0 });
        assert_eq!(agent.state.desired(), Some(m.applied()));
        agent.runner.shutdown(Duration::from_secs(30)).await;
        assert_eq!(agent.runs(m.starts[0].run_id).last().unwrap().outcome, Outcome::Succeeded);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invalid_document_fails_its_job_only_and_keeps_the_previous_copy() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let (a, b) = (job("a", "true"), job("b", "true"));
        let m1 = first(&[&a]);
        agent.poll(&m1, std::slice::from_ref(&a)).unwrap();

        let mut bad = a.clone();
        bad.revision = 2;
        bad.spec.steps.clear();
        let m2 = next(&m1, &[&bad, &b]);
        let outcome = agent.poll(&m2, &[bad.clone(), b.clone()]).unwrap();
        assert_eq!(outcome, ApplyOutcome { applied: true, changed: 1, failed: 1 });
        assert_eq!(agent.state.job(a.id).unwrap().revision, 1, "the previous copy stays");
        assert!(agent.state.job(b.id).is_some());
        let record = agent.applied_records().pop().unwrap();
        assert_eq!(record.applied, m2.applied());
        assert_eq!(record.errors.len(), 1);
        assert_eq!(record.errors[0].job_id, a.id);
        assert!(record.errors[0].error.starts_with("job refused: "), "{record:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_start_runs_once_under_its_run_id_across_revisions_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let j = job("hello", "echo hi");
        let mut m1 = first(&[&j]);
        let s = start(&j, Utc::now(), DEFAULT_EXPIRY);
        m1.add_start(s.clone()).unwrap();
        {
            let agent = Agent::open(dir.path());
            agent.poll(&m1, std::slice::from_ref(&j)).unwrap();
            agent.runner.shutdown(Duration::from_secs(30)).await;
            let runs = agent.runs(s.run_id);
            assert_eq!(runs.iter().map(|r| r.outcome).collect::<Vec<_>>(), [Outcome::Running, Outcome::Succeeded]);
            assert_eq!(runs[1].trigger, Trigger::Manual);
            assert_eq!(runs[1].steps[0].output, "hi\n");

            // A later revision still lists the start (its record not ingested yet).
            let m2 = next(&m1, &[&j]);
            assert!(agent.poll(&m2, &[]).unwrap().applied);
            assert_eq!(agent.runs(s.run_id).len(), 2);
        }
        // Restarted, the agent reads a revision that lists it again, from another epoch (a rebuilt stream).
        let agent = Agent::open(dir.path());
        let mut rebuilt = first(&[&j]);
        rebuilt.epoch = Uuid::from_u128(8);
        rebuilt.starts = m1.starts.clone();
        assert!(agent.poll(&rebuilt, &[]).unwrap().applied);
        assert!(!agent.runner.is_running(j.id));
        assert_eq!(agent.runs(s.run_id).len(), 2, "not run again");

        // Once the manifest no longer lists it, the handled set forgets it.
        let m3 = next(&rebuilt, &[&j]);
        let mut m3 = m3;
        m3.starts.clear();
        agent.poll(&m3, &[]).unwrap();
        assert!(!State::open(dir.path()).unwrap().start_handled(s.run_id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_start_is_recorded_expired_and_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let j = job("late", "echo ran");
        let posted = Utc::now() - TimeDelta::minutes(5);
        let mut m = first(&[&j]);
        let late = start(&j, posted, MIN_EXPIRY);
        let unknown = start(&job("elsewhere", "true"), Utc::now(), DEFAULT_EXPIRY);
        m.add_start(late.clone()).unwrap();
        m.add_start(unknown.clone()).unwrap();

        let outcome = agent.poll(&m, std::slice::from_ref(&j)).unwrap();
        assert!(outcome.applied);
        assert!(!agent.runner.is_running(j.id));
        let runs = agent.runs(late.run_id);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].outcome, Outcome::Expired);
        assert_eq!(runs[0].job_id, j.id);
        assert!(runs[0].message.contains("after it expired"), "{:?}", runs[0]);
        assert_eq!(agent.spooled().iter().filter(|e| e.msg_id == format!("run-{}-end", late.run_id)).count(), 1);
        let failed = agent.runs(unknown.run_id);
        assert_eq!(failed.iter().map(|r| r.outcome).collect::<Vec<_>>(), [Outcome::Failed]);
        assert!(failed[0].message.contains("is not on this target"), "{failed:?}");

        // Read again, later, by a restarted agent: still one record each, still not run.
        drop(agent);
        let agent = Agent::open(dir.path());
        let m2 = next(&m, &[&j]);
        agent.poll_at(&m2, &[], Utc::now() + TimeDelta::hours(1)).unwrap();
        assert_eq!(agent.runs(late.run_id).len(), 1);
        assert_eq!(agent.runs(unknown.run_id).len(), 1);
        assert!(!agent.runner.is_running(j.id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_start_saved_as_handled_is_not_run_after_a_crash_before_the_revision_was_saved() {
        let dir = tempfile::tempdir().unwrap();
        let j = job("once", "echo ran");
        let mut m = first(&[&j]);
        let s = start(&j, Utc::now(), DEFAULT_EXPIRY);
        m.add_start(s.clone()).unwrap();
        {
            // The agent wrote the job and saved the start as handled, then died.
            let before = Agent::open(dir.path());
            before.state.upsert_job(&j).unwrap();
            before.state.mark_handled(&[s.run_id], &[]).unwrap();
        }
        let after = Agent::open(dir.path());
        let outcome = after.poll(&m, &[]).unwrap();
        assert_eq!(outcome, ApplyOutcome { applied: true, changed: 0, failed: 0 }, "nothing fetched, nothing run");
        assert!(!after.runner.is_running(j.id));
        assert!(after.runs(s.run_id).is_empty());
        assert_eq!(after.state.desired(), Some(m.applied()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_acts_once_and_not_after_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let j = job("slow", "sleep 60");
        let mut m1 = first(&[&j]);
        let s = start(&j, Utc::now(), DEFAULT_EXPIRY);
        m1.add_start(s.clone()).unwrap();
        agent.poll(&m1, std::slice::from_ref(&j)).unwrap();
        assert!(agent.runner.is_running(j.id));

        // A stop read after its expiry is ignored, though the run began before it.
        let mut m2 = next(&m1, &[&j]);
        m2.add_stop(StopEntry::new(Uuid::now_v7(), j.id, j.spec.name.clone(), Utc::now(), MIN_EXPIRY).unwrap()).unwrap();
        agent.poll_at(&m2, &[], Utc::now() + TimeDelta::minutes(1)).unwrap();
        assert!(agent.runner.is_running(j.id));

        let mut m3 = next(&m2, &[&j]);
        let stop = StopEntry::new(Uuid::now_v7(), j.id, j.spec.name.clone(), Utc::now(), DEFAULT_EXPIRY).unwrap();
        m3.add_stop(stop.clone()).unwrap();
        agent.poll(&m3, &[]).unwrap();
        tokio::time::timeout(Duration::from_secs(20), agent.runner.shutdown(Duration::from_secs(60)))
            .await
            .expect("the stop ended the run");
        assert_eq!(agent.runs(s.run_id).pop().unwrap().outcome, Outcome::Canceled);
        assert!(State::open(dir.path()).unwrap().stop_handled(stop.id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poll_interval_clock_and_defection_come_from_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let (a, b) = (job("a", "true"), job("b", "true"));
        let mut m1 = first(&[&a, &b]);
        m1.poll_interval_secs = Some(30);
        m1.clock = Some(ClockRef { id: Uuid::from_u128(1), master_time: Utc::now() - TimeDelta::seconds(5) });
        agent.poll(&m1, &[a.clone(), b.clone()]).unwrap();
        let reopened = State::open(dir.path()).unwrap();
        assert_eq!(reopened.poll_interval_secs(), Some(30));
        let skew = reopened.clock_skew_ms().unwrap();
        assert!((5_000..60_000).contains(&skew), "{skew}");

        // The same clock reference in a later revision is not measured again.
        let mut m2 = next(&m1, &[&a, &b]);
        m2.poll_interval_secs = None;
        agent.poll_at(&m2, &[], Utc::now() + TimeDelta::hours(1)).unwrap();
        assert_eq!(agent.state.clock_skew_ms(), Some(skew));
        assert_eq!(agent.state.poll_interval_secs(), None, "back to the agent's own");

        let gone = m2.successor(DerivedState::new(Vec::new(), None, true), Utc::now());
        assert!(agent.poll(&gone, &[]).unwrap().applied);
        let reopened = State::open(dir.path()).unwrap();
        assert!(reopened.defected());
        assert_eq!(reopened.job_count(), 0);

        let back = gone.successor(DerivedState::new(vec![listed(&a)], None, false), Utc::now());
        agent.poll(&back, std::slice::from_ref(&a)).unwrap();
        let reopened = State::open(dir.path()).unwrap();
        assert!(!reopened.defected(), "an operator enlisted it again");
        assert_eq!(job_ids(&reopened), [a.id]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_manifest_is_refused_counted_and_answered_when_it_is_ours() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let a = job("a", "true");
        agent.poll(&first(&[&a]), std::slice::from_ref(&a)).unwrap();

        assert!(agent.applier().read(b"{not json").is_err());
        let mut elsewhere = first(&[]);
        elsewhere.target = TargetName::new("db01").unwrap();
        assert!(agent.applier().read(&msg::encode(&elsewhere)).is_err());
        let mut zero = next(&first(&[&a]), &[&a]);
        zero.poll_interval_secs = Some(0);
        let error = agent.applier().read(&msg::encode(&zero)).unwrap_err();
        assert_eq!(error, "manifest refused: poll interval 0");
        assert_eq!(agent.metrics.bad_so_far(Bad::Instruction), 3);

        // Only the one naming this target is answered; the jobs held stay.
        let records = agent.applied_records();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].applied, zero.applied());
        assert_eq!(records[1].refused.as_deref(), Some("manifest refused: poll interval 0"));
        assert_eq!(job_ids(&agent.state), [a.id]);
        assert_eq!(agent.state.desired().map(|d| d.revision), Some(Revision(1)));
    }

    #[test]
    fn an_agent_json_of_the_previous_design_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let old =
            r#"{"applied":["00000000-0000-0000-0000-000000000001"],"poll_interval_secs":30,"clock_skew_ms":12,"defected":false}"#;
        std::fs::write(dir.path().join("agent.json"), old).unwrap();
        let state = State::open(dir.path()).unwrap();
        assert_eq!(state.poll_interval_secs(), Some(30));
        assert_eq!(state.clock_skew_ms(), Some(12));
        assert_eq!(state.desired(), None, "nothing applied yet: the first poll applies everything");
        assert!(state.run_finished_here(Uuid::from_u128(1)));
    }
}
