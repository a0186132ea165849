//! Posting instructions: the only way the master talks to a target's queue.
//!
//! Every change (job created, updated, deleted, assigned, started...) becomes
//! one [`Instruction`] per target concerned, published on
//! `muster.target.<t>.assign` with its id as `Nats-Msg-Id`, and recorded in
//! the download list. Publishes to many targets are pipelined: all are sent,
//! then all acks are awaited, so fan-out costs one round trip, not N.

use async_nats::HeaderMap;
use chrono::Utc;
use futures::StreamExt;
use muster_shared::msg::{self, Instruction, InstructionOp};
use muster_shared::name::TargetName;
use muster_shared::{KIND_HEADER, PROTOCOL_VERSION};
use uuid::Uuid;

use crate::store::{posted_row, InstrRow, Store, StoreError};

/// Publishes sent before their acks are awaited.
const PUBLISH_WINDOW: usize = 1000;

/// Builds the instruction without sending it.
pub fn instruction(target: &TargetName, op: InstructionOp) -> Instruction {
    Instruction { v: PROTOCOL_VERSION, id: Uuid::now_v7(), target: target.clone(), posted_at: Utc::now(), op }
}

/// Posts each `(target, op)`, in order per target, and records each in the
/// download list. Returns the instructions posted.
///
/// # Errors
/// The first publish or record that failed; earlier ones stay posted (each
/// is idempotent on the target, so the caller may simply retry).
pub async fn post_many(store: &Store, items: Vec<(TargetName, InstructionOp)>) -> Result<Vec<Instruction>, StoreError> {
    let instructions: Vec<Instruction> = items.into_iter().map(|(t, op)| instruction(&t, op)).collect();
    // Publishes are pipelined: sent in windows, each window's acks awaited
    // together. JetStream keeps per-subject order for one publisher. The
    // window stays below the context's limit of acks in flight (5,000),
    // past which a publish waits for acks nobody is awaiting yet.
    for window in instructions.chunks(PUBLISH_WINDOW) {
        let mut acks = Vec::with_capacity(window.len());
        for i in window {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", i.id.to_string().as_str());
            headers.insert(KIND_HEADER, i.op.name());
            let ack = store
                .js
                .publish_with_headers(store.subjects.assign(&i.target), headers, msg::encode(i).into())
                .await
                .map_err(|e| StoreError::nats(format!("posting to '{}'", i.target), e))?;
            acks.push(ack);
        }
        for (ack, i) in acks.into_iter().zip(window) {
            ack.await.map_err(|e| StoreError::nats(format!("posting to '{}' was not confirmed", i.target), e))?;
        }
    }
    record(store, &instructions).await?;
    Ok(instructions)
}

/// Records posted instructions in the download list, each merged with the
/// row its target may already have reported on (it can poll first).
///
/// # Errors
/// The first row that could not be written.
pub async fn record(store: &Store, instructions: &[Instruction]) -> Result<(), StoreError> {
    // Owned items: a stream of futures borrowing from a closure's argument
    // is not `Send` for every lifetime, which a spawned handler needs.
    let rows = futures::stream::iter(instructions.to_vec())
        .map(|i| async move {
            let key = Store::instr_key(&i.target, i.id);
            Store::modify(&store.instructions, &key, |old: Option<InstrRow>| Some(posted_row(&i, old))).await
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    rows.into_iter().try_for_each(|r| r.map(|_| ()))
}

/// Posts one instruction to one target.
///
/// # Errors
/// See [`post_many`].
pub async fn post(store: &Store, target: &TargetName, op: InstructionOp) -> Result<Instruction, StoreError> {
    Ok(post_many(store, vec![(target.clone(), op)]).await?.remove(0))
}
