//! Messages between the master and its targets: control requests (force
//! poll, stop), poll reports, the records a target uploads to
//! `MUSTER_RESULTS`, and the previous design's instructions (kept for the
//! upgrade from `MUSTER_ASSIGN`; desired state is in [`crate::desired`]).
//!
//! Every body carries `"v"` ([`crate::PROTOCOL_VERSION`]). Use [`decode`] to
//! read any of them: it checks size, JSON and version in one place, so every
//! subscriber refuses bad input the same way.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::{ApiError, ErrorCode};
use crate::job::JobDef;
use crate::name::{JobName, TargetName};
use crate::{MAX_BODY_BYTES, PROTOCOL_VERSION};

/// Reads a versioned body: size cap, then JSON, then `"v"`.
///
/// # Errors
/// An [`ApiError`] with code `invalid_request` (too large, not JSON, wrong
/// shape) or `bad_version`, whose message is fit to log and to send back.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    decode_within(body, MAX_BODY_BYTES)
}

/// [`decode`] with another size cap (API replies, see [`crate::MAX_REPLY_BYTES`]).
///
/// # Errors
/// As [`decode`].
pub fn decode_within<T: DeserializeOwned>(body: &[u8], cap: usize) -> Result<T, ApiError> {
    if body.len() > cap {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("body of {} bytes is over the {cap}-byte limit", body.len()),
        ));
    }
    #[derive(Deserialize)]
    struct Version {
        v: Option<serde_json::Value>,
    }
    let version: Version =
        serde_json::from_slice(body).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("malformed JSON: {e}")))?;
    match version.v {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::BadVersion,
                format!("unsupported protocol version {other}; this side speaks v{PROTOCOL_VERSION}"),
            ))
        }
        None => return Err(ApiError::new(ErrorCode::BadVersion, format!("missing \"v\"; this side speaks v{PROTOCOL_VERSION}"))),
    }
    serde_json::from_slice(body).map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("invalid body: {e}")))
}

/// Serialises a body. Muster's types always serialise.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("Muster message types serialise")
}

fn v() -> u32 {
    PROTOCOL_VERSION
}

// ---- instructions -----------------------------------------------------------

/// One row of a target's download list, posted on `muster.target.<t>.assign`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    #[serde(default = "v")]
    pub v: u32,
    /// Unique and time-ordered (UUIDv7); also the `Nats-Msg-Id`, and what a
    /// target remembers so re-applying after a crash is harmless.
    pub id: Uuid,
    /// Must equal the subject's target; a target refuses anything else.
    pub target: TargetName,
    pub posted_at: DateTime<Utc>,
    #[serde(flatten)]
    pub op: InstructionOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum InstructionOp {
    /// Insert or update a job: the whole definition.
    UpsertJob {
        job: JobDef,
    },
    DeleteJob {
        job_id: Uuid,
        job: JobName,
    },
    /// First half of a resync: forget every job from the master.
    DeleteAllJobs,
    /// Run now. The run id is chosen by the master so a re-applied start is
    /// recognised and not run twice.
    StartJob {
        job_id: Uuid,
        job: JobName,
        run_id: Uuid,
    },
    StopJob {
        job_id: Uuid,
        job: JobName,
    },
    SetPollInterval {
        secs: u64,
    },
    /// The master's clock at posting; the target records its skew.
    SyncTime {
        master_time: DateTime<Utc>,
    },
    /// Leave the master: delete every job from it and stop polling.
    Defect,
}

/// Which [`InstructionOp`] an instruction is, without its fields: what an
/// [`InstrOutcome`] reports and the download list shows. Its serde form is
/// the instruction's `"op"` tag.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::IntoStaticStr, strum::Display, strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum InstructionKind {
    UpsertJob,
    DeleteJob,
    DeleteAllJobs,
    StartJob,
    StopJob,
    SetPollInterval,
    SyncTime,
    Defect,
}

impl InstructionKind {
    /// The short name shown in the download list (the serde form).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl InstructionOp {
    /// Which instruction this is.
    pub fn kind(&self) -> InstructionKind {
        match self {
            InstructionOp::UpsertJob { .. } => InstructionKind::UpsertJob,
            InstructionOp::DeleteJob { .. } => InstructionKind::DeleteJob,
            InstructionOp::DeleteAllJobs => InstructionKind::DeleteAllJobs,
            InstructionOp::StartJob { .. } => InstructionKind::StartJob,
            InstructionOp::StopJob { .. } => InstructionKind::StopJob,
            InstructionOp::SetPollInterval { .. } => InstructionKind::SetPollInterval,
            InstructionOp::SyncTime { .. } => InstructionKind::SyncTime,
            InstructionOp::Defect => InstructionKind::Defect,
        }
    }

    /// The short name shown in the download list.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The job an instruction is about, if any.
    pub fn job_name(&self) -> Option<&JobName> {
        match self {
            InstructionOp::UpsertJob { job } => Some(&job.spec.name),
            InstructionOp::DeleteJob { job, .. } | InstructionOp::StartJob { job, .. } | InstructionOp::StopJob { job, .. } => {
                Some(job)
            }
            _ => None,
        }
    }
}

// ---- control ------------------------------------------------------------------

/// A core request on `muster.target.<t>.control`, e.g. `{"v":1,"op":"poll"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    #[serde(default = "v")]
    pub v: u32,
    #[serde(flatten)]
    pub op: ControlOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlOp {
    /// Poll now and answer with the poll report.
    Poll,
    /// Stop a running job at once (SIGTERM, then SIGKILL after the grace).
    Stop { job: JobName },
}

/// The answer to a control request: exactly one of the fields is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    #[serde(default = "v")]
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<PollReport>,
    /// For `stop`: whether a run was running and was told to stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl ControlReply {
    pub fn report(report: PollReport) -> Self {
        Self { v: PROTOCOL_VERSION, report: Some(report), stopped: None, error: None }
    }
    pub fn stopped(stopped: bool) -> Self {
        Self { v: PROTOCOL_VERSION, report: None, stopped: Some(stopped), error: None }
    }
    pub fn error(error: ApiError) -> Self {
        Self { v: PROTOCOL_VERSION, report: None, stopped: None, error: Some(error) }
    }
}

// ---- poll reports -----------------------------------------------------------------

/// What a target says after each poll, on `muster.poll.<t>` (latest kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollReport {
    #[serde(default = "v")]
    pub v: u32,
    pub target: TargetName,
    /// The target's own clock when it polled.
    pub polled_at: DateTime<Utc>,
    pub agent_version: String,
    /// This agent process; a second process with the same name has another.
    pub instance: Uuid,
    pub poll_interval_secs: u64,
    /// Changes applied and failed in this poll (with desired state: jobs
    /// written or removed, starts and stops handled; failed jobs, or 1 for
    /// a refused manifest).
    pub applied: u32,
    pub failed: u32,
    /// Jobs from the master the target holds.
    pub jobs: u32,
    /// Jobs running now.
    #[serde(default)]
    pub running: Vec<JobName>,
    /// Results waiting in the on-disk spool.
    #[serde(default)]
    pub spooled: u64,
    /// Skew recorded by the last sync-time (target clock − master clock), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
    /// The target's IANA time zone or UTC offset, for operators.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timezone: String,
    /// Bad instructions this agent terminated since it started (each is
    /// logged with its subject).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bad_instructions: u64,
    /// Bad control requests this agent refused since it started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bad_control: u64,
    /// The desired-state revision this target holds (`None`: nothing
    /// applied yet, or an agent of the previous design). With the
    /// manifest's own `changes`, this is how the master counts what a
    /// target has not read without scanning rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<crate::desired::Applied>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

// ---- results ----------------------------------------------------------------------

/// Instructions a poll applied or failed, on `muster.result.<t>.instr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstrRecord {
    #[serde(default = "v")]
    pub v: u32,
    pub target: TargetName,
    pub outcomes: Vec<InstrOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstrOutcome {
    pub id: Uuid,
    pub op: InstructionKind,
    pub applied_at: DateTime<Utc>,
    /// `None` when applied; the reason when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a run ended (or that it is still going).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::IntoStaticStr, strum::Display, strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    Running,
    Succeeded,
    Failed,
    Canceled,
    TimedOut,
    /// The agent died mid-run; reported when it starts again.
    Interrupted,
    /// A start refused because the job was already running on this target.
    Skipped,
    /// A start read after its expiry (or never read: the master records it
    /// a day later); it never ran (SSM's DeliveryTimedOut).
    Expired,
}

impl Outcome {
    pub fn is_final(self) -> bool {
        self != Outcome::Running
    }
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            let names: Vec<&str> = <Outcome as strum::VariantArray>::VARIANTS.iter().map(|o| o.as_str()).collect();
            format!("unknown outcome '{s}' ({})", names.join(", "))
        })
    }
}

/// Why a run started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// `musterctl job start`, through a start instruction.
    Manual,
    Schedule {
        schedule: String,
    },
    OnStart,
    /// `musterctl exec`: a one-off command carried by its start entry, run
    /// once and never stored as a job.
    Exec,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Manual => f.write_str("manual"),
            Trigger::Schedule { schedule } => write!(f, "schedule:{schedule}"),
            Trigger::OnStart => f.write_str("on_start"),
            Trigger::Exec => f.write_str("exec"),
        }
    }
}

/// A run's record on `muster.result.<t>.run.<job-id>`: sent once when it
/// starts (`outcome: running`) and once when it ends.
///
/// Identity is `run_id`: the `Nats-Msg-Id` is derived from it
/// ([`RunRecord::msg_id`]), and readers keep one record per run (the final
/// one), so a replay after the dedup window never shows twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(default = "v")]
    pub v: u32,
    pub run_id: Uuid,
    pub job_id: Uuid,
    pub job: JobName,
    pub target: TargetName,
    pub trigger: Trigger,
    pub outcome: Outcome,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// One line for people: why it failed, what was skipped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    /// The parameters the run used, secrets masked.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: crate::params::Values,
}

impl RunRecord {
    /// The JetStream de-duplication id for this record.
    pub fn msg_id(&self) -> String {
        let phase = if self.outcome.is_final() { "end" } else { "start" };
        format!("run-{}-{phase}", self.run_id)
    }

    pub fn duration_ms(&self) -> Option<i64> {
        self.finished_at.map(|f| (f - self.started_at).num_milliseconds())
    }
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    /// Position in the job's steps (a `goto` can run a step more than once).
    pub index: usize,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// Attempts after the first.
    pub retries: u32,
    /// stdout and stderr, interleaved as read, capped (head and tail kept).
    pub output: String,
    /// Bytes cut from the middle of the output; 0 when none.
    #[serde(default)]
    pub output_cut_bytes: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn force_poll_body_from_the_docs() {
        let r: ControlRequest = decode(br#"{"v":1,"op":"poll"}"#).unwrap();
        assert_eq!(r.op, ControlOp::Poll);
    }

    #[test]
    fn decode_refuses_bad_input() {
        assert_eq!(decode::<ControlRequest>(b"{nope").unwrap_err().code, ErrorCode::InvalidRequest);
        assert_eq!(decode::<ControlRequest>(br#"{"v":9,"op":"poll"}"#).unwrap_err().code, ErrorCode::BadVersion);
        assert_eq!(decode::<ControlRequest>(br#"{"op":"poll"}"#).unwrap_err().code, ErrorCode::BadVersion);
        assert_eq!(decode::<ControlRequest>(br#"{"v":1,"op":"dance"}"#).unwrap_err().code, ErrorCode::InvalidRequest);
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(decode::<ControlRequest>(&big).unwrap_err().message.contains("limit"));
    }

    #[test]
    fn an_instruction_kind_is_named_as_its_op_tag() {
        let (id, job) = (Uuid::nil(), JobName::new("j").unwrap());
        let spec = crate::job::JobSpec::from_commands(job.clone(), &["true".to_owned()]);
        let ops = [
            InstructionOp::UpsertJob { job: JobDef { id, revision: 1, spec } },
            InstructionOp::DeleteJob { job_id: id, job: job.clone() },
            InstructionOp::DeleteAllJobs,
            InstructionOp::StartJob { job_id: id, job: job.clone(), run_id: id },
            InstructionOp::StopJob { job_id: id, job },
            InstructionOp::SetPollInterval { secs: 5 },
            InstructionOp::SyncTime { master_time: Utc::now() },
            InstructionOp::Defect,
        ];
        for op in ops {
            let tag = serde_json::to_value(&op).unwrap()["op"].clone();
            assert_eq!(serde_json::to_value(op.kind()).unwrap(), tag);
            assert_eq!(tag, op.name());
            assert_eq!(op.kind().to_string(), op.name());
        }
    }

    #[test]
    fn an_instruction_outcome_keeps_its_wire_form() {
        let text =
            r#"{"id":"00000000-0000-0000-0000-000000000000","op":"set_poll_interval","applied_at":"2024-01-02T03:04:05Z"}"#;
        let o: InstrOutcome = serde_json::from_str(text).unwrap();
        assert_eq!(o.op, InstructionKind::SetPollInterval);
        assert_eq!(String::from_utf8(encode(&o)).unwrap(), text);
        assert!(serde_json::from_str::<InstrOutcome>(&text.replace("set_poll_interval", "dance")).is_err());
    }

    #[test]
    fn outcome_names() {
        assert_eq!("timed_out".parse::<Outcome>().unwrap(), Outcome::TimedOut);
        let unknown = "meh".parse::<Outcome>().unwrap_err();
        assert!(unknown.starts_with("unknown outcome 'meh' (running, succeeded, failed,"), "{unknown}");
        for o in <Outcome as strum::VariantArray>::VARIANTS {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
            assert_eq!(o.to_string(), o.as_str());
        }
    }
}
