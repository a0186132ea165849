//! What a failed command tells a script: one exit code per kind of failure.
//!
//! Scripts branch on these codes, so they are a promise like the JSON
//! output: [`Exit`] is the one table, the `--help` text is printed from it
//! ([`help`]), and every API error code maps onto it ([`Exit::from`]). A
//! command fails with a [`Failure`]: the code, and the message printed on
//! stderr.

use muster_runtime::nats::ConnectError;
use muster_shared::api::{ApiError, ErrorCode};

/// The documented exit codes (0 is success), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray)]
pub enum Exit {
    Internal = 1,
    Usage = 2,
    NotFound = 3,
    Invalid = 4,
    Offline = 5,
    Unreachable = 6,
    Conflict = 7,
    RunFailed = 8,
    ApplyFailed = 9,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// What the code means, as `--help` says it.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Internal => "internal error (NATS or the master failed; the message says what)",
            Exit::Usage => "usage error (bad flags)",
            Exit::NotFound => "not found: no such job or group, or the target is not enlisted",
            Exit::Invalid => "invalid input: a bad name, job file or value (the message names the field)",
            Exit::Offline => "a target is offline or did not answer (its instructions stay queued), or --wait gave up",
            Exit::Unreachable => "the master or NATS is unreachable",
            Exit::Conflict => "conflict: already exists, still in use, or changed concurrently (retry)",
            Exit::RunFailed => "a run did not succeed (job start --wait)",
            Exit::ApplyFailed => "a target polled but failed to apply a change (target force-poll; see instructions --errors)",
        }
    }
}

impl From<ErrorCode> for Exit {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Internal => Exit::Internal,
            ErrorCode::NotFound | ErrorCode::NotEnlisted => Exit::NotFound,
            ErrorCode::InvalidName | ErrorCode::InvalidRequest | ErrorCode::InvalidJob | ErrorCode::BadVersion => Exit::Invalid,
            ErrorCode::Offline | ErrorCode::Timeout => Exit::Offline,
            ErrorCode::MasterUnavailable => Exit::Unreachable,
            ErrorCode::AlreadyExists | ErrorCode::Conflict | ErrorCode::Defected => Exit::Conflict,
        }
    }
}

/// The exit codes and the environment, printed after `--help`.
pub fn help() -> String {
    let mut text = String::from("Exit codes:\n  0  success\n");
    for exit in <Exit as strum::VariantArray>::VARIANTS {
        text.push_str(&format!("  {}  {}\n", exit.code(), exit.meaning()));
    }
    text.push_str(
        "\nEnvironment: NATS_URL (comma-separated), NATS_CREDS, NATS_USER, NATS_PASSWORD, MUSTER_PREFIX, MUSTER_API_TIMEOUT.",
    );
    text
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
        let exit = match e {
            ConnectError::Unreachable { .. } => Exit::Unreachable,
            ConnectError::BadUrl { .. } | ConnectError::Credentials { .. } => Exit::Internal,
        };
        Failure::new(exit, format!("{:#}", anyhow::Error::from(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_lists_every_code_once_in_order() {
        let text = help();
        let codes: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("  ")).filter_map(|l| l.split_whitespace().next()).collect();
        assert_eq!(codes, ["0", "1", "2", "3", "4", "5", "6", "7", "8"], "{text}");
        assert!(text.contains("6  the master or NATS is unreachable"), "{text}");
    }

    #[test]
    fn api_errors_keep_their_documented_codes() {
        // Scripts branch on these: a change here is a breaking change.
        let cases = [
            (ErrorCode::Internal, 1),
            (ErrorCode::NotFound, 3),
            (ErrorCode::NotEnlisted, 3),
            (ErrorCode::InvalidName, 4),
            (ErrorCode::InvalidRequest, 4),
            (ErrorCode::InvalidJob, 4),
            (ErrorCode::BadVersion, 4),
            (ErrorCode::Offline, 5),
            (ErrorCode::Timeout, 5),
            (ErrorCode::MasterUnavailable, 6),
            (ErrorCode::AlreadyExists, 7),
            (ErrorCode::Conflict, 7),
        ];
        for (code, exit) in cases {
            assert_eq!(Exit::from(code).code(), exit, "{code:?}");
        }
    }
}
