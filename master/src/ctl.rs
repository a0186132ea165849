//! `musterctl`: every master operation from the command line.
//!
//! The binary only calls [`main`]. Commands go through the master's API
//! ([`ApiClient`]), except `history` and `run show`, which read
//! `MUSTER_RESULTS` directly and so work while the master is down. Output is a
//! table for people, or JSON with `--json`; the exit code says what kind of
//! failure happened (see [`EXIT_CODES_HELP`]).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use muster_shared::api::{
    ApiError, DefectRequest, Delivery, EnlistRequest, ErrorCode, JobInfo, JobRef, JobSelect, JobTargetStatus,
    JobWrite, Op, Selection, TargetInfo, TargetRef,
};
use muster_shared::job::JobSpec;
use muster_shared::msg::{Outcome, PollReport, RunRecord};
use muster_shared::name::{GroupName, JobName, TargetName};
use muster_shared::subject::Subjects;
use serde::Serialize;
use uuid::Uuid;

use crate::client::ApiClient;
use crate::history::{self, HistoryQuery};
use crate::nats::{self, NatsOptions, Wait};

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  internal error (NATS or the master failed; the message says what)
  2  usage error (bad flags)
  3  not found: no such job or group, or the target is not enlisted
  4  invalid input: a bad name, job file or value (the message names the field)
  5  a target is offline or did not answer (its instructions stay queued)
  6  the master or NATS is unreachable
  7  conflict: already exists, or changed concurrently (retry)
  8  a run failed (job start --wait, or a failed outcome)

Environment: NATS_URL (comma-separated), NATS_CREDS, NATS_USER, NATS_PASSWORD, MUSTER_PREFIX.";

/// Maps an API error code to the documented exit code.
pub fn exit_code(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::Internal => 1,
        ErrorCode::NotFound | ErrorCode::NotEnlisted => 3,
        ErrorCode::InvalidName | ErrorCode::InvalidRequest | ErrorCode::InvalidJob | ErrorCode::BadVersion => 4,
        ErrorCode::Offline | ErrorCode::Timeout => 5,
        ErrorCode::MasterUnavailable => 6,
        ErrorCode::AlreadyExists | ErrorCode::Conflict => 7,
    }
}

#[derive(Debug, Parser)]
#[command(name = "musterctl", version, about = "Control a Muster master: targets, jobs, history.", after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// NATS server URL(s), comma-separated.
    #[arg(long, short = 's', env = "NATS_URL", default_value = "nats://127.0.0.1:4222", global = true)]
    pub server: String,
    /// NATS credentials file.
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub creds: Option<PathBuf>,
    #[arg(long, env = "NATS_USER", global = true, hide = true)]
    pub user: Option<String>,
    #[arg(long, env = "NATS_PASSWORD", global = true, hide = true)]
    pub password: Option<String>,
    /// Subject prefix of the installation.
    #[arg(long, env = "MUSTER_PREFIX", default_value = "muster", global = true)]
    pub prefix: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enlisted targets.
    #[command(subcommand)]
    Target(TargetCmd),
    /// Jobs and where they run.
    #[command(subcommand)]
    Job(JobCmd),
    /// Past and running runs, read from MUSTER_RESULTS (works without a master).
    History(HistoryArgs),
    /// One run.
    #[command(subcommand)]
    Run(RunCmd),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum TargetCmd {
    /// Enlist a target (an agent also enlists itself when it starts).
    Enlist {
        name: TargetName,
        #[arg(long)]
        location: Option<String>,
        /// Poll interval in seconds.
        #[arg(long)]
        poll_interval: Option<u64>,
    },
    /// Defect a target: it deletes its jobs from this master at its next poll.
    Defect {
        name: TargetName,
        /// The target is gone for good: delete its record, consumer and pending instructions now.
        #[arg(long)]
        force: bool,
    },
    /// All targets with their status (SQL Server's "Target Servers Status").
    List,
    Show { name: TargetName },
    /// Make targets poll now and print their poll reports.
    ForcePoll {
        #[arg(required = true)]
        names: Vec<TargetName>,
    },
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// A target (repeat for several).
    #[arg(long = "target", short = 't')]
    pub targets: Vec<TargetName>,
    /// A target group (repeat for several).
    #[arg(long = "group", short = 'g')]
    pub groups: Vec<GroupName>,
}

impl SelectArgs {
    fn selection(&self, all: bool) -> Selection {
        Selection { targets: self.targets.clone(), groups: self.groups.clone(), all }
    }
}

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Create a job from a file (`-f job.json`) or from command lines.
    Create {
        /// Job name (taken from the file with -f).
        name: Option<JobName>,
        /// A shell command line; one step each, run in order.
        #[arg(long = "command", short = 'c')]
        commands: Vec<String>,
        #[arg(long, short = 'f', conflicts_with = "commands")]
        file: Option<PathBuf>,
    },
    /// Replace a job's definition and post it to every target concerned.
    Update {
        name: Option<JobName>,
        #[arg(long = "command", short = 'c')]
        commands: Vec<String>,
        #[arg(long, short = 'f', conflicts_with = "commands")]
        file: Option<PathBuf>,
    },
    Delete { job: JobName },
    List,
    Show { job: JobName },
    /// Assign a job to targets and groups.
    Assign {
        job: JobName,
        #[command(flatten)]
        select: SelectArgs,
    },
    Unassign {
        job: JobName,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Run a job now on its targets (or the ones named).
    Start {
        job: JobName,
        #[command(flatten)]
        select: SelectArgs,
        /// Every target the job is assigned to (the default).
        #[arg(long)]
        all: bool,
    },
    /// Stop a running job at once.
    Stop {
        job: JobName,
        #[command(flatten)]
        select: SelectArgs,
    },
    Enable { job: JobName },
    Disable { job: JobName },
    /// Last outcome per target.
    Status { job: JobName },
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[arg(long)]
    pub job: Option<JobName>,
    #[arg(long)]
    pub target: Option<TargetName>,
    #[arg(long)]
    pub outcome: Option<Outcome>,
    /// RFC 3339 time, or a duration ago like 30m, 2h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// Newest N runs.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// A whole run, step output included.
    Show { run_id: Uuid },
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure { code: exit_code(e.code), message: e.message }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        let message = format!("{e:#}");
        let code = if message.contains("cannot connect to NATS") { 6 } else { 1 };
        Failure { code, message }
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure { code: 4, message: message.into() }
}

/// Parses arguments, runs the command, prints errors, returns the exit code.
pub async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                // A value that parsed but broke a rule (a bad name): invalid input.
                clap::error::ErrorKind::ValueValidation => ExitCode::from(4),
                _ => ExitCode::from(2),
            };
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("musterctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Runs one parsed command.
///
/// # Errors
/// A [`Failure`] with its exit code.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Completions { shell } = cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut cmd, "musterctl", &mut std::io::stdout());
        return Ok(());
    }
    let subjects = Subjects::new(&cli.prefix).map_err(|e| invalid(e.to_string()))?;
    let opts = NatsOptions {
        creds: cli.creds.clone(),
        user: cli.user.clone(),
        password: cli.password.clone(),
        name: Some("musterctl".into()),
        ..NatsOptions::default()
    }
    .with_servers(&cli.server);
    let client = nats::connect(&opts, Wait::Once).await?;
    let api = ApiClient::new(client.clone(), subjects.clone());
    let out = Out { json: cli.json };
    match cli.command {
        Command::Target(cmd) => target(&api, &out, cmd).await,
        Command::Job(cmd) => job(&api, &out, cmd).await,
        Command::History(args) => {
            let js = async_nats::jetstream::new(client);
            let q = HistoryQuery {
                job: args.job,
                target: args.target,
                outcome: args.outcome,
                since: args.since.as_deref().map(parse_since).transpose()?,
                limit: args.limit,
                ..HistoryQuery::default()
            };
            let runs = history::read(&js, &subjects, &q).await?;
            out.print(&runs, || print_runs(&runs))
        }
        Command::Run(RunCmd::Show { run_id }) => {
            let js = async_nats::jetstream::new(client);
            let q = HistoryQuery { run_id: Some(run_id), ..HistoryQuery::default() };
            let run = history::read(&js, &subjects, &q).await?.pop().ok_or_else(|| Failure {
                code: 3,
                message: format!("no run {run_id} in history"),
            })?;
            out.print(&run, || print_run(&run))
        }
        Command::Completions { .. } => unreachable!("handled above"),
    }
}

async fn target(api: &ApiClient, out: &Out, cmd: TargetCmd) -> Result<(), Failure> {
    match cmd {
        TargetCmd::Enlist { name, location, poll_interval } => {
            let req = EnlistRequest { name, location, instance: None, poll_interval_secs: poll_interval };
            let t: TargetInfo = api.call(Op::TargetEnlist, req).await?;
            out.print(&t, || println!("enlisted {} (poll every {}s)", t.name, t.poll_interval_secs))
        }
        TargetCmd::Defect { name, force } => {
            let t: TargetInfo = api.call(Op::TargetDefect, DefectRequest { name, force }).await?;
            out.print(&t, || {
                if force {
                    println!("{} defected (forced): record, consumer and pending instructions deleted", t.name);
                } else {
                    println!("{} told to defect: it deletes its jobs at its next poll", t.name);
                }
            })
        }
        TargetCmd::List => {
            let ts: Vec<TargetInfo> = api.call(Op::TargetList, ()).await?;
            out.print(&ts, || print_targets(&ts))
        }
        TargetCmd::Show { name } => {
            let t: TargetInfo = api.call(Op::TargetShow, TargetRef { name }).await?;
            out.print(&t, || print_targets(std::slice::from_ref(&t)))
        }
        TargetCmd::ForcePoll { names } => {
            let mut reports = Vec::new();
            let mut worst: Option<ApiError> = None;
            for name in names {
                match api.call::<_, PollReport>(Op::TargetForcePoll, TargetRef { name: name.clone() }).await {
                    Ok(r) => reports.push(serde_json::json!({"target": name, "report": r})),
                    Err(e) => {
                        reports.push(serde_json::json!({"target": name, "error": e}));
                        worst = Some(e);
                    }
                }
            }
            out.print(&reports, || {
                for r in &reports {
                    match (r.get("report"), r.get("error")) {
                        (Some(rep), _) => println!(
                            "{}: polled at {} (applied {}, failed {}, jobs {}, agent {})",
                            r["target"].as_str().unwrap_or("?"),
                            rep["polled_at"].as_str().unwrap_or("?"),
                            rep["applied"], rep["failed"], rep["jobs"],
                            rep["agent_version"].as_str().unwrap_or("?"),
                        ),
                        (_, Some(e)) => println!("{}: {}", r["target"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or("?")),
                        _ => {}
                    }
                }
            })?;
            match worst {
                Some(e) if !out.json => Err(Failure { code: exit_code(e.code), message: "not every target polled".into() }),
                Some(e) => Err(Failure { code: exit_code(e.code), message: e.message }),
                None => Ok(()),
            }
        }
    }
}

fn read_spec(name: Option<JobName>, commands: Vec<String>, file: Option<PathBuf>) -> Result<JobSpec, Failure> {
    match (file, name) {
        (Some(path), name) => {
            let text = std::fs::read_to_string(&path).map_err(|e| invalid(format!("reading {}: {e}", path.display())))?;
            let mut spec = JobSpec::from_json(&text).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            if let Some(n) = name {
                spec.name = n;
            }
            Ok(spec)
        }
        (None, Some(name)) if !commands.is_empty() => Ok(JobSpec::from_commands(name, &commands)),
        (None, Some(_)) => Err(invalid("give at least one --command, or a job file with -f")),
        (None, None) => Err(invalid("give a job NAME with --command, or a job file with -f")),
    }
}

async fn job(api: &ApiClient, out: &Out, cmd: JobCmd) -> Result<(), Failure> {
    let show = |j: JobInfo| out.print(&j, || print_job(&j));
    match cmd {
        JobCmd::Create { name, commands, file } => {
            let spec = read_spec(name, commands, file)?;
            show(api.call(Op::JobCreate, JobWrite { spec }).await?)
        }
        JobCmd::Update { name, commands, file } => {
            let spec = read_spec(name, commands, file)?;
            show(api.call(Op::JobUpdate, JobWrite { spec }).await?)
        }
        JobCmd::Delete { job } => {
            let j: JobInfo = api.call(Op::JobDelete, JobRef { job }).await?;
            out.print(&j, || println!("deleted {}", j.spec.name))
        }
        JobCmd::List => {
            let jobs: Vec<JobInfo> = api.call(Op::JobList, ()).await?;
            out.print(&jobs, || {
                let rows = jobs
                    .iter()
                    .map(|j| {
                        vec![
                            j.spec.name.to_string(),
                            if j.spec.enabled { "yes".into() } else { "no".into() },
                            j.spec.steps.len().to_string(),
                            j.spec.schedules.len().to_string(),
                            join(&j.targets),
                            join(&j.groups),
                        ]
                    })
                    .collect();
                table(&["JOB", "ENABLED", "STEPS", "SCHEDULES", "TARGETS", "GROUPS"], rows);
            })
        }
        JobCmd::Show { job } => show(api.call(Op::JobShow, JobRef { job }).await?),
        JobCmd::Assign { job, select } => {
            show(api.call(Op::JobAssign, JobSelect { job, select: select.selection(false) }).await?)
        }
        JobCmd::Unassign { job, select } => {
            show(api.call(Op::JobUnassign, JobSelect { job, select: select.selection(false) }).await?)
        }
        JobCmd::Start { job, select, all } => {
            let d: Vec<Delivery> = api.call(Op::JobStart, JobSelect { job, select: select.selection(all) }).await?;
            out.print(&d, || print_deliveries(&d))
        }
        JobCmd::Stop { job, select } => {
            let d: Vec<Delivery> = api.call(Op::JobStop, JobSelect { job, select: select.selection(false) }).await?;
            out.print(&d, || print_deliveries(&d))
        }
        JobCmd::Enable { job } => show(api.call(Op::JobEnable, JobRef { job }).await?),
        JobCmd::Disable { job } => show(api.call(Op::JobDisable, JobRef { job }).await?),
        JobCmd::Status { job } => {
            let s: Vec<JobTargetStatus> = api.call(Op::JobStatus, JobRef { job }).await?;
            out.print(&s, || {
                let rows = s
                    .iter()
                    .map(|s| {
                        vec![
                            s.target.to_string(),
                            s.outcome.to_string(),
                            time(Some(s.started_at)),
                            s.duration_ms.map_or("-".into(), |d| format!("{:.1}s", d as f64 / 1000.0)),
                            s.message.clone(),
                        ]
                    })
                    .collect();
                table(&["TARGET", "LAST OUTCOME", "STARTED", "DURATION", "MESSAGE"], rows);
            })
        }
    }
}

// ---- output ------------------------------------------------------------------------

struct Out {
    json: bool,
}

impl Out {
    fn print<T: Serialize>(&self, value: &T, human: impl FnOnce()) -> Result<(), Failure> {
        if self.json {
            let text = serde_json::to_string_pretty(value).map_err(|e| Failure { code: 1, message: e.to_string() })?;
            println!("{text}");
        } else {
            human();
        }
        std::io::stdout().flush().ok();
        Ok(())
    }
}

fn parse_since(s: &str) -> Result<DateTime<Utc>, Failure> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| invalid(format!("--since '{s}': use RFC 3339 or a duration like 30m, 2h, 7d")))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(invalid(format!("--since '{s}': the unit must be s, m, h or d"))),
    };
    Ok(Utc::now() - chrono::Duration::seconds(secs))
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// Prints aligned columns.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row);
    }
}

fn print_targets(ts: &[TargetInfo]) {
    let rows = ts
        .iter()
        .map(|t| {
            vec![
                t.name.to_string(),
                t.status.as_str().to_owned(),
                time(t.last_poll),
                time(t.local_time),
                t.clock_skew_ms.map_or("-".into(), |s| format!("{s}ms")),
                t.poll_interval_secs.to_string(),
                t.unread.to_string(),
                t.agent_version.clone().unwrap_or_else(|| "-".into()),
                if t.location.is_empty() { "-".into() } else { t.location.clone() },
            ]
        })
        .collect();
    table(&["TARGET", "STATUS", "LAST POLL", "LOCAL TIME", "SKEW", "POLL(S)", "UNREAD", "AGENT", "LOCATION"], rows);
}

fn print_job(j: &JobInfo) {
    println!("job {} ({}), revision {}, {}", j.spec.name, j.id, j.revision, if j.spec.enabled { "enabled" } else { "disabled" });
    if !j.spec.description.is_empty() {
        println!("  {}", j.spec.description);
    }
    println!("  targets: {}   groups: {}", join(&j.targets), join(&j.groups));
    for (i, s) in j.spec.steps.iter().enumerate() {
        let what = s.command.clone().unwrap_or_else(|| s.argv.clone().unwrap_or_default().join(" "));
        println!("  step {} {}: {}", i + 1, s.name, what);
    }
    for s in &j.spec.schedules {
        println!("  schedule {}: {}", s.name, serde_json::to_string(s).unwrap_or_default());
    }
}

fn print_deliveries(d: &[Delivery]) {
    let rows = d
        .iter()
        .map(|d| {
            vec![
                d.target.to_string(),
                d.state.clone(),
                d.run_id.map_or("-".into(), |r| r.to_string()),
                d.message.clone(),
            ]
        })
        .collect();
    table(&["TARGET", "STATE", "RUN", "MESSAGE"], rows);
}

fn print_runs(runs: &[RunRecord]) {
    let rows = runs
        .iter()
        .map(|r| {
            vec![
                time(Some(r.started_at)),
                r.job.to_string(),
                r.target.to_string(),
                r.outcome.to_string(),
                r.duration_ms().map_or("-".into(), |d| format!("{:.1}s", d as f64 / 1000.0)),
                r.trigger.to_string(),
                r.run_id.to_string(),
            ]
        })
        .collect();
    table(&["STARTED", "JOB", "TARGET", "OUTCOME", "DURATION", "TRIGGER", "RUN"], rows);
}

fn print_run(r: &RunRecord) {
    println!("run {} of {} on {}: {} ({})", r.run_id, r.job, r.target, r.outcome, r.trigger);
    println!("  started {}  finished {}", time(Some(r.started_at)), time(r.finished_at));
    if !r.message.is_empty() {
        println!("  {}", r.message);
    }
    for s in &r.steps {
        let code = s.exit_code.map_or_else(|| s.signal.map_or("-".into(), |g| format!("signal {g}")), |c| format!("exit {c}"));
        println!("  step {} [{}]: {} {code}, {} ms, {} retries", s.index + 1, s.name, s.outcome, s.duration_ms, s.retries);
        for line in s.output.lines() {
            println!("    | {line}");
        }
    }
}
