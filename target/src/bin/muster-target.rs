//! `muster-target`: parse configuration, set up logging, run the agent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use muster_runtime::exit::Exit;
use muster_runtime::logging::{self, LogArgs};
use muster_runtime::nats::NatsArgs;
use muster_shared::name::TargetName;
use muster_shared::subject::Subjects;
use muster_target::config::{name_from_host, HostNameError};
use muster_target::TargetConfig;

/// The Muster target agent: polls its desired state from the master and runs jobs.
#[derive(Debug, Parser)]
#[command(version, after_help = muster_runtime::exit::help("Environment: NATS_URL (comma-separated), NATS_NKEY, NATS_CREDS, NATS_USER, NATS_PASSWORD, NATS_CA, NATS_CERT, NATS_KEY, MUSTER_LOG (log filter, e.g. info,muster_target=debug), and the MUSTER_* variable named beside each flag."))]
struct Flags {
    /// This target's name (letters, digits, '-', '_'; at most 64). Default:
    /// the host's short name (up to its first '.'), when it is a valid name.
    #[arg(long, env = "MUSTER_NAME")]
    name: Option<TargetName>,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    log: LogArgs,
    /// Jobs, run markers and the result spool are kept here.
    #[arg(long, env = "MUSTER_STATE_DIR")]
    state_dir: PathBuf,
    /// Seconds between polls, until the master sets another.
    #[arg(long, env = "MUSTER_POLL_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=28_800))]
    poll_interval: u64,
    #[arg(long, env = "MUSTER_PREFIX", default_value = "muster")]
    prefix: String,
    /// Do not enlist at start (an operator enlists this target instead).
    #[arg(long, env = "MUSTER_NO_ENLIST")]
    no_enlist: bool,
    /// Defect this target from its master and exit: a running agent deletes
    /// the master's jobs at once, a stopped one when it next starts.
    #[arg(long, conflicts_with = "no_enlist")]
    defect: bool,
    #[arg(long, env = "MUSTER_LOCATION")]
    location: Option<String>,
    /// Bytes of output kept per step (head and tail).
    #[arg(long, env = "MUSTER_OUTPUT_CAP", default_value_t = 65_536)]
    output_cap: usize,
    /// Seconds between SIGTERM and SIGKILL when a step is stopped.
    #[arg(long, env = "MUSTER_KILL_GRACE", default_value_t = 5)]
    kill_grace: u64,
    /// Seconds running jobs get to finish at shutdown.
    #[arg(long, env = "MUSTER_SHUTDOWN_GRACE", default_value_t = 10)]
    shutdown_grace: u64,
    /// Largest size of the on-disk result spool, in MiB.
    #[arg(long, env = "MUSTER_SPOOL_MAX_MB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    spool_max_mb: u64,
    /// Jobs running at once.
    #[arg(long, env = "MUSTER_MAX_RUNS", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    max_runs: u64,
    /// Serve Prometheus metrics as /metrics on ADDR (off unless given): a
    /// port alone (9464) is loopback only; IP:PORT binds exactly there.
    #[arg(long, env = "MUSTER_METRICS", value_name = "ADDR")]
    metrics: Option<String>,
}

fn main() -> ExitCode {
    let flags = match muster_runtime::exit::parse_args::<Flags>() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let subjects = match Subjects::new(&flags.prefix) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("muster-target: {e}");
            return Exit::Invalid.into();
        }
    };
    let name = match flags.name.clone().map_or_else(host_name, Ok) {
        Ok(name) => name,
        Err(e) => {
            eprintln!("muster-target: {e}");
            return Exit::Invalid.into();
        }
    };
    logging::init(flags.log.log_format);
    let nats = flags.nats.options("muster-target");
    let mut config = TargetConfig::new(name, flags.state_dir);
    config.servers = nats.servers;
    config.nkey = nats.nkey;
    config.creds = nats.creds;
    config.user = nats.user;
    config.password = nats.password;
    config.tls = nats.tls;
    config.subjects = subjects;
    config.poll_interval = Duration::from_secs(flags.poll_interval);
    config.enlist = !flags.no_enlist;
    config.location = flags.location;
    config.output_cap = flags.output_cap;
    config.kill_grace = Duration::from_secs(flags.kill_grace);
    config.shutdown_grace = Duration::from_secs(flags.shutdown_grace);
    config.spool_max_bytes = flags.spool_max_mb * 1024 * 1024;
    config.max_concurrent_runs = usize::try_from(flags.max_runs).unwrap_or(usize::MAX);
    config.metrics = flags.metrics;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The agent waits on NATS, files and child processes: one worker is
        // plenty, and each extra thread costs resident memory on every host.
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if flags.defect {
        return runtime.block_on(async {
            match muster_target::defect_self(&config).await {
                Ok(info) => {
                    println!("{}: defection requested; its jobs from the master are deleted at its next poll", info.name);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("muster-target: {e:#}");
                    exit_for(&e)
                }
            }
        });
    }
    runtime.block_on(async {
        let shutdown = muster_runtime::signal::shutdown_on_signals();
        match muster_target::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                exit_for(&e)
            }
        }
    })
}

/// The host's short name, as the target's name when `--name` is not given.
fn host_name() -> Result<TargetName, HostNameError> {
    let host = nix::unistd::gethostname().map_err(|e| HostNameError::Unreadable(e.into()))?;
    name_from_host(&host.to_string_lossy())
}

/// The exit code of a failure: a bad NATS URL, key or credentials file,
/// or a metrics address that cannot be listened on, is invalid input;
/// anything else internal.
fn exit_for(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<muster_runtime::metrics::ListenError>().is_some() {
        return Exit::Invalid.into();
    }
    e.downcast_ref::<muster_runtime::nats::ConnectError>().map_or(Exit::Internal, Exit::from).into()
}
