//! Validated names.
//!
//! A target name becomes a NATS subject token, a consumer name, a KV key and
//! (with `--name`) a permission, so it must never contain `.`, `*`, `>`,
//! whitespace or anything else NATS would treat specially. Validation happens
//! once, when a string becomes a [`TargetName`] or [`JobName`]; everything
//! downstream can then build subjects without re-checking.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest name accepted, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// Why a string is not a valid name. The message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name '{name}' is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong { kind: &'static str, name: String, len: usize },
    #[error("{kind} name '{name}' contains {what}; use only letters, digits, '-' and '_'")]
    BadChar { kind: &'static str, name: String, what: String },
}

fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong { kind, name: name.to_owned(), len });
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        let what = match c {
            '.' => "'.' (a NATS subject separator)".to_owned(),
            '*' | '>' => format!("'{c}' (a NATS wildcard)"),
            c if c.is_whitespace() => "whitespace".to_owned(),
            c => format!("'{}'", c.escape_default()),
        };
        return Err(NameError::BadChar { kind, name: name.to_owned(), what });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Validates `name`.
            ///
            /// # Errors
            /// [`NameError`] when the name is empty, too long, or has a
            /// character other than ASCII letters, digits, `-` and `_`.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate($kind, &name)?;
                Ok(Self(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// An enlisted target's name: its subject token and consumer name.
    TargetName,
    "target"
);
name_type!(
    /// A job's unique, human-friendly name (the key in the jobs bucket).
    JobName,
    "job"
);
name_type!(
    /// A target group's name.
    GroupName,
    "group"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_tokens() {
        for ok in ["web01", "a", "A_b-9", &"x".repeat(64)] {
            assert!(TargetName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_what_nats_would_misread() {
        for (bad, why) in [
            ("", "empty"),
            ("a.b", "subject separator"),
            ("a*", "wildcard"),
            ("a>", "wildcard"),
            ("a b", "whitespace"),
            ("tab\t", "whitespace"),
            ("é", "'\\u{e9}'"),
        ] {
            let err = TargetName::new(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let err = TargetName::new("x".repeat(65)).unwrap_err().to_string();
        assert!(err.contains("65 characters"), "{err}");
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<TargetName>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<TargetName>("\"no.pe\"").is_err());
    }
}
