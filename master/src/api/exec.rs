//! `musterctl exec`: a one-off command, run once on the selected targets.
//!
//! Why a start entry and not a job: an exec must leave no definition
//! behind, yet be delivered, run, recorded and expired exactly as a manual
//! start is. So it is a start entry (posted and force-polled by the same
//! code as `job start`) that carries its command line ([`ExecCommand`]); the
//! target runs it as a one-step job it never stores, recorded with trigger
//! `exec` under [`EXEC_JOB_NAME`] and a job id of its own (one per exec, so
//! its runs are found by that id and never mixed with a job's), and the
//! entry leaves the manifest when the run's first record arrives. The start
//! expires when the command's timeout passes: a target that was offline
//! does not run the command long after the operator gave up on it (it
//! records the run `expired` when it reads it later).

use chrono::Utc;
use muster_shared::api::{ApiError, ErrorCode, ExecReply, ExecRequest, StartReply};
use muster_shared::desired::{exec_job_name, ExecCommand, StartEntry, EXEC_JOB_NAME, MIN_EXPIRY};
use uuid::Uuid;

use super::Ctx;

impl Ctx {
    /// Posts the command to every selected target and force-polls them;
    /// answers with each target `delivered` (it polled and runs it now),
    /// `queued` (it did not answer: offline) or `failed`.
    pub(super) async fn exec(&self, req: ExecRequest) -> Result<ExecReply, ApiError> {
        req.command.check().map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e))?;
        let targets = self.resolve(&req.select).await?;
        let job_id = Uuid::now_v7();
        let now = Utc::now();
        // At least the shortest expiry a start may have; a command that
        // ends sooner is still ended by its own timeout.
        let expires_in = std::time::Duration::from_secs(req.command.timeout_secs).max(MIN_EXPIRY);
        let mut starts = Vec::with_capacity(targets.len());
        for t in targets {
            let start = StartEntry::new(Uuid::now_v7(), job_id, exec_job_name(), now, expires_in)
                .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("--timeout: {e}")))?;
            starts.push((t, StartEntry { exec: Some(ExecCommand::clone(&req.command)), ..start }));
        }
        tracing::info!(%job_id, targets = starts.len(), argv = ?req.command.argv, "exec posted as {EXEC_JOB_NAME}");
        let deliveries = self.post_starts(starts, StartReply::Polled).await;
        Ok(ExecReply { job_id, deliveries })
    }
}
