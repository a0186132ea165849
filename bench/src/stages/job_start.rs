//! `job start` at sizes: the reply to 1, 10, 50, 1,000 targets (answered
//! once the starts are posted, as `musterctl job start` asks), and
//! `job start --all --wait` until every run is final, on a fleet of virtual
//! targets that answer each start with its run's final record.

use std::process::Stdio;
use std::time::{Duration, Instant};

use muster_shared::api::{
    Delivery, DeliveryState, ForcePollOutcome, JobInfo, JobRef, JobSelect, JobTargetStatus, JobWrite, Op, Selection, StartReply,
    StartStop,
};
use muster_shared::job::JobSpec;
use muster_shared::name::JobName;

use super::fleet::Fleet;
use super::{raw, Sizes, Want};
use crate::{ms, row, Row};

/// `job start` calls per size.
const REPEATS: usize = 3;

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.1}×", a.as_secs_f64() / b.as_secs_f64())
}

pub async fn run(want: Want, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("muster-bench: job start");
    let largest = sizes.start_sizes.iter().copied().max().unwrap_or(0);
    let n = if want.start_wait { largest.max(sizes.wait_targets) } else { largest };
    let mut fleet = Fleet::start().await?;
    fleet.enlist_up_to(n).await?;
    let job = JobName::new("start-bench")?;
    let _: JobInfo =
        fleet.api.call(Op::JobCreate, JobWrite { spec: JobSpec::from_commands(job.clone(), &["true".into()]) }).await?;
    fleet.assign(&job, n).await?;
    let _: Vec<ForcePollOutcome> =
        fleet.api.call(Op::TargetForcePollMany, Selection { targets: vec![], groups: vec![], all: true }).await?;

    if want.job_start {
        for &k in &sizes.start_sizes {
            // The median of a few, on a machine others share.
            let mut took = Vec::with_capacity(REPEATS);
            let mut raws = Vec::with_capacity(REPEATS);
            for _ in 0..REPEATS {
                raws.push(raw::requests(&fleet.client, k).await?);
                let start = Instant::now();
                let select = Selection { targets: Fleet::names(k), groups: vec![], all: false };
                let body = StartStop {
                    job: JobSelect { job: job.clone(), select },
                    expires_secs: None,
                    reply: StartReply::Posted,
                    params: Default::default(),
                };
                let d: Vec<Delivery> = fleet.api.call(Op::JobStart, body).await?;
                took.push(start.elapsed());
                let posted = d.iter().filter(|d| d.state == DeliveryState::Posted).count();
                anyhow::ensure!(posted == k, "job start to {k}: {posted} posted");
                // The force-polls go on after the answer: the next call is
                // timed once these runs are final, not beside them.
                settle(&fleet, &job, &d).await?;
            }
            took.sort();
            raws.sort();
            let (took, raw) = (took[REPEATS / 2], raws[REPEATS / 2]);
            rows.push(row(
                format!(
                    "`job start` reply to {k} targets, median of {REPEATS} (raw: {k} request/replies, {} at once)",
                    raw::IN_FLIGHT
                ),
                ms(took),
                ms(raw),
                ratio(took, raw),
            ));
        }
    }
    if want.start_wait {
        let k = sizes.wait_targets;
        anyhow::ensure!(fleet.enlisted == k, "--all needs exactly {k} enlisted, not {}", fleet.enlisted);
        let raw = raw::start_and_follow(&fleet.client, &fleet.js, k).await?;
        let took = start_wait(&fleet, &job)?;
        rows.push(row(
            format!(
                "`job start --all --wait` on {k} targets until all runs final (raw: requests + {k} records published and read)"
            ),
            ms(took),
            ms(raw),
            ratio(took, raw),
        ));
    }
    Ok(())
}

/// Waits until every run of `started` is final in job status and the
/// master has handled every record, so that the
/// next measurement does not share the machine with this one's tail (the
/// force-polls after the answer, the runs' records, their ingest).
async fn settle(fleet: &Fleet, job: &JobName, started: &[Delivery]) -> anyhow::Result<()> {
    let want: std::collections::HashSet<uuid::Uuid> = started.iter().filter_map(|d| d.run_id).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let results = fleet.js.get_stream(muster_shared::subject::Subjects::default().results_stream()).await?;
    loop {
        let status: Vec<JobTargetStatus> = fleet.api.call(Op::JobStatus, JobRef { job: job.clone() }).await?;
        let done = status.iter().filter(|s| want.contains(&s.run_id) && s.outcome.is_final()).count();
        // And every record handled (the start entries taken out of the
        // manifests, the download-list rows settled): the master acks a
        // batch after all of that.
        let info = results.consumer_info(muster_shared::streams::MASTER_CONSUMER).await?;
        if done == want.len() && info.num_pending == 0 && info.num_ack_pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "job start: {done} of {} runs final after 120 s", want.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `musterctl job start JOB --all --wait` as an operator does (output
/// discarded); returns its wall time from spawn to exit.
fn start_wait(fleet: &Fleet, job: &JobName) -> anyhow::Result<Duration> {
    tokio::task::block_in_place(|| {
        let start = Instant::now();
        let status = std::process::Command::new(muster_tests::bin("musterctl"))
            .env("NATS_URL", fleet.cluster.url())
            .envs(fleet.cluster.env.clone())
            .args(["job", "start", job.as_str(), "--all", "--wait", "--timeout", "600", "--json"])
            .stdout(Stdio::null())
            .status()?;
        let took = start.elapsed();
        anyhow::ensure!(status.success(), "musterctl job start --all --wait: {status}");
        Ok(took)
    })
}
