//! `musterctl target …`: enlisting and defecting targets, their status, and
//! what is posted to them (force-poll, set-poll, sync-time, resync).

use muster_shared::api::{
    DefectRequest, EnlistRequest, ForcePollOutcome, InstrRow, InstructionsQuery, JobInfo, Listed, Op, Posted, TargetInfo,
    TargetRef,
};
use muster_shared::name::{JobName, TargetName};

use super::Ctx;
use crate::args::{PostArgs, TargetCmd};
use crate::exit::Failure;
use crate::history::{self, HistoryQuery};
use crate::render;

pub(super) async fn run(ctx: &Ctx, cmd: TargetCmd) -> Result<(), Failure> {
    let (api, out) = (&ctx.api, &ctx.out);
    match cmd {
        TargetCmd::Enlist { name, location, poll_interval } => {
            let req = EnlistRequest { name, location, instance: None, poll_interval_secs: poll_interval, xkey: None };
            let t: TargetInfo = api.call(Op::TargetEnlist, req).await?;
            out.print(&t, || crate::say!("enlisted {} (poll every {}s)", t.name, t.poll_interval_secs))
        }
        TargetCmd::Defect { name, force } => {
            let t: Listed<TargetInfo> = api.call(Op::TargetDefect, DefectRequest { name, force }).await?;
            out.print(&t, || match &t {
                Listed::Ok(t) if force => {
                    crate::say!("{} defected (forced): record, consumer and pending instructions deleted", t.name);
                }
                Listed::Ok(t) => crate::say!("{} told to defect: it deletes its jobs at its next poll", t.name),
                Listed::Corrupt(c) => crate::say!("{} defected (forced): its corrupt record deleted ({})", c.key, c.corrupt),
            })
        }
        TargetCmd::List => {
            let ts: Vec<Listed<TargetInfo>> = api.call(Op::TargetList, ()).await?;
            out.print(&ts, || render::print_targets(&ts))
        }
        TargetCmd::Show { name } => show(ctx, name).await,
        TargetCmd::ForcePoll(select) => force_poll(ctx, select).await,
        TargetCmd::SetPoll { mut args, groups, all } => {
            let secs_text = args.pop().expect("clap requires one value");
            let secs: u64 = secs_text.parse().map_err(|_| {
                Failure::invalid(format!(
                    "'{secs_text}' is not a number of seconds: give the interval last, e.g. `set-poll web01 120`"
                ))
            })?;
            let names = args
                .into_iter()
                .map(|a| a.parse::<TargetName>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure::invalid(e.to_string()))?;
            let req = PostArgs { names, groups, all }.request(Some(secs));
            let p: Vec<Posted> = api.call(Op::TargetSetPoll, req).await?;
            out.print(&p, || render::print_posted(&p))
        }
        TargetCmd::SyncTime(a) => {
            let p: Vec<Posted> = api.call(Op::TargetSyncTime, a.request(None)).await?;
            out.print(&p, || {
                render::print_posted(&p);
                crate::say!("online targets polled now; see the SKEW column of `musterctl target list`");
            })
        }
        TargetCmd::Resync(a) => {
            let p: Vec<Posted> = api.call(Op::TargetResync, a.request(None)).await?;
            out.print(&p, || render::print_posted(&p))
        }
    }
}

/// `target show`: the target's row and, for people, what it holds and did:
/// the jobs that reach it, its newest download-list rows, its recent runs.
/// `--json` prints the target's record alone, as it always did.
async fn show(ctx: &Ctx, name: TargetName) -> Result<(), Failure> {
    let t: TargetInfo = ctx.api.call(Op::TargetShow, TargetRef { name: name.clone() }).await?;
    if ctx.out.json {
        return ctx.out.print(&t, || {});
    }
    let jobs: Vec<Listed<JobInfo>> = ctx.api.call(Op::JobList, ()).await?;
    let held: Vec<JobName> = jobs
        .into_iter()
        .filter_map(Listed::into_ok)
        .filter(|j| j.targets.contains(&name) || j.groups.iter().any(|g| t.groups.contains(g)))
        .map(|j| j.spec.name)
        .collect();
    let q = InstructionsQuery { target: Some(name.clone()), pending: false, errors: false, limit: Some(SHOW_ROWS) };
    let rows: Vec<InstrRow> = ctx.api.call(Op::Instructions, q).await?;
    let q = HistoryQuery { target: Some(name), limit: Some(SHOW_ROWS), ..HistoryQuery::default() };
    let runs = ctx.api.unless_refused(history::read(&ctx.jetstream(), &ctx.api.subjects, &q)).await??;
    render::print_target_detail(&t, &held, &rows, &runs);
    Ok(())
}

/// Download-list rows and runs `target show` prints.
const SHOW_ROWS: usize = 10;

/// Prints every target's poll report or error; fails with the last error's
/// exit code when any target did not poll, else with
/// [`Exit::ApplyFailed`](crate::Exit::ApplyFailed) when a target failed to
/// apply a change in its poll.
async fn force_poll(ctx: &Ctx, select: PostArgs) -> Result<(), Failure> {
    let reports: Vec<ForcePollOutcome> = ctx.api.call(Op::TargetForcePollMany, select.selection()).await?;
    let worst = reports.iter().filter_map(|r| r.error.clone()).next_back();
    ctx.out.print(&reports, || {
        for r in &reports {
            match (&r.report, &r.error) {
                (Some(rep), _) => crate::say!(
                    "{}: polled at {} (applied {}, failed {}, jobs {}, agent {})",
                    r.target,
                    rep.polled_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    rep.applied,
                    rep.failed,
                    rep.jobs,
                    rep.agent_version,
                ),
                (None, Some(e)) => crate::say!("{}: {}", r.target, e.message),
                (None, None) => {}
            }
        }
    })?;
    let failed: Vec<&str> =
        reports.iter().filter(|r| r.report.as_ref().is_some_and(|rep| rep.failed > 0)).map(|r| r.target.as_str()).collect();
    match worst {
        Some(e) if !ctx.out.json => Err(Failure::new(e.code.into(), "not every target polled")),
        Some(e) => Err(e.into()),
        None if !failed.is_empty() => Err(Failure::new(
            crate::Exit::ApplyFailed,
            format!(
                "{} failed to apply a change (see `musterctl instructions --target {} --errors`)",
                failed.join(", "),
                failed[0]
            ),
        )),
        None => Ok(()),
    }
}
