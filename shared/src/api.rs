//! The master's admin API: operation names, request and reply bodies, and the
//! stable error codes `musterctl` maps to exit codes.
//!
//! Each operation is an endpoint of the NATS service `muster` on
//! `muster.api.read.<op>` or `muster.api.admin.<op>`, after who may call it
//! (see [`Op`], [`Op::access`]); a target's own calls go to
//! `muster.api.agent.<t>.<op>`. A request is `{"v":1, ...fields}`; a reply is
//! `{"v":1,"ok":...}` or `{"v":1,"error":{"code":...,"message":...}}`.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::desired::Revision;
use crate::job::JobSpec;
use crate::msg::{Outcome, PollReport, RunRecord};
use crate::name::{GroupName, JobName, TargetName};
use crate::PROTOCOL_VERSION;

/// Stable error codes. Never rename one: scripts branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::IntoStaticStr, strum::VariantArray)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    /// A name breaks the naming rules.
    InvalidName,
    /// The body is malformed or a field is out of range.
    InvalidRequest,
    /// A job definition was refused; the message names the field.
    InvalidJob,
    BadVersion,
    NotEnlisted,
    NotFound,
    AlreadyExists,
    /// The target did not answer (no responders): it is not running.
    Offline,
    /// The request was sent but no answer came in time.
    Timeout,
    /// Someone changed the same thing at the same time; retry.
    Conflict,
    /// No master answers the API (none running, or NATS unreachable).
    MasterUnavailable,
    /// NATS or the master failed; the message says what.
    Internal,
    /// The target has defected from this master; an operator's
    /// `musterctl target enlist` brings it back.
    Defected,
    /// The NATS server refused the request for the caller's permissions
    /// (a viewer asking for a change). Made by the client from the
    /// server's refusal, never sent by the master.
    PermissionDenied,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// An error as it travels in a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl fmt::Display) -> Self {
        Self { code, message: message.to_string() }
    }
    pub fn not_enlisted(t: &TargetName) -> Self {
        Self::new(ErrorCode::NotEnlisted, format!("target '{t}' is not enlisted (enlist it with `musterctl target enlist {t}`)"))
    }
    pub fn internal(e: impl fmt::Display) -> Self {
        Self::new(ErrorCode::Internal, e)
    }
}

impl From<crate::NameError> for ApiError {
    fn from(e: crate::NameError) -> Self {
        ApiError::new(ErrorCode::InvalidName, e)
    }
}

/// `{"v":1, ...body}`: every request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

impl<T> Request<T> {
    pub fn new(body: T) -> Self {
        Self { v: PROTOCOL_VERSION, body }
    }
}

/// `{"v":1,"ok":...}` or `{"v":1,"error":...}`: every reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply<T> {
    pub v: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl<T> Reply<T> {
    pub fn from_result(r: Result<T, ApiError>) -> Self {
        match r {
            Ok(ok) => Self { v: PROTOCOL_VERSION, ok: Some(ok), error: None },
            Err(e) => Self { v: PROTOCOL_VERSION, ok: None, error: Some(e) },
        }
    }

    /// # Errors
    /// The error the master sent, or `internal` for a reply with neither.
    pub fn into_result(self) -> Result<T, ApiError> {
        match (self.ok, self.error) {
            (_, Some(e)) => Err(e),
            (Some(ok), None) => Ok(ok),
            (None, None) => Err(ApiError::internal("reply has neither `ok` nor `error`")),
        }
    }
}

/// Every admin operation, with its subject suffix. One list, used by the
/// master to register endpoints and by clients to address them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::VariantArray)]
pub enum Op {
    TargetEnlist,
    TargetDefect,
    TargetList,
    TargetShow,
    TargetForcePoll,
    TargetForcePollMany,
    JobCreate,
    JobUpdate,
    JobDelete,
    JobList,
    JobShow,
    JobAssign,
    JobUnassign,
    JobStart,
    JobStop,
    JobEnable,
    JobDisable,
    JobStatus,
    TargetSetPoll,
    TargetSyncTime,
    TargetResync,
    GroupCreate,
    GroupDelete,
    GroupList,
    GroupAdd,
    GroupRemove,
    Instructions,
    Status,
    Exec,
}

impl Op {
    pub const ALL: &'static [Op] = <Op as strum::VariantArray>::VARIANTS;

    /// The subject suffix after `muster.api.read.` or `muster.api.admin.`
    /// (the token is [`Op::access`]'s; the whole subject is
    /// `Subjects::api`).
    pub fn subject(self) -> &'static str {
        match self {
            Op::TargetEnlist => "target.enlist",
            Op::TargetDefect => "target.defect",
            Op::TargetList => "target.list",
            Op::TargetShow => "target.show",
            Op::TargetForcePoll => "target.force-poll",
            Op::TargetForcePollMany => "target.force-poll-many",
            Op::JobCreate => "job.create",
            Op::JobUpdate => "job.update",
            Op::JobDelete => "job.delete",
            Op::JobList => "job.list",
            Op::JobShow => "job.show",
            Op::JobAssign => "job.assign",
            Op::JobUnassign => "job.unassign",
            Op::JobStart => "job.start",
            Op::JobStop => "job.stop",
            Op::JobEnable => "job.enable",
            Op::JobDisable => "job.disable",
            Op::JobStatus => "job.status",
            Op::TargetSetPoll => "target.set-poll",
            Op::TargetSyncTime => "target.sync-time",
            Op::TargetResync => "target.resync",
            Op::GroupCreate => "group.create",
            Op::GroupDelete => "group.delete",
            Op::GroupList => "group.list",
            Op::GroupAdd => "group.add",
            Op::GroupRemove => "group.remove",
            Op::Instructions => "instructions",
            Op::Status => "status",
            Op::Exec => "exec",
        }
    }

    /// Whether the operation only reads (a viewer may call it) or changes
    /// state (only an admin may). One place decides, so the server's subject
    /// permissions, the console and `musterctl` cannot disagree.
    pub fn access(self) -> Access {
        match self {
            Op::TargetList
            | Op::TargetShow
            | Op::JobList
            | Op::JobShow
            | Op::JobStatus
            | Op::GroupList
            | Op::Instructions
            | Op::Status => Access::Read,
            Op::TargetEnlist
            | Op::TargetDefect
            | Op::TargetForcePoll
            | Op::TargetForcePollMany
            | Op::JobCreate
            | Op::JobUpdate
            | Op::JobDelete
            | Op::JobAssign
            | Op::JobUnassign
            | Op::JobStart
            | Op::JobStop
            | Op::JobEnable
            | Op::JobDisable
            | Op::TargetSetPoll
            | Op::TargetSyncTime
            | Op::TargetResync
            | Op::GroupCreate
            | Op::GroupDelete
            | Op::GroupAdd
            | Op::GroupRemove
            | Op::Exec => Access::Admin,
        }
    }

    /// The endpoint name shown by `nats micro info`.
    pub fn endpoint_name(self) -> String {
        self.subject().replace('.', "-")
    }

    pub fn from_subject_suffix(s: &str) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| op.subject() == s)
    }
}

/// Who may call an [`Op`]: the viewer role reads, the admin role also changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Admin,
}

impl Access {
    /// The subject token of its operations (`muster.api.<token>.<op>`).
    pub fn token(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Admin => "admin",
        }
    }
}

/// Operations a target agent calls about itself on `muster.api.agent.<t>.<op>`.
pub const AGENT_ENLIST: &str = "enlist";
/// A target defecting itself: same effect as `musterctl target defect <t>`.
pub const AGENT_DEFECT: &str = "defect";

/// The range `set-poll` accepts, in seconds, as in SQL Server.
pub const POLL_INTERVAL_RANGE: std::ops::RangeInclusive<u64> = 10..=28_800;

// ---- request bodies -------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnlistRequest {
    pub name: TargetName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Set by an agent enlisting itself: its process instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_secs: Option<u64>,
    /// Set by an agent enlisting itself: its x25519 public key, which the
    /// master seals secret parameters for ([`crate::sealed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xkey: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    pub name: TargetName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefectRequest {
    pub name: TargetName,
    /// The target is gone for good: delete its record, consumer and queue.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    pub job: JobName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobWrite {
    pub spec: JobSpec,
}

/// Which targets an operation is about: any mix of targets and groups, or all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupName>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.groups.is_empty() && !self.all
    }
}

/// `target set-poll|sync-time|resync`: which targets get the instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostRequest {
    #[serde(flatten)]
    pub select: Selection,
    /// For `set-poll`: the new interval, within [`POLL_INTERVAL_RANGE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    pub group: GroupName,
}

/// `group add|remove GROUP TARGET...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembers {
    pub group: GroupName,
    pub targets: Vec<TargetName>,
}

/// Which rows of the download list to show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetName>,
    /// Only rows not yet downloaded.
    #[serde(default)]
    pub pending: bool,
    /// Only rows that failed on the target.
    #[serde(default)]
    pub errors: bool,
    /// Only the newest N rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSelect {
    pub job: JobName,
    #[serde(flatten)]
    pub select: Selection,
}

/// `job start` and `job stop`: a [`JobSelect`] with how long the start or
/// stop waits for a target that has not read it (its expiry). On the wire
/// it is a `JobSelect` with one more field, `expires_secs`, absent meaning
/// [`crate::desired::DEFAULT_EXPIRY`]: a plain `JobSelect` is a valid body.
/// A start also says when to answer (`reply`, absent meaning
/// [`StartReply::Polled`], what clients before the field expect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartStop {
    #[serde(flatten)]
    pub job: JobSelect,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_secs: Option<u64>,
    /// `job start` only (a stop always answers after its control requests).
    #[serde(default, skip_serializing_if = "StartReply::is_polled")]
    pub reply: StartReply,
    /// `job start --param k=v`: checked against the job's parameters.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: crate::params::Values,
}

/// When `job start` answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, strum::IntoStaticStr, strum::VariantArray)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum StartReply {
    /// Once every start is in its target's manifest: each target
    /// [`DeliveryState::Posted`]. The master force-polls the targets after
    /// answering, so online ones start now and offline ones at their next
    /// poll; the answer does not say which were online.
    Posted,
    /// After the force-polls too: each target `delivered` (it polled) or
    /// `queued` (offline or slow), which `job start --wait` needs to know
    /// whom not to wait for.
    #[default]
    Polled,
}

impl StartReply {
    pub fn is_polled(&self) -> bool {
        *self == StartReply::Polled
    }
}

/// `musterctl exec`: run a one-off command once on the selected targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    #[serde(flatten)]
    pub select: Selection,
    #[serde(flatten)]
    pub command: crate::desired::ExecCommand,
}

/// What an exec posted: the job id its runs are recorded under (one per
/// exec), and each target `delivered`, `queued` (offline) or `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecReply {
    pub job_id: Uuid,
    pub deliveries: Vec<Delivery>,
}

/// A record as a listing or a delete shows it: readable, or corrupt (its
/// bytes do not decode, e.g. written by hand into the bucket). Untagged on
/// the wire: a readable record is itself, a corrupt one `{"key": …,
/// "corrupt": "<why>"}`, so a listing without corrupt records reads as it
/// always did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Listed<T> {
    Ok(T),
    Corrupt(CorruptRecord),
}

/// A record that cannot be read: its key, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorruptRecord {
    pub key: String,
    pub corrupt: String,
}

impl<T> Listed<T> {
    pub fn ok(&self) -> Option<&T> {
        match self {
            Listed::Ok(t) => Some(t),
            Listed::Corrupt(_) => None,
        }
    }

    pub fn into_ok(self) -> Option<T> {
        match self {
            Listed::Ok(t) => Some(t),
            Listed::Corrupt(_) => None,
        }
    }
}

// ---- reply bodies -----------------------------------------------------------------

/// Where a posted instruction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::IntoStaticStr, strum::VariantArray)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum InstrStatus {
    /// Posted, not yet downloaded.
    Pending,
    Applied,
    Failed,
    /// Removed before download (resync or forced defection).
    Dropped,
}

impl InstrStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One row of the download list (`muster-instructions`, key `<t>.<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstrRow {
    /// UUIDv7: sorting by id is sorting by posting order.
    pub id: Uuid,
    pub target: TargetName,
    pub op: String,
    #[serde(default)]
    pub job: Option<JobName>,
    pub posted_at: DateTime<Utc>,
    pub status: InstrStatus,
    /// When the target downloaded and applied (or failed) it.
    #[serde(default)]
    pub applied_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub error: Option<String>,
    /// The manifest revision that carried this change; `None` for a row of
    /// the previous design (an instruction on `MUSTER_ASSIGN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Revision>,
}

/// A target group and the jobs assigned to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub name: GroupName,
    pub members: Vec<TargetName>,
    pub jobs: Vec<JobName>,
    pub created_at: DateTime<Utc>,
}

/// The instructions one post made (`set-poll`, `sync-time`, `resync`, group changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posted {
    pub target: TargetName,
    /// The operations posted, in order.
    pub ops: Vec<String>,
    /// Pending instructions dropped first (resync).
    #[serde(default)]
    pub dropped: u64,
}

/// `musterctl status`: the whole installation on one screen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSummary {
    /// How many targets have each status (`normal`, `blocked`, ...).
    pub targets_by_status: std::collections::BTreeMap<String, u64>,
    /// Every target whose status is not `normal`.
    pub attention: Vec<TargetInfo>,
    pub jobs: u64,
    pub groups: u64,
    /// Last outcomes per job and target that did not succeed.
    pub failing: Vec<JobTargetStatus>,
    /// Instructions posted and not yet downloaded, over every target.
    pub pending_instructions: u64,
    /// Download-list rows that failed on their target.
    pub failed_instructions: u64,
}

/// A master replica that answered the Service API's `$SRV.PING`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterSeen {
    pub id: String,
    pub version: String,
}

/// A target's health, as in SQL Server's "Manage Target Servers" status tab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::VariantArray)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum TargetStatus {
    Normal,
    /// Enlisted, never polled yet.
    NeverPolled,
    /// No poll for 3 × its poll interval.
    SuspectedOffline,
    /// An instruction failed to apply (see the download list).
    Blocked,
    /// Its agent reports no applied revision: a previous version, still
    /// reading `MUSTER_ASSIGN` (upgrade it).
    Outdated,
    /// It has defected; its manifest says so until it is enlisted again.
    Defected,
}

impl TargetStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub name: TargetName,
    #[serde(default)]
    pub location: String,
    pub enlisted_at: DateTime<Utc>,
    /// What the agent reported at its last poll, else the registry's.
    pub poll_interval_secs: u64,
    pub status: TargetStatus,
    /// Why it is blocked: the last instruction that failed to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    pub last_poll: Option<DateTime<Utc>>,
    /// The target's clock at its last poll.
    pub local_time: Option<DateTime<Utc>>,
    pub clock_skew_ms: Option<i64>,
    pub agent_version: Option<String>,
    /// Instructions posted and not yet downloaded.
    pub unread: u64,
    #[serde(default)]
    pub groups: Vec<GroupName>,
    /// Bad instructions and control requests its agent refused since it
    /// started, from its last poll report.
    #[serde(default)]
    pub bad_instructions: u64,
    #[serde(default)]
    pub bad_control: u64,
    /// The manifest revision its agent reported applied at its last poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<Revision>,
    /// The revision of its published manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_revision: Option<Revision>,
    /// The target's time zone as its agent reported it (an IANA name), for
    /// showing its `local_time`; empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timezone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: Uuid,
    pub revision: u64,
    pub spec: JobSpec,
    pub targets: Vec<TargetName>,
    pub groups: Vec<GroupName>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Header on each part of an API reply too big for one NATS message:
/// `<part>/<parts>`, counted from 1. The parts arrive in order on the
/// request's reply subject; their bodies, concatenated, are the reply.
pub const CHUNK_HEADER: &str = "Muster-Chunk";

/// Parses a [`CHUNK_HEADER`] value into `(part, parts)`.
pub fn parse_chunk(value: &str) -> Option<(usize, usize)> {
    let (part, parts) = value.split_once('/')?;
    let (part, parts) = (part.parse().ok()?, parts.parse().ok()?);
    (1..=parts).contains(&part).then_some((part, parts))
}

/// What happened to a force-poll of one target, in the answer to
/// `target.force-poll-many` (body: a [`Selection`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForcePollOutcome {
    pub target: TargetName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<PollReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// The answer to `job.start` / `job.stop`: what happened per target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub target: TargetName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
    pub state: DeliveryState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// What became of a start or stop on one target.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::IntoStaticStr, strum::Display, strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DeliveryState {
    /// The start is in the target's manifest (durably); the answer did not
    /// wait to learn whether the target polled ([`StartReply::Posted`]).
    Posted,
    /// The target heard it now (it polled, or took the stop on its control subject).
    Delivered,
    /// The target is offline or slow: it gets it at its next poll.
    Queued,
    /// Neither: the message says why.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Last outcome of a job on one target (SQL Server's `sysjobservers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTargetStatus {
    pub job: JobName,
    pub target: TargetName,
    pub outcome: Outcome,
    pub run_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    #[serde(default)]
    pub message: String,
    /// The outcome of the job's finished run on this target before this
    /// run, when known (what a recovery is told by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Outcome>,
}

impl JobTargetStatus {
    /// The last finished outcome this status knows: its own if its run has
    /// ended, else the one before.
    pub fn last_final(&self) -> Option<Outcome> {
        if self.outcome.is_final() {
            Some(self.outcome)
        } else {
            self.previous
        }
    }
}

impl From<&RunRecord> for JobTargetStatus {
    fn from(r: &RunRecord) -> Self {
        Self {
            job: r.job.clone(),
            target: r.target.clone(),
            outcome: r.outcome,
            run_id: r.run_id,
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_ms: r.duration_ms(),
            message: r.message.clone(),
            previous: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_keeps_its_wire_form() {
        for (state, name) in [
            (DeliveryState::Posted, "posted"),
            (DeliveryState::Delivered, "delivered"),
            (DeliveryState::Queued, "queued"),
            (DeliveryState::Failed, "failed"),
        ] {
            let d = Delivery { target: TargetName::new("web01").unwrap(), run_id: None, state, message: String::new() };
            let text = format!(r#"{{"target":"web01","state":"{name}"}}"#);
            assert_eq!(serde_json::to_string(&d).unwrap(), text);
            assert_eq!(serde_json::from_str::<Delivery>(&text).unwrap(), d);
            assert_eq!(state.to_string(), name);
        }
    }

    #[test]
    fn every_name_is_the_serde_name() {
        fn check<T: Serialize + strum::VariantArray + Copy + Into<&'static str>>() {
            for v in T::VARIANTS {
                assert_eq!(serde_json::to_value(v).unwrap(), Into::<&str>::into(*v));
            }
        }
        check::<ErrorCode>();
        check::<InstrStatus>();
        check::<TargetStatus>();
        check::<DeliveryState>();
        check::<StartReply>();
        assert_eq!(DeliveryState::Queued.to_string(), "queued");
        assert_eq!(ErrorCode::MasterUnavailable.as_str(), "master_unavailable");
    }

    #[test]
    fn chunk_headers_parse_only_when_sane() {
        assert_eq!(parse_chunk("1/3"), Some((1, 3)));
        assert_eq!(parse_chunk("3/3"), Some((3, 3)));
        for bad in ["0/3", "4/3", "1/0", "x/2", "2", ""] {
            assert_eq!(parse_chunk(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_plain_job_select_is_a_start_stop_body_with_the_default_expiry_and_reply() {
        let select = JobSelect {
            job: JobName::new("j").unwrap(),
            select: Selection { targets: vec![TargetName::new("web01").unwrap()], groups: Vec::new(), all: false },
        };
        let plain: StartStop = serde_json::from_slice(&serde_json::to_vec(&select).unwrap()).unwrap();
        assert_eq!(
            plain,
            StartStop { job: select.clone(), expires_secs: None, reply: StartReply::Polled, params: Default::default() }
        );
        let with =
            StartStop { job: select.clone(), expires_secs: Some(600), reply: StartReply::Posted, params: Default::default() };
        let json = serde_json::to_value(&with).unwrap();
        assert_eq!(json["expires_secs"], 600);
        assert_eq!(json["reply"], "posted");
        let polled = serde_json::to_value(StartStop { reply: StartReply::Polled, ..with.clone() }).unwrap();
        assert!(polled.get("reply").is_none(), "the default is left out, as an older client sends it");
        assert_eq!(json["job"], "j", "one flat body");
        assert_eq!(serde_json::from_value::<StartStop>(json).unwrap(), with);
        let back: JobSelect = serde_json::from_value(serde_json::to_value(&with).unwrap()).unwrap();
        assert_eq!(back, select, "an older master reads it as a JobSelect");
    }
}
