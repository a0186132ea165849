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
    ApiError, DefectRequest, Delivery, EnlistRequest, ErrorCode, ForcePollOutcome, GroupInfo, GroupMembers, GroupRef, InstrRow,
    InstructionsQuery, JobInfo, JobRef, JobSelect, JobTargetStatus, JobWrite, MasterSeen, Op, PostRequest, Posted, Selection,
    StatusSummary, TargetInfo, TargetRef,
};
use muster_shared::job::JobSpec;
use muster_shared::msg::{Outcome, RunRecord};
use muster_shared::name::{GroupName, JobName, TargetName};
use muster_shared::subject::Subjects;
use serde::Serialize;
use uuid::Uuid;

use crate::client::ApiClient;
use crate::history::{self, HistoryQuery};
use muster_runtime::nats::{self, ConnectError, NatsArgs, Wait};

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  internal error (NATS or the master failed; the message says what)
  2  usage error (bad flags)
  3  not found: no such job or group, or the target is not enlisted
  4  invalid input: a bad name, job file or value (the message names the field)
  5  a target is offline or did not answer (its instructions stay queued), or --wait gave up
  6  the master or NATS is unreachable
  7  conflict: already exists, still in use, or changed concurrently (retry)
  8  a run did not succeed (job start --wait)

Environment: NATS_URL (comma-separated), NATS_CREDS, NATS_USER, NATS_PASSWORD, MUSTER_PREFIX, MUSTER_API_TIMEOUT.";

/// Maps an API error code to the documented exit code.
pub fn exit_code(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::Internal => 1,
        ErrorCode::NotFound | ErrorCode::NotEnlisted => 3,
        ErrorCode::InvalidName | ErrorCode::InvalidRequest | ErrorCode::InvalidJob | ErrorCode::BadVersion => 4,
        ErrorCode::Offline | ErrorCode::Timeout => 5,
        ErrorCode::MasterUnavailable => 6,
        ErrorCode::AlreadyExists | ErrorCode::Conflict | ErrorCode::Defected => 7,
    }
}

#[derive(Debug, Parser)]
#[command(name = "musterctl", version, about = "Control a Muster master: targets, groups, jobs, instructions, history.", after_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Subject prefix of the installation.
    #[arg(long, env = "MUSTER_PREFIX", default_value = "muster", global = true)]
    pub prefix: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the master's answer to each call.
    #[arg(long = "api-timeout", env = "MUSTER_API_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400), global = true)]
    pub api_timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enlisted targets.
    #[command(subcommand)]
    Target(TargetCmd),
    /// Target groups: jobs assigned to a group reach all its members.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Jobs and where they run.
    #[command(subcommand)]
    Job(JobCmd),
    /// The download list: every posted instruction and what became of it.
    Instructions(InstructionsArgs),
    /// One screen: targets by status, failing jobs, pending instructions, masters.
    Status,
    /// The master replicas that answer the service ping: a cheap healthcheck
    /// (exit 6 when none answers).
    Ping {
        /// How long to collect answers, in milliseconds.
        #[arg(long, default_value_t = 500)]
        wait_ms: u64,
    },
    /// Past and running runs, read from MUSTER_RESULTS (works without a master).
    History(HistoryArgs),
    /// One run.
    #[command(subcommand)]
    Run(RunCmd),
    /// NATS users for the master, operators and targets.
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Write a nats-server authorization file (DIR/auth.conf, to include from
    /// the server's configuration) and one DIR/<user>.env per user. Each
    /// target may touch only subjects that carry its name; the master and
    /// operators are unrestricted. Needs no NATS connection.
    NatsConfig {
        /// Targets to add; targets that already have a file in DIR are kept,
        /// and so is every existing password.
        targets: Vec<TargetName>,
        /// Where to write the files (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
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
    Show {
        name: TargetName,
    },
    /// Make targets poll now (all at once) and print their poll reports.
    /// With many slow targets, raise --api-timeout.
    ForcePoll(PostArgs),
    /// Post a new poll interval (10-28800 s); each target uses it from the poll that downloads it.
    SetPoll {
        /// Targets, then the interval in seconds: `set-poll web01 web02 120`, `set-poll --all 120`.
        #[arg(value_name = "TARGET... SECS", required = true, num_args = 1..)]
        args: Vec<String>,
        /// A target group (repeat for several).
        #[arg(long = "group", short = 'g')]
        groups: Vec<GroupName>,
        /// Every enlisted target.
        #[arg(long)]
        all: bool,
    },
    /// Post the master's clock; each target records its clock skew (see `target list`).
    SyncTime(PostArgs),
    /// Drop pending instructions, then post delete-all-jobs and one upsert per assigned job.
    Resync(PostArgs),
}

/// Which targets an operation concerns.
#[derive(Debug, Args)]
pub struct PostArgs {
    pub names: Vec<TargetName>,
    /// A target group (repeat for several).
    #[arg(long = "group", short = 'g')]
    pub groups: Vec<GroupName>,
    /// Every enlisted target.
    #[arg(long)]
    pub all: bool,
}

impl PostArgs {
    fn selection(self) -> Selection {
        Selection { targets: self.names, groups: self.groups, all: self.all }
    }

    fn request(self, secs: Option<u64>) -> PostRequest {
        PostRequest { select: self.selection(), secs }
    }
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    Create {
        group: GroupName,
    },
    /// Delete a group no job is assigned to.
    Delete {
        group: GroupName,
    },
    List,
    /// Add targets: they get the group's jobs.
    Add {
        group: GroupName,
        #[arg(required = true)]
        targets: Vec<TargetName>,
    },
    /// Remove targets: they lose the group's jobs (unless assigned otherwise).
    Remove {
        group: GroupName,
        #[arg(required = true)]
        targets: Vec<TargetName>,
    },
}

#[derive(Debug, Args)]
pub struct InstructionsArgs {
    #[arg(long, short = 't')]
    pub target: Option<TargetName>,
    /// Only instructions not yet downloaded.
    #[arg(long)]
    pub pending: bool,
    /// Only instructions that failed on their target.
    #[arg(long)]
    pub errors: bool,
    /// Newest N rows.
    #[arg(long)]
    pub limit: Option<usize>,
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
    Delete {
        job: JobName,
    },
    List,
    Show {
        job: JobName,
    },
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
        /// Follow the runs until all finish; exit 8 if any did not succeed.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit 5).
        #[arg(long, requires = "wait")]
        timeout: Option<u64>,
    },
    /// Stop a running job at once.
    Stop {
        job: JobName,
        #[command(flatten)]
        select: SelectArgs,
    },
    Enable {
        job: JobName,
    },
    Disable {
        job: JobName,
    },
    /// Last outcome per target.
    Status {
        job: JobName,
    },
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
        Failure { code: 1, message: format!("{e:#}") }
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Self {
        let code = match e {
            ConnectError::Unreachable { .. } => 6,
            ConnectError::BadUrl { .. } | ConnectError::Credentials { .. } => 1,
        };
        Failure { code, message: format!("{:#}", anyhow::Error::from(e)) }
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
    if let Command::Auth(AuthCmd::NatsConfig { targets, dir }) = &cli.command {
        let subjects = Subjects::new(&cli.prefix).map_err(|e| invalid(e.to_string()))?;
        let written =
            crate::auth::write_config(dir, &subjects, targets).map_err(|e| Failure { code: 1, message: format!("{e:#}") })?;
        let users: Vec<serde_json::Value> =
            written.users.iter().map(|(u, f)| serde_json::json!({"user": u, "env_file": f})).collect();
        let out = Out { json: cli.json };
        return out.print(&serde_json::json!({"config": written.config, "users": users}), || {
            println!("wrote {} (include it from nats-server.conf, then reload the server)", written.config.display());
            for (user, file) in &written.users {
                println!("  {user:<20} {}", file.display());
            }
        });
    }
    if let Command::Completions { shell } = cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut cmd, "musterctl", &mut std::io::stdout());
        return Ok(());
    }
    let subjects = Subjects::new(&cli.prefix).map_err(|e| invalid(e.to_string()))?;
    let opts = cli.nats.options("musterctl");
    let client = nats::connect(&opts, Wait::Once).await?;
    let mut api = ApiClient::new(client.clone(), subjects.clone());
    api.timeout = std::time::Duration::from_secs(cli.api_timeout);
    let out = Out { json: cli.json };
    match cli.command {
        Command::Target(cmd) => target(&api, &out, cmd).await,
        Command::Group(cmd) => group(&api, &out, cmd).await,
        Command::Job(cmd) => job(&api, &out, cmd).await,
        Command::Instructions(a) => {
            let q = InstructionsQuery { target: a.target, pending: a.pending, errors: a.errors, limit: a.limit };
            let rows: Vec<InstrRow> = api.call(Op::Instructions, q).await?;
            out.print(&rows, || print_instructions(&rows))
        }
        Command::Status => {
            let (summary, masters) = tokio::join!(
                api.call::<_, StatusSummary>(Op::Status, ()),
                api.masters_seen(std::time::Duration::from_millis(500))
            );
            let (summary, masters) = (summary?, masters?);
            let both = serde_json::json!({"summary": summary, "masters": masters});
            out.print(&both, || print_status(&summary, &masters))
        }
        Command::Ping { wait_ms } => {
            let masters = api.masters_seen(std::time::Duration::from_millis(wait_ms)).await?;
            if masters.is_empty() {
                return Err(Failure {
                    code: exit_code(ErrorCode::MasterUnavailable),
                    message: format!("no master answered $SRV.PING.{} within {wait_ms} ms", subjects.service_name()),
                });
            }
            out.print(&masters, || {
                for m in &masters {
                    println!("{} {}", m.id, m.version);
                }
            })
        }
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
            let run = history::read(&js, &subjects, &q)
                .await?
                .pop()
                .ok_or_else(|| Failure { code: 3, message: format!("no run {run_id} in history") })?;
            out.print(&run, || print_run(&run))
        }
        Command::Completions { .. } | Command::Auth(_) => unreachable!("handled above"),
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
        TargetCmd::ForcePoll(select) => {
            let reports: Vec<ForcePollOutcome> = api.call(Op::TargetForcePollMany, select.selection()).await?;
            let worst = reports.iter().filter_map(|r| r.error.clone()).last();
            out.print(&reports, || {
                for r in &reports {
                    match (&r.report, &r.error) {
                        (Some(rep), _) => println!(
                            "{}: polled at {} (applied {}, failed {}, jobs {}, agent {})",
                            r.target,
                            rep.polled_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            rep.applied,
                            rep.failed,
                            rep.jobs,
                            rep.agent_version,
                        ),
                        (None, Some(e)) => println!("{}: {}", r.target, e.message),
                        (None, None) => {}
                    }
                }
            })?;
            match worst {
                Some(e) if !out.json => Err(Failure { code: exit_code(e.code), message: "not every target polled".into() }),
                Some(e) => Err(Failure { code: exit_code(e.code), message: e.message }),
                None => Ok(()),
            }
        }
        TargetCmd::SetPoll { mut args, groups, all } => {
            let secs_text = args.pop().expect("clap requires one value");
            let secs: u64 = secs_text.parse().map_err(|_| {
                invalid(format!("'{secs_text}' is not a number of seconds: give the interval last, e.g. `set-poll web01 120`"))
            })?;
            let names = args
                .into_iter()
                .map(|a| a.parse::<TargetName>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(e.to_string()))?;
            let req = PostArgs { names, groups, all }.request(Some(secs));
            let p: Vec<Posted> = api.call(Op::TargetSetPoll, req).await?;
            out.print(&p, || print_posted(&p))
        }
        TargetCmd::SyncTime(a) => {
            let p: Vec<Posted> = api.call(Op::TargetSyncTime, a.request(None)).await?;
            out.print(&p, || {
                print_posted(&p);
                println!("online targets polled now; see the SKEW column of `musterctl target list`");
            })
        }
        TargetCmd::Resync(a) => {
            let p: Vec<Posted> = api.call(Op::TargetResync, a.request(None)).await?;
            out.print(&p, || print_posted(&p))
        }
    }
}

async fn group(api: &ApiClient, out: &Out, cmd: GroupCmd) -> Result<(), Failure> {
    let (op, body) = match cmd {
        GroupCmd::List => {
            let gs: Vec<GroupInfo> = api.call(Op::GroupList, ()).await?;
            return out.print(&gs, || {
                let rows = gs.iter().map(|g| vec![g.name.to_string(), join(&g.members), join(&g.jobs)]).collect();
                table(&["GROUP", "MEMBERS", "JOBS"], rows);
            });
        }
        GroupCmd::Create { group } => (Op::GroupCreate, serde_json::to_value(GroupRef { group })),
        GroupCmd::Delete { group } => (Op::GroupDelete, serde_json::to_value(GroupRef { group })),
        GroupCmd::Add { group, targets } => (Op::GroupAdd, serde_json::to_value(GroupMembers { group, targets })),
        GroupCmd::Remove { group, targets } => (Op::GroupRemove, serde_json::to_value(GroupMembers { group, targets })),
    };
    let body = body.map_err(|e| Failure { code: 1, message: e.to_string() })?;
    let g: GroupInfo = api.call(op, body).await?;
    out.print(&g, || {
        let verb = if op == Op::GroupDelete { "deleted" } else { "group" };
        println!("{verb} {}: members {}; jobs {}", g.name, join(&g.members), join(&g.jobs));
    })
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
        JobCmd::Start { job, select, all, wait, timeout } => {
            let d: Vec<Delivery> = api.call(Op::JobStart, JobSelect { job: job.clone(), select: select.selection(all) }).await?;
            if wait {
                let timeout = timeout.map(std::time::Duration::from_secs);
                return follow(api, out.json, &job, &d, timeout).await;
            }
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

// ---- job start --wait ------------------------------------------------------------------

/// Where one target's run is, as `--wait` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Progress {
    target: TargetName,
    run_id: Option<Uuid>,
    /// `queued` (offline: at its next poll), `starting`, or the run's outcome.
    state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    #[serde(skip)]
    done: bool,
}

/// Follows the runs a start made until all are final, reading each target's
/// last outcome (`job status`) and, when a later run has already replaced
/// it there, the run's own record in history. On a terminal the lines are
/// redrawn in place; otherwise a plain line is printed per change.
///
/// # Errors
/// Exit 8 when a run did not succeed, 5 on `timeout`.
async fn follow(
    api: &ApiClient,
    json: bool,
    job: &JobName,
    started: &[Delivery],
    timeout: Option<std::time::Duration>,
) -> Result<(), Failure> {
    use std::io::IsTerminal as _;
    let live = !json && std::io::stdout().is_terminal();
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let js = async_nats::jetstream::new(api.client.clone());
    let mut progress: Vec<Progress> = started
        .iter()
        .map(|d| Progress {
            target: d.target.clone(),
            run_id: d.run_id,
            state: if d.state == muster_shared::api::DeliveryState::Delivered { "starting".into() } else { d.state.to_string() },
            duration_ms: None,
            message: d.message.clone(),
            done: d.run_id.is_none(),
        })
        .collect();
    let mut drawn = 0usize;
    let mut last_printed: Vec<String> = vec![String::new(); progress.len()];
    loop {
        let statuses: Vec<JobTargetStatus> = api.call(Op::JobStatus, JobRef { job: job.clone() }).await?;
        for p in progress.iter_mut().filter(|p| !p.done) {
            let mine = statuses.iter().find(|s| s.target == p.target && Some(s.run_id) == p.run_id).cloned();
            let newer = statuses.iter().any(|s| s.target == p.target && Some(s.run_id) != p.run_id && Some(s.run_id) > p.run_id);
            let status = match (mine, newer, p.run_id) {
                (Some(s), _, _) => Some(s),
                (None, true, Some(run_id)) => {
                    let q = HistoryQuery { run_id: Some(run_id), target: Some(p.target.clone()), ..HistoryQuery::default() };
                    history::read(&js, &api.subjects, &q).await?.pop().map(|r| JobTargetStatus::from(&r))
                }
                _ => None,
            };
            if let Some(s) = status {
                p.state = s.outcome.to_string();
                p.duration_ms = s.duration_ms;
                p.message = s.message;
                p.done = s.outcome.is_final();
            }
        }
        if !json {
            let lines: Vec<String> = progress.iter().map(progress_line).collect();
            if live {
                // Move up over the previous block and redraw it.
                let mut text = String::new();
                if drawn > 0 {
                    text.push_str(&format!("\x1b[{drawn}A"));
                }
                for l in &lines {
                    text.push_str(&format!("\x1b[2K{l}\n"));
                }
                print!("{text}");
                drawn = lines.len();
            } else {
                for (l, last) in lines.iter().zip(last_printed.iter_mut()) {
                    if l != last {
                        println!("{l}");
                        last.clone_from(l);
                    }
                }
            }
            std::io::stdout().flush().ok();
        }
        if progress.iter().all(|p| p.done) {
            break;
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            let waiting: Vec<String> = progress.iter().filter(|p| !p.done).map(|p| p.target.to_string()).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&progress).unwrap_or_default());
            }
            return Err(Failure {
                code: 5,
                message: format!(
                    "gave up waiting; still not finished on {} (see `musterctl job status {job}`)",
                    waiting.join(", ")
                ),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let failed: Vec<&Progress> = progress.iter().filter(|p| p.state != Outcome::Succeeded.as_str()).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&progress).unwrap_or_default());
    } else {
        println!("{} of {} succeeded", progress.len() - failed.len(), progress.len());
    }
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(Failure {
            code: 8,
            message: format!(
                "{} run(s) did not succeed, e.g. on {}: {}; see `musterctl history --job {job} --target {}`",
                failed.len(),
                first.target,
                first.state,
                first.target
            ),
        }),
    }
}

fn progress_line(p: &Progress) -> String {
    let took = p.duration_ms.map_or(String::new(), |d| format!(" in {:.1}s", d as f64 / 1000.0));
    let why = if p.message.is_empty() { String::new() } else { format!(": {}", p.message) };
    format!("{}: {}{took}{why}", p.target, p.state)
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
                join(&t.groups),
                if t.location.is_empty() { "-".into() } else { t.location.clone() },
            ]
        })
        .collect();
    table(&["TARGET", "STATUS", "LAST POLL", "LOCAL TIME", "SKEW", "POLL(S)", "UNREAD", "AGENT", "GROUPS", "LOCATION"], rows);
    for t in ts {
        if let Some(why) = &t.blocked {
            println!("{} is blocked by {why} (see `musterctl instructions --target {} --errors`)", t.name, t.name);
        }
        if t.bad_instructions + t.bad_control > 0 {
            println!(
                "{}'s agent refused {} bad instruction(s) and {} bad control request(s) since it started (each is in its log)",
                t.name, t.bad_instructions, t.bad_control
            );
        }
    }
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
        .map(|d| vec![d.target.to_string(), d.state.to_string(), d.run_id.map_or("-".into(), |r| r.to_string()), d.message.clone()])
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

fn print_posted(p: &[Posted]) {
    let rows = p.iter().map(|p| vec![p.target.to_string(), p.ops.join(", "), p.dropped.to_string()]).collect();
    table(&["TARGET", "POSTED", "DROPPED"], rows);
}

fn print_instructions(rows: &[InstrRow]) {
    let rows = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.target.to_string(),
                r.op.clone(),
                r.job.as_ref().map_or("-".into(), ToString::to_string),
                time(Some(r.posted_at)),
                time(r.applied_at),
                r.status.as_str().to_owned(),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["ID", "TARGET", "OP", "JOB", "POSTED", "DOWNLOADED", "STATUS", "ERROR"], rows);
}

fn print_status(s: &StatusSummary, masters: &[MasterSeen]) {
    let total: u64 = s.targets_by_status.values().sum();
    let by = s.targets_by_status.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ");
    println!("targets:      {total}{}", if by.is_empty() { String::new() } else { format!(" ({by})") });
    println!("jobs:         {}   groups: {}", s.jobs, s.groups);
    println!("instructions: {} pending, {} failed", s.pending_instructions, s.failed_instructions);
    let ids = masters.iter().map(|m| format!("{} v{}", m.id, m.version)).collect::<Vec<_>>().join(", ");
    println!("masters:      {}{}", masters.len(), if ids.is_empty() { String::new() } else { format!(" ({ids})") });
    if !s.attention.is_empty() {
        println!();
        let rows = s
            .attention
            .iter()
            .map(|t| {
                vec![t.name.to_string(), t.status.as_str().to_owned(), time(t.last_poll), t.blocked.clone().unwrap_or_default()]
            })
            .collect();
        table(&["TARGET", "STATUS", "LAST POLL", "WHY"], rows);
    }
    if !s.failing.is_empty() {
        println!();
        let rows = s
            .failing
            .iter()
            .map(|f| {
                vec![f.job.to_string(), f.target.to_string(), f.outcome.to_string(), time(Some(f.started_at)), f.message.clone()]
            })
            .collect();
        table(&["FAILING JOB", "TARGET", "OUTCOME", "STARTED", "MESSAGE"], rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_timeout_does_not_leak_into_job_start_wait_timeout() {
        let cli = Cli::try_parse_from(["musterctl", "job", "start", "x", "--wait"]).unwrap();
        let Command::Job(JobCmd::Start { timeout, .. }) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!(timeout, None, "--wait without --timeout waits until the runs end");
        assert_eq!(cli.api_timeout, 30);

        let cli =
            Cli::try_parse_from(["musterctl", "--api-timeout", "5", "job", "start", "x", "--wait", "--timeout", "600"]).unwrap();
        let Command::Job(JobCmd::Start { timeout, .. }) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!((cli.api_timeout, timeout), (5, Some(600)));
    }
}
