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

pub use muster_runtime::zone::format_in;

/// `t` in the zone chosen for this run.
pub fn format(t: DateTime<Utc>) -> String {
    format_in(t, shown())
}

/// A target's clock in the zone its agent reported (an IANA name), else
/// in the zone chosen for this run.
pub fn format_at_target(t: DateTime<Utc>, target_zone: &str) -> String {
    muster_runtime::zone::format_at_target(t, target_zone, shown())
}
