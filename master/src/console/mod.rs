//! The web console: SQL Server's "Manage Target Servers" dialog, and the
//! rest of what `musterctl` shows, in a browser (`muster-master --http`).
//!
//! Why it lives in the master: it is another client of the same API
//! handlers ([`Ctx::call`], in-process, so the console and `musterctl`
//! cannot disagree), and its live updates come from one JetStream watcher
//! per master, shared by every browser ([`live`]). It is off unless
//! `--http` is given, and then nothing of it runs but the listener, the
//! sessions of people signed in and that watcher.
//!
//! The rooms, one thing each:
//! - [`listen`]: what `--http ADDR` means, the TLS set-up, binding;
//! - [`auth`]: the users file, sign-in, sessions, CSRF and roles;
//! - [`form`]: form bodies (repeated keys: the selected targets);
//! - [`layout`]: the page around every page, and how values are written;
//! - [`pages`]: targets, jobs, history and runs, the download list;
//! - [`live`]: server-sent events fed from JetStream;
//! - [`assets`]: the style sheet and the small script, compiled in;
//! - [`error`]: what a failed request shows.
//!
//! Every page is rendered on the server (maud, escaped by default: run
//! output and names come from targets and are untrusted). The only script
//! asks for confirmation, selects rows and applies live events; the
//! Content-Security-Policy allows no other.

mod assets;
mod auth;
mod error;
mod form;
mod layout;
mod listen;
mod live;
mod pages;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::api::Ctx;

pub use error::OpenError;
pub use listen::{ConsoleConfig, Opened};

/// How long a stopping master lets requests in flight finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState(Arc<Inner>);

#[derive(Debug)]
pub(crate) struct Inner {
    pub ctx: Ctx,
    pub users: auth::Users,
    pub sessions: auth::Sessions,
    pub live: live::Hub,
    /// Served over TLS: cookies get the `Secure` flag.
    pub secure: bool,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Opens the console's listener and reads its users, before the master
/// connects to NATS, so a bad flag or file stops the master at once.
///
/// # Errors
/// A bad address, users file or TLS file, or an address that cannot be bound.
pub fn open(config: &ConsoleConfig) -> Result<Opened, OpenError> {
    listen::open(config)
}

/// Serves the console until `shutdown`.
///
/// # Errors
/// When the listener fails.
pub async fn serve(ctx: Ctx, opened: Opened, shutdown: CancellationToken) -> anyhow::Result<()> {
    let live = live::Hub::start(ctx.clone(), shutdown.clone());
    let state = AppState(Arc::new(Inner {
        ctx,
        users: opened.users.clone(),
        sessions: auth::Sessions::default(),
        live,
        secure: opened.is_tls(),
    }));
    // Other routes on the same listener (metrics) merge here.
    let app = router(state.clone()).merge(crate::metrics::router(state.ctx.clone()));
    listen::serve(opened, app, shutdown, SHUTDOWN_GRACE).await
}

/// Every route of the console.
fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::targets::list))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/targets", get(pages::targets::list))
        .route("/targets/action", post(pages::targets::act))
        .route("/targets/{name}", get(pages::targets::show))
        .route("/jobs", get(pages::jobs::list))
        .route("/jobs/{name}", get(pages::jobs::show))
        .route("/jobs/{name}/action", post(pages::jobs::act))
        .route("/history", get(pages::history::list))
        .route("/runs/{run_id}", get(pages::history::show))
        .route("/instructions", get(pages::instructions::list))
        .route("/live", get(live::events))
        .route("/assets/{file}", get(assets::serve))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers on every answer: no script or style from anywhere else, no
/// framing, no caching of pages that show an installation's state.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}
