//! Private key files: a NATS user's nkey seed (`--nkey`), a credentials
//! file (`--creds`) and the TLS client key (`--tls-key`); and the master's
//! web console's users file and TLS key, refused the same way.
//!
//! Whoever reads one of these files *is* that identity on the NATS server,
//! so every binary refuses one that group or others may access, as `ssh`
//! refuses an unprotected private key: the file is checked before it is
//! read, and before any connection attempt, and the refusal says why and
//! which `chmod` fixes it ([`KeyFileError::Exposed`], exit 4). A daemon
//! exits rather than retrying, since nothing on the server can cure it.
//!
//! A seed file holds the seed (`SU…`) on a line of its own, as
//! `musterctl auth` writes it and `nk -gen user` prints it; other lines
//! (comments) are ignored. The seed is checked here, so that a damaged
//! file is named at start instead of surfacing as an authorization error.

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Which kind of private file, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A NATS user's nkey seed (`--nkey`, `NATS_NKEY`).
    NkeySeed,
    /// A NATS credentials file (`--creds`, `NATS_CREDS`).
    Credentials,
    /// The TLS client certificate's key (`--tls-key`, `NATS_KEY`).
    TlsKey,
    /// The web console's users and their password hashes (`--http-users`).
    ConsoleUsers,
    /// The web console's TLS key (`--http-tls-key`).
    ConsoleTlsKey,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::NkeySeed => "the NATS nkey seed",
            KeyKind::Credentials => "the NATS credentials file",
            KeyKind::TlsKey => "the TLS client key",
            KeyKind::ConsoleUsers => "the web console's users file",
            KeyKind::ConsoleTlsKey => "the web console's TLS key",
        })
    }
}

/// Why a private key file was not used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Group or others have some access to the file.
    #[error(
        "{kind} {} is open to other users (mode {mode:04o}): whoever reads it can act as this identity (or guess at its secrets), so it must be readable by its owner only; run: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Exposed { kind: KeyKind, path: PathBuf, mode: u32 },
    #[error("reading {kind} {}", path.display())]
    Read {
        kind: KeyKind,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file holds no valid user seed (`SU…`).
    #[error("{} holds no valid NATS user seed (a line starting with SU)", path.display())]
    NoSeed { path: PathBuf },
}

/// Refuses `path` when group or others have any access to it (any of the
/// bits 0o077, as `ssh` does). The file the path leads to is checked (a
/// link's own mode means nothing).
///
/// # Errors
/// [`KeyFileError::Exposed`], or [`KeyFileError::Read`] when the file
/// cannot be examined.
pub fn check_private(kind: KeyKind, path: &Path) -> Result<(), KeyFileError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyFileError::Read { kind, path: path.to_owned(), source })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Exposed { kind, path: path.to_owned(), mode });
    }
    Ok(())
}

/// The user seed in the file at `path`, after [`check_private`].
///
/// # Errors
/// An exposed or unreadable file, or one without a valid user seed.
pub fn read_seed(path: &Path) -> Result<String, KeyFileError> {
    check_private(KeyKind::NkeySeed, path)?;
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        kind: KeyKind::NkeySeed,
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU"))
        .filter(|seed| nkeys::KeyPair::from_seed(seed).is_ok())
        .map(str::to_owned)
        .ok_or_else(|| KeyFileError::NoSeed { path: path.to_owned() })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn only_an_owner_only_file_with_a_user_seed_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web01.nk");
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        fs::write(&path, format!("# web01\n{seed}\n")).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o610] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            match read_seed(&path) {
                Err(e @ KeyFileError::Exposed { kind: KeyKind::NkeySeed, mode: m, .. }) => {
                    assert_eq!(m, mode);
                    assert!(e.to_string().contains(&format!("chmod 600 {}", path.display())), "{e}");
                }
                other => panic!("mode {mode:o}: expected a refusal, got {other:?}"),
            }
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_seed(&path).unwrap(), seed);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_seed(&path).unwrap(), seed);

        let account = nkeys::KeyPair::new_account().seed().unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, format!("{account}\n")).unwrap();
        assert!(matches!(read_seed(&path), Err(KeyFileError::NoSeed { .. })), "an account seed is not a user's");
        assert!(matches!(read_seed(&dir.path().join("missing")), Err(KeyFileError::Read { .. })));
    }
}
