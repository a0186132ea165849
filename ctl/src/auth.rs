//! `musterctl auth nats-config`: nats-server accounts and users for the
//! master, for operators (an admin and a viewer), and for each target.
//!
//! Each target gets an account of its own ([`muster_shared::perms::target_account`])
//! that imports from the Muster account only its own subjects, and its user
//! in it is limited to the same subjects. The account is what confines the
//! *answers*: nats-server never checks a request's reply subject against the
//! requester's permissions, and JetStream and the master answer with their
//! own rights; across an account boundary the server gives the request a
//! reply subject of its own and maps the answer back into the target's
//! account, so it cannot land in the buckets, another target's subjects or
//! the API. The master and the admin share the Muster account, with
//! JetStream, unrestricted. The viewer (`muster-viewer`, read only) is
//! restricted, so it is confined the same way: an account of its own
//! ([`muster_shared::perms::viewer_account`]) that imports the read half of
//! the API, the service ping and the reads of `run show`, and nothing that
//! changes state; the server refuses it the rest.
//!
//! Users are nkeys: `auth.conf` holds only each user's public key (`U…`),
//! and its seed is in `<dir>/<user>.nk` (mode 0600), made once and kept.
//! `<dir>/<user>.env` names it (`NATS_NKEY=`, an absolute path, and
//! `NATS_CA=` when the directory has a CA): only `NAME=value` lines, the
//! variables the binaries read, so that file is what the process is started
//! with (`env_file:` in compose, `EnvironmentFile=` in systemd), and the
//! seed file goes with it. Running the command again for a new target keeps
//! everyone else's key, so adding a target is: run it again, reload
//! nats-server twice (`nats-server --signal reload`; 2.15.1 wires a new
//! account's imports only at the second reload), hand the new files to the
//! new target. [`remove_target`] revokes one: its account and user leave
//! `auth.conf`, its files are deleted, and after one reload the server
//! closes its connections and refuses its key.
//!
//! A directory written by an earlier version holds passwords
//! (`NATS_USER`/`NATS_PASSWORD` in the `.env` files): the next run converts
//! every such user to an nkey (a new seed file, the password dropped from
//! the `.env` file and from `auth.conf`) and says so, since a server
//! configuration holding passwords is what this replaces. The processes
//! then need their new files (the same `.env` path, plus the `.nk`) and a
//! restart, once the server is reloaded.
//!
//! When the directory holds a CA (`auth init`, in [`init`]), every `.env`
//! file also names it (`NATS_CA=`, an absolute path), so that a file alone
//! is all a process needs.
//!
//! [`console`] writes the web console's users (`auth console-user`): not
//! NATS users, but people who sign in to `muster-master --http`.

pub mod console;
pub mod init;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use muster_shared::name::TargetName;
use muster_shared::perms::{self, Account, Permissions, Responses};
use muster_shared::subject::Subjects;

/// The master daemon's user: unrestricted in its account (it creates the
/// streams, buckets and consumers).
pub const MASTER_USER: &str = "muster-master";

/// The operators' user (`musterctl`, the `nats` CLI): unrestricted too.
pub const ADMIN_USER: &str = "muster-admin";

/// The read-only operators' user: every `musterctl` command that only
/// reads, in an account of its own ([`perms::viewer_account`]).
pub const VIEWER_USER: &str = "muster-viewer";

/// Names no target may have: the users above, and the identities whose
/// files `auth init` links to theirs (`master.env`, `admin.env`,
/// `viewer.env`).
const RESERVED: [&str; 6] = [MASTER_USER, ADMIN_USER, VIEWER_USER, "master", "admin", "viewer"];

/// The authorization file, to `include` from the nats-server configuration.
pub const CONFIG_FILE: &str = "auth.conf";

/// One NATS user: its name, public nkey (`U…`), and, for a target or the
/// viewer, its own account (`None`: a user of the Muster account,
/// unrestricted).
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub public_key: String,
    pub account: Option<Account>,
}

/// What [`write_config`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub config: PathBuf,
    /// Each user with its environment file.
    pub users: Vec<(String, PathBuf)>,
    /// Users whose password was replaced by an nkey in this run.
    pub converted: Vec<String>,
}

/// Why [`remove_target`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("'{name}' is not a target with a user in {} (no {name}.env there)", dir.display())]
    NotFound { name: TargetName, dir: PathBuf },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Writes `<dir>/auth.conf` and, for a user that has none yet, its seed
/// `<user>.nk` and `<user>.env`: the master, the admin, the viewer,
/// `targets`, and every target that already has a file in `dir`.
///
/// # Errors
/// When a target is named like a reserved user, a seed file is missing,
/// exposed or damaged, or a file cannot be written; nothing already there
/// is lost.
pub fn write_config(dir: &Path, subjects: &Subjects, targets: &[TargetName]) -> anyhow::Result<Written> {
    write_users(dir, subjects, targets, None)
}

/// Revokes `name`: its account and user leave `<dir>/auth.conf` (written
/// first, so that a failure never leaves the server configured to accept
/// it), then its `.env` and `.nk` files are deleted. Reload nats-server
/// once: it closes the target's connections and refuses its key.
///
/// # Errors
/// [`RemoveError::NotFound`] when `dir` has no user of that name.
pub fn remove_target(dir: &Path, subjects: &Subjects, name: &TargetName) -> Result<Written, RemoveError> {
    let env = env_file(dir, name.as_str());
    if RESERVED.contains(&name.as_str()) || !env.exists() {
        return Err(RemoveError::NotFound { name: name.clone(), dir: dir.to_owned() });
    }
    let written = write_users(dir, subjects, &[], Some(name))?;
    for file in [env, seed_file(dir, name.as_str())] {
        match fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(anyhow::Error::new(e).context(format!("removing {}", file.display())).into());
            }
            _ => {}
        }
    }
    Ok(written)
}

fn write_users(dir: &Path, subjects: &Subjects, targets: &[TargetName], without: Option<&TargetName>) -> anyhow::Result<Written> {
    for t in targets {
        if RESERVED.contains(&t.as_str()) {
            bail!("'{t}' is the name of one of Muster's own NATS users; give the target another name");
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The `.env` files name the seed by an absolute path.
    let abs = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let mut names: Vec<TargetName> = known_targets(dir)?;
    names.extend(targets.iter().cloned());
    names.retain(|t| Some(t) != without);
    names.sort();
    names.dedup();

    let ca = abs.join(init::CA_FILE);
    let ca = ca.exists().then_some(ca);
    let mut users = Vec::new();
    let mut converted = Vec::new();
    let mut key = |name: &str| -> anyhow::Result<String> {
        let (public_key, was_password) = key_for(&abs, name, ca.as_deref())?;
        if was_password {
            converted.push(name.to_owned());
        }
        Ok(public_key)
    };
    for name in [MASTER_USER, ADMIN_USER] {
        users.push(User { name: name.to_owned(), public_key: key(name)?, account: None });
    }
    users.push(User {
        name: VIEWER_USER.to_owned(),
        public_key: key(VIEWER_USER)?,
        account: Some(perms::viewer_account(subjects)),
    });
    for t in &names {
        users.push(User { name: t.to_string(), public_key: key(t.as_str())?, account: Some(perms::target_account(subjects, t)) });
    }
    let config = dir.join(CONFIG_FILE);
    write_private(&config, &render(subjects, &users))?;
    Ok(Written { config, users: users.iter().map(|u| (u.name.clone(), env_file(dir, &u.name))).collect(), converted })
}

/// The `accounts` block for `users`: the Muster account with the
/// unrestricted users, and one account per restricted user (each target,
/// the viewer).
pub fn render(subjects: &Subjects, users: &[User]) -> String {
    let q = |s: &str| format!("\"{s}\"");
    let list = |items: &[String]| items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
    let muster = perms::muster_account(subjects);
    let mut out = String::from(
        "# Written by `musterctl auth nats-config`: include it from nats-server.conf.\n\
         # One account for Muster (JetStream, the master, the admin), one per target,\n\
         # which imports only the subjects that carry its own name, and one for the\n\
         # viewer, which imports only reads: every answer to them goes back into\n\
         # their own account.\n\
         accounts {\n",
    );
    let _ = writeln!(out, "  {}: {{\n    jetstream: enabled\n    users: [", q(&muster));
    for u in users.iter().filter(|u| u.account.is_none()) {
        let _ = writeln!(out, "      # {}\n      {{ nkey: {} }}", u.name, q(&u.public_key));
    }
    out.push_str("    ]\n    # Public, but only accounts in this file exist; each imports its own part.\n    exports: [\n");
    for e in perms::muster_exports(subjects) {
        let responses = match e.responses {
            Responses::Single => "",
            Responses::Stream => ", response_type: stream",
        };
        let _ = writeln!(out, "      {{ service: {}{responses} }}", q(&e.subject));
    }
    out.push_str("    ]\n    imports: [\n");
    for a in users.iter().filter_map(|u| u.account.as_ref()) {
        for e in &a.exports {
            let _ = writeln!(out, "      {{ service: {{ account: {}, subject: {} }} }}", q(&a.name), q(e));
        }
    }
    out.push_str("    ]\n  }\n");
    for u in users {
        let Some(a) = &u.account else { continue };
        let p: &Permissions = &a.permissions;
        let _ = writeln!(out, "  {}: {{\n    jetstream: disabled\n    users: [", q(&a.name));
        let _ = writeln!(
            out,
            "      # {}\n      {{ nkey: {}, permissions: {{\n          \
             publish: {{ allow: [{}] }}\n          \
             subscribe: {{ allow: [{}] }}\n          \
             allow_responses: {}\n      }} }}",
            u.name,
            q(&u.public_key),
            list(&p.publish),
            list(&p.subscribe),
            p.allow_responses
        );
        out.push_str("    ]\n    imports: [\n");
        for i in &a.imports {
            let _ = writeln!(out, "      {{ service: {{ account: {}, subject: {} }} }}", q(&muster), q(i));
        }
        out.push_str("    ]\n    exports: [\n");
        for e in &a.exports {
            let _ = writeln!(out, "      {{ service: {}, accounts: [{}] }}", q(e), q(&muster));
        }
        out.push_str("    ]\n  }\n");
    }
    out.push_str("}\n");
    out
}

fn env_file(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("{user}.env"))
}

/// Targets that already have an environment file in `dir`.
fn known_targets(dir: &Path) -> anyhow::Result<Vec<TargetName>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(stem) = path.extension().filter(|e| *e == "env").and(path.file_stem()).and_then(|s| s.to_str()) else {
            continue;
        };
        if RESERVED.contains(&stem) {
            continue;
        }
        if let Ok(t) = TargetName::new(stem) {
            out.push(t);
        }
    }
    Ok(out)
}

fn seed_file(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("{user}.nk"))
}

/// The user's public key, from its seed file or a new seed (written, mode
/// 0600), and its environment file made to name the seed and `ca`; `true`
/// when the user had a password until now (converted).
fn key_for(dir: &Path, user: &str, ca: Option<&Path>) -> anyhow::Result<(String, bool)> {
    let (env, seed) = (env_file(dir, user), seed_file(dir, user));
    let old = match fs::read_to_string(&env) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", env.display())),
    };
    let named = old.as_deref().is_some_and(|t| t.lines().any(|l| l.starts_with("NATS_NKEY=")));
    let password = old.as_deref().is_some_and(|t| t.lines().any(|l| l.starts_with("NATS_PASSWORD=")));
    let pair = if seed.exists() {
        let text = muster_runtime::nats::read_seed(&seed)?;
        nkeys::KeyPair::from_seed(&text).with_context(|| format!("the seed in {}", seed.display()))?
    } else if named {
        bail!(
            "{} names a seed file, but {} is missing; delete {} to give {user} a new key",
            env.display(),
            seed.display(),
            env.display()
        );
    } else {
        if old.is_some() && !password {
            bail!("{} has neither NATS_NKEY nor NATS_PASSWORD; delete it to give {user} a new key", env.display());
        }
        let pair = nkeys::KeyPair::new_user();
        let text = pair.seed().context("encoding a new seed")?;
        write_private(&seed, &format!("{text}\n"))?;
        pair
    };
    // Only the variables the binaries read: the seed, and the CA if any.
    let mut lines: Vec<String> = old
        .as_deref()
        .unwrap_or_default()
        .lines()
        .filter(|l| !["NATS_USER=", "NATS_PASSWORD=", "NATS_NKEY=", "NATS_CA="].iter().any(|v| l.starts_with(v)))
        .map(str::to_owned)
        .collect();
    lines.push(format!("NATS_NKEY={}", seed.display()));
    if let Some(ca) = ca {
        lines.push(format!("NATS_CA={}", ca.display()));
    }
    let new = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    if old.as_deref() != Some(new.as_str()) {
        write_private(&env, &new)?;
    }
    Ok((pair.public_key(), password && !named))
}

/// Writes a file only its owner can read, whole or not at all.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    muster_runtime::fsutil::write_private(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn users_are_nkeys_kept_across_runs_and_targets_are_limited() {
        let dir = tempfile::tempdir().unwrap();
        let s = Subjects::default();
        let web01 = TargetName::new("web01").unwrap();
        let first = write_config(dir.path(), &s, std::slice::from_ref(&web01)).unwrap();
        let conf = fs::read_to_string(&first.config).unwrap();
        let abs = dir.path().canonicalize().unwrap();
        let seed_path = abs.join("web01.nk");
        assert_eq!(fs::read_to_string(dir.path().join("web01.env")).unwrap(), format!("NATS_NKEY={}\n", seed_path.display()));
        let seed = muster_runtime::nats::read_seed(&seed_path).unwrap();
        let public = nkeys::KeyPair::from_seed(&seed).unwrap().public_key();
        assert!(conf.contains(&format!("{{ nkey: \"{public}\", permissions: {{")), "{conf}");
        assert!(!conf.contains(&seed) && !conf.contains("password"), "only public keys: {conf}");
        assert!(conf.contains("\"muster.result.web01.>\""), "{conf}");
        assert!(conf.contains("\"muster-target-web01\": {"), "{conf}");
        assert!(
            conf.contains("{ service: { account: \"muster\", subject: \"muster.poll.web01\" } }"),
            "web01's account imports its poll subject: {conf}"
        );
        assert!(
            conf.contains("{ service: { account: \"muster-target-web01\", subject: \"muster.target.web01.control\" } }"),
            "the Muster account imports web01's control subject: {conf}"
        );
        assert!(conf.contains("\"muster-viewer\": {"), "the viewer's own account: {conf}");
        assert!(
            conf.contains("{ service: \"muster.api.read.>\", response_type: stream }"),
            "the read API, answered in parts: {conf}"
        );
        assert!(
            conf.contains("{ service: { account: \"muster\", subject: \"muster.api.read.>\" } }")
                && !conf.contains("subject: \"muster.api.admin"),
            "the viewer imports the reads and no account imports the changes: {conf}"
        );
        for f in ["auth.conf", "web01.nk", "web01.env", "muster-master.nk", "muster-admin.nk", "muster-viewer.nk"] {
            assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
        }

        // A second run for another target keeps web01 (and its key).
        let second = write_config(dir.path(), &s, &[TargetName::new("web02").unwrap()]).unwrap();
        let names: Vec<&str> = second.users.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["muster-master", "muster-admin", "muster-viewer", "web01", "web02"]);
        assert_eq!(muster_runtime::nats::read_seed(&seed_path).unwrap(), seed);
        assert!(second.converted.is_empty());

        // Revoking web01: out of the configuration, its files gone, web02 kept.
        let web02_env = fs::read_to_string(dir.path().join("web02.env")).unwrap();
        let removed = remove_target(dir.path(), &s, &web01).unwrap();
        let conf = fs::read_to_string(&removed.config).unwrap();
        assert!(!conf.contains(&public) && !conf.contains("web01"), "{conf}");
        assert!(!dir.path().join("web01.env").exists() && !seed_path.exists());
        assert_eq!(fs::read_to_string(dir.path().join("web02.env")).unwrap(), web02_env);
        assert!(matches!(remove_target(dir.path(), &s, &web01), Err(RemoveError::NotFound { .. })));
        let master = TargetName::new("muster-master").unwrap();
        assert!(matches!(remove_target(dir.path(), &s, &master), Err(RemoveError::NotFound { .. })));

        let err = write_config(dir.path(), &s, &[TargetName::new("muster-admin").unwrap()]).unwrap_err();
        assert!(err.to_string().contains("Muster's own NATS user"), "{err}");
    }

    #[test]
    fn users_with_passwords_from_an_earlier_run_become_nkeys() {
        let dir = tempfile::tempdir().unwrap();
        let s = Subjects::default();
        for user in ["muster-master", "muster-admin", "web01"] {
            write_private(&dir.path().join(format!("{user}.env")), &format!("NATS_USER={user}\nNATS_PASSWORD=secret{user}\n"))
                .unwrap();
        }
        let written = write_config(dir.path(), &s, &[]).unwrap();
        assert_eq!(written.converted, ["muster-master", "muster-admin", "web01"], "the viewer is new: a key, nothing to convert");
        let conf = fs::read_to_string(&written.config).unwrap();
        assert!(!conf.contains("secret") && !conf.contains("password"), "{conf}");
        let env = fs::read_to_string(dir.path().join("web01.env")).unwrap();
        assert_eq!(env.lines().count(), 1, "{env}");
        assert!(env.starts_with("NATS_NKEY="), "{env}");
        assert!(write_config(dir.path(), &s, &[]).unwrap().converted.is_empty(), "converted once");
    }

    #[test]
    fn a_missing_or_exposed_seed_is_not_replaced_silently() {
        let dir = tempfile::tempdir().unwrap();
        let s = Subjects::default();
        let web01 = TargetName::new("web01").unwrap();
        write_config(dir.path(), &s, std::slice::from_ref(&web01)).unwrap();
        let seed = dir.path().join("web01.nk");
        fs::set_permissions(&seed, fs::Permissions::from_mode(0o644)).unwrap();
        let err = write_config(dir.path(), &s, &[]).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err:#}");
        fs::remove_file(&seed).unwrap();
        let err = write_config(dir.path(), &s, &[]).unwrap_err();
        assert!(err.to_string().contains("is missing"), "{err:#}");
    }
}
