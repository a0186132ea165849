//! The command line, as clap parses it: every command, flag and environment
//! variable of `musterctl`, and nothing that runs.
//!
//! Kept apart from what the commands do so the whole interface reads in one
//! place (it is a promise to scripts: same commands, same flags) and so the
//! completions (`musterctl completions`) come from the same definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use muster_runtime::nats::NatsArgs;
use muster_shared::api::{PostRequest, Selection};
use muster_shared::msg::Outcome;
use muster_shared::name::{GroupName, JobName, TargetName};
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(name = "musterctl", version, about = "Control a Muster master: targets, groups, jobs, instructions, history.", after_help = crate::exit::help())]
pub struct Cli {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Subject prefix of the installation.
    #[arg(long, env = "MUSTER_PREFIX", default_value = "muster", global = true)]
    pub prefix: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show times in UTC instead of your time zone (TZ, else the system's).
    #[arg(long, global = true)]
    pub utc: bool,
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
    /// Events the master derived (a job failed or recovered, a target
    /// blocked), newest
    /// last; `--follow` prints new ones as they come (admin only).
    Events(EventsArgs),
    /// The master replicas that answer the service ping: a cheap healthcheck
    /// (exit 6 when none answers).
    Ping {
        /// How long to collect answers, in milliseconds.
        #[arg(long, default_value_t = 500)]
        wait_ms: u64,
    },
    /// Run a one-off command once on targets, now: `musterctl exec --all --
    /// uptime`. Prints each target's output and exit code as it arrives;
    /// every run is in history (trigger `exec`); no job is left behind.
    /// Exit 0 when every run succeeded, 8 when one did not, 5 when a target
    /// was offline (reported, not waited for) or --timeout passed.
    Exec(ExecArgs),
    /// Past and running runs, read from MUSTER_RESULTS (works without a master).
    History(HistoryArgs),
    /// One run.
    #[command(subcommand)]
    Run(RunCmd),
    /// NATS users for the master, operators and targets.
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Print shell completions.
    Completions {
        /// The shell to print them for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Write nats-server accounts and users (DIR/auth.conf, to include from
    /// the server's configuration) and, per user, its nkey seed DIR/<user>.nk
    /// (mode 0600; the server's configuration holds only public keys) and
    /// DIR/<user>.env, which names it (NATS_NKEY). Each
    /// target gets an account of its own that imports only the subjects
    /// that carry its name, and may touch only those; the master and the
    /// admin (muster-admin) are unrestricted, in the Muster account with
    /// JetStream; the viewer (muster-viewer) has an account of its own and
    /// may only read (the server refuses it every change: exit 10).
    /// Needs no NATS connection.
    NatsConfig {
        /// Targets to add; targets that already have a file in DIR are kept,
        /// and so is every existing key (users with passwords from an
        /// earlier version are converted to nkeys).
        targets: Vec<TargetName>,
        /// Where to write the files (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Make what an installation without its own PKI needs, in DIR: a CA
    /// (ca.pem; its key ca-key.pem, 0600), a server certificate for the
    /// --host names (server.pem, server-key.pem), the users of
    /// `nats-config` for TARGETS, and DIR/nats-server.conf, a complete
    /// configuration (TLS, users, JetStream in DIR/jetstream, monitoring on
    /// loopback): `nats-server -c DIR/nats-server.conf`. master.env,
    /// admin.env, viewer.env (and TARGET.env) hold the variables a process needs, the CA
    /// included: `set -a; . DIR/admin.env; NATS_URL=tls://HOST:4222`. Run it
    /// again to add a host or target: the CA and keys are kept.
    Init {
        /// Targets to make users for (more later with `auth add-target`).
        targets: Vec<TargetName>,
        /// Where to write the files (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// A name or address clients use to reach the server; repeat for
        /// each (default: localhost and 127.0.0.1).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
    /// Add one target's user to DIR (its seed DIR/NAME.nk and DIR/NAME.env;
    /// auth.conf rewritten, every other user and key kept); then reload
    /// nats-server twice.
    AddTarget {
        /// The target's name (its agent's --name).
        name: TargetName,
        /// The directory of `nats-config` or `init`.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Add a user of the master's web console (`muster-master --http`) to
    /// DIR/console-users.json (mode 0600; give it to the master with
    /// --http-users). Its password is stored only as an Argon2id hash; a
    /// random one is made and printed once unless --password-stdin. A user
    /// of that name is replaced; every other user is kept. Needs no NATS
    /// connection.
    ConsoleUser {
        /// The name to sign in with (letters, digits, '.', '_', '-', '@').
        name: String,
        /// admin: sees everything and may act; viewer: sees everything,
        /// may change nothing.
        #[arg(long, value_parser = parse_role)]
        role: muster_shared::console::Role,
        /// Where to write the file (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Read the password from one line of stdin (at least 12
        /// characters) instead of making one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Revoke one target: its account and user leave DIR/auth.conf and its
    /// files (DIR/NAME.env, DIR/NAME.nk) are deleted; after one reload of
    /// nats-server its connections are closed and its key refused. Every
    /// other user is kept.
    RemoveTarget {
        /// The target to revoke.
        name: TargetName,
        /// The directory of `nats-config` or `init`.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TargetCmd {
    /// Enlist a target (an agent also enlists itself when it starts).
    Enlist {
        /// The target's name (its agent's --name).
        name: TargetName,
        /// Where the target is (free text, shown by `target list`).
        #[arg(long)]
        location: Option<String>,
        /// Poll interval in seconds.
        #[arg(long)]
        poll_interval: Option<u64>,
    },
    /// Defect a target: it deletes its jobs from this master at its next poll.
    Defect {
        /// The target to defect.
        name: TargetName,
        /// The target is gone for good: delete its record, consumer and pending instructions now.
        #[arg(long)]
        force: bool,
    },
    /// All targets with their status (SQL Server's "Target Servers Status").
    List,
    /// One target: its status, last poll report and clock.
    Show {
        /// The target to show.
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
    /// Targets by name.
    pub names: Vec<TargetName>,
    /// A target group (repeat for several).
    #[arg(long = "group", short = 'g')]
    pub groups: Vec<GroupName>,
    /// Every enlisted target.
    #[arg(long)]
    pub all: bool,
}

impl PostArgs {
    pub fn selection(self) -> Selection {
        Selection { targets: self.names, groups: self.groups, all: self.all }
    }

    pub fn request(self, secs: Option<u64>) -> PostRequest {
        PostRequest { select: self.selection(), secs }
    }
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create an empty group.
    Create {
        /// The group's name.
        group: GroupName,
    },
    /// Delete a group no job is assigned to.
    Delete {
        /// The group to delete.
        group: GroupName,
    },
    /// All groups, with their members and jobs.
    List,
    /// Add targets: they get the group's jobs.
    Add {
        /// The group.
        group: GroupName,
        /// Targets to add.
        #[arg(required = true)]
        targets: Vec<TargetName>,
    },
    /// Remove targets: they lose the group's jobs (unless assigned otherwise).
    Remove {
        /// The group.
        group: GroupName,
        /// Targets to remove.
        #[arg(required = true)]
        targets: Vec<TargetName>,
    },
}

#[derive(Debug, Args)]
pub struct InstructionsArgs {
    /// Only this target's rows.
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
    pub fn selection(&self, all: bool) -> Selection {
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
        /// A job file (JSON): name, steps, schedules, flow, retries,
        /// timeouts; or `job show --json` output; - for standard input. A
        /// cron schedule is read in UTC unless it names its `timezone`.
        #[arg(long, short = 'f', conflicts_with = "commands")]
        file: Option<PathBuf>,
    },
    /// Replace a job's definition and post it to every target concerned.
    Update {
        /// Job name (taken from the file with -f).
        name: Option<JobName>,
        /// A shell command line; one step each, run in order.
        #[arg(long = "command", short = 'c')]
        commands: Vec<String>,
        /// A job file (JSON), as for `job create -f`.
        #[arg(long, short = 'f', conflicts_with = "commands")]
        file: Option<PathBuf>,
    },
    /// Create or update a job from a file (`-f -`: standard input): a job
    /// file, or `job show --json` output unchanged, whose targets and groups
    /// it then assigns and unassigns to match. An unchanged job is not
    /// posted again.
    Apply {
        /// The job file (JSON), or - for standard input.
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Delete a job; its targets delete it at their next poll.
    Delete {
        /// The job to delete.
        job: JobName,
    },
    /// All jobs, with their targets and groups.
    List,
    /// One job: its steps, schedules, targets and groups.
    Show {
        /// The job to show.
        job: JobName,
    },
    /// Assign a job to targets and groups.
    Assign {
        /// The job to assign.
        job: JobName,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Take a job off targets and groups; they delete it at their next poll.
    Unassign {
        /// The job to unassign.
        job: JobName,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Run a job now on its targets (or the ones named). Answers once the
    /// start is in each target's desired state (`posted`); online targets
    /// are force-polled and start at once, offline ones at their next poll.
    Start {
        /// The job to run. A disabled job runs too when started by hand;
        /// disabling stops only its schedules.
        job: JobName,
        #[command(flatten)]
        select: SelectArgs,
        /// Every target the job is assigned to (the default).
        #[arg(long)]
        all: bool,
        /// How long the start waits for a target that has not read it
        /// (offline): 10s to 7d, like 10m, 2h (default 1h). A start read
        /// later is recorded `expired` and never run.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// Follow the runs until each is final; exit 8 if any did not
        /// succeed (failed, expired...), 5 if a target was offline (its
        /// start stays queued until it expires; --wait does not wait for it).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit 5). --wait
        /// never waits longer than this, by default an hour.
        #[arg(long, default_value_t = DEFAULT_WAIT_SECS, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
        /// With --wait: print the runs' output while they run, each line
        /// prefixed with its target.
        #[arg(long, requires = "wait")]
        follow: bool,
        /// A parameter of the job, NAME=VALUE (repeatable); the step gets
        /// it as MUSTER_PARAM_<NAME>.
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = muster_shared::params::parse_pair)]
        params: Vec<(String, String)>,
    },
    /// Stop a running job at once.
    Stop {
        /// The job to stop.
        job: JobName,
        #[command(flatten)]
        select: SelectArgs,
        /// How long the stop waits for a target that has not read it
        /// (offline): 10s to 7d (default 1h).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// Let a job's schedules fire again.
    Enable {
        /// The job to enable.
        job: JobName,
    },
    /// Stop a job's schedules from firing (`job start` still runs it).
    Disable {
        /// The job to disable.
        job: JobName,
    },
    /// Last outcome per target.
    Status {
        /// The job.
        job: JobName,
    },
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Every enlisted target.
    #[arg(long)]
    pub all: bool,
    /// How long the command may run, like 30s or 5m (1s to 7d): each
    /// target stops it then (recorded `timed_out`), and musterctl stops
    /// waiting (exit 5). An offline target that reads it later records it
    /// `expired` and does not run it.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub timeout: String,
    /// Print each target's output while the command runs, each line
    /// prefixed with its target (instead of all of it when it ends).
    #[arg(long)]
    pub follow: bool,
    /// The command and its arguments, after `--`; run without a shell (use
    /// `sh -c '…'` for pipes and variables).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this job's runs.
    #[arg(long)]
    pub job: Option<JobName>,
    /// Only runs on this target.
    #[arg(long)]
    pub target: Option<TargetName>,
    /// Only runs that ended so (or are `running`).
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
    Show {
        /// The run id (from `history`, `job start`).
        run_id: Uuid,
    },
    /// A run's output as it was printed (kept a day): what is stored, or
    /// with --follow each line as it comes until the run ends.
    Logs {
        /// The run id (from `history`, `job start`).
        run_id: Uuid,
        /// Wait for more until the run is final.
        #[arg(long)]
        follow: bool,
    },
    /// A run's whole output, kept when its job sets "keep_output": "full",
    /// written as it was printed (`> file`); checked against its SHA-256.
    Output {
        /// The run id (from `history`, `job start`).
        run_id: Uuid,
        /// Only this step record (0 for the first step run; `run show`
        /// lists them in order); every step in order by default.
        #[arg(long)]
        step: Option<usize>,
    },
}

/// `job start --wait --timeout`'s default, in seconds.
pub const DEFAULT_WAIT_SECS: u64 = 3600;

fn parse_role(s: &str) -> Result<muster_shared::console::Role, String> {
    s.parse().map_err(|_| format!("'{s}' is not a role (admin, viewer)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definitions_are_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    /// Every command and every argument says what it is in `--help`.
    #[test]
    fn every_command_and_argument_has_help() {
        fn missing(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && path != "musterctl help" && !path.starts_with("musterctl help ") {
                out.push(format!("{path}: no about"));
            }
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() && !arg.is_hide_set() && !["help", "version"].contains(&arg.get_id().as_str()) {
                    out.push(format!("{path}: argument {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                missing(sub, &path, out);
            }
        }
        let mut out = Vec::new();
        missing(&<Cli as clap::CommandFactory>::command(), "", &mut out);
        assert!(out.is_empty(), "help missing for:\n{}", out.join("\n"));
    }

    #[test]
    fn the_api_timeout_does_not_leak_into_job_start_wait_timeout() {
        let cli = Cli::try_parse_from(["musterctl", "job", "start", "x", "--wait"]).unwrap();
        let Command::Job(JobCmd::Start { timeout, .. }) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!(timeout, DEFAULT_WAIT_SECS, "--wait without --timeout still gives up, after an hour");
        assert_eq!(cli.api_timeout, 30);

        let cli =
            Cli::try_parse_from(["musterctl", "--api-timeout", "5", "job", "start", "x", "--wait", "--timeout", "600"]).unwrap();
        let Command::Job(JobCmd::Start { timeout, .. }) = cli.command else { panic!("parsed as {:?}", cli.command) };
        assert_eq!((cli.api_timeout, timeout), (5, 600));
    }
}

/// `musterctl events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// How many of the stored events to show first.
    #[arg(long, default_value_t = 100)]
    pub last: u64,
    /// Then print each new event as it is stored, until interrupted (with
    /// `--json`, one JSON object per line).
    #[arg(long)]
    pub follow: bool,
}
