//! The web console's users file: who may sign in to `muster-master --http`,
//! with which role.
//!
//! `musterctl auth console-user` writes it (mode 0600) and the master reads
//! it (`--http-users`, refusing a file others can read). Passwords are kept
//! only as Argon2id PHC strings, never in clear. The two roles are the two
//! kinds of API operation ([`Access`]): a viewer may do what only reads, an
//! admin everything, so the console and the NATS API cannot disagree about
//! what a role may do.

use serde::{Deserialize, Serialize};

use crate::api::Access;

/// The file's name in the directory `musterctl auth` writes to.
pub const USERS_FILE: &str = "console-users.json";

/// A console role.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumString, strum::VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// Sees everything and may act (force poll, start, defect, …).
    Admin,
    /// Sees everything, changes nothing.
    Viewer,
}

impl Role {
    /// Whether this role may call an operation of `access`.
    pub fn may(self, access: Access) -> bool {
        match self {
            Role::Admin => true,
            Role::Viewer => access == Access::Read,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The whole file: `{"v":1,"users":[...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersFile {
    pub v: u32,
    pub users: Vec<ConsoleUser>,
}

/// One user who may sign in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleUser {
    pub name: String,
    pub role: Role,
    /// Argon2id, PHC string form (`$argon2id$v=19$...`).
    pub password_hash: String,
}

/// Why a user name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("console user name '{0}' must be 1 to 64 letters, digits, '.', '_', '-' or '@'")]
pub struct BadUserName(pub String);

/// Checks a console user name: short, printable, nothing that needs
/// escaping in a log line or a page.
///
/// # Errors
/// [`BadUserName`].
pub fn check_user_name(name: &str) -> Result<(), BadUserName> {
    let ok =
        (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(BadUserName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Op;

    #[test]
    fn a_viewer_may_only_read_and_an_admin_may_do_everything() {
        for &op in Op::ALL {
            assert!(Role::Admin.may(op.access()), "{op:?}");
            assert_eq!(Role::Viewer.may(op.access()), op.access() == Access::Read, "{op:?}");
        }
        assert!(!Role::Viewer.may(Op::TargetForcePoll.access()));
        assert_eq!("viewer".parse::<Role>(), Ok(Role::Viewer));
        assert_eq!(serde_json::to_value(Role::Admin).unwrap(), "admin");
    }

    #[test]
    fn user_names_are_short_and_plain() {
        for good in ["alice", "ops.team", "a_b-c", "x@example.org"] {
            assert!(check_user_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "<script>", "a\nb", &"x".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }
}
