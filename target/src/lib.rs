//! The Muster target agent.
//!
//! It enlists with the master (unless its manifest, or its own state, says
//! it defected), reads its desired state on `MUSTER_DESIRED` ([`poller`]),
//! answers force-polls and stops on its control subject
//! ([`control`]), keeps its jobs on local disk ([`state`]), runs them on
//! their schedules or when told ([`scheduler`], [`runner`], [`process`]), and
//! uploads every outcome through a write-ahead spool ([`spool`]) so nothing is
//! lost while NATS or the master is away. With `--metrics`, it serves its
//! Prometheus metrics ([`metrics`]).
//!
//! The entry point is [`run`].

pub mod claim;
pub mod config;
pub mod control;
pub mod kept;
pub mod live;
pub mod metrics;
pub mod poller;
pub mod process;
pub mod runner;
pub mod scheduler;
pub mod spool;
pub mod state;
pub mod xkey;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use muster_runtime::backoff::Backoff;
use muster_runtime::nats::{self, NatsOptions, Wait};
use muster_shared::api::{self, ApiError, EnlistRequest, ErrorCode, Reply, Request, TargetInfo};
use muster_shared::msg;
use muster_shared::subject::Subjects;
use rand::Rng as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::TargetConfig;

use crate::poller::{PollError, Poller};
use crate::runner::{Runner, RunnerConfig};
use crate::scheduler::Scheduler;
use crate::spool::{Flusher, Spool};
use crate::state::State;

/// Runs the agent until `shutdown`, then stops polling, lets running steps
/// finish within the grace period (then cancels them), flushes the spool and
/// drains the connection.
///
/// # Errors
/// When the state directory cannot be opened, or belongs to another
/// running agent or another name ([`claim`]); NATS problems are retried.
pub async fn run(config: TargetConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    // A metrics address that cannot be bound stops the agent at once.
    let metrics_listener = config.metrics.as_deref().map(muster_runtime::metrics::bind).transpose()?;
    // Held until the agent returns: no second agent on this directory.
    let _claim = claim::claim(&config.state_dir, &config.name)?;
    let state =
        State::open(&config.state_dir).with_context(|| format!("opening the state directory {}", config.state_dir.display()))?;
    let key = xkey::load_or_create(&config.state_dir)?;
    let public_key = key.public_key();
    let spool = Spool::open(&state.spool_dir(), config.spool_max_bytes).context("opening the result spool")?;
    let runner = Runner::new(
        RunnerConfig {
            target: config.name.clone(),
            subjects: config.subjects.clone(),
            output_cap: config.output_cap,
            kill_grace: config.kill_grace,
            max_concurrent_runs: config.max_concurrent_runs,
        },
        state.clone(),
        spool.clone(),
        Arc::default(),
    );
    runner.attach_key(key);
    let interrupted = runner.report_interrupted()?;
    tracing::info!(
        target = %config.name,
        state_dir = %config.state_dir.display(),
        jobs = state.job_count(),
        interrupted,
        spooled = spool.len(),
        "agent starting"
    );

    let client = connect(&config).await?;
    let js = async_nats::jetstream::new(client.clone());
    runner.attach_live(live::Live::new(js.clone(), config.subjects.clone(), config.name.clone()));
    let tasks = tokio_util::task::TaskTracker::new();
    // Background tasks stop on their own token, so the spool can be flushed
    // after the runner has recorded the last runs.
    let stop_work = CancellationToken::new();
    let stop_flusher = CancellationToken::new();
    tasks.spawn(Flusher { spool: spool.clone(), js: js.clone() }.run(stop_flusher.clone(), Duration::from_secs(5)));
    if let Some(listener) = metrics_listener {
        // Served until the spool is flushed: a stopping agent still says
        // what it holds.
        let registry = Arc::new(runner.metrics().registry(spool.clone(), client.clone()));
        let stop = stop_flusher.clone();
        tasks.spawn(async move {
            if let Err(e) = muster_runtime::metrics::serve(listener, registry, stop).await {
                tracing::error!(error = %e, "metrics not served");
            }
        });
    }

    let jobs_changed = Arc::new(Notify::new());
    let poller = Arc::new(
        Poller::new(
            config.name.clone(),
            config.subjects.clone(),
            js.clone(),
            state.clone(),
            runner.clone(),
            spool.clone(),
            jobs_changed.clone(),
            config.poll_interval,
        )
        .await?,
    );
    if config.enlist && !stays_out(&poller).await {
        // Refused (the name is taken by another running agent): stop here,
        // before this agent could act on the other one's desired state.
        enlist(&client, &config, &poller, &public_key, &shutdown).await?;
    }
    tasks.spawn({
        let (client, poller, stop) = (client.clone(), poller.clone(), stop_work.clone());
        async move {
            if let Err(e) = control::serve(client, poller, stop).await {
                tracing::error!(error = %e, "control subject not served");
            }
        }
    });
    tasks.spawn(Scheduler { state: state.clone(), runner: runner.clone(), jobs_changed }.run(stop_work.clone()));
    tasks.spawn(poll_loop(poller.clone(), stop_work.clone()));

    shutdown.cancelled().await;
    tracing::info!("shutting down: no more polls; letting running jobs finish");
    stop_work.cancel();
    runner.shutdown(config.shutdown_grace).await;
    stop_flusher.cancel();
    tasks.close();
    tasks.wait().await;
    client.drain().await.ok();
    tracing::info!(spooled = spool.len(), "agent stopped");
    Ok(())
}

/// Whether this target defected and must not enlist itself again: its
/// manifest says so (read first, not applied), or — no manifest readable —
/// its own state does. An operator's `target enlist` brings it back: the
/// next manifest says `defected: false`, and the next poll clears the flag.
async fn stays_out(poller: &Poller) -> bool {
    let defected = poller.manifest_says_defected().await.unwrap_or_else(|| poller.state.defected());
    if defected {
        tracing::warn!("this target defected: not enlisting; reading its desired state until an operator enlists it again");
    }
    defected
}

/// Polls every interval (with ±10% jitter so thousands of targets do not
/// poll in step), until `stop`.
async fn poll_loop(poller: Arc<Poller>, stop: CancellationToken) {
    loop {
        match poller.poll().await {
            Ok(r) if r.applied + r.failed > 0 => {
                tracing::info!(applied = r.applied, failed = r.failed, "polled");
            }
            Ok(_) => tracing::debug!("polled: nothing new"),
            Err(PollError::NotEnlisted) => {
                tracing::info!("no desired state for this target yet (not enlisted); will read again at the next interval")
            }
            Err(e) => {
                tracing::warn!(error = %e, "poll failed; will retry at the next interval")
            }
        }
        let interval = poller.interval();
        let jitter = rand::rng().random_range(0.9..1.1);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval.mul_f64(jitter)) => {}
        }
    }
}

/// Asks the master to enlist this target, retrying with backoff until it
/// answers (or shutdown). A master that is down does not stop the agent: if
/// it was enlisted before, its desired state is there and polling works.
/// A master that says the target defected is not asked again.
///
/// # Errors
/// When the master refuses the name because another agent holds it.
async fn enlist(
    client: &async_nats::Client,
    config: &TargetConfig,
    poller: &Poller,
    public_key: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let subject = config.subjects.agent_api(&config.name, api::AGENT_ENLIST);
    let body = msg::encode(&Request::new(EnlistRequest {
        name: config.name.clone(),
        location: config.location.clone(),
        instance: Some(poller.instance),
        poll_interval_secs: Some(poller.interval().as_secs()),
        xkey: Some(public_key.to_owned()),
    }));
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(60));
    // The first attempts are made before polling starts, so that a refused
    // agent stops before it could act on another agent's desired state.
    for attempt in 1..=5 {
        match ask_to_enlist(client, &subject, &body).await {
            Ok(info) => {
                tracing::info!(target = %info.name, poll_interval = info.poll_interval_secs, "enlisted");
                return Ok(());
            }
            Err(e) if e.code == ErrorCode::AlreadyExists => {
                anyhow::bail!("enlisting refused: {}", e.message)
            }
            Err(e) if e.code == ErrorCode::Defected => {
                tracing::warn!(error = %e.message, "enlisting refused: this target defected; reading its desired state until an operator enlists it again");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e.message, attempt, "enlisting failed; the master may be down")
            }
        }
        if attempt < 5 && !backoff.wait(shutdown).await {
            return Ok(());
        }
    }
    // Keep trying in the background, so the agent polls whatever desired
    // state it already has.
    let (client, shutdown) = (client.clone(), shutdown.clone());
    tokio::spawn(async move {
        while backoff.wait(&shutdown).await {
            match ask_to_enlist(&client, &subject, &body).await {
                Ok(_) => {
                    tracing::info!("enlisted");
                    return;
                }
                Err(e) if matches!(e.code, ErrorCode::AlreadyExists | ErrorCode::Defected) => {
                    tracing::error!(error = %e.message, "enlisting refused");
                    return;
                }
                Err(_) => {}
            }
        }
    });
    Ok(())
}

/// One enlist request, answered or failed within 10 s.
async fn ask_to_enlist(client: &async_nats::Client, subject: &str, body: &[u8]) -> Result<TargetInfo, ApiError> {
    let unavailable = |e: String| ApiError::new(ErrorCode::MasterUnavailable, e);
    match tokio::time::timeout(Duration::from_secs(10), client.request(subject.to_owned(), body.to_vec().into())).await {
        Ok(Ok(m)) => msg::decode::<Reply<TargetInfo>>(&m.payload).and_then(Reply::into_result),
        Ok(Err(e)) => Err(unavailable(e.to_string())),
        Err(_) => Err(unavailable("no answer".into())),
    }
}

/// Asks the master to defect this target, on the agent's own subject
/// `muster.api.agent.<t>.defect`: the same as `musterctl target defect <t>`.
///
/// # Errors
/// When NATS or the master does not answer, or the master refuses.
pub async fn defect_self(config: &TargetConfig) -> anyhow::Result<TargetInfo> {
    let client = tokio::time::timeout(Duration::from_secs(10), connect(config))
        .await
        .context("NATS did not answer within 10 s (check --server)")??;
    let subject = config.subjects.agent_api(&config.name, api::AGENT_DEFECT);
    let body = msg::encode(&Request::new(api::TargetRef { name: config.name.clone() }));
    let answer = tokio::time::timeout(Duration::from_secs(30), client.request(subject, body.into()))
        .await
        .context("no master answered within 30 s")?
        .context("no master answered (is muster-master running?)")?;
    Ok(msg::decode::<Reply<TargetInfo>>(&answer.payload).and_then(Reply::into_result)?)
}

/// Connects with this target's own inbox prefix (so its permissions need not
/// include `_INBOX.>`), waiting for NATS and reconnecting forever.
async fn connect(config: &TargetConfig) -> anyhow::Result<async_nats::Client> {
    let opts = NatsOptions {
        servers: config.servers.clone(),
        nkey: config.nkey.clone(),
        creds: config.creds.clone(),
        user: config.user.clone(),
        password: config.password.clone(),
        tls: config.tls.clone(),
        name: Some(format!("muster-target {}", config.name)),
        inbox_prefix: Some(Subjects::inbox_prefix(&config.name)),
    };
    Ok(nats::connect(&opts, Wait::Forever).await?)
}
