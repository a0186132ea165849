//! What the master, the agent and `musterctl` do the same way at run time.
//!
//! `muster-shared` is the wire contract and has no I/O; this crate is the
//! other half both daemons share, so that each of these is written once:
//!
//! - [`nats`]: connection flags (`NATS_URL`, `NATS_CREDS`, …) and connecting;
//! - [`signal`]: one shutdown token cancelled by SIGTERM or SIGINT;
//! - [`logging`]: `tracing` set-up, `MUSTER_LOG` filter, text or JSON lines;
//! - [`exit`]: the one table of exit codes, and command-line parsing that uses it;
//! - [`backoff`]: the retry delays of every "try again later" loop;
//! - [`stream`]: reading a stream's messages up to where it ended when asked;
//! - [`history`]: run history read from `MUSTER_RESULTS`, one record per run
//!   (`musterctl history` and the master's web console read it the same way);
//! - [`fsutil`]: crash-safe file writes;
//! - [`zone`]: times written for people, labelled with their zone;
//! - [`describe`]: a job's steps, flow and schedules told as sentences;
//! - [`listen`]: what a listening address flag (`--http`, `--metrics`) means;
//! - [`metrics`] (feature `metrics`, the daemons only): Prometheus label
//!   sets, buckets, and the answer to a scrape.

pub mod backoff;
pub mod describe;
pub mod exit;
pub mod fsutil;
pub mod history;
pub mod listen;
pub mod logging;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod nats;
pub mod signal;
pub mod stream;
pub mod zone;
