//! Runs that happened, counted against the runs history shows.
//!
//! The tests that claim "every run once" (a cluster losing a node and a
//! master, the fault scenarios) need a count that can fail: a test job
//! appends its `$MUSTER_RUN_ID` to a file each time it really runs
//! ([`append_run_id`]), and history must then hold each of those runs once,
//! finished, and nothing else that ran.
//!
//! `skipped` records are not runs. A 1-second schedule fire that finds the
//! previous run still going (a slow disk is enough) is recorded `skipped`, the
//! first such fire per run only. So each `skipped` record must name a run that
//! happened, no run may be named twice, and a skipped run must not have run.
//! That bounds them: at most one per run that happened.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::{s, wait_for_described, Cluster};

/// A step command that appends the run's id to `file`: one line per run that
/// really happened.
pub fn append_run_id(file: &Path) -> String {
    format!("echo \"$MUSTER_RUN_ID\" >> '{}'", file.display())
}

/// The run ids a job appended to `file`, in order; empty before its first run.
pub fn run_ids(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Waits until the runs of `job` are over: every one of `targets` reports
/// nothing running and nothing spooled, and every run that `file` says
/// happened is in history, finished. Returns the tally and the history it
/// counted (every record, oldest first). Disable the job first.
///
/// # Panics
/// When that does not happen within `timeout`; the failure shows the tally.
pub fn settle(c: &Cluster, job: &str, targets: &[&str], file: &Path, timeout: Duration) -> (RunTally, Vec<Value>) {
    let mut poll = vec!["target", "force-poll"];
    poll.extend_from_slice(targets);
    wait_for_described(
        &format!("every run of {job} that happened to be in history, finished"),
        timeout,
        || {
            let reports = c.ctl(&poll).ok()?;
            let quiet = reports
                .as_array()?
                .iter()
                .all(|r| r["report"]["spooled"] == 0 && r["report"]["running"].as_array().is_some_and(Vec::is_empty));
            let history = c.ctl(&["history", "--job", job]).ok()?;
            let history: Vec<Value> = serde_json::from_value(history).ok()?;
            let tally = RunTally::count(&run_ids(file), &history);
            (quiet && tally.settled()).then_some((tally, history))
        },
        || {
            let history: Vec<Value> =
                c.ctl(&["history", "--job", job]).ok().and_then(|h| serde_json::from_value(h).ok()).unwrap_or_default();
            let tally = RunTally::count(&run_ids(file), &history);
            format!("{tally}; {tally:?}; targets report {:?}", c.ctl(&poll))
        },
    )
}

/// Runs that happened against history records. Build it with [`RunTally::count`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunTally {
    /// Distinct runs that happened.
    pub happened: usize,
    /// History records of runs (every outcome but `skipped`).
    pub recorded: usize,
    /// `skipped` records.
    pub skipped: usize,
    /// Runs that happened more than once under one run id, plus history
    /// records beyond the first for one run id.
    pub duplicates: usize,
    /// Runs that happened with no finished record in history.
    pub lost: BTreeSet<String>,
    /// Records of runs still `running`.
    pub unfinished: BTreeSet<String>,
    /// Records of runs that never happened.
    pub phantoms: BTreeSet<String>,
    /// Finished runs whose outcome is not `succeeded`: run id → outcome.
    pub failed: BTreeMap<String, String>,
    /// `skipped` records that name no run that happened, name a run another
    /// `skipped` record named already, or ran after all: run id → why.
    pub bad_skips: BTreeMap<String, String>,
}

impl RunTally {
    /// Counts `happened` (run ids, one per real run, as [`run_ids`] reads
    /// them) against `history` (every record `musterctl history` shows).
    pub fn count(happened: &[String], history: &[Value]) -> RunTally {
        let mut times_ran: BTreeMap<&str, usize> = BTreeMap::new();
        for id in happened {
            *times_ran.entry(id.as_str()).or_default() += 1;
        }
        let mut records: BTreeMap<&str, usize> = BTreeMap::new();
        for r in history {
            *records.entry(s(r, "run_id")).or_default() += 1;
        }
        let extra = |counts: &BTreeMap<&str, usize>| counts.values().map(|n| n - 1).sum::<usize>();
        let mut t =
            RunTally { happened: times_ran.len(), duplicates: extra(&times_ran) + extra(&records), ..RunTally::default() };

        let mut finished = BTreeSet::new();
        let mut named = BTreeSet::new();
        for r in history {
            let (id, outcome) = (s(r, "run_id"), s(r, "outcome"));
            if outcome == "skipped" {
                t.skipped += 1;
                let message = s(r, "message");
                let names = times_ran.keys().find(|ran| message.contains(*ran));
                let why = if times_ran.contains_key(id) {
                    Some("it ran".to_owned())
                } else {
                    match names {
                        None => Some(format!("names no run that happened: {message:?}")),
                        Some(ran) if !named.insert(*ran) => Some(format!("names run {ran}, already named by another skip")),
                        Some(_) => None,
                    }
                };
                if let Some(why) = why {
                    t.bad_skips.insert(id.to_owned(), why);
                }
                continue;
            }
            t.recorded += 1;
            if !times_ran.contains_key(id) {
                t.phantoms.insert(id.to_owned());
            }
            match outcome {
                "running" => {
                    t.unfinished.insert(id.to_owned());
                }
                "succeeded" => {
                    finished.insert(id);
                }
                other => {
                    finished.insert(id);
                    t.failed.insert(id.to_owned(), other.to_owned());
                }
            }
        }
        t.lost = times_ran.keys().filter(|id| !finished.contains(*id)).map(|id| (*id).to_owned()).collect();
        t
    }

    /// Every run that happened is in history, finished, and none is still
    /// running: there is nothing more to wait for.
    pub fn settled(&self) -> bool {
        self.lost.is_empty() && self.unfinished.is_empty()
    }

    /// What is wrong, one line each; empty when every run that happened is
    /// in history once, succeeded, and every `skipped` record is accounted for.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.duplicates > 0 {
            p.push(format!("{} duplicate(s)", self.duplicates));
        }
        if !self.lost.is_empty() {
            p.push(format!("lost (ran, not in history as finished): {:?}", self.lost));
        }
        if !self.phantoms.is_empty() {
            p.push(format!("in history, never ran: {:?}", self.phantoms));
        }
        if !self.failed.is_empty() {
            p.push(format!("did not succeed: {:?}", self.failed));
        }
        if !self.bad_skips.is_empty() {
            p.push(format!("skipped records not accounted for: {:?}", self.bad_skips));
        }
        if self.skipped > self.happened {
            p.push(format!("{} skipped records for {} runs: at most one per run", self.skipped, self.happened));
        }
        p
    }
}

impl fmt::Display for RunTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "runs happened {}, in history {} (and {} skipped), duplicates {}, lost {}",
            self.happened,
            self.recorded,
            self.skipped,
            self.duplicates,
            self.lost.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rec(id: &str, outcome: &str, message: &str) -> Value {
        json!({"run_id": id, "outcome": outcome, "message": message})
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_clean_history_with_a_skip_naming_a_run_has_no_problems() {
        let h = [rec("a", "succeeded", ""), rec("x", "skipped", "already running (run a)"), rec("b", "succeeded", "")];
        let t = RunTally::count(&ids(&["a", "b"]), &h);
        assert!(t.settled() && t.problems().is_empty(), "{t:?}");
        assert_eq!((t.happened, t.recorded, t.skipped, t.duplicates), (2, 2, 1, 0));
    }

    #[test]
    fn every_kind_of_wrong_is_found() {
        // Ran twice, shown twice, lost, never ran, failed.
        let t = RunTally::count(
            &ids(&["a", "a", "b", "c"]),
            &[rec("a", "succeeded", ""), rec("b", "succeeded", ""), rec("b", "succeeded", ""), rec("d", "failed", "")],
        );
        assert_eq!(t.duplicates, 2, "{t:?}");
        assert_eq!(t.lost, BTreeSet::from(["c".to_owned()]));
        assert_eq!(t.phantoms, BTreeSet::from(["d".to_owned()]));
        assert_eq!(t.failed.len(), 1);
        assert!(!t.settled());
        assert_eq!(t.problems().len(), 4, "{:?}", t.problems());
    }

    #[test]
    fn skips_must_name_a_distinct_run_that_happened_and_not_run() {
        let h = [
            rec("a", "succeeded", ""),
            rec("x", "skipped", "already running (run a)"),
            rec("y", "skipped", "already running (run a)"),
            rec("z", "skipped", "already running (run nobody)"),
            rec("w", "skipped", "already running (run a)"),
        ];
        let t = RunTally::count(&ids(&["a", "w"]), &h);
        assert_eq!(t.bad_skips.keys().collect::<Vec<_>>(), ["w", "y", "z"], "{t:?}");
        assert!(t.problems().iter().any(|p| p.contains("4 skipped records for 2 runs")), "{:?}", t.problems());
    }

    #[test]
    fn a_run_still_running_is_not_settled() {
        let t = RunTally::count(&ids(&["a"]), &[rec("a", "running", "")]);
        assert!(!t.settled());
        assert_eq!(t.unfinished.len(), 1);
    }
}
