//! Schedule computations (pure: the caller passes the clock).

use chrono::{DateTime, Utc};

use crate::job::Schedule;

/// A refused schedule: the field (relative to the schedule) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    pub field: String,
    pub message: String,
}

/// Checks that exactly one kind is set and that cron, time zone and times parse.
///
/// # Errors
/// The offending field and why.
pub fn validate(_s: &Schedule) -> Result<(), ScheduleError> {
    Ok(())
}

/// The first instant strictly after `after` at which the schedule fires.
pub fn next_after(_s: &Schedule, _after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    None
}
