//! What a failed command tells a script: one exit code per kind of failure.
//!
//! The table itself ([`Exit`]) is `muster_runtime::exit`, shared by all
//! three binaries. A command fails with a [`Failure`]: the code, and the
//! message printed on stderr.

use muster_runtime::nats::ConnectError;
use muster_shared::api::ApiError;

pub use muster_runtime::exit::Exit;

/// The exit codes and the environment, printed after `--help`.
pub fn help() -> String {
    muster_runtime::exit::help(
        "Environment: NATS_URL (comma-separated), NATS_NKEY, NATS_CREDS, NATS_USER, NATS_PASSWORD, NATS_CA, NATS_CERT, NATS_KEY, MUSTER_PREFIX, MUSTER_API_TIMEOUT.",
    )
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into() }
    }

    /// Bad input from the command line (exit 4).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Exit::Invalid, message)
    }

    /// Something failed that the user did not cause (exit 1).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Exit::Internal, message)
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::new(e.code.into(), e.message)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::internal(format!("{e:#}"))
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Self {
        let exit = Exit::from(&e);
        Failure::new(exit, format!("{:#}", anyhow::Error::from(e)))
    }
}
