//! Live updates: server-sent events fed from JetStream, so pages change as
//! targets poll and runs start and end, without reloading and without the
//! browser asking again and again.
//!
//! One [`Hub`] per master, started with the console: three watchers,
//! each an ordered consumer or a bucket watch that delivers only what is
//! new —
//! - `MUSTER_POLLS` (`muster.poll.*`): a target polled; its row is read
//!   again ([`Ctx::target_info`]) and sent as cells;
//! - the targets bucket: a target's record changed (blocked, defected,
//!   enlisted, set-poll); sent the same way;
//! - `MUSTER_RESULTS` run subjects: a run started or ended; sent as the
//!   run's row and its job's last-outcome cells, rendered here.
//!
//! Events go to every browser through one bounded broadcast channel
//! ([`CAPACITY`]); a page that falls behind is told (`lagged`) and
//! reloads itself. With no browser connected, messages are read and
//! dropped without any other work. Nothing here grows with the number of
//! targets or browsers beyond the channel's fixed buffer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::kv::Operation;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use muster_runtime::backoff::Backoff;
use muster_runtime::history;
use muster_shared::api::{JobTargetStatus, TargetInfo};
use muster_shared::msg::{self, PollReport, RunRecord};
use muster_shared::name::TargetName;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::auth::Signed;
use super::pages::{history as runs, targets};
use super::AppState;
use crate::api::Ctx;
use crate::store::TargetRecord;

/// Events buffered for the slowest browser before it is told it lagged.
pub const CAPACITY: usize = 256;

/// One event, encoded once for every browser.
#[derive(Debug)]
pub struct LiveEvent {
    name: &'static str,
    data: String,
}

/// The watchers' output, shared by every browser session.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<LiveEvent>>,
    shutdown: CancellationToken,
}

impl Hub {
    /// Starts the watchers; they stop with `shutdown`.
    pub fn start(ctx: Ctx, shutdown: CancellationToken) -> Hub {
        let (tx, _) = broadcast::channel(CAPACITY);
        let hub = Hub { tx, shutdown };
        tokio::spawn(hub.clone().keep("poll reports", ctx.clone(), |hub, ctx| async move { hub.follow_polls(&ctx).await }));
        tokio::spawn(hub.clone().keep("target records", ctx.clone(), |hub, ctx| async move { hub.follow_targets(&ctx).await }));
        tokio::spawn(hub.clone().keep("run records", ctx, |hub, ctx| async move { hub.follow_runs(&ctx).await }));
        hub
    }

    /// Runs one watcher until shutdown, starting it again (with backoff)
    /// when it fails: a stream not there yet, a lost connection.
    async fn keep<F, Fut>(self, what: &'static str, ctx: Ctx, watch: F)
    where
        F: Fn(Hub, Ctx) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                ended = watch(self.clone(), ctx.clone()) => {
                    if let Err(e) = ended {
                        tracing::warn!(watching = what, error = %format!("{e:#}"), "console live updates interrupted; starting again");
                    }
                }
            }
            if !backoff.wait(&self.shutdown).await {
                return;
            }
        }
    }

    fn listened(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn send(&self, name: &'static str, data: &serde_json::Value) {
        // No receiver is not an error: nobody is looking.
        let _ = self.tx.send(Arc::new(LiveEvent { name, data: data.to_string() }));
    }

    async fn send_target(&self, ctx: &Ctx, record: &TargetRecord) {
        let info: TargetInfo = ctx.target_info(record).await;
        let cells: serde_json::Map<String, serde_json::Value> =
            targets::cells(&info).into_iter().map(|(k, v)| (k.to_owned(), v.into())).collect();
        self.send("target", &json!({ "target": info.name, "cells": cells }));
    }

    async fn follow_polls(&self, ctx: &Ctx) -> anyhow::Result<()> {
        let subjects = &ctx.config.subjects;
        let stream = ctx.store.js.get_stream(subjects.polls_stream()).await?;
        let config =
            OrderedConfig { filter_subject: subjects.poll_all(), deliver_policy: DeliverPolicy::New, ..Default::default() };
        let mut messages = stream.create_consumer(config).await?.messages().await?;
        while let Some(m) = messages.next().await {
            let m = m?;
            if !self.listened() {
                continue;
            }
            let Ok(report) = msg::decode::<PollReport>(&m.payload) else { continue };
            // Identity is the subject: a report about another target is ignored.
            if subjects.target_of(m.subject.as_str()) != Some(report.target.as_str()) {
                continue;
            }
            if let Ok(record) = ctx.store.target(&report.target).await {
                self.send_target(ctx, &record).await;
            }
        }
        anyhow::bail!("the poll reports stream ended")
    }

    async fn follow_targets(&self, ctx: &Ctx) -> anyhow::Result<()> {
        let mut watch = ctx.store.targets.watch_all().await?;
        while let Some(entry) = watch.next().await {
            let entry = entry?;
            if !self.listened() {
                continue;
            }
            match entry.operation {
                Operation::Put => {
                    if let Ok(record) = serde_json::from_slice::<TargetRecord>(&entry.value) {
                        self.send_target(ctx, &record).await;
                    }
                }
                Operation::Delete | Operation::Purge => {
                    if let Ok(name) = TargetName::new(&entry.key) {
                        self.send("target", &json!({ "target": name, "cells": { "status": "removed" } }));
                    }
                }
            }
        }
        anyhow::bail!("the targets bucket watch ended")
    }

    async fn follow_runs(&self, ctx: &Ctx) -> anyhow::Result<()> {
        let subjects = &ctx.config.subjects;
        let stream = ctx.store.js.get_stream(subjects.results_stream()).await?;
        let config = OrderedConfig {
            filter_subject: subjects.runs_filter(None, None),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        };
        let mut messages = stream.create_consumer(config).await?.messages().await?;
        while let Some(m) = messages.next().await {
            let m = m?;
            if !self.listened() {
                continue;
            }
            if let Some(r) = history::record(subjects, m.subject.as_str(), &m.payload) {
                self.send("run", &run_event(&r));
            }
        }
        anyhow::bail!("the results stream ended")
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.tx.subscribe()
    }
}

/// A run as the pages take it: its row, and its job's last-outcome cells.
fn run_event(r: &RunRecord) -> serde_json::Value {
    json!({
        "target": r.target,
        "job": r.job,
        "run_id": r.run_id,
        "outcome": r.outcome.as_str(),
        "row": runs::run_row(r).into_string(),
        "status_cells": runs::status_cells(&r.target, Some(&JobTargetStatus::from(r))).into_string(),
    })
}

/// `GET /live`: the event stream of a signed-in page. It ends when the
/// master stops; a page that fell behind gets `lagged`.
pub async fn events(State(state): State<AppState>, _signed: Signed) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = state.live.subscribe();
    let shutdown = state.live.shutdown.clone();
    let stream = futures::stream::unfold((rx, shutdown), |(mut rx, shutdown)| async move {
        let next = tokio::select! {
            () = shutdown.cancelled() => return None,
            next = rx.recv() => next,
        };
        let event = match next {
            Ok(e) => Event::default().event(e.name).data(&e.data),
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::default().event("lagged").data(missed.to_string()),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (rx, shutdown)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
