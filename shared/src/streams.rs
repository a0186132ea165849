//! What Muster's streams, consumers and buckets look like.
//!
//! These are plain descriptions; the master (the only process that creates
//! them) turns them into `async-nats` configs. Keeping them here makes the
//! layout one documented fact, readable without any I/O crate.

use std::time::Duration;

use crate::name::TargetName;
use crate::subject::Subjects;
use crate::MAX_BODY_BYTES;

/// Default time a run record stays in `MUSTER_RESULTS` (like SQL Server's
/// history retention, but by age).
pub const DEFAULT_HISTORY_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Default JetStream de-duplication window. Exactly-once beyond it is the
/// job of the run identity (see `msg::RunRecord`), not of this window.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Most targets one installation enlists. Previous design: also the consumer
/// limit of `MUSTER_ASSIGN`, one durable consumer per target. With desired
/// state nothing per target but its documents exists on the server, and
/// this is the size the benchmark proves on one server.
pub const MAX_TARGETS: i32 = 100_000;

/// The durable consumer every master replica shares on `MUSTER_RESULTS`.
pub const MASTER_CONSUMER: &str = "master";

/// Previous design: how long a target has to ack an instruction before it is
/// redelivered. Applying an instruction is a local file write, so this is
/// generous.
pub const ASSIGN_ACK_WAIT: Duration = Duration::from_secs(30);

/// How long the master has to ack a results batch before redelivery. A batch
/// is a few hundred KV writes (well under a second), and a master killed
/// mid-batch leaves it unacked: this is how long its replacement waits for it.
pub const RESULTS_ACK_WAIT: Duration = Duration::from_secs(10);

/// Results the master may hold unacked: room for several batches being
/// written at once per replica (the server's default of 1,000 stalls the
/// drain while batches wait for their writes).
pub const MASTER_MAX_ACK_PENDING: i64 = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Kept until limits (age, count) remove it.
    Limits,
    /// Removed once acked: each instruction is consumed exactly by its target
    /// (previous design, `MUSTER_ASSIGN`).
    WorkQueue,
}

/// Knobs an installation sets for its streams and buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// 1 on a single server, 3 on a cluster.
    pub replicas: usize,
    pub history_retention: Duration,
    pub duplicate_window: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { replicas: 1, history_retention: DEFAULT_HISTORY_RETENTION, duplicate_window: DEFAULT_DUPLICATE_WINDOW }
    }
}

/// One stream, as Muster wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    pub retention: Retention,
    /// Zero means no age limit.
    pub max_age: Duration,
    /// -1 means unlimited.
    pub max_msgs_per_subject: i64,
    /// The most bytes kept; -1 means unlimited.
    pub max_bytes: i64,
    /// Refuse new messages when full rather than silently dropping old ones.
    pub discard_new: bool,
    pub duplicate_window: Duration,
    /// Lets `nats stream view` and direct gets read the stream.
    pub allow_direct: bool,
    pub max_msg_size: i32,
    /// -1 = the server's default. nats-server 2.15 caps streams without an
    /// explicit limit at 1,000 consumers (`default_max_consumers`), and
    /// `MUSTER_ASSIGN` has one consumer per target.
    pub max_consumers: i32,
    pub replicas: usize,
}

/// Previous design: `MUSTER_ASSIGN`, instructions, one subject per target,
/// consumed once through a durable consumer per target. Replaced by
/// [`desired_stream`]; kept while the master and agent still use it, and so
/// that an upgrade can find and remove it.
pub fn assign_stream(s: &Subjects, o: &StoreOptions) -> StreamSpec {
    StreamSpec {
        name: s.assign_stream(),
        subjects: vec![s.assign_all()],
        retention: Retention::WorkQueue,
        max_age: Duration::ZERO,
        max_msgs_per_subject: -1,
        max_bytes: -1,
        discard_new: true,
        duplicate_window: o.duplicate_window,
        allow_direct: true,
        max_msg_size: MAX_BODY_BYTES as i32,
        max_consumers: MAX_TARGETS,
        replicas: o.replicas,
    }
}

/// `MUSTER_RESULTS`: run and instruction records, held while the master is away.
pub fn results_stream(s: &Subjects, o: &StoreOptions) -> StreamSpec {
    StreamSpec {
        name: s.results_stream(),
        subjects: vec![s.results_all()],
        retention: Retention::Limits,
        max_age: o.history_retention,
        max_msgs_per_subject: -1,
        max_bytes: -1,
        discard_new: true,
        duplicate_window: o.duplicate_window,
        allow_direct: true,
        max_msg_size: MAX_BODY_BYTES as i32,
        max_consumers: -1,
        replicas: o.replicas,
    }
}

/// `MUSTER_DESIRED`: each target's manifest and job documents, the latest
/// message per subject and nothing older, read by Direct Get.
///
/// No consumer is ever made per target (the master's reconcile uses one
/// short-lived ordered consumer for all). Publishes carry no message id:
/// each is a compare-and-set on the subject's last sequence
/// (`Nats-Expected-Last-Subject-Sequence`), which orders writers better than
/// de-duplication would, so the window is kept minimal. Nothing expires by
/// age: a target offline for a month finds its state when it returns.
pub fn desired_stream(s: &Subjects, o: &StoreOptions) -> StreamSpec {
    StreamSpec {
        name: s.desired_stream(),
        subjects: s.desired_subjects(),
        retention: Retention::Limits,
        max_age: Duration::ZERO,
        max_msgs_per_subject: 1,
        max_bytes: -1,
        // Discard Old is what replaces a subject's message with the new one.
        discard_new: false,
        duplicate_window: Duration::from_secs(1),
        allow_direct: true,
        max_msg_size: MAX_BODY_BYTES as i32,
        max_consumers: -1,
        replicas: o.replicas,
    }
}

/// `MUSTER_POLLS`: the latest poll report of each target, and nothing older.
pub fn polls_stream(s: &Subjects, o: &StoreOptions) -> StreamSpec {
    StreamSpec {
        name: s.polls_stream(),
        subjects: vec![s.poll_all()],
        retention: Retention::Limits,
        max_age: Duration::ZERO,
        max_msgs_per_subject: 1,
        max_bytes: -1,
        discard_new: false,
        duplicate_window: Duration::from_secs(1),
        allow_direct: true,
        max_msg_size: 64 * 1024,
        max_consumers: -1,
        replicas: o.replicas,
    }
}

/// `MUSTER_OUTPUT`: runs' live output, kept for a day and at most
/// [`crate::output::OUTPUT_MAX_BYTES`], the oldest chunks dropped first (a
/// stream, not core NATS, so a follower that comes late reads from the
/// start: see [`crate::output`]). Publishes carry no message id (a chunk
/// sent twice after a reconnect is harmless), so the window is minimal.
pub fn output_stream(s: &Subjects, o: &StoreOptions) -> StreamSpec {
    StreamSpec {
        name: s.output_stream(),
        subjects: vec![s.output_all()],
        retention: Retention::Limits,
        max_age: crate::output::OUTPUT_RETENTION,
        max_msgs_per_subject: -1,
        max_bytes: crate::output::OUTPUT_MAX_BYTES,
        discard_new: false,
        duplicate_window: Duration::from_secs(1),
        allow_direct: true,
        max_msg_size: crate::output::OUTPUT_MAX_MSG_BYTES,
        max_consumers: -1,
        replicas: o.replicas,
    }
}

/// `MUSTER_KEPT`: whole step outputs kept by choice ([`crate::kept`]),
/// configured as `MUSTER_RESULTS` is, so they age out with the history;
/// each job bounds what one step adds (`keep_output_max`). Message ids (`<run>.<n>.<chunk>`)
/// make an upload retried after a reconnect store each chunk once.
pub fn kept_stream(s: &Subjects, o: &StoreOptions) -> StreamSpec {
    // The results stream's limits: the same age, so a run's output lives
    // as long as its record.
    StreamSpec { name: s.kept_stream(), subjects: vec![s.kept_all()], ..results_stream(s, o) }
}

/// `MUSTER_EVENTS`: events ([`crate::event`]), a week and at most
/// [`crate::event::EVENTS_MAX_BYTES`], the oldest dropped first; message ids
/// store each event once ([`crate::event::Event::msg_id`]).
pub fn events_stream(s: &Subjects, o: &StoreOptions) -> StreamSpec {
    StreamSpec {
        name: s.events_stream(),
        subjects: vec![s.events_all()],
        retention: Retention::Limits,
        max_age: crate::event::EVENTS_RETENTION,
        max_msgs_per_subject: -1,
        max_bytes: crate::event::EVENTS_MAX_BYTES,
        discard_new: false,
        duplicate_window: crate::event::EVENTS_DUPLICATE_WINDOW,
        allow_direct: true,
        max_msg_size: 64 * 1024,
        max_consumers: -1,
        replicas: o.replicas,
    }
}

/// A durable pull consumer: a target's on `MUSTER_ASSIGN` (previous design),
/// or the master's on `MUSTER_RESULTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub durable_name: String,
    pub filter_subject: String,
    pub ack_wait: Duration,
    /// -1 = no limit. Instructions are never dropped after N deliveries: a
    /// dropped instruction would be a lost one.
    pub max_deliver: i64,
    /// Records delivered and not yet acked; the server's default (1,000)
    /// when `None`.
    pub max_ack_pending: Option<i64>,
    pub replicas: usize,
}

/// Previous design: a target's durable pull consumer on `MUSTER_ASSIGN`, named
/// after it and filtered to its own subject. No `inactive_threshold`: a
/// target offline for days must find its consumer, and its instructions,
/// when it returns.
pub fn target_consumer(s: &Subjects, t: &TargetName, o: &StoreOptions) -> ConsumerSpec {
    ConsumerSpec {
        durable_name: t.to_string(),
        filter_subject: s.assign(t),
        ack_wait: ASSIGN_ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: None,
        replicas: o.replicas,
    }
}

pub fn master_consumer(s: &Subjects, o: &StoreOptions) -> ConsumerSpec {
    ConsumerSpec {
        durable_name: MASTER_CONSUMER.to_owned(),
        filter_subject: s.results_all(),
        ack_wait: RESULTS_ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: Some(MASTER_MAX_ACK_PENDING),
        replicas: o.replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_stream_keeps_one_document_per_subject_readable_by_direct_get() {
        let o = StoreOptions { replicas: 3, ..StoreOptions::default() };
        let d = desired_stream(&Subjects::default(), &o);
        assert_eq!(d.name, "MUSTER_DESIRED");
        assert_eq!(d.subjects, vec!["muster.target.*.state".to_owned(), "muster.target.*.job.*".to_owned()]);
        assert_eq!((d.retention, d.max_msgs_per_subject, d.discard_new), (Retention::Limits, 1, false));
        assert!(d.allow_direct, "targets read by Direct Get");
        assert_eq!(d.max_age, Duration::ZERO, "an offline target must find its state");
        assert_eq!(d.max_msg_size, MAX_BODY_BYTES as i32);
        assert_eq!(d.replicas, 3);
        assert_eq!(d.max_consumers, -1, "no consumer per target");
    }

    #[test]
    fn no_two_streams_share_a_subject() {
        let s = Subjects::default();
        let o = StoreOptions::default();
        let all = [
            assign_stream(&s, &o),
            results_stream(&s, &o),
            polls_stream(&s, &o),
            desired_stream(&s, &o),
            output_stream(&s, &o),
            kept_stream(&s, &o),
            events_stream(&s, &o),
        ];
        let t = crate::TargetName::new("web01").unwrap();
        let samples = [
            s.assign(&t),
            s.state(&t),
            s.job_doc(&t, uuid::Uuid::nil()),
            s.result_applied(&t),
            s.poll(&t),
            s.control(&t),
            s.output(&t, uuid::Uuid::nil()),
            s.kept(&t, uuid::Uuid::nil(), 0),
            s.event(crate::event::EventKind::JobFailed, &t),
        ];
        for sample in &samples {
            let owners: Vec<&str> = all
                .iter()
                .filter(|spec| spec.subjects.iter().any(|p| crate::subject::matches(p, sample)))
                .map(|spec| spec.name.as_str())
                .collect();
            let expected = usize::from(sample != &s.control(&t));
            assert_eq!(owners.len(), expected, "{sample} is stored by {owners:?}");
        }
    }
}
