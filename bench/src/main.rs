//! `muster-bench`: Muster's speed next to the raw broker, measured in the same
//! run against the same nats-server, so the ratios survive a noisy machine.
//!
//! Run it with `scripts/bench` (release build) or `scripts/bench --quick`
//! (under a minute). Every figure is printed beside its raw NATS/JetStream
//! baseline and the ratio. The stages at scale (up to 100,000 targets,
//! `--only STAGE --targets N`) use virtual targets that share a few
//! connections but go through the agent's real path: the master's
//! force-poll on `muster.target.<t>.control`, answered after a Direct Get of
//! the target's own manifest and changed job documents
//! ([`virtual_targets`], [`stages`]).

mod stages;
mod virtual_targets;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use muster_ctl::render::table_aligned;
use muster_ctl::ApiClient;
use muster_shared::api::{JobInfo, JobSelect, JobWrite, Op, Selection, TargetRef};
use muster_shared::job::JobSpec;
use muster_shared::msg::{self, PollReport, RunRecord};
use muster_shared::name::{JobName, TargetName};
use muster_shared::subject::Subjects;
use muster_tests::{Cluster, Proc};
use virtual_targets::virtual_name;

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
    /// Run only these stages (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Stage>,
    /// The number of virtual targets for the stages at scale (and the
    /// largest `job start` size).
    #[arg(long)]
    targets: Option<usize>,
    /// Records in the results stream for the history stage.
    #[arg(long)]
    records: Option<usize>,
    /// Seconds the master sits idle after enlisting before its RSS is read
    /// again (default 65 at full sizes, past one expiry sweep; 0 at quick
    /// and tiny sizes).
    #[arg(long)]
    idle_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Stage {
    /// Force-poll round trip and the agent's footprint.
    ForcePoll,
    /// Enlisting virtual targets, and nats-server's and the master's RSS.
    Enlist,
    /// Assign one job + force-poll every virtual target until it applied it.
    FanOut,
    /// Force-poll of a virtual target, and every one polling once per window.
    Scale,
    /// `target list` and `status` with every virtual target enlisted.
    List,
    /// `job start` reply time to 1, 10, 50, 1,000 targets.
    JobStart,
    /// `job start --all --wait` until every run is final.
    StartWait,
    /// Result ingest, steady and backlog drain.
    Ingest,
    /// `history` and `run show` over a full results stream.
    History,
}

struct Sizes {
    rtt_samples: usize,
    results: usize,
}

impl Sizes {
    fn for_args(a: &Args) -> Sizes {
        if a.tiny {
            Sizes { rtt_samples: 50, results: 500 }
        } else if a.quick {
            Sizes { rtt_samples: 500, results: 20_000 }
        } else {
            Sizes { rtt_samples: 2000, results: 100_000 }
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

    println!(
        "muster-bench: nats-server 2.15.1 (one node, file storage, loopback), {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runs = |stage: Stage| args.only.is_empty() || args.only.contains(&stage);
    if runs(Stage::ForcePoll) {
        force_poll_and_footprint(&bench, &mut cluster, &sizes, &mut rows).await?;
    }
    let want = stages::Want {
        enlist: runs(Stage::Enlist),
        fan_out: runs(Stage::FanOut),
        polling: runs(Stage::Scale),
        listing: runs(Stage::List),
        job_start: runs(Stage::JobStart),
        start_wait: runs(Stage::StartWait),
    };
    let mut stage_sizes = stages::Sizes::new(args.tiny, args.quick, args.targets);
    if let Some(secs) = args.idle_secs {
        stage_sizes.idle = std::time::Duration::from_secs(secs);
    }
    stages::run(want, &stage_sizes, &mut rows).await?;
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
    rows.push(row(
        "force-poll p50 (API → master → target poll → reply)",
        ms(p50),
        ms(r50),
        format!("{:.1}×", p50.as_secs_f64() / r50.as_secs_f64()),
    ));
    rows.push(row("force-poll p99", ms(p99), ms(r99), format!("{:.1}×", p99.as_secs_f64() / r99.as_secs_f64())));

    eprintln!("muster-bench: footprint");
    let target_pid = cluster.target("bench01").pid();
    let idle_rss = rss_kib(target_pid);
    let job = JobSpec::from_commands(JobName::new("bench-sleep")?, &["sleep 1".to_owned()]);
    let _: JobInfo = b.api.call(Op::JobCreate, JobWrite { spec: job }).await?;
    let sel = |targets: Vec<TargetName>| JobSelect {
        job: JobName::new("bench-sleep").unwrap(),
        select: Selection { targets, groups: vec![], all: false },
    };
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
        CpuShare {
            master: (cpu_secs(self.master_pid) - self.master0) / secs,
            nats: (cpu_secs(self.nats_pid) - self.nats0) / secs,
        }
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

async fn raw_publish_rate(js: &jetstream::Context, n: usize, size: usize) -> anyhow::Result<f64> {
    js.create_stream(jetstream::stream::Config {
        name: "RAWPUB".into(),
        subjects: vec!["rawpub.>".into()],
        ..Default::default()
    })
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
async fn ingest(
    b: &Bench,
    n: usize,
    template: &RunRecord,
    cluster: &mut Cluster,
    outage: bool,
) -> anyhow::Result<(f64, CpuShare)> {
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
