//! The run index (`muster-runs`, key = run id): where each run's kept record
//! sits in `MUSTER_RESULTS`, so `run show` reads one message instead of the
//! stream.
//!
//! The master's ingest writes it; `musterctl` reads it. It is an
//! accelerator, never the truth: the stream is. A reader that finds no entry
//! (no master yet, ingest behind) or an entry that no longer matches the
//! message at its sequence falls back to reading the stream.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::name::TargetName;

/// One run's entry: a final record of the run when it has one (copies of
/// a final record are the same record), else its start record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIndexEntry {
    #[serde(default = "v")]
    pub v: u32,
    pub target: TargetName,
    pub job_id: Uuid,
    /// The record's stream sequence in `MUSTER_RESULTS`.
    pub seq: u64,
    /// Whether that record is final (a final record is never replaced by a
    /// start record).
    #[serde(rename = "final")]
    pub is_final: bool,
}

fn v() -> u32 {
    crate::PROTOCOL_VERSION
}

impl RunIndexEntry {
    /// Whether `self` should replace `have`: a final record wins over a
    /// start record, and of two records alike the earlier in the stream
    /// wins (the copy history keeps). Order-free: whatever order the
    /// records are indexed in, the same entry stays.
    pub fn supersedes(&self, have: &RunIndexEntry) -> bool {
        (self.is_final, std::cmp::Reverse(self.seq)) > (have.is_final, std::cmp::Reverse(have.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, is_final: bool) -> RunIndexEntry {
        RunIndexEntry { v: 1, target: TargetName::new("web01").unwrap(), job_id: Uuid::nil(), seq, is_final }
    }

    #[test]
    fn final_wins_then_the_first_copy_whatever_the_order() {
        let records = [entry(10, false), entry(12, true), entry(30, false), entry(40, true)];
        // Every order of indexing ends with the first final record.
        for rotation in 0..records.len() {
            let mut order = records.to_vec();
            order.rotate_left(rotation);
            for reversed in [false, true] {
                if reversed {
                    order.reverse();
                }
                let mut kept = order[0].clone();
                for r in &order[1..] {
                    if r.supersedes(&kept) {
                        kept = r.clone();
                    }
                }
                assert_eq!(kept, entry(12, true), "{order:?}");
            }
        }
        assert!(!entry(12, true).supersedes(&entry(12, true)), "a replay changes nothing");
    }

    #[test]
    fn the_wire_form_is_stable() {
        let e = entry(7, true);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"v":1,"target":"web01","job_id":"00000000-0000-0000-0000-000000000000","seq":7,"final":true}"#);
        assert_eq!(serde_json::from_str::<RunIndexEntry>(&json).unwrap(), e);
    }
}
