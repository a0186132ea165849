//! `musterctl job …`: job definitions, where they run, starting and
//! stopping them, and their last outcome per target. `start --wait` hands
//! over to [`crate::follow`].

use std::path::PathBuf;

use muster_shared::api::{Delivery, JobInfo, JobRef, JobSelect, JobTargetStatus, JobWrite, Op};
use muster_shared::job::JobSpec;
use muster_shared::name::JobName;

use super::Ctx;
use crate::args::JobCmd;
use crate::exit::Failure;
use crate::{follow, render};

pub(super) async fn run(ctx: &Ctx, cmd: JobCmd) -> Result<(), Failure> {
    let (api, out) = (&ctx.api, &ctx.out);
    let show = |j: JobInfo| out.print(&j, || render::print_job(&j));
    match cmd {
        JobCmd::Create {
            name,
            commands,
            file,
        } => {
            let spec = read_spec(name, commands, file)?;
            show(api.call(Op::JobCreate, JobWrite { spec }).await?)
        }
        JobCmd::Update {
            name,
            commands,
            file,
        } => {
            let spec = read_spec(name, commands, file)?;
            show(api.call(Op::JobUpdate, JobWrite { spec }).await?)
        }
        JobCmd::Delete { job } => {
            let j: JobInfo = api.call(Op::JobDelete, JobRef { job }).await?;
            out.print(&j, || println!("deleted {}", j.spec.name))
        }
        JobCmd::List => {
            let jobs: Vec<JobInfo> = api.call(Op::JobList, ()).await?;
            out.print(&jobs, || render::print_jobs(&jobs))
        }
        JobCmd::Show { job } => show(api.call(Op::JobShow, JobRef { job }).await?),
        JobCmd::Assign { job, select } => show(
            api.call(
                Op::JobAssign,
                JobSelect {
                    job,
                    select: select.selection(false),
                },
            )
            .await?,
        ),
        JobCmd::Unassign { job, select } => show(
            api.call(
                Op::JobUnassign,
                JobSelect {
                    job,
                    select: select.selection(false),
                },
            )
            .await?,
        ),
        JobCmd::Start {
            job,
            select,
            all,
            wait,
            timeout,
        } => {
            let d: Vec<Delivery> = api
                .call(
                    Op::JobStart,
                    JobSelect {
                        job: job.clone(),
                        select: select.selection(all),
                    },
                )
                .await?;
            if wait {
                let timeout = timeout.map(std::time::Duration::from_secs);
                return follow::follow(api, out.json, &job, &d, timeout).await;
            }
            out.print(&d, || render::print_deliveries(&d))
        }
        JobCmd::Stop { job, select } => {
            let d: Vec<Delivery> = api
                .call(
                    Op::JobStop,
                    JobSelect {
                        job,
                        select: select.selection(false),
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

/// A job definition from a file (`-f`, its name overridden by NAME if
/// given) or from NAME and `--command` lines.
fn read_spec(
    name: Option<JobName>,
    commands: Vec<String>,
    file: Option<PathBuf>,
) -> Result<JobSpec, Failure> {
    match (file, name) {
        (Some(path), name) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Failure::invalid(format!("reading {}: {e}", path.display())))?;
            let mut spec = JobSpec::from_json(&text)
                .map_err(|e| Failure::invalid(format!("{}: {e}", path.display())))?;
            if let Some(n) = name {
                spec.name = n;
            }
            Ok(spec)
        }
        (None, Some(name)) if !commands.is_empty() => Ok(JobSpec::from_commands(name, &commands)),
        (None, Some(_)) => Err(Failure::invalid(
            "give at least one --command, or a job file with -f",
        )),
        (None, None) => Err(Failure::invalid(
            "give a job NAME with --command, or a job file with -f",
        )),
    }
}
