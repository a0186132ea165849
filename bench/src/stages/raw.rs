//! Raw NATS/JetStream baselines for the figures at scale: the least the
//! broker must do for the same work, measured on the same server in the
//! same run (the spike's design: one document per target on its own
//! subject, read with a Direct Get).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::Stream};
use bytes::Bytes;
use futures::StreamExt as _;

use crate::publish_all;

/// Requests in flight, as the master's force-poll of many targets.
pub const IN_FLIGHT: usize = 128;

/// A document about the size of a manifest naming one job.
fn doc() -> Bytes {
    Bytes::from(vec![b'x'; 400])
}

/// A stream like `MUSTER_DESIRED` (one message per subject, Direct Get)
/// named `name`, on subjects `<lower name>.<i>.state`.
pub async fn doc_stream(js: &jetstream::Context, name: &str) -> anyhow::Result<Stream> {
    Ok(js
        .create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{}.*.state", name.to_lowercase())],
            max_messages_per_subject: 1,
            allow_direct: true,
            ..Default::default()
        })
        .await?)
}

fn doc_subject(name: &str, i: usize) -> String {
    format!("{}.{i}.state", name.to_lowercase())
}

/// Publishes one document to each of `n` subjects (acks awaited in
/// windows); the raw side of enlisting.
pub async fn publish_docs(js: &jetstream::Context, name: &str, n: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let body = doc();
    publish_all(js, n, |i| (doc_subject(name, i), body.clone())).await?;
    Ok(start.elapsed())
}

/// Publishes one document per subject, then reads each with a Direct Get
/// ([`IN_FLIGHT`] at once): the raw side of fan-out. The stream is deleted.
pub async fn fan_out(js: &jetstream::Context, n: usize) -> anyhow::Result<Duration> {
    let name = format!("RAWFAN{n}");
    let stream = doc_stream(js, &name).await?;
    let start = Instant::now();
    publish_docs(js, &name, n).await?;
    direct_get_all(&stream, &name, n).await?;
    let took = start.elapsed();
    js.delete_stream(&name).await?;
    Ok(took)
}

async fn direct_get_all(stream: &Stream, name: &str, n: usize) -> anyhow::Result<()> {
    futures::stream::iter(0..n)
        .map(|i| async move { stream.direct_get_last_for_subject(doc_subject(name, i)).await })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(())
}

/// `n` Direct Gets of `n` documents spread evenly over `window`; returns
/// their latencies, sorted. The stream `RAWPOLL` is created and deleted.
pub async fn polling(
    js: &jetstream::Context,
    n: usize,
    window: Duration,
    meter: impl FnOnce() -> crate::CpuMeter,
) -> anyhow::Result<(Vec<Duration>, crate::CpuShare)> {
    let stream = doc_stream(js, "RAWPOLL").await?;
    publish_docs(js, "RAWPOLL", n).await?;
    let meter = meter();
    let gap = window / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(gap);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tick.tick().await;
        let stream = stream.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            stream.direct_get_last_for_subject(doc_subject("RAWPOLL", i)).await.map(|_| start.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        lat.push(t.await??);
    }
    let cpu = meter.finish();
    js.delete_stream("RAWPOLL").await?;
    lat.sort();
    Ok((lat, cpu))
}

/// `n` core request/replies to a trivial responder, [`IN_FLIGHT`] at once:
/// the raw side of a start delivered to `n` targets.
pub async fn requests(client: &async_nats::Client, n: usize) -> anyhow::Result<Duration> {
    let mut sub = client.subscribe("bench.many.*").await?;
    let responder = client.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                responder.publish(reply, m.payload).await.ok();
            }
        }
    });
    client.flush().await?;
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| client.request(format!("bench.many.{i}"), Bytes::from_static(&[0u8; 64])))
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let took = start.elapsed();
    task.abort();
    Ok(took)
}

/// [`requests`] to `n`, then `n` acked publishes of a run record's size to
/// a stream and a read of them all: the raw side of a start followed to
/// the end on `n` targets.
pub async fn start_and_follow(client: &async_nats::Client, js: &jetstream::Context, n: usize) -> anyhow::Result<Duration> {
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "RAWRUNS".into(),
            subjects: vec!["rawruns.>".into()],
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    requests(client, n).await?;
    let body = Bytes::from(vec![b'x'; 600]);
    publish_all(js, n, |i| (format!("rawruns.{i}"), body.clone())).await?;
    let consumer = stream.create_consumer(jetstream::consumer::pull::OrderedConfig { ..Default::default() }).await?;
    let mut messages = consumer.messages().await?.take(n);
    while let Some(m) = messages.next().await {
        m?;
    }
    let took = start.elapsed();
    js.delete_stream("RAWRUNS").await?;
    Ok(took)
}
