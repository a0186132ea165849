//! Polling: read this target's desired state, apply what changed, persist,
//! then report.
//!
//! A poll is one Direct Get of the target's own manifest on the API subject
//! form (`$JS.API.DIRECT.GET.<stream>.<prefix>.target.<t>.state`, empty
//! body), which its permissions allow and nothing else of the stream: no
//! `STREAM.INFO` (the stream handle comes from `get_stream_no_info`), no
//! consumer, no ack. A revision already applied (same epoch, not higher)
//! ends the poll there, so an idle poll costs one request and adds nothing
//! to the results stream. Otherwise only the job documents whose revision
//! changed are fetched (a few at once), and the revision is applied and
//! saved (`poller/apply.rs`). A crash anywhere before the save means the
//! next poll applies it again, which is harmless: jobs already at their
//! revision are not fetched again, and handled starts are remembered.

mod apply;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    stream::{DirectGetError, DirectGetErrorKind, Stream},
};
use bytes::Bytes;
use chrono::Utc;
use futures::{StreamExt as _, TryStreamExt as _};
use muster_shared::desired::{JobRef, Manifest};
use muster_shared::msg::{self, PollReport};
use muster_shared::subject::Subjects;
use muster_shared::{name::TargetName, AGENT_VERSION, PROTOCOL_VERSION};
use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

use apply::Applier;

use crate::metrics::{AgentMetrics, Bad};
use crate::runner::Runner;
use crate::spool::Spool;
use crate::state::State;

/// Job documents fetched at once by one poll.
pub const FETCH_CONCURRENCY: usize = 16;

/// Why a poll did not end with a report.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// No manifest for this target: the master has not enlisted it (yet).
    #[error("no desired state for this target: not enlisted (yet)")]
    NotEnlisted,
    #[error("reading desired state: {0}")]
    Read(#[from] DirectGetError),
    #[error("applying desired state: {0:#}")]
    Apply(#[from] anyhow::Error),
}

/// What the previous polls leave for the next one.
#[derive(Debug, Default)]
struct PollMemory {
    /// The stream sequence of the last manifest refused: the same message
    /// is not refused (logged, counted, recorded) again at every poll.
    refused_seq: Option<u64>,
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
    /// Polls, bad input (every bad message is logged with the running count).
    pub metrics: Arc<AgentMetrics>,
    /// `MUSTER_DESIRED`, without a `STREAM.INFO` request.
    desired: Stream<()>,
    /// Held for a whole poll: polls never overlap.
    memory: Mutex<PollMemory>,
}

/// A manifest as read, with its stream sequence.
#[derive(Debug)]
pub struct Read {
    pub seq: u64,
    pub body: Bytes,
}

impl Poller {
    /// # Errors
    /// When the desired-state stream name is not a valid stream name.
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        name: TargetName,
        subjects: Subjects,
        js: jetstream::Context,
        state: State,
        runner: Runner,
        spool: Spool,
        jobs_changed: Arc<Notify>,
        default_interval: Duration,
    ) -> anyhow::Result<Self> {
        let desired = js.get_stream_no_info(subjects.desired_stream()).await?;
        Ok(Self {
            name,
            subjects,
            js,
            state,
            metrics: runner.metrics().clone(),
            runner,
            spool,
            jobs_changed,
            instance: Uuid::new_v4(),
            default_interval,
            desired,
            memory: Mutex::new(PollMemory::default()),
        })
    }

    /// The current poll interval: the manifest's, else the configured one.
    pub fn interval(&self) -> Duration {
        self.state.poll_interval_secs().map_or(self.default_interval, Duration::from_secs)
    }

    /// Reads this target's manifest: one request.
    ///
    /// # Errors
    /// [`PollError::NotEnlisted`] when there is none; [`PollError::Read`]
    /// when NATS does not answer.
    pub async fn read_manifest(&self) -> Result<Read, PollError> {
        match self.desired.direct_get_last_for_subject(self.subjects.state(&self.name)).await {
            Ok(m) => Ok(Read { seq: m.sequence, body: m.payload }),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Err(PollError::NotEnlisted),
            Err(e) => Err(PollError::Read(e)),
        }
    }

    /// Whether this target's manifest says it defected: read, not applied
    /// (the agent asks before it enlists, and must not act on its desired
    /// state before the master let it have the name). `None`: no manifest,
    /// or none readable.
    pub async fn manifest_says_defected(&self) -> Option<bool> {
        let read = self.read_manifest().await.ok()?;
        let m = msg::decode::<Manifest>(&read.body).ok()?;
        m.validate(&self.name).ok()?;
        Some(m.defected)
    }

    /// Polls once: reads the manifest, applies a new revision, publishes the
    /// report. Polls never overlap.
    ///
    /// # Errors
    /// When there is no manifest (not enlisted), NATS does not answer, or
    /// local state cannot be written.
    pub async fn poll(&self) -> Result<PollReport, PollError> {
        let started = Instant::now();
        let polled = self.poll_once().await;
        self.metrics.polled(started.elapsed(), &polled);
        polled
    }

    async fn poll_once(&self) -> Result<PollReport, PollError> {
        let mut memory = self.memory.lock().await;
        let read = self.read_manifest().await?;
        let (mut changed, mut failed) = (0, 0);
        if memory.refused_seq != Some(read.seq) {
            match self.applier().read(&read.body) {
                Err(_) => {
                    memory.refused_seq = Some(read.seq);
                    failed = 1;
                }
                Ok(m) if m.is_news_to(self.state.desired().as_ref()) => {
                    memory.refused_seq = None;
                    let outcome = self.apply(&m).await?;
                    changed = outcome.changed;
                    failed = outcome.failed;
                    if outcome.applied {
                        tracing::info!(revision = %m.revision, changed, failed, "desired state applied");
                    }
                }
                Ok(_) => memory.refused_seq = None,
            }
        }
        drop(memory);
        let report = self.report(changed, failed);
        self.publish_report(&report);
        Ok(report)
    }

    /// Fetches the job documents the manifest lists at a revision this
    /// target does not hold, [`FETCH_CONCURRENCY`] at once, and applies.
    async fn apply(&self, m: &Manifest) -> Result<apply::ApplyOutcome, PollError> {
        let held = self.state.job_revisions();
        let wanted: Vec<JobRef> = m.job_changes(&held).fetch.into_iter().cloned().collect();
        let (desired, subjects, name) = (&self.desired, &self.subjects, &self.name);
        let fetched: Vec<(JobRef, Option<Bytes>)> = futures::stream::iter(wanted)
            .map(|listed: JobRef| {
                let subject = subjects.job_doc(name, listed.id);
                async move {
                    match desired.direct_get_last_for_subject(subject).await {
                        Ok(doc) => Ok((listed, Some(doc.payload))),
                        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok((listed, None)),
                        Err(e) => Err(PollError::Read(e)),
                    }
                }
            })
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        let docs = fetched.iter().map(|(listed, body)| (listed, body.as_deref())).collect();
        Ok(self.applier().apply(m, docs, Utc::now())?)
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
            timezone: std::env::var("TZ").ok().or_else(|| iana_time_zone::get_timezone().ok()).unwrap_or_default(),
            bad_instructions: self.metrics.bad_so_far(Bad::Instruction),
            bad_control: self.metrics.bad_so_far(Bad::Control),
            applied_revision: self.state.desired(),
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
        let (state, polled_at, interval) = (self.state.clone(), report.polled_at.timestamp(), report.poll_interval_secs);
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

    /// The parts of the agent that a manifest changes.
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
