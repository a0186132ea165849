//! The agent's x25519 key pair, which secret job parameters are sealed for
//! ([`muster_shared::sealed`]).
//!
//! Made once, at the agent's first start, and kept in its state directory
//! (`xkey.nk`, mode 0600); its public key goes to the master with every
//! enlist. A key file that group or others could read is refused, as the
//! NATS key files are: whoever reads it can open this target's secrets.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use nkeys::XKey;

/// The key file's name in the state directory.
pub const FILE: &str = "xkey.nk";

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} can be read by group or others (mode {mode:o}); chmod 600 it")]
    Readable { path: String, mode: u32 },
    #[error("{path} holds no x25519 seed")]
    Bad { path: String },
}

/// Reads the key pair from `dir`, making and saving one if there is none.
///
/// # Errors
/// An unreadable, too readable or damaged key file, or one that cannot be written.
pub fn load_or_create(dir: &Path) -> Result<XKey, KeyError> {
    let path = dir.join(FILE);
    let shown = path.display().to_string();
    let io = |source| KeyError::Io { path: shown.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(seed) => {
            let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Readable { path: shown, mode });
            }
            XKey::from_seed(seed.trim()).map_err(|_| KeyError::Bad { path: shown })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = XKey::new();
            let seed = key.seed().map_err(|_| KeyError::Bad { path: shown.clone() })?;
            muster_runtime::fsutil::write_private(&path, seed.as_bytes()).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap().public_key(), first.public_key());
        std::fs::set_permissions(dir.path().join(FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(KeyError::Readable { .. })));
    }
}
