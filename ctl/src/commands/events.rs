//! `musterctl events [--last N] [--follow] [--json]`: the recent events the
//! master derived ([`muster_shared::event`]), read from `MUSTER_EVENTS` by an
//! ordered consumer, then (with `--follow`) new ones as they are stored.
//!
//! A consumer is what following takes, so this is for the admin identity;
//! the viewer is not granted `MUSTER_EVENTS` (see DESIGN.md).

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures::StreamExt;
use muster_shared::event::Event;
use muster_shared::msg;

use super::Ctx;
use crate::args::EventsArgs;
use crate::exit::Failure;

fn failed<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> Failure {
    move |e| Failure::internal(format!("{what}: {e}"))
}

/// Prints the last `--last` events (a JSON array with `--json`), then with
/// `--follow` each new one (a JSON line each with `--json`) until killed.
pub async fn events(ctx: &Ctx, args: EventsArgs) -> Result<(), Failure> {
    let js = ctx.jetstream();
    let name = ctx.api.subjects.events_stream();
    let mut stream = js.get_stream(&name).await.map_err(failed("opening the events stream"))?;
    let state = stream.info().await.map_err(failed("reading the events stream"))?.state.clone();
    let stored = state.messages;
    let mut shown = Vec::new();
    // Nothing stored to show: only new ones, if following.
    let only_new = stored == 0 || args.last == 0;
    if only_new && !args.follow {
        return ctx.out.print(&shown, || {});
    }
    let first = if only_new {
        state.last_sequence + 1
    } else {
        state.last_sequence.saturating_sub(args.last - 1).max(state.first_sequence)
    };
    let config = OrderedConfig { deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: first }, ..Default::default() };
    let mut messages = stream
        .create_consumer(config)
        .await
        .map_err(failed("reading the events stream"))?
        .messages()
        .await
        .map_err(failed("reading the events stream"))?;
    // The stored part: up to the last sequence stored when we looked.
    let mut caught_up = only_new;
    while let Some(m) = messages.next().await {
        let m = m.map_err(failed("reading the events stream"))?;
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(u64::MAX);
        match msg::decode::<Event>(&m.payload) {
            Ok(e) if caught_up => show_one(ctx, &e)?,
            Ok(e) => shown.push(e),
            Err(err) => eprintln!("note: event {seq} on {} cannot be read: {err}", m.subject),
        }
        if !caught_up && seq >= state.last_sequence {
            if !args.follow {
                break;
            }
            caught_up = true;
            shown.drain(..).try_for_each(|e| show_one(ctx, &e))?;
        }
    }
    if args.follow {
        return Err(Failure::internal("the events stream ended"));
    }
    ctx.out.print(&shown, || shown.iter().for_each(print_event))
}

/// One event as it comes: a JSON line, or the human line.
fn show_one(ctx: &Ctx, e: &Event) -> Result<(), Failure> {
    if ctx.out.json {
        let line = serde_json::to_string(e).map_err(|err| Failure::internal(err.to_string()))?;
        crate::say!("{line}");
    } else {
        print_event(e);
    }
    std::io::Write::flush(&mut std::io::stdout()).ok();
    Ok(())
}

fn print_event(e: &Event) {
    let message = if e.message.is_empty() { String::new() } else { format!("  {}", e.message) };
    let run = match (&e.job, e.run_id) {
        (Some(job), Some(run)) => format!("  {job}  run {run}"),
        _ => String::new(),
    };
    crate::say!("{}  {:<14}  {}{run}{message}", crate::zone::format(e.at), e.kind, e.target);
}
