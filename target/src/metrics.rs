//! The agent's Prometheus metrics, served on `--metrics ADDR` (off unless
//! given; a port alone is loopback): polls and their duration, runs by
//! outcome, bad messages, the result spool's depth and NATS reconnects.
//!
//! Why here and not only in the poll report: the poll report says what the
//! master should know of the latest poll; a host's own monitoring wants
//! rates and durations, and wants them while NATS is away (a growing spool
//! and reconnects are what it alerts on then).
//!
//! The counters are the agent's own (the poll report's bad-message counts
//! are read from them); the spool's depth and the reconnects are read at
//! scrape time ([`Live`]) from the spool and from async-nats' connection
//! statistics, so nothing is kept twice. Every label value comes from a
//! fixed list.

use std::time::Duration;

use muster_runtime::metrics::{counters, runs_by_outcome, seconds_histogram, Label};
use muster_shared::msg::Outcome;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::poller::PollError;
use crate::spool::Spool;

/// Where a bad message came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// A manifest refused (unreadable, another target's, over limits).
    Instruction,
    /// A control request refused.
    Control,
}

impl Bad {
    fn as_str(self) -> &'static str {
        match self {
            Bad::Instruction => "instruction",
            Bad::Control => "control",
        }
    }
}

/// The agent's instruments.
#[derive(Debug)]
pub struct AgentMetrics {
    polls: Family<Label, Counter>,
    poll_seconds: Histogram,
    runs: Family<Label, Counter>,
    bad: Family<Label, Counter>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            polls: counters("result", ["ok", "not_enlisted", "failed"]),
            poll_seconds: seconds_histogram(),
            runs: runs_by_outcome(),
            bad: counters("kind", [Bad::Instruction, Bad::Control].map(Bad::as_str)),
        }
    }
}

impl AgentMetrics {
    /// One poll, how long it took and how it ended.
    pub fn polled<T>(&self, took: Duration, result: &Result<T, PollError>) {
        let result = match result {
            Ok(_) => "ok",
            Err(PollError::NotEnlisted) => "not_enlisted",
            Err(_) => "failed",
        };
        self.polls.get_or_create(&[("result", result)]).inc();
        self.poll_seconds.observe(took.as_secs_f64());
    }

    /// One final run record spooled.
    pub fn run_ended(&self, outcome: Outcome) {
        self.runs.get_or_create(&[("outcome", outcome.as_str())]).inc();
    }

    /// One bad message; returns how many of its kind so far (for the log).
    pub fn bad(&self, kind: Bad) -> u64 {
        self.bad.get_or_create(&[("kind", kind.as_str())]).inc() + 1
    }

    /// Bad messages of `kind` so far (for the poll report).
    pub fn bad_so_far(&self, kind: Bad) -> u64 {
        self.bad.get_or_create(&[("kind", kind.as_str())]).get()
    }

    /// The registry a scrape encodes: these instruments, and what is read
    /// from the spool and the connection at scrape time.
    pub fn registry(&self, spool: Spool, client: async_nats::Client) -> Registry {
        let mut registry = Registry::with_prefix("muster_agent");
        registry.register(
            "polls",
            "Polls of this target's desired state, by result (ok, not_enlisted, failed)",
            self.polls.clone(),
        );
        registry.register("poll_seconds", "How long each poll took, force-polls included", self.poll_seconds.clone());
        registry.register("runs", "Final run records spooled, by outcome", self.runs.clone());
        registry.register("bad_messages", "Messages refused, by kind (instruction: a manifest; control)", self.bad.clone());
        registry.register_collector(Box::new(Live { spool, client }));
        registry
    }
}

/// What a scrape reads as it is: nothing is copied in between.
#[derive(Debug)]
struct Live {
    spool: Spool,
    client: async_nats::Client,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let depth = ConstGauge::new(i64::try_from(self.spool.len()).unwrap_or(i64::MAX));
        depth.encode(encoder.encode_descriptor(
            "spool_depth",
            "Result records spooled on disk and not yet confirmed by JetStream.",
            None,
            depth.metric_type(),
        )?)?;
        // async-nats counts the first connection too.
        let connects = self.client.statistics().connects.load(std::sync::atomic::Ordering::Relaxed);
        let reconnects = ConstCounter::new(connects.saturating_sub(1));
        reconnects.encode(encoder.encode_descriptor(
            "nats_reconnects",
            "Times the connection to NATS was made again after it was lost.",
            None,
            reconnects.metric_type(),
        )?)?;
        Ok(())
    }
}
