//! Connecting to NATS the same way from every binary.
//!
//! Credentials come from the environment like the `nats` CLI's (`NATS_URL`,
//! `NATS_CREDS`, `NATS_USER`/`NATS_PASSWORD`), so operators reuse what they
//! already have. Daemons wait forever for NATS to appear and reconnect
//! forever; `musterctl` fails fast with a message that says where it looked.

use std::path::PathBuf;
use std::time::Duration;

/// The connection flags every binary takes (flatten them into its parser).
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
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
}

impl NatsArgs {
    /// The options these flags stand for, with the name the server shows.
    pub fn options(&self, name: impl Into<String>) -> NatsOptions {
        NatsOptions {
            servers: split_urls(&self.server),
            creds: self.creds.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            name: Some(name.into()),
            inbox_prefix: None,
        }
    }
}

/// How to reach NATS.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// One or more server URLs; several for a cluster.
    pub servers: Vec<String>,
    pub creds: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Shown in the server's connection list.
    pub name: Option<String>,
    /// A target's own inbox prefix (`_INBOX_<t>`), so its permissions need
    /// not include everyone's `_INBOX.>`.
    pub inbox_prefix: Option<String>,
}

impl NatsOptions {
    /// Splits a comma-separated URL list (as in `NATS_URL`).
    #[must_use]
    pub fn with_servers(mut self, urls: &str) -> Self {
        self.servers = split_urls(urls);
        self
    }

    fn urls(&self) -> String {
        if self.servers.is_empty() {
            "nats://127.0.0.1:4222".to_owned()
        } else {
            self.servers.join(",")
        }
    }
}

fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Whether to wait for NATS at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Daemons: start even when NATS is not up yet, and reconnect forever.
    Forever,
    /// Commands: fail after one attempt.
    Once,
}

/// Why a connection could not be made. Callers branch on the variant (for
/// example `musterctl` exits 6 on [`ConnectError::Unreachable`]); print it
/// with its causes (`{:#}` through `anyhow`).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad NATS URL '{url}'")]
    BadUrl {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading NATS credentials {}", path.display())]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {urls} (set --server or NATS_URL)")]
    Unreachable {
        urls: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

/// Connects as `opts` says.
///
/// # Errors
/// A bad URL or credentials file; with [`Wait::Once`], also no server
/// answering ([`ConnectError::Unreachable`], whose message names the URLs).
pub async fn connect(opts: &NatsOptions, wait: Wait) -> Result<async_nats::Client, ConnectError> {
    let mut o = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("disconnected from NATS; reconnecting")
                }
                other => tracing::debug!(%other, "NATS event"),
            }
        });
    if let Some(name) = &opts.name {
        o = o.name(name);
    }
    if let Some(prefix) = &opts.inbox_prefix {
        o = o.custom_inbox_prefix(prefix);
    }
    if let Some(creds) = &opts.creds {
        o = o.credentials_file(creds).await.map_err(|source| ConnectError::Credentials { path: creds.clone(), source })?;
    }
    if let (Some(u), Some(p)) = (&opts.user, &opts.password) {
        o = o.user_and_password(u.clone(), p.clone());
    }
    if wait == Wait::Forever {
        o = o.retry_on_initial_connect();
    }
    let urls = opts.urls();
    let addrs: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|u| u.parse().map_err(|source| ConnectError::BadUrl { url: u.to_owned(), source }))
        .collect::<Result<_, _>>()?;
    o.connect(addrs).await.map_err(|source| ConnectError::Unreachable { urls, source })
}

/// The wait before connection attempt number `attempt` (async-nats counts
/// the very first connect as attempt 1): none for the first, then 100 ms
/// more per attempt, capped at 2 s. Quick to come back, gentle on a dead
/// server, and no command or daemon waits before its first connect.
fn reconnect_delay(attempt: usize) -> Duration {
    let after_first = attempt.saturating_sub(1) as u64;
    Duration::from_millis((after_first * 100).min(2000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_attempt_does_not_wait_and_later_ones_are_capped() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(100));
        assert_eq!(reconnect_delay(1000), Duration::from_secs(2));
    }

    #[test]
    fn a_url_list_is_split_and_trimmed() {
        let o = NatsOptions::default().with_servers(" nats://a:1, ,nats://b:2 ");
        assert_eq!(o.servers, ["nats://a:1", "nats://b:2"]);
        assert_eq!(NatsOptions::default().urls(), "nats://127.0.0.1:4222");
    }

    #[tokio::test]
    async fn a_bad_url_is_named() {
        let o = NatsOptions::default().with_servers("nats://ok:4222,not a url::");
        match connect(&o, Wait::Once).await {
            Err(ConnectError::BadUrl { url, .. }) => assert_eq!(url, "not a url::"),
            other => panic!("expected BadUrl, got {other:?}"),
        }
    }
}
