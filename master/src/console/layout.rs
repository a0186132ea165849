//! The page around every page (navigation, who is signed in, the live
//! indicator), and how values are written, so every page and every live
//! event writes a time, a skew or an outcome the same way.
//!
//! Times are in UTC, labelled; a target's own clock is in its own zone.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use maud::{html, Markup, DOCTYPE};
use muster_runtime::zone;
use muster_shared::msg::Outcome;

use super::assets::{CSS_PATH, JS_PATH};
use super::auth::Signed;

/// The sections in the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Targets,
    Jobs,
    History,
    Instructions,
}

/// A whole page for someone signed in.
pub fn page(title: &str, nav: Nav, signed: &Signed, body: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Nav| {
        html! { a href=(href) class=[(nav == this).then_some("active")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Muster" }
                link rel="stylesheet" href=(CSS_PATH);
                script src=(JS_PATH) defer {}
            }
            body data-live="/live" data-role=(signed.role.as_str()) {
                header.top {
                    span.brand { "Muster" }
                    (link("/targets", "Targets", Nav::Targets))
                    (link("/jobs", "Jobs", Nav::Jobs))
                    (link("/history", "History", Nav::History))
                    (link("/instructions", "Download list", Nav::Instructions))
                    span.who {
                        span #live-state { "connecting…" }
                        span #whoami { (signed.user) " (" (signed.role.as_str()) ")" }
                        form method="post" action="/logout" {
                            (csrf(signed))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page for someone not signed in (the sign-in form).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · Muster" }
                link rel="stylesheet" href=(CSS_PATH);
            }
            body { main { (body) } }
        }
    }
}

/// The hidden CSRF field every form that posts carries.
pub fn csrf(signed: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed.csrf); }
}

/// A filter's drop-down: "(any)" (the empty value) and each of `values`,
/// the one the page was asked for selected.
pub fn choice<'a>(name: &str, id: &str, values: impl IntoIterator<Item = &'a str>, selected: &str) -> Markup {
    html! {
        select name=(name) id=(id) {
            option value="" { "(any)" }
            @for v in values { option value=(v) selected[v == selected] { (v) } }
        }
    }
}

/// A time in UTC, labelled; `-` when there is none.
pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| zone::format_in(t, Tz::UTC))
}

/// A target's clock in its own zone (UTC when it reported none).
pub fn target_time(t: Option<DateTime<Utc>>, target_zone: &str) -> String {
    t.map_or_else(|| "-".into(), |t| zone::format_at_target(t, target_zone, Tz::UTC))
}

/// A clock skew, signed, in milliseconds.
pub fn skew(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| format!("{ms:+} ms"))
}

/// A duration in milliseconds, for people.
pub fn duration_ms(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string())
}

/// An outcome, coloured by its class.
pub fn outcome(o: Outcome) -> Markup {
    html! { span class={ "outcome outcome-" (o.as_str()) } { (o.as_str()) } }
}

/// Seconds, as people write them (`1m 30s`).
pub fn secs(s: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_one_way() {
        let t: DateTime<Utc> = "2026-12-02T07:30:00Z".parse().unwrap();
        assert_eq!(time(Some(t)), "2026-12-02 07:30:00 UTC");
        assert_eq!(time(None), "-");
        assert_eq!(target_time(Some(t), "Asia/Tokyo"), "2026-12-02 16:30:00 JST");
        assert_eq!(skew(Some(-12)), "-12 ms");
        assert_eq!(skew(Some(40)), "+40 ms");
        assert_eq!(secs(90), "1m 30s");
        assert_eq!(duration_ms(Some(1500)), "1s 500ms");
    }
}
