//! Which time zone musterctl shows times in, and how a time is written.
//!
//! Why: an operator reads times against their own clock, and a time
//! without its zone is a guess. Times are shown in the operator's zone
//! (`TZ`, else the system's), or in UTC with `--utc`, and always labelled
//! (`2026-12-02 08:30:00 CET`). A target's own clock (`LOCAL TIME`) is
//! shown in the target's zone when its agent reported one. JSON output
//! stays RFC 3339 in UTC whatever the zone.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

static SHOWN: OnceLock<Tz> = OnceLock::new();

/// Chooses the zone times are shown in: UTC with `utc`, else `TZ` (an IANA
/// name), else the system's zone, else UTC. The first call wins.
pub fn choose(utc: bool) {
    let zone = if utc {
        Tz::UTC
    } else {
        std::env::var("TZ")
            .ok()
            .map(|tz| tz.trim_start_matches(':').to_owned())
            .or_else(|| iana_time_zone::get_timezone().ok())
            .and_then(|name| name.parse::<Tz>().ok())
            .unwrap_or(Tz::UTC)
    };
    let _ = SHOWN.set(zone);
}

/// The zone times are shown in (UTC before [`choose`]).
pub fn shown() -> Tz {
    SHOWN.get().copied().unwrap_or(Tz::UTC)
}

/// `t` to the second in `zone`, labelled with the zone's abbreviation.
pub fn format_in(t: DateTime<Utc>, zone: Tz) -> String {
    t.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S %Z").to_string()
}

/// `t` in the zone chosen for this run.
pub fn format(t: DateTime<Utc>) -> String {
    format_in(t, shown())
}

/// A target's clock in the zone its agent reported (an IANA name), else
/// in the zone chosen for this run.
pub fn format_at_target(t: DateTime<Utc>, target_zone: &str) -> String {
    format_in(t, target_zone.trim_start_matches(':').parse::<Tz>().unwrap_or_else(|_| shown()))
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
        assert_eq!(format_at_target(t, "Asia/Tokyo"), "2026-12-02 16:30:00 JST");
    }
}
