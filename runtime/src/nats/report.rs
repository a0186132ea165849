//! What the daemons say about their NATS connection: which server, and why
//! it failed, once per change of state.
//!
//! Why: async-nats reports a failed attempt as an event that carries only
//! the error's kind (`nats: IO error`), without the server or the cause, and
//! logs it itself on every attempt (every 2 s at most while NATS is down).
//! So the daemons' default filter keeps async-nats' own lines to warnings
//! (`logging.rs`), and this says instead, once: "disconnected from NATS at
//! URL", then "cannot connect to NATS at URL: <cause>" — the cause found by
//! a plain TCP connect to each server (connection refused, no route, name
//! not resolved, timed out; or, when TCP connects, that the NATS handshake
//! itself failed) — again only when the cause changes, and "connected" when
//! it is back. A failed TLS handshake is named by the verifier (`tls.rs`),
//! also once per change.

use std::sync::Mutex;
use std::time::Duration;

/// How long a probe waits for TCP, as the client waits for a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection's state as last reported.
#[derive(Debug)]
pub(super) struct Report {
    urls: Vec<async_nats::ServerAddr>,
    shown: String,
    /// The cause last logged while NATS is unreachable; `None` while connected.
    cause: Mutex<Option<String>>,
}

impl Report {
    pub(super) fn new(urls: Vec<async_nats::ServerAddr>, shown: String) -> Report {
        Report { urls, shown, cause: Mutex::new(None) }
    }

    /// Logs what `event` changes, once.
    pub(super) async fn event(&self, event: async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                let was = self.cause.lock().expect("report lock").take();
                match was {
                    Some(_) => tracing::info!(urls = %self.shown, "connected to NATS again"),
                    None => tracing::info!(urls = %self.shown, "connected to NATS"),
                }
            }
            async_nats::Event::Disconnected => {
                tracing::warn!(urls = %self.shown, "disconnected from NATS; reconnecting");
            }
            async_nats::Event::ClientError(async_nats::ClientError::Other(kind)) => {
                let cause = self.cause().await.unwrap_or_else(|| format!("the NATS handshake failed ({kind})"));
                let mut last = self.cause.lock().expect("report lock");
                if last.as_deref() != Some(cause.as_str()) {
                    tracing::warn!(
                        urls = %self.shown,
                        cause,
                        "cannot connect to NATS; retrying every 2 s at most (said again when the cause changes)"
                    );
                    *last = Some(cause);
                }
            }
            other => tracing::debug!(%other, "NATS event"),
        }
    }

    /// Why no server can be reached, one clause per server; `None` when
    /// every server accepts a TCP connection (the failure is NATS's own).
    async fn cause(&self) -> Option<String> {
        let mut causes = Vec::new();
        for addr in &self.urls {
            let at = format!("{}:{}", addr.host(), addr.port());
            let failed = match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&at)).await {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => io_cause(&e),
                Err(_) => format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
            };
            causes.push(format!("{at}: {failed}"));
        }
        (!causes.is_empty()).then(|| causes.join("; "))
    }
}

/// An I/O error as an operator reads it: `connection refused`, not `Connection
/// refused (os error 111)`.
fn io_cause(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused (is nats-server running and listening there?)".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cause_names_the_server_and_why() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let closed: async_nats::ServerAddr = format!("nats://127.0.0.1:{port}").parse().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open: async_nats::ServerAddr = format!("nats://127.0.0.1:{}", listener.local_addr().unwrap().port()).parse().unwrap();

        let report = Report::new(vec![closed.clone()], String::new());
        let cause = report.cause().await.unwrap();
        assert_eq!(cause, format!("127.0.0.1:{port}: connection refused (is nats-server running and listening there?)"));
        let both = Report::new(vec![open.clone(), closed], String::new());
        assert!(both.cause().await.unwrap().starts_with(&format!("127.0.0.1:{port}: ")), "only the server that failed");
        assert_eq!(Report::new(vec![open], String::new()).cause().await, None, "TCP connects: NATS's own failure");
    }
}
