//! `musterctl job …`: job definitions, where they run, starting and
//! stopping them, and their last outcome per target. `start --wait` hands
//! over to [`crate::follow`].

mod file;

use std::collections::BTreeSet;
use std::path::PathBuf;

use muster_shared::api::{
    Delivery, ErrorCode, JobInfo, JobRef, JobSelect, JobTargetStatus, JobWrite, Listed, Op, Selection, StartReply, StartStop,
};
use muster_shared::desired;
use muster_shared::job::JobSpec;
use muster_shared::name::JobName;

use super::Ctx;
use crate::args::JobCmd;
use crate::client::ApiClient;
use crate::exit::Failure;
use crate::{follow, render};

pub(super) async fn run(ctx: &Ctx, cmd: JobCmd) -> Result<(), Failure> {
    let (api, out) = (&ctx.api, &ctx.out);
    let show = |j: JobInfo| out.print(&j, || render::print_job(&j));
    match cmd {
        JobCmd::Create { name, commands, file } => {
            let spec = read_spec(name, commands, file)?;
            show(api.call(Op::JobCreate, JobWrite { spec }).await?)
        }
        JobCmd::Update { name, commands, file } => {
            let spec = read_spec(name, commands, file)?;
            show(api.call(Op::JobUpdate, JobWrite { spec }).await?)
        }
        JobCmd::Apply { file } => show(apply(api, file::read(&file)?).await?),
        JobCmd::Delete { job } => {
            let j: Listed<JobInfo> = api.call(Op::JobDelete, JobRef { job }).await?;
            out.print(&j, || match &j {
                Listed::Ok(j) => crate::say!("deleted {}", j.spec.name),
                Listed::Corrupt(c) => crate::say!("deleted the corrupt record {} ({})", c.key, c.corrupt),
            })
        }
        JobCmd::List => {
            let jobs: Vec<Listed<JobInfo>> = api.call(Op::JobList, ()).await?;
            out.print(&jobs, || render::print_jobs(&jobs))
        }
        JobCmd::Show { job } => show(api.call(Op::JobShow, JobRef { job }).await?),
        JobCmd::Assign { job, select } => {
            show(api.call(Op::JobAssign, JobSelect { job, select: select.selection(false) }).await?)
        }
        JobCmd::Unassign { job, select } => {
            show(api.call(Op::JobUnassign, JobSelect { job, select: select.selection(false) }).await?)
        }
        JobCmd::Start { job, select, all, expires, wait, timeout, follow, params } => {
            let d: Vec<Delivery> = api
                .call(
                    Op::JobStart,
                    StartStop {
                        job: JobSelect { job: job.clone(), select: select.selection(all) },
                        expires_secs: expires_secs(expires.as_deref())?,
                        // --wait must know which targets were offline, so it
                        // waits for the force-polls; otherwise the answer
                        // comes once the starts are posted.
                        reply: if wait { StartReply::Polled } else { StartReply::Posted },
                        params: params.into_iter().collect(),
                    },
                )
                .await?;
            if wait {
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
                return follow::follow(api, out.json, &follow::Followed::Job(job), &d, deadline, follow).await;
            }
            out.print(&d, || render::print_deliveries(&d))
        }
        JobCmd::Stop { job, select, expires } => {
            let d: Vec<Delivery> = api
                .call(
                    Op::JobStop,
                    StartStop {
                        job: JobSelect { job, select: select.selection(false) },
                        expires_secs: expires_secs(expires.as_deref())?,
                        reply: StartReply::default(),
                        params: Default::default(),
                    },
                )
                .await?;
            out.print(&d, || render::print_deliveries(&d))
        }
        JobCmd::Enable { job } => show(api.call(Op::JobEnable, JobRef { job }).await?),
        JobCmd::Disable { job } => show(api.call(Op::JobDisable, JobRef { job }).await?),
        JobCmd::Status { job } => {
            let s: Vec<JobTargetStatus> = api.call(Op::JobStatus, JobRef { job }).await?;
            out.print(&s, || render::print_job_status(&s))
        }
    }
}

/// `job apply`: creates the job, or updates it when its definition
/// differs (an unchanged one is not posted again), then, for a `job show
/// --json` document, assigns and unassigns so that the job runs on exactly
/// the targets and groups the document lists.
///
/// # Errors
/// The master's errors; the document was validated before anything was sent.
async fn apply(api: &ApiClient, f: file::JobFile) -> Result<JobInfo, Failure> {
    let current = match api.call::<_, JobInfo>(Op::JobShow, JobRef { job: f.spec.name.clone() }).await {
        Err(e) if e.code == ErrorCode::NotFound => None,
        r => Some(r?),
    };
    let mut job = match current {
        None => api.call(Op::JobCreate, JobWrite { spec: f.spec }).await?,
        Some(j) if j.spec == f.spec => j,
        Some(_) => api.call(Op::JobUpdate, JobWrite { spec: f.spec }).await?,
    };
    let Some(reach) = f.reach else {
        return Ok(job);
    };
    let assign =
        Selection { targets: gained(&reach.targets, &job.targets), groups: gained(&reach.groups, &job.groups), all: false };
    let unassign =
        Selection { targets: gained(&job.targets, &reach.targets), groups: gained(&job.groups, &reach.groups), all: false };
    for (op, select) in [(Op::JobAssign, assign), (Op::JobUnassign, unassign)] {
        if !select.targets.is_empty() || !select.groups.is_empty() {
            job = api.call(op, JobSelect { job: job.spec.name.clone(), select }).await?;
        }
    }
    Ok(job)
}

/// What `want` has that `have` lacks, in `want`'s order.
fn gained<T: Ord + Clone>(want: &[T], have: &[T]) -> Vec<T> {
    let have: BTreeSet<&T> = have.iter().collect();
    want.iter().filter(|x| !have.contains(x)).cloned().collect()
}

/// A job definition from a file (`-f`, `-f -` for standard input; its name
/// overridden by NAME if given) or from NAME and `--command` lines.
fn read_spec(name: Option<JobName>, commands: Vec<String>, file: Option<PathBuf>) -> Result<JobSpec, Failure> {
    match (file, name) {
        (Some(path), name) => {
            let mut spec = file::read(&path)?.spec;
            if let Some(n) = name {
                spec.name = n;
            }
            Ok(spec)
        }
        (None, Some(name)) if !commands.is_empty() => Ok(JobSpec::from_commands(name, &commands)),
        (None, Some(_)) => Err(Failure::invalid("give at least one --command, or a job file with -f")),
        (None, None) => Err(Failure::invalid("give a job NAME with --command, or a job file with -f")),
    }
}

/// `--expires`: a duration like `10m` or `2h`, within what a start or stop
/// may wait (checked here so a bad value is refused before anything is
/// posted, exit 4; the master checks it again).
fn expires_secs(arg: Option<&str>) -> Result<Option<u64>, Failure> {
    let Some(arg) = arg else {
        return Ok(None);
    };
    let bad = |why: &dyn std::fmt::Display| {
        Failure::invalid(format!(
            "--expires '{arg}': use a duration from {}s to {}s, like 10m or 2h ({why})",
            desired::MIN_EXPIRY.as_secs(),
            desired::MAX_EXPIRY.as_secs()
        ))
    };
    let d = humantime::parse_duration(arg).map_err(|e| bad(&e))?;
    desired::check_expiry(d).map_err(|e| bad(&e))?;
    Ok(Some(d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_takes_a_duration_within_the_limits() {
        assert_eq!(expires_secs(None).unwrap(), None);
        assert_eq!(expires_secs(Some("10m")).unwrap(), Some(600));
        for bad in ["5s", "8d", "soon", ""] {
            let e = expires_secs(Some(bad)).unwrap_err();
            assert_eq!(e.exit, crate::exit::Exit::Invalid, "{bad}");
            assert!(e.message.contains("--expires"), "{}", e.message);
        }
    }
}
