//! `musterctl auth nats-config`: nats-server accounts and users for the
//! master, for operators, and for each target.
//!
//! Each target gets an account of its own ([`muster_shared::perms::target_account`])
//! that imports from the Muster account only its own subjects, and its user
//! in it is limited to the same subjects. The account is what confines the
//! *answers*: nats-server never checks a request's reply subject against the
//! requester's permissions, and JetStream and the master answer with their
//! own rights; across an account boundary the server gives the request a
//! reply subject of its own and maps the answer back into the target's
//! account, so it cannot land in the buckets, another target's subjects or
//! the API. The master and the operators share the Muster account, with
//! JetStream, unrestricted.
//!
//! Each user's password is generated once and kept in `<dir>/<user>.env`
//! (`NATS_USER=…`, `NATS_PASSWORD=…`, mode 0600): that file is what the
//! process is started with (`env_file:` in compose, `EnvironmentFile=` in
//! systemd). Running the command again for a new target keeps everyone
//! else's password, so adding a target is: run it again, reload nats-server
//! twice (`nats-server --signal reload`; 2.15.1 wires a new account's
//! imports only at the second reload), hand the new file to the new target.
//! Removing one is deleting its `.env` file and running it again.
//!
//! When the directory holds a CA (`auth init`, in [`init`]), every `.env`
//! file also names it (`NATS_CA=`, an absolute path), so that a file alone
//! is all a process needs.

pub mod init;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use muster_shared::name::TargetName;
use muster_shared::perms::{self, Permissions, TargetAccount};
use muster_shared::subject::Subjects;

/// The master daemon's user: unrestricted in its account (it creates the
/// streams, buckets and consumers).
pub const MASTER_USER: &str = "muster-master";

/// The operators' user (`musterctl`, the `nats` CLI): unrestricted too.
pub const ADMIN_USER: &str = "muster-admin";

/// Names no target may have: the users above, and the identities whose
/// files `auth init` links to theirs (`master.env`, `admin.env`).
const RESERVED: [&str; 4] = [MASTER_USER, ADMIN_USER, "master", "admin"];

/// The authorization file, to `include` from the nats-server configuration.
pub const CONFIG_FILE: &str = "auth.conf";

/// One NATS user: its name, password, and, for a target, its own account
/// (`None`: a user of the Muster account, unrestricted).
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: String,
    pub account: Option<TargetAccount>,
}

/// What [`write_config`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub config: PathBuf,
    /// Each user with its environment file.
    pub users: Vec<(String, PathBuf)>,
}

/// Writes `<dir>/auth.conf` and one `<user>.env` per user: the master, the
/// operators, `targets`, and every target that already has a file in `dir`.
///
/// # Errors
/// When a target is named like a reserved user, or a file cannot be
/// written; nothing already there is lost.
pub fn write_config(dir: &Path, subjects: &Subjects, targets: &[TargetName]) -> anyhow::Result<Written> {
    for t in targets {
        if RESERVED.contains(&t.as_str()) {
            bail!("'{t}' is the name of one of Muster's own NATS users; give the target another name");
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names: Vec<TargetName> = known_targets(dir)?;
    names.extend(targets.iter().cloned());
    names.sort();
    names.dedup();

    let mut users = Vec::new();
    for name in [MASTER_USER, ADMIN_USER] {
        users.push(User { name: name.to_owned(), password: password_for(dir, name)?, account: None });
    }
    for t in &names {
        users.push(User {
            name: t.to_string(),
            password: password_for(dir, t.as_str())?,
            account: Some(perms::target_account(subjects, t)),
        });
    }
    let ca = dir.join(init::CA_FILE);
    let ca = ca.exists().then(|| ca.canonicalize()).transpose().with_context(|| format!("resolving {}", ca.display()))?;
    for u in &users {
        name_the_ca(&env_file(dir, &u.name), ca.as_deref())?;
    }
    let config = dir.join(CONFIG_FILE);
    write_private(&config, &render(subjects, &users))?;
    Ok(Written { config, users: users.iter().map(|u| (u.name.clone(), env_file(dir, &u.name))).collect() })
}

/// The `accounts` block for `users`: the Muster account with the
/// unrestricted users, and one account per target user.
pub fn render(subjects: &Subjects, users: &[User]) -> String {
    let q = |s: &str| format!("\"{s}\"");
    let list = |items: &[String]| items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
    let muster = perms::muster_account(subjects);
    let mut out = String::from(
        "# Written by `musterctl auth nats-config`: include it from nats-server.conf.\n\
         # One account for Muster (JetStream, the master, the operators) and one per\n\
         # target, which imports only the subjects that carry its own name, so that\n\
         # every answer to a target goes back into the target's own account.\n\
         accounts {\n",
    );
    let _ = writeln!(out, "  {}: {{\n    jetstream: enabled\n    users: [", q(&muster));
    for u in users.iter().filter(|u| u.account.is_none()) {
        let _ = writeln!(out, "      {{ user: {}, password: {} }}", q(&u.name), q(&u.password));
    }
    out.push_str("    ]\n    # Public, but only accounts in this file exist; each imports its own part.\n    exports: [\n");
    for e in perms::muster_exports(subjects) {
        let _ = writeln!(out, "      {{ service: {} }}", q(&e));
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
            "      {{ user: {}, password: {}, permissions: {{\n          \
             publish: {{ allow: [{}] }}\n          \
             subscribe: {{ allow: [{}] }}\n          \
             allow_responses: {}\n      }} }}",
            q(&u.name),
            q(&u.password),
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

/// The user's password from its environment file, or a new one (written).
fn password_for(dir: &Path, user: &str) -> anyhow::Result<String> {
    let path = env_file(dir, user);
    match fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .find_map(|l| l.strip_prefix("NATS_PASSWORD="))
            .map(str::to_owned)
            .filter(|p| !p.is_empty())
            .with_context(|| format!("{} has no NATS_PASSWORD line; delete it to get a new password", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let password = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            write_private(&path, &format!("NATS_USER={user}\nNATS_PASSWORD={password}\n"))?;
            Ok(password)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Makes the environment file at `path` name `ca` (`NATS_CA=`), or no CA.
fn name_the_ca(path: &Path, ca: Option<&Path>) -> anyhow::Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines: Vec<String> = text.lines().filter(|l| !l.starts_with("NATS_CA=")).map(str::to_owned).collect();
    if let Some(ca) = ca {
        lines.push(format!("NATS_CA={}", ca.display()));
    }
    let new = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    if new != text {
        write_private(path, &new)?;
    }
    Ok(())
}

/// Writes a file only its owner can read, whole or not at all.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    muster_runtime::fsutil::write_private(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn targets_are_limited_and_passwords_survive_a_second_run() {
        let dir = tempfile::tempdir().unwrap();
        let s = Subjects::default();
        let web01 = TargetName::new("web01").unwrap();
        let first = write_config(dir.path(), &s, std::slice::from_ref(&web01)).unwrap();
        let conf = fs::read_to_string(&first.config).unwrap();
        assert!(conf.contains("{ user: \"muster-master\", password: \""), "{conf}");
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
        let mode = fs::metadata(&first.config).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let pw = fs::read_to_string(dir.path().join("web01.env")).unwrap();

        // A second run for another target keeps web01 (and its password).
        let second = write_config(dir.path(), &s, &[TargetName::new("web02").unwrap()]).unwrap();
        let names: Vec<&str> = second.users.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["muster-master", "muster-admin", "web01", "web02"]);
        assert_eq!(fs::read_to_string(dir.path().join("web01.env")).unwrap(), pw);

        let err = write_config(dir.path(), &s, &[TargetName::new("muster-admin").unwrap()]).unwrap_err();
        assert!(err.to_string().contains("Muster's own NATS user"), "{err}");
    }
}
