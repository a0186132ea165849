//! Secret parameter values, sealed for one target.
//!
//! Each agent holds an x25519 key pair (nkeys' `XKey`, seed in its state
//! directory, mode 0600) and gives its public key when it enlists. For a
//! start that carries secrets the master makes a key pair of its own for
//! that start, seals each value for the target's public key (a NaCl box:
//! only the holder of the target's private key opens it) and puts the
//! ciphertexts and its own public key in the start entry. The desired-state
//! stream, and whoever reads it, holds only ciphertext; the master keeps
//! nothing, and the target opens the values only to give them to the step.

use std::collections::BTreeMap;

use data_encoding::BASE64;
use nkeys::XKey;
use serde::{Deserialize, Serialize};

use crate::params::Values;

/// A start's secret values, each sealed for the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The sealer's public key (`X…`), made for this start.
    pub by: String,
    /// Parameter name → base64 of the sealed value.
    pub values: BTreeMap<String, String>,
}

/// Why values could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("'{0}' is not an x25519 public key")]
    BadKey(String),
    #[error("sealing failed: {0}")]
    Seal(String),
    #[error("secret parameter '{0}' could not be opened with this target's key (sealed for another key?)")]
    Open(String),
}

/// A new key pair (an agent's, or a master's for one start).
pub fn new_key() -> XKey {
    XKey::new()
}

/// Seals `values` for the holder of `recipient` (a public key).
///
/// # Errors
/// A public key that does not decode.
pub fn seal(values: &Values, recipient: &str) -> Result<Sealed, SealError> {
    let to = XKey::from_public_key(recipient).map_err(|_| SealError::BadKey(recipient.to_owned()))?;
    let sender = XKey::new();
    let mut out = BTreeMap::new();
    for (k, v) in values {
        let boxed = sender.seal(v.as_bytes(), &to).map_err(|e| SealError::Seal(e.to_string()))?;
        out.insert(k.clone(), BASE64.encode(&boxed));
    }
    Ok(Sealed { by: sender.public_key(), values: out })
}

/// Opens `sealed` with the target's key pair.
///
/// # Errors
/// A value sealed for another key, damaged, or not UTF-8.
pub fn open(sealed: &Sealed, key: &XKey) -> Result<Values, SealError> {
    let from = XKey::from_public_key(&sealed.by).map_err(|_| SealError::BadKey(sealed.by.clone()))?;
    sealed
        .values
        .iter()
        .map(|(k, v)| {
            let fail = || SealError::Open(k.clone());
            let boxed = BASE64.decode(v.as_bytes()).map_err(|_| fail())?;
            let plain = key.open(&boxed, &from).map_err(|_| fail())?;
            Ok((k.clone(), String::from_utf8(plain).map_err(|_| fail())?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_target_opens_what_was_sealed_for_it() {
        let target = new_key();
        let values: Values = [("token".to_owned(), "s3cret".to_owned())].into();
        let sealed = seal(&values, &target.public_key()).unwrap();
        assert!(!serde_json::to_string(&sealed).unwrap().contains("s3cret"));
        assert_eq!(open(&sealed, &target).unwrap(), values);
        assert_eq!(open(&sealed, &new_key()), Err(SealError::Open("token".into())));
        assert!(matches!(seal(&values, "nope"), Err(SealError::BadKey(_))));
    }
}
