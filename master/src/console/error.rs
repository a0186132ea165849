//! Errors: why the console could not start ([`OpenError`], an exit code),
//! and what a failed request shows ([`ConsoleError`], a status code and a
//! short page).

use std::io;
use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use muster_runtime::nats::KeyFileError;
use muster_shared::api::{ApiError, ErrorCode};

/// Why `--http` could not be served; the master exits with
/// [`muster_runtime::exit::Exit::Invalid`].
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("--http {addr}: {why}")]
    Addr { addr: String, why: String },
    #[error("--http needs --http-users FILE (made by `musterctl auth console-user`): the console has no open mode")]
    NoUsers,
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("the console's users file {}: {why}", path.display())]
    Users { path: PathBuf, why: String },
    #[error("the console's TLS file {}: {why}", path.display())]
    Tls { path: PathBuf, why: String },
    #[error("cannot listen on {addr} for the web console: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A request that failed: shown as a short page with its status code.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The API handler refused or failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Signed in, but the role or the CSRF token does not allow it.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// Reading history from the results stream failed.
    #[error("reading history: {0:#}")]
    History(anyhow::Error),
}

impl ConsoleError {
    fn status(&self) -> StatusCode {
        match self {
            ConsoleError::Api(e) => match e.code {
                ErrorCode::NotFound | ErrorCode::NotEnlisted => StatusCode::NOT_FOUND,
                ErrorCode::InvalidName | ErrorCode::InvalidRequest | ErrorCode::InvalidJob | ErrorCode::BadVersion => {
                    StatusCode::BAD_REQUEST
                }
                ErrorCode::AlreadyExists | ErrorCode::Conflict | ErrorCode::Defected => StatusCode::CONFLICT,
                ErrorCode::Offline | ErrorCode::Timeout | ErrorCode::MasterUnavailable => StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
                ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::History(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = self.status();
        let page = maud::html! {
            (maud::DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "Muster: " (status.as_u16()) }
                    link rel="stylesheet" href=(super::assets::CSS_PATH);
                }
                body {
                    main {
                        h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                        p.error id="error" { (self.to_string()) }
                        p { a href="/" { "Back to the targets" } }
                    }
                }
            }
        };
        (status, Html(page.into_string())).into_response()
    }
}
