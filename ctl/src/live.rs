//! Reading runs' live output from `MUSTER_OUTPUT` ([`muster_shared::output`]):
//! `run logs RUN_ID [--follow]`, and the interleaved output of `job start
//! --wait --follow` and `exec --follow`.
//!
//! The end is known, never guessed from silence. A run's last chunk says
//! `end`; when it never comes (the agent died, or NATS lost it), the run's
//! final record says the run is over — the agent stores its chunks before
//! it spools that record — and the read goes on to the last chunk stored
//! on the run's subject at that moment (a Direct Get), then stops. Without
//! `--follow`, `run logs` reads what is stored, chunk by chunk with Direct
//! Gets (no consumer, so a viewer may, `perms::viewer`), until the stream
//! answers that it holds no later chunk of the run.
//!
//! Lines are printed whole as they complete (a chunk may end mid-line), on
//! a terminal with control characters shown, not sent ([`crate::stdout`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, stream::DirectGetErrorKind};
use futures::StreamExt as _;
use muster_shared::msg;
use muster_shared::name::TargetName;
use muster_shared::output::{dropped_marker, OutputChunk, Pipe};
use muster_shared::subject::Subjects;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::exit::{Exit, Failure};
use crate::history;

/// After the runs followed are final, the longest the rest of their output
/// may take to arrive (it is stored already: this bounds a sick server).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// The most of a line without its end held back.
const LONGEST_LINE: usize = 64 * 1024;

/// Prints chunks as whole lines, per target and pipe.
#[derive(Debug, Default)]
pub struct Lines {
    /// Prefix each line with its target (several runs interleaved).
    prefixed: bool,
    partial: HashMap<(TargetName, Pipe), String>,
}

impl Lines {
    pub fn new(prefixed: bool) -> Self {
        Self { prefixed, partial: HashMap::new() }
    }

    /// Prints the complete lines of `c`, keeps the rest for the next (up
    /// to [`LONGEST_LINE`]: a longer one is printed in pieces).
    pub fn chunk(&mut self, c: &OutputChunk) {
        let key = (c.target.clone(), c.pipe);
        let mut text = self.partial.remove(&key).unwrap_or_default();
        if c.dropped > 0 {
            // What came before the gap, then the gap.
            if !text.is_empty() {
                self.emit(&c.target, c.pipe, &std::mem::take(&mut text));
            }
            self.emit(&c.target, Pipe::Stderr, &dropped_marker(c.dropped));
        }
        text.push_str(&c.data);
        let complete = match text.rfind('\n') {
            Some(i) => i + 1,
            None if text.len() > LONGEST_LINE => text.len(),
            None => 0,
        };
        for line in text[..complete].lines() {
            self.emit(&c.target, c.pipe, line);
        }
        if complete < text.len() {
            self.partial.insert(key, text[complete..].to_owned());
        }
    }

    /// Prints what is left of lines without a newline (a run ended).
    pub fn flush(&mut self) {
        let mut rest: Vec<_> = self.partial.drain().collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        for ((target, pipe), text) in rest {
            self.emit(&target, pipe, &text);
        }
    }

    fn emit(&self, target: &TargetName, pipe: Pipe, line: &str) {
        match (self.prefixed, pipe) {
            (true, Pipe::Stdout) => crate::say!("{target}: {line}"),
            (true, Pipe::Stderr) => crate::say!("{target} (stderr): {line}"),
            (false, Pipe::Stdout) => crate::say!("{line}"),
            (false, Pipe::Stderr) => eprintln!("{}", crate::stdout::visible(line)),
        }
    }
}

fn decode(subjects: &Subjects, subject: &str, payload: &[u8]) -> Option<OutputChunk> {
    match msg::decode::<OutputChunk>(payload) {
        // The body must name the target its subject carries.
        Ok(c) if subjects.target_of(subject) == Some(c.target.as_str()) => Some(c),
        Ok(c) => {
            tracing::warn!(subject, target = %c.target, "output chunk names another target than its subject; skipped");
            None
        }
        Err(e) => {
            tracing::warn!(subject, error = %e, "unreadable output chunk; skipped");
            None
        }
    }
}

fn internal(what: &str) -> impl Fn(&dyn std::fmt::Display) -> Failure + '_ {
    move |e| Failure::internal(format!("{what}: {e}"))
}

/// `musterctl run logs RUN_ID [--follow]`.
///
/// # Errors
/// Not found when no output of the run is stored and history does not know
/// it (without `--follow`); internal on a read error.
pub async fn logs(js: &jetstream::Context, subjects: &Subjects, run_id: Uuid, follow: bool) -> Result<(), Failure> {
    let mut lines = Lines::new(false);
    if !follow {
        // Direct Gets, one chunk each (no consumer: the viewer may too),
        // until the stream has no later message of the run.
        let stream =
            js.get_stream_no_info(subjects.output_stream()).await.map_err(|e| internal("opening the live output stream")(&e))?;
        let filter = subjects.output_of_run(run_id);
        let (mut from, mut any) = (None, false);
        loop {
            let m = match stream.direct_get_next_for_subject(filter.clone(), from).await {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(internal("reading live output")(&e)),
            };
            from = Some(m.sequence + 1);
            if let Some(c) = decode(subjects, m.subject.as_str(), &m.payload) {
                lines.chunk(&c);
                any = true;
            }
        }
        lines.flush();
        if !any {
            let known = history::find_run(js, subjects, run_id, None).await.map_err(|e| internal("reading history")(&e))?;
            if known.is_none() {
                return Err(Failure::new(Exit::NotFound, format!("no output and no record of run {run_id}")));
            }
            nothing_stored(run_id);
        }
        return Ok(());
    }
    let stream = js.get_stream(subjects.output_stream()).await.map_err(|e| internal("opening the live output stream")(&e))?;
    let mut follower = Follower::new(&stream, subjects, vec![subjects.output_of_run(run_id)]).await?;
    // Who ran it, for its final record: history, else its first chunk.
    let mut ran: Option<(TargetName, Uuid)> = history::find_run(js, subjects, run_id, None)
        .await
        .map_err(|e| internal("reading history")(&e))?
        .map(|f| (f.record.target, f.record.job_id));
    let mut ended = std::pin::pin!(futures::future::Fuse::terminated());
    let mut awaiting_final = false;
    loop {
        if !awaiting_final {
            if let Some((target, job_id)) = ran.clone() {
                let (js, subjects) = (js.clone(), subjects.clone());
                ended.set(futures::FutureExt::fuse(async move {
                    history::final_record(&js, &subjects, &target, job_id, run_id).await.map(|_| target)
                }));
                awaiting_final = true;
            }
        }
        tokio::select! {
            c = follower.next() => {
                let c = c?;
                lines.chunk(&c);
                ran.get_or_insert_with(|| (c.target.clone(), c.job_id));
                if follower.done() {
                    break;
                }
            }
            target = &mut ended => {
                let target = target.map_err(|e| internal("waiting for the run's final record")(&e))?;
                follower.drain_to(js, &[subjects.output(&target, run_id)]).await?;
                if follower.done() {
                    break;
                }
            }
        }
    }
    lines.flush();
    if follower.last_seq == 0 {
        nothing_stored(run_id);
    }
    Ok(())
}

fn nothing_stored(run_id: Uuid) {
    eprintln!("note: no live output of run {run_id} is stored (it printed nothing, or it is older than a day); `musterctl run show {run_id}` has its head and tail");
}

/// Several runs' live output read as it is stored, until each run's end.
struct Follower {
    subjects: Subjects,
    messages: jetstream::consumer::pull::Ordered,
    /// Runs whose `end` chunk was read.
    ended: HashSet<Uuid>,
    /// How many runs must end (`None`: one run of a wildcard filter).
    expected: usize,
    last_seq: u64,
    /// Read up to here, then stop (the runs are final).
    drain_to: Option<u64>,
}

impl Follower {
    async fn new(stream: &jetstream::stream::Stream, subjects: &Subjects, filters: Vec<String>) -> Result<Self, Failure> {
        let expected = filters.len();
        let config = jetstream::consumer::pull::OrderedConfig {
            filter_subjects: filters,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        };
        let messages = stream
            .create_consumer(config)
            .await
            .map_err(|e| internal("following live output")(&e))?
            .messages()
            .await
            .map_err(|e| internal("following live output")(&e))?;
        Ok(Self { subjects: subjects.clone(), messages, ended: HashSet::new(), expected, last_seq: 0, drain_to: None })
    }

    /// Every run ended, or everything stored when they were final is read.
    fn done(&self) -> bool {
        self.ended.len() >= self.expected || self.drain_to.is_some_and(|to| self.last_seq >= to)
    }

    /// The next chunk (waits for it).
    async fn next(&mut self) -> Result<OutputChunk, Failure> {
        loop {
            let m = match self.messages.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(internal("following live output")(&e)),
                None => return Err(Failure::internal("the live output stream ended")),
            };
            if let Ok(info) = m.info() {
                self.last_seq = info.stream_sequence;
            }
            if let Some(c) = decode(&self.subjects, m.subject.as_str(), &m.payload) {
                if c.end {
                    self.ended.insert(c.run_id);
                }
                return Ok(c);
            }
        }
    }

    /// The runs are final: read on to the last chunk stored on `subjects`
    /// now, and no further.
    async fn drain_to(&mut self, js: &jetstream::Context, run_subjects: &[String]) -> Result<(), Failure> {
        let stream = js
            .get_stream_no_info(self.subjects.output_stream())
            .await
            .map_err(|e| internal("opening the live output stream")(&e))?;
        let mut last = 0;
        for subject in run_subjects {
            match stream.direct_get_last_for_subject(subject.clone()).await {
                Ok(m) => last = last.max(m.sequence),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
                Err(e) => return Err(internal("reading live output")(&e)),
            }
        }
        self.drain_to = Some(last);
        Ok(())
    }
}

/// The live output of the runs a start made, printed while they run, each
/// line prefixed with its target (`job start --wait --follow`, `exec --follow`).
#[derive(Debug)]
pub struct Interleaved {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), Failure>>,
}

impl Interleaved {
    /// Starts printing the output of `runs` (target, run id).
    ///
    /// # Errors
    /// When the live output stream cannot be read.
    pub async fn start(js: &jetstream::Context, subjects: &Subjects, runs: &[(TargetName, Uuid)]) -> Result<Self, Failure> {
        let stream = js.get_stream(subjects.output_stream()).await.map_err(|e| internal("opening the live output stream")(&e))?;
        let filters: Vec<String> = runs.iter().map(|(t, run)| subjects.output(t, *run)).collect();
        let runs = runs.to_vec();
        let (stop, mut stop_task) = oneshot::channel::<()>();
        let (js, subjects) = (js.clone(), subjects.clone());
        let task = tokio::spawn(async move {
            let mut lines = Lines::new(true);
            if filters.is_empty() {
                return Ok(());
            }
            let mut follower = Follower::new(&stream, &subjects, filters).await?;
            let mut draining = false;
            loop {
                tokio::select! {
                    c = follower.next() => {
                        lines.chunk(&c?);
                        if follower.done() {
                            break;
                        }
                    }
                    _ = &mut stop_task, if !draining => {
                        draining = true;
                        let left: Vec<String> = runs
                            .iter()
                            .filter(|(_, run)| !follower.ended.contains(run))
                            .map(|(t, run)| subjects.output(t, *run))
                            .collect();
                        follower.drain_to(&js, &left).await?;
                        if follower.done() {
                            break;
                        }
                    }
                }
            }
            lines.flush();
            Ok(())
        });
        Ok(Self { stop, task })
    }

    /// The runs are final: prints the rest of their output, then returns.
    pub async fn finish(self) -> Result<(), Failure> {
        self.stop.send(()).ok();
        let mut task = self.task;
        match tokio::time::timeout(DRAIN_LIMIT, &mut task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(Failure::internal(format!("printing live output: {e}"))),
            Err(_) => {
                task.abort();
                eprintln!("note: the rest of the live output did not arrive within {DRAIN_LIMIT:?}; `musterctl run show` has each run's output");
                Ok(())
            }
        }
    }
}
