//! The status summary (`musterctl status`): targets by status, what needs an
//! operator's attention, failing jobs and failed instructions, in one answer.

use std::collections::{BTreeMap, BTreeSet};

use muster_shared::api::{ApiError, InstrStatus, JobTargetStatus, Listed, StatusSummary, TargetStatus};
use muster_shared::msg::Outcome;

use super::Ctx;
use crate::store::Store;

impl Ctx {
    pub(super) async fn status(&self) -> Result<StatusSummary, ApiError> {
        // Every read at once: each is a pass over one bucket or stream, and
        // the server serves them side by side.
        let (targets, jobs, groups, rows, statuses) = tokio::try_join!(
            // Corrupt records are for `target list` to show.
            async { Ok::<_, ApiError>(self.target_list().await?.into_iter().filter_map(Listed::into_ok).collect::<Vec<_>>()) },
            async { Ok::<_, ApiError>(self.store.all_jobs().await?) },
            async { Ok::<_, ApiError>(self.store.all_groups().await?) },
            async { Ok::<_, ApiError>(self.store.instr_rows(None).await?) },
            async { Ok::<_, ApiError>(Store::scan_entries::<JobTargetStatus>(&self.store.jobstatus, "").await?) },
        )?;
        let mut targets_by_status = BTreeMap::new();
        for t in &targets {
            *targets_by_status.entry(t.status.as_str().to_owned()).or_insert(0) += 1;
        }
        // Status keys are `<job-id>.<target>`: keep those of jobs that still exist.
        let job_ids: BTreeSet<String> = jobs.iter().map(|j| j.id.to_string()).collect();
        let mut failing = Vec::new();
        for (key, s) in statuses {
            if key.split_once('.').is_some_and(|(id, _)| job_ids.contains(id)) && is_failure(s.outcome) {
                failing.push(s);
            }
        }
        failing.sort_by(|a, b| (&a.job, &a.target).cmp(&(&b.job, &b.target)));
        Ok(StatusSummary {
            targets_by_status,
            pending_instructions: targets.iter().map(|t| t.unread).sum(),
            attention: targets.into_iter().filter(|t| t.status != TargetStatus::Normal).collect(),
            jobs: jobs.len() as u64,
            groups: groups.len() as u64,
            failing,
            failed_instructions: rows.iter().filter(|r| r.status == InstrStatus::Failed).count() as u64,
        })
    }
}

/// Whether a last outcome needs an operator's attention.
fn is_failure(o: Outcome) -> bool {
    matches!(o, Outcome::Failed | Outcome::TimedOut | Outcome::Interrupted | Outcome::Canceled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_runs_that_went_wrong_need_attention() {
        for o in [Outcome::Failed, Outcome::TimedOut, Outcome::Interrupted, Outcome::Canceled] {
            assert!(is_failure(o), "{o}");
        }
        for o in [Outcome::Running, Outcome::Succeeded, Outcome::Skipped] {
            assert!(!is_failure(o), "{o}");
        }
    }
}
