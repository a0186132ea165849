//! Encoding answers, and sending them in parts when they are too big for
//! one message.
//!
//! Every reply is `{"v":1,"ok":...}` or `{"v":1,"error":...}`. An answer over
//! the server's message size (a download list of thousands of rows, say) is
//! sent as ordered parts marked with [`wire::CHUNK_HEADER`], which
//! `client.rs` reassembles; one over [`muster_shared::MAX_REPLY_BYTES`] is
//! refused with an error that asks for a narrower request.

use muster_shared::api::{self as wire, ApiError, Reply};
use muster_shared::msg;
use serde::Serialize;

/// Encodes a handler's result as a reply body.
pub(super) fn encode<T: Serialize>(r: Result<T, ApiError>) -> Vec<u8> {
    msg::encode(&Reply::from_result(r))
}

/// Answers a request: in one message when the server takes it, otherwise
/// in parts marked with [`wire::CHUNK_HEADER`], sent in order.
pub(super) async fn send(
    client: &async_nats::Client,
    request: async_nats::service::Request,
    reply: Vec<u8>,
) -> anyhow::Result<()> {
    // Room for the subject and headers next to the body.
    let max = client.server_info().max_payload;
    let room = if max > 16 * 1024 { max - 4096 } else { max / 2 }.max(1);
    if reply.len() <= room {
        return Ok(request.respond(Ok(reply.into())).await?);
    }
    if reply.len() > muster_shared::MAX_REPLY_BYTES {
        let too_big = ApiError::internal(format!(
            "the answer is {} bytes, over the {}-byte limit for one reply; narrow the request",
            reply.len(),
            muster_shared::MAX_REPLY_BYTES
        ));
        return Ok(request.respond(Ok(encode::<()>(Err(too_big)).into())).await?);
    }
    let Some(to) = request.message.reply.clone() else {
        return Ok(());
    };
    let parts = reply.len().div_ceil(room);
    for (i, part) in reply.chunks(room).enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(wire::CHUNK_HEADER, format!("{}/{parts}", i + 1).as_str());
        client.publish_with_headers(to.clone(), headers, bytes::Bytes::copy_from_slice(part)).await?;
    }
    Ok(())
}
