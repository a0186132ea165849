//! `muster-shared` is the wire contract between the Muster master, its target
//! agents and `musterctl`.
//!
//! It holds everything two processes must agree on and nothing else: validated
//! names ([`name`]), the subjects built from them ([`subject`]), the streams,
//! consumers and buckets ([`streams`]), the message bodies ([`msg`], [`api`]),
//! each target's desired state and what it reports back ([`desired`]),
//! a run's live output ([`output`]) and its full output kept by choice
//! ([`kept`]), the
//! job model ([`job`], [`schedule`]), what a target may touch on the
//! server ([`perms`]), and the rule that a record stands only on the
//! subject it names ([`identity`]), and the web console's users file and
//! roles ([`console`]).
//!
//! There is no tokio and no I/O here, so both sides can depend on it without
//! pulling in each other. Every `Serialize` type is a versioned public API:
//! add optional fields freely, but never change the meaning of an existing one
//! without bumping [`PROTOCOL_VERSION`].

pub mod api;
pub mod console;
pub mod desired;
pub mod event;
pub mod identity;
pub mod job;
pub mod kept;
pub mod msg;
pub mod name;
pub mod output;
pub mod params;
pub mod perms;
pub mod runs;
pub mod schedule;
pub mod sealed;
pub mod streams;
pub mod subject;

pub use name::{GroupName, JobName, NameError, TargetName};

/// The `"v"` carried by every message body. A receiver refuses other versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest message body any Muster process accepts. Bigger bodies are refused
/// as bad input, before JSON parsing, so a hostile publisher cannot make a
/// process allocate without bound.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Largest API reply a client reassembles. Replies about many targets (a
/// list or force-poll of 10,000) outgrow one NATS message; the master then
/// sends them in parts ([`api::CHUNK_HEADER`]).
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// The agent (and master) version, reported in poll reports.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Header that names a message's kind, so tools can filter without parsing.
pub const KIND_HEADER: &str = "Muster-Kind";
