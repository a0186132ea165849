//! `muster-bench`: Muster's speed next to the raw broker, measured in the same
//! run against the same nats-server, so the ratios survive a noisy machine.
//!
//! Run it with `scripts/bench` (release build) or `scripts/bench --quick`
//! (under a minute). Every figure is printed beside its raw NATS/JetStream
//! baseline and the ratio. The virtual targets used for fan-out and scale
//! share one connection but go through the real per-target path: the
//! master's force-poll on `muster.target.<t>.control`, a fetch from the
//! durable consumer `<t>` on `MUSTER_ASSIGN`, and a confirmed ack.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use muster_ctl::render::table_aligned;
use muster_ctl::ApiClient;
use muster_shared::api::{EnlistRequest, ForcePollOutcome, JobInfo, JobSelect, JobWrite, Op, Selection, TargetInfo, TargetRef};
use muster_shared::job::JobSpec;
use muster_shared::msg::{self, ControlReply, PollReport, RunRecord};
use muster_shared::name::{JobName, TargetName};
use muster_shared::subject::Subjects;
use muster_tests::{Cluster, Proc};
use tokio::sync::Mutex;

mod history;

#[derive(Debug, Parser)]
#[command(about = "Muster benchmarks against a raw NATS/JetStream baseline")]
struct Args {
    /// Small sizes: finishes in under a minute.
    #[arg(long)]
    quick: bool,
    /// Tiny sizes, to keep the benchmark working from the test suite.
    #[arg(long)]
    tiny: bool,
    /// Override the number of results for the ingest measurements.
    #[arg(long)]
    results: Option<usize>,
    /// Run only one stage.
    #[arg(long, value_enum)]
    only: Option<Stage>,
    /// Records in the results stream for the history stage.
    #[arg(long)]
    records: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Stage {
    /// Force-poll round trip and the agent's footprint.
    ForcePoll,
    /// Fan-out, and master and nats-server footprint.
    FanOut,
    /// Every virtual target polling once per window.
    Scale,
    /// Result ingest, steady and backlog drain.
    Ingest,
    /// `history` and `run show` over a full results stream.
    History,
}

struct Sizes {
    rtt_samples: usize,
    fanout: Vec<usize>,
    results: usize,
    scale_targets: usize,
    scale_window: Duration,
}

impl Sizes {
    fn for_args(a: &Args) -> Sizes {
        if a.tiny {
            Sizes { rtt_samples: 50, fanout: vec![10], results: 500, scale_targets: 20, scale_window: Duration::from_secs(2) }
        } else if a.quick {
            Sizes {
                rtt_samples: 500,
                fanout: vec![100, 1000],
                results: 20_000,
                scale_targets: 1000,
                scale_window: Duration::from_secs(6),
            }
        } else {
            Sizes {
                rtt_samples: 2000,
                fanout: vec![100, 1000, 10_000],
                results: 100_000,
                scale_targets: 10_000,
                scale_window: Duration::from_secs(60),
            }
        }
    }
}

/// One line of the report.
struct Row {
    what: String,
    muster: String,
    baseline: String,
    ratio: String,
}

/// A figure, also printed to stderr at once, so a long run that is stopped
/// still shows what it measured.
fn row(what: impl Into<String>, muster: impl Into<String>, baseline: impl Into<String>, ratio: impl Into<String>) -> Row {
    let r = Row { what: what.into(), muster: muster.into(), baseline: baseline.into(), ratio: ratio.into() };
    eprintln!("muster-bench:   {}: {} | raw {} | {}", r.what, r.muster, r.baseline, r.ratio);
    r
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/pid/stat, counted after the ')' (state is 3).
    (ticks(11) + ticks(12)) / 100.0
}

fn nats_pid() -> i32 {
    // The harness's nats-server is our only child of that name.
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let comm_ok = stat.contains("(nats-server)");
            let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
            comm_ok && ppid == Some(me)
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut sizes = Sizes::for_args(&args);
    if let Some(n) = args.results {
        sizes.results = n;
    }
    // The binaries beside this one (the same build profile).
    let exe_dir = std::env::current_exe()?.parent().context("exe dir")?.to_owned();
    std::env::set_var("MUSTER_BIN_DIR", &exe_dir);

    let mut cluster = tokio::task::block_in_place(|| {
        let mut c = Cluster::new();
        // BENCH_LOG sets the log filter of the processes under test.
        c.env.push(("MUSTER_LOG".into(), std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into())));
        c.start_master();
        c
    });
    let client = async_nats::connect(&cluster.url()).await?;
    let bench = Bench {
        js: jetstream::new(client.clone()),
        api: ApiClient::new(client.clone(), Subjects::default()),
        subjects: Subjects::default(),
        client,
    };
    let mut rows = Vec::new();

    println!("muster-bench: nats-server 2.15.1 (one node, file storage, loopback), {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()));
    let runs = |stage: Stage| args.only.is_none_or(|only| only == stage);
    if runs(Stage::ForcePoll) {
        force_poll_and_footprint(&bench, &mut cluster, &sizes, &mut rows).await?;
    }
    if runs(Stage::FanOut) || runs(Stage::Scale) {
        let mut fleet = Fleet { targets: VirtualTargets::start(bench.client.clone(), bench.js.clone(), bench.subjects.clone()).await?, enlisted: 0 };
        if runs(Stage::FanOut) {
            fan_out(&bench, &mut fleet, &cluster, &sizes, &mut rows).await?;
        }
        if runs(Stage::Scale) {
            scale_stage(&bench, &mut fleet, &cluster, &sizes, &mut rows).await?;
        }
    }
    if runs(Stage::Ingest) {
        ingest_stage(&bench, &mut cluster, &sizes, &mut rows).await?;
    }
    if runs(Stage::History) {
        let records = args.records.unwrap_or(if args.tiny {
            2_000
        } else if args.quick {
            50_000
        } else {
            1_000_000
        });
        history::history_stage(&bench, &cluster, records, &mut rows).await?;
    }

    print_rows(&rows);
    if std::env::var_os("BENCH_LOG").is_some() {
        // Keep the logs the filter asked for.
        let keep = std::env::temp_dir().join("muster-bench-logs");
        std::fs::create_dir_all(&keep)?;
        for p in cluster.masters.iter().chain(cluster.targets.iter().map(|(_, p)| p)) {
            std::fs::copy(&p.log, keep.join(p.log.file_name().context("log name")?))?;
        }
        eprintln!("muster-bench: logs kept in {}", keep.display());
    }
    drop(cluster);
    Ok(())
}

/// What every stage talks through.
struct Bench {
    client: async_nats::Client,
    js: jetstream::Context,
    api: ApiClient,
    subjects: Subjects,
}

/// Force-poll round trips to a real agent against raw request/reply, then
/// the agent's RSS idle and while running a job.
async fn force_poll_and_footprint(b: &Bench, cluster: &mut Cluster, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("muster-bench: force-poll");
    let raw_rtt = raw_rtt(&b.client, sizes.rtt_samples).await?;
    tokio::task::block_in_place(|| {
        cluster.start_target("bench01", 3600);
        cluster.wait_target_online("bench01");
    });
    let t = TargetName::new("bench01")?;
    let mut fp = Vec::with_capacity(sizes.rtt_samples);
    for _ in 0..sizes.rtt_samples {
        let start = Instant::now();
        let _: PollReport = b.api.call(Op::TargetForcePoll, TargetRef { name: t.clone() }).await?;
        fp.push(start.elapsed());
    }
    fp.sort();
    let (p50, p99) = (percentile(&fp, 0.5), percentile(&fp, 0.99));
    let (r50, r99) = (percentile(&raw_rtt, 0.5), percentile(&raw_rtt, 0.99));
    rows.push(row("force-poll p50 (API → master → target poll → reply)", ms(p50), ms(r50), format!("{:.1}×", p50.as_secs_f64() / r50.as_secs_f64())));
    rows.push(row("force-poll p99", ms(p99), ms(r99), format!("{:.1}×", p99.as_secs_f64() / r99.as_secs_f64())));

    eprintln!("muster-bench: footprint");
    let target_pid = cluster.target("bench01").pid();
    let idle_rss = rss_kib(target_pid);
    let job = JobSpec::from_commands(JobName::new("bench-sleep")?, &["sleep 1".to_owned()]);
    let _: JobInfo = b.api.call(Op::JobCreate, JobWrite { spec: job }).await?;
    let sel = |targets: Vec<TargetName>| JobSelect { job: JobName::new("bench-sleep").unwrap(), select: Selection { targets, groups: vec![], all: false } };
    let _: JobInfo = b.api.call(Op::JobAssign, sel(vec![t.clone()])).await?;
    let _: serde_json::Value = b.api.call(Op::JobStart, sel(vec![])).await?;
    let mut busy_rss = 0;
    for _ in 0..20 {
        busy_rss = busy_rss.max(rss_kib(target_pid));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    rows.push(row("target agent RSS, idle", format!("{:.1} MB", idle_rss as f64 / 1024.0), "-", "-"));
    rows.push(row("target agent RSS, running a job", format!("{:.1} MB", busy_rss as f64 / 1024.0), "-", "-"));
    Ok(())
}

/// The `i`th virtual target: `v00000`, `v00001`, ...
fn virtual_name(i: usize) -> TargetName {
    TargetName::new(format!("v{i:05}")).expect("a valid name")
}

/// Virtual targets, and how many of them (`v00000`...) are enlisted.
struct Fleet {
    targets: VirtualTargets,
    enlisted: usize,
}

impl Fleet {
    /// Enlists the first `n` virtual targets (those not yet enlisted) and
    /// binds them to their consumers, as agents do at start. Returns their
    /// names and how long the enlisting took.
    async fn enlist(&mut self, b: &Bench, n: usize) -> anyhow::Result<(Vec<TargetName>, Duration)> {
        let names: Vec<TargetName> = (0..n).map(virtual_name).collect();
        let start = Instant::now();
        futures::stream::iter(names.iter().skip(self.enlisted).cloned())
            .map(|name| {
                let api = b.api.clone();
                async move {
                    let req = EnlistRequest { name, location: None, instance: None, poll_interval_secs: Some(60) };
                    api.call::<_, TargetInfo>(Op::TargetEnlist, req).await
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let took = start.elapsed();
        self.enlisted = self.enlisted.max(n);
        self.targets.bind(&names).await?;
        Ok((names, took))
    }
}

/// Fan-out to each size of virtual targets against raw publish + fetch, then
/// the master's and nats-server's footprint at the largest size.
async fn fan_out(b: &Bench, fleet: &mut Fleet, cluster: &Cluster, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("muster-bench: fan-out");
    for &n in &sizes.fanout {
        // The raw baseline first, on a server that holds only the previous
        // sizes' targets; its stream (and consumers) is deleted afterwards.
        let raw = raw_fanout(&b.js, n).await?;
        let (names, enlist_time) = fleet.enlist(b, n).await?;

        let job = JobName::new(format!("fan{n}"))?;
        let _: JobInfo = b.api.call(Op::JobCreate, JobWrite { spec: JobSpec::from_commands(job.clone(), &["true".into()]) }).await?;
        fleet.targets.applied.store(0, Ordering::SeqCst);
        let start = Instant::now();
        let assign = JobSelect { job: job.clone(), select: Selection { targets: names.clone(), groups: vec![], all: false } };
        let mut api_long = b.api.clone();
        api_long.timeout = Duration::from_secs(600);
        let _: JobInfo = api_long.call(Op::JobAssign, assign).await?;
        let posted = start.elapsed();
        let polled: Vec<ForcePollOutcome> =
            api_long.call(Op::TargetForcePollMany, Selection { targets: names.clone(), groups: vec![], all: false }).await?;
        let total = start.elapsed();
        if let Some(failed) = polled.iter().find(|p| p.error.is_some()) {
            anyhow::bail!("fan-out {n}: force-poll of {} failed: {:?}", failed.target, failed.error);
        }
        let applied = fleet.targets.applied.load(Ordering::SeqCst);
        anyhow::ensure!(applied as usize == n, "fan-out {n}: {applied} targets applied the job");
        rows.push(row(
            format!("fan-out to {n} targets: assign (post) + force-poll all until applied"),
            format!("{} (post {})", ms(total), ms(posted)),
            ms(raw),
            format!("{:.1}×", total.as_secs_f64() / raw.as_secs_f64()),
        ));
        rows.push(row(format!("enlist {n} targets (API, 64 at once)"), ms(enlist_time), "-", "-"));
    }
    footprint_rows(cluster, fleet.enlisted, rows);
    Ok(())
}

/// The master's and nats-server's RSS with `enlisted` targets.
fn footprint_rows(cluster: &Cluster, enlisted: usize, rows: &mut Vec<Row>) {
    let mb = |pid| format!("{:.1} MB", rss_kib(pid) as f64 / 1024.0);
    rows.push(row(format!("master RSS with {enlisted} enlisted targets"), mb(cluster.masters[0].pid()), "-", "-"));
    rows.push(row(format!("nats-server RSS with {enlisted} per-target consumers"), mb(nats_pid()), "-", "-"));
}

/// Every virtual target polls once, spread over the window (enlisting them
/// first if the fan-out did not).
async fn scale_stage(b: &Bench, fleet: &mut Fleet, cluster: &Cluster, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("muster-bench: scale");
    let n = sizes.scale_targets;
    if fleet.enlisted < n {
        fleet.enlist(b, n).await?;
        footprint_rows(cluster, n, rows);
    }
    let (lat, cpu) = scale(&fleet.targets, n, sizes.scale_window, cluster.masters[0].pid(), nats_pid()).await?;
    rows.push(row(
        format!("{n} targets polling once per {:?}: poll p50 / p99", sizes.scale_window),
        format!("{} / {}", ms(percentile(&lat, 0.5)), ms(percentile(&lat, 0.99))),
        "-",
        "-",
    ));
    rows.push(row("  … CPU over that window: master / nats-server", cpu.to_string(), "-", "-"));

    // What an operator waits for with that many targets.
    let mut api_long = b.api.clone();
    api_long.timeout = Duration::from_secs(600);
    let start = Instant::now();
    let listed: Vec<TargetInfo> = api_long.call(Op::TargetList, ()).await?;
    rows.push(row(format!("`target list` of {} targets (one API call)", listed.len()), ms(start.elapsed()), "-", "-"));
    let start = Instant::now();
    let _: serde_json::Value = api_long.call(Op::Status, ()).await?;
    rows.push(row(format!("`status` with {n} targets"), ms(start.elapsed()), "-", "-"));
    Ok(())
}

/// Result ingest with the master running, then the drain of a backlog
/// published while it was down, against raw async publish and fetch + ack.
async fn ingest_stage(b: &Bench, cluster: &mut Cluster, sizes: &Sizes, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("muster-bench: ingest");
    let record = sample_record();
    let body = Bytes::from(msg::encode(&record));
    let raw_pub = raw_publish_rate(&b.js, sizes.results, body.len()).await?;
    let raw_fetch = raw_fetch_ack_rate(&b.js, sizes.results, body.len()).await?;
    let (steady, steady_cpu) = ingest(b, sizes.results, &record, cluster, false).await?;
    rows.push(row(
        format!("result ingest, steady ({} results, {} B)", sizes.results, body.len()),
        format!("{steady:.0} results/s"),
        format!("{raw_pub:.0} msg/s async publish"),
        format!("{:.0}%", 100.0 * steady / raw_pub),
    ));
    rows.push(row("  … CPU while ingesting: master / nats-server", steady_cpu.to_string(), "-", "-"));
    let (backlog, drain_cpu) = ingest(b, sizes.results, &record, cluster, true).await?;
    rows.push(row(
        format!("backlog drain after master outage ({} results)", sizes.results),
        format!("{backlog:.0} results/s"),
        format!("{raw_fetch:.0} msg/s fetch+ack"),
        format!("{:.0}%", 100.0 * backlog / raw_fetch),
    ));
    rows.push(row("  … CPU while draining: master / nats-server", drain_cpu.to_string(), "-", "-"));
    Ok(())
}

/// CPU shares of the master and nats-server over a measured interval.
struct CpuShare {
    master: f64,
    nats: f64,
}

impl std::fmt::Display for CpuShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0}% / {:.0}% of one core", self.master * 100.0, self.nats * 100.0)
    }
}

/// Measures the CPU the master and nats-server use from now until `finish`.
struct CpuMeter {
    master_pid: i32,
    nats_pid: i32,
    master0: f64,
    nats0: f64,
    t0: Instant,
}

impl CpuMeter {
    fn start(master_pid: i32, nats_pid: i32) -> CpuMeter {
        CpuMeter { master_pid, nats_pid, master0: cpu_secs(master_pid), nats0: cpu_secs(nats_pid), t0: Instant::now() }
    }

    fn finish(&self) -> CpuShare {
        let secs = self.t0.elapsed().as_secs_f64();
        CpuShare { master: (cpu_secs(self.master_pid) - self.master0) / secs, nats: (cpu_secs(self.nats_pid) - self.nats0) / secs }
    }
}

/// Every figure, as one table at the end.
fn print_rows(rows: &[Row]) {
    let cells = rows.iter().map(|r| vec![r.what.clone(), r.muster.clone(), r.baseline.clone(), r.ratio.clone()]).collect();
    println!();
    println!("{}", table_aligned(&["measure", "muster", "raw NATS", "ratio"], cells, &[1, 2]));
}

/// Raw core request/reply round trips to a trivial responder.
async fn raw_rtt(client: &async_nats::Client, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut sub = client.subscribe("bench.echo").await?;
    let responder = client.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                responder.publish(reply, m.payload).await.ok();
            }
        }
    });
    client.flush().await?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        client.request("bench.echo", Bytes::from_static(&[0u8; 64])).await?;
        out.push(start.elapsed());
    }
    task.abort();
    out.sort();
    Ok(out)
}

/// Raw baseline for fan-out: publish one message to each of `n` subjects,
/// then one fetch + ack per subject from a consumer each.
async fn raw_fanout(js: &jetstream::Context, n: usize) -> anyhow::Result<Duration> {
    let name = format!("RAWFAN{n}");
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("rawfan{n}.*")],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            // As MUSTER_ASSIGN: above nats-server's default of 1,000.
            max_consumers: muster_shared::streams::MAX_TARGETS,
            ..Default::default()
        })
        .await?;
    let consumers: Vec<PullConsumer> = futures::stream::iter(0..n)
        .map(|i| {
            let stream = stream.clone();
            async move {
                stream
                    .create_consumer(jetstream::consumer::pull::Config {
                        durable_name: Some(format!("c{i}")),
                        filter_subject: format!("rawfan{n}.t{i}"),
                        ..Default::default()
                    })
                    .await
            }
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    publish_all(js, n, |i| (format!("rawfan{n}.t{i}"), Bytes::from_static(&[0u8; 512]))).await?;
    futures::stream::iter(consumers)
        .map(|c| async move {
            let mut batch = c.fetch().max_messages(10).messages().await?;
            while let Some(m) = batch.next().await {
                m.map_err(|e| anyhow::anyhow!("{e}"))?.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Ok::<(), anyhow::Error>(())
        })
        // As many at once as the master's force-poll of many targets.
        .buffer_unordered(128)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let took = start.elapsed();
    js.delete_stream(&name).await?;
    Ok(took)
}

async fn raw_publish_rate(js: &jetstream::Context, n: usize, size: usize) -> anyhow::Result<f64> {
    js.create_stream(jetstream::stream::Config { name: "RAWPUB".into(), subjects: vec!["rawpub.>".into()], ..Default::default() })
        .await?;
    let body = Bytes::from(vec![b'x'; size]);
    let start = Instant::now();
    publish_all(js, n, |i| (format!("rawpub.{}", i % 100), body.clone())).await?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    Ok(rate)
}

/// Publishes `n` messages with many acks in flight, awaiting them in windows.
async fn publish_all(js: &jetstream::Context, n: usize, msg: impl Fn(usize) -> (String, Bytes)) -> anyhow::Result<()> {
    let mut window = Vec::with_capacity(1000);
    for i in 0..n {
        let (subject, body) = msg(i);
        window.push(js.publish(subject, body).await?);
        if window.len() == 1000 {
            for a in window.drain(..) {
                a.await?;
            }
        }
    }
    for a in window {
        a.await?;
    }
    Ok(())
}

async fn raw_fetch_ack_rate(js: &jetstream::Context, n: usize, _size: usize) -> anyhow::Result<f64> {
    let stream = js.get_stream("RAWPUB").await?;
    let c: PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config { durable_name: Some("rawfetch".into()), ..Default::default() })
        .await?;
    let start = Instant::now();
    let mut got = 0;
    while got < n {
        let mut batch = c.fetch().max_messages(1000).expires(Duration::from_secs(1)).messages().await?;
        let mut last = None;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            got += 1;
            if let Some(prev) = last.replace(m) {
                prev.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        if let Some(m) = last {
            m.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    js.delete_stream("RAWPUB").await?;
    Ok(rate)
}

fn sample_record() -> RunRecord {
    serde_json::from_value(serde_json::json!({
        "v": 1, "run_id": uuid::Uuid::now_v7(), "job_id": uuid::Uuid::new_v4(), "job": "nightly-backup",
        "target": "v00000", "trigger": {"kind": "schedule", "schedule": "nightly"}, "outcome": "succeeded",
        "started_at": "2026-11-26T02:30:00Z", "finished_at": "2026-11-26T02:30:04Z",
        "steps": [{"name": "dump", "index": 0, "outcome": "succeeded", "exit_code": 0,
                   "started_at": "2026-11-26T02:30:00Z", "duration_ms": 4000, "retries": 0,
                   "output": "dumped 1234 rows\n", "output_cut_bytes": 0}]
    }))
    .expect("sample record")
}

/// Publishes `n` final run records of 100 jobs; returns results/s until
/// the master's consumer has acked them all, and the CPU used meanwhile.
/// With `outage`, the master is killed first and started after the backlog
/// is in the stream; the drain is timed from its start.
async fn ingest(b: &Bench, n: usize, template: &RunRecord, cluster: &mut Cluster, outage: bool) -> anyhow::Result<(f64, CpuShare)> {
    let target = virtual_name(0);
    let stream = b.js.get_stream(b.subjects.results_stream()).await?;
    if outage {
        cluster.masters[0].kill();
    }
    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = template.clone();
        r.run_id = uuid::Uuid::now_v7();
        r.job_id = uuid::Uuid::from_u128(i as u128 % 100);
        r.target = target.clone();
        records.push(r);
    }
    let start = Instant::now();
    let meter = CpuMeter::start(cluster.masters[0].pid(), nats_pid());
    publish_all(&b.js, n, |i| (b.subjects.result_run(&target, records[i].job_id), Bytes::from(msg::encode(&records[i])))).await?;
    let (start, meter) = if outage {
        let c = &mut *cluster;
        tokio::task::block_in_place(|| {
            let mut cmd = std::process::Command::new(muster_tests::bin("muster-master"));
            cmd.env("NATS_URL", c.url()).envs(c.env.clone());
            let log = c.dir.path().join("master-bench.log");
            c.masters[0] = Proc::spawn("muster-master", cmd, log);
        });
        (Instant::now(), CpuMeter::start(c.masters[0].pid(), nats_pid()))
    } else {
        (start, meter)
    };

    loop {
        let info = stream.consumer_info(muster_shared::streams::MASTER_CONSUMER).await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        anyhow::ensure!(start.elapsed() < Duration::from_secs(600), "drain did not finish (outage: {outage})");
    }
    Ok((n as f64 / start.elapsed().as_secs_f64(), meter.finish()))
}

/// Virtual targets: one wildcard subscription to every control subject; each
/// control request makes that target poll ([`AgentPath::poll`]) and answer
/// with its poll report.
struct VirtualTargets {
    applied: Arc<AtomicU64>,
    path: AgentPath,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for VirtualTargets {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl VirtualTargets {
    async fn start(client: async_nats::Client, js: jetstream::Context, subjects: Subjects) -> anyhow::Result<VirtualTargets> {
        let mut sub = client.subscribe(format!("{}.target.*.control", subjects.prefix())).await?;
        client.flush().await?;
        let applied = Arc::new(AtomicU64::new(0));
        let path = AgentPath { js, subjects, consumers: Arc::default() };
        let (a, p) = (applied.clone(), path.clone());
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(name) = p.subjects.target_of(&m.subject).and_then(|t| TargetName::new(t).ok()) else { continue };
                if !name.as_str().starts_with('v') {
                    continue;
                }
                let (client, a, p) = (client.clone(), a.clone(), p.clone());
                tokio::spawn(async move {
                    let Ok(report) = p.poll(&name).await else { return };
                    a.fetch_add(u64::from(report.applied), Ordering::SeqCst);
                    if let Some(reply) = m.reply {
                        client.publish(reply, msg::encode(&ControlReply::report(report)).into()).await.ok();
                    }
                });
            }
        });
        Ok(VirtualTargets { applied, path, task })
    }

    /// Looks up each target's consumer once, as an agent does at start.
    async fn bind(&self, names: &[TargetName]) -> anyhow::Result<()> {
        futures::stream::iter(names)
            .map(|name| self.path.consumer(name))
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(())
    }
}

/// The agent's side of the per-target path, for any virtual target: its
/// durable consumer (looked up once), and a poll as the agent polls.
#[derive(Clone)]
struct AgentPath {
    js: jetstream::Context,
    subjects: Subjects,
    consumers: Arc<Mutex<HashMap<TargetName, PullConsumer>>>,
}

impl AgentPath {
    /// The target's consumer, looked up on first use.
    async fn consumer(&self, name: &TargetName) -> anyhow::Result<PullConsumer> {
        if let Some(c) = self.consumers.lock().await.get(name) {
            return Ok(c.clone());
        }
        let c: PullConsumer = self
            .js
            .get_consumer_from_stream(name.as_str(), self.subjects.assign_stream())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.consumers.lock().await.insert(name.clone(), c.clone());
        Ok(c)
    }

    /// One poll: fetch all pending, confirm each ack, publish the poll report
    /// in the background.
    async fn poll(&self, name: &TargetName) -> anyhow::Result<PollReport> {
        let consumer = self.consumer(name).await?;
        let mut applied = 0;
        let mut batch = consumer.fetch().max_messages(256).messages().await?;
        while let Some(m) = batch.next().await {
            m.map_err(|e| anyhow::anyhow!("{e}"))?.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            applied += 1;
        }
        let report = PollReport {
            v: 1,
            target: name.clone(),
            polled_at: chrono::Utc::now(),
            agent_version: "bench".into(),
            instance: uuid::Uuid::nil(),
            poll_interval_secs: 60,
            applied,
            failed: 0,
            jobs: 0,
            running: vec![],
            spooled: 0,
            clock_skew_ms: None,
            timezone: String::new(),
            bad_instructions: 0,
            bad_control: 0,
            applied_revision: None,
        };
        let (js, subject, body) = (self.js.clone(), self.subjects.poll(name), msg::encode(&report));
        tokio::spawn(async move {
            if let Ok(ack) = js.publish(subject, body.into()).await {
                ack.await.ok();
            }
        });
        Ok(report)
    }
}

/// `n` virtual targets each poll once, spread evenly over `window`. Returns
/// the poll latencies and the master's and nats-server's CPU share.
async fn scale(
    v: &VirtualTargets,
    n: usize,
    window: Duration,
    master_pid: i32,
    nats_pid: i32,
) -> anyhow::Result<(Vec<Duration>, CpuShare)> {
    let meter = CpuMeter::start(master_pid, nats_pid);
    let gap = window / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(gap);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tick.tick().await;
        let path = v.path.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            path.poll(&virtual_name(i)).await.map(|_| start.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        lat.push(t.await??);
    }
    lat.sort();
    Ok((lat, meter.finish()))
}
