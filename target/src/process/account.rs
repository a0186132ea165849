//! Running a step as another Unix account (a step's `user` and `group`).
//!
//! Only a root agent can switch accounts, so a step that names a user is
//! refused on any other agent, and when the user or group does not exist on
//! this host. The refusal is a [`RunAsError`] that becomes the step's
//! spawn-failure message, so it lands in the run record instead of ending
//! the agent.
//!
//! The account is looked up in the parent (`getpwnam`, `getgrnam`,
//! `getgrouplist` may read files and allocate). The child only makes the
//! three system calls, in the order that keeps the right to make the next:
//! `setgroups`, `setgid`, then `setuid` — in `pre_exec`, because std's
//! `CommandExt::groups` is not stable and std's own `uid`/`gid` run before
//! `pre_exec`, when `setgroups` would no longer be allowed.
//!
//! The agent keeps its own files: output comes back through pipes and the
//! kept output is written by the agent, so nothing it writes is owned by the
//! step's user.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::unistd::{geteuid, getgrouplist, setgid, setgroups, setuid, Gid, Group, Uid, User};
use tokio::process::Command;

/// Why a step cannot run as the account it names.
#[derive(Debug, thiserror::Error)]
pub enum RunAsError {
    #[error("cannot run as user '{user}': the agent is not running as root (uid {uid})")]
    NotRoot { user: String, uid: Uid },
    #[error("cannot run as user '{0}': no such user on this host")]
    NoUser(String),
    #[error("cannot run as group '{0}': no such group on this host")]
    NoGroup(String),
    #[error("cannot run as user '{user}': looking up the account: {source}")]
    Lookup { user: String, source: nix::Error },
}

/// A step's account, resolved on this host.
#[derive(Debug, Clone)]
pub struct Account {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    /// `HOME`, `USER`, `LOGNAME`, `SHELL` from the passwd entry.
    env: BTreeMap<String, String>,
    home: PathBuf,
}

impl Account {
    /// Looks up `user` (and `group`, else the user's primary group), and
    /// the user's supplementary groups. Refused unless the agent is root.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Account, RunAsError> {
        let uid = geteuid();
        if !uid.is_root() {
            return Err(RunAsError::NotRoot { user: user.to_owned(), uid });
        }
        let lookup = |source| RunAsError::Lookup { user: user.to_owned(), source };
        let entry = User::from_name(user).map_err(lookup)?.ok_or_else(|| RunAsError::NoUser(user.to_owned()))?;
        let gid = match group {
            Some(name) => Group::from_name(name).map_err(lookup)?.ok_or_else(|| RunAsError::NoGroup(name.to_owned()))?.gid,
            None => entry.gid,
        };
        // A name from passwd has no NUL, but do not trust that with a panic.
        let c_name = CString::new(user).map_err(|_| RunAsError::NoUser(user.to_owned()))?;
        // Like initgroups(3): the user's groups plus the chosen primary group.
        let groups = getgrouplist(&c_name, gid).map_err(lookup)?;
        let home = entry.dir.clone();
        let env = BTreeMap::from([
            ("HOME".to_owned(), home.display().to_string()),
            ("USER".to_owned(), entry.name.clone()),
            ("LOGNAME".to_owned(), entry.name.clone()),
            ("SHELL".to_owned(), entry.shell.display().to_string()),
        ]);
        Ok(Account { uid: entry.uid, gid, groups, env, home })
    }

    /// Makes `command` run as this account: its groups, group and user, and
    /// the account's variables (the step's own, set after, win). The
    /// working directory is `cwd` if the step names one, else the home, or
    /// `/` when the home is not a directory (as `login` does; `nobody`'s
    /// home is usually `/nonexistent`).
    #[allow(unsafe_code)] // pre_exec: the only way to set the groups before the user
    pub fn apply(&self, command: &mut Command, cwd: Option<&Path>) {
        command.envs(&self.env);
        let dir = match cwd {
            Some(dir) => dir,
            None if self.home.is_dir() => self.home.as_path(),
            None => Path::new("/"),
        };
        command.current_dir(dir);
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        // SAFETY: the closure runs in the forked child before exec; it only
        // makes system calls (setgroups, setgid, setuid) on data prepared in
        // the parent, with no allocation and no locks.
        unsafe {
            command.pre_exec(move || {
                setgroups(&groups)?;
                setgid(gid)?;
                setuid(uid)?;
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_user_or_group_is_refused_by_name() {
        let err = Account::resolve("no-such-user-muster", None).unwrap_err();
        if geteuid().is_root() {
            assert!(matches!(err, RunAsError::NoUser(ref u) if u == "no-such-user-muster"), "{err}");
            let err = Account::resolve("root", Some("no-such-group-muster")).unwrap_err();
            assert!(matches!(err, RunAsError::NoGroup(ref g) if g == "no-such-group-muster"), "{err}");
        } else {
            assert!(matches!(err, RunAsError::NotRoot { .. }), "{err}");
        }
    }
}
