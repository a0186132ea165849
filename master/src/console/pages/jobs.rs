//! Jobs: every job, and a job's page (its definition read as sentences:
//! steps, flow, retries, schedules and their next fire; the targets and
//! groups it is assigned to; its last outcome on each target; its recent
//! runs) with Start on all or chosen targets, and Stop.
//!
//! A start answers once it is in the targets' manifests
//! ([`StartReply::Posted`]); the runs then appear on the page by
//! themselves, from the live events.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::response::Html;
use chrono::Utc;
use maud::{html, Markup};
use muster_runtime::describe;
use muster_runtime::history::{self, HistoryQuery};
use muster_shared::api::{
    Delivery, GroupInfo, JobInfo, JobRef, JobSelect, JobTargetStatus, Op, Selection, StartReply, StartStop,
};
use muster_shared::name::{JobName, TargetName};

use super::{call, corrupt, history as runs, listing, NoBody, Notice};
use crate::console::auth::Signed;
use crate::console::error::ConsoleError;
use crate::console::form::Form;
use crate::console::layout::{self, Nav};
use crate::console::AppState;

/// Recent runs shown on a job's page.
const RECENT_RUNS: usize = 20;

/// `GET /jobs`.
///
/// # Errors
/// When the jobs cannot be read.
pub async fn list(State(state): State<AppState>, signed: Signed) -> Result<Html<String>, ConsoleError> {
    let (jobs, corrupt_jobs) = listing::<_, JobInfo>(&state, Op::JobList, NoBody {}).await?;
    let now = Utc::now();
    let body = html! {
        h1 { "Jobs" }
        (corrupt("job", &corrupt_jobs))
        table #jobs {
            thead { tr { th { "Job" } th { "Description" } th { "Enabled" } th { "Steps" } th { "Next fire" } th { "Targets" } th { "Groups" } } }
            tbody {
                @for j in &jobs {
                    tr data-job=(j.spec.name) {
                        td { a href={ "/jobs/" (j.spec.name) } { (j.spec.name) } }
                        td { (j.spec.description) }
                        td { (if j.spec.enabled { "yes" } else { "no" }) }
                        td.num { (j.spec.steps.len()) }
                        td { (next_fire(j, now)) }
                        td { (join(&j.targets)) }
                        td { (join(&j.groups)) }
                    }
                }
                @if jobs.is_empty() { tr.empty { td colspan="7" { "No jobs yet (musterctl job create)." } } }
            }
        }
    };
    Ok(Html(layout::page("Jobs", Nav::Jobs, &signed, body).into_string()))
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The soonest fire of any of a job's schedules.
fn next_fire(j: &JobInfo, now: chrono::DateTime<Utc>) -> String {
    if !j.spec.enabled {
        return "disabled".into();
    }
    j.spec
        .schedules
        .iter()
        .filter(|s| s.enabled)
        .filter_map(|s| muster_shared::schedule::next_after(s, now))
        .min()
        .map_or_else(|| "-".into(), |t| layout::time(Some(t)))
}

/// `GET /jobs/{name}`.
///
/// # Errors
/// An unknown job (404), or a failed read.
pub async fn show(State(state): State<AppState>, signed: Signed, Path(name): Path<String>) -> Result<Html<String>, ConsoleError> {
    let name = JobName::new(&name).map_err(muster_shared::api::ApiError::from)?;
    show_page(&state, &signed, &name, None).await
}

async fn show_page(
    state: &AppState,
    signed: &Signed,
    name: &JobName,
    notice: Option<Notice>,
) -> Result<Html<String>, ConsoleError> {
    let job: JobInfo = call(state, Op::JobShow, JobRef { job: name.clone() }).await?;
    let q = HistoryQuery { job: Some(name.clone()), job_id: Some(job.id), limit: Some(RECENT_RUNS), ..HistoryQuery::default() };
    let (statuses, groups, recent) = tokio::join!(
        call::<_, Vec<JobTargetStatus>>(state, Op::JobStatus, JobRef { job: name.clone() }),
        listing::<_, GroupInfo>(state, Op::GroupList, NoBody {}),
        history::read(&state.ctx.store.js, &state.ctx.config.subjects, &q),
    );
    let (statuses, groups, recent) = (statuses?, groups?.0, recent.map_err(ConsoleError::History)?);
    // Every target the job reaches: its own, and its groups' members.
    let mut reached: BTreeSet<TargetName> = job.targets.iter().cloned().collect();
    for g in groups.iter().filter(|g| job.groups.contains(&g.name)) {
        reached.extend(g.members.iter().cloned());
    }
    let now = Utc::now();
    let spec = &job.spec;
    let admin = signed.may(Op::JobStart);
    let body = html! {
        h1 { "Job " (spec.name) }
        (Notice::render(notice.as_ref()))
        dl.facts #job {
            dt { "enabled" } dd { (if spec.enabled { "yes" } else { "no: its schedules do not fire; Start still runs it" }) }
            @if !spec.description.is_empty() { dt { "description" } dd { (spec.description) } }
            dt { "revision" } dd { (job.revision) }
            dt { "timeout" } dd { (spec.timeout_secs.map_or_else(|| "none".to_owned(), describe::duration)) }
            dt { "assigned to targets" } dd #job-targets { (join(&job.targets)) }
            dt { "assigned to groups" } dd #job-groups { (join(&job.groups)) }
            dt { "updated" } dd { (layout::time(Some(job.updated_at))) }
        }
        h2 { "Steps" }
        table #steps {
            thead { tr { th { "#" } th { "Step" } th { "Runs" } th { "Timeout" } th { "Retries" } th { "On success" } th { "On failure" } } }
            tbody {
                @for (i, s) in spec.steps.iter().enumerate() {
                    tr {
                        td.num { (i + 1) }
                        td { (s.name) }
                        td { code { (s.command.clone().unwrap_or_else(|| s.argv.clone().unwrap_or_default().join(" "))) }
                            @if let Some(cwd) = &s.cwd { br; span.muted { "in " (cwd) } }
                            @if !s.env.is_empty() { br; span.muted { "env " (s.env.keys().cloned().collect::<Vec<_>>().join(", ")) } } }
                        td { (s.timeout_secs.map_or_else(|| "-".to_owned(), describe::duration)) }
                        td { @if s.retries > 0 { (s.retries) ", " (describe::duration(s.retry_interval_secs)) " apart" } @else { "-" } }
                        td { (describe::flow(spec, i, true)) }
                        td { (describe::flow(spec, i, false)) }
                    }
                }
            }
        }
        h2 { "Schedules" }
        table #schedules {
            thead { tr { th { "Schedule" } th { "When" } th { "Next fire" } } }
            tbody {
                @for s in &spec.schedules {
                    tr {
                        td { (s.name) }
                        td { (describe::schedule(s, |t| layout::time(Some(t)))) }
                        td { @if spec.enabled { (describe::next_fire(s, now, |t| layout::time(Some(t)))) } @else { "job disabled" } }
                    }
                }
                @if spec.schedules.is_empty() { tr.empty { td colspan="3" { "No schedule: it runs when started." } } }
            }
        }
        h2 { "Targets" }
        form #job-form method="post" action={ "/jobs/" (spec.name) "/action" } data-inline {
            @if admin {
                div.actions #job-actions {
                    (layout::csrf(signed))
                    button type="submit" name="action" value="start_all" id="start-all" data-confirm="Start this job on every target it is assigned to?" { "Start on all" }
                    button type="submit" name="action" value="start" id="start-selected" data-confirm="Start this job on the selected targets?" { "Start on selected" }
                    button.danger type="submit" name="action" value="stop" id="stop-selected" data-confirm="Stop this job on the selected targets?" { "Stop on selected" }
                    button.danger type="submit" name="action" value="stop_all" id="stop-all" data-confirm="Stop this job on every target it is assigned to?" { "Stop on all" }
                }
            }
            table #last-outcomes {
                thead { tr {
                    @if admin { th { input type="checkbox" data-select-all="target" title="Select all"; } }
                    th { "Target" } th { "Last outcome" } th { "Started" } th { "Finished" } th { "Duration" } th { "Message" } th { "Run" }
                } }
                tbody {
                    @for t in &reached {
                        (status_row(admin, name, t, statuses.iter().find(|s| &s.target == t)))
                    }
                    @if reached.is_empty() { tr.empty { td colspan="8" { "Not assigned to any target (musterctl job assign)." } } }
                }
            }
        }
        h2 { "Recent runs" }
        (runs::table(&recent, &runs::LiveFilter { job: Some(name.as_str()), ..runs::LiveFilter::default() }))
    };
    Ok(Html(layout::page(&format!("Job {name}"), Nav::Jobs, signed, body).into_string()))
}

/// A last-outcome row, with its checkbox for admins (live events replace
/// the cells after it).
fn status_row(admin: bool, job: &JobName, target: &TargetName, s: Option<&JobTargetStatus>) -> Markup {
    html! {
        tr data-status-job=(job) data-status-target=(target) {
            @if admin { td.select { input type="checkbox" name="target" value=(target); } }
            (runs::status_cells(target, s))
        }
    }
}

/// `POST /jobs/{name}/action`: Start or Stop, on all assigned targets or
/// the selected ones.
///
/// # Errors
/// A bad form, a refused CSRF token or role (403), or a failed read.
pub async fn act(
    State(state): State<AppState>,
    signed: Signed,
    Path(name): Path<String>,
    form: Form,
) -> Result<Html<String>, ConsoleError> {
    let name = JobName::new(&name).map_err(muster_shared::api::ApiError::from)?;
    let action = form.get("action").unwrap_or_default();
    let (op, all) = match action {
        "start" => (Op::JobStart, false),
        "start_all" => (Op::JobStart, true),
        "stop" => (Op::JobStop, false),
        "stop_all" => (Op::JobStop, true),
        other => return Err(ConsoleError::BadRequest(format!("unknown action '{other}'"))),
    };
    signed.authorize(op, &form)?;
    let chosen = form
        .all("target")
        .into_iter()
        .map(TargetName::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(muster_shared::api::ApiError::from)?;
    let notice = if !all && chosen.is_empty() {
        Notice::Failed("Select at least one target, or use the button for all.".into())
    } else {
        Notice::from_result(start_stop(&state, op, &name, all, chosen).await)?
    };
    show_page(&state, &signed, &name, Some(notice)).await
}

async fn start_stop(
    state: &AppState,
    op: Op,
    name: &JobName,
    all: bool,
    chosen: Vec<TargetName>,
) -> Result<Markup, ConsoleError> {
    let select = if all {
        let job: JobInfo = call(state, Op::JobShow, JobRef { job: name.clone() }).await?;
        Selection { targets: job.targets, groups: job.groups, all: false }
    } else {
        Selection { targets: chosen, groups: Vec::new(), all: false }
    };
    let reply = if op == Op::JobStart { StartReply::Posted } else { StartReply::Polled };
    let body = StartStop { job: JobSelect { job: name.clone(), select }, expires_secs: None, reply, params: Default::default() };
    let deliveries: Vec<Delivery> = call(state, op, body).await?;
    let verb = if op == Op::JobStart { "Start" } else { "Stop" };
    Ok(html! {
        strong { (verb) }
        table #deliveries {
            thead { tr { th { "Target" } th { "State" } th { "Run id" } th { "Message" } } }
            tbody {
                @for d in &deliveries {
                    tr {
                        td { (d.target) }
                        td { (d.state.as_str()) }
                        td { (d.run_id.map(|r| r.to_string()).unwrap_or_default()) }
                        td { (d.message) }
                    }
                }
            }
        }
    })
}
