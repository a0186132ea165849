//! `musterctl instructions`: the download list, every posted instruction
//! and what became of it on its target.

use muster_shared::api::{InstrRow, InstructionsQuery, Op};

use super::Ctx;
use crate::args::InstructionsArgs;
use crate::exit::Failure;
use crate::render;

pub(super) async fn run(ctx: &Ctx, a: InstructionsArgs) -> Result<(), Failure> {
    let q = InstructionsQuery { target: a.target, pending: a.pending, errors: a.errors, limit: a.limit };
    let rows: Vec<InstrRow> = ctx.api.call(Op::Instructions, q).await?;
    ctx.out.print(&rows, || render::print_instructions(&rows))
}
