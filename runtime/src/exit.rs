//! One table of exit codes for all three binaries.
//!
//! Scripts and service managers branch on these codes, so they are a
//! promise like the JSON output: [`Exit`] is the one table, each binary's
//! `--help` prints it ([`help`]), every API error code maps onto it, and a
//! command line that does not parse gives the same code whichever binary
//! refused it ([`parse_args`]).

use std::process::ExitCode;

use muster_shared::api::ErrorCode;

use crate::nats::ConnectError;

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
    Denied = 10,
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
            Exit::Invalid => {
                "invalid input: a bad name, URL, file or value, a key file others can read, or a TLS certificate that does not verify (the message names it)"
            }
            Exit::Offline => "a target is offline or did not answer (its instructions stay queued), or --wait gave up",
            Exit::Unreachable => "the master or NATS is unreachable",
            Exit::Conflict => "conflict: already exists, still in use, or changed concurrently (retry)",
            Exit::RunFailed => "a run did not succeed (job start --wait)",
            Exit::ApplyFailed => "a target polled but failed to apply a change (target force-poll; see instructions --errors)",
            Exit::Denied => {
                "permission denied: the NATS server refused this identity the request (a viewer asking for a change; the message names the subject)"
            }
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
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
            ErrorCode::PermissionDenied => Exit::Denied,
        }
    }
}

impl From<&ConnectError> for Exit {
    fn from(e: &ConnectError) -> Self {
        match e {
            ConnectError::Unreachable { .. } => Exit::Unreachable,
            // TLS: retrying does not help; a file, a flag or the server's
            // certificate must change, so it is not "unreachable" (6).
            ConnectError::BadUrl { .. }
            | ConnectError::Credentials { .. }
            | ConnectError::KeyFile(_)
            | ConnectError::TlsFile(_)
            | ConnectError::Tls { .. } => Exit::Invalid,
        }
    }
}

/// The exit codes, then `environment` (a line naming the variables the
/// binary reads), for `--help`'s closing text.
pub fn help(environment: &str) -> String {
    let mut text = String::from("Exit codes:\n  0  success\n");
    for exit in <Exit as strum::VariantArray>::VARIANTS {
        text.push_str(&format!("  {}  {}\n", exit.code(), exit.meaning()));
    }
    text.push('\n');
    text.push_str(environment);
    text
}

/// Parses the command line; `--help` and `--version` print and give
/// success, a value that parsed but broke a rule (a bad name) gives
/// [`Exit::Invalid`], anything else [`Exit::Usage`].
///
/// # Errors
/// The exit code to end with, after clap printed why.
pub fn parse_args<P: clap::Parser>() -> Result<P, ExitCode> {
    P::try_parse().map_err(|e| {
        let _ = e.print();
        match e.kind() {
            clap::error::ErrorKind::DisplayHelp
            | clap::error::ErrorKind::DisplayVersion
            | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
            clap::error::ErrorKind::ValueValidation => Exit::Invalid.into(),
            _ => Exit::Usage.into(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_lists_every_code_once_in_order() {
        let text = help("Environment: NATS_URL.");
        let codes: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("  ")).filter_map(|l| l.split_whitespace().next()).collect();
        assert_eq!(codes, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"], "{text}");
        assert!(text.contains("6  the master or NATS is unreachable"), "{text}");
        assert!(text.ends_with("Environment: NATS_URL."), "{text}");
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
            (ErrorCode::Defected, 7),
            (ErrorCode::PermissionDenied, 10),
        ];
        for (code, exit) in cases {
            assert_eq!(Exit::from(code).code(), exit, "{code:?}");
        }
    }
}
