//! `musterctl exec`: a one-off command on targets, followed until each run
//! is final, its output and exit code printed as it arrives.
//!
//! The master posts the command as a start entry on each target (see
//! `master/src/api/exec.rs`) and answers which targets polled; the runs are
//! then followed on the results stream by the same follower as `job start
//! --wait` ([`crate::follow`]), from the stream's last sequence read
//! before the request, so a run that ends before the answer arrives is
//! still seen.

use std::time::Duration;

use muster_shared::api::{ExecReply, ExecRequest, Op};
use muster_shared::desired::{ExecCommand, MAX_EXPIRY};

use super::Ctx;
use crate::args::ExecArgs;
use crate::exit::Failure;
use crate::follow::{self, Followed};
use crate::history;

pub(super) async fn exec(ctx: &Ctx, args: ExecArgs) -> Result<(), Failure> {
    let select = args.select.selection(args.all);
    if select.is_empty() {
        return Err(Failure::invalid("name the targets: --target T, --group G or --all"));
    }
    let timeout = timeout(&args.timeout)?;
    let command = ExecCommand { argv: args.command, timeout_secs: timeout.as_secs() };
    command.check().map_err(|e| Failure::invalid(e.to_string()))?;
    let after = history::last_sequence(&ctx.jetstream(), &ctx.api.subjects).await?;
    // Counted from before the request, so musterctl gives up no later than
    // the targets stop the command (their clocks start when it starts).
    let deadline = tokio::time::Instant::now() + timeout;
    let reply: ExecReply = ctx.api.call(Op::Exec, ExecRequest { select, command }).await?;
    let followed = Followed::Exec { job_id: reply.job_id, after };
    follow::follow(&ctx.api, ctx.out.json, &followed, &reply.deliveries, deadline).await
}

/// `--timeout`: a duration of whole seconds, 1 s to [`MAX_EXPIRY`].
fn timeout(arg: &str) -> Result<Duration, Failure> {
    let bad = |why: &dyn std::fmt::Display| {
        Failure::invalid(format!(
            "--timeout '{arg}': use a duration from 1s to {}s, like 30s or 5m ({why})",
            MAX_EXPIRY.as_secs()
        ))
    };
    let d = humantime::parse_duration(arg).map_err(|e| bad(&e))?;
    if !(Duration::from_secs(1)..=MAX_EXPIRY).contains(&d) {
        return Err(bad(&"out of range"));
    }
    Ok(Duration::from_secs(d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_is_a_duration_in_range() {
        assert_eq!(timeout("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(timeout("1m 500ms").unwrap(), Duration::from_secs(60));
        for bad in ["0s", "500ms", "8d", "soon"] {
            assert!(timeout(bad).unwrap_err().message.contains("--timeout"), "{bad}");
        }
    }
}
