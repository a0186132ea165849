//! The master's configuration, parsed once by the binary.

use std::time::Duration;

use muster_shared::streams::StoreOptions;
use muster_shared::subject::Subjects;

use muster_runtime::nats::NatsOptions;

#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub nats: NatsOptions,
    pub subjects: Subjects,
    pub store: StoreOptions,
    /// How long a force-poll waits for the target's answer.
    pub force_poll_timeout: Duration,
    /// API requests handled at once; more wait (back-pressure, not memory).
    pub max_concurrent_requests: usize,
    /// The web console (`--http`); `None`: off.
    pub console: Option<crate::console::ConsoleConfig>,
    /// How often a scrape of `/metrics` may read every target's status.
    pub metrics_refresh: Duration,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            nats: NatsOptions::default(),
            subjects: Subjects::default(),
            store: StoreOptions::default(),
            force_poll_timeout: Duration::from_secs(10),
            max_concurrent_requests: 256,
            console: None,
            metrics_refresh: Duration::from_secs(15),
        }
    }
}
