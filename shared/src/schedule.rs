//! Schedule computations (pure: the caller passes the clock).
//!
//! A [`Schedule`] (the wire form people write in job files) has exactly one
//! trigger:
//!
//! * `cron`: a 5-field (`minute hour dom month dow`) or 6-field
//!   (`second minute hour dom month dow`) pattern, parsed by `croner`
//!   (nicknames such as `@daily`, `L`, `W`, `#` are accepted; day-of-month and
//!   day-of-week are OR-ed like Vixie cron). It is read on the wall clock of
//!   `timezone` (IANA name, default UTC).
//! * `every_secs`: every N seconds (N >= 1).
//!   * Without `between`, fires are anchored on the Unix epoch: fires are the
//!     instants whose Unix time is a multiple of N, so `every_secs: 300` fires
//!     at :00, :05, :10, ... and is stable across restarts. `timezone` is
//!     refused here (it would change nothing).
//!   * With `between: [start, end]` (`HH:MM` or `HH:MM:SS`, on the wall clock
//!     of `timezone`), it fires each day at `start`, `start + N`, ... up to and
//!     including `end`. If `end < start` the window wraps midnight (it starts
//!     on one day and ends on the next); `start == end` is refused. The steps
//!     are wall-clock steps from `start`, so the fire times are the same local
//!     times every day.
//! * `at`: once, at that instant.
//! * `on_start: true`: fired by the agent when it starts, never by time
//!   ([`next_after`] returns `None`; see [`fires_on_start`]).
//!
//! `active_from` / `active_until` bound every kind (both inclusive): no fire
//! before / after them. They only filter; they do not move the `every_secs`
//! anchor. `enabled: false` means no fire at all.
//!
//! # Daylight saving time
//!
//! Wall-clock schedules (`cron`, `every_secs` + `between`) first compute the
//! next matching *local* time, then map it to an instant. The policy is "each
//! matching local time fires exactly once":
//!
//! * **Spring forward (gap)**: a local time that does not exist that day (e.g.
//!   02:30 in Europe/Berlin on 2026-03-29, when clocks jump from 02:00 CET to
//!   03:00 CEST) fires once, at the first valid instant after the gap (03:00
//!   CEST = 01:00 UTC), like Vixie cron and SQL Server Agent. Several local
//!   times inside the same gap (e.g. `*/15` at 02:00, 02:15, ...) and a match
//!   at the end of the gap (03:00) all collapse into that single fire.
//! * **Fall back (overlap)**: a local time that occurs twice (02:30 in
//!   Europe/Berlin on 2026-10-25) fires once, at its *first* occurrence
//!   (02:30 CEST = 00:30 UTC); the repeated hour does not fire again. A
//!   consequence: an hourly or `*/15` cron in such a zone has a one-hour pause
//!   on that night. Schedules that need a strict real-time interval should use
//!   `every_secs` without `between` (or a cron in UTC).
//!
//! croner is used only as a wall-clock matcher (it is fed naive local times
//! dressed as UTC); the gap/overlap mapping above is done here, because
//! croner's own handling would return the first occurrence of an ambiguous
//! time even when asked for a time after the second one.
//!
//! # Missed runs
//!
//! Not this module's concern: it only answers "when is the first fire strictly
//! after this instant". The agent's policy (`muster_target::scheduler`) is to
//! skip fires missed while it was down, start a job once when it wakes late
//! with several fires due, and run `on_start` schedules once at start.
//!
//! # Cost
//!
//! Every computation jumps: `every_secs` is O(1) arithmetic, windows check at
//! most three days, cron searches field by field (croner), and DST edges are
//! resolved by binary search. Nothing iterates second by second.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use croner::Cron;

use crate::job::Schedule;

/// A refused schedule: the field (relative to the schedule) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ScheduleError {
    pub field: String,
    pub message: String,
}

impl ScheduleError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_owned(), message: message.into() }
    }
}

/// The trigger of a checked schedule.
#[derive(Debug, Clone)]
pub enum ScheduleKind {
    /// A cron pattern matched against the wall clock of `tz`.
    Cron {
        /// The parsed pattern (seconds optional).
        cron: Box<Cron>,
        /// The zone whose wall clock the pattern is read in.
        tz: Tz,
    },
    /// Every `secs` seconds, at Unix times that are multiples of `secs`.
    Every {
        /// The period, at least 1.
        secs: u64,
    },
    /// Every `secs` seconds from `window.start` up to `window.end`, each day.
    EveryBetween {
        /// The period, at least 1.
        secs: u64,
        /// The daily local window.
        window: DailyWindow,
    },
    /// Once, at this instant.
    At(DateTime<Utc>),
    /// Fired by the agent when it starts; never by time.
    OnStart,
}

/// A daily window of local time, for `every_secs` + `between`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyWindow {
    /// First fire of the day (local).
    pub start: NaiveTime,
    /// Last possible fire (local, inclusive); on the next day if before `start`.
    pub end: NaiveTime,
    /// The zone whose wall clock `start` and `end` are read in.
    pub tz: Tz,
}

impl DailyWindow {
    /// Whether the window starts on one day and ends on the next.
    #[must_use]
    pub fn wraps_midnight(&self) -> bool {
        self.end < self.start
    }
}

/// A checked schedule, ready for repeated [`ParsedSchedule::next_after`] calls.
#[derive(Debug, Clone)]
pub struct ParsedSchedule {
    /// The trigger.
    pub kind: ScheduleKind,
    /// No fire before this instant (inclusive bound).
    pub active_from: Option<DateTime<Utc>>,
    /// No fire after this instant (inclusive bound).
    pub active_until: Option<DateTime<Utc>>,
    /// `false`: never fires.
    pub enabled: bool,
}

impl ParsedSchedule {
    /// Whether `t` lies within `active_from..=active_until` (ignores `enabled`).
    #[must_use]
    pub fn is_active_at(&self, t: DateTime<Utc>) -> bool {
        self.active_from.is_none_or(|from| t >= from) && self.active_until.is_none_or(|until| t <= until)
    }

    /// Whether this is an enabled `on_start` schedule, active at `now`.
    #[must_use]
    pub fn fires_on_start(&self, now: DateTime<Utc>) -> bool {
        self.enabled && matches!(self.kind, ScheduleKind::OnStart) && self.is_active_at(now)
    }

    /// The first instant strictly after `after` at which the schedule fires;
    /// see [`next_after`].
    #[must_use]
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.enabled {
            return None;
        }
        // Search strictly after `from`; moving `from` to just before
        // `active_from` makes a fire exactly at `active_from` possible.
        let mut from = after;
        if let Some(start) = self.active_from {
            if start > after {
                from = start.checked_sub_signed(Duration::nanoseconds(1)).unwrap_or(after);
            }
        }
        let next = self.kind.next_after(from)?;
        if self.active_until.is_some_and(|until| next > until) {
            return None;
        }
        Some(next)
    }
}

impl ScheduleKind {
    /// The next fire strictly after `after`, ignoring the active window.
    fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Cron { cron, tz } => next_wall(*tz, after, |cursor| cron_next(cron, cursor)),
            Self::Every { secs } => epoch_next(*secs, after),
            Self::EveryBetween { secs, window } => next_wall(window.tz, after, |cursor| window_next(*secs, window, cursor)),
            Self::At(at) => (*at > after).then_some(*at),
            Self::OnStart => None,
        }
    }
}

const KINDS: &str = "set exactly one of cron, every_secs, at or on_start: true";

/// Checks a schedule and returns its parsed form.
///
/// # Errors
/// The offending field (relative to the schedule) and why: `cron` (also when
/// no trigger is set), `every_secs`, `at`, `on_start` (two triggers set: the
/// second one is named), `timezone`, `between`, `active_until`.
pub fn parse(s: &Schedule) -> Result<ParsedSchedule, ScheduleError> {
    let mut set = Vec::new();
    if s.cron.is_some() {
        set.push("cron");
    }
    if s.every_secs.is_some() {
        set.push("every_secs");
    }
    if s.at.is_some() {
        set.push("at");
    }
    if s.on_start {
        set.push("on_start");
    }
    match set.as_slice() {
        [] => return Err(ScheduleError::new("cron", format!("no trigger: {KINDS}"))),
        [_] => {}
        [first, second, ..] => {
            return Err(ScheduleError::new(second, format!("cannot be combined with {first}: {KINDS}")));
        }
    }

    if s.between.is_some() && s.every_secs.is_none() {
        return Err(ScheduleError::new("between", "is only allowed with every_secs"));
    }
    let tz = match &s.timezone {
        None => Tz::UTC,
        Some(name) => {
            if s.cron.is_none() && s.between.is_none() {
                return Err(ScheduleError::new(
                    "timezone",
                    format!("is only used with cron, or with every_secs and between (not with {})", set[0]),
                ));
            }
            Tz::from_str(name).map_err(|_| {
                ScheduleError::new(
                    "timezone",
                    format!("unknown time zone '{name}' (expected an IANA name such as Europe/Berlin or UTC)"),
                )
            })?
        }
    };
    if let (Some(from), Some(until)) = (s.active_from, s.active_until) {
        if until < from {
            return Err(ScheduleError::new(
                "active_until",
                format!("{} is before active_from {}", until.to_rfc3339(), from.to_rfc3339()),
            ));
        }
    }

    let kind = if let Some(pattern) = &s.cron {
        let cron = Cron::new(pattern)
            .with_seconds_optional()
            .parse()
            .map_err(|e| ScheduleError::new("cron", cron_refusal(pattern, &e)))?;
        // A pattern such as "0 0 30 2 *" parses but never matches.
        let probe = DateTime::<Utc>::UNIX_EPOCH;
        if cron.find_next_occurrence(&probe, false).is_err() {
            return Err(ScheduleError::new("cron", format!("'{pattern}' never matches a real date (e.g. 30 February)")));
        }
        ScheduleKind::Cron { cron: Box::new(cron), tz }
    } else if let Some(secs) = s.every_secs {
        if secs == 0 {
            return Err(ScheduleError::new("every_secs", "must be at least 1"));
        }
        match &s.between {
            None => ScheduleKind::Every { secs },
            Some([start, end]) => {
                let start = parse_time_of_day(start)?;
                let end = parse_time_of_day(end)?;
                if start == end {
                    return Err(ScheduleError::new("between", "start and end are equal; for one run a day use cron"));
                }
                ScheduleKind::EveryBetween { secs, window: DailyWindow { start, end, tz } }
            }
        }
    } else if let Some(at) = s.at {
        ScheduleKind::At(at)
    } else {
        ScheduleKind::OnStart
    };

    Ok(ParsedSchedule { kind, active_from: s.active_from, active_until: s.active_until, enabled: s.enabled })
}

/// Checks that exactly one kind is set and that cron, time zone and times parse.
///
/// # Errors
/// The offending field and why (see [`parse`]).
pub fn validate(s: &Schedule) -> Result<(), ScheduleError> {
    parse(s).map(|_| ())
}

/// The first instant strictly after `after` at which the schedule fires, or
/// `None` if it never fires again (past `at`, past `active_until`, disabled,
/// invalid, or `on_start`-only: `on_start` schedules are fired by the agent at
/// start, not by time). DST policy: see the module documentation.
#[must_use]
pub fn next_after(s: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    parse(s).ok()?.next_after(after)
}

/// Whether `s` is a valid, enabled `on_start` schedule active at `now`: the
/// agent runs the job once when it starts if so.
#[must_use]
pub fn fires_on_start(s: &Schedule, now: DateTime<Utc>) -> bool {
    parse(s).is_ok_and(|p| p.fires_on_start(now))
}

fn parse_time_of_day(text: &str) -> Result<NaiveTime, ScheduleError> {
    let bad = || ScheduleError::new("between", format!("'{text}' is not a time of day; use HH:MM or HH:MM:SS (24-hour clock)"));
    let time =
        NaiveTime::parse_from_str(text, "%H:%M:%S").or_else(|_| NaiveTime::parse_from_str(text, "%H:%M")).map_err(|_| bad())?;
    // chrono reads ":60" as a leap second; refuse it.
    if time.nanosecond() >= 1_000_000_000 {
        return Err(bad());
    }
    Ok(time)
}

/// Every `secs` seconds on the Unix-epoch grid.
fn epoch_next(secs: u64, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let n = i64::try_from(secs).ok()?;
    // `timestamp()` is the floor (sub-second part is non-negative), so the
    // next multiple of n above it is also strictly above `after`.
    let k = after.timestamp().div_euclid(n).checked_add(1)?;
    DateTime::from_timestamp(k.checked_mul(n)?, 0)
}

/// The next cron match strictly after the local wall time `cursor`.
/// The fields of a cron pattern, in order, with the values each takes.
const CRON_FIELDS: [(&str, u32, u32); 5] =
    [("minute", 0, 59), ("hour", 0, 23), ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 7)];

/// What is wrong with a cron pattern croner refused, and what is expected:
/// which field holds a number out of its range when that is the fault.
fn cron_refusal(pattern: &str, e: &dyn fmt::Display) -> String {
    let expected = "expected 5 fields, `minute hour day-of-month month day-of-week` (or 6, with seconds first), \
                    e.g. `30 2 * * *` for 02:30 every day or `*/15 * * * 1-5` every 15 minutes on weekdays";
    let fields: Vec<&str> = pattern.split_whitespace().collect();
    let names: Vec<(&str, u32, u32)> = match fields.len() {
        5 => CRON_FIELDS.to_vec(),
        6 => std::iter::once(("second", 0, 59)).chain(CRON_FIELDS).collect(),
        0 => return format!("the pattern is empty: {expected}"),
        n => return format!("'{pattern}' has {n} field(s): {expected}"),
    };
    for (field, (name, lo, hi)) in fields.iter().zip(names) {
        // Numbers in lists and ranges; a step (`/15`) is a count, not a value.
        let values = field.split(',').flat_map(|part| part.split('/').next().unwrap_or_default().split('-'));
        if let Some(bad) = values.filter_map(|v| v.parse::<u32>().ok()).find(|v| !(lo..=hi).contains(v)) {
            return format!("'{pattern}': the {name} field '{field}' has {bad}; a {name} is {lo} to {hi} ({expected})");
        }
    }
    format!("'{pattern}' is not a cron pattern ({e}): {expected}")
}

fn cron_next(cron: &Cron, cursor: NaiveDateTime) -> Option<NaiveDateTime> {
    // Whole seconds: a match after the truncated cursor is a whole second,
    // hence also after the cursor itself.
    let start = cursor.with_nanosecond(0)?.and_utc();
    cron.find_next_occurrence(&start, false).ok().map(|t| t.naive_utc())
}

/// The next fire of a daily window strictly after the local wall time `cursor`.
fn window_next(secs: u64, window: &DailyWindow, cursor: NaiveDateTime) -> Option<NaiveDateTime> {
    let n = i64::try_from(secs).ok()?;
    let today = cursor.date();
    let mut best: Option<NaiveDateTime> = None;
    // The window that began yesterday may still be open (wrap), today's may be
    // open or ahead, tomorrow's always starts after the cursor.
    for day in [today.pred_opt(), Some(today), today.succ_opt()].into_iter().flatten() {
        let start = day.and_time(window.start);
        let end = if window.wraps_midnight() {
            match day.succ_opt() {
                Some(next) => next.and_time(window.end),
                None => continue,
            }
        } else {
            day.and_time(window.end)
        };
        let candidate = if cursor < start {
            start
        } else {
            let elapsed = (cursor - start).num_seconds(); // floor, as cursor >= start
            let steps = elapsed / n + 1;
            let Some(offset) = steps.checked_mul(n).and_then(Duration::try_seconds) else { continue };
            let Some(t) = start.checked_add_signed(offset) else { continue };
            t
        };
        if candidate > cursor && candidate <= end && best.is_none_or(|b| candidate < b) {
            best = Some(candidate);
        }
    }
    best
}

/// Runs a wall-clock generator (`next(cursor)` = first matching local time
/// strictly after `cursor`) and maps its result to an instant strictly after
/// `after`, applying the DST policy of the module documentation.
fn next_wall(tz: Tz, after: DateTime<Utc>, next: impl Fn(NaiveDateTime) -> Option<NaiveDateTime>) -> Option<DateTime<Utc>> {
    let mut cursor = after.with_timezone(&tz).naive_local();
    // In the second pass of a repeated (fall-back) hour, the local times left
    // in that hour have already fired on their first occurrence: skip them.
    if let LocalResult::Ambiguous(first, _) = tz.from_local_datetime(&cursor) {
        if first.with_timezone(&Utc) < after {
            cursor = fold_end(tz, cursor) - Duration::nanoseconds(1);
        }
    }
    // One round suffices in practice; the loop is a guard.
    for _ in 0..8 {
        let local = next(cursor)?;
        let instant = resolve_local(tz, local)?;
        if instant > after {
            return Some(instant);
        }
        cursor = local;
    }
    None
}

/// The instant of a local wall time: the only one, the first of two
/// (fall-back), or the first instant after the gap (spring-forward).
fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
        LocalResult::None => gap_end(tz, local),
    }
}

/// Wider than any UTC offset (±14 h) plus the longest real gap (a day, Samoa 2011).
const SEARCH_SPAN_SECS: i64 = 40 * 3600;

/// The first instant whose local time is at or after `local` (which falls in a
/// gap): the end of the gap. Binary search over whole seconds.
fn gap_end(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let target = local.and_utc().timestamp();
    let local_at = |secs: i64| DateTime::from_timestamp(secs, 0).map(|t| t.with_timezone(&tz).naive_local());
    // Invariant: local_at(lo) < local <= local_at(hi).
    let (mut lo, mut hi) = (target - SEARCH_SPAN_SECS, target + SEARCH_SPAN_SECS);
    if local_at(lo)? >= local || local_at(hi)? < local {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_at(mid)? >= local {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

/// The first whole-second local time after `local` (which is ambiguous) that
/// is no longer ambiguous: the end of the repeated hour. Binary search.
fn fold_end(tz: Tz, local: NaiveDateTime) -> NaiveDateTime {
    let ambiguous = |t: NaiveDateTime| matches!(tz.from_local_datetime(&t), LocalResult::Ambiguous(..));
    let mut lo = local.with_nanosecond(0).unwrap_or(local);
    let mut hi = lo + Duration::seconds(SEARCH_SPAN_SECS);
    if !ambiguous(lo) || ambiguous(hi) {
        return local;
    }
    while (hi - lo).num_seconds() > 1 {
        let mid = lo + Duration::seconds((hi - lo).num_seconds() / 2);
        if ambiguous(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sched(json: &str) -> Schedule {
        serde_json::from_str(json).unwrap()
    }

    fn next(json: &str, after: &str) -> Option<DateTime<Utc>> {
        next_after(&sched(json), utc(after))
    }

    /// All fires in `(from, to]`, checking they strictly increase.
    fn fires(s: &Schedule, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let (mut t, to) = (utc(from), utc(to));
        let mut out = Vec::new();
        while let Some(n) = next_after(s, t) {
            assert!(n > t, "{n} not after {t}");
            if n > to {
                break;
            }
            out.push(n);
            t = n;
        }
        out
    }

    fn refuse(json: &str, field: &str, why: &str) {
        let err = validate(&sched(json)).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(why), "{why:?} not in {err}");
    }

    #[test]
    fn cron_in_utc() {
        let daily = r#"{"name":"s","cron":"30 2 * * *"}"#;
        assert_eq!(next(daily, "2026-01-01T00:00:00Z"), Some(utc("2026-01-01T02:30:00Z")));
        // Strictly after: at the fire itself, the next one is tomorrow.
        assert_eq!(next(daily, "2026-01-01T02:30:00Z"), Some(utc("2026-01-02T02:30:00Z")));
        assert_eq!(next(daily, "2026-01-01T02:29:59.999Z"), Some(utc("2026-01-01T02:30:00Z")));
        let quarter = r#"{"name":"s","cron":"*/15 * * * *","timezone":"UTC"}"#;
        assert_eq!(next(quarter, "2026-01-01T10:07:30Z"), Some(utc("2026-01-01T10:15:00Z")));
        // Six fields: seconds first.
        let secs = r#"{"name":"s","cron":"*/10 * * * * *"}"#;
        assert_eq!(next(secs, "2026-01-01T10:00:05.5Z"), Some(utc("2026-01-01T10:00:10Z")));
        assert_eq!(next(secs, "2026-01-01T10:00:10Z"), Some(utc("2026-01-01T10:00:20Z")));
        // Weekdays, month ends, nicknames.
        let monday = r#"{"name":"s","cron":"0 9 * * MON"}"#;
        assert_eq!(next(monday, "2026-03-04T12:00:00Z"), Some(utc("2026-03-09T09:00:00Z")));
        let leap = r#"{"name":"s","cron":"0 0 29 2 *"}"#;
        assert_eq!(next(leap, "2026-01-01T00:00:00Z"), Some(utc("2028-02-29T00:00:00Z")));
        let nick = r#"{"name":"s","cron":"@daily"}"#;
        assert_eq!(next(nick, "2026-01-01T10:00:00Z"), Some(utc("2026-01-02T00:00:00Z")));
    }

    #[test]
    fn cron_in_berlin_spring_forward_fires_once_after_the_gap() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST at 01:00Z; 02:30 does not exist.
        let s = sched(r#"{"name":"s","cron":"30 2 * * *","timezone":"Europe/Berlin"}"#);
        let got = fires(&s, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z");
        assert_eq!(
            got,
            vec![
                utc("2026-03-28T01:30:00Z"), // 02:30 CET
                utc("2026-03-29T01:00:00Z"), // gap: 03:00 CEST, the first instant after it
                utc("2026-03-30T00:30:00Z"), // 02:30 CEST
            ]
        );
        // Asked from inside the day, before and after the transition.
        assert_eq!(next_after(&s, utc("2026-03-29T00:59:59Z")), Some(utc("2026-03-29T01:00:00Z")));
        assert_eq!(next_after(&s, utc("2026-03-29T01:00:00Z")), Some(utc("2026-03-30T00:30:00Z")));
    }

    #[test]
    fn cron_in_berlin_fall_back_fires_on_the_first_occurrence_only() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET at 01:00Z; 02:30 happens
        // at 00:30Z (CEST) and 01:30Z (CET).
        let s = sched(r#"{"name":"s","cron":"30 2 * * *","timezone":"Europe/Berlin"}"#);
        let got = fires(&s, "2026-10-23T12:00:00Z", "2026-10-26T12:00:00Z");
        assert_eq!(
            got,
            vec![
                utc("2026-10-24T00:30:00Z"), // 02:30 CEST
                utc("2026-10-25T00:30:00Z"), // first 02:30 (CEST)
                utc("2026-10-26T01:30:00Z"), // 02:30 CET
            ]
        );
        // From inside the repeated hour, second pass (02:10 CET): not again today.
        assert_eq!(next_after(&s, utc("2026-10-25T01:10:00Z")), Some(utc("2026-10-26T01:30:00Z")));
        // From the first pass before 02:30 CEST: the first occurrence.
        assert_eq!(next_after(&s, utc("2026-10-25T00:10:00Z")), Some(utc("2026-10-25T00:30:00Z")));
    }

    #[test]
    fn hourly_cron_in_berlin_across_both_changes() {
        let s = sched(r#"{"name":"s","cron":"0 * * * *","timezone":"Europe/Berlin"}"#);
        // Spring: 01:00 CET, then 02:00 (gap) and 03:00 CEST are one fire, then 04:00 CEST.
        assert_eq!(
            fires(&s, "2026-03-28T23:30:00Z", "2026-03-29T02:00:00Z"),
            vec![utc("2026-03-29T00:00:00Z"), utc("2026-03-29T01:00:00Z"), utc("2026-03-29T02:00:00Z")]
        );
        // Fall: 02:00 CEST fires, 02:00 CET does not, then 03:00 CET.
        assert_eq!(
            fires(&s, "2026-10-24T22:30:00Z", "2026-10-25T02:00:00Z"),
            vec![utc("2026-10-24T23:00:00Z"), utc("2026-10-25T00:00:00Z"), utc("2026-10-25T02:00:00Z")]
        );
        // A whole year: every local hour exactly once, minus the one lost in spring.
        let year = fires(&s, "2025-12-31T22:59:59Z", "2026-12-31T22:59:59Z");
        assert_eq!(year.len(), 365 * 24 - 1);
        let daily = sched(r#"{"name":"s","cron":"30 2 * * *","timezone":"Europe/Berlin"}"#);
        let days = fires(&daily, "2025-12-31T23:00:00Z", "2026-12-31T23:00:00Z");
        assert_eq!(days.len(), 365);
        let mut dates: Vec<_> = days.iter().map(|t| t.with_timezone(&chrono_tz::Europe::Berlin).date_naive()).collect();
        dates.dedup();
        assert_eq!(dates.len(), 365, "one fire per local day");
    }

    #[test]
    fn cron_in_new_york() {
        // 2026-03-08: 02:00 EST -> 03:00 EDT at 07:00Z.
        let s = sched(r#"{"name":"s","cron":"30 2 * * *","timezone":"America/New_York"}"#);
        assert_eq!(
            fires(&s, "2026-03-07T00:00:00Z", "2026-03-09T12:00:00Z"),
            vec![utc("2026-03-07T07:30:00Z"), utc("2026-03-08T07:00:00Z"), utc("2026-03-09T06:30:00Z")]
        );
        // 2026-11-01: 02:00 EDT -> 01:00 EST at 06:00Z; 01:30 happens twice.
        let s = sched(r#"{"name":"s","cron":"30 1 * * *","timezone":"America/New_York"}"#);
        assert_eq!(
            fires(&s, "2026-10-31T00:00:00Z", "2026-11-02T12:00:00Z"),
            vec![utc("2026-10-31T05:30:00Z"), utc("2026-11-01T05:30:00Z"), utc("2026-11-02T06:30:00Z")]
        );
    }

    #[test]
    fn every_secs_is_anchored_on_the_epoch() {
        let s = r#"{"name":"s","every_secs":300}"#;
        assert_eq!(next(s, "2026-01-01T10:07:30Z"), Some(utc("2026-01-01T10:10:00Z")));
        assert_eq!(next(s, "2026-01-01T10:10:00Z"), Some(utc("2026-01-01T10:15:00Z")));
        assert_eq!(next(s, "2026-01-01T10:09:59.9Z"), Some(utc("2026-01-01T10:10:00Z")));
        let one = r#"{"name":"s","every_secs":1}"#;
        assert_eq!(next(one, "2026-01-01T10:00:00.5Z"), Some(utc("2026-01-01T10:00:01Z")));
        let seven = r#"{"name":"s","every_secs":7}"#;
        let t = next(seven, "2026-01-01T10:00:00Z").unwrap();
        assert_eq!(t.timestamp() % 7, 0);
        assert!(t > utc("2026-01-01T10:00:00Z") && t <= utc("2026-01-01T10:00:07Z"));
        // Before the epoch too.
        assert_eq!(next(s, "1969-12-31T23:58:00Z"), Some(utc("1970-01-01T00:00:00Z")));
        // Huge periods do not overflow.
        let huge = sched(r#"{"name":"s","every_secs":18446744073709551615}"#);
        assert_eq!(next_after(&huge, utc("2026-01-01T00:00:00Z")), None);
    }

    #[test]
    fn every_secs_between_in_utc() {
        let s = sched(r#"{"name":"s","every_secs":300,"between":["08:00","18:00"]}"#);
        let n = |t: &str| next_after(&s, utc(t));
        assert_eq!(n("2026-01-01T07:00:00Z"), Some(utc("2026-01-01T08:00:00Z")));
        assert_eq!(n("2026-01-01T08:00:00Z"), Some(utc("2026-01-01T08:05:00Z")));
        assert_eq!(n("2026-01-01T17:57:00Z"), Some(utc("2026-01-01T18:00:00Z")), "end is inclusive");
        assert_eq!(n("2026-01-01T18:00:00Z"), Some(utc("2026-01-02T08:00:00Z")));
        assert_eq!(n("2026-01-01T23:59:59Z"), Some(utc("2026-01-02T08:00:00Z")));
        assert_eq!(fires(&s, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z").len(), 121);
        // Steps count from the start, not the epoch; the end is reached only if on a step.
        let five_h = sched(r#"{"name":"s","every_secs":18000,"between":["08:30","18:00:00"]}"#);
        assert_eq!(
            fires(&five_h, "2026-01-01T00:00:00Z", "2026-01-02T09:00:00Z"),
            vec![utc("2026-01-01T08:30:00Z"), utc("2026-01-01T13:30:00Z"), utc("2026-01-02T08:30:00Z")]
        );
        // Period longer than the window: once a day, at the start.
        let long = sched(r#"{"name":"s","every_secs":100000,"between":["08:00","09:00"]}"#);
        assert_eq!(
            fires(&long, "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"),
            vec![utc("2026-01-01T08:00:00Z"), utc("2026-01-02T08:00:00Z")]
        );
    }

    #[test]
    fn every_secs_between_wraps_midnight() {
        let s = sched(r#"{"name":"s","every_secs":3600,"between":["22:00","02:00"]}"#);
        let n = |t: &str| next_after(&s, utc(t));
        assert_eq!(n("2026-01-01T12:00:00Z"), Some(utc("2026-01-01T22:00:00Z")));
        assert_eq!(n("2026-01-01T23:30:00Z"), Some(utc("2026-01-02T00:00:00Z")));
        assert_eq!(n("2026-01-02T01:59:00Z"), Some(utc("2026-01-02T02:00:00Z")));
        assert_eq!(n("2026-01-02T02:00:00Z"), Some(utc("2026-01-02T22:00:00Z")));
        assert_eq!(
            fires(&s, "2026-01-01T12:00:00Z", "2026-01-02T12:00:00Z"),
            ["22", "23"]
                .iter()
                .map(|h| utc(&format!("2026-01-01T{h}:00:00Z")))
                .chain(["00", "01", "02"].iter().map(|h| utc(&format!("2026-01-02T{h}:00:00Z"))))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_secs_between_in_a_time_zone() {
        let s = sched(r#"{"name":"s","every_secs":3600,"between":["08:00","18:00"],"timezone":"Europe/Berlin"}"#);
        // Winter: CET = UTC+1; summer: CEST = UTC+2.
        assert_eq!(next_after(&s, utc("2026-01-15T00:00:00Z")), Some(utc("2026-01-15T07:00:00Z")));
        assert_eq!(next_after(&s, utc("2026-01-15T17:00:00Z")), Some(utc("2026-01-16T07:00:00Z")));
        assert_eq!(next_after(&s, utc("2026-07-15T00:00:00Z")), Some(utc("2026-07-15T06:00:00Z")));
        assert_eq!(next_after(&s, utc("2026-07-15T15:30:00Z")), Some(utc("2026-07-15T16:00:00Z")));
        // A window across the spring-forward gap: 02:00, 02:30 (gap) and 03:00 are one fire.
        let night = sched(r#"{"name":"s","every_secs":1800,"between":["01:00","04:00"],"timezone":"Europe/Berlin"}"#);
        assert_eq!(
            fires(&night, "2026-03-28T23:00:00Z", "2026-03-29T12:00:00Z"),
            ["00:00", "00:30", "01:00", "01:30", "02:00"].iter().map(|t| utc(&format!("2026-03-29T{t}:00Z"))).collect::<Vec<_>>()
        );
        // And across fall-back: the repeated 02:00..02:30 fire once (CEST).
        assert_eq!(
            fires(&night, "2026-10-24T22:00:00Z", "2026-10-25T12:00:00Z"),
            [
                "2026-10-24T23:00",
                "2026-10-24T23:30",
                "2026-10-25T00:00",
                "2026-10-25T00:30",
                "2026-10-25T02:00",
                "2026-10-25T02:30",
                "2026-10-25T03:00"
            ]
            .iter()
            .map(|t| utc(&format!("{t}:00Z")))
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn jumps_instead_of_iterating() {
        let s = parse(&sched(r#"{"name":"s","every_secs":1,"between":["08:00","08:00:05"]}"#)).unwrap();
        let started = std::time::Instant::now();
        let mut t = utc("2026-01-01T09:00:00Z");
        for _ in 0..1000 {
            t = s.next_after(t).unwrap();
        }
        assert_eq!(t, utc("2026-06-17T08:00:03Z"), "6 fires a day");
        let cron = parse(&sched(r#"{"name":"s","cron":"0 0 1 1 *","timezone":"Europe/Berlin"}"#)).unwrap();
        assert_eq!(cron.next_after(utc("2026-01-01T00:00:00Z")), Some(utc("2026-12-31T23:00:00Z")));
        let leap = parse(&sched(r#"{"name":"s","cron":"* * 29 2 *","active_from":"2100-01-01T00:00:00Z"}"#)).unwrap();
        assert_eq!(leap.next_after(utc("2026-01-01T00:00:00Z")), Some(utc("2104-02-29T00:00:00Z")));
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn at_fires_once() {
        let s = r#"{"name":"s","at":"2027-01-01T00:00:00Z"}"#;
        assert_eq!(next(s, "2026-06-01T00:00:00Z"), Some(utc("2027-01-01T00:00:00Z")));
        assert_eq!(next(s, "2027-01-01T00:00:00Z"), None);
        assert_eq!(next(s, "2027-06-01T00:00:00Z"), None);
    }

    #[test]
    fn active_from_and_until_bound_the_fires() {
        let s = sched(
            r#"{"name":"s","cron":"0 * * * *","active_from":"2026-01-01T10:30:00Z","active_until":"2026-01-01T12:00:00Z"}"#,
        );
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
            vec![utc("2026-01-01T11:00:00Z"), utc("2026-01-01T12:00:00Z")],
            "until is inclusive"
        );
        assert_eq!(next_after(&s, utc("2026-01-01T12:00:00Z")), None);
        // A fire exactly at active_from counts.
        let on_edge = r#"{"name":"s","cron":"0 * * * *","active_from":"2026-01-01T11:00:00Z"}"#;
        assert_eq!(next(on_edge, "2026-01-01T09:00:00Z"), Some(utc("2026-01-01T11:00:00Z")));
        // The epoch anchor is not moved by active_from.
        let every = r#"{"name":"s","every_secs":300,"active_from":"2026-01-01T10:02:00Z"}"#;
        assert_eq!(next(every, "2026-01-01T00:00:00Z"), Some(utc("2026-01-01T10:05:00Z")));
        // `at` outside the window never fires.
        let late = r#"{"name":"s","at":"2027-01-01T00:00:00Z","active_until":"2026-12-31T00:00:00Z"}"#;
        assert_eq!(next(late, "2026-01-01T00:00:00Z"), None);
        let p = parse(&s).unwrap();
        assert!(!p.is_active_at(utc("2026-01-01T10:00:00Z")));
        assert!(p.is_active_at(utc("2026-01-01T10:30:00Z")));
        assert!(p.is_active_at(utc("2026-01-01T12:00:00Z")));
        assert!(!p.is_active_at(utc("2026-01-01T12:00:01Z")));
    }

    #[test]
    fn disabled_and_on_start_never_fire_by_time() {
        let off = r#"{"name":"s","every_secs":60,"enabled":false}"#;
        assert_eq!(next(off, "2026-01-01T00:00:00Z"), None);
        let boot = sched(r#"{"name":"s","on_start":true}"#);
        assert_eq!(next_after(&boot, utc("2026-01-01T00:00:00Z")), None);
        assert!(fires_on_start(&boot, utc("2026-01-01T00:00:00Z")));
        let boot_off = sched(r#"{"name":"s","on_start":true,"enabled":false}"#);
        assert!(!fires_on_start(&boot_off, utc("2026-01-01T00:00:00Z")));
        let boot_later = sched(r#"{"name":"s","on_start":true,"active_from":"2027-01-01T00:00:00Z"}"#);
        assert!(!fires_on_start(&boot_later, utc("2026-01-01T00:00:00Z")));
        assert!(!fires_on_start(&sched(r#"{"name":"s","every_secs":60}"#), utc("2026-01-01T00:00:00Z")));
        // Invalid schedules never fire.
        assert_eq!(next(r#"{"name":"s","every_secs":0}"#, "2026-01-01T00:00:00Z"), None);
    }

    #[test]
    fn accepts_the_documented_examples() {
        for json in [
            r#"{"name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin"}"#,
            r#"{"name": "often", "every_secs": 300, "between": ["08:00", "18:00"]}"#,
            r#"{"name": "often", "every_secs": 300, "between": ["22:00", "06:00:30"], "timezone": "Asia/Tokyo"}"#,
            r#"{"name": "once", "at": "2027-01-01T00:00:00Z"}"#,
            r#"{"name": "boot", "on_start": true}"#,
            r#"{"name": "s", "cron": "0 0 12 * * MON-FRI", "active_from": "2026-01-01T00:00:00Z", "active_until": "2026-01-01T00:00:00Z"}"#,
        ] {
            validate(&sched(json)).unwrap_or_else(|e| panic!("{json}: {e}"));
        }
    }

    #[test]
    fn refuses_bad_schedules_naming_the_field() {
        refuse(r#"{"name":"s"}"#, "cron", "exactly one of cron, every_secs, at or on_start");
        refuse(r#"{"name":"s","on_start":false,"timezone":"UTC"}"#, "cron", "no trigger");
        refuse(r#"{"name":"s","cron":"* * * * *","every_secs":5}"#, "every_secs", "cannot be combined with cron");
        refuse(r#"{"name":"s","at":"2027-01-01T00:00:00Z","on_start":true}"#, "on_start", "cannot be combined with at");
        refuse(r#"{"name":"s","cron":"61 * * * *"}"#, "cron", "'61 * * * *': ");
        refuse(r#"{"name":"s","cron":"* * *"}"#, "cron", "has 3 field(s): expected 5 fields");
        refuse(r#"{"name":"s","cron":""}"#, "cron", "empty");
        refuse(r#"{"name":"s","cron":"0 0 30 2 *"}"#, "cron", "never matches");
        refuse(r#"{"name":"s","cron":"* * * * *","timezone":"Mars/Olympus"}"#, "timezone", "'Mars/Olympus'");
        refuse(r#"{"name":"s","at":"2027-01-01T00:00:00Z","timezone":"UTC"}"#, "timezone", "not with at");
        refuse(r#"{"name":"s","every_secs":60,"timezone":"Europe/Berlin"}"#, "timezone", "with every_secs and between");
        refuse(r#"{"name":"s","every_secs":60,"between":["25:00","18:00"]}"#, "between", "'25:00'");
        refuse(r#"{"name":"s","every_secs":60,"between":["08:00","6pm"]}"#, "between", "HH:MM");
        refuse(r#"{"name":"s","every_secs":60,"between":["08:00","23:59:60"]}"#, "between", "'23:59:60'");
        refuse(r#"{"name":"s","every_secs":60,"between":["08:00","08:00:00"]}"#, "between", "equal");
        refuse(r#"{"name":"s","every_secs":60,"between":["08:00","18:00"],"timezone":"Nowhere"}"#, "timezone", "Nowhere");
        refuse(r#"{"name":"s","cron":"* * * * *","between":["08:00","18:00"]}"#, "between", "only allowed with every_secs");
        refuse(r#"{"name":"s","every_secs":0}"#, "every_secs", "at least 1");
        refuse(
            r#"{"name":"s","every_secs":5,"active_from":"2026-02-01T00:00:00Z","active_until":"2026-01-01T00:00:00Z"}"#,
            "active_until",
            "before active_from",
        );
        let err = validate(&sched(r#"{"name":"s"}"#)).unwrap_err();
        assert!(err.to_string().starts_with("cron: "));
    }
}
