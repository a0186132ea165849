//! Targets: the status tab of SQL Server's "Manage Target Servers" (every
//! target with its status, last poll, clock, poll interval, unread
//! instructions, agent version, groups and location; filtered by group or
//! status; several selected at once) with its buttons (Force Poll,
//! Synchronize clocks, Set poll interval, Resync, Defect, Force defection),
//! and a target's own page (its jobs, download list and recent runs).
//!
//! An action answers with the page it came from, its outcome shown on top:
//! a force-poll's reports come back in the same answer, within the
//! master's force-poll timeout.

use axum::extract::{Path, Query, State};
use axum::response::Html;
use maud::{html, Markup};
use muster_runtime::history::{self, HistoryQuery};
use muster_shared::api::{
    DefectRequest, ForcePollOutcome, GroupInfo, InstrRow, InstructionsQuery, JobInfo, Op, PostRequest, Posted, Selection,
    TargetInfo, TargetRef, TargetStatus,
};
use muster_shared::name::TargetName;
use serde::Deserialize;

use super::{call, corrupt, history as runs, instructions, listing, NoBody, Notice};
use crate::console::auth::Signed;
use crate::console::error::ConsoleError;
use crate::console::form::Form;
use crate::console::layout::{self, Nav};
use crate::console::AppState;

/// Recent runs shown on a target's page.
const RECENT_RUNS: usize = 20;
/// Download-list rows shown on a target's page.
const RECENT_ROWS: usize = 50;

/// `?group=…&status=…`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    #[serde(default)]
    group: String,
    #[serde(default)]
    status: String,
}

/// The cells of a target's row that change, by name: what the page shows
/// and what a live event updates, written once.
pub fn cells(t: &TargetInfo) -> Vec<(&'static str, String)> {
    vec![
        ("status", t.status.as_str().to_owned()),
        ("last_poll", layout::time(t.last_poll)),
        ("local_time", layout::target_time(t.local_time, &t.timezone)),
        ("zone", if t.timezone.is_empty() { "-".into() } else { t.timezone.clone() }),
        ("skew", layout::skew(t.clock_skew_ms)),
        ("interval", layout::secs(t.poll_interval_secs)),
        ("unread", t.unread.to_string()),
        ("version", t.agent_version.clone().unwrap_or_else(|| "-".into())),
        ("groups", t.groups.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
        ("location", t.location.clone()),
    ]
}

/// `GET /` and `GET /targets`.
///
/// # Errors
/// When the targets cannot be read.
pub async fn list(
    State(state): State<AppState>,
    signed: Signed,
    Query(filter): Query<Filter>,
) -> Result<Html<String>, ConsoleError> {
    list_page(&state, &signed, &filter, None).await
}

async fn list_page(
    state: &AppState,
    signed: &Signed,
    filter: &Filter,
    notice: Option<Notice>,
) -> Result<Html<String>, ConsoleError> {
    let ((targets, corrupt_targets), (groups, _)) = tokio::try_join!(
        listing::<_, TargetInfo>(state, Op::TargetList, NoBody {}),
        listing::<_, GroupInfo>(state, Op::GroupList, NoBody {})
    )?;
    let shown: Vec<&TargetInfo> = targets
        .iter()
        .filter(|t| filter.group.is_empty() || t.groups.iter().any(|g| g.as_str() == filter.group))
        .filter(|t| filter.status.is_empty() || t.status.as_str() == filter.status)
        .collect();
    let admin = signed.may(Op::TargetForcePollMany);
    let body = html! {
        h1 { "Targets" }
        (Notice::render(notice.as_ref()))
        (corrupt("target", &corrupt_targets))
        form.filters method="get" action="/targets" {
            label { "Group " (layout::choice("group", "filter-group", groups.iter().map(|g| g.name.as_str()), &filter.group)) }
            label { "Status " (layout::choice("status", "filter-status", <TargetStatus as strum::VariantArray>::VARIANTS.iter().map(|s| s.as_str()), &filter.status)) }
            input type="submit" value="Filter";
            span.muted { (shown.len()) " of " (targets.len()) " targets" }
        }
        form #targets-form method="post" action="/targets/action" data-inline {
            @if admin {
                input type="hidden" name="group" value=(filter.group);
                input type="hidden" name="status" value=(filter.status);
                (actions(signed))
            }
            table #targets {
                thead { tr {
                    @if admin { th { input type="checkbox" data-select-all="target" title="Select all"; } }
                    th { "Name" } th { "Status" } th { "Last poll" } th { "Local time" } th { "Zone" } th { "Clock skew" }
                    th { "Poll interval" } th { "Unread" } th { "Agent" } th { "Groups" } th { "Location" }
                } }
                tbody {
                    @for t in &shown { (row(t, admin)) }
                    @if shown.is_empty() { tr.empty { td colspan="12" { "No target matches." } } }
                }
            }
        }
    };
    Ok(Html(layout::page("Targets", Nav::Targets, signed, body).into_string()))
}

fn row(t: &TargetInfo, admin: bool) -> Markup {
    html! {
        tr data-target=(t.name) {
            @if admin { td { input type="checkbox" name="target" value=(t.name); } }
            td { a href={ "/targets/" (t.name) } { (t.name) } }
            @for (name, text) in cells(t) {
                @if name == "status" {
                    td data-cell=(name) class={ "status status-" (text) } title=[t.blocked.as_deref()] { (text) }
                } @else {
                    td data-cell=(name) { (text) }
                }
            }
        }
    }
}

/// The action buttons, for admins only (viewers get none, and the server
/// refuses their posts anyway).
fn actions(signed: &Signed) -> Markup {
    html! {
        div.actions #target-actions {
            (layout::csrf(signed))
            button type="submit" name="action" value="force_poll" id="force-poll" data-confirm="Force the selected targets to poll now?" { "Force Poll" }
            button type="submit" name="action" value="sync_time" id="sync-time" data-confirm="Synchronize the selected targets' clocks with the master?" { "Synchronize clocks" }
            label { "Poll interval (s) " input type="number" name="secs" id="secs" min="10" max="28800" placeholder="60"; }
            button type="submit" name="action" value="set_poll" id="set-poll" data-confirm="Set the poll interval of the selected targets?" { "Set poll interval" }
            button type="submit" name="action" value="resync" id="resync" data-confirm="Resynchronize the selected targets (their whole desired state is posted again)?" { "Resync" }
            button.danger type="submit" name="action" value="defect" id="defect" data-confirm="Tell the selected targets to defect from this master?" { "Defect" }
            button.danger type="submit" name="action" value="force_defect" id="force-defect" data-confirm="Force the selected targets' defection? Their records and pending instructions are deleted now." { "Force defection" }
        }
    }
}

/// `POST /targets/action`: one of the buttons, on the selected targets.
///
/// # Errors
/// A bad form, a refused CSRF token or role (403), or a failed read.
pub async fn act(State(state): State<AppState>, signed: Signed, form: Form) -> Result<Html<String>, ConsoleError> {
    let action = form.get("action").unwrap_or_default();
    let op = match action {
        "force_poll" => Op::TargetForcePollMany,
        "sync_time" => Op::TargetSyncTime,
        "set_poll" => Op::TargetSetPoll,
        "resync" => Op::TargetResync,
        "defect" | "force_defect" => Op::TargetDefect,
        other => return Err(ConsoleError::BadRequest(format!("unknown action '{other}'"))),
    };
    signed.authorize(op, &form)?;
    let targets = form
        .all("target")
        .into_iter()
        .map(TargetName::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(muster_shared::api::ApiError::from)?;
    let notice = if targets.is_empty() {
        Notice::Failed("Select at least one target.".into())
    } else {
        Notice::from_result(perform(&state, op, action, targets, &form).await)?
    };
    match form.text("back").map(TargetName::new) {
        Some(Ok(name)) => show_page(&state, &signed, &name, Some(notice)).await,
        _ => {
            let filter = Filter {
                group: form.get("group").unwrap_or_default().into(),
                status: form.get("status").unwrap_or_default().into(),
            };
            list_page(&state, &signed, &filter, Some(notice)).await
        }
    }
}

async fn perform(state: &AppState, op: Op, action: &str, targets: Vec<TargetName>, form: &Form) -> Result<Markup, ConsoleError> {
    let select = Selection { targets, groups: Vec::new(), all: false };
    match action {
        "force_poll" => Ok(poll_reports(&call::<_, Vec<ForcePollOutcome>>(state, op, &select).await?)),
        "defect" | "force_defect" => {
            let force = action == "force_defect";
            for name in &select.targets {
                call::<_, TargetInfo>(state, op, DefectRequest { name: name.clone(), force }).await?;
            }
            let what = if force { "Forced the defection of" } else { "Told to defect:" };
            Ok(html! { (what) " " (names(&select.targets)) })
        }
        _ => {
            let secs = match (action, form.text("secs")) {
                ("set_poll", Some(s)) => {
                    Some(s.parse::<u64>().map_err(|_| ConsoleError::BadRequest(format!("'{s}' is not a number of seconds")))?)
                }
                ("set_poll", None) => return Err(ConsoleError::BadRequest("give the poll interval in seconds".into())),
                _ => None,
            };
            let posted = call::<_, Vec<Posted>>(state, op, PostRequest { select, secs }).await?;
            Ok(html! {
                "Posted " (op.subject()) ":"
                ul { @for p in &posted { li { (p.target) ": " (p.ops.join(", ")) } } }
            })
        }
    }
}

fn names(targets: &[TargetName]) -> String {
    targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// A force-poll's answers, inline: each target's poll report, or why it
/// did not answer.
fn poll_reports(outcomes: &[ForcePollOutcome]) -> Markup {
    html! {
        strong { "Force Poll" }
        table #poll-report {
            thead { tr { th { "Target" } th { "Polled at (its clock)" } th { "Jobs" } th { "Running" } th { "Applied" } th { "Failed" } th { "Spooled" } th { "Interval" } th { "Agent" } th { "Error" } } }
            tbody {
                @for o in outcomes {
                    tr data-report=(o.target) {
                        td { (o.target) }
                        @if let Some(r) = &o.report {
                            td { (layout::target_time(Some(r.polled_at), &r.timezone)) }
                            td.num { (r.jobs) }
                            td { (r.running.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) }
                            td.num { (r.applied) } td.num { (r.failed) } td.num { (r.spooled) }
                            td { (layout::secs(r.poll_interval_secs)) } td { (r.agent_version) } td {}
                        } @else {
                            td colspan="8" {}
                            td.error { (o.error.as_ref().map(|e| e.message.as_str()).unwrap_or("no report")) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /targets/{name}`: one target, its jobs, download list and recent runs.
///
/// # Errors
/// An unknown target (404), or a failed read.
pub async fn show(State(state): State<AppState>, signed: Signed, Path(name): Path<String>) -> Result<Html<String>, ConsoleError> {
    let name = TargetName::new(&name).map_err(muster_shared::api::ApiError::from)?;
    show_page(&state, &signed, &name, None).await
}

async fn show_page(
    state: &AppState,
    signed: &Signed,
    name: &TargetName,
    notice: Option<Notice>,
) -> Result<Html<String>, ConsoleError> {
    let info: TargetInfo = call(state, Op::TargetShow, TargetRef { name: name.clone() }).await?;
    let query = InstructionsQuery { target: Some(name.clone()), limit: Some(RECENT_ROWS), ..InstructionsQuery::default() };
    let history_query = HistoryQuery { target: Some(name.clone()), limit: Some(RECENT_RUNS), ..HistoryQuery::default() };
    let js = &state.ctx.store.js;
    let (jobs, rows, recent) = tokio::join!(
        listing::<_, JobInfo>(state, Op::JobList, NoBody {}),
        call::<_, Vec<InstrRow>>(state, Op::Instructions, query),
        history::read(js, &state.ctx.config.subjects, &history_query),
    );
    let jobs: Vec<JobInfo> =
        jobs?.0.into_iter().filter(|j| j.targets.contains(name) || j.groups.iter().any(|g| info.groups.contains(g))).collect();
    let recent = recent.map_err(ConsoleError::History)?;
    let admin = signed.may(Op::TargetForcePollMany);
    let body = html! {
        h1 { "Target " (info.name) }
        (Notice::render(notice.as_ref()))
        @if admin {
            form method="post" action="/targets/action" data-inline {
                input type="hidden" name="target" value=(info.name);
                input type="hidden" name="back" value=(info.name);
                (actions(signed))
            }
        }
        table #target { tbody { tr data-target=(info.name) {
            td { dl.facts {
                @for (cell, text) in cells(&info) {
                    dt { (cell.replace('_', " ")) }
                    @if cell == "status" { dd data-cell=(cell) class={ "status status-" (text) } { (text) } } @else { dd data-cell=(cell) { (text) } }
                }
                dt { "enlisted" } dd { (layout::time(Some(info.enlisted_at))) }
                @if let Some(b) = &info.blocked { dt { "blocked by" } dd.error { (b) } }
                dt { "bad instructions / control" } dd { (info.bad_instructions) " / " (info.bad_control) }
            } }
        } } }
        h2 { "Jobs" }
        table #target-jobs {
            thead { tr { th { "Job" } th { "Enabled" } th { "Steps" } th { "Schedules" } th { "Through" } } }
            tbody {
                @for j in &jobs {
                    tr {
                        td { a href={ "/jobs/" (j.spec.name) } { (j.spec.name) } }
                        td { (if j.spec.enabled { "yes" } else { "no" }) }
                        td.num { (j.spec.steps.len()) }
                        td.num { (j.spec.schedules.len()) }
                        td { (if j.targets.contains(name) { "assigned".to_owned() } else {
                            format!("group {}", j.groups.iter().filter(|g| info.groups.contains(g)).map(ToString::to_string).collect::<Vec<_>>().join(", "))
                        }) }
                    }
                }
                @if jobs.is_empty() { tr.empty { td colspan="5" { "No job reaches this target." } } }
            }
        }
        h2 { "Download list" }
        (instructions::table(&rows?, false))
        h2 { "Recent runs" }
        (runs::table(&recent, &runs::LiveFilter { target: Some(name.as_str()), ..runs::LiveFilter::default() }))
    };
    Ok(Html(layout::page(&format!("Target {name}"), Nav::Targets, signed, body).into_string()))
}
