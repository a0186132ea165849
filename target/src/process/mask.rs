//! Hides secret parameter values in a step's output before it is kept,
//! published live or written to the kept file: each occurrence becomes
//! [`muster_shared::params::MASK`].
//!
//! Output arrives in pieces of any size, so a secret can be split between
//! two reads: the masker holds back the end of a piece while it could be
//! the start of a secret (at most the longest secret's length less one
//! byte), and lets it go with the next piece or at the pipe's end.

use muster_shared::params::MASK;

/// One pipe's masker.
#[derive(Debug)]
pub struct Masker {
    secrets: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

impl Masker {
    /// A masker for `secrets` (empty values ignored); `None` when there is
    /// nothing to hide.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Option<Masker> {
        let mut secrets: Vec<Vec<u8>> = secrets.into_iter().filter(|s| !s.is_empty()).map(|s| s.as_bytes().to_vec()).collect();
        // The longest first, so a secret containing another is hidden whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        (!secrets.is_empty()).then_some(Masker { secrets, pending: Vec::new() })
    }

    /// The masked output of `data`, less what is held back.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        self.drain(false)
    }

    /// Everything still held back, masked: the pipe has ended.
    pub fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    fn drain(&mut self, end: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pending.len());
        let mut i = 0;
        while i < self.pending.len() {
            let rest = &self.pending[i..];
            if let Some(s) = self.secrets.iter().find(|s| rest.starts_with(s)) {
                out.extend_from_slice(MASK.as_bytes());
                i += s.len();
            } else if !end && self.secrets.iter().any(|s| s.starts_with(rest)) {
                break;
            } else {
                out.push(rest[0]);
                i += 1;
            }
        }
        self.pending.drain(..i);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(secrets: &[&str], pieces: &[&str]) -> String {
        let mut m = Masker::new(secrets.iter().copied()).unwrap();
        let mut out = Vec::new();
        for p in pieces {
            out.extend(m.push(p.as_bytes()));
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hides_every_occurrence_even_split_between_reads() {
        assert_eq!(run(&["s3cret"], &["token=s3cret; again s3cret\n"]), "token=***; again ***\n");
        assert_eq!(run(&["s3cret"], &["token=s3", "cr", "et!"]), "token=***!");
        assert_eq!(run(&["s3cret"], &["ends with s3cr"]), "ends with s3cr");
        assert_eq!(run(&["ab", "abcd"], &["xabcdx ab"]), "x***x ***");
        assert!(Masker::new([""]).is_none());
    }

    #[test]
    fn holds_back_only_a_possible_start() {
        let mut m = Masker::new(["s3cret"]).unwrap();
        assert_eq!(m.push(b"hello s3"), b"hello ");
        assert_eq!(m.push(b"x"), b"s3x");
    }
}
