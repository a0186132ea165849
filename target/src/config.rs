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
    /// The user's nkey seed file (`--nkey`).
    pub nkey: Option<PathBuf>,
    pub creds: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// TLS files (`--tls-ca`, `--tls-cert`, `--tls-key`).
    pub tls: muster_runtime::nats::TlsFiles,
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
    /// `--metrics ADDR`: serve Prometheus metrics there; `None`: off.
    pub metrics: Option<String>,
}

impl TargetConfig {
    pub fn new(name: TargetName, state_dir: PathBuf) -> Self {
        Self {
            name,
            servers: vec!["nats://127.0.0.1:4222".into()],
            nkey: None,
            creds: None,
            user: None,
            password: None,
            tls: muster_runtime::nats::TlsFiles::default(),
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
            metrics: None,
        }
    }
}

/// Why the host's name cannot be the target's name.
#[derive(Debug, thiserror::Error)]
pub enum HostNameError {
    #[error("could not read the host name: {0}; pass --name")]
    Unreadable(#[source] std::io::Error),
    #[error(
        "the host name '{host}' cannot be a target name: {source}. A target's name is a NATS subject token \
         (letters, digits, '-', '_'; at most 64), so a fully qualified name is cut at its first '.'; pass --name"
    )]
    Invalid {
        host: String,
        #[source]
        source: muster_shared::name::NameError,
    },
}

/// The target name an agent started without `--name` uses: the host's
/// short name (up to the first '.': a dot cannot be part of a subject
/// token), when that is a valid name.
///
/// # Errors
/// [`HostNameError::Invalid`], saying why, when the short name is not a
/// valid target name.
pub fn name_from_host(host: &str) -> Result<TargetName, HostNameError> {
    let short = host.split('.').next().unwrap_or_default();
    TargetName::new(short).map_err(|source| HostNameError::Invalid { host: host.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_short_name_is_the_default_name() {
        assert_eq!(name_from_host("web01").unwrap().as_str(), "web01");
        assert_eq!(name_from_host("web01.prod.example.com").unwrap().as_str(), "web01");
    }

    #[test]
    fn a_host_name_that_cannot_be_a_subject_token_says_why() {
        for bad in ["", "web 01", "web*01.example.com", ".hidden"] {
            let err = name_from_host(bad).unwrap_err();
            assert!(matches!(err, HostNameError::Invalid { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("pass --name"), "{err}");
        }
    }
}
