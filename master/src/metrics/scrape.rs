//! What a scrape reads from JetStream, and the `/metrics` route.
//!
//! Targets by status and unread instructions come from the same bulk reads
//! as `musterctl target list` (every registry record, every latest poll
//! report, every manifest's summary), so they are read at most once per
//! refresh interval (`--metrics-refresh`, 15 s by default), whatever the
//! number of scrapers, and only while someone scrapes: an idle master
//! reads nothing, and holds nothing per target in between (a few gauges).
//! The results backlog is one consumer-info request per scrape.
//!
//! A read that fails leaves the gauges at their last values and is counted
//! (`muster_metrics_read_errors_total{part}`), so the scrape still answers.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use muster_runtime::metrics::{counters, Label};
use muster_shared::api::{Listed, TargetStatus};
use muster_shared::streams::MASTER_CONSUMER;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use strum::VariantArray as _;

use crate::api::Ctx;

/// `GET /metrics`, for the console's router to merge: outside its sign-in.
pub fn router(ctx: Ctx) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(ctx)
}

async fn scrape(State(ctx): State<Ctx>) -> Response {
    ctx.metrics.snapshot.refresh(&ctx).await;
    muster_runtime::metrics::answer(&ctx.metrics.registry)
}

/// The gauges read from JetStream, and when the targets were last read.
#[derive(Debug)]
pub(super) struct Snapshot {
    refresh: Duration,
    read_at: tokio::sync::Mutex<Option<Instant>>,
    targets: Family<Label, Gauge>,
    unread: Gauge,
    backlog: Gauge,
    unacked: Gauge,
    read_errors: Family<Label, Counter>,
}

impl Snapshot {
    pub(super) fn new(refresh: Duration, registry: &mut Registry) -> Snapshot {
        let targets = Family::<Label, Gauge>::default();
        for status in TargetStatus::VARIANTS {
            drop(targets.get_or_create(&[("status", status.as_str())]));
        }
        registry.register(
            "targets",
            "Enlisted targets by status (the rule of `musterctl target list`), read at most every --metrics-refresh",
            targets.clone(),
        );
        let unread = Gauge::default();
        registry.register(
            "instructions_unread",
            "Download-list changes published to targets and not yet applied, summed over targets",
            unread.clone(),
        );
        let backlog = Gauge::default();
        registry.register(
            "results_backlog",
            "Records on MUSTER_RESULTS not yet delivered to the masters (consumer \"master\", num_pending)",
            backlog.clone(),
        );
        let unacked = Gauge::default();
        registry.register(
            "results_unacked",
            "Records delivered to the masters and not yet acknowledged (consumer \"master\", num_ack_pending)",
            unacked.clone(),
        );
        let read_errors = counters("part", ["targets", "backlog"]);
        registry.register(
            "metrics_read_errors",
            "Scrape-time reads from JetStream that failed (the gauges keep their last values)",
            read_errors.clone(),
        );
        Snapshot { refresh, read_at: tokio::sync::Mutex::default(), targets, unread, backlog, unacked, read_errors }
    }

    /// Reads the backlog, and the targets when their last read is older
    /// than the refresh interval. Scrapes at the same moment wait for one
    /// read of the targets rather than making their own.
    pub(super) async fn refresh(&self, ctx: &Ctx) {
        let targets = async {
            let mut read_at = self.read_at.lock().await;
            if read_at.is_some_and(|at| at.elapsed() < self.refresh) {
                return;
            }
            // A failed read waits for the next interval too: a scraper
            // does not turn a struggling JetStream into a read loop.
            *read_at = Some(Instant::now());
            match ctx.target_list().await {
                Ok(list) => {
                    // A corrupt record has no status: `target list` shows it.
                    let list: Vec<_> = list.into_iter().filter_map(Listed::into_ok).collect();
                    for status in TargetStatus::VARIANTS {
                        let n = list.iter().filter(|t| t.status == *status).count();
                        self.targets.get_or_create(&[("status", status.as_str())]).set(gauge_value(n as u64));
                    }
                    self.unread.set(gauge_value(list.iter().map(|t| t.unread).sum()));
                }
                Err(e) => {
                    self.read_errors.get_or_create(&[("part", "targets")]).inc();
                    tracing::warn!(error = %e, "metrics: reading the targets failed; their gauges keep their last values");
                }
            }
        };
        let backlog = async {
            let stream = ctx.store.js.get_stream_no_info(ctx.store.subjects.results_stream()).await;
            match stream {
                Ok(stream) => stream.consumer_info(MASTER_CONSUMER).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        let ((), backlog) = tokio::join!(targets, backlog);
        match backlog {
            Ok(info) => {
                self.backlog.set(gauge_value(info.num_pending));
                self.unacked.set(gauge_value(info.num_ack_pending as u64));
            }
            Err(e) => {
                self.read_errors.get_or_create(&[("part", "backlog")]).inc();
                tracing::warn!(error = %e, "metrics: reading the results consumer failed");
            }
        }
    }

    #[cfg(test)]
    pub(super) fn targets(&self, status: TargetStatus) -> i64 {
        self.targets.get_or_create(&[("status", status.as_str())]).get()
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
