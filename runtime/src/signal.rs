//! One shutdown signal fanned out to every task: both daemons stop the same
//! way on SIGTERM (what `docker compose stop` and systemd send) and SIGINT.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT. Call it inside a tokio
/// runtime; the handlers are installed before it returns.
///
/// # Panics
/// When the process cannot install a signal handler (never on Unix in
/// practice: only when signals are exhausted).
pub fn shutdown_on_signals() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        cancel.cancel();
    });
    token
}
