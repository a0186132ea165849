//! TLS for the NATS connection: the CA, an optional client certificate, and
//! a typed account of why a handshake failed.
//!
//! The rustls configuration is built here rather than by async-nats
//! (`add_root_certificates`, `add_client_certificate`) for one reason: the
//! server's certificate is checked by [`Watched`], which wraps rustls' own
//! WebPKI verifier and sees every verdict, typed, on the first connect and
//! on every reconnect. async-nats reports a failed reconnect to its event
//! callback only as the text "IO error", so without this a daemon could not
//! say *why* it cannot connect. The checks themselves are rustls' (chain to
//! the CA, validity dates, host name against the URL's host), unchanged.
//!
//! A daemon logs a verdict when it changes (first failure, a different
//! failure, verified again), naming the server and the cause, and keeps
//! retrying: see [`super`] for why it does not exit. `musterctl` gets the
//! same cause in its [`super::ConnectError::Tls`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_nats::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use async_nats::rustls::client::WebPkiServerVerifier;
use async_nats::rustls::pki_types::pem::PemObject;
use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use async_nats::rustls::{self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The TLS files a binary was given (`--tls-ca`, `--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA certificate(s) the server's certificate must chain to; without
    /// one, the system's CA store.
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for a server that requires one (mTLS).
    pub cert: Option<PathBuf>,
    /// Its PEM private key.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any file was given (which makes TLS required).
    pub fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// Why a TLS handshake with the server failed, for the message and for
/// callers that branch on it.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsCause {
    /// The server's certificate was refused by this client (wrong CA,
    /// expired, not valid for the host name, …).
    ServerCertificate(CertificateError),
    /// The server refused the handshake: usually this client's certificate,
    /// or the lack of one.
    RefusedByServer(rustls::AlertDescription),
    /// The server answered the handshake in clear: it has no TLS configured
    /// (and this client, asked for TLS, does not fall back).
    NotOffered,
    /// Any other TLS failure.
    Other(rustls::Error),
}

impl From<rustls::Error> for TlsCause {
    fn from(e: rustls::Error) -> Self {
        match e {
            rustls::Error::InvalidCertificate(c) => TlsCause::ServerCertificate(c),
            rustls::Error::AlertReceived(a) => TlsCause::RefusedByServer(a),
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => TlsCause::NotOffered,
            other => TlsCause::Other(other),
        }
    }
}

impl std::fmt::Display for TlsCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsCause::ServerCertificate(CertificateError::UnknownIssuer) => write!(
                f,
                "the server's certificate is not signed by a trusted CA (give the CA that signed it with --tls-ca or NATS_CA)"
            ),
            TlsCause::ServerCertificate(
                c @ (CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. }),
            ) => write!(f, "the server's certificate is outside its validity dates ({c}; check both clocks, or renew it)"),
            TlsCause::ServerCertificate(
                c @ (CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }),
            ) => write!(f, "the server's certificate does not name the host in the URL ({c})"),
            TlsCause::ServerCertificate(c) => write!(f, "the server's certificate was refused: {c}"),
            TlsCause::RefusedByServer(a) => write!(
                f,
                "the server refused the handshake ({a:?}); if it requires client certificates, give --tls-cert and --tls-key (NATS_CERT, NATS_KEY) signed by its CA"
            ),
            TlsCause::NotOffered => write!(
                f,
                "the server does not speak TLS on this port (a tls:// URL or a --tls-* flag requires it; configure TLS on the server, or drop them)"
            ),
            TlsCause::Other(e) => write!(f, "{e}"),
        }
    }
}

impl TlsCause {
    /// The TLS failure somewhere in `error`'s causes, if there is one.
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<TlsCause> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(r) = e.downcast_ref::<rustls::Error>() {
                return Some(r.clone().into());
            }
            // `io::Error::source` skips the error it wraps: look inside.
            if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
                if let Some(found) = TlsCause::find(inner) {
                    return Some(found);
                }
            }
            next = e.source();
        }
        None
    }
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("reading TLS file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("--tls-cert and --tls-key (NATS_CERT, NATS_KEY) go together; only one was given")]
    HalfAPair,
    #[error("the TLS client certificate {} does not go with its key", cert.display())]
    Mismatch {
        cert: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the CA in {} cannot verify servers", path.display())]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// The client configuration for `files`, verified by [`Watched`]. `log`
/// makes it log each change of verdict (daemons); `urls` is how the log
/// names the server.
pub(super) fn client_config(files: &TlsFiles, urls: &str, log: bool) -> Result<ClientConfig, TlsFileError> {
    let mut roots = RootCertStore::empty();
    match &files.ca {
        Some(path) => {
            let certs = read_certs(path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsFileError::NoCertificate { path: path.clone() });
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let ca_path = files.ca.clone().unwrap_or_default();
    let inner =
        WebPkiServerVerifier::builder(Arc::new(roots)).build().map_err(|source| TlsFileError::Ca { path: ca_path, source })?;
    let verifier = Arc::new(Watched { inner, urls: urls.to_owned(), log, last: Mutex::new(None) });
    let builder = ClientConfig::builder().dangerous().with_custom_certificate_verifier(verifier);
    match (&files.cert, &files.key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            if chain.is_empty() {
                return Err(TlsFileError::NoCertificate { path: cert.clone() });
            }
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| TlsFileError::Read { path: key.clone(), source: pem_error(e) })?;
            builder.with_client_auth_cert(chain, key).map_err(|source| TlsFileError::Mismatch { cert: cert.clone(), source })
        }
        _ => Err(TlsFileError::HalfAPair),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let read = |source| TlsFileError::Read { path: path.to_owned(), source };
    CertificateDer::pem_file_iter(path)
        .map_err(|e| read(pem_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(pem_error(e)))
}

fn pem_error(e: rustls::pki_types::pem::Error) -> io::Error {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// rustls' WebPKI verifier, noting each verdict so that a change is logged
/// once (a daemon retries every 2 s; the log says it once, not every time).
#[derive(Debug)]
struct Watched {
    inner: Arc<WebPkiServerVerifier>,
    urls: String,
    log: bool,
    /// The last verdict: the server name and the failure, `None` when the
    /// last certificate verified. One slot, whatever the number of servers.
    last: Mutex<Option<(String, rustls::Error)>>,
}

impl Watched {
    fn note(&self, server: &ServerName<'_>, verdict: Option<&rustls::Error>) {
        if !self.log {
            return;
        }
        let now = verdict.map(|e| (server.to_str().into_owned(), e.clone()));
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == now {
            return;
        }
        match &now {
            Some((host, e)) => tracing::error!(
                server = %host,
                urls = %self.urls,
                cause = %TlsCause::from(e.clone()),
                "TLS: the NATS server's certificate does not verify; retrying until it does"
            ),
            None => tracing::info!(server = %server.to_str(), "TLS: the NATS server's certificate verifies"),
        }
        *last = now;
    }
}

impl ServerCertVerifier for Watched {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        self.note(server_name, verdict.as_ref().err());
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}
