//! History: runs filtered by job, target, outcome and time, read from
//! `MUSTER_RESULTS` by the same reader as `musterctl history`
//! (`muster_runtime::history`: one record per run, reads bounded by
//! count), and a run's page with each step and its output.
//!
//! Output comes from the targets and is untrusted: it is only ever put in
//! the page as escaped text.

use axum::extract::{Path, Query, State};
use axum::response::Html;
use chrono::Utc;
use maud::{html, Markup};
use muster_runtime::history::{self, HistoryQuery};
use muster_shared::api::JobTargetStatus;
use muster_shared::msg::{Outcome, RunRecord};
use muster_shared::name::{JobName, TargetName};
use serde::Deserialize;
use uuid::Uuid;

use crate::console::auth::Signed;
use crate::console::error::ConsoleError;
use crate::console::layout::{self, Nav};
use crate::console::AppState;

/// Runs shown when no limit is asked for.
const DEFAULT_LIMIT: usize = 100;
/// The most runs one page shows.
const MAX_LIMIT: usize = 1000;

/// `?job=…&target=…&outcome=…&since=…&limit=…`; `since` is a duration
/// back from now (`2h`, `3d`) or an RFC 3339 time.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    #[serde(default)]
    job: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    limit: Option<usize>,
}

/// Which live runs a runs table takes (the server's event goes to every
/// page; the page keeps what matches its table).
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveFilter<'a> {
    pub job: Option<&'a str>,
    pub target: Option<&'a str>,
    pub outcome: Option<&'a str>,
}

/// A table of runs, newest first, that live events add to.
pub fn table(runs: &[RunRecord], live: &LiveFilter<'_>) -> Markup {
    html! {
        table.runs {
            thead { tr { th { "Started" } th { "Job" } th { "Target" } th { "Outcome" } th { "Trigger" } th { "Duration" } th { "Message" } th { "Run" } } }
            tbody data-runs="" data-job=[live.job] data-target=[live.target] data-outcome=[live.outcome] {
                @for r in runs.iter().rev() { (run_row(r)) }
                @if runs.is_empty() { tr.empty { td colspan="8" { "No runs." } } }
            }
        }
    }
}

/// One run's row: in tables, and in live events.
pub fn run_row(r: &RunRecord) -> Markup {
    html! {
        tr data-run={ (r.target) "/" (r.run_id) } data-outcome=(r.outcome.as_str()) {
            td { (layout::time(Some(r.started_at))) }
            td { a href={ "/jobs/" (r.job) } { (r.job) } }
            td { a href={ "/targets/" (r.target) } { (r.target) } }
            td { (layout::outcome(r.outcome)) }
            td { (r.trigger.to_string()) }
            td { (layout::duration_ms(r.duration_ms())) }
            td { (r.message) }
            td { a.run-link href={ "/runs/" (r.run_id) "?target=" (r.target) } { "open" } }
        }
    }
}

/// The cells of a job's last outcome on one target: on the job's page,
/// and in live events (which replace a row's cells, keeping its checkbox).
pub fn status_cells(target: &TargetName, s: Option<&JobTargetStatus>) -> Markup {
    html! {
        td { a href={ "/targets/" (target) } { (target) } }
        @if let Some(s) = s {
            td { (layout::outcome(s.outcome)) }
            td { (layout::time(Some(s.started_at))) }
            td { (layout::time(s.finished_at)) }
            td { (layout::duration_ms(s.duration_ms)) }
            td { (s.message) }
            td { a href={ "/runs/" (s.run_id) "?target=" (target) } { "open" } }
        } @else {
            td.muted colspan="6" { "never ran" }
        }
    }
}

/// `GET /history`.
///
/// # Errors
/// A bad filter (400) or a failed read.
pub async fn list(State(state): State<AppState>, signed: Signed, Query(f): Query<Filter>) -> Result<Html<String>, ConsoleError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| ConsoleError::BadRequest(format!("{what}: {e}"));
    let job = (!f.job.is_empty()).then(|| JobName::new(f.job.trim())).transpose().map_err(|e| bad("job", &e))?;
    let target = (!f.target.is_empty()).then(|| TargetName::new(f.target.trim())).transpose().map_err(|e| bad("target", &e))?;
    let outcome = (!f.outcome.is_empty()).then(|| f.outcome.parse::<Outcome>()).transpose().map_err(|e| bad("outcome", &e))?;
    let since = match f.since.trim() {
        "" => None,
        s => Some(match humantime::parse_duration(s) {
            Ok(d) => Utc::now() - chrono::Duration::from_std(d).map_err(|e| bad("since", &e))?,
            Err(_) => s.parse().map_err(|_| bad("since", &"expected a duration back (2h, 3d) or an RFC 3339 time"))?,
        }),
    };
    let js = &state.ctx.store.js;
    let subjects = &state.ctx.config.subjects;
    let job_id = match &job {
        Some(j) => history::job_id(js, subjects, j).await,
        None => None,
    };
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let q = HistoryQuery { job: job.clone(), job_id, target: target.clone(), outcome, since, run_id: None, limit: Some(limit) };
    let runs = history::read(js, subjects, &q).await.map_err(ConsoleError::History)?;
    let live = LiveFilter {
        job: job.as_ref().map(JobName::as_str),
        target: target.as_ref().map(TargetName::as_str),
        outcome: outcome.map(Outcome::as_str),
    };
    let body = html! {
        h1 { "History" }
        form.filters method="get" action="/history" {
            label { "Job " input type="text" name="job" value=(f.job); }
            label { "Target " input type="text" name="target" value=(f.target); }
            label { "Outcome " (layout::choice("outcome", "filter-outcome", <Outcome as strum::VariantArray>::VARIANTS.iter().map(|o| o.as_str()), &f.outcome)) }
            label { "Since " input type="text" name="since" value=(f.since) placeholder="2h, 3d or 2026-12-01T00:00:00Z"; }
            label { "Limit " input type="number" name="limit" value=(limit) min="1" max=(MAX_LIMIT); }
            input type="submit" value="Filter";
            span.muted { (runs.len()) " runs, newest first" }
        }
        (table(&runs, &live))
    };
    Ok(Html(layout::page("History", Nav::History, &signed, body).into_string()))
}

/// `?target=…`: narrows the look-up when the run is not in the index.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunHint {
    #[serde(default)]
    target: String,
}

/// `GET /runs/{run_id}`: a run, each step and its output.
///
/// # Errors
/// A bad or unknown run id, or a failed read.
pub async fn show(
    State(state): State<AppState>,
    signed: Signed,
    Path(run_id): Path<String>,
    Query(hint): Query<RunHint>,
) -> Result<Html<String>, ConsoleError> {
    let run_id: Uuid = run_id.parse().map_err(|_| ConsoleError::BadRequest(format!("'{run_id}' is not a run id")))?;
    let found = history::find_run(&state.ctx.store.js, &state.ctx.config.subjects, run_id, None)
        .await
        .map_err(ConsoleError::History)?
        .filter(|f| hint.target.is_empty() || f.record.target.as_str() == hint.target)
        .ok_or_else(|| ConsoleError::NotFound(format!("no run {run_id} in history")))?;
    let r = found.record;
    let body = html! {
        h1 { "Run of " a href={ "/jobs/" (r.job) } { (r.job) } " on " a href={ "/targets/" (r.target) } { (r.target) } }
        dl.facts #run {
            dt { "run id" } dd { (r.run_id) }
            dt { "outcome" } dd #run-outcome { (layout::outcome(r.outcome)) }
            dt { "trigger" } dd { (r.trigger.to_string()) }
            dt { "started" } dd { (layout::time(Some(r.started_at))) }
            dt { "finished" } dd { (layout::time(r.finished_at)) }
            dt { "duration" } dd { (layout::duration_ms(r.duration_ms())) }
            @if !r.message.is_empty() { dt { "message" } dd { (r.message) } }
        }
        h2 { "Steps" }
        @if r.steps.is_empty() { p.muted { "No step has finished yet." } }
        @for s in &r.steps {
            section.step data-step=(s.index) {
                h3 { (s.index + 1) ". " (s.name) " " (layout::outcome(s.outcome)) }
                p.muted {
                    "exit code " (s.exit_code.map_or_else(|| "-".to_owned(), |c| c.to_string()))
                    @if let Some(sig) = s.signal { ", signal " (sig) }
                    ", " (layout::duration_ms(i64::try_from(s.duration_ms).ok()))
                    @if s.retries > 0 { ", " (s.retries) " retries" }
                    @if s.output_cut_bytes > 0 { ", " (s.output_cut_bytes) " bytes of output cut from the middle" }
                    @if !s.message.is_empty() { " — " (s.message) }
                }
                pre.output { (s.output) }
            }
        }
    };
    Ok(Html(layout::page(&format!("Run {run_id}"), Nav::History, &signed, body).into_string()))
}
