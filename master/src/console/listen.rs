//! Where the console listens (`--http ADDR`), over TLS when given a
//! certificate and key, and serving until shutdown.
//!
//! `ADDR` is, in order of what is tried:
//! - a port alone (`8080`): loopback only, `127.0.0.1:8080`, the default
//!   stance (the console is a way to administer every target);
//! - `HOST:PORT` with an IP address: exactly there; `0.0.0.0:8080` or
//!   `[::]:8080` to listen on every interface (in a container, published
//!   on the host's loopback by compose);
//! - `NAME:PORT`: the first address `NAME` resolves to (`localhost:8080`).
//!
//! TLS uses rustls with the ring provider, the same library and provider
//! the NATS connection uses; the key file is refused when others can read
//! it, as every private key is.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::rustls;
use async_nats::rustls::pki_types::pem::PemObject as _;
use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use axum_server::tls_rustls::RustlsConfig;
use muster_runtime::nats::{check_private, KeyKind};
use tokio_util::sync::CancellationToken;

use super::auth::Users;
use super::error::OpenError;

/// The console's flags, as the binary parsed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// `--http ADDR`, as given.
    pub addr: String,
    /// `--http-users FILE`; the console refuses to start without one.
    pub users: Option<PathBuf>,
    /// `--http-tls-cert` and `--http-tls-key`, both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A bound listener with its users and TLS set-up, ready to serve.
#[derive(Debug)]
pub struct Opened {
    listener: TcpListener,
    tls: Option<RustlsConfig>,
    pub(super) users: Users,
    pub local_addr: SocketAddr,
}

impl Opened {
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// What `--http ADDR` means (see the module's documentation).
///
/// # Errors
/// [`OpenError::Addr`].
pub fn parse_addr(addr: &str) -> Result<SocketAddr, OpenError> {
    muster_runtime::listen::parse_addr(addr).map_err(|e| OpenError::Addr { addr: e.addr, why: e.why })
}

pub(super) fn open(config: &ConsoleConfig) -> Result<Opened, OpenError> {
    let addr = parse_addr(&config.addr)?;
    let users = Users::load(config.users.as_deref().ok_or(OpenError::NoUsers)?)?;
    let tls = config.tls.as_ref().map(|(cert, key)| tls_config(cert, key)).transpose()?;
    let listener = TcpListener::bind(addr).map_err(|source| OpenError::Bind { addr, source })?;
    listener.set_nonblocking(true).map_err(|source| OpenError::Bind { addr, source })?;
    let local_addr = listener.local_addr().map_err(|source| OpenError::Bind { addr, source })?;
    Ok(Opened { listener, tls, users, local_addr })
}

fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<RustlsConfig, OpenError> {
    let tls_err = |path: &std::path::Path, why: String| OpenError::Tls { path: path.to_owned(), why };
    check_private(KeyKind::ConsoleTlsKey, key)?;
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| tls_err(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_err(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| tls_err(key, format!("does not go with the certificate: {e}")))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(server)))
}

/// Serves `app` on the opened listener until `shutdown`, then lets
/// requests in flight finish for up to `grace` (live event streams end at
/// once: they watch the same token).
pub(super) async fn serve(opened: Opened, app: axum::Router, shutdown: CancellationToken, grace: Duration) -> anyhow::Result<()> {
    let scheme = if opened.is_tls() { "https" } else { "http" };
    tracing::info!(addr = %opened.local_addr, url = %format!("{scheme}://{}/", opened.local_addr), "web console listening");
    let handle = axum_server::Handle::new();
    tokio::spawn({
        let (handle, shutdown) = (handle.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            handle.graceful_shutdown(Some(grace));
        }
    });
    let service = app.into_make_service();
    match opened.tls {
        Some(tls) => axum_server::from_tcp_rustls(opened.listener, tls).handle(handle).serve(service).await?,
        None => axum_server::from_tcp(opened.listener).handle(handle).serve(service).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_address_is_an_open_error_naming_it() {
        // What ADDR means is tested in muster_runtime::listen.
        assert_eq!(parse_addr("8080").unwrap(), "127.0.0.1:8080".parse().unwrap());
        for bad in ["", "99999", "web:", "no port"] {
            assert!(matches!(parse_addr(bad), Err(OpenError::Addr { addr, .. }) if addr == bad), "{bad:?}");
        }
    }
}
