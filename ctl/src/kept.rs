//! `musterctl run output RUN_ID [--step N]`: the whole output of a run's
//! steps, kept by choice (`"keep_output": "full"`, [`muster_shared::kept`]),
//! written to standard output byte for byte.
//!
//! Each step's chunks are hashed as they are written and checked against
//! its end marker (size, chunk count, SHA-256): a damaged or unfinished
//! upload ends the command with an error, never passes for whole. Each
//! message is one Direct Get of the next on the run's subjects (no
//! consumer, so a viewer may, `perms::viewer`); the read ends when the
//! stream answers that it holds no later one.

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use muster_shared::kept::{hex, KeptEnd, KIND_CHUNK, KIND_END};
use muster_shared::subject::Subjects;
use muster_shared::{msg, KIND_HEADER};
use uuid::Uuid;

use crate::exit::{Exit, Failure};

/// One step's output as it is read.
struct Reading {
    subject: String,
    hash: ring::digest::Context,
    bytes: u64,
    chunks: u64,
}

impl Reading {
    fn new(subject: &str) -> Self {
        Self { subject: subject.to_owned(), hash: ring::digest::Context::new(&ring::digest::SHA256), bytes: 0, chunks: 0 }
    }
}

/// Writes the kept output of `run_id` (one step record, or all in order).
///
/// # Errors
/// Not found when nothing is kept; internal when a step's output is
/// damaged or incomplete, or the stream cannot be read.
pub async fn download(js: &jetstream::Context, subjects: &Subjects, run_id: Uuid, step: Option<usize>) -> Result<(), Failure> {
    let internal = |what: &str, e: &dyn std::fmt::Display| Failure::internal(format!("{what}: {e}"));
    let stream =
        js.get_stream_no_info(subjects.kept_stream()).await.map_err(|e| internal("opening the kept-output stream", &e))?;
    let filter = subjects.kept_of_run(run_id, step);
    let mut current: Option<Reading> = None;
    let (mut steps, mut from) = (0, None);
    loop {
        let m = match stream.direct_get_next_for_subject(filter.clone(), from).await {
            Ok(m) => m,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
            Err(e) => return Err(internal("reading kept output", &e)),
        };
        from = Some(m.sequence + 1);
        let subject = m.subject.as_str();
        let kind = m.headers.get(KIND_HEADER).map(|v| v.as_str().to_owned()).unwrap_or_default();
        if current.as_ref().is_some_and(|r| r.subject != subject) {
            return Err(incomplete(current.as_ref().map_or("", |r| &r.subject)));
        }
        let reading = current.get_or_insert_with(|| Reading::new(subject));
        match kind.as_str() {
            KIND_CHUNK => {
                reading.hash.update(&m.payload);
                reading.bytes += m.payload.len() as u64;
                reading.chunks += 1;
                crate::stdout::write_all(&m.payload);
            }
            KIND_END => {
                let end: KeptEnd = msg::decode(&m.payload).map_err(|e| internal(&format!("the end of {subject}"), &e))?;
                if subjects.target_of(subject) != Some(end.target.as_str()) || end.run_id != run_id {
                    return Err(Failure::internal(format!("{subject}: its end names another target or run; not trusted")));
                }
                let done = current.take().expect("set above");
                let sha256 = hex(done.hash.finish().as_ref());
                if (done.bytes, done.chunks, sha256.as_str()) != (end.bytes, end.chunks, end.sha256.as_str()) {
                    return Err(Failure::internal(format!(
                        "the kept output of step '{}' is damaged: read {} bytes in {} chunks, SHA-256 {sha256}; stored {} bytes in {} chunks, SHA-256 {}",
                        end.name, done.bytes, done.chunks, end.bytes, end.chunks, end.sha256
                    )));
                }
                if end.cut_bytes > 0 {
                    eprintln!(
                        "note: step '{}' printed {} bytes more than its job's keep_output_max; they were not kept",
                        end.name, end.cut_bytes
                    );
                }
                steps += 1;
            }
            other => tracing::warn!(subject, kind = other, "not a kept-output message; skipped"),
        }
    }
    if let Some(r) = current {
        return Err(incomplete(&r.subject));
    }
    if steps == 0 {
        let which = step.map_or(String::new(), |n| format!(" step {n}"));
        return Err(Failure::new(
            Exit::NotFound,
            format!("no full output kept for run {run_id}{which}: its job does not set \"keep_output\": \"full\", the step did not run, or it is past the history's retention"),
        ));
    }
    Ok(())
}

fn incomplete(subject: &str) -> Failure {
    Failure::internal(format!(
        "the kept output on {subject} has no end: its upload did not finish (see the step's message in `run show`)"
    ))
}
