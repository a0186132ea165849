//! The control subject `muster.target.<t>.control`: force poll and stop.
//!
//! These are core request/reply messages, outside every stream, so a control
//! request is never stored and never replayed. An offline target simply has
//! no responder, which the master reports as "offline".

use std::sync::Arc;

use futures::StreamExt;
use muster_shared::api::{ApiError, ErrorCode};
use muster_shared::msg::{self, ControlOp, ControlReply, ControlRequest};
use tokio_util::sync::CancellationToken;

use crate::metrics::Bad;
use crate::poller::Poller;

/// Answers control requests until `shutdown`. Each request is handled in its
/// own task so a slow poll does not hold up a stop.
///
/// # Errors
/// When the subscription cannot be made.
pub async fn serve(client: async_nats::Client, poller: Arc<Poller>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let subject = poller.subjects.control(&poller.name);
    let mut requests = client.subscribe(subject.clone()).await?;
    tracing::info!(subject, "answering control requests");
    loop {
        let request = tokio::select! {
            () = shutdown.cancelled() => break,
            r = requests.next() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let Some(reply_to) = request.reply.clone() else {
            let total = poller.metrics.bad(Bad::Control);
            tracing::warn!(subject = %request.subject, bad_control = total, "control message without a reply subject ignored");
            continue;
        };
        let (client, poller) = (client.clone(), poller.clone());
        tokio::spawn(async move {
            let reply = match msg::decode::<ControlRequest>(&request.payload) {
                Err(e) => {
                    let total = poller.metrics.bad(Bad::Control);
                    tracing::warn!(subject = %request.subject, error = %e, bad_control = total, "bad control request refused");
                    ControlReply::error(e)
                }
                Ok(ControlRequest { op: ControlOp::Poll, .. }) => match poller.poll().await {
                    Ok(report) => ControlReply::report(report),
                    Err(e) => ControlReply::error(ApiError::new(ErrorCode::Internal, format!("poll failed: {e:#}"))),
                },
                Ok(ControlRequest { op: ControlOp::Stop { job }, .. }) => ControlReply::stopped(poller.runner.stop(&job)),
            };
            if let Err(e) = client.publish(reply_to, msg::encode(&reply).into()).await {
                tracing::warn!(error = %e, "control reply not sent");
            }
        });
    }
    requests.unsubscribe().await.ok();
    Ok(())
}
