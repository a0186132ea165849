//! Subject builders.
//!
//! Every subject Muster uses is built here from a validated prefix and
//! validated names, so no caller can produce a subject with a stray wildcard
//! or an extra token. The layout (prefix `muster`):
//!
//! | subject | what |
//! | --- | --- |
//! | `muster.target.<t>.assign` | instructions for `<t>` (stream `MUSTER_ASSIGN`) |
//! | `muster.target.<t>.control` | core request/reply: force poll, stop (no stream) |
//! | `muster.result.<t>.run.<job-id>` | run records (stream `MUSTER_RESULTS`) |
//! | `muster.result.<t>.instr` | instructions applied or failed (stream `MUSTER_RESULTS`) |
//! | `muster.poll.<t>` | the latest poll report (stream `MUSTER_POLLS`) |
//! | `muster.api.<op>` | the master's admin API (service `muster`) |
//! | `muster.api.agent.<t>.<op>` | the API a target may call, carrying its own name |
//!
//! Identity is the subject: everything a target publishes carries its name, so
//! server permissions decide who is who.

use uuid::Uuid;

use crate::name::{NameError, TargetName};

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "muster";

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

    // ---- per-target subjects -------------------------------------------

    pub fn assign(&self, t: &TargetName) -> String {
        format!("{}.target.{t}.assign", self.prefix)
    }

    /// All targets' assign subjects: the `MUSTER_ASSIGN` stream's subject.
    pub fn assign_all(&self) -> String {
        format!("{}.target.*.assign", self.prefix)
    }

    pub fn control(&self, t: &TargetName) -> String {
        format!("{}.target.{t}.control", self.prefix)
    }

    pub fn result_run(&self, t: &TargetName, job_id: Uuid) -> String {
        format!("{}.result.{t}.run.{job_id}", self.prefix)
    }

    pub fn result_instr(&self, t: &TargetName) -> String {
        format!("{}.result.{t}.instr", self.prefix)
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

    /// Filter for instruction records, by target (`None` = any).
    pub fn instr_filter(&self, t: Option<&TargetName>) -> String {
        let t = t.map_or_else(|| "*".to_owned(), ToString::to_string);
        format!("{}.result.{t}.instr", self.prefix)
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

    /// The target name carried by a subject built here, if any (token 2).
    pub fn target_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let mut tokens = rest.split('.');
        match tokens.next()? {
            "target" | "result" | "poll" => tokens.next(),
            "api" => match tokens.next()? {
                "agent" => tokens.next(),
                _ => None,
            },
            _ => None,
        }
    }

    // ---- API -------------------------------------------------------------

    /// The admin API subject for an operation, e.g. `muster.api.target.enlist`.
    pub fn api(&self, op: &str) -> String {
        format!("{}.api.{op}", self.prefix)
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

    pub fn assign_stream(&self) -> String {
        format!("{}_ASSIGN", self.upper())
    }

    pub fn results_stream(&self) -> String {
        format!("{}_RESULTS", self.upper())
    }

    pub fn polls_stream(&self) -> String {
        format!("{}_POLLS", self.upper())
    }

    pub fn bucket(&self, b: Bucket) -> String {
        format!("{}-{}", self.prefix, b.suffix())
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
    /// The download list: every posted instruction, key `<target>.<instr-id>`.
    Instructions,
}

impl Bucket {
    pub const ALL: [Bucket; 5] =
        [Bucket::Targets, Bucket::Jobs, Bucket::Groups, Bucket::JobStatus, Bucket::Instructions];

    fn suffix(self) -> &'static str {
        match self {
            Bucket::Targets => "targets",
            Bucket::Jobs => "jobs",
            Bucket::Groups => "groups",
            Bucket::JobStatus => "jobstatus",
            Bucket::Instructions => "instructions",
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
        for subj in [s.assign(&t), s.poll(&t), s.result_instr(&t), s.agent_api(&t, "enlist")] {
            assert_eq!(s.target_of(&subj), Some("web01"), "{subj}");
        }
        assert_eq!(s.target_of("muster.api.job.create"), None);
    }

    #[test]
    fn prefix_is_one_token() {
        assert!(Subjects::new("acme").is_ok());
        assert!(Subjects::new("a.b").unwrap_err().to_string().contains("prefix"));
        assert_eq!(Subjects::new("my-co").unwrap().assign_stream(), "MY_CO_ASSIGN");
    }
}
