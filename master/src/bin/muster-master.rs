//! `muster-master`: parse configuration, set up logging, run the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use muster_master::console::ConsoleConfig;
use muster_master::MasterConfig;
use muster_runtime::exit::Exit;
use muster_runtime::logging::{self, LogArgs};
use muster_runtime::nats::NatsArgs;
use muster_shared::streams::StoreOptions;
use muster_shared::subject::Subjects;

/// The Muster master: job definitions, target registry, admin API.
#[derive(Debug, Parser)]
#[command(version, after_help = muster_runtime::exit::help("Environment: NATS_URL (comma-separated), NATS_NKEY, NATS_CREDS, NATS_USER, NATS_PASSWORD, NATS_CA, NATS_CERT, NATS_KEY, MUSTER_HTTP, MUSTER_HTTP_USERS, MUSTER_HTTP_TLS_CERT, MUSTER_HTTP_TLS_KEY, MUSTER_LOG (log filter, e.g. info,muster_master=debug), and the MUSTER_* variable named beside each flag."))]
struct Flags {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    log: LogArgs,
    /// Subject prefix, so several installations can share one NATS account.
    #[arg(long, env = "MUSTER_PREFIX", default_value = "muster")]
    prefix: String,
    /// Stream and bucket replicas: 1 on one server, 3 on a cluster.
    #[arg(long, env = "MUSTER_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    replicas: u8,
    /// How long run history is kept, in days.
    #[arg(long, env = "MUSTER_HISTORY_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    history_days: u64,
    /// JetStream de-duplication window, in seconds.
    #[arg(long, env = "MUSTER_DUPLICATE_WINDOW", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    duplicate_window: u64,
    /// How long a force-poll waits for the target, in seconds.
    #[arg(long, env = "MUSTER_FORCE_POLL_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    force_poll_timeout: u64,
    /// Serve the web console on ADDR (off unless given): a port alone
    /// (8080) is loopback only (127.0.0.1:8080); IP:PORT binds exactly
    /// there (0.0.0.0:8080 for every interface); HOST:PORT binds to the
    /// name's first address. Needs --http-users.
    #[arg(long, env = "MUSTER_HTTP", value_name = "ADDR")]
    http: Option<String>,
    /// The console's users (made by `musterctl auth console-user`; mode
    /// 0600, refused otherwise).
    #[arg(long, env = "MUSTER_HTTP_USERS", value_name = "FILE", requires = "http")]
    http_users: Option<PathBuf>,
    /// Serve the console over TLS with this PEM certificate (chain)...
    #[arg(long, env = "MUSTER_HTTP_TLS_CERT", value_name = "FILE", requires_all = ["http", "http_tls_key"])]
    http_tls_cert: Option<PathBuf>,
    /// ...and this PEM private key (mode 0600, refused otherwise).
    #[arg(long, env = "MUSTER_HTTP_TLS_KEY", value_name = "FILE", requires_all = ["http", "http_tls_cert"])]
    http_tls_key: Option<PathBuf>,
    /// Prometheus metrics are served as /metrics on the --http listener,
    /// without sign-in; targets by status are read from JetStream at most
    /// this often (seconds), however often it is scraped.
    #[arg(long, env = "MUSTER_METRICS_REFRESH", value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    metrics_refresh: u64,
}

fn main() -> ExitCode {
    let flags = match muster_runtime::exit::parse_args::<Flags>() {
        Ok(f) => f,
        Err(code) => return code,
    };
    let subjects = match Subjects::new(&flags.prefix) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("muster-master: {e}");
            return Exit::Invalid.into();
        }
    };
    logging::init(flags.log.log_format);
    let config = MasterConfig {
        nats: flags.nats.options("muster-master"),
        subjects,
        store: StoreOptions {
            replicas: usize::from(flags.replicas),
            history_retention: Duration::from_secs(flags.history_days * 86_400),
            duplicate_window: Duration::from_secs(flags.duplicate_window),
        },
        force_poll_timeout: Duration::from_secs(flags.force_poll_timeout),
        console: flags.http.map(|addr| ConsoleConfig {
            addr,
            users: flags.http_users,
            tls: flags.http_tls_cert.zip(flags.http_tls_key),
        }),
        metrics_refresh: Duration::from_secs(flags.metrics_refresh),
        ..MasterConfig::default()
    };
    tracing::info!(servers = ?config.nats.servers, prefix = config.subjects.prefix(), "muster-master starting");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let shutdown = muster_runtime::signal::shutdown_on_signals();
        match muster_master::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                exit_for(&e)
            }
        }
    })
}

/// The exit code of a failure: a bad NATS URL, key or credentials file,
/// or a bad console flag or file, is invalid input; anything else internal.
fn exit_for(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<muster_master::console::OpenError>().is_some() {
        return Exit::Invalid.into();
    }
    e.downcast_ref::<muster_runtime::nats::ConnectError>().map_or(Exit::Internal, Exit::from).into()
}
