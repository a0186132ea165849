//! The download list (SQL Server's `sysdownloadlist`): what was posted to
//! each target, and whether it is pending, applied or failed (with the
//! target's error), as `musterctl instructions` reads it.

use axum::extract::{Query, State};
use axum::response::Html;
use maud::{html, Markup};
use muster_shared::api::{InstrRow, InstrStatus, InstructionsQuery, Op};
use muster_shared::name::TargetName;
use serde::Deserialize;

use super::call;
use crate::console::auth::Signed;
use crate::console::error::ConsoleError;
use crate::console::layout::{self, Nav};
use crate::console::AppState;

/// Rows shown at most (the newest).
const MAX_ROWS: usize = 500;

/// `?target=…&status=…`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    #[serde(default)]
    target: String,
    #[serde(default)]
    status: String,
}

/// A table of download-list rows, newest first; `with_target` adds the
/// target's column (the list of every target).
pub fn table(rows: &[InstrRow], with_target: bool) -> Markup {
    html! {
        table.instructions {
            thead { tr {
                th { "Posted" } @if with_target { th { "Target" } } th { "Operation" } th { "Job" } th { "Status" } th { "Applied" } th { "Revision" } th { "Error" }
            } }
            tbody {
                @for r in rows.iter().rev() {
                    tr data-instr=(r.id) {
                        td { (layout::time(Some(r.posted_at))) }
                        @if with_target { td { a href={ "/targets/" (r.target) } { (r.target) } } }
                        td { (r.op) }
                        td { @if let Some(j) = &r.job { a href={ "/jobs/" (j) } { (j) } } }
                        td class={ "instr-" (r.status.as_str()) } { (r.status.as_str()) }
                        td { (layout::time(r.applied_at)) }
                        td { (r.revision.map(|v| v.to_string()).unwrap_or_default()) }
                        td.error { (r.error.as_deref().unwrap_or_default()) }
                    }
                }
                @if rows.is_empty() { tr.empty { td colspan="8" { "No instructions." } } }
            }
        }
    }
}

/// `GET /instructions`.
///
/// # Errors
/// A bad filter, or a failed read.
pub async fn list(State(state): State<AppState>, signed: Signed, Query(f): Query<Filter>) -> Result<Html<String>, ConsoleError> {
    let target = (!f.target.trim().is_empty())
        .then(|| TargetName::new(f.target.trim()))
        .transpose()
        .map_err(|e| ConsoleError::BadRequest(format!("target: {e}")))?;
    let status = match f.status.as_str() {
        "" => None,
        s => Some(
            <InstrStatus as strum::VariantArray>::VARIANTS
                .iter()
                .copied()
                .find(|v| v.as_str() == s)
                .ok_or_else(|| ConsoleError::BadRequest(format!("'{s}' is not a status")))?,
        ),
    };
    // The API filters pending and failed rows itself; others are kept here.
    let query = InstructionsQuery {
        target,
        pending: status == Some(InstrStatus::Pending),
        errors: status == Some(InstrStatus::Failed),
        limit: None,
    };
    let mut rows: Vec<InstrRow> = call(&state, Op::Instructions, query).await?;
    rows.retain(|r| status.is_none_or(|s| r.status == s));
    let total = rows.len();
    rows.drain(..rows.len().saturating_sub(MAX_ROWS));
    let body = html! {
        h1 { "Download list" }
        form.filters method="get" action="/instructions" {
            label { "Target " input type="text" name="target" value=(f.target); }
            label { "Status " (layout::choice("status", "filter-status", <InstrStatus as strum::VariantArray>::VARIANTS.iter().map(|s| s.as_str()), &f.status)) }
            input type="submit" value="Filter";
            span.muted { (rows.len()) " of " (total) " rows, newest first" }
        }
        (table(&rows, true))
    };
    Ok(Html(layout::page("Download list", Nav::Instructions, &signed, body).into_string()))
}
