//! The figures at scale, on one fleet of virtual targets grown size by size:
//! enlisting, fan-out, nats-server RSS, force-poll, polling, and what an
//! operator waits for (`target list`, `status`). Each beside its raw
//! baseline from the same server in the same run.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use muster_shared::api::{ForcePollOutcome, JobInfo, JobWrite, Op, Selection, TargetInfo, TargetRef};
use muster_shared::job::JobSpec;
use muster_shared::msg::PollReport;
use muster_shared::name::JobName;

use super::fleet::Fleet;
use super::{raw, Sizes, Want};
use crate::virtual_targets::virtual_name;
use crate::{ms, percentile, row, rss_kib, CpuMeter, Row};

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.1}×", a.as_secs_f64() / b.as_secs_f64())
}

fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

/// Runs the wanted figures at each size of `sizes.targets`.
pub async fn run(want: Want, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("muster-bench: scale (virtual targets, {} connections)", crate::virtual_targets::CONNECTIONS);
    let mut fleet = Fleet::start().await?;
    let empty_rss = rss_kib(fleet.nats_pid());
    for &n in &sizes.targets {
        enlist(&mut fleet, n, rows).await?;
        if want.fan_out {
            fan_out(&fleet, n, rows).await?;
        }
    }
    let n = fleet.enlisted;
    rows.push(row(
        format!("nats-server RSS with {n} enlisted targets (raw: the same server before enlisting)"),
        mb(rss_kib(fleet.nats_pid())),
        mb(empty_rss),
        format!("{:.1}×", rss_kib(fleet.nats_pid()) as f64 / empty_rss.max(1) as f64),
    ));
    rows.push(row(format!("master RSS with {n} enlisted targets, right after"), mb(rss_kib(fleet.master_pid())), "-", "-"));
    if want.enlist && !sizes.idle.is_zero() {
        // Idle is the point here: nothing to await but time passing.
        eprintln!("muster-bench: master idle for {:?}", sizes.idle);
        tokio::time::sleep(sizes.idle).await;
        rows.push(row(
            format!("master RSS with {n} enlisted targets, after {}s idle (an expiry sweep ran)", sizes.idle.as_secs()),
            mb(rss_kib(fleet.master_pid())),
            "-",
            "-",
        ));
    }
    if want.polling {
        force_poll(&fleet, sizes.rtt_samples, rows).await?;
        polling(&fleet, n, sizes.poll_window, rows).await?;
    }
    if want.listing {
        listing(&fleet, n, rows).await?;
    }
    Ok(())
}

/// Enlists targets up to `n`; raw: one acked publish per new target to a
/// subject of its own (what enlisting must store at least).
async fn enlist(fleet: &mut Fleet, n: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let from = fleet.enlisted;
    let name = format!("RAWENLIST{n}");
    raw::doc_stream(&fleet.js, &name).await?;
    let raw = raw::publish_docs(&fleet.js, &name, n - from).await?;
    fleet.js.delete_stream(&name).await?;
    eprintln!("muster-bench: enlisting {from}..{n}");
    let took = fleet.enlist_up_to(n).await?;
    let what = if from == 0 {
        format!("enlist {n} targets (API, 64 at once)")
    } else {
        format!("enlist {n} targets: {} more after {from} (API, 64 at once)", n - from)
    };
    rows.push(row(what, ms(took), ms(raw), ratio(took, raw)));
    Ok(())
}

/// Assigns one job to the `n` enlisted targets (through groups filled
/// beforehand, [`Fleet::assign`]) and force-polls them all, until every
/// one has read the new revision and holds the job. Raw: one document per
/// target published, then each read with a Direct Get.
async fn fan_out(fleet: &Fleet, n: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("muster-bench: fan-out to {n}");
    let raw = raw::fan_out(&fleet.js, n).await?;
    let job = JobName::new(format!("fan{n}"))?;
    let info: JobInfo =
        fleet.api.call(Op::JobCreate, JobWrite { spec: JobSpec::from_commands(job.clone(), &["true".into()]) }).await?;
    // The groups are filled before the assign call; the time runs from it.
    let assign = fleet.assign(&job, n).await?;
    let start = Instant::now().checked_sub(assign).context("clock")?;
    let polled: Vec<ForcePollOutcome> =
        fleet.api.call(Op::TargetForcePollMany, Selection { targets: vec![], groups: vec![], all: true }).await?;
    let total = start.elapsed();
    if let Some(failed) = polled.iter().find(|p| p.error.is_some()) {
        anyhow::bail!("fan-out {n}: force-poll of {} failed: {:?}", failed.target, failed.error);
    }
    let holding = fleet.targets.holding(info.id);
    anyhow::ensure!(holding == n, "fan-out {n}: {holding} targets hold the job");
    rows.push(row(
        format!("fan-out to {n} targets: assign + force-poll all until each applied"),
        format!("{} (assign {})", ms(total), ms(assign)),
        ms(raw),
        ratio(total, raw),
    ));
    Ok(())
}

/// Force-poll round trips to one virtual target with the fleet enlisted,
/// against raw request/reply.
async fn force_poll(fleet: &Fleet, samples: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let raw = crate::raw_rtt(&fleet.client, samples).await?;
    let t = virtual_name(0);
    let mut fp = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        let _: PollReport = fleet.api.call(Op::TargetForcePoll, TargetRef { name: t.clone() }).await?;
        fp.push(start.elapsed());
    }
    fp.sort();
    let (p50, r50) = (percentile(&fp, 0.5), percentile(&raw, 0.5));
    rows.push(row(
        format!("force-poll p50 of a virtual target, {} enlisted (Direct Get path)", fleet.enlisted),
        ms(p50),
        ms(r50),
        ratio(p50, r50),
    ));
    Ok(())
}

/// Every target polls once, spread over `window`; raw: as many Direct Gets
/// of as many documents over the same window.
async fn polling(fleet: &Fleet, n: usize, window: Duration, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("muster-bench: {n} targets polling over {window:?}");
    let (master, nats) = (fleet.master_pid(), fleet.nats_pid());
    let (raw_lat, raw_cpu) = raw::polling(&fleet.js, n, window, || CpuMeter::start(master, nats)).await?;
    let meter = CpuMeter::start(master, nats);
    let gap = window / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(gap);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tick.tick().await;
        let poller = fleet.targets.poller();
        tasks.push(tokio::spawn(async move { poller.poll(i).await }));
    }
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        lat.push(t.await??);
    }
    let cpu = meter.finish();
    // When the slowest polls were started, to tell a stall of the server
    // (bunched) from a slow path (spread).
    let mut slowest: Vec<(Duration, usize)> = lat.iter().copied().zip(0..).collect();
    slowest.sort_by(|a, b| b.cmp(a));
    let at: Vec<String> = slowest
        .iter()
        .take(8)
        .map(|(d, i)| format!("{} at +{:.1}s", ms(*d), (gap * u32::try_from(*i).unwrap_or(u32::MAX)).as_secs_f64()))
        .collect();
    eprintln!("muster-bench:   slowest polls: {}", at.join(", "));
    lat.sort();
    let (p50, p99, r99) = (percentile(&lat, 0.5), percentile(&lat, 0.99), percentile(&raw_lat, 0.99));
    rows.push(row(
        format!("{n} targets polling once per {window:?}: poll p99 (p50 {})", ms(p50)),
        ms(p99),
        ms(r99),
        ratio(p99, r99),
    ));
    rows.push(row(
        "  … nats-server CPU over that window (master)".to_string(),
        format!("{:.0}% of a core ({:.0}%)", cpu.nats * 100.0, cpu.master * 100.0),
        format!("{:.0}% of a core", raw_cpu.nats * 100.0),
        format!("{:.1}×", cpu.nats / raw_cpu.nats.max(0.001)),
    ));
    Ok(())
}

/// `target list` and `status` with `n` targets enlisted, one API call each.
async fn listing(fleet: &Fleet, n: usize, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let start = Instant::now();
    let listed: Vec<TargetInfo> = fleet.api.call(Op::TargetList, ()).await?;
    rows.push(row(format!("`target list` of {} targets (one API call)", listed.len()), ms(start.elapsed()), "-", "-"));
    let start = Instant::now();
    let _: serde_json::Value = fleet.api.call(Op::Status, ()).await?;
    rows.push(row(format!("`status` with {n} targets"), ms(start.elapsed()), "-", "-"));
    rows.push(row(format!("master RSS after `target list` and `status` of {n}"), mb(rss_kib(fleet.master_pid())), "-", "-"));
    Ok(())
}
