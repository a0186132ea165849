//! The agent's configuration, parsed once by the binary.

use std::path::PathBuf;
use std::time::Duration;

use muster_shared::job::DEFAULT_OUTPUT_CAP;
use muster_shared::name::TargetName;
use muster_shared::subject::Subjects;

#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub name: TargetName,
    /// NATS URL(s).
    pub servers: Vec<String>,
    pub creds: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub subjects: Subjects,
    /// Jobs, the applied revision and handled starts, run markers and the
    /// spool live here.
    pub state_dir: PathBuf,
    /// Until the master sets another with `set-poll`.
    pub poll_interval: Duration,
    /// Enlist with the master at start (an operator may enlist it instead).
    pub enlist: bool,
    pub location: Option<String>,
    /// Captured output kept per step (head and tail).
    pub output_cap: usize,
    /// SIGTERM → this long → SIGKILL, for stops, timeouts and shutdown.
    pub kill_grace: Duration,
    /// Running steps get this long to finish at shutdown before they are killed.
    pub shutdown_grace: Duration,
    /// Upper bound of the on-disk result spool.
    pub spool_max_bytes: u64,
    /// Jobs running at once on this target; more wait for a slot.
    pub max_concurrent_runs: usize,
}

impl TargetConfig {
    pub fn new(name: TargetName, state_dir: PathBuf) -> Self {
        Self {
            name,
            servers: vec!["nats://127.0.0.1:4222".into()],
            creds: None,
            user: None,
            password: None,
            subjects: Subjects::default(),
            state_dir,
            poll_interval: Duration::from_secs(60),
            enlist: true,
            location: None,
            output_cap: DEFAULT_OUTPUT_CAP,
            kill_grace: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            spool_max_bytes: 256 * 1024 * 1024,
            max_concurrent_runs: 16,
        }
    }
}
