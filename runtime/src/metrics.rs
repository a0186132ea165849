//! The Prometheus side the master and the agent share (feature `metrics`):
//! label sets, the latency buckets, and the answer to a scrape, so both
//! daemons' `/metrics` read alike. The master serves its registry on the
//! console's listener (`--http`), the agent on its own small server
//! ([`serve`], `--metrics`).
//!
//! Label values are `&'static str` from fixed lists (operations, error
//! codes, outcomes, subject kinds), never a target's or a job's name or a
//! raw subject: a label set cannot grow with the installation. Every
//! family is created with all its label values ([`counters`]), so a value
//! that never moved is scraped as 0 rather than missing.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use muster_shared::msg::Outcome;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// One label: its name and a value from a fixed list.
pub type Label = [(&'static str, &'static str); 1];

/// Two labels.
pub type Labels2 = [(&'static str, &'static str); 2];

/// A counter per value of one label, each created at 0.
pub fn counters(label: &'static str, values: impl IntoIterator<Item = &'static str>) -> Family<Label, Counter> {
    let family = Family::<Label, Counter>::default();
    for value in values {
        drop(family.get_or_create(&[(label, value)]));
    }
    family
}

/// A counter per final run outcome (`succeeded`, `failed`, ...), as both
/// the master (runs ingested) and the agent (runs recorded) count them.
pub fn runs_by_outcome() -> Family<Label, Counter> {
    use strum::VariantArray as _;
    counters("outcome", Outcome::VARIANTS.iter().filter(|o| o.is_final()).map(|o| o.as_str()))
}

/// Buckets for durations in seconds: 1 ms to 16 s, doubling (a force-poll
/// times out at 10 s by default; a poll reads a handful of messages).
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The answer to a scrape: `registry` in the Prometheus text format
/// (0.0.4), which every Prometheus-compatible scraper reads.
pub fn answer(registry: &Registry) -> Response {
    match text(registry) {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the metrics: {e}")).into_response(),
    }
}

fn text(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    prometheus_text::encode(&mut body, registry)?;
    Ok(body)
}

/// Why a metrics listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("--metrics {0}")]
    Addr(#[from] crate::listen::AddrError),
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `addr` ([`crate::listen::parse_addr`]: a port alone is loopback)
/// at once, so a taken port stops the daemon before it does anything.
///
/// # Errors
/// [`ListenError`].
pub fn bind(addr: &str) -> Result<std::net::TcpListener, ListenError> {
    let addr = crate::listen::parse_addr(addr)?;
    let bind = |source| ListenError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    Ok(listener)
}

/// Serves `GET /metrics` from `registry` on `listener` until `shutdown`;
/// nothing else is there (404).
///
/// # Errors
/// When the listener fails.
pub async fn serve(listener: std::net::TcpListener, registry: Arc<Registry>, shutdown: CancellationToken) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || async move { answer(&registry) }));
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_value_is_scraped_from_the_start() {
        let mut registry = Registry::default();
        registry.register("runs", "Runs by outcome", counters("outcome", ["succeeded", "failed"]));
        let body = text(&registry).unwrap();
        assert!(body.contains("runs_total{outcome=\"failed\"} 0"), "{body}");
        assert!(body.contains("runs_total{outcome=\"succeeded\"} 0"), "{body}");
    }
}
