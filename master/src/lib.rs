//! The Muster master: job definitions, the target registry, and the admin API,
//! all kept in JetStream so that any number of master replicas can run at once.
//!
//! - [`store`] creates the streams and buckets and reads and writes records;
//! - [`desired`] derives each target's desired state from the records, and
//!   [`publish`] publishes it on `MUSTER_DESIRED`; [`reconcile`] republishes
//!   whatever differs from the records, at start and after any failed
//!   publish; [`upgrade`] converts a previous version's instruction queue
//!   (`MUSTER_ASSIGN`) once, at start, before reconcile;
//! - [`api`] serves the `muster` NATS service that `musterctl` and targets call;
//! - [`ingest`] drains `MUSTER_RESULTS` into job status and the download list;
//!   [`applied`] says what targets' applied records and answered starts mean;
//! - [`trim`] gives memory freed by a burst of work back to the system;
//! - [`console`] serves the web console (`--http`), off unless asked for,
//!   and [`metrics`] the Prometheus metrics on the same listener.
//!
//! The daemon's entry point is [`run`]. `musterctl` and its API client live
//! in `muster-ctl`, which does not depend on this crate: clients never link
//! the daemon.

pub mod api;
pub mod applied;
pub mod config;
pub mod console;
pub mod desired;
pub mod events;
pub mod ingest;
pub mod metrics;
pub mod publish;
pub mod reconcile;
pub mod status;
pub mod store;
pub mod trim;
pub mod upgrade;

use anyhow::Context as _;
use muster_runtime::backoff::Backoff;
use muster_runtime::nats;
use tokio_util::sync::CancellationToken;

pub use config::MasterConfig;

/// Runs the master until `shutdown` is cancelled: creates or updates the
/// streams and buckets, then serves the API and drains results side by side.
///
/// # Errors
/// When the service cannot start.
pub async fn run(config: MasterConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    trim::big_allocations_apart();
    // The console's flags and files are checked, and its port bound,
    // before anything else: a mistake there stops the master at once.
    let console = config.console.as_ref().map(console::open).transpose()?;
    let client = nats::connect(&config.nats, nats::Wait::Forever).await?;
    let js = async_nats::jetstream::new(client.clone());
    // JetStream may not be ready yet (a server still starting, a cluster still
    // electing its leader): keep trying, saying why, until it is.
    let mut backoff = Backoff::new(std::time::Duration::from_millis(250), std::time::Duration::from_secs(5));
    let store = loop {
        match store::Store::open(&js, &config.subjects, &config.store).await {
            Ok(store) => break store,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot create Muster's streams and buckets yet; retrying");
                if !backoff.wait(&shutdown).await {
                    return Ok(());
                }
            }
        }
    };
    tracing::info!(prefix = config.subjects.prefix(), replicas = config.store.replicas, "streams and buckets ready");

    let publisher = publish::Publisher::new(store.clone());
    let metrics = std::sync::Arc::new(metrics::Metrics::new(config.metrics_refresh));
    let ingest = tokio::spawn(ingest::run(publisher.clone(), metrics.clone(), shutdown.clone()));
    // The API serves at once; reconcile repairs what a predecessor left, in
    // the background, from the moment the API is up.
    let (serving, up) = tokio::sync::oneshot::channel();
    let reconciling = tokio::spawn({
        let (publisher, shutdown) = (publisher.clone(), shutdown.clone());
        async move {
            if up.await.is_ok() && upgrade_until_done(&publisher, &shutdown).await {
                reconcile::run(publisher, shutdown).await;
            }
        }
    });
    let ctx = api::Ctx::new(client.clone(), store, publisher, config.clone(), metrics);
    // The web console, when asked for (`--http`): a client of the same
    // handlers, in-process.
    let console = console.map(|opened| tokio::spawn(console::serve(ctx.clone(), opened, shutdown.clone())));
    let served = api::serve(ctx, shutdown.clone(), serving).await;
    // The API stopped (shutdown, or a fatal error): stop the drain too.
    shutdown.cancel();
    let ingested = ingest.await.context("results drain task panicked")?;
    reconciling.await.context("reconcile task panicked")?;
    let console = match console {
        Some(c) => c.await.context("web console task panicked")?,
        None => Ok(()),
    };
    client.drain().await.ok();
    served.and(ingested).and(console)
}

/// Converts a previous version's instruction queue, retrying with backoff
/// until it is done; `false` on shutdown.
async fn upgrade_until_done(publisher: &publish::Publisher, shutdown: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(std::time::Duration::from_millis(500), std::time::Duration::from_secs(30));
    loop {
        match upgrade::convert(publisher).await {
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "converting the previous version's instruction queue failed; retrying");
                if !backoff.wait(shutdown).await {
                    return false;
                }
            }
        }
    }
}
