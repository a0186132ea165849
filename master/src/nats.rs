//! Connecting to NATS the same way from the daemon and from `musterctl`.
//!
//! Credentials come from the environment like the `nats` CLI's (`NATS_URL`,
//! `NATS_CREDS`, `NATS_USER`/`NATS_PASSWORD`), so operators reuse what they
//! already have. The daemon waits forever for NATS to appear and reconnects
//! forever; `musterctl` fails fast with a message that says where it looked.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// One or more server URLs; several for a cluster.
    pub servers: Vec<String>,
    pub creds: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Shown in the server's connection list.
    pub name: Option<String>,
}

impl NatsOptions {
    /// Splits a comma-separated URL list (as in `NATS_URL`).
    pub fn with_servers(mut self, urls: &str) -> Self {
        self.servers = urls.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
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

/// Whether to wait for NATS at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Daemons: start even when NATS is not up yet, and reconnect forever.
    Forever,
    /// Commands: fail after one attempt.
    Once,
}

/// # Errors
/// With [`Wait::Once`], when no server answers; the message names the URLs.
pub async fn connect(opts: &NatsOptions, wait: Wait) -> anyhow::Result<async_nats::Client> {
    let mut o = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| {
            // 0, 100 ms, 200 ms, ... capped at 2 s: quick to come back, gentle on a dead server.
            Duration::from_millis((attempt as u64 * 100).min(2000))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                other => tracing::debug!(%other, "NATS event"),
            }
        });
    if let Some(name) = &opts.name {
        o = o.name(name);
    }
    if let Some(creds) = &opts.creds {
        o = o
            .credentials_file(creds)
            .await
            .with_context(|| format!("reading NATS credentials {}", creds.display()))?;
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
        .map(|u| u.parse().with_context(|| format!("bad NATS URL '{u}'")))
        .collect::<anyhow::Result<_>>()?;
    o.connect(addrs)
        .await
        .with_context(|| format!("cannot connect to NATS at {urls} (set --server or NATS_URL)"))
}
