//! `muster-master`: parse configuration, set up logging, run the daemon.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use muster_master::nats::NatsOptions;
use muster_master::MasterConfig;
use muster_shared::streams::StoreOptions;
use muster_shared::subject::Subjects;

/// The Muster master: job definitions, target registry, admin API.
#[derive(Debug, Parser)]
#[command(version)]
struct Flags {
    /// NATS server URL(s), comma-separated.
    #[arg(long, short = 's', env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    server: String,
    #[arg(long, env = "NATS_CREDS")]
    creds: Option<std::path::PathBuf>,
    #[arg(long, env = "NATS_USER", hide = true)]
    user: Option<String>,
    #[arg(long, env = "NATS_PASSWORD", hide = true)]
    password: Option<String>,
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
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let subjects = match Subjects::new(&flags.prefix) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("muster-master: {e}");
            return ExitCode::from(64);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG").unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = MasterConfig {
        nats: NatsOptions {
            creds: flags.creds,
            user: flags.user,
            password: flags.password,
            name: Some("muster-master".into()),
            ..NatsOptions::default()
        }
        .with_servers(&flags.server),
        subjects,
        store: StoreOptions {
            replicas: usize::from(flags.replicas),
            history_retention: Duration::from_secs(flags.history_days * 86_400),
            duplicate_window: Duration::from_secs(flags.duplicate_window),
        },
        force_poll_timeout: Duration::from_secs(flags.force_poll_timeout),
        ..MasterConfig::default()
    };
    tracing::info!(servers = ?config.nats.servers, prefix = config.subjects.prefix(), "muster-master starting");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let shutdown = muster_master_shutdown();
        match muster_master::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Cancelled on SIGTERM or SIGINT.
fn muster_master_shutdown() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        t.cancel();
    });
    token
}
