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
use muster_shared::api::ApiError;
use muster_shared::msg::{self, Instruction, InstructionOp};
use muster_shared::name::TargetName;
use muster_shared::{KIND_HEADER, PROTOCOL_VERSION};
use uuid::Uuid;

use crate::store::{InstrRow, InstrStatus, Store};

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
pub async fn post_many(store: &Store, items: Vec<(TargetName, InstructionOp)>) -> Result<Vec<Instruction>, ApiError> {
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
                .map_err(|e| ApiError::internal(format!("posting to '{}': {e}", i.target)))?;
            acks.push(ack);
        }
        for (ack, i) in acks.into_iter().zip(window) {
            ack.await.map_err(|e| ApiError::internal(format!("posting to '{}' was not confirmed: {e}", i.target)))?;
        }
    }
    let rows = futures::stream::iter(instructions.clone())
        .map(|i| {
            let store = store.clone();
            async move {
            let row = InstrRow {
                id: i.id,
                target: i.target.clone(),
                op: i.op.name().to_owned(),
                job: i.op.job_name().cloned(),
                posted_at: i.posted_at,
                status: InstrStatus::Pending,
                applied_at: None,
                error: None,
            };
            // Keep a row the target already reported on (it can poll first).
            Store::modify(&store.instructions, &Store::instr_key(&i.target, i.id), |old: Option<InstrRow>| {
                Ok(Some(old.unwrap_or(row.clone())))
            })
            .await
        }})
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;
    for r in rows {
        r?;
    }
    Ok(instructions)
}

/// Posts one instruction to one target.
///
/// # Errors
/// See [`post_many`].
pub async fn post(store: &Store, target: &TargetName, op: InstructionOp) -> Result<Instruction, ApiError> {
    Ok(post_many(store, vec![(target.clone(), op)]).await?.remove(0))
}
