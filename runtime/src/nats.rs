//! Connecting to NATS the same way from every binary.
//!
//! Credentials come from the environment like the `nats` CLI's (`NATS_URL`,
//! `NATS_NKEY`, `NATS_CREDS`, `NATS_USER`/`NATS_PASSWORD`), so operators
//! reuse what they already have. `musterctl auth` makes nkey users: the
//! server holds only public keys, and each process reads its seed from a
//! file of its own (`--nkey`). A seed, credentials or TLS key file that
//! group or others may read is refused before the first attempt, by every
//! binary ([`ConnectError::KeyFile`], exit 4; see `keyfile.rs`). Daemons wait forever for NATS to appear and reconnect
//! forever; `musterctl` fails fast with a message that says where it looked.
//!
//! TLS is on with a `tls://` URL or any of `--tls-ca`, `--tls-cert`,
//! `--tls-key` (`NATS_CA`, `NATS_CERT`, `NATS_KEY`, the `nats` CLI's names);
//! then it is required, so a server that does not offer it is refused rather
//! than spoken to in clear. The files are read before the first attempt: a
//! missing or unusable file ends every binary at once ([`ConnectError::TlsFile`],
//! exit 4).
//!
//! A certificate that does not verify (wrong CA, expired, not for the URL's
//! host) or a server that refuses this client's certificate ends `musterctl`
//! within one connect timeout with [`ConnectError::Tls`], which names the
//! server and the cause (exit 4, "invalid": retrying does not help, a file
//! or the server's certificate must change). The daemons do not exit: they
//! log the cause at `error` each time it changes (see `tls.rs`) and keep
//! retrying, as they do while NATS is down. The cure is usually on the
//! server (a renewed or reissued certificate, a reload), and a daemon that
//! exited would then need a restart on every host, or, once its service
//! manager's restart limit is hit, a visit; one that waits picks the fixed
//! certificate up at its next attempt (2 s at most).
//!
//! While NATS cannot be reached, the daemons say which server and why once
//! per change of state, never once per attempt (`report.rs`).

mod keyfile;
mod refusal;
mod report;
mod tls;

use std::path::PathBuf;
use std::time::Duration;

pub use keyfile::{check_private, read_seed, KeyFileError, KeyKind};
pub use refusal::{Action, Refusal, Refusals, Watch};
pub use tls::{TlsCause, TlsFileError, TlsFiles};

/// The connection flags every binary takes (flatten them into its parser).
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, short = 's', env = "NATS_URL", default_value = "nats://127.0.0.1:4222", global = true)]
    pub server: String,
    /// NATS user nkey seed file (mode 0600), as `musterctl auth` writes it.
    #[arg(long, env = "NATS_NKEY", global = true, value_name = "FILE")]
    pub nkey: Option<PathBuf>,
    /// NATS credentials file (mode 0600).
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub creds: Option<PathBuf>,
    #[arg(long, env = "NATS_USER", global = true, hide = true)]
    pub user: Option<String>,
    #[arg(long, env = "NATS_PASSWORD", global = true, hide = true)]
    pub password: Option<String>,
    /// CA certificate (PEM) that signed the NATS server's certificate; turns
    /// TLS on and makes it required.
    #[arg(long = "tls-ca", env = "NATS_CA", global = true, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for a server that requires one (mTLS); with --tls-key.
    #[arg(long = "tls-cert", env = "NATS_CERT", global = true, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "tls-key", env = "NATS_KEY", global = true, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
}

impl NatsArgs {
    /// The options these flags stand for, with the name the server shows.
    pub fn options(&self, name: impl Into<String>) -> NatsOptions {
        NatsOptions {
            servers: split_urls(&self.server),
            nkey: self.nkey.clone(),
            creds: self.creds.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            tls: TlsFiles { ca: self.tls_ca.clone(), cert: self.tls_cert.clone(), key: self.tls_key.clone() },
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
    /// A file holding the user's nkey seed.
    pub nkey: Option<PathBuf>,
    pub creds: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// TLS files; any of them makes TLS required.
    pub tls: TlsFiles,
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
    /// A seed, credentials or TLS key file others may read, or no seed in it.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    TlsFile(#[from] TlsFileError),
    #[error("TLS with NATS at {urls} failed: {cause}")]
    Tls { urls: String, cause: TlsCause },
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
/// A bad URL, an exposed or unusable key file, a bad credentials or TLS file; with [`Wait::Once`], also a failed
/// TLS handshake ([`ConnectError::Tls`]) or no server answering
/// ([`ConnectError::Unreachable`]), each naming the URLs.
pub async fn connect(opts: &NatsOptions, wait: Wait) -> Result<async_nats::Client, ConnectError> {
    connect_watching(opts, wait).await.map(|(client, _)| client)
}

/// [`connect`], and the server's permission refusals on that connection
/// ([`Refusals`]), so that a request the user may not send ends at once.
///
/// # Errors
/// As [`connect`].
pub async fn connect_watching(opts: &NatsOptions, wait: Wait) -> Result<(async_nats::Client, Refusals), ConnectError> {
    // Every private file is checked before anything is read or attempted.
    let seed = opts.nkey.as_deref().map(read_seed).transpose()?;
    if let Some(creds) = &opts.creds {
        check_private(KeyKind::Credentials, creds)?;
    }
    if let Some(key) = &opts.tls.key {
        check_private(KeyKind::TlsKey, key)?;
    }
    let refusals = Refusals::default();
    let mut o = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay);
    if let Some(name) = &opts.name {
        o = o.name(name);
    }
    if let Some(prefix) = &opts.inbox_prefix {
        o = o.custom_inbox_prefix(prefix);
    }
    if let Some(creds) = &opts.creds {
        o = o.credentials_file(creds).await.map_err(|source| ConnectError::Credentials { path: creds.clone(), source })?;
    }
    if let Some(seed) = seed {
        o = o.nkey(seed);
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
    // Said once per process: a plain installation (the demo) works, and its
    // operator is told what that means.
    let authenticated = opts.creds.is_some()
        || opts.nkey.is_some()
        || opts.user.is_some()
        || opts.tls.cert.is_some()
        || addrs.iter().any(async_nats::ServerAddr::has_user_pass);
    if !authenticated {
        tracing::warn!(
            %urls,
            "connecting to NATS without authentication: whoever reaches the server can do what this process does (see `musterctl auth init`)"
        );
    }
    // Which server failed and why, once per change (`report.rs`).
    let report = std::sync::Arc::new(report::Report::new(addrs.clone(), urls.clone()));
    o = o.event_callback(move |event| {
        let report = report.clone();
        async move { report.event(event).await }
    });
    // Which server failed and why, once per change (`report.rs`); the
    // server's permission refusals to whoever waits on them (`refusal.rs`).
    let report = std::sync::Arc::new(report::Report::new(addrs.clone(), urls.clone()));
    o = o.event_callback({
        let refusals = refusals.clone();
        move |event| {
            let report = report.clone();
            let refusals = refusals.clone();
            async move {
                if let async_nats::Event::ServerError(e) = &event {
                    refusals.report(e);
                }
                report.event(event).await
            }
        }
    });
    if opts.tls.any() || addrs.iter().any(async_nats::ServerAddr::tls_required) {
        o = o.require_tls(true).tls_client_config(tls::client_config(&opts.tls, &urls, wait == Wait::Forever)?);
    }
    let client = o.connect(addrs).await.map_err(|source| match TlsCause::find(&source) {
        Some(cause) => ConnectError::Tls { urls: urls.clone(), cause },
        None => ConnectError::Unreachable { urls, source },
    })?;
    Ok((client, refusals))
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
    async fn unusable_tls_files_are_refused_before_any_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        // A port nothing listens on: these fail before connecting.
        let at = |tls: TlsFiles| NatsOptions { tls, ..NatsOptions::default() }.with_servers("tls://127.0.0.1:1");
        let ca = |p: &std::path::Path| TlsFiles { ca: Some(p.to_owned()), ..TlsFiles::default() };
        match connect(&at(ca(&missing)), Wait::Once).await {
            Err(ConnectError::TlsFile(TlsFileError::Read { path, .. })) => assert_eq!(path, missing),
            other => panic!("expected an unreadable CA, got {other:?}"),
        }
        match connect(&at(ca(&empty)), Wait::Once).await {
            Err(ConnectError::TlsFile(TlsFileError::NoCertificate { path })) => assert_eq!(path, empty),
            other => panic!("expected a CA file without certificates, got {other:?}"),
        }
        let half = TlsFiles { cert: Some(empty.clone()), ..TlsFiles::default() };
        assert!(matches!(connect(&at(half), Wait::Forever).await, Err(ConnectError::TlsFile(TlsFileError::HalfAPair))));
        let e = connect(&at(ca(&missing)), Wait::Forever).await.unwrap_err();
        assert_eq!(crate::exit::Exit::from(&e), crate::exit::Exit::Invalid);
    }

    #[test]
    fn a_tls_failure_is_found_inside_io_errors() {
        use async_nats::rustls::{CertificateError, Error};
        let wrapped =
            std::io::Error::new(std::io::ErrorKind::InvalidData, Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert_eq!(TlsCause::find(&wrapped), Some(TlsCause::ServerCertificate(CertificateError::UnknownIssuer)));
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(TlsCause::find(&plain), None);
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
