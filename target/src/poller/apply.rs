//! Applying fetched instructions to the agent: everything a poll does between
//! fetching a batch and acking it, and none of it needs NATS.
//!
//! Each instruction is applied in order (a local file write, or a run started
//! with its marker on disk), then the batch's ids are saved as applied and its
//! outcomes spooled for the master. Only after that may the caller ack. A
//! crash anywhere before the ack means redelivery, and redelivery is harmless:
//! an id saved as applied is skipped, upserts and deletes are idempotent, and
//! a start whose run id is already known is not run again.
//!
//! Kept apart from the fetch and ack (in [`super`]) so that what an
//! instruction does to the agent's state can be tested on a directory alone.

use chrono::Utc;
use muster_shared::msg::{self, InstrOutcome, InstrRecord, Instruction, InstructionOp, Trigger};
use muster_shared::name::TargetName;
use muster_shared::subject::Subjects;
use muster_shared::PROTOCOL_VERSION;
use tokio::sync::Notify;

use super::{count, PollMetrics};
use crate::runner::{Runner, Started};
use crate::spool::{Entry, Spool};
use crate::state::State;

/// The parts of the agent that instructions change, borrowed for one batch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Applier<'a> {
    /// This target: an instruction naming another is refused.
    pub name: &'a TargetName,
    pub subjects: &'a Subjects,
    pub state: &'a State,
    pub runner: &'a Runner,
    /// Where the outcomes go, for the master's download list.
    pub spool: &'a Spool,
    /// Woken when a batch changed something, so the scheduler recomputes.
    pub jobs_changed: &'a Notify,
    pub metrics: &'a PollMetrics,
}

/// What one batch led to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct BatchOutcome {
    /// Instructions applied now (not the ones applied before).
    pub applied: u32,
    /// Instructions that failed; their outcomes say why.
    pub failed: u32,
    /// Positions in the batch of the messages to terminate, not ack: they
    /// cannot be read or name another target, so redelivery cannot help.
    pub terminate: Vec<usize>,
}

impl Applier<'_> {
    /// Applies a fetched batch, given as each message's subject and payload,
    /// in order; saves the applied ids and spools the outcomes. When this
    /// returns `Ok`, the batch may be acked.
    ///
    /// # Errors
    /// When the applied ids cannot be saved. The batch must not be acked then:
    /// it comes back, and what was applied is applied again.
    pub(super) fn apply_batch<'m>(
        &self,
        messages: impl IntoIterator<Item = (&'m str, &'m [u8])>,
    ) -> anyhow::Result<BatchOutcome> {
        let mut batch = BatchOutcome::default();
        let mut outcomes = Vec::new();
        let mut ids = Vec::new();
        for (position, (subject, payload)) in messages.into_iter().enumerate() {
            match msg::decode::<Instruction>(payload) {
                Err(e) => {
                    let total = count(&self.metrics.bad_instructions);
                    tracing::warn!(subject = %subject, error = %e, bad_instructions = total, "bad instruction terminated");
                    batch.terminate.push(position);
                }
                Ok(i) if &i.target != self.name => {
                    let total = count(&self.metrics.bad_instructions);
                    tracing::warn!(subject = %subject, body_target = %i.target, bad_instructions = total, "instruction for another target terminated");
                    outcomes.push(outcome(
                        &i,
                        Some(format!(
                            "instruction names target '{}', not '{}'",
                            i.target, self.name
                        )),
                    ));
                    batch.terminate.push(position);
                }
                Ok(i) if self.state.was_applied(i.id) => {
                    tracing::debug!(id = %i.id, "instruction already applied; acking again");
                }
                Ok(i) => {
                    let error = self.apply(&i).err();
                    if let Some(e) = &error {
                        tracing::warn!(id = %i.id, op = i.op.name(), error = %e, "instruction failed");
                        batch.failed += 1;
                    } else {
                        batch.applied += 1;
                    }
                    outcomes.push(outcome(&i, error));
                    ids.push(i.id);
                }
            }
        }
        if !ids.is_empty() {
            tokio::task::block_in_place(|| self.state.mark_applied(&ids))?;
            self.jobs_changed.notify_one();
        }
        if !outcomes.is_empty() {
            let record = InstrRecord {
                v: PROTOCOL_VERSION,
                target: self.name.clone(),
                outcomes,
            };
            let entry = Entry {
                subject: self.subjects.result_instr(self.name),
                msg_id: format!("instr-{}", record.outcomes[0].id),
                kind: "instr".into(),
                body: String::from_utf8(msg::encode(&record)).expect("JSON is UTF-8"),
            };
            if let Err(e) = tokio::task::block_in_place(|| self.spool.push(&entry)) {
                tracing::error!(error = %e, "instruction outcomes not recorded");
            }
        }
        Ok(batch)
    }

    /// Applies one instruction to local state.
    fn apply(&self, i: &Instruction) -> Result<(), String> {
        let io = |e: std::io::Error| format!("local state: {e}");
        match &i.op {
            InstructionOp::UpsertJob { job } => {
                job.spec
                    .validate()
                    .map_err(|e| format!("job refused: {e}"))?;
                tokio::task::block_in_place(|| self.state.upsert_job(job)).map_err(io)?;
            }
            InstructionOp::DeleteJob { job_id, .. } => {
                tokio::task::block_in_place(|| self.state.delete_job(*job_id)).map_err(io)?;
            }
            InstructionOp::DeleteAllJobs => {
                tokio::task::block_in_place(|| self.state.delete_all_jobs()).map_err(io)?
            }
            InstructionOp::StartJob {
                job_id,
                job,
                run_id,
            } => {
                if self.runner.knows_run(*run_id) {
                    return Ok(());
                }
                let def = self
                    .state
                    .job(*job_id)
                    .ok_or_else(|| format!("job '{job}' ({job_id}) is not on this target"))?;
                match self.runner.start(def, Trigger::Manual, *run_id) {
                    Started::Running(_) | Started::Skipped(_) => {}
                    Started::Failed(_) => {
                        return Err("the run could not be started (see the agent log)".into())
                    }
                }
            }
            InstructionOp::StopJob { job, .. } => {
                self.runner.stop_started_before(job, i.posted_at);
            }
            InstructionOp::SetPollInterval { secs } => {
                if *secs == 0 {
                    return Err("poll interval 0 refused".into());
                }
                tokio::task::block_in_place(|| self.state.set_poll_interval_secs(*secs))
                    .map_err(io)?;
            }
            InstructionOp::SyncTime { master_time } => {
                let skew = (Utc::now() - *master_time).num_milliseconds();
                tokio::task::block_in_place(|| self.state.set_clock_skew_ms(skew)).map_err(io)?;
            }
            InstructionOp::Defect => {
                tokio::task::block_in_place(|| {
                    self.state.delete_all_jobs()?;
                    self.state.set_defected(true)
                })
                .map_err(io)?;
                tracing::warn!("defected: jobs from the master deleted");
            }
        }
        Ok(())
    }
}

fn outcome(i: &Instruction, error: Option<String>) -> InstrOutcome {
    InstrOutcome {
        id: i.id,
        op: i.op.kind(),
        applied_at: Utc::now(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use chrono::TimeDelta;
    use futures::FutureExt as _;
    use muster_shared::job::{JobDef, JobSpec};
    use muster_shared::msg::{Outcome, RunRecord};
    use uuid::Uuid;

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
        metrics: PollMetrics,
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
            );
            Agent {
                name,
                subjects: Subjects::default(),
                state,
                spool,
                runner,
                jobs_changed: Notify::new(),
                metrics: PollMetrics::default(),
            }
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

        /// Applies the bodies as one fetched batch.
        fn apply(&self, bodies: &[Vec<u8>]) -> BatchOutcome {
            let subject = format!("muster.target.{TARGET}.assign");
            self.applier()
                .apply_batch(bodies.iter().map(|b| (subject.as_str(), &b[..])))
                .unwrap()
        }

        /// Applies the instructions as one fetched batch.
        fn apply_all(&self, instructions: &[&Instruction]) -> BatchOutcome {
            self.apply(&instructions.iter().map(msg::encode).collect::<Vec<_>>())
        }

        /// Whether the batch woke the scheduler (and takes the wake-up).
        fn woke_scheduler(&self) -> bool {
            self.jobs_changed.notified().now_or_never().is_some()
        }

        /// What the spool holds for the master, oldest first.
        fn spooled(&self) -> Vec<Entry> {
            let mut files: Vec<_> = std::fs::read_dir(self.state.spool_dir())
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            files
                .iter()
                .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
                .collect()
        }

        /// The instruction outcomes spooled, oldest first.
        fn outcomes(&self) -> Vec<InstrOutcome> {
            let records = self.spooled().into_iter().filter(|e| e.kind == "instr");
            records
                .flat_map(|e| {
                    msg::decode::<InstrRecord>(e.body.as_bytes())
                        .unwrap()
                        .outcomes
                })
                .collect()
        }

        /// The run records spooled for `run_id`, oldest first.
        fn runs(&self, run_id: Uuid) -> Vec<RunRecord> {
            let records = self
                .spooled()
                .into_iter()
                .filter(|e| e.kind.starts_with("run-"));
            records
                .map(|e| msg::decode::<RunRecord>(e.body.as_bytes()).unwrap())
                .filter(|r| r.run_id == run_id)
                .collect()
        }
    }

    fn instruction(op: InstructionOp) -> Instruction {
        Instruction {
            v: PROTOCOL_VERSION,
            id: Uuid::now_v7(),
            target: TargetName::new(TARGET).unwrap(),
            posted_at: Utc::now(),
            op,
        }
    }

    fn job(name: &str, command: &str) -> JobDef {
        let spec = JobSpec::from_json(&format!(
            r#"{{"name":"{name}","steps":[{{"command":"{command}"}}]}}"#
        ))
        .unwrap();
        JobDef {
            id: Uuid::now_v7(),
            revision: 1,
            spec,
        }
    }

    fn upsert(job: &JobDef) -> Instruction {
        instruction(InstructionOp::UpsertJob { job: job.clone() })
    }

    fn delete(job: &JobDef) -> Instruction {
        instruction(InstructionOp::DeleteJob {
            job_id: job.id,
            job: job.spec.name.clone(),
        })
    }

    fn start(job: &JobDef, run_id: Uuid) -> Instruction {
        instruction(InstructionOp::StartJob {
            job_id: job.id,
            job: job.spec.name.clone(),
            run_id,
        })
    }

    fn stop(job: &JobDef, posted_at: chrono::DateTime<Utc>) -> Instruction {
        Instruction {
            posted_at,
            ..instruction(InstructionOp::StopJob {
                job_id: job.id,
                job: job.spec.name.clone(),
            })
        }
    }

    fn applied(n: u32) -> BatchOutcome {
        BatchOutcome {
            applied: n,
            ..BatchOutcome::default()
        }
    }

    fn job_ids(state: &State) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = state.jobs().iter().map(|j| j.id).collect();
        ids.sort();
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upserts_and_deletes_change_the_jobs_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let (a, b) = (job("a", "true"), job("b", "true"));
        let mut a2 = a.clone();
        a2.revision = 2;
        a2.spec.description = "second revision".into();

        assert_eq!(
            agent.apply_all(&[&upsert(&a), &upsert(&b), &upsert(&a2)]),
            applied(3)
        );
        assert!(agent.woke_scheduler());
        // An upsert older than what is here is applied, and changes nothing.
        assert_eq!(agent.apply_all(&[&upsert(&a)]), applied(1));
        assert_eq!(agent.state.job(a.id).unwrap().revision, 2);
        let reopened = State::open(dir.path()).unwrap();
        assert_eq!(job_ids(&reopened), job_ids(&agent.state));
        assert_eq!(
            reopened.job(a.id).unwrap().spec.description,
            "second revision"
        );

        // Deleting a job that is not here is no error.
        assert_eq!(agent.apply_all(&[&delete(&b), &delete(&b)]), applied(2));
        assert_eq!(job_ids(&agent.state), [a.id]);
        assert_eq!(job_ids(&State::open(dir.path()).unwrap()), [a.id]);

        assert_eq!(
            agent.apply_all(&[&instruction(InstructionOp::DeleteAllJobs)]),
            applied(1)
        );
        assert_eq!(agent.state.job_count(), 0);
        assert_eq!(State::open(dir.path()).unwrap().job_count(), 0);

        let outcomes = agent.outcomes();
        assert_eq!(outcomes.len(), 7);
        assert!(outcomes.iter().all(|o| o.error.is_none()), "{outcomes:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invalid_job_is_refused_and_its_instruction_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let mut bad = job("bad", "true");
        bad.spec.steps.clear();
        let i = upsert(&bad);

        assert_eq!(
            agent.apply_all(&[&i]),
            BatchOutcome {
                failed: 1,
                ..BatchOutcome::default()
            }
        );
        assert_eq!(agent.state.job_count(), 0);
        let outcome = &agent.outcomes()[0];
        assert_eq!(outcome.id, i.id);
        assert!(
            outcome
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("job refused: ")),
            "{outcome:?}"
        );
        // Refused for good: redelivered, it is not tried again.
        assert!(State::open(dir.path()).unwrap().was_applied(i.id));
        assert_eq!(agent.apply_all(&[&i]), BatchOutcome::default());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_runs_the_job_once_under_the_masters_run_id() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let j = job("hello", "echo hi");
        let run_id = Uuid::now_v7();
        let unknown = job("elsewhere", "true");

        let batch = agent.apply_all(&[
            &upsert(&j),
            &start(&j, run_id),
            &start(&unknown, Uuid::now_v7()),
        ]);
        assert_eq!(
            batch,
            BatchOutcome {
                applied: 2,
                failed: 1,
                terminate: vec![]
            }
        );
        let error = agent.outcomes()[2].error.clone().unwrap_or_default();
        assert!(error.contains("is not on this target"), "{error}");
        agent.runner.shutdown(Duration::from_secs(30)).await;
        let runs = agent.runs(run_id);
        assert_eq!(
            runs.iter().map(|r| r.outcome).collect::<Vec<_>>(),
            [Outcome::Running, Outcome::Succeeded]
        );
        assert_eq!(runs[1].trigger, Trigger::Manual);
        assert_eq!(runs[1].steps[0].output, "hi\n");

        // Another instruction naming the same run (a repeated post) does not run it again.
        assert_eq!(agent.apply_all(&[&start(&j, run_id)]), applied(1));
        assert!(!agent.runner.is_running(j.id));
        assert_eq!(agent.runs(run_id).len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_ends_a_run_that_began_before_it_was_posted_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let j = job("slow", "sleep 0.5; echo done");

        // A stop posted long before the run began (read late) leaves it alone.
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(
            agent.apply_all(&[&upsert(&j), &start(&j, first)]),
            applied(2)
        );
        assert!(agent.runner.is_running(j.id));
        assert_eq!(
            agent.apply_all(&[&stop(&j, Utc::now() - TimeDelta::hours(1))]),
            applied(1)
        );
        agent.runner.shutdown(Duration::from_secs(30)).await;
        assert_eq!(
            agent.runs(first).last().unwrap().outcome,
            Outcome::Succeeded
        );

        let j = job("slower", "sleep 60");
        assert_eq!(
            agent.apply_all(&[&upsert(&j), &start(&j, second)]),
            applied(2)
        );
        assert_eq!(agent.apply_all(&[&stop(&j, Utc::now())]), applied(1));
        // Shutdown would wait a minute for the run: it ends sooner only because it was stopped.
        tokio::time::timeout(
            Duration::from_secs(20),
            agent.runner.shutdown(Duration::from_secs(60)),
        )
        .await
        .expect("the stop ended the run");
        let last = agent.runs(second).pop().unwrap();
        assert_eq!(last.outcome, Outcome::Canceled, "{last:?}");
        assert!(last.message.starts_with("stopped in step"), "{last:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn poll_interval_and_clock_skew_are_saved() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let master_time = Utc::now() - TimeDelta::seconds(5);

        let batch = agent.apply_all(&[
            &instruction(InstructionOp::SetPollInterval { secs: 30 }),
            &instruction(InstructionOp::SetPollInterval { secs: 0 }),
            &instruction(InstructionOp::SyncTime { master_time }),
        ]);
        assert_eq!(
            batch,
            BatchOutcome {
                applied: 2,
                failed: 1,
                terminate: vec![]
            }
        );
        assert_eq!(
            agent.outcomes()[1].error.as_deref(),
            Some("poll interval 0 refused")
        );
        let reopened = State::open(dir.path()).unwrap();
        assert_eq!(reopened.poll_interval_secs(), Some(30));
        let skew = reopened.clock_skew_ms().unwrap();
        assert!((5_000..60_000).contains(&skew), "{skew}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn defect_deletes_every_job_and_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let batch = agent.apply_all(&[
            &upsert(&job("a", "true")),
            &upsert(&job("b", "true")),
            &instruction(InstructionOp::Defect),
        ]);
        assert_eq!(batch, applied(3));
        assert_eq!(agent.state.job_count(), 0);
        let reopened = State::open(dir.path()).unwrap();
        assert!(reopened.defected());
        assert_eq!(reopened.job_count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreadable_and_misaddressed_instructions_are_terminated_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(dir.path());
        let mut elsewhere = upsert(&job("a", "true"));
        elsewhere.target = TargetName::new("db01").unwrap();
        let good = upsert(&job("b", "true"));

        let batch = agent.apply(&[
            b"{not json".to_vec(),
            msg::encode(&elsewhere),
            msg::encode(&good),
        ]);
        assert_eq!(
            batch,
            BatchOutcome {
                applied: 1,
                failed: 0,
                terminate: vec![0, 1]
            }
        );
        assert_eq!(
            agent
                .metrics
                .bad_instructions
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert_eq!(
            agent
                .state
                .jobs()
                .iter()
                .map(|j| j.spec.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert!(!agent.state.was_applied(elsewhere.id));

        // One record for the batch, named after its first outcome.
        let spooled = agent.spooled();
        assert_eq!(spooled.len(), 1);
        assert_eq!(spooled[0].msg_id, format!("instr-{}", elsewhere.id));
        assert_eq!(spooled[0].subject, agent.subjects.result_instr(&agent.name));
        let outcomes = agent.outcomes();
        assert_eq!(
            outcomes.iter().map(|o| o.id).collect::<Vec<_>>(),
            [elsewhere.id, good.id]
        );
        assert_eq!(
            outcomes[0].error.as_deref(),
            Some("instruction names target 'db01', not 'web01'")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_redelivered_after_a_crash_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (keep, gone) = (job("keep", "echo ran"), job("gone", "true"));
        let run_id = Uuid::now_v7();
        let batch = [
            upsert(&keep),
            upsert(&gone),
            delete(&gone),
            start(&keep, run_id),
            instruction(InstructionOp::SetPollInterval { secs: 30 }),
        ];
        let bodies: Vec<Vec<u8>> = batch.iter().map(msg::encode).collect();

        let before = Agent::open(dir.path());
        assert_eq!(before.apply(&bodies), applied(5));
        before.runner.shutdown(Duration::from_secs(30)).await;
        let spooled = before.spooled();
        drop(before);

        // The agent died before its ack reached the server: the restarted
        // agent gets the same batch again.
        let after = Agent::open(dir.path());
        assert_eq!(after.apply(&bodies), BatchOutcome::default());
        assert!(!after.woke_scheduler());
        assert!(!after.runner.is_running(keep.id));
        assert_eq!(
            after.spooled(),
            spooled,
            "nothing new recorded: no outcome, no second run"
        );
        assert_eq!(after.runs(run_id).len(), 2);
        assert_eq!(job_ids(&after.state), [keep.id]);
        assert_eq!(after.state.poll_interval_secs(), Some(30));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_start_redelivered_after_dying_mid_run_does_not_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let j = job("long", "sleep 60");
        let run_id = Uuid::now_v7();
        let i = start(&j, run_id);
        {
            // The agent applied the start (the run's marker is on disk) and
            // died before the batch's ids were saved.
            let before = Agent::open(dir.path());
            assert_eq!(before.apply_all(&[&upsert(&j)]), applied(1));
            before
                .state
                .run_started(&RunRecord {
                    v: PROTOCOL_VERSION,
                    run_id,
                    job_id: j.id,
                    job: j.spec.name.clone(),
                    target: before.name.clone(),
                    trigger: Trigger::Manual,
                    outcome: Outcome::Running,
                    started_at: Utc::now(),
                    finished_at: None,
                    message: String::new(),
                    steps: Vec::new(),
                })
                .unwrap();
        }

        let after = Agent::open(dir.path());
        assert_eq!(after.runner.report_interrupted().unwrap(), 1);
        assert_eq!(after.apply_all(&[&i]), applied(1));
        assert!(
            !after.runner.is_running(j.id),
            "the run id is known: not run again"
        );
        let runs = after.runs(run_id);
        assert_eq!(
            runs.iter().map(|r| r.outcome).collect::<Vec<_>>(),
            [Outcome::Interrupted]
        );
    }
}
