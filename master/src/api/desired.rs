//! Publishing what an API change means for each target's desired state.
//!
//! Every handler that changes what a target must hold ends here: it names
//! the targets concerned (with what the change adds: a start, a stop, a
//! clock reference) and [`crate::publish`] derives and publishes their
//! manifests. A change is still described as the previous design's
//! instructions ([`changes`]), never queued anywhere: each becomes a
//! download-list row of its target, written by the publish that carries it
//! and counted by the manifest (`changes`). A failed publish does not fail the operation: the records are written,
//! the failure is logged, and reconcile publishes again.

use std::collections::BTreeMap;

use chrono::Utc;
use muster_shared::msg::{Instruction, InstructionOp};
use muster_shared::name::TargetName;
use muster_shared::PROTOCOL_VERSION;
use uuid::Uuid;

use super::Ctx;
use crate::publish::{Post, PublishError, Published, Row};

impl Ctx {
    /// Publishes each target's post; the outcome per target (failures are
    /// already logged and queued for reconcile).
    pub(super) async fn publish(&self, items: Vec<(TargetName, Post)>) -> BTreeMap<TargetName, Result<Published, PublishError>> {
        match self.publisher.publish_many(items).await {
            Ok(done) => done.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the records to publish desired state; reconcile will retry");
                self.publisher.mark_dirty();
                BTreeMap::new()
            }
        }
    }

    /// Publishes the targets that posted instructions, each with its rows,
    /// plus what `extra` adds for that target.
    pub(super) async fn publish_posted(
        &self,
        posted: &[Instruction],
        extra: impl Fn(&TargetName) -> Post,
    ) -> BTreeMap<TargetName, Result<Published, PublishError>> {
        self.publish(posts_from(posted, extra)).await
    }
}

/// One change to one target: its id (UUIDv7, posting order) is its
/// download-list row's.
pub(super) fn change(target: &TargetName, op: InstructionOp) -> Instruction {
    Instruction { v: PROTOCOL_VERSION, id: Uuid::now_v7(), target: target.clone(), posted_at: Utc::now(), op }
}

/// [`change`] for each `(target, op)`, in order.
pub(super) fn changes(items: Vec<(TargetName, InstructionOp)>) -> Vec<Instruction> {
    items.into_iter().map(|(t, op)| change(&t, op)).collect()
}

/// One post per target, in first-posted order, carrying the rows of the
/// instructions posted to it.
pub(super) fn posts_from(posted: &[Instruction], extra: impl Fn(&TargetName) -> Post) -> Vec<(TargetName, Post)> {
    let mut order: Vec<TargetName> = Vec::new();
    let mut posts: BTreeMap<TargetName, Post> = BTreeMap::new();
    for i in posted {
        let post = posts.entry(i.target.clone()).or_insert_with(|| {
            order.push(i.target.clone());
            extra(&i.target)
        });
        post.rows.push(Row { id: i.id, op: i.op.name().to_owned(), job: i.op.job_name().cloned() });
    }
    order
        .into_iter()
        .map(|t| {
            let post = posts.remove(&t).expect("each target once");
            (t, post)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use muster_shared::msg::InstructionOp;
    use muster_shared::name::JobName;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn rows_are_grouped_per_target_in_posting_order() {
        let t = |n: &str| TargetName::new(n).unwrap();
        let i = |target: &str, op| Instruction { v: 1, id: Uuid::now_v7(), target: t(target), posted_at: Utc::now(), op };
        let job = JobName::new("j").unwrap();
        let posted = [
            i("b", InstructionOp::DeleteAllJobs),
            i("a", InstructionOp::DeleteJob { job_id: Uuid::nil(), job: job.clone() }),
            i("b", InstructionOp::SetPollInterval { secs: 5 }),
        ];
        let posts = posts_from(&posted, |_| Post { force: true, ..Post::default() });
        let got: Vec<(String, Vec<Uuid>, bool)> =
            posts.iter().map(|(t, p)| (t.to_string(), p.rows.iter().map(|r| r.id).collect(), p.force)).collect();
        assert_eq!(got, [("b".to_owned(), vec![posted[0].id, posted[2].id], true), ("a".to_owned(), vec![posted[1].id], true)]);
        assert_eq!(posts[1].1.rows[0].job, Some(job));
    }
}
