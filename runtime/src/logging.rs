//! Logging set up once for every binary: the `MUSTER_LOG` filter (as
//! `RUST_LOG` reads), and text for people or JSON lines for log shippers.

use tracing_subscriber::EnvFilter;

/// How log lines are written (to standard output, as they always were).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object a line, with the span fields.
    Json,
}

/// The logging flags each daemon takes (flatten them into its parser).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format. The level filter is `MUSTER_LOG` (default
    /// `info,async_nats=warn`), e.g. `MUSTER_LOG=debug` or
    /// `MUSTER_LOG=muster_target=debug,info`.
    #[arg(long, env = "MUSTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The filter without `MUSTER_LOG`: async-nats logs every connection
/// attempt and event at `info` (`nats: IO error` every 2 s while NATS is
/// down, without the server or the cause); the daemons say which server
/// failed and why once per change instead (`nats/report.rs`).
pub const DEFAULT_FILTER: &str = "info,async_nats=warn";

/// Installs the global subscriber. Call once, at start.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("MUSTER_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}
