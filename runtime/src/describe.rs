//! A job's definition told to people: where each step's flow leads, each
//! schedule as a sentence and its next fire. `musterctl job show` and the
//! web console both say it this way, so it is written once, here.

use chrono::{DateTime, Utc};
use muster_shared::job::{JobSpec, Next, Schedule};

/// Seconds as `1h 30m`.
pub fn duration(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// Where the run goes after step `index` ends with `success`, as the agent
/// resolves it: `next step`, `go to step 3 'cleanup'`, `quit, failed`.
pub fn flow(spec: &JobSpec, index: usize, success: bool) -> String {
    match spec.next_after(index, success) {
        Next::Step(k) if k == index + 1 => "next step".to_owned(),
        Next::Step(k) => format!("go to step {} '{}'", k + 1, spec.steps[k].name),
        Next::QuitSuccess => "quit, succeeded".to_owned(),
        Next::QuitFailure => "quit, failed".to_owned(),
    }
}

/// A schedule as a sentence: `cron '30 2 * * *' in Europe/Berlin`; times
/// written by `time`.
pub fn schedule(s: &Schedule, time: impl Fn(DateTime<Utc>) -> String) -> String {
    // A cron or a `between` without a zone is read in UTC (the default).
    let zone = s.timezone.as_deref().unwrap_or("UTC");
    let mut text = if let Some(cron) = &s.cron {
        format!("cron '{cron}' in {zone}")
    } else if let Some(every) = s.every_secs {
        match &s.between {
            Some([from, to]) => format!("every {} between {from} and {to} {zone}", duration(every)),
            None => format!("every {}", duration(every)),
        }
    } else if let Some(at) = s.at {
        format!("once at {}", time(at))
    } else {
        "when the agent starts".to_owned()
    };
    if let Some(from) = s.active_from {
        text.push_str(&format!(", from {}", time(from)));
    }
    if let Some(until) = s.active_until {
        text.push_str(&format!(", until {}", time(until)));
    }
    text
}

/// A schedule's next fire after `now`: `next <time>`, `disabled`, `at
/// each agent start`, or `no fire to come`.
pub fn next_fire(s: &Schedule, now: DateTime<Utc>, time: impl Fn(DateTime<Utc>) -> String) -> String {
    match muster_shared::schedule::next_after(s, now) {
        _ if !s.enabled => "disabled".to_owned(),
        Some(t) => format!("next {}", time(t)),
        None if s.on_start => "at each agent start".to_owned(),
        None => "no fire to come".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_and_schedules_read_as_sentences() {
        let spec: JobSpec = JobSpec::from_json(
            r#"{"name":"j","steps":[{"name":"a","command":"true","on_failure":{"goto":"c"}},{"name":"b","command":"true"},{"name":"c","command":"true"}],
                "schedules":[{"name":"n","cron":"30 2 * * *","timezone":"Europe/Berlin"},{"name":"s","on_start":true},{"name":"off","every_secs":60,"enabled":false}]}"#,
        )
        .unwrap();
        assert_eq!(flow(&spec, 0, true), "next step");
        assert_eq!(flow(&spec, 0, false), "go to step 3 'c'");
        assert_eq!(flow(&spec, 2, true), "quit, succeeded");
        assert_eq!(flow(&spec, 1, false), "quit, failed");
        let t = |t: DateTime<Utc>| t.to_rfc3339();
        assert_eq!(schedule(&spec.schedules[0], t), "cron '30 2 * * *' in Europe/Berlin");
        assert_eq!(schedule(&spec.schedules[1], t), "when the agent starts");
        let now: DateTime<Utc> = "2026-12-02T00:00:00Z".parse().unwrap();
        assert_eq!(next_fire(&spec.schedules[0], now, t), "next 2026-12-02T01:30:00+00:00");
        assert_eq!(next_fire(&spec.schedules[1], now, t), "at each agent start");
        assert_eq!(next_fire(&spec.schedules[2], now, t), "disabled");
        assert_eq!(duration(5400), "1h 30m");
    }
}
