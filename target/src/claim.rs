//! One agent, one name, per state directory.
//!
//! Why: the state directory holds a target's jobs and schedules. A second
//! agent started on the same directory (by a typo in `--state-dir`, or a
//! unit started twice) would load the same jobs and fire every schedule a
//! second time; an agent started under another name would enlist that name
//! with somebody else's jobs. So the agent holds an exclusive lock on
//! `<state-dir>/lock` for as long as it runs (the kernel drops it when the
//! process dies, even by `kill -9`, so a crash never leaves a stale lock),
//! and `<state-dir>/name` records the target the directory belongs to. A
//! directory made before `name` existed is adopted by the first agent that
//! claims it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use muster_shared::name::TargetName;

use muster_runtime::fsutil::write_atomic;

/// Held while the agent runs: dropping it releases the directory.
#[derive(Debug)]
pub struct Claim {
    _lock: File,
}

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "another muster-target is already running on the state directory {} (it holds {}): one agent per state directory",
        dir.display(),
        dir.join(LOCK).display()
    )]
    Held { dir: PathBuf },
    #[error(
        "the state directory {} belongs to target '{owner}', not '{name}': start it with --name {owner}, or give '{name}' its own --state-dir",
        dir.display()
    )]
    OtherName { dir: PathBuf, owner: String, name: TargetName },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

const LOCK: &str = "lock";
const NAME: &str = "name";

/// Takes the state directory `dir` for target `name`, creating it when
/// missing.
///
/// # Errors
/// [`ClaimError::Held`] while another agent runs on it,
/// [`ClaimError::OtherName`] when it belongs to another target, and I/O
/// errors naming the file.
pub fn claim(dir: &Path, name: &TargetName) -> Result<Claim, ClaimError> {
    let io = |path: PathBuf| move |source| ClaimError::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_owned()))?;
    let lock_path = dir.join(LOCK);
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(lock_path.clone()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(ClaimError::Held { dir: dir.to_owned() }),
        Err(TryLockError::Error(e)) => return Err(io(lock_path)(e)),
    }
    let name_path = dir.join(NAME);
    match std::fs::read_to_string(&name_path) {
        Ok(owner) if owner.trim() == name.as_str() => {}
        Ok(owner) => {
            return Err(ClaimError::OtherName { dir: dir.to_owned(), owner: owner.trim().to_owned(), name: name.clone() })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write_atomic(&name_path, format!("{name}\n").as_bytes()).map_err(io(name_path))?;
        }
        Err(e) => return Err(io(name_path)(e)),
    }
    Ok(Claim { _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> TargetName {
        TargetName::new(n).unwrap()
    }

    #[test]
    fn a_second_claim_is_refused_while_the_first_is_held_and_allowed_after() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(dir.path(), &name("web01")).unwrap();
        assert!(matches!(claim(dir.path(), &name("web01")), Err(ClaimError::Held { .. })));
        drop(first);
        claim(dir.path(), &name("web01")).unwrap();
    }

    #[test]
    fn a_directory_of_another_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(claim(dir.path(), &name("web01")).unwrap());
        let err = claim(dir.path(), &name("web09")).unwrap_err();
        assert!(matches!(&err, ClaimError::OtherName { owner, .. } if owner == "web01"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join(NAME)).unwrap(), "web01\n");
    }

    #[test]
    fn a_missing_directory_is_made_and_a_nameless_one_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("new");
        drop(claim(&state, &name("db01")).unwrap());
        assert_eq!(std::fs::read_to_string(state.join(NAME)).unwrap(), "db01\n");
    }
}
