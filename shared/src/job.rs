//! The job model: what people write in job files, what the master stores and
//! what a target runs.
//!
//! A [`JobSpec`] is the whole definition (steps, flow, retries, schedules). It
//! travels to targets inside an upsert instruction, so it is part of the wire
//! contract. [`JobSpec::validate`] is the single place that decides whether a
//! definition is acceptable; the master calls it before storing anything, and
//! its errors name the offending field.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::name::{JobName, NameError};
use crate::params::{self, Param, ParamError};
use crate::schedule;

/// Default cap on captured output per step (head and tail are kept).
pub const DEFAULT_OUTPUT_CAP: usize = 64 * 1024;

/// With `"keep_output": "full"` and no `keep_output_max`: the most of one
/// step's output kept whole.
pub const DEFAULT_KEEP_OUTPUT_MAX: u64 = 100 * 1024 * 1024;

/// The largest `keep_output_max` a job may set.
pub const MAX_KEEP_OUTPUT: u64 = 1024 * 1024 * 1024;

/// What a run keeps of each step's output beyond its record's head and tail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepOutput {
    /// The run record's head and tail only.
    #[default]
    HeadTail,
    /// Every byte too, up to `keep_output_max`, in `MUSTER_KEPT`
    /// ([`crate::kept`]), for the history's retention.
    Full,
}

impl KeepOutput {
    fn is_default(&self) -> bool {
        *self == KeepOutput::HeadTail
    }
}

/// A job as written by people (`musterctl job create -f job.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: JobName,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Ends the whole run, `goto` loops included. `None`: no job-level limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
    /// `"full"`: each step's whole output is kept too ([`KeepOutput`]).
    #[serde(default, skip_serializing_if = "KeepOutput::is_default")]
    pub keep_output: KeepOutput,
    /// With `keep_output: full`: the most kept per step, like `"100MiB"`
    /// (default [`DEFAULT_KEEP_OUTPUT_MAX`], at most [`MAX_KEEP_OUTPUT`]);
    /// the rest is cut, and the cut is said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_output_max: Option<String>,
    /// What `job start --param k=v` may set ([`crate::params`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
}

fn yes() -> bool {
    true
}

/// One step: a shell command line or an argv.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Defaults to `step-<n>` (1-based) when omitted in a file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Run with `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Run directly, no shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Working directory. Default: the agent's own, or with `user` that
    /// user's home (`/` when the home is not a directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Run as this Unix user (the agent must run as root; it refuses the step
    /// otherwise). The environment's `HOME`, `USER`, `LOGNAME`, `SHELL` follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// With `user`: the primary group, instead of the user's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Extra attempts after a failure (0 = run once).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub retry_interval_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Flow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Flow>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}
fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// What happens after a step succeeds or fails: an action, or
/// `{"goto": "<step name>"}`. Read by hand (not `untagged`) so that a typo
/// is told what is expected, instead of "data did not match any variant".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Flow {
    Action(FlowAction),
    Goto { goto: String },
}

impl<'de> Deserialize<'de> for Flow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let expected = || {
            let actions: Vec<String> = <FlowAction as strum::VariantNames>::VARIANTS.iter().map(|a| format!("\"{a}\"")).collect();
            format!("expected {}, or {{\"goto\": \"<step name>\"}}", actions.join(", "))
        };
        let value = serde_json::Value::deserialize(d)?;
        if let Some(text) = value.as_str() {
            return serde_json::from_value(value.clone())
                .map(Flow::Action)
                .map_err(|_| D::Error::custom(format!("'{text}' is not a flow action: {}", expected())));
        }
        match value.as_object().map(|o| (o.len(), o.get("goto"))) {
            Some((1, Some(serde_json::Value::String(step)))) => Ok(Flow::Goto { goto: step.clone() }),
            _ => Err(D::Error::custom(format!("{value} is not a flow: {}", expected()))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::VariantNames)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum FlowAction {
    Next,
    QuitSuccess,
    QuitFailure,
}

/// Where a step's flow leads, resolved against the job's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Step(usize),
    QuitSuccess,
    QuitFailure,
}

/// When a job runs by itself. Exactly one of `cron`, `every_secs`, `at`,
/// `on_start` is set; `timezone` goes with `cron` and `between`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// IANA name, e.g. `Europe/Berlin`. Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
    /// `["08:00", "18:00"]`: only fire between these local times of day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub between: Option<[String; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub on_start: bool,
    /// Active start date: no run before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_from: Option<DateTime<Utc>>,
    /// Active end date: no run after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_until: Option<DateTime<Utc>>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A size like `100MiB`, `1GB` or `5000` (bytes).
fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("'{text}' is not a size like 100MiB or 1GB ({e})"))
}

/// A refused job definition: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// A path like `steps[0].on_failure.goto`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl fmt::Display) -> Self {
        Self { field: field.into(), message: message.to_string() }
    }
}

impl From<NameError> for FieldError {
    fn from(e: NameError) -> Self {
        FieldError::new("name", e)
    }
}

impl JobSpec {
    /// Parses a job file and validates it.
    ///
    /// # Errors
    /// The JSON error (with line and column), or the first [`FieldError`].
    pub fn from_json(text: &str) -> Result<JobSpec, FieldError> {
        let mut spec: JobSpec = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text)).map_err(|e| {
            // The path of the field in error (`steps[0].on_failure`), or the
            // whole file when the error is in its syntax or at its top.
            let field = match e.path().to_string() {
                path if path == "." => "job file".to_owned(),
                path => path,
            };
            FieldError::new(field, e.inner())
        })?;
        spec.normalize();
        spec.validate()?;
        Ok(spec)
    }

    /// A one-step-per-command job, as `musterctl job create --command` builds.
    pub fn from_commands(name: JobName, commands: &[String]) -> JobSpec {
        let mut spec = JobSpec {
            name,
            description: String::new(),
            enabled: true,
            timeout_secs: None,
            steps: commands.iter().map(|c| Step { command: Some(c.clone()), ..Step::default() }).collect(),
            schedules: Vec::new(),
            keep_output: KeepOutput::HeadTail,
            keep_output_max: None,
            params: Vec::new(),
        };
        spec.normalize();
        spec
    }

    /// The most of each step's output kept whole, when the job keeps it
    /// (`keep_output: full`); `None` otherwise. A size that does not parse
    /// (refused by [`JobSpec::validate`]) counts as the default.
    pub fn kept_output_max(&self) -> Option<u64> {
        (self.keep_output == KeepOutput::Full)
            .then(|| self.keep_output_max.as_deref().and_then(|m| parse_size(m).ok()).unwrap_or(DEFAULT_KEEP_OUTPUT_MAX))
    }

    /// Fills defaults that depend on position (step names).
    pub fn normalize(&mut self) {
        for (i, step) in self.steps.iter_mut().enumerate() {
            if step.name.is_empty() {
                step.name = format!("step-{}", i + 1);
            }
        }
    }

    /// Checks everything a target would otherwise trip over at run time.
    ///
    /// # Errors
    /// The first problem found, naming its field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.steps.is_empty() {
            return Err(FieldError::new("steps", "a job needs at least one step"));
        }
        if self.timeout_secs == Some(0) {
            return Err(FieldError::new("timeout_secs", "must be at least 1"));
        }
        let mut seen = BTreeMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            let at = |f: &str| format!("steps[{i}].{f}");
            if step.name.is_empty() {
                return Err(FieldError::new(at("name"), "is empty"));
            }
            if let Some(prev) = seen.insert(step.name.as_str(), i) {
                return Err(FieldError::new(at("name"), format!("'{}' is already the name of steps[{prev}]", step.name)));
            }
            match (&step.command, &step.argv) {
                (Some(_), Some(_)) => {
                    return Err(FieldError::new(at("argv"), "a step has either `command` (a shell line) or `argv`, not both"))
                }
                (None, None) => return Err(FieldError::new(at("command"), "a step needs `command` or `argv`")),
                (Some(c), None) if c.trim().is_empty() => return Err(FieldError::new(at("command"), "is empty")),
                (None, Some(a)) if a.is_empty() || a[0].is_empty() => {
                    return Err(FieldError::new(at("argv"), "needs at least a program"))
                }
                _ => {}
            }
            if step.timeout_secs == Some(0) {
                return Err(FieldError::new(at("timeout_secs"), "must be at least 1"));
            }
            for (field, name) in [("user", &step.user), ("group", &step.group)] {
                if name.as_deref().is_some_and(|n| n.is_empty() || n.contains('\0') || n.contains(char::is_whitespace)) {
                    return Err(FieldError::new(at(field), "must be a Unix name: non-empty, no spaces or NUL"));
                }
            }
            if step.group.is_some() && step.user.is_none() {
                return Err(FieldError::new(at("group"), "applies only with \"user\""));
            }
            if step.env.keys().any(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
                return Err(FieldError::new(at("env"), "variable names must be non-empty, without '=' or NUL"));
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            for (which, flow) in [("on_success", &step.on_success), ("on_failure", &step.on_failure)] {
                if let Some(Flow::Goto { goto }) = flow {
                    if !seen.contains_key(goto.as_str()) {
                        let known: Vec<&str> = self.steps.iter().map(|s| s.name.as_str()).collect();
                        return Err(FieldError::new(
                            format!("steps[{i}].{which}.goto"),
                            format!("no step is named '{goto}' (steps: {})", known.join(", ")),
                        ));
                    }
                }
            }
        }
        if let Some(max) = &self.keep_output_max {
            if self.keep_output != KeepOutput::Full {
                return Err(FieldError::new("keep_output_max", "applies only with \"keep_output\": \"full\""));
            }
            let bytes = parse_size(max).map_err(|e| FieldError::new("keep_output_max", e))?;
            if !(1..=MAX_KEEP_OUTPUT).contains(&bytes) {
                return Err(FieldError::new(
                    "keep_output_max",
                    format!("'{max}' is out of range: 1 B to {}", bytesize::ByteSize::b(MAX_KEEP_OUTPUT).display().iec()),
                ));
            }
        }
        let mut names = BTreeMap::new();
        for (i, sched) in self.schedules.iter().enumerate() {
            if sched.name.is_empty() {
                return Err(FieldError::new(format!("schedules[{i}].name"), "is empty"));
            }
            if names.insert(sched.name.as_str(), i).is_some() {
                return Err(FieldError::new(
                    format!("schedules[{i}].name"),
                    format!("'{}' is used by another schedule", sched.name),
                ));
            }
            schedule::validate(sched)
                .map_err(|e| FieldError { field: format!("schedules[{i}].{}", e.field), message: e.message })?;
        }
        params::validate(&self.params).map_err(|(i, e)| FieldError::new(format!("params[{i}]"), e))?;
        // A scheduled run uses the defaults: a required one without a
        // default would make every fire fail, so it is refused here.
        if let Some(sched) = self.schedules.iter().find(|s| s.enabled) {
            if let Some((i, p)) = self.params.iter().enumerate().find(|(_, p)| p.required && p.default.is_none()) {
                return Err(FieldError::new(
                    format!("params[{i}]"),
                    ParamError::ScheduleNeedsValue { name: p.name.clone(), schedule: sched.name.clone() },
                ));
            }
        }
        Ok(())
    }

    /// Where the flow goes after step `index` ended with `success`.
    pub fn next_after(&self, index: usize, success: bool) -> Next {
        let step = &self.steps[index];
        let last = index + 1 == self.steps.len();
        let flow = if success { &step.on_success } else { &step.on_failure };
        let default = if success {
            if last {
                FlowAction::QuitSuccess
            } else {
                FlowAction::Next
            }
        } else {
            FlowAction::QuitFailure
        };
        match flow {
            None => self.resolve(index, default, success),
            Some(Flow::Action(a)) => self.resolve(index, *a, success),
            Some(Flow::Goto { goto }) => self.steps.iter().position(|s| &s.name == goto).map_or(Next::QuitFailure, Next::Step),
        }
    }

    fn resolve(&self, index: usize, action: FlowAction, success: bool) -> Next {
        match action {
            FlowAction::Next if index + 1 < self.steps.len() => Next::Step(index + 1),
            // `next` from the last step ends the job with the step's own result.
            FlowAction::Next => {
                if success {
                    Next::QuitSuccess
                } else {
                    Next::QuitFailure
                }
            }
            FlowAction::QuitSuccess => Next::QuitSuccess,
            FlowAction::QuitFailure => Next::QuitFailure,
        }
    }
}

/// A job as the master stores it and a target keeps it: the spec plus its
/// identity and revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDef {
    pub id: Uuid,
    /// Increases on every update, so a target can ignore a stale upsert.
    pub revision: u64,
    #[serde(flatten)]
    pub spec: JobSpec,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"{
      "name": "nightly-backup",
      "description": "dump, upload, alert on failure",
      "enabled": true,
      "timeout_secs": 3600,
      "steps": [
        {"name": "dump", "command": "pg_dump app > /tmp/app.sql", "timeout_secs": 600,
         "retries": 2, "retry_interval_secs": 30, "on_success": "next", "on_failure": {"goto": "alert"}},
        {"name": "upload", "argv": ["rclone", "copy", "/tmp/app.sql", "remote:"],
         "cwd": "/tmp", "env": {"RCLONE_VERBOSE": "1"}, "on_success": "quit_success", "on_failure": {"goto": "alert"}},
        {"name": "alert", "command": "echo backup failed >&2", "on_success": "quit_failure"}
      ],
      "schedules": [
        {"name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin"},
        {"name": "often", "every_secs": 300, "between": ["08:00", "18:00"]},
        {"name": "once", "at": "2027-01-01T00:00:00Z"},
        {"name": "boot", "on_start": true}
      ]
    }"#;

    #[test]
    fn accepts_the_documented_example() {
        let spec = JobSpec::from_json(ISSUE_EXAMPLE).unwrap();
        assert_eq!(spec.steps.len(), 3);
        assert_eq!(spec.next_after(0, true), Next::Step(1));
        assert_eq!(spec.next_after(0, false), Next::Step(2));
        assert_eq!(spec.next_after(1, true), Next::QuitSuccess);
        assert_eq!(spec.next_after(2, true), Next::QuitFailure);
        assert_eq!(spec.next_after(2, false), Next::QuitFailure);
        // Round trip through the wire form.
        let back: JobSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    fn refuse(json: &str, field: &str, why: &str) {
        let err = JobSpec::from_json(json).unwrap_err();
        assert!(err.field.contains(field), "field {:?} in {err}", field);
        assert!(err.message.contains(why), "{why:?} in {err}");
    }

    #[test]
    fn refuses_bad_files_naming_the_field() {
        refuse(
            r#"{"name":"j","steps":[{"command":"a","on_failure":{"goto":"nope"}}]}"#,
            "steps[0].on_failure.goto",
            "no step is named 'nope'",
        );
        refuse(r#"{"name":"j","steps":[{"command":"a","argv":["b"]}]}"#, "steps[0].argv", "not both");
        refuse(r#"{"name":"j","steps":[{}]}"#, "steps[0].command", "needs");
        refuse(r#"{"name":"j","steps":[]}"#, "steps", "at least one");
        refuse(r#"{"name":"j.x","steps":[{"command":"a"}]}"#, "name", "subject separator");
        refuse(
            r#"{"name":"j","steps":[{"command":"a","on_failure":"go_nxt"}]}"#,
            "steps[0].on_failure",
            r#"'go_nxt' is not a flow action: expected "next", "quit_success", "quit_failure", or {"goto": "<step name>"}"#,
        );
        refuse(r#"{"name":"j","steps":[{"command":"a","on_success":{"got":"b"}}]}"#, "steps[0].on_success", "is not a flow");
        refuse(
            r#"{"name":"j","steps":[{"command":"a"}],"schedules":[{"name":"s","cron":"61 * * * *"}]}"#,
            "schedules[0].cron",
            "the minute field '61' has 61; a minute is 0 to 59",
        );
        refuse(
            r#"{"name":"j","steps":[{"command":"a"}],"schedules":[{"name":"s","cron":"0 0 * 1-13 *"}]}"#,
            "schedules[0].cron",
            "the month field '1-13' has 13",
        );
        refuse(
            r#"{"name":"j","steps":[{"command":"a"}],"schedules":[{"name":"s","cron":"* * *"}]}"#,
            "schedules[0].cron",
            "'* * *' has 3 field(s): expected 5 fields",
        );
        refuse(
            r#"{"name":"j","steps":[{"command":"a"}],"schedules":[{"name":"s","cron":"* * * * *","timezone":"Mars/Olympus"}]}"#,
            "schedules[0].timezone",
            "Mars/Olympus",
        );
        refuse(r#"{"name":"j","steps":[{"command":"a","colour":"red"}]}"#, "steps[0]", "colour");
        refuse(r#"{"name":"j","steps":[{"command":"a"}],"keep_output":"most"}"#, "keep_output", "unknown variant");
        refuse(r#"{"name":"j","steps":[{"command":"a"}],"keep_output_max":"1MiB"}"#, "keep_output_max", "only with");
        let full =
            |max: &str| format!(r#"{{"name":"j","steps":[{{"command":"a"}}],"keep_output":"full","keep_output_max":"{max}"}}"#);
        refuse(&full("lots"), "keep_output_max", "not a size like 100MiB");
        refuse(&full("2GiB"), "keep_output_max", "out of range");
        refuse(&full("0"), "keep_output_max", "out of range");
        refuse(r#"{"name":"j","steps":[{"command":"a","group":"adm"}]}"#, "steps[0].group", "only with \"user\"");
        refuse(r#"{"name":"j","steps":[{"command":"a","user":""}]}"#, "steps[0].user", "a Unix name");
        refuse(r#"{"name":"j","steps":[{"command":"a","user":"x","group":"a b"}]}"#, "steps[0].group", "a Unix name");
        assert!(JobSpec::from_json(r#"{"name":"j","steps":[{"command":"a","user":"nobody","group":"adm"}]}"#).is_ok());
    }

    #[test]
    fn full_output_is_kept_by_choice_with_a_limit() {
        let spec = |extra: &str| JobSpec::from_json(&format!(r#"{{"name":"j","steps":[{{"command":"a"}}]{extra}}}"#)).unwrap();
        assert_eq!(spec("").kept_output_max(), None);
        assert_eq!(spec(r#","keep_output":"full""#).kept_output_max(), Some(DEFAULT_KEEP_OUTPUT_MAX));
        assert_eq!(spec(r#","keep_output":"full","keep_output_max":"50 MiB""#).kept_output_max(), Some(50 << 20));
        assert_eq!(spec(r#","keep_output":"full","keep_output_max":"1GB""#).kept_output_max(), Some(1_000_000_000));
        // Round trip: the default is left out of the stored JSON.
        assert!(!serde_json::to_string(&spec("")).unwrap().contains("keep_output"));
    }

    #[test]
    fn every_flow_action_resolves() {
        let spec = JobSpec::from_json(
            r#"{"name":"j","steps":[
                {"name":"a","command":"x","on_success":"quit_success","on_failure":"next"},
                {"name":"b","command":"x","on_success":{"goto":"a"},"on_failure":{"goto":"b"}},
                {"name":"c","command":"x","on_success":"next","on_failure":"next"}]}"#,
        )
        .unwrap();
        assert_eq!(spec.next_after(0, true), Next::QuitSuccess);
        assert_eq!(spec.next_after(0, false), Next::Step(1), "next on failure goes on");
        assert_eq!(spec.next_after(1, true), Next::Step(0), "goto backwards");
        assert_eq!(spec.next_after(1, false), Next::Step(1), "goto itself");
        // `next` from the last step ends the run with the step's own result.
        assert_eq!(spec.next_after(2, true), Next::QuitSuccess);
        assert_eq!(spec.next_after(2, false), Next::QuitFailure);
    }

    #[test]
    fn default_flow() {
        let spec = JobSpec::from_commands(JobName::new("j").unwrap(), &["a".into(), "b".into()]);
        assert_eq!(spec.steps[1].name, "step-2");
        assert_eq!(spec.next_after(0, true), Next::Step(1));
        assert_eq!(spec.next_after(0, false), Next::QuitFailure);
        assert_eq!(spec.next_after(1, true), Next::QuitSuccess);
    }

    #[test]
    fn a_scheduled_job_needs_a_default_for_each_required_parameter() {
        let file = |default: &str| {
            format!(
                r#"{{"name": "j", "params": [{{"name": "who", "type": "string", "required": true{default}}}],
                    "steps": [{{"command": "true"}}], "schedules": [{{"name": "s", "every_secs": 5}}]}}"#
            )
        };
        let err = JobSpec::from_json(&file("")).unwrap_err();
        assert_eq!(err.field, "params[0]");
        assert!(err.message.contains("schedule 's'"), "{err}");
        assert_eq!(JobSpec::from_json(&file(r#", "default": "x""#)).unwrap().params[0].default.as_deref(), Some("x"));
        let bad =
            JobSpec::from_json(r#"{"name": "j", "params": [{"name": "a-b", "type": "string"}], "steps": [{"command": "true"}]}"#);
        assert_eq!(bad.unwrap_err().field, "params[0]");
    }
}
