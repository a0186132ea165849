//! `musterctl status` and `ping`: the installation on one screen, and the
//! cheap healthcheck that counts the master replicas answering the service
//! ping.

use std::time::Duration;

use muster_shared::api::{ErrorCode, Op, StatusSummary};

use super::Ctx;
use crate::exit::Failure;
use crate::render;

pub(super) async fn status(ctx: &Ctx) -> Result<(), Failure> {
    let (summary, masters) =
        tokio::join!(ctx.api.call::<_, StatusSummary>(Op::Status, ()), ctx.api.masters_seen(Duration::from_millis(500)));
    let (summary, masters) = (summary?, masters?);
    let both = serde_json::json!({"summary": summary, "masters": masters});
    ctx.out.print(&both, || render::print_status(&summary, &masters))
}

pub(super) async fn ping(ctx: &Ctx, wait_ms: u64) -> Result<(), Failure> {
    let masters = ctx.api.masters_seen(Duration::from_millis(wait_ms)).await?;
    if masters.is_empty() {
        return Err(Failure::new(
            ErrorCode::MasterUnavailable.into(),
            format!("no master answered $SRV.PING.{} within {wait_ms} ms", ctx.api.subjects.service_name()),
        ));
    }
    ctx.out.print(&masters, || {
        for m in &masters {
            crate::say!("{} {}", m.id, m.version);
        }
    })
}
