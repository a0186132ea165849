//! Events: facts the master tells operators about, once each, on
//! `<prefix>.event.<kind>.<target>` (stream `MUSTER_EVENTS`, kept a week and
//! at most [`EVENTS_MAX_BYTES`]).
//!
//! Only the master publishes them (a target's permissions name no event
//! subject), from where it learns each fact: the results drain, which
//! handles each record on one replica at a time. A record handled again (a
//! master killed before its batch was acked, the batch redelivered to
//! another replica) derives the same event with the same message id
//! ([`Event::msg_id`]), which the stream's duplicate window drops: with two
//! masters, an event is stored once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::name::{JobName, TargetName};

/// How long events are kept.
pub const EVENTS_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most bytes of events kept; the oldest go first.
pub const EVENTS_MAX_BYTES: i64 = 64 * 1024 * 1024;

/// How long a re-derived event is recognised as one already stored: longer
/// than a batch can wait for redelivery (the results consumer's ack wait).
pub const EVENTS_DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display, strum::EnumString)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum EventKind {
    /// A run ended `failed` or `timed_out`.
    JobFailed,
    /// A run succeeded after the job's previous finished run on that target
    /// failed.
    JobRecovered,
    /// A target refused a manifest revision, or could not apply some of its
    /// jobs (an applied record with a failure): it is blocked.
    TargetBlocked,
}

/// One event, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    pub kind: EventKind,
    pub target: TargetName,
    /// The job, for a job's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobName>,
    /// The run, for a job's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
    /// What the fact is known by: the run id, or the applied record's id
    /// (target, epoch, revision).
    pub id: String,
    /// When the fact happened (the run's end, the applied record's time).
    pub at: DateTime<Utc>,
    /// For people: the run's message, or why the target is blocked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Event {
    /// The same fact always gets the same id: `<kind>.<id>`.
    pub fn msg_id(&self) -> String {
        format!("{}.{}", self.kind, self.id)
    }
}
