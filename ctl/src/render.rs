//! Human output: tables and one-line summaries, and the `--json` switch.
//!
//! Every command prints either JSON (the promise to scripts, the reply
//! types as they are) or what is here (for people, free to change). Keeping
//! the human side in one room keeps the commands about what they do, and
//! keeps every table looking the same: borderless, aligned, one header row.

use std::io::Write as _;

use chrono::{DateTime, Utc};
use comfy_table::{CellAlignment, Table};
use muster_runtime::describe::{self, duration};
use muster_shared::api::{Delivery, InstrRow, InstrStatus, JobInfo, Listed, MasterSeen, Posted, StatusSummary, TargetInfo};
use muster_shared::desired::Revision;
use muster_shared::msg::RunRecord;
use muster_shared::name::JobName;
use serde::Serialize;

use crate::exit::Failure;

/// Where a command's answer goes: JSON for scripts, or the human form.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints `value` as JSON with `--json`, else runs `human`.
    ///
    /// # Errors
    /// When the value does not serialise (never, for Muster's types).
    pub fn print<T: Serialize>(&self, value: &T, human: impl FnOnce()) -> Result<(), Failure> {
        if self.json {
            print_json(value)?;
        } else {
            human();
        }
        std::io::stdout().flush().ok();
        Ok(())
    }
}

/// Prints `value` as pretty JSON.
///
/// # Errors
/// When the value does not serialise (never, for Muster's types).
pub fn print_json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::internal(e.to_string()))?;
    crate::say!("{text}");
    Ok(())
}

/// A list for one cell: `a,b,c`, or `-` when empty.
pub fn join<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }
}

/// A time to the second, or `-`.
pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".into(), crate::zone::format)
}

/// Milliseconds as seconds with one decimal (`1.5s`), or `-`.
pub fn secs(ms: Option<i64>) -> String {
    ms.map_or("-".into(), |d| format!("{:.1}s", d as f64 / 1000.0))
}

/// Aligned columns under a header row, no borders; the last column is not
/// padded, and no line ends in spaces.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    table_aligned(headers, rows, &[])
}

/// [`table`], with the columns in `right` aligned to the right (numbers).
pub fn table_aligned(headers: &[&str], rows: Vec<Vec<String>>, right: &[usize]) -> String {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING).set_header(headers.iter().copied()).add_rows(rows);
    let last = headers.len().saturating_sub(1);
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    t.trim_fmt()
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    crate::say!("{}", table(headers, rows));
}

pub fn print_targets(ts: &[Listed<TargetInfo>]) {
    let rows = listed_rows(ts, 10, |t| {
        vec![
            t.name.to_string(),
            t.status.as_str().to_owned(),
            time(t.last_poll),
            t.local_time.map_or_else(|| "-".into(), |lt| crate::zone::format_at_target(lt, &t.timezone)),
            t.clock_skew_ms.map_or("-".into(), |s| format!("{s}ms")),
            t.poll_interval_secs.to_string(),
            t.unread.to_string(),
            t.agent_version.clone().unwrap_or_else(|| "-".into()),
            join(&t.groups),
            if t.location.is_empty() { "-".into() } else { t.location.clone() },
        ]
    });
    print_table(
        &["TARGET", "STATUS", "LAST POLL", "LOCAL TIME", "SKEW", "POLL(S)", "UNREAD", "AGENT", "GROUPS", "LOCATION"],
        rows,
    );
    say_corrupt(ts, "target", "musterctl target defect {} --force");
    for t in ts.iter().filter_map(Listed::ok) {
        if let Some(why) = &t.blocked {
            crate::say!("{} is blocked by {why} (see `musterctl instructions --target {} --errors`)", t.name, t.name);
        }
        if t.bad_instructions + t.bad_control > 0 {
            crate::say!(
                "{}'s agent refused {} bad instruction(s) and {} bad control request(s) since it started (each is in its log)",
                t.name,
                t.bad_instructions,
                t.bad_control
            );
        }
    }
}

/// `target show`: the target's row, then what it holds and did.
pub fn print_target_detail(t: &TargetInfo, jobs: &[JobName], rows: &[InstrRow], runs: &[RunRecord]) {
    print_targets(&[Listed::Ok(t.clone())]);
    let revision = |r: Option<Revision>| r.map_or("-".to_owned(), |r| r.to_string());
    crate::say!(
        "\nenlisted {}; manifest revision {} published, {} applied at its last poll",
        time(Some(t.enlisted_at)),
        revision(t.published_revision),
        revision(t.applied_revision)
    );
    crate::say!("\njobs that reach it ({}): {}", jobs.len(), join(jobs));
    let pending = rows.iter().filter(|r| r.status == InstrStatus::Pending).count();
    let failed = rows.iter().filter(|r| r.status == InstrStatus::Failed).count();
    crate::say!("\nnewest download-list rows ({pending} pending, {failed} failed of these):");
    print_instructions(rows);
    crate::say!("\nrecent runs:");
    print_runs(runs);
}

pub fn print_jobs(jobs: &[Listed<JobInfo>]) {
    let rows = listed_rows(jobs, 6, |j| {
        vec![
            j.spec.name.to_string(),
            if j.spec.enabled { "yes".into() } else { "no".into() },
            j.spec.steps.len().to_string(),
            j.spec.schedules.len().to_string(),
            join(&j.targets),
            join(&j.groups),
        ]
    });
    print_table(&["JOB", "ENABLED", "STEPS", "SCHEDULES", "TARGETS", "GROUPS"], rows);
    say_corrupt(jobs, "job", "musterctl job delete {}");
}

/// A table's rows: each readable record's cells, and for one that cannot
/// be read its key, `corrupt`, and dashes up to `width` cells.
fn listed_rows<T>(items: &[Listed<T>], width: usize, cells: impl Fn(&T) -> Vec<String>) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|item| match item {
            Listed::Ok(t) => cells(t),
            Listed::Corrupt(c) => {
                let mut row = vec![c.key.clone(), "corrupt".to_owned()];
                row.resize(width, "-".to_owned());
                row
            }
        })
        .collect()
}

/// One line per record that cannot be read: why, and the command that
/// removes it (`remove`, with `{}` for its key).
fn say_corrupt<T>(items: &[Listed<T>], kind: &str, remove: &str) {
    for c in items.iter().filter_map(|i| match i {
        Listed::Corrupt(c) => Some(c),
        Listed::Ok(_) => None,
    }) {
        crate::say!("{kind} record '{}' is corrupt ({}); `{}` removes it", c.key, c.corrupt, remove.replace("{}", &c.key));
    }
}

pub fn print_job(j: &JobInfo) {
    crate::say!(
        "job {} ({}), revision {}, {}",
        j.spec.name,
        j.id,
        j.revision,
        if j.spec.enabled { "enabled" } else { "disabled: its schedules do not fire; `job start` still runs it" }
    );
    if !j.spec.description.is_empty() {
        crate::say!("  {}", j.spec.description);
    }
    crate::say!("  targets: {}   groups: {}", join(&j.targets), join(&j.groups));
    if let Some(t) = j.spec.timeout_secs {
        crate::say!("  timeout: {} for the whole run", duration(t));
    }
    for (i, s) in j.spec.steps.iter().enumerate() {
        let what = s.command.clone().unwrap_or_else(|| s.argv.clone().unwrap_or_default().join(" "));
        crate::say!("  step {} {}: {}", i + 1, s.name, what);
        let mut how = Vec::new();
        if let Some(t) = s.timeout_secs {
            how.push(format!("timeout {}", duration(t)));
        }
        if s.retries > 0 {
            how.push(format!("{} retries, {} apart", s.retries, duration(s.retry_interval_secs)));
        }
        how.push(format!("on success: {}", describe::flow(&j.spec, i, true)));
        how.push(format!("on failure: {}", describe::flow(&j.spec, i, false)));
        if let Some(cwd) = &s.cwd {
            how.push(format!("in {cwd}"));
        }
        if !s.env.is_empty() {
            how.push(format!("env {}", s.env.keys().cloned().collect::<Vec<_>>().join(",")));
        }
        crate::say!("      {}", how.join("; "));
    }
    let now = Utc::now();
    for s in &j.spec.schedules {
        crate::say!(
            "  schedule {}: {}; {}",
            s.name,
            describe::schedule(s, |t| time(Some(t))),
            describe::next_fire(s, now, |t| time(Some(t)))
        );
    }
}

pub fn print_job_status(statuses: &[muster_shared::api::JobTargetStatus]) {
    let rows = statuses
        .iter()
        .map(|s| {
            vec![s.target.to_string(), s.outcome.to_string(), time(Some(s.started_at)), secs(s.duration_ms), s.message.clone()]
        })
        .collect();
    print_table(&["TARGET", "LAST OUTCOME", "STARTED", "DURATION", "MESSAGE"], rows);
}

pub fn print_deliveries(d: &[Delivery]) {
    let rows = d
        .iter()
        .map(|d| {
            vec![d.target.to_string(), d.state.to_string(), d.run_id.map_or("-".into(), |r| r.to_string()), d.message.clone()]
        })
        .collect();
    print_table(&["TARGET", "STATE", "RUN", "MESSAGE"], rows);
}

pub fn print_runs(runs: &[RunRecord]) {
    let rows = runs
        .iter()
        .map(|r| {
            vec![
                time(Some(r.started_at)),
                r.job.to_string(),
                r.target.to_string(),
                r.outcome.to_string(),
                secs(r.duration_ms()),
                r.trigger.to_string(),
                r.run_id.to_string(),
            ]
        })
        .collect();
    print_table(&["STARTED", "JOB", "TARGET", "OUTCOME", "DURATION", "TRIGGER", "RUN"], rows);
}

pub fn print_run(r: &RunRecord) {
    crate::say!("run {} of {} on {}: {} ({})", r.run_id, r.job, r.target, r.outcome, r.trigger);
    crate::say!("  started {}  finished {}", time(Some(r.started_at)), time(r.finished_at));
    if !r.message.is_empty() {
        crate::say!("  {}", r.message);
    }
    if !r.params.is_empty() {
        let pairs: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        crate::say!("  params: {}", pairs.join(" "));
    }
    for s in &r.steps {
        let code = s.exit_code.map_or_else(|| s.signal.map_or("-".into(), |g| format!("signal {g}")), |c| format!("exit {c}"));
        crate::say!("  step {} [{}]: {} {code}, {} ms, {} retries", s.index + 1, s.name, s.outcome, s.duration_ms, s.retries);
        for line in s.output.lines() {
            crate::say!("    | {line}");
        }
    }
}

pub fn print_posted(p: &[Posted]) {
    let rows = p.iter().map(|p| vec![p.target.to_string(), p.ops.join(", "), p.dropped.to_string()]).collect();
    print_table(&["TARGET", "POSTED", "DROPPED"], rows);
}

pub fn print_instructions(rows: &[InstrRow]) {
    let rows = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.target.to_string(),
                r.op.to_string(),
                r.job.as_ref().map_or("-".into(), ToString::to_string),
                time(Some(r.posted_at)),
                time(r.applied_at),
                r.status.as_str().to_owned(),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["ID", "TARGET", "OP", "JOB", "POSTED", "DOWNLOADED", "STATUS", "ERROR"], rows);
}

pub fn print_groups(groups: &[Listed<muster_shared::api::GroupInfo>]) {
    let rows = listed_rows(groups, 3, |g| vec![g.name.to_string(), join(&g.members), join(&g.jobs)]);
    print_table(&["GROUP", "MEMBERS", "JOBS"], rows);
    say_corrupt(groups, "group", "musterctl group delete {}");
}

pub fn print_status(s: &StatusSummary, masters: &[MasterSeen]) {
    let total: u64 = s.targets_by_status.values().sum();
    let by = s.targets_by_status.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ");
    crate::say!("targets:      {total}{}", if by.is_empty() { String::new() } else { format!(" ({by})") });
    crate::say!("jobs:         {}   groups: {}", s.jobs, s.groups);
    crate::say!("instructions: {} pending, {} failed", s.pending_instructions, s.failed_instructions);
    let ids = masters.iter().map(|m| format!("{} v{}", m.id, m.version)).collect::<Vec<_>>().join(", ");
    crate::say!("masters:      {}{}", masters.len(), if ids.is_empty() { String::new() } else { format!(" ({ids})") });
    if !s.attention.is_empty() {
        crate::say!();
        let rows = s
            .attention
            .iter()
            .map(|t| {
                vec![t.name.to_string(), t.status.as_str().to_owned(), time(t.last_poll), t.blocked.clone().unwrap_or_default()]
            })
            .collect();
        print_table(&["TARGET", "STATUS", "LAST POLL", "WHY"], rows);
    }
    if !s.failing.is_empty() {
        crate::say!();
        let rows = s
            .failing
            .iter()
            .map(|f| {
                vec![f.job.to_string(), f.target.to_string(), f.outcome.to_string(), time(Some(f.started_at)), f.message.clone()]
            })
            .collect();
        print_table(&["FAILING JOB", "TARGET", "OUTCOME", "STARTED", "MESSAGE"], rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned_borderless_and_never_end_in_spaces() {
        let rows =
            vec![vec!["web01".into(), "normal".into(), String::new()], vec!["db-primary".into(), "-".into(), "x y".into()]];
        let text = table(&["TARGET", "STATUS", "NOTE"], rows);
        assert_eq!(text, "TARGET      STATUS  NOTE\nweb01       normal\ndb-primary  -       x y");
    }

    #[test]
    fn right_aligned_columns_line_up_on_the_right() {
        let rows = vec![vec!["a".into(), "1.00 ms".into()], vec!["bb".into(), "10.00 ms".into()]];
        let text = table_aligned(&["measure", "muster"], rows, &[1]);
        assert_eq!(text, "measure    muster\na         1.00 ms\nbb       10.00 ms");
    }

    #[test]
    fn cells_for_absent_values() {
        assert_eq!(join::<String>(&[]), "-");
        assert_eq!(join(&["a", "b"]), "a,b");
        assert_eq!(secs(Some(1500)), "1.5s");
        assert_eq!(secs(None), "-");
        assert_eq!(time(None), "-");
    }
}
