//! Polling: fetch this target's instructions, apply them in order, persist,
//! then ack — and report.
//!
//! One poll drains the consumer in batches. Each batch is applied and its
//! ids saved as applied (`poller/apply.rs`), and only then are the messages
//! acked with `double_ack` (confirmed by the server). A crash anywhere in between means
//! redelivery, and redelivery is harmless: upserts and deletes are
//! idempotent, and a start whose run id is already known is not run again.
//! Bad instructions are reported and terminated, never fatal, never
//! redelivered forever.

mod apply;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use chrono::Utc;
use futures::StreamExt;
use muster_shared::msg::{self, PollReport};
use muster_shared::subject::Subjects;
use muster_shared::{name::TargetName, AGENT_VERSION, PROTOCOL_VERSION};
use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

use apply::Applier;

use crate::runner::Runner;
use crate::spool::Spool;
use crate::state::State;

/// Instructions fetched per request.
pub const FETCH_BATCH: usize = 256;

/// Counters for polls and bad input; every bad message is logged with the
/// running count.
#[derive(Debug, Default)]
pub struct PollMetrics {
    pub polls: AtomicU64,
    /// Instructions terminated because they could not be read or named
    /// another target.
    pub bad_instructions: AtomicU64,
    /// Control requests refused.
    pub bad_control: AtomicU64,
}

/// Counts one more and returns the total, for the log line.
pub fn count(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

#[derive(Debug)]
pub struct Poller {
    pub name: TargetName,
    pub subjects: Subjects,
    pub js: jetstream::Context,
    pub state: State,
    pub runner: Runner,
    pub spool: Spool,
    /// Woken when jobs change, so the scheduler recomputes.
    pub jobs_changed: Arc<Notify>,
    pub instance: Uuid,
    pub default_interval: Duration,
    pub metrics: PollMetrics,
    consumer: Mutex<Option<PullConsumer>>,
}

impl Poller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: TargetName,
        subjects: Subjects,
        js: jetstream::Context,
        state: State,
        runner: Runner,
        spool: Spool,
        jobs_changed: Arc<Notify>,
        default_interval: Duration,
    ) -> Self {
        Self {
            name,
            subjects,
            js,
            state,
            runner,
            spool,
            jobs_changed,
            instance: Uuid::new_v4(),
            default_interval,
            metrics: PollMetrics::default(),
            consumer: Mutex::new(None),
        }
    }

    /// The current poll interval: the master's `set-poll`, else the configured one.
    pub fn interval(&self) -> Duration {
        self.state
            .poll_interval_secs()
            .map_or(self.default_interval, Duration::from_secs)
    }

    /// Polls once: drains and applies instructions, publishes the report.
    /// Polls never overlap: the consumer handle's lock serialises them.
    ///
    /// # Errors
    /// When the consumer cannot be reached (not enlisted yet, NATS down).
    pub async fn poll(&self) -> anyhow::Result<PollReport> {
        let mut guard = self.consumer.lock().await;
        let consumer = match guard.as_ref() {
            Some(c) => c.clone(),
            None => {
                let c: PullConsumer = self
                    .js
                    .get_consumer_from_stream(self.name.as_str(), self.subjects.assign_stream())
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot reach this target's consumer (is it enlisted?): {e}"
                        )
                    })?;
                *guard = Some(c.clone());
                c
            }
        };
        let result = self.drain(&consumer).await;
        if result.is_err() {
            // Re-fetch the consumer next time (it may have been re-created).
            *guard = None;
        }
        let (applied, failed) = result?;
        self.metrics.polls.fetch_add(1, Ordering::Relaxed);
        let report = self.report(applied, failed);
        self.publish_report(&report);
        Ok(report)
    }

    fn report(&self, applied: u32, failed: u32) -> PollReport {
        PollReport {
            v: PROTOCOL_VERSION,
            target: self.name.clone(),
            polled_at: Utc::now(),
            agent_version: AGENT_VERSION.to_owned(),
            instance: self.instance,
            poll_interval_secs: self.interval().as_secs(),
            applied,
            failed,
            jobs: u32::try_from(self.state.job_count()).unwrap_or(u32::MAX),
            running: self.runner.running_jobs(),
            spooled: self.spool.len(),
            clock_skew_ms: self.state.clock_skew_ms(),
            timezone: std::env::var("TZ").unwrap_or_default(),
            bad_instructions: self.metrics.bad_instructions.load(Ordering::Relaxed),
            bad_control: self.metrics.bad_control.load(Ordering::Relaxed),
        }
    }

    /// The latest report goes to `MUSTER_POLLS` in the background: only the
    /// newest matters, so a lost one is replaced by the next poll. Once it is
    /// stored, `last-poll` records that polls reach NATS — off the poll's
    /// own path, so a force-poll's answer does not wait for the disk.
    fn publish_report(&self, report: &PollReport) {
        let js = self.js.clone();
        let subject = self.subjects.poll(&self.name);
        let body = msg::encode(report);
        let (state, polled_at, interval) = (
            self.state.clone(),
            report.polled_at.timestamp(),
            report.poll_interval_secs,
        );
        tokio::spawn(async move {
            let sent = async {
                let ack = js.publish(subject, body.into()).await?;
                ack.await?;
                Ok::<(), async_nats::Error>(())
            };
            match sent.await {
                Ok(()) => {
                    if let Err(e) = state.mark_polled(polled_at, interval) {
                        tracing::debug!(error = %e, "last-poll not written");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "poll report not published"),
            }
        });
    }

    async fn drain(&self, consumer: &PullConsumer) -> anyhow::Result<(u32, u32)> {
        let (mut applied, mut failed) = (0u32, 0u32);
        loop {
            let fetch = consumer.fetch().max_messages(FETCH_BATCH).messages();
            let mut batch = tokio::time::timeout(Duration::from_secs(10), fetch)
                .await
                .map_err(|_| anyhow::anyhow!("fetch timed out"))??;
            let mut messages = Vec::new();
            while let Some(m) = tokio::time::timeout(Duration::from_secs(10), batch.next())
                .await
                .map_err(|_| anyhow::anyhow!("fetch timed out"))?
            {
                messages.push(m.map_err(|e| anyhow::anyhow!("fetch: {e}"))?);
            }
            if messages.is_empty() {
                break;
            }
            let full = messages.len() == FETCH_BATCH;
            let batch = self.applier().apply_batch(
                messages
                    .iter()
                    .map(|m| (m.subject.as_str(), &m.payload[..])),
            )?;
            applied += batch.applied;
            failed += batch.failed;
            let terminate = &batch.terminate;
            let acks = messages.iter().enumerate().map(|(position, m)| async move {
                if terminate.contains(&position) {
                    m.ack_with(AckKind::Term).await
                } else {
                    m.double_ack().await
                }
            });
            for r in futures::future::join_all(acks).await {
                r.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            }
            if !full {
                break;
            }
        }
        Ok((applied, failed))
    }

    /// The parts of the agent that instructions change.
    fn applier(&self) -> Applier<'_> {
        Applier {
            name: &self.name,
            subjects: &self.subjects,
            state: &self.state,
            runner: &self.runner,
            spool: &self.spool,
            jobs_changed: &self.jobs_changed,
            metrics: &self.metrics,
        }
    }
}
