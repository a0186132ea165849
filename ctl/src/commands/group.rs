//! `musterctl group …`: target groups; a job assigned to a group reaches
//! every member.

use muster_shared::api::{GroupInfo, GroupMembers, GroupRef, Listed, Op};

use super::Ctx;
use crate::args::GroupCmd;
use crate::exit::Failure;
use crate::render::{self, join};

pub(super) async fn run(ctx: &Ctx, cmd: GroupCmd) -> Result<(), Failure> {
    let (op, body) = match cmd {
        GroupCmd::List => {
            let gs: Vec<Listed<GroupInfo>> = ctx.api.call(Op::GroupList, ()).await?;
            return ctx.out.print(&gs, || render::print_groups(&gs));
        }
        GroupCmd::Delete { group } => {
            let g: Listed<GroupInfo> = ctx.api.call(Op::GroupDelete, GroupRef { group }).await?;
            return ctx.out.print(&g, || match &g {
                Listed::Ok(g) => crate::say!("deleted {}: members {}; jobs {}", g.name, join(&g.members), join(&g.jobs)),
                Listed::Corrupt(c) => crate::say!("deleted the corrupt record {} ({})", c.key, c.corrupt),
            });
        }
        GroupCmd::Create { group } => (Op::GroupCreate, serde_json::to_value(GroupRef { group })),
        GroupCmd::Add { group, targets } => (Op::GroupAdd, serde_json::to_value(GroupMembers { group, targets })),
        GroupCmd::Remove { group, targets } => (Op::GroupRemove, serde_json::to_value(GroupMembers { group, targets })),
    };
    let body = body.map_err(|e| Failure::internal(e.to_string()))?;
    let g: GroupInfo = ctx.api.call(op, body).await?;
    ctx.out.print(&g, || crate::say!("group {}: members {}; jobs {}", g.name, join(&g.members), join(&g.jobs)))
}
