//! How a time is written for people: to the second, in a zone, labelled
//! with the zone (`2026-12-02 08:30:00 CET`), because a time without its
//! zone is a guess. `musterctl` shows times in the operator's zone; the
//! web console in UTC; both show a target's own clock in the target's zone.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// `t` to the second in `zone`, labelled with the zone's abbreviation.
pub fn format_in(t: DateTime<Utc>, zone: Tz) -> String {
    t.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S %Z").to_string()
}

/// A target's clock in the zone its agent reported (an IANA name, as in
/// its poll report), else in `fallback`.
pub fn format_at_target(t: DateTime<Utc>, target_zone: &str, fallback: Tz) -> String {
    format_in(t, target_zone.trim_start_matches(':').parse::<Tz>().unwrap_or(fallback))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_their_zone() {
        let t: DateTime<Utc> = "2026-12-02T07:30:00Z".parse().unwrap();
        assert_eq!(format_in(t, Tz::UTC), "2026-12-02 07:30:00 UTC");
        assert_eq!(format_in(t, Tz::Europe__Berlin), "2026-12-02 08:30:00 CET");
        let summer: DateTime<Utc> = "2026-07-01T12:00:00Z".parse().unwrap();
        assert_eq!(format_in(summer, Tz::America__New_York), "2026-07-01 08:00:00 EDT");
        assert_eq!(format_at_target(t, "Asia/Tokyo", Tz::UTC), "2026-12-02 16:30:00 JST");
        assert_eq!(format_at_target(t, "", Tz::UTC), "2026-12-02 07:30:00 UTC", "no zone reported");
    }
}
