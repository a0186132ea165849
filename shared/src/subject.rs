//! Subject builders.
//!
//! Every subject Muster uses is built here from a validated prefix and
//! validated names, so no caller can produce a subject with a stray wildcard
//! or an extra token. The layout (prefix `muster`):
//!
//! | subject | what |
//! | --- | --- |
//! | `muster.target.<t>.state` | `<t>`'s manifest (stream `MUSTER_DESIRED`, read by Direct Get) |
//! | `muster.target.<t>.job.<job-id>` | `<t>`'s copy of one assigned job (stream `MUSTER_DESIRED`) |
//! | `muster.target.<t>.assign` | previous design: instructions for `<t>` (stream `MUSTER_ASSIGN`) |
//! | `muster.target.<t>.control` | core request/reply: force poll, stop (no stream) |
//! | `muster.result.<t>.run.<job-id>` | run records (stream `MUSTER_RESULTS`) |
//! | `muster.result.<t>.applied` | manifest revisions applied or refused (stream `MUSTER_RESULTS`) |
//! | `muster.result.<t>.instr` | previous design: instructions applied or failed (stream `MUSTER_RESULTS`) |
//! | `muster.poll.<t>` | the latest poll report (stream `MUSTER_POLLS`) |
//! | `muster.output.<t>.<run-id>` | a run's live output, in chunks (stream `MUSTER_OUTPUT`, short retention) |
//! | `muster.kept.<t>.<run-id>.<n>` | step record `n`'s whole output, kept by choice (stream `MUSTER_KEPT`, the history's retention) |
//! | `muster.event.<kind>.<target>` | events the master derives: a job failed or recovered, a target blocked (stream `MUSTER_EVENTS`) |
//! | `muster.api.read.<op>` | the master's API, operations that only read (service `muster`; a viewer may call them) |
//! | `muster.api.admin.<op>` | the master's API, operations that change state (only an admin may call them) |
//! | `muster.api.agent.<t>.<op>` | the API a target may call, carrying its own name |
//!
//! Identity is the subject: everything a target publishes or reads carries its
//! name, so server permissions decide who is who. A target reads its desired
//! state through `$JS.API.DIRECT.GET.<stream>.<subject>` ([`Subjects::direct_get`]),
//! the form of Direct Get whose subject is in the API subject, so a
//! permission can confine it; the body form (`{"last_by_subj": ...}`) cannot
//! be confined and no target is granted it.

use uuid::Uuid;

use crate::api::{Access, Op};
use crate::name::{NameError, TargetName};

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "muster";

/// JetStream's API prefix (no domain).
pub const JS_API_PREFIX: &str = "$JS.API";

/// Builds every subject, stream, bucket and service name of one installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self { prefix: DEFAULT_PREFIX.to_owned() }
    }
}

impl Subjects {
    /// An installation with its own prefix, so several can share one account.
    ///
    /// # Errors
    /// The prefix is validated like a target name: one subject token.
    pub fn new(prefix: &str) -> Result<Self, NameError> {
        // Reuse the name rules: one token of letters, digits, '-', '_'.
        TargetName::new(prefix).map_err(|e| match e {
            NameError::Empty { .. } => NameError::Empty { kind: "prefix" },
            NameError::TooLong { name, len, .. } => NameError::TooLong { kind: "prefix", name, len },
            NameError::BadChar { name, what, .. } => NameError::BadChar { kind: "prefix", name, what },
        })?;
        Ok(Self { prefix: prefix.to_owned() })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // ---- desired state (stream MUSTER_DESIRED) -----------------------------

    /// A target's manifest.
    pub fn state(&self, t: &TargetName) -> String {
        format!("{}.target.{t}.state", self.prefix)
    }

    /// Every target's manifest: a stream subject, and the filter of the
    /// master's headers-only reconcile read.
    pub fn state_all(&self) -> String {
        format!("{}.target.*.state", self.prefix)
    }

    /// A target's copy of one job.
    pub fn job_doc(&self, t: &TargetName, job_id: Uuid) -> String {
        format!("{}.target.{t}.job.{job_id}", self.prefix)
    }

    /// Every job document of one target (a forced defection purges them).
    pub fn job_docs_of(&self, t: &TargetName) -> String {
        format!("{}.target.{t}.job.*", self.prefix)
    }

    /// One job's documents on every target (deleting a job purges them in
    /// one request).
    pub fn job_doc_everywhere(&self, job_id: Uuid) -> String {
        format!("{}.target.*.job.{job_id}", self.prefix)
    }

    /// Every job document: a stream subject.
    pub fn job_docs_all(&self) -> String {
        format!("{}.target.*.job.*", self.prefix)
    }

    /// The subjects of `MUSTER_DESIRED`. They must not overlap another
    /// stream's, nor the control subject (a stream stores every message
    /// published on its subjects).
    pub fn desired_subjects(&self) -> Vec<String> {
        vec![self.state_all(), self.job_docs_all()]
    }

    /// The Direct Get API subject that reads the last message on `subject`,
    /// e.g. `$JS.API.DIRECT.GET.MUSTER_DESIRED.muster.target.web01.state`
    /// (sent with an empty body).
    pub fn direct_get(stream: &str, subject: &str) -> String {
        format!("{JS_API_PREFIX}.DIRECT.GET.{stream}.{subject}")
    }

    /// A target reads its manifest here.
    pub fn direct_get_state(&self, t: &TargetName) -> String {
        Self::direct_get(&self.desired_stream(), &self.state(t))
    }

    /// A target reads one of its job documents here.
    pub fn direct_get_job_doc(&self, t: &TargetName, job_id: Uuid) -> String {
        Self::direct_get(&self.desired_stream(), &self.job_doc(t, job_id))
    }

    /// Every job-document read of one target (a permission pattern).
    pub fn direct_get_job_docs(&self, t: &TargetName) -> String {
        Self::direct_get(&self.desired_stream(), &self.job_docs_of(t))
    }

    /// Every target's manifest reads (an export of the Muster account).
    pub fn direct_get_state_all(&self) -> String {
        Self::direct_get(&self.desired_stream(), &self.state_all())
    }

    /// Every target's job-document reads (an export of the Muster account).
    pub fn direct_get_job_docs_all(&self) -> String {
        Self::direct_get(&self.desired_stream(), &self.job_docs_all())
    }

    // ---- per-target subjects -------------------------------------------

    /// Previous design: a target's instruction queue on `MUSTER_ASSIGN`.
    pub fn assign(&self, t: &TargetName) -> String {
        format!("{}.target.{t}.assign", self.prefix)
    }

    /// Previous design: all targets' assign subjects, the `MUSTER_ASSIGN`
    /// stream's subject.
    pub fn assign_all(&self) -> String {
        format!("{}.target.*.assign", self.prefix)
    }

    pub fn control(&self, t: &TargetName) -> String {
        format!("{}.target.{t}.control", self.prefix)
    }

    pub fn result_run(&self, t: &TargetName, job_id: Uuid) -> String {
        format!("{}.result.{t}.run.{job_id}", self.prefix)
    }

    /// Previous design: instruction outcomes.
    pub fn result_instr(&self, t: &TargetName) -> String {
        format!("{}.result.{t}.instr", self.prefix)
    }

    /// Manifest revisions a target applied or refused (`desired::AppliedRecord`).
    pub fn result_applied(&self, t: &TargetName) -> String {
        format!("{}.result.{t}.applied", self.prefix)
    }

    /// Filter for applied records, by target (`None` = any).
    pub fn applied_filter(&self, t: Option<&TargetName>) -> String {
        let t = t.map_or_else(|| "*".to_owned(), ToString::to_string);
        format!("{}.result.{t}.applied", self.prefix)
    }

    /// Everything a target publishes to `MUSTER_RESULTS` (a permission).
    pub fn results_of(&self, t: &TargetName) -> String {
        format!("{}.result.{t}.>", self.prefix)
    }

    /// Filter for run records, by target and/or job (`None` = any).
    pub fn runs_filter(&self, t: Option<&TargetName>, job_id: Option<Uuid>) -> String {
        let t = t.map_or_else(|| "*".to_owned(), ToString::to_string);
        let j = job_id.map_or_else(|| "*".to_owned(), |j| j.to_string());
        format!("{}.result.{t}.run.{j}", self.prefix)
    }

    /// Previous design: filter for instruction records, by target (`None` = any).
    pub fn instr_filter(&self, t: Option<&TargetName>) -> String {
        let t = t.map_or_else(|| "*".to_owned(), ToString::to_string);
        format!("{}.result.{t}.instr", self.prefix)
    }

    /// Every target's results, one wildcard per token (an export of the
    /// Muster account: `<prefix>.result.<t>.>` is a subset of it).
    pub fn results_of_any(&self) -> String {
        format!("{}.result.*.>", self.prefix)
    }

    pub fn results_all(&self) -> String {
        format!("{}.result.>", self.prefix)
    }

    pub fn poll(&self, t: &TargetName) -> String {
        format!("{}.poll.{t}", self.prefix)
    }

    pub fn poll_all(&self) -> String {
        format!("{}.poll.*", self.prefix)
    }

    // ---- kept output (stream MUSTER_KEPT) -----------------------------------

    /// Step record `n`'s whole output ([`crate::kept`]).
    pub fn kept(&self, t: &TargetName, run_id: Uuid, n: usize) -> String {
        format!("{}.kept.{t}.{run_id}.{n}", self.prefix)
    }

    /// Everything one target keeps (its permission).
    pub fn kept_of(&self, t: &TargetName) -> String {
        format!("{}.kept.{t}.>", self.prefix)
    }

    /// One run's kept output, of one step record or all (a filter).
    pub fn kept_of_run(&self, run_id: Uuid, n: Option<usize>) -> String {
        let n = n.map_or_else(|| "*".to_owned(), |n| n.to_string());
        format!("{}.kept.*.{run_id}.{n}", self.prefix)
    }

    /// Every target's kept output, one wildcard per token: the stream's
    /// subject, an export of the Muster account.
    pub fn kept_all(&self) -> String {
        format!("{}.kept.*.>", self.prefix)
    }

    /// Whole step outputs kept by choice.
    pub fn kept_stream(&self) -> String {
        format!("{}_KEPT", self.upper())
    }

    // ---- live output (stream MUSTER_OUTPUT) ---------------------------------

    /// One run's live output chunks ([`crate::output::OutputChunk`]).
    pub fn output(&self, t: &TargetName, run_id: Uuid) -> String {
        format!("{}.output.{t}.{run_id}", self.prefix)
    }

    /// Every run's output of one target (its permission).
    pub fn output_of(&self, t: &TargetName) -> String {
        format!("{}.output.{t}.*", self.prefix)
    }

    /// One run's output on whichever target ran it (a filter: `run logs`
    /// knows the run id before the target).
    pub fn output_of_run(&self, run_id: Uuid) -> String {
        format!("{}.output.*.{run_id}", self.prefix)
    }

    /// Every run's output: the stream's subject, an export of the Muster
    /// account.
    pub fn output_all(&self) -> String {
        format!("{}.output.*.*", self.prefix)
    }

    // ---- events (stream MUSTER_EVENTS) ---------------------------------------

    /// One event ([`crate::event::Event`]), published by the master only.
    pub fn event(&self, kind: crate::event::EventKind, t: &TargetName) -> String {
        format!("{}.event.{kind}.{t}", self.prefix)
    }

    /// Every event: the stream's subject.
    pub fn events_all(&self) -> String {
        format!("{}.event.>", self.prefix)
    }

    /// The target name carried by a subject built here, if any (token 2).
    pub fn target_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let mut tokens = rest.split('.');
        match tokens.next()? {
            "target" | "result" | "poll" | "output" | "kept" => tokens.next(),
            "api" => match tokens.next()? {
                "agent" => tokens.next(),
                _ => None,
            },
            _ => None,
        }
    }

    // ---- API -------------------------------------------------------------

    /// The API subject of an operation, under the token of who may call it
    /// ([`Op::access`]): `muster.api.read.target.list`,
    /// `muster.api.admin.target.enlist`. One permission line
    /// ([`Subjects::api_all`]) then separates a viewer from an admin.
    pub fn api(&self, op: Op) -> String {
        format!("{}.api.{}.{}", self.prefix, op.access().token(), op.subject())
    }

    /// Every operation of one access level: `muster.api.read.>`.
    pub fn api_all(&self, access: Access) -> String {
        format!("{}.api.{}.>", self.prefix, access.token())
    }

    /// The Service API's ping of this installation's service, which every
    /// master answers (`musterctl status`, `ping`).
    pub fn service_ping(&self) -> String {
        format!("$SRV.PING.{}", self.service_name())
    }

    /// The API a target agent may call about itself, e.g.
    /// `muster.api.agent.web01.enlist`.
    pub fn agent_api(&self, t: &TargetName, op: &str) -> String {
        format!("{}.api.agent.{t}.{op}", self.prefix)
    }

    /// Subject pattern the master serves for an agent operation.
    pub fn agent_api_pattern(&self, op: &str) -> String {
        format!("{}.api.agent.*.{op}", self.prefix)
    }

    /// A target's own reply-subject prefix (`_INBOX_<t>`), so its permissions
    /// need not include `_INBOX.>`, where it could read every reply.
    pub fn inbox_prefix(t: &TargetName) -> String {
        format!("_INBOX_{t}")
    }

    // ---- streams, buckets, service ----------------------------------------

    fn upper(&self) -> String {
        self.prefix.to_uppercase().replace('-', "_")
    }

    /// Previous design: the instruction queue, one consumer per target.
    pub fn assign_stream(&self) -> String {
        format!("{}_ASSIGN", self.upper())
    }

    /// Every target's desired state, one message per subject.
    pub fn desired_stream(&self) -> String {
        format!("{}_DESIRED", self.upper())
    }

    pub fn results_stream(&self) -> String {
        format!("{}_RESULTS", self.upper())
    }

    pub fn polls_stream(&self) -> String {
        format!("{}_POLLS", self.upper())
    }

    /// Events ([`crate::event`]).
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper())
    }

    /// Live output, kept briefly ([`crate::output`]).
    pub fn output_stream(&self) -> String {
        format!("{}_OUTPUT", self.upper())
    }

    pub fn bucket(&self, b: Bucket) -> String {
        format!("{}-{}", self.prefix, b.suffix())
    }

    /// The stream behind a bucket (`KV_muster-runs`), for a Direct Get.
    pub fn bucket_stream(&self, b: Bucket) -> String {
        format!("KV_{}", self.bucket(b))
    }

    /// The stream subject of one key of a bucket (`$KV.muster-runs.<key>`).
    pub fn bucket_key(&self, b: Bucket, key: &str) -> String {
        format!("$KV.{}.{key}", self.bucket(b))
    }

    /// The NATS service name (`nats micro ls`).
    pub fn service_name(&self) -> String {
        self.prefix.clone()
    }
}

/// The master's KV buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Enlisted targets, by name.
    Targets,
    /// Job definitions and their assignments, by job name.
    Jobs,
    /// Target groups, by group name.
    Groups,
    /// Last outcome per job and target, key `<job-id>.<target>`.
    JobStatus,
    /// The download list: every posted change, key `<target>.<row-id>`.
    Instructions,
    /// Where each run's record is in `MUSTER_RESULTS`, key `<run-id>`, so
    /// `run show` reads one record instead of the stream (written by ingest,
    /// aged out with history).
    Runs,
}

impl Bucket {
    pub const ALL: [Bucket; 6] =
        [Bucket::Targets, Bucket::Jobs, Bucket::Groups, Bucket::JobStatus, Bucket::Instructions, Bucket::Runs];

    fn suffix(self) -> &'static str {
        match self {
            Bucket::Targets => "targets",
            Bucket::Jobs => "jobs",
            Bucket::Groups => "groups",
            Bucket::JobStatus => "jobstatus",
            Bucket::Instructions => "instructions",
            Bucket::Runs => "runs",
        }
    }

    /// The [`Bucket::JobStatus`] key of a job on a target.
    pub fn jobstatus_key(job_id: Uuid, t: &TargetName) -> String {
        format!("{job_id}.{t}")
    }

    /// Every [`Bucket::JobStatus`] key of one job, to watch.
    pub fn jobstatus_keys_of(job_id: Uuid) -> String {
        format!("{job_id}.*")
    }
}

/// NATS subject matching: `*` is one token, `>` the rest.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let s = Subjects::default();
        let t = TargetName::new("web01").unwrap();
        assert_eq!(s.assign(&t), "muster.target.web01.assign");
        assert_eq!(s.control(&t), "muster.target.web01.control");
        assert_eq!(s.poll(&t), "muster.poll.web01");
        assert_eq!(s.result_instr(&t), "muster.result.web01.instr");
        assert_eq!(s.assign_stream(), "MUSTER_ASSIGN");
        assert_eq!(s.bucket(Bucket::JobStatus), "muster-jobstatus");
        let job = Uuid::nil();
        assert_eq!(Bucket::jobstatus_key(job, &t), format!("{job}.web01"));
        assert_eq!(Bucket::jobstatus_keys_of(job), format!("{job}.*"));
        assert_eq!(s.agent_api(&t, "enlist"), "muster.api.agent.web01.enlist");
        let run = Uuid::nil();
        assert_eq!(s.output(&t, run), format!("muster.output.web01.{run}"));
        assert!(matches(&s.output_of(&t), &s.output(&t, run)));
        assert!(matches(&s.output_of_run(run), &s.output(&t, run)));
        assert!(matches(&s.output_all(), &s.output(&t, run)));
        assert_eq!(s.output_stream(), "MUSTER_OUTPUT");
        assert_eq!(s.kept(&t, run, 2), format!("muster.kept.web01.{run}.2"));
        assert!(matches(&s.kept_of(&t), &s.kept(&t, run, 2)));
        assert!(matches(&s.kept_of_run(run, Some(2)), &s.kept(&t, run, 2)));
        assert!(matches(&s.kept_of_run(run, None), &s.kept(&t, run, 2)));
        assert!(matches(&s.kept_all(), &s.kept(&t, run, 2)));
        assert_eq!(s.target_of(&s.kept(&t, run, 0)), Some("web01"));
        for subj in [s.assign(&t), s.poll(&t), s.result_instr(&t), s.agent_api(&t, "enlist"), s.output(&t, run)] {
            assert_eq!(s.target_of(&subj), Some("web01"), "{subj}");
        }
        assert_eq!(s.target_of("muster.api.admin.job.create"), None);
        assert_eq!(s.api(Op::JobCreate), "muster.api.admin.job.create");
        assert_eq!(s.api(Op::TargetList), "muster.api.read.target.list");
        assert_eq!(s.api_all(Access::Read), "muster.api.read.>");
        // One line separates the roles: every operation is under exactly its own.
        for &op in Op::ALL {
            let (read, admin) = (matches(&s.api_all(Access::Read), &s.api(op)), matches(&s.api_all(Access::Admin), &s.api(op)));
            assert_eq!((read, admin), (op.access() == Access::Read, op.access() == Access::Admin), "{op:?}");
            assert!(!matches(&s.agent_api_pattern(">"), &s.api(op)), "{op:?}");
        }
    }

    #[test]
    fn desired_state_layout() {
        let s = Subjects::default();
        let t = TargetName::new("web01").unwrap();
        let job = Uuid::from_u128(1);
        assert_eq!(s.desired_stream(), "MUSTER_DESIRED");
        assert_eq!(s.state(&t), "muster.target.web01.state");
        assert_eq!(s.job_doc(&t, job), "muster.target.web01.job.00000000-0000-0000-0000-000000000001");
        assert_eq!(s.direct_get_state(&t), "$JS.API.DIRECT.GET.MUSTER_DESIRED.muster.target.web01.state");
        assert_eq!(
            s.direct_get_job_doc(&t, job),
            "$JS.API.DIRECT.GET.MUSTER_DESIRED.muster.target.web01.job.00000000-0000-0000-0000-000000000001"
        );
        assert_eq!(s.direct_get_job_docs(&t), "$JS.API.DIRECT.GET.MUSTER_DESIRED.muster.target.web01.job.*");
        assert_eq!(s.job_doc_everywhere(job), "muster.target.*.job.00000000-0000-0000-0000-000000000001");
        assert_eq!(s.result_applied(&t), "muster.result.web01.applied");
        assert_eq!(s.bucket(Bucket::Runs), "muster-runs");
        for subj in [s.state(&t), s.job_doc(&t, job), s.result_applied(&t)] {
            assert_eq!(s.target_of(&subj), Some("web01"), "{subj}");
        }
        assert_eq!(
            Subjects::new("my-co").unwrap().direct_get_state(&t),
            "$JS.API.DIRECT.GET.MY_CO_DESIRED.my-co.target.web01.state"
        );
    }

    #[test]
    fn desired_subjects_overlap_no_other_stream_nor_control() {
        let s = Subjects::default();
        let t = TargetName::new("web01").unwrap();
        let others = [s.assign(&t), s.control(&t), s.poll(&t), s.result_applied(&t), s.result_run(&t, Uuid::nil())];
        for pattern in s.desired_subjects() {
            for other in &others {
                assert!(!matches(&pattern, other), "{pattern} would store {other}");
            }
        }
        assert!(matches(&s.state_all(), &s.state(&t)));
        assert!(matches(&s.job_docs_all(), &s.job_doc(&t, Uuid::nil())));
        assert!(matches(&s.job_doc_everywhere(Uuid::nil()), &s.job_doc(&t, Uuid::nil())));
        assert!(!matches(&s.job_docs_of(&t), &s.job_doc(&TargetName::new("web02").unwrap(), Uuid::nil())));
        assert!(!matches(&s.assign_all(), &s.state(&t)));
    }

    #[test]
    fn prefix_is_one_token() {
        assert!(Subjects::new("acme").is_ok());
        assert!(Subjects::new("a.b").unwrap_err().to_string().contains("prefix"));
        assert_eq!(Subjects::new("my-co").unwrap().assign_stream(), "MY_CO_ASSIGN");
    }
}
