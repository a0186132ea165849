//! `musterctl auth console-user`: who may sign in to the master's web
//! console (`muster-master --http`), in `<dir>/console-users.json`.
//!
//! The file holds each user's role and an Argon2id hash of their password,
//! never the password; it is written 0600 (the master refuses it otherwise:
//! the hashes are still worth guessing at). Adding a user that exists
//! replaces their role and password, every other user is kept. Without
//! `--password-stdin` a random password is made and printed once, on
//! stdout, so it reaches the operator and no log.

use std::fs;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use argon2::password_hash::{PasswordHasher as _, SaltString};
use argon2::Argon2;
use muster_shared::console::{self, ConsoleUser, Role, UsersFile};
use muster_shared::PROTOCOL_VERSION;
use rand::distr::{Alphanumeric, SampleString as _};
use rand::RngCore as _;

/// Length of a password made here: 20 letters and digits, 119 bits.
const MADE_PASSWORD_LEN: usize = 20;

/// Shortest password accepted on stdin.
const MIN_PASSWORD_LEN: usize = 12;

/// What [`add_user`] did.
#[derive(Debug, Clone)]
pub struct Added {
    pub file: PathBuf,
    /// The password, when it was made here (to be shown once).
    pub made_password: Option<String>,
    /// Whether a user of that name was replaced.
    pub replaced: bool,
}

/// Where the password comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Password {
    /// Make a random one.
    Make,
    /// Read one line from stdin.
    Stdin,
}

/// Adds (or replaces) `name` with `role` in `<dir>/console-users.json`.
///
/// # Errors
/// A bad name or password, an unreadable existing file, or a failed write.
pub fn add_user(dir: &Path, name: &str, role: Role, password: Password) -> anyhow::Result<Added> {
    console::check_user_name(name)?;
    let (password, made) = match password {
        Password::Make => {
            let p = Alphanumeric.sample_string(&mut rand::rng(), MADE_PASSWORD_LEN);
            (p.clone(), Some(p))
        }
        Password::Stdin => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
            let p = line.trim_end_matches(['\r', '\n']).to_owned();
            anyhow::ensure!(
                p.chars().count() >= MIN_PASSWORD_LEN,
                "the password must have at least {MIN_PASSWORD_LEN} characters"
            );
            (p, None)
        }
    };
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("making a salt: {e}"))?;
    let password_hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string();

    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(console::USERS_FILE);
    let mut users = match fs::read(&file) {
        Ok(bytes) => serde_json::from_slice::<UsersFile>(&bytes).with_context(|| format!("reading {}", file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => UsersFile { v: PROTOCOL_VERSION, users: Vec::new() },
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let before = users.users.len();
    users.users.retain(|u| u.name != name);
    let replaced = users.users.len() != before;
    users.users.push(ConsoleUser { name: name.to_owned(), role, password_hash });
    users.users.sort_by(|a, b| a.name.cmp(&b.name));
    let mut text = serde_json::to_vec_pretty(&users).expect("users serialize");
    text.push(b'\n');
    muster_runtime::fsutil::write_private(&file, &text).with_context(|| format!("writing {}", file.display()))?;
    Ok(Added { file, made_password: made, replaced })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use argon2::password_hash::{PasswordHash, PasswordVerifier as _};

    use super::*;

    #[test]
    fn users_are_kept_hashed_private_and_replaced_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = add_user(dir.path(), "alice", Role::Admin, Password::Make).unwrap();
        let made = a.made_password.clone().unwrap();
        assert_eq!(made.len(), MADE_PASSWORD_LEN);
        assert!(!a.replaced);
        add_user(dir.path(), "bob", Role::Viewer, Password::Make).unwrap();
        let again = add_user(dir.path(), "alice", Role::Viewer, Password::Make).unwrap();
        assert!(again.replaced);

        let mode = fs::metadata(&a.file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&a.file).unwrap();
        assert!(!text.contains(&made) && !text.contains(again.made_password.as_deref().unwrap()), "no password in clear");
        let users: UsersFile = serde_json::from_str(&text).unwrap();
        let names: Vec<(&str, Role)> = users.users.iter().map(|u| (u.name.as_str(), u.role)).collect();
        assert_eq!(names, vec![("alice", Role::Viewer), ("bob", Role::Viewer)]);
        let hash = PasswordHash::new(&users.users[0].password_hash).unwrap();
        assert!(Argon2::default().verify_password(again.made_password.unwrap().as_bytes(), &hash).is_ok());
        assert!(Argon2::default().verify_password(made.as_bytes(), &hash).is_err(), "the old password is gone");

        assert!(add_user(dir.path(), "no body", Role::Admin, Password::Make).is_err());
    }
}
