//! The history stage: `musterctl history` and `run show` over a results
//! stream holding a month's worth of records (1,000,000 by default).
//!
//! The stream is filled through raw async publish, as agents' spools do
//! (subject `muster.result.<t>.run.<job-id>`, `Nats-Msg-Id`), the master
//! drains it and builds its run index, and then the real `musterctl`
//! binary is timed end to end (process start, connect, read, print of
//! `--json` into a pipe), median of several runs. Beside each figure: a raw
//! Direct Get round trip on the same stream, and `musterctl` doing no read
//! at all (`history --limit 0`: start and connect), both from the same run.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use muster_shared::api::{JobInfo, JobWrite, Op};
use muster_shared::job::JobSpec;
use muster_shared::msg::{self, RunRecord};
use muster_shared::name::{JobName, TargetName};
use muster_shared::subject::Bucket;
use muster_tests::Cluster;
use uuid::Uuid;

use super::{ms, row, sample_record, Bench, Row};

/// Targets the records are spread over; each runs every job.
const TARGETS: usize = 1_000;

/// Jobs per target; job 0 is a real job (so `--job` finds its id).
const JOBS: usize = 100;

/// Timed runs per query (the median is reported).
const SAMPLES: usize = 7;

/// The `i`th record's target and job index: target `i % TARGETS`, and
/// each target goes through the jobs in turn.
fn placement(i: usize) -> (TargetName, usize) {
    let target = TargetName::new(format!("h{:04}", i % TARGETS)).expect("a valid name");
    (target, (i / TARGETS) % JOBS)
}

/// Fills `MUSTER_RESULTS` with `n` run records, waits for the master to
/// index them, then times the three queries against their baselines.
pub(crate) async fn history_stage(b: &Bench, cluster: &Cluster, n: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("muster-bench: history ({n} records)");
    let spec = JobSpec::from_commands(JobName::new("bench-history")?, &["true".to_owned()]);
    let job: JobInfo = b.api.call(Op::JobCreate, JobWrite { spec }).await?;
    let job_ids: Vec<Uuid> = (0..JOBS).map(|j| if j == 0 { job.id } else { Uuid::from_u128(0xb00_0000 + j as u128) }).collect();
    let template = sample_record();

    let start = Instant::now();
    let mut probe = None;
    let mut window = Vec::with_capacity(1000);
    for i in 0..n {
        let (target, j) = placement(i);
        let mut r: RunRecord = template.clone();
        r.run_id = Uuid::now_v7();
        r.target = target;
        r.job_id = job_ids[j];
        if j == 0 {
            r.job = job.spec.name.clone();
        }
        if i == n / 2 {
            probe = Some(r.run_id);
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", r.msg_id().as_str());
        let subject = b.subjects.result_run(&r.target, r.job_id);
        window.push(b.js.publish_with_headers(subject, headers, Bytes::from(msg::encode(&r))).await?);
        if window.len() == 1000 {
            for a in window.drain(..) {
                a.await?;
            }
        }
    }
    for a in window {
        a.await?;
    }
    let published = start.elapsed();
    let record_bytes = msg::encode(&template).len();
    rows.push(row(
        format!("history: fill MUSTER_RESULTS ({n} records of ~{record_bytes} B, async publish)"),
        format!("{:.1} s", published.as_secs_f64()),
        "-",
        format!("{:.0} msg/s", n as f64 / published.as_secs_f64()),
    ));

    // The master drains the backlog and indexes every run.
    let results = b.js.get_stream(b.subjects.results_stream()).await?;
    loop {
        let info = results.consumer_info(muster_shared::streams::MASTER_CONSUMER).await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(3600), "the master did not drain the results stream");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let indexed = start.elapsed();
    let mut index = b.js.get_stream(format!("KV_{}", b.subjects.bucket(Bucket::Runs))).await?;
    let index_state = index.info().await?.state.clone();
    rows.push(row(
        "history: master drained and indexed them (from the first publish)",
        format!("{:.1} s", indexed.as_secs_f64()),
        "-",
        format!("index {} keys, {:.0} MB", index_state.messages, index_state.bytes as f64 / 1e6),
    ));

    // Baselines, same run: a raw Direct Get, and musterctl reading nothing.
    let last_subject = b.subjects.result_run(&placement(n - 1).0, job_ids[placement(n - 1).1]);
    let mut raw = Vec::with_capacity(SAMPLES * 10);
    for _ in 0..SAMPLES * 10 {
        let t = Instant::now();
        results.direct_get_last_for_subject(last_subject.clone()).await?;
        raw.push(t.elapsed());
    }
    let raw = median(raw);
    let url = cluster.url();
    let ctl = |args: &[&str]| -> anyhow::Result<Duration> {
        let mut times = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let t = Instant::now();
            let out = Command::new(muster_tests::bin("musterctl")).env("NATS_URL", &url).args(args).arg("--json").output()?;
            times.push(t.elapsed());
            anyhow::ensure!(out.status.success(), "musterctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(median(times))
    };
    let probe = probe.expect("a probe run").to_string();
    let (target, _) = placement(n / 2);
    let target = target.to_string();
    let timed = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        Ok([
            ("musterctl start + connect, no read (history --limit 0)", ctl(&["history", "--limit", "0"])?),
            ("history --limit 20", ctl(&["history", "--limit", "20"])?),
            (
                "history --job J --target T --limit 20",
                ctl(&["history", "--job", "bench-history", "--target", &target, "--limit", "20"])?,
            ),
            ("run show ID (indexed)", ctl(&["run", "show", &probe])?),
        ])
    })?;
    for (what, took) in timed {
        rows.push(row(
            format!("{what}, {n} records (median of {SAMPLES})"),
            ms(took),
            format!("{} Direct Get", ms(raw)),
            format!("{:.0}×", took.as_secs_f64() / raw.as_secs_f64()),
        ));
    }

    // The fallback: the run's index entry gone, found from its time.
    let runs_index = b.js.get_key_value(b.subjects.bucket(Bucket::Runs)).await?;
    runs_index.delete(&probe).await?;
    let fallback = tokio::task::block_in_place(|| {
        let t = Instant::now();
        let out = Command::new(muster_tests::bin("musterctl"))
            .env("NATS_URL", &url)
            .args(["run", "show", &probe, "--json"])
            .output()?;
        anyhow::ensure!(out.status.success(), "run show without the index: {}", String::from_utf8_lossy(&out.stderr));
        Ok(t.elapsed())
    })?;
    rows.push(row(
        format!(
            "run show ID, not indexed (forward read from its time; records published within {:.0} s)",
            published.as_secs_f64()
        ),
        ms(fallback),
        format!("{} Direct Get", ms(raw)),
        format!("{:.0}×", fallback.as_secs_f64() / raw.as_secs_f64()),
    ));
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
