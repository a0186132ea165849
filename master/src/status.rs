//! The target status rule: what `musterctl target list` and `status` say of a
//! target (`normal`, `never_polled`, `suspected_offline`, `blocked`).
//!
//! It is a rule of the model, not of the API that shows it, so it lives here
//! as a pure function of the registry record, the latest poll report and the
//! time, computed when asked and never stored.

use chrono::{DateTime, Utc};
use muster_shared::api::TargetStatus;

use crate::store::{LastPoll, TargetRecord};

/// How many poll intervals without a poll report make a target suspected
/// offline.
pub const OFFLINE_AFTER_INTERVALS: i64 = 3;

/// The poll interval a target uses: the one its agent reported last wins
/// over the record's, since a `set-poll` not yet downloaded has not changed
/// anything yet.
pub fn poll_interval_secs(record: &TargetRecord, poll: Option<&LastPoll>) -> u64 {
    poll.map_or(record.poll_interval_secs, |p| p.report.poll_interval_secs)
}

/// A target's status at `now`:
/// - `defected` once told to defect, until it applied that (its record
///   then goes);
/// - `blocked` while its latest instruction record had a failure;
/// - `never_polled` before its first poll report;
/// - `suspected_offline` when the server received its last poll report more
///   than [`OFFLINE_AFTER_INTERVALS`] × the interval the agent reported ago;
/// - `outdated` when its latest poll report says no desired-state revision
///   applied: an agent of the previous design, which reads no manifest
///   (see the README's "Upgrading");
/// - `normal` otherwise.
pub fn target_status(record: &TargetRecord, poll: Option<&LastPoll>, now: DateTime<Utc>) -> TargetStatus {
    if record.defected_at.is_some() {
        return TargetStatus::Defected;
    }
    if record.blocked.is_some() {
        return TargetStatus::Blocked;
    }
    let Some(poll) = poll else {
        return TargetStatus::NeverPolled;
    };
    let interval_ms =
        i64::try_from(poll_interval_secs(record, Some(poll))).unwrap_or(i64::MAX).saturating_mul(OFFLINE_AFTER_INTERVALS * 1_000);
    if (now - poll.received_at).num_milliseconds() > interval_ms {
        TargetStatus::SuspectedOffline
    } else if poll.report.applied_revision.is_none() {
        TargetStatus::Outdated
    } else {
        TargetStatus::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use muster_shared::msg::PollReport;
    use muster_shared::name::TargetName;
    use uuid::Uuid;

    fn record(poll_interval_secs: u64) -> TargetRecord {
        TargetRecord::new(TargetName::new("web01").unwrap(), poll_interval_secs, Utc::now())
    }

    fn polled(poll_interval_secs: u64, received_at: DateTime<Utc>) -> LastPoll {
        let report: PollReport = serde_json::from_value(serde_json::json!({
            "v": 1, "target": "web01", "instance": Uuid::nil(), "agent_version": "test", "polled_at": received_at,
            "poll_interval_secs": poll_interval_secs, "applied": 0, "failed": 0, "jobs": 0,
            "applied_revision": {"epoch": Uuid::nil(), "revision": 1, "changes": 1},
        }))
        .unwrap();
        LastPoll { report, received_at }
    }

    #[test]
    fn a_target_that_never_polled_is_never_polled() {
        assert_eq!(target_status(&record(60), None, Utc::now()), TargetStatus::NeverPolled);
    }

    #[test]
    fn a_target_that_polled_within_three_intervals_is_normal() {
        let now = Utc::now();
        let poll = polled(10, now - Duration::seconds(30));
        assert_eq!(target_status(&record(60), Some(&poll), now), TargetStatus::Normal);
    }

    #[test]
    fn a_target_silent_for_over_three_of_its_reported_intervals_is_suspected_offline() {
        let now = Utc::now();
        // The agent's reported interval (10 s) counts, not the record's (60 s).
        let poll = polled(10, now - Duration::milliseconds(30_001));
        assert_eq!(target_status(&record(60), Some(&poll), now), TargetStatus::SuspectedOffline);
    }

    #[test]
    fn a_blocked_target_is_blocked_whatever_its_polls() {
        let mut blocked = record(60);
        blocked.blocked = Some("start_job 0190: no such job".into());
        let now = Utc::now();
        assert_eq!(target_status(&blocked, None, now), TargetStatus::Blocked);
        assert_eq!(target_status(&blocked, Some(&polled(60, now)), now), TargetStatus::Blocked);
        assert_eq!(target_status(&blocked, Some(&polled(1, now - Duration::hours(1))), now), TargetStatus::Blocked);
    }

    #[test]
    fn an_agent_that_reports_no_applied_revision_is_outdated() {
        let now = Utc::now();
        let mut old = polled(60, now);
        old.report.applied_revision = None;
        assert_eq!(target_status(&record(60), Some(&old), now), TargetStatus::Outdated);
    }

    #[test]
    fn a_target_told_to_defect_is_defected_until_its_record_goes() {
        let mut d = record(60);
        d.defected_at = Some(Utc::now());
        d.blocked = Some("x".into());
        let now = Utc::now();
        assert_eq!(target_status(&d, None, now), TargetStatus::Defected);
        assert_eq!(target_status(&d, Some(&polled(60, now)), now), TargetStatus::Defected);
    }

    #[test]
    fn the_reported_interval_wins_over_the_record() {
        let now = Utc::now();
        assert_eq!(poll_interval_secs(&record(60), None), 60);
        assert_eq!(poll_interval_secs(&record(60), Some(&polled(5, now))), 5);
    }

    #[test]
    fn a_huge_interval_does_not_overflow() {
        let now = Utc::now();
        let poll = polled(u64::MAX, now - Duration::days(365));
        assert_eq!(target_status(&record(60), Some(&poll), now), TargetStatus::Normal);
    }
}
