//! `musterctl history` and `run show`: runs read straight from
//! `MUSTER_RESULTS` by Direct Get ([`crate::history`]), so they work while
//! no master runs, and for the viewer as for the admin (the run index and
//! the job's id only make them faster).

use chrono::{DateTime, Utc};
use muster_shared::api::{ErrorCode, JobInfo, JobRef, Op};
use muster_shared::name::JobName;
use uuid::Uuid;

use super::Ctx;
use crate::args::{HistoryArgs, RunCmd};
use crate::exit::{Exit, Failure};
use crate::history::{self, HistoryQuery, Via};
use crate::render;

pub(super) async fn history(ctx: &Ctx, args: HistoryArgs) -> Result<(), Failure> {
    let js = ctx.jetstream();
    let job_id = match &args.job {
        Some(job) => job_id(ctx, job).await,
        None => None,
    };
    let q = HistoryQuery {
        job: args.job,
        job_id,
        target: args.target,
        outcome: args.outcome,
        since: args.since.as_deref().map(|s| parse_since(s, Utc::now())).transpose()?,
        limit: args.limit,
        ..HistoryQuery::default()
    };
    let runs = ctx.api.unless_refused(history::read(&js, &ctx.api.subjects, &q)).await??;
    ctx.out.print(&runs, || render::print_runs(&runs))
}

pub(super) async fn run(ctx: &Ctx, cmd: RunCmd) -> Result<(), Failure> {
    let run_id = match cmd {
        RunCmd::Show { run_id } => run_id,
        RunCmd::Logs { run_id, follow } => {
            return ctx.api.unless_refused(crate::live::logs(&ctx.jetstream(), &ctx.api.subjects, run_id, follow)).await?
        }
        RunCmd::Output { run_id, step } => {
            return ctx.api.unless_refused(crate::kept::download(&ctx.jetstream(), &ctx.api.subjects, run_id, step)).await?
        }
    };
    let found = ctx
        .api
        .unless_refused(history::find_run(&ctx.jetstream(), &ctx.api.subjects, run_id, None))
        .await??
        .ok_or_else(|| Failure::new(Exit::NotFound, format!("no run {run_id} in history")))?;
    if found.via == Via::Scan {
        eprintln!(
            "note: run {run_id} is not in the run index (no master, or it is behind); found by reading history from the run's time"
        );
    }
    let run = found.record;
    ctx.out.print(&run, || render::print_run(&run))
}

/// The id of the job named `job`, so the read can use the job's own
/// subjects: from the master (a read every role may make), else, with no
/// master, from its record in `muster-jobs` read directly (which only the
/// admin's account may). `None` when neither knows it: the runs are then
/// found by name, on every run subject.
async fn job_id(ctx: &Ctx, job: &JobName) -> Option<Uuid> {
    match ctx.api.call::<_, JobInfo>(Op::JobShow, JobRef { job: job.clone() }).await {
        Ok(info) => Some(info.id),
        Err(e) if e.code == ErrorCode::NotFound => None,
        Err(e) => {
            tracing::debug!(%job, error = %e, "job id not from the master; reading its record");
            ctx.api.unless_refused(history::job_id(&ctx.jetstream(), &ctx.api.subjects, job)).await.unwrap_or(None)
        }
    }
}

/// `--since`: an RFC 3339 time, or a duration before `now` (`30m`, `2h`,
/// `7d`, `1h30m`: anything `humantime` reads).
fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Failure> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = |why: &dyn std::fmt::Display| {
        Failure::invalid(format!("--since '{s}': use RFC 3339 or a duration like 30m, 2h, 7d ({why})"))
    };
    let ago = humantime::parse_duration(s).map_err(|e| bad(&e))?;
    chrono::Duration::from_std(ago).ok().and_then(|ago| now.checked_sub_signed(ago)).ok_or_else(|| bad(&"too long ago"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        let now = DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").unwrap().with_timezone(&Utc);
        let at = |s: &str| parse_since(s, now).map(|t| t.to_rfc3339());
        assert_eq!(at("2026-02-01T00:00:00+01:00").unwrap(), "2026-01-31T23:00:00+00:00");
        assert_eq!(at("30m").unwrap(), "2026-03-01T11:30:00+00:00");
        assert_eq!(at("2h").unwrap(), "2026-03-01T10:00:00+00:00");
        assert_eq!(at("7d").unwrap(), "2026-02-22T12:00:00+00:00");
        assert_eq!(at("45s").unwrap(), "2026-03-01T11:59:15+00:00");
        for bad in ["", "5", "2x", "yesterday", "99999999999d"] {
            let err = parse_since(bad, now).unwrap_err();
            assert_eq!(err.exit, Exit::Invalid, "{bad}");
            assert!(err.message.contains("use RFC 3339 or a duration"), "{bad}: {}", err.message);
        }
    }
}
