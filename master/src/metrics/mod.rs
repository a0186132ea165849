//! The master's Prometheus metrics, in one registry: what operators
//! alert on (targets by status, unread instructions, the results backlog)
//! and what the master did (API requests and errors by operation, bad
//! messages by subject kind, results ingested, runs by outcome, force-poll
//! latency). Served as `/metrics` on the console's listener (`--http`),
//! outside its sign-in: scrapers carry no session, and the listener is on
//! loopback unless told otherwise.
//!
//! Why one place: the API's counters shown in `nats micro stats muster`
//! (requests, bad requests) are read from these same counters, so the two
//! views cannot disagree.
//!
//! Counters count what this master replica handled since it started;
//! replicas share the work (one queue group, one results consumer), so a
//! dashboard sums them. The gauges read from JetStream ([`scrape`]) are the
//! installation's and the same on every replica.
//!
//! Every label value comes from a fixed list (operation, error code,
//! subject kind, outcome, target status), never a name or a raw subject:
//! nothing here grows with the number of targets.

mod scrape;

use std::time::Duration;

use muster_runtime::metrics::{counters, runs_by_outcome, seconds_histogram, Label, Labels2};
use muster_shared::api::ErrorCode;
use muster_shared::msg::Outcome;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use scrape::router;

/// A histogram per value of one label, with [`seconds_histogram`]'s buckets.
type Latencies = Family<Label, Histogram, fn() -> Histogram>;

/// Where a bad message came in: the kind of its subject, never the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// `muster.api.{read,admin}.<op>`.
    Api,
    /// `muster.api.agent.<t>.{enlist,defect}`.
    AgentApi,
    /// `MUSTER_RESULTS`, by the kind of record.
    Result(ResultKind),
}

impl Inbound {
    const ALL: [Inbound; 5] = [
        Inbound::Api,
        Inbound::AgentApi,
        Inbound::Result(ResultKind::Run),
        Inbound::Result(ResultKind::Applied),
        Inbound::Result(ResultKind::Instr),
    ];

    /// Every kind of record on `MUSTER_RESULTS` (the log's `bad_results` total).
    pub const RESULTS: [Inbound; 3] =
        [Inbound::Result(ResultKind::Run), Inbound::Result(ResultKind::Applied), Inbound::Result(ResultKind::Instr)];

    fn as_str(self) -> &'static str {
        match self {
            Inbound::Api => "api",
            Inbound::AgentApi => "agent_api",
            Inbound::Result(ResultKind::Run) => "result_run",
            Inbound::Result(ResultKind::Applied) => "result_applied",
            Inbound::Result(ResultKind::Instr) => "result_instr",
        }
    }
}

/// The kinds of record on `MUSTER_RESULTS`, told by the subject's last token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    /// `muster.result.<t>.run.<job>`: a run's start or end.
    Run,
    /// `muster.result.<t>.applied`: desired state applied.
    Applied,
    /// `muster.result.<t>.instr`: a previous version's instruction outcomes.
    Instr,
}

impl ResultKind {
    const ALL: [ResultKind; 3] = [ResultKind::Run, ResultKind::Applied, ResultKind::Instr];

    pub fn of(subject: &str) -> ResultKind {
        if subject.ends_with(".applied") {
            ResultKind::Applied
        } else if subject.ends_with(".instr") {
            ResultKind::Instr
        } else {
            ResultKind::Run
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ResultKind::Run => "run",
            ResultKind::Applied => "applied",
            ResultKind::Instr => "instr",
        }
    }
}

/// What a force-poll came to: answered, or the error code it failed with.
pub type ForcePolled = Result<(), ErrorCode>;

/// Every instrument, and the registry that serves them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    api_requests: Family<Label, Counter>,
    api_errors: Family<Labels2, Counter>,
    bad_messages: Family<Label, Counter>,
    results_ingested: Family<Label, Counter>,
    runs: Family<Label, Counter>,
    force_poll: Latencies,
    snapshot: scrape::Snapshot,
}

impl Metrics {
    /// Registers every instrument; the gauges read from JetStream are read
    /// again at most every `refresh` ([`scrape`]).
    pub fn new(refresh: Duration) -> Metrics {
        let mut registry = Registry::with_prefix("muster");
        let api_requests = counters("op", crate::api::route_labels());
        registry.register(
            "api_requests",
            "API requests handled, by operation (agent.enlist and agent.defect are the agents' own)",
            api_requests.clone(),
        );
        let api_errors = Family::<Labels2, Counter>::default();
        registry.register("api_errors", "API requests answered with an error, by operation and error code", api_errors.clone());
        let bad_messages = counters("kind", Inbound::ALL.map(Inbound::as_str));
        registry.register(
            "bad_messages",
            "Messages refused as unreadable or contradicting their subject, by subject kind (api, agent_api, result_run, result_applied, result_instr)",
            bad_messages.clone(),
        );
        let results_ingested = counters("kind", ResultKind::ALL.map(ResultKind::as_str));
        registry.register(
            "results_ingested",
            "Records from MUSTER_RESULTS written and acknowledged, by kind (run, applied, instr)",
            results_ingested.clone(),
        );
        let runs = runs_by_outcome();
        registry.register("runs", "Final run records ingested, by outcome", runs.clone());
        let force_poll = Latencies::new_with_constructor(seconds_histogram);
        drop(force_poll.get_or_create(&[("result", "answered")]));
        registry.register(
            "force_poll_seconds",
            "Force-poll round trips (master to target and back), by result: answered, or the error code (offline, timeout, ...)",
            force_poll.clone(),
        );
        let snapshot = scrape::Snapshot::new(refresh, &mut registry);
        Metrics { registry, api_requests, api_errors, bad_messages, results_ingested, runs, force_poll, snapshot }
    }

    /// One API request on the route labelled `op`, and its error if any.
    pub fn api_request(&self, op: &'static str, error: Option<ErrorCode>) {
        self.api_requests.get_or_create(&[("op", op)]).inc();
        if let Some(code) = error {
            self.api_errors.get_or_create(&[("op", op), ("code", code.as_str())]).inc();
        }
    }

    /// One bad message; returns how many of its kind this master has seen.
    pub fn bad_message(&self, kind: Inbound) -> u64 {
        self.bad_messages.get_or_create(&[("kind", kind.as_str())]).inc() + 1
    }

    /// Bad messages of these kinds so far.
    pub fn bad_messages(&self, kinds: &[Inbound]) -> u64 {
        kinds.iter().map(|k| self.bad_messages.get_or_create(&[("kind", k.as_str())]).get()).sum()
    }

    /// API requests handled so far, every operation.
    pub fn api_requests_total(&self) -> u64 {
        crate::api::route_labels().map(|op| self.api_requests.get_or_create(&[("op", op)]).get()).sum()
    }

    /// One record of `kind` written and acknowledged.
    pub fn ingested(&self, kind: ResultKind) {
        self.results_ingested.get_or_create(&[("kind", kind.as_str())]).inc();
    }

    /// One final run record ingested.
    pub fn run_ended(&self, outcome: Outcome) {
        self.runs.get_or_create(&[("outcome", outcome.as_str())]).inc();
    }

    /// One force-poll round trip.
    pub fn force_polled(&self, took: Duration, result: ForcePolled) {
        let result = result.map_or_else(ErrorCode::as_str, |()| "answered");
        self.force_poll.get_or_create(&[("result", result)]).observe(took.as_secs_f64());
    }

    /// The gauge of targets in `status`, as last read.
    #[cfg(test)]
    fn targets(&self, status: muster_shared::api::TargetStatus) -> i64 {
        self.snapshot.targets(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_kinds_come_from_the_subjects_last_token() {
        assert_eq!(ResultKind::of("muster.result.web01.applied"), ResultKind::Applied);
        assert_eq!(ResultKind::of("muster.result.web01.instr"), ResultKind::Instr);
        assert_eq!(ResultKind::of("muster.result.web01.run.0190"), ResultKind::Run);
    }

    #[test]
    fn the_micro_stats_totals_are_the_sums_of_the_labelled_counters() {
        let m = Metrics::new(Duration::from_secs(15));
        m.api_request("job.list", None);
        m.api_request("target.show", Some(ErrorCode::NotEnlisted));
        m.api_request("agent.enlist", Some(ErrorCode::InvalidRequest));
        assert_eq!(m.api_requests_total(), 3);
        assert_eq!(m.bad_message(Inbound::Api), 1);
        assert_eq!(m.bad_message(Inbound::AgentApi), 1);
        assert_eq!(m.bad_message(Inbound::Result(ResultKind::Run)), 1);
        assert_eq!(m.bad_messages(&[Inbound::Api, Inbound::AgentApi]), 2);
        assert_eq!(m.targets(muster_shared::api::TargetStatus::Normal), 0);
    }
}
