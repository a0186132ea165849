//! Running one job step as a child process.
//!
//! [`run_step`] starts a step, captures its output, and waits for it to end. It
//! also enforces the step's timeout and reacts to cancellation. Two design choices
//! make that reliable:
//!
//! * **Each step runs in its own process group** (`setpgid(0, 0)` via
//!   `process_group(0)`). A step is usually a shell script that starts
//!   children of its own (pipelines, `cmd &`, tools that fork workers). If we
//!   signal only the direct child, its descendants survive and keep running. They
//!   also keep the output pipes open, so reading the output would never finish.
//!   Because the step leads a process group, we can signal the whole tree at once
//!   with `killpg`: first `SIGTERM`, then `SIGKILL` for anything still alive after
//!   [`StepCommand::kill_grace`].
//!   After the main child exits normally, any descendants that still hold the
//!   pipes get a short drain period ([`DRAIN_PERIOD`]). After that, the group is
//!   killed so the step cannot hang. Descendants that have detached their output
//!   (for example `daemon >/dev/null 2>&1 &`) are left alone after a normal exit.
//!   On a timeout or a cancel, they are killed like everything else in the group.
//!
//! * **Output is capped to a head and a tail** ([`OutputCapture`]). A step can
//!   print any amount, even gigabytes. We keep the first `cap/2` bytes and the
//!   last `cap/2` bytes. For a failing step, the start shows what it was doing and
//!   the end shows why it failed. A marker line records how many bytes were cut
//!   from the middle. The tail is a ring buffer, so memory stays `O(cap)` whatever
//!   the output size. Stdout and stderr are read at the same time, so a child that
//!   fills one pipe while we wait on the other cannot deadlock.
//!
//! * **Leftovers of a dead agent are found by their environment**
//!   ([`terminate_leftovers`]). An agent killed with `kill -9` cannot kill its
//!   steps, which go on as orphans. Every step carries its run id in its
//!   environment, so the restarted agent finds exactly those processes in
//!   `/proc` (a recycled pid cannot match) and ends them like a stop would.
//!
//! Zombies: the agent may run under an init that does not reap orphans (some
//! container inits do not). A grandchild killed there stays a zombie forever, and
//! `killpg(pgid, 0)` still reports the group as alive. So the check "has the group
//! gone away?" ignores zombies. On Linux, it reads `/proc/<pid>/stat`.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// After the main child exits, how long the output readers may keep going
/// before the rest of the process group is killed. Descendants that still hold
/// the pipes get this long to finish writing.
pub const DRAIN_PERIOD: Duration = Duration::from_millis(200);

/// After the process group gets `SIGKILL` because it held the pipes open, how
/// long to wait for the pipes to close. A descendant that left the group (for
/// example with `setsid`) can keep a pipe open anyway. In that case we stop
/// reading and return the output captured so far.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(1);

/// While waiting for a signalled process group to go away, how often to check it.
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Size of each read from the stdout and stderr pipes.
const READ_CHUNK: usize = 64 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub enum Program {
    /// A script run with `/bin/sh -c`.
    Shell(String),
    /// A program and its arguments, run directly with no shell. `argv[0]` is
    /// looked up in `PATH`.
    Argv(Vec<String>),
}

impl Program {
    /// A short name for messages: `/bin/sh` for a script, `argv[0]` otherwise.
    pub fn display_name(&self) -> &str {
        match self {
            Program::Shell(_) => "/bin/sh",
            Program::Argv(argv) => argv.first().map(String::as_str).unwrap_or(""),
        }
    }
}

/// One step to run, and the limits that apply to it.
#[derive(Debug, Clone)]
pub struct StepCommand {
    /// What to run.
    pub program: Program,
    /// Working directory. `None` means the agent's own.
    pub cwd: Option<PathBuf>,
    /// Variables added to the agent's environment. They override variables
    /// with the same name.
    pub env: BTreeMap<String, String>,
    /// The longest the step may run. `None` means no limit.
    pub timeout: Option<Duration>,
    /// The most bytes of output kept (head + tail). See [`OutputCapture`].
    pub output_cap: usize,
    /// After `SIGTERM`, how long the process group has to exit before `SIGKILL`.
    pub kill_grace: Duration,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The process exited (by itself or by a signal it did not get from us).
    Exited,
    /// The timeout ran out and we killed the step.
    TimedOut,
    /// The step was canceled (and killed if it had started).
    Canceled,
    /// The process could not be started.
    SpawnFailed,
}

/// The result of [`run_step`].
#[derive(Debug, Clone)]
pub struct StepExit {
    /// How the step ended.
    pub ended: Ended,
    /// The exit code, if the process exited normally.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if a signal ended it.
    pub signal: Option<i32>,
    /// Stdout and stderr interleaved in the order they were read. Lossy UTF-8,
    /// capped (see [`OutputCapture`]).
    pub output: String,
    /// Bytes dropped from the middle of the output (0 if none).
    pub output_cut_bytes: u64,
    /// Wall-clock time from start (or spawn attempt) until the result was ready.
    pub duration: Duration,
    /// Why the step ended, for people to read. For example "timed out after 5s",
    /// "canceled", "cannot start 'foo': No such file or directory (os error 2)", or
    /// "killed by signal 9 (SIGKILL)". Empty on a plain exit with a code.
    pub message: String,
}

impl StepExit {
    /// True if the step exited by itself with code 0.
    pub fn succeeded(&self) -> bool {
        self.ended == Ended::Exited && self.exit_code == Some(0)
    }
}

/// Output capture capped at `cap` bytes: the first `cap / 2` bytes (the head)
/// and the last `cap - cap / 2` bytes (the tail).
///
/// Once the head is full, later bytes go into a ring buffer. It keeps only the
/// newest `cap - cap / 2` bytes. Memory use is `O(cap)` whatever the amount of
/// input. [`finish`](Self::finish) joins head and tail. If bytes were dropped,
/// it puts a marker line between them, like `\n[... 123456 bytes cut ...]\n`.
/// The marker does not count toward the cap.
#[derive(Debug, Clone)]
pub struct OutputCapture {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl OutputCapture {
    /// An empty capture that keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        let head_cap = cap / 2;
        OutputCapture {
            head_cap,
            tail_cap: cap - head_cap,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    /// Adds bytes to the end of the output.
    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.head.len() < self.head_cap {
            let n = (self.head_cap - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.is_empty() {
            return;
        }
        if data.len() >= self.tail_cap {
            // The chunk alone fills the tail: keep only its last tail_cap bytes.
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.tail_cap..]);
        } else {
            // Drop the oldest bytes first, so the buffer never grows past tail_cap.
            let overflow = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(data);
        }
    }

    /// Total bytes pushed so far, kept or not.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Bytes dropped so far.
    pub fn cut_bytes(&self) -> u64 {
        self.total - self.head.len() as u64 - self.tail.len() as u64
    }

    /// The captured text (lossy UTF-8), and the number of bytes cut from the middle.
    pub fn finish(self) -> (String, u64) {
        let cut = self.cut_bytes();
        let (a, b) = self.tail.as_slices();
        if cut == 0 {
            let mut all = self.head;
            all.extend_from_slice(a);
            all.extend_from_slice(b);
            return (String::from_utf8_lossy(&all).into_owned(), 0);
        }
        let mut tail = Vec::with_capacity(a.len() + b.len());
        tail.extend_from_slice(a);
        tail.extend_from_slice(b);
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        out.push_str(&format!("\n[... {cut} bytes cut ...]\n"));
        out.push_str(&String::from_utf8_lossy(&tail));
        (out, cut)
    }
}

/// Runs the step until it ends.
///
/// `cancel` stops it early. The process group gets `SIGTERM`, then `SIGKILL`
/// after `kill_grace`. If `cancel` is already set, nothing is started and the
/// result is [`Ended::Canceled`]. This never panics on errors from the process.
/// Every failure is reported in the returned [`StepExit`].
pub async fn run_step(cmd: &StepCommand, cancel: &CancellationToken) -> StepExit {
    let started = Instant::now();
    let name = cmd.program.display_name().to_owned();

    if cancel.is_cancelled() {
        return StepExit {
            ended: Ended::Canceled,
            exit_code: None,
            signal: None,
            output: String::new(),
            output_cut_bytes: 0,
            duration: started.elapsed(),
            message: "canceled before start".to_owned(),
        };
    }

    let spawned = match build_command(cmd) {
        Some(mut command) => command.spawn(),
        None => Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv")),
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            let message = spawn_failure_message(&name, cmd.cwd.as_deref(), &err).await;
            tracing::debug!(program = %name, %message, "step spawn failed");
            return StepExit {
                ended: Ended::SpawnFailed,
                exit_code: None,
                signal: None,
                output: String::new(),
                output_cut_bytes: 0,
                duration: started.elapsed(),
                message,
            };
        }
    };

    // process_group(0) makes the child the leader of a new group whose id is
    // its pid. The child is not reaped yet, so id() is Some here.
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    // Safety net: if this future is dropped midway, kill the whole group, not
    // only the child (which kill_on_drop covers).
    let mut group_guard = GroupGuard { pgid };

    let capture = Arc::new(Mutex::new(OutputCapture::new(cmd.output_cap)));
    let mut reader = AbortOnDrop(tokio::spawn(pump_output(
        child.stdout.take(),
        child.stderr.take(),
        Arc::clone(&capture),
    )));

    let outcome = tokio::select! {
        biased;
        status = child.wait() => Outcome::Exited(status),
        _ = cancel.cancelled() => Outcome::Canceled,
        _ = sleep_opt(cmd.timeout) => Outcome::TimedOut,
    };

    let (ended, status) = match outcome {
        Outcome::Exited(status) => (Ended::Exited, status),
        Outcome::Canceled => {
            tracing::debug!(program = %name, ?pgid, "step canceled, terminating process group");
            (
                Ended::Canceled,
                terminate_group(&mut child, pgid, cmd.kill_grace).await,
            )
        }
        Outcome::TimedOut => {
            tracing::debug!(program = %name, ?pgid, "step timed out, terminating process group");
            (
                Ended::TimedOut,
                terminate_group(&mut child, pgid, cmd.kill_grace).await,
            )
        }
    };

    // The main child is gone. Let the readers finish, but do not let descendants
    // that still hold the pipes keep us waiting.
    let mut pipes_held = false;
    if tokio::time::timeout(DRAIN_PERIOD, &mut reader.0)
        .await
        .is_err()
    {
        pipes_held = true;
        tracing::debug!(program = %name, ?pgid, "output still open after exit, killing process group");
        signal_group(pgid, Signal::SIGKILL);
        if tokio::time::timeout(DRAIN_AFTER_KILL, &mut reader.0)
            .await
            .is_err()
        {
            tracing::warn!(program = %name, "output pipes still open after SIGKILL to the process group; abandoning them");
            reader.0.abort();
        }
    }
    // Past this point, the group is not signalled again.
    group_guard.pgid = None;

    let (output, output_cut_bytes) = {
        let mut guard = capture
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::replace(&mut *guard, OutputCapture::new(0)).finish()
    };

    let (exit_code, signal, mut message) = match &status {
        Ok(st) => (st.code(), st.signal(), String::new()),
        Err(err) => (None, None, format!("cannot wait for '{name}': {err}")),
    };
    match ended {
        Ended::TimedOut => {
            let limit = cmd.timeout.unwrap_or_default();
            message = join_message(format!("timed out after {limit:?}"), message);
        }
        Ended::Canceled => message = join_message("canceled".to_owned(), message),
        Ended::Exited => {
            if let Some(sig) = signal {
                message = join_message(format!("killed by signal {}", signal_name(sig)), message);
            }
            if pipes_held {
                message = join_message(
                    message,
                    "leftover processes kept the output open after exit; process group killed"
                        .to_owned(),
                );
            }
        }
        Ended::SpawnFailed => {}
    }

    StepExit {
        ended,
        exit_code,
        signal,
        output,
        output_cut_bytes,
        duration: started.elapsed(),
        message,
    }
}

/// How the wait for the main child ended.
enum Outcome {
    Exited(io::Result<ExitStatus>),
    Canceled,
    TimedOut,
}

/// Builds the command, or returns `None` for an empty argv.
fn build_command(cmd: &StepCommand) -> Option<Command> {
    let mut command = match &cmd.program {
        Program::Shell(script) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(script);
            c
        }
        Program::Argv(argv) => {
            let (program, args) = argv.split_first()?;
            let mut c = Command::new(program);
            c.args(args);
            c
        }
    };
    command
        .envs(&cmd.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &cmd.cwd {
        command.current_dir(cwd);
    }
    Some(command)
}

/// A clear message for a failed spawn. A missing working directory also gives
/// ENOENT, so it is checked separately to say which part is missing.
async fn spawn_failure_message(
    name: &str,
    cwd: Option<&std::path::Path>,
    err: &io::Error,
) -> String {
    if let Some(cwd) = cwd {
        match tokio::fs::metadata(cwd).await {
            Err(cwd_err) => {
                return format!(
                    "cannot start '{name}': working directory '{}': {cwd_err}",
                    cwd.display()
                )
            }
            Ok(meta) if !meta.is_dir() => {
                return format!(
                    "cannot start '{name}': working directory '{}' is not a directory",
                    cwd.display()
                )
            }
            Ok(_) => {}
        }
    }
    format!("cannot start '{name}': {err}")
}

/// Joins two message parts with "; ", leaving out empty ones.
fn join_message(first: String, second: String) -> String {
    match (first.is_empty(), second.is_empty()) {
        (_, true) => first,
        (true, false) => second,
        (false, false) => format!("{first}; {second}"),
    }
}

/// "9 (SIGKILL)", or just the number for an unknown signal.
fn signal_name(sig: i32) -> String {
    match Signal::try_from(sig) {
        Ok(s) => format!("{sig} ({})", s.as_str()),
        Err(_) => sig.to_string(),
    }
}

/// Waits for the timeout, or forever if there is none.
async fn sleep_opt(timeout: Option<Duration>) {
    match timeout {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

/// Sends `SIGTERM` to the group. It then waits up to `grace` for the main child
/// and every other live group member to exit, and sends `SIGKILL` to whatever
/// is left. Returns the main child's exit status.
async fn terminate_group(
    child: &mut Child,
    pgid: Option<Pid>,
    grace: Duration,
) -> io::Result<ExitStatus> {
    let deadline = Instant::now() + grace;
    signal_group(pgid, Signal::SIGTERM);
    if pgid.is_none() {
        // Without a group id, we can only signal the child itself.
        let _ = child.start_kill();
    }
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            signal_group(pgid, Signal::SIGKILL);
            let _ = child.start_kill();
            return child.wait().await;
        }
    };
    // The main child is gone. Other group members (grandchildren) get the rest
    // of the grace period.
    if let Some(pgid) = pgid {
        while group_has_live_members(pgid) {
            if Instant::now() >= deadline {
                signal_group(Some(pgid), Signal::SIGKILL);
                break;
            }
            tokio::time::sleep(GROUP_POLL_INTERVAL).await;
        }
    }
    status
}

/// Sends `sig` to the process group. A group that is already gone is not an
/// error. Other errors are logged.
fn signal_group(pgid: Option<Pid>, sig: Signal) {
    let Some(pgid) = pgid else { return };
    match killpg(pgid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => tracing::warn!(?pgid, ?sig, %err, "cannot signal process group"),
    }
}

/// True if a process in the group is still running (zombies do not count).
fn group_has_live_members(pgid: Pid) -> bool {
    match killpg(pgid, None) {
        Err(Errno::ESRCH) => false,
        // EPERM (or anything else): something is in the group. Look closer if
        // we can.
        _ => live_members_by_proc(pgid).unwrap_or(true),
    }
}

/// Scans `/proc` for processes in the group that are not zombies. Returns
/// `None` if `/proc` cannot be read (so the caller assumes the group is alive).
fn live_members_by_proc(pgid: Pid) -> Option<bool> {
    Some(live_processes()?.any(|p| p.pgrp == pgid.as_raw()))
}

/// A process found in `/proc`.
struct ProcEntry {
    pid: i32,
    pgrp: i32,
}

/// Every process in `/proc` that is not a zombie, or `None` if `/proc`
/// cannot be read. Processes that go away while we look are skipped.
fn live_processes() -> Option<impl Iterator<Item = ProcEntry>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    Some(entries.flatten().filter_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, pgrp) = parse_proc_stat(&stat)?;
        (state != 'Z' && state != 'X').then_some(ProcEntry { pid, pgrp })
    }))
}

/// Ends the processes left over from runs the agent died in (it was killed
/// with `kill -9`, or the machine's OOM killer chose it): their steps kept
/// running as orphans. They are found by their environment, which carries
/// `var=value` (every step gets its run id), so a reused pid is never
/// mistaken for one of them. Each one's process group gets
/// `SIGTERM`, then `SIGKILL` after `grace`. Returns how many processes were
/// found. Blocking; call it once at start. Without `/proc` it does nothing.
pub fn terminate_leftovers(var: &str, value: &str, grace: Duration) -> usize {
    let wanted = format!("{var}={value}").into_bytes();
    let me = std::process::id() as i32;
    let my_group = nix::unistd::getpgrp().as_raw();
    let find = || -> Vec<ProcEntry> {
        let Some(all) = live_processes() else { return Vec::new() };
        all.filter(|p| p.pid != me)
            .filter(|p| {
                std::fs::read(format!("/proc/{}/environ", p.pid))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == wanted))
            })
            .collect()
    };
    let signal = |procs: &[ProcEntry], sig: Signal| {
        for p in procs {
            if p.pgrp != my_group {
                signal_group(Some(Pid::from_raw(p.pgrp)), sig);
            }
            // It may have left the group (setsid); signal it by itself too.
            let _ = nix::sys::signal::kill(Pid::from_raw(p.pid), sig);
        }
    };
    let found = find();
    if found.is_empty() {
        return 0;
    }
    tracing::warn!(processes = found.len(), "terminating processes left over from interrupted runs");
    signal(&found, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    loop {
        let left = find();
        if left.is_empty() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            signal(&left, Signal::SIGKILL);
            break;
        }
        std::thread::sleep(GROUP_POLL_INTERVAL);
    }
    found.len()
}

/// Reads the state and the process group from a `/proc/<pid>/stat` line:
/// `pid (comm) state ppid pgrp ...`. `comm` may hold spaces and parentheses,
/// so parsing starts after the last `)`.
fn parse_proc_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Reads stdout and stderr at the same time, in the order data arrives, until
/// both reach EOF (or an error).
async fn pump_output(
    mut stdout: Option<tokio::process::ChildStdout>,
    mut stderr: Option<tokio::process::ChildStderr>,
    capture: Arc<Mutex<OutputCapture>>,
) {
    let mut out_buf = vec![0u8; READ_CHUNK];
    let mut err_buf = vec![0u8; READ_CHUNK];
    let push = |data: &[u8]| {
        capture
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(data);
    };
    while stdout.is_some() || stderr.is_some() {
        // read() is cancel safe: data is never lost when the other branch wins.
        tokio::select! {
            r = read_opt(&mut stdout, &mut out_buf) => match r {
                Ok(n) if n > 0 => push(&out_buf[..n]),
                _ => stdout = None,
            },
            r = read_opt(&mut stderr, &mut err_buf) => match r {
                Ok(n) if n > 0 => push(&err_buf[..n]),
                _ => stderr = None,
            },
        }
    }
}

/// Reads from `reader`, or waits forever if it is closed (`None`).
async fn read_opt<R: AsyncRead + Unpin>(
    reader: &mut Option<R>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match reader {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Aborts the reader task if `run_step` is dropped before it finishes.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `SIGKILL` to the process group if `run_step` is dropped while the
/// step runs.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.pgid, Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> StepCommand {
        StepCommand {
            program: Program::Shell(script.to_owned()),
            cwd: None,
            env: BTreeMap::new(),
            timeout: None,
            output_cap: 64 * 1024,
            kill_grace: Duration::from_secs(5),
        }
    }

    fn argv(args: &[&str]) -> StepCommand {
        StepCommand {
            program: Program::Argv(args.iter().map(|s| s.to_string()).collect()),
            ..shell("")
        }
    }

    async fn run(cmd: &StepCommand) -> StepExit {
        // Fail the test instead of hanging it forever.
        tokio::time::timeout(
            Duration::from_secs(60),
            run_step(cmd, &CancellationToken::new()),
        )
        .await
        .expect("run_step did not finish within 60s")
    }

    /// True once `pid` no longer runs: gone entirely, or a zombie waiting for a
    /// reaper (some container inits never reap orphans).
    fn process_gone(pid: i32) -> bool {
        match nix::sys::signal::kill(Pid::from_raw(pid), None) {
            Err(Errno::ESRCH) => true,
            _ => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Ok(stat) => matches!(parse_proc_stat(&stat), Some(('Z' | 'X', _))),
                Err(_) => true,
            },
        }
    }

    /// Checks, a bounded number of times, that `pid` has gone.
    async fn assert_process_gone(pid: i32) {
        for _ in 0..100 {
            if process_gone(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Do not leak it even though the test fails.
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        panic!("process {pid} is still running");
    }

    fn first_line_pid(output: &str) -> i32 {
        output
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid on the first line of {output:?}"))
    }

    // ---- OutputCapture ----

    #[test]
    fn capture_under_cap_keeps_everything() {
        let mut c = OutputCapture::new(10);
        c.push(b"hello");
        c.push(b"");
        c.push(b"world");
        assert_eq!(c.total_bytes(), 10);
        assert_eq!(c.finish(), ("helloworld".to_owned(), 0));
    }

    #[test]
    fn capture_over_cap_keeps_head_and_tail() {
        let data: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        // Push in uneven chunks, some larger than the tail, some smaller.
        for chunk_size in [1usize, 3, 7, 64, 999, 5000] {
            let mut c = OutputCapture::new(100);
            for chunk in data.chunks(chunk_size) {
                c.push(chunk);
            }
            let (text, cut) = c.finish();
            assert_eq!(cut, 900, "chunk size {chunk_size}");
            let expected = format!(
                "{}\n[... 900 bytes cut ...]\n{}",
                std::str::from_utf8(&data[..50]).unwrap(),
                std::str::from_utf8(&data[950..]).unwrap()
            );
            assert_eq!(text, expected, "chunk size {chunk_size}");
        }
    }

    #[test]
    fn capture_odd_and_zero_caps() {
        let mut c = OutputCapture::new(5);
        c.push(b"0123456789");
        assert_eq!(c.finish(), ("01\n[... 5 bytes cut ...]\n789".to_owned(), 5));

        let mut c = OutputCapture::new(0);
        c.push(b"abc");
        c.push(b"de");
        assert_eq!(c.finish(), ("\n[... 5 bytes cut ...]\n".to_owned(), 5));

        let mut c = OutputCapture::new(0);
        c.push(b"");
        assert_eq!(c.finish(), (String::new(), 0));
    }

    #[test]
    fn capture_memory_stays_bounded() {
        let mut c = OutputCapture::new(1000);
        let chunk = [b'x'; 300];
        for _ in 0..10_000 {
            c.push(&chunk);
            assert!(c.head.len() + c.tail.len() <= 1000);
        }
        assert_eq!(c.cut_bytes(), 3_000_000 - 1000);
    }

    #[test]
    fn capture_is_lossy_utf8() {
        let mut c = OutputCapture::new(100);
        c.push(b"ok \xff\xfe end");
        assert_eq!(c.finish().0, "ok \u{fffd}\u{fffd} end");
    }

    #[test]
    fn proc_stat_parsing() {
        assert_eq!(
            parse_proc_stat("123 (sleep) S 1 120 120 0"),
            Some(('S', 120))
        );
        assert_eq!(parse_proc_stat("7 (a) b (c)) Z 1 99 99 0"), Some(('Z', 99)));
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    // ---- run_step ----

    #[tokio::test]
    async fn exit_zero_succeeds() {
        let r = run(&shell("exit 0")).await;
        assert_eq!(r.ended, Ended::Exited);
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.signal, None);
        assert!(r.succeeded());
        assert_eq!(r.message, "");
        assert_eq!(r.output, "");
        assert_eq!(r.output_cut_bytes, 0);
    }

    #[tokio::test]
    async fn exit_three_fails() {
        let r = run(&shell("exit 3")).await;
        assert_eq!(r.ended, Ended::Exited);
        assert_eq!(r.exit_code, Some(3));
        assert!(!r.succeeded());
        assert_eq!(r.message, "");
    }

    #[tokio::test]
    async fn killed_by_own_signal_is_reported() {
        let r = run(&shell("kill -9 $$")).await;
        assert_eq!(r.ended, Ended::Exited);
        assert_eq!(r.exit_code, None);
        assert_eq!(r.signal, Some(9));
        assert!(!r.succeeded());
        assert_eq!(r.message, "killed by signal 9 (SIGKILL)");
    }

    #[tokio::test]
    async fn captures_stdout_and_stderr() {
        let r = run(&shell("echo to-out; echo to-err >&2; echo more-out")).await;
        assert!(r.succeeded(), "{r:?}");
        for line in ["to-out\n", "to-err\n", "more-out\n"] {
            assert!(
                r.output.contains(line),
                "missing {line:?} in {:?}",
                r.output
            );
        }
        assert_eq!(r.output.len(), "to-out\nto-err\nmore-out\n".len());
    }

    #[tokio::test]
    async fn env_and_cwd_are_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = shell(r#"printf '%s|%s|%s' "$MUSTER_TEST_A" "$MUSTER_TEST_B" "$(pwd -P)""#);
        cmd.env.insert("MUSTER_TEST_A".into(), "alpha".into());
        cmd.env.insert("MUSTER_TEST_B".into(), "b e t a".into());
        cmd.cwd = Some(dir.path().to_path_buf());
        let r = run(&cmd).await;
        assert!(r.succeeded(), "{r:?}");
        let real = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(r.output, format!("alpha|b e t a|{}", real.display()));
    }

    #[tokio::test]
    async fn env_is_added_to_agent_environment() {
        // PATH from the agent's environment is still there.
        let mut cmd = shell(r#"printf '%s' "$PATH""#);
        cmd.env.insert("MUSTER_TEST_X".into(), "1".into());
        let r = run(&cmd).await;
        assert_eq!(r.output, std::env::var("PATH").unwrap_or_default());
    }

    #[tokio::test]
    async fn argv_runs_without_shell() {
        let r = run(&argv(&["printf", "%s|", "a b", "$HOME", "*", "; exit 7"])).await;
        assert!(r.succeeded(), "{r:?}");
        assert_eq!(r.output, "a b|$HOME|*|; exit 7|");
    }

    #[tokio::test]
    async fn timeout_kills_forking_process_tree() {
        let mut cmd = shell("sleep 100 & echo $!; sleep 100");
        cmd.timeout = Some(Duration::from_secs(1));
        cmd.kill_grace = Duration::from_secs(10);
        let r = run(&cmd).await;
        assert_eq!(r.ended, Ended::TimedOut, "{r:?}");
        assert_eq!(r.message, "timed out after 1s");
        assert_eq!(r.exit_code, None);
        assert_eq!(r.signal, Some(Signal::SIGTERM as i32));
        assert!(!r.succeeded());
        // Everything obeyed SIGTERM, so the grace period was not used up.
        assert!(r.duration < Duration::from_secs(8), "{:?}", r.duration);
        assert_process_gone(first_line_pid(&r.output)).await;
    }

    #[tokio::test]
    async fn timeout_escalates_to_sigkill() {
        // The ignored SIGTERM is inherited by the background sleep too.
        let mut cmd = shell("trap '' TERM; sleep 100 & echo $!; sleep 100");
        cmd.timeout = Some(Duration::from_millis(500));
        cmd.kill_grace = Duration::from_millis(300);
        let r = run(&cmd).await;
        assert_eq!(r.ended, Ended::TimedOut, "{r:?}");
        assert_eq!(r.signal, Some(Signal::SIGKILL as i32));
        assert!(r.duration >= Duration::from_millis(800), "{:?}", r.duration);
        assert_process_gone(first_line_pid(&r.output)).await;
    }

    #[tokio::test]
    async fn cancel_kills_process_tree() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("ready");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

        let mut cmd = shell(r#"sleep 100 & echo $! > "$READY"; sleep 100"#);
        cmd.env.insert("READY".into(), fifo.display().to_string());
        cmd.kill_grace = Duration::from_secs(10);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { run_step(&cmd, &cancel).await }
        });

        // Opening the FIFO blocks until the script writes to it. Reading to EOF
        // gives the grandchild's pid, so by then the tree is running.
        let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(&fifo));
        let pid_text = tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("script never wrote the FIFO")
            .unwrap()
            .unwrap();
        let grandchild: i32 = pid_text.trim().parse().unwrap();
        assert!(!process_gone(grandchild));

        cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("run_step did not return after cancel")
            .unwrap();
        assert_eq!(r.ended, Ended::Canceled, "{r:?}");
        assert_eq!(r.message, "canceled");
        assert!(!r.succeeded());
        assert!(r.duration < Duration::from_secs(8), "{:?}", r.duration);
        assert_process_gone(grandchild).await;
    }

    #[test]
    fn leftovers_are_found_by_their_environment_and_terminated() {
        use std::os::unix::process::CommandExt as _;
        let run_id = uuid_like();
        // Its own group, like a step; the background sleep ignores SIGTERM,
        // so the grace period has to run out and SIGKILL follow.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "(trap '' TERM; exec sleep 300) & echo $!; exec sleep 300"])
            .env("MUSTER_TEST_LEFTOVER", &run_id)
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let stubborn: i32 = line.trim().parse().unwrap();
        let mut other = std::process::Command::new("sleep").arg("300").env("MUSTER_TEST_LEFTOVER", "another-run").spawn().unwrap();

        let found = terminate_leftovers("MUSTER_TEST_LEFTOVER", &run_id, Duration::from_millis(300));
        assert_eq!(found, 2, "the script and its background child");
        child.wait().unwrap();
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            process_gone(stubborn)
        });
        assert!(gone, "the SIGTERM-ignoring child got SIGKILL");
        assert!(!process_gone(other.id() as i32), "another run's process is left alone");
        other.kill().unwrap();
        other.wait().unwrap();
        assert_eq!(terminate_leftovers("MUSTER_TEST_LEFTOVER", &run_id, Duration::ZERO), 0);
    }

    fn uuid_like() -> String {
        format!("{}-{:?}", std::process::id(), std::time::SystemTime::now())
    }

    #[tokio::test]
    async fn already_canceled_does_not_start() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let cmd = shell(&format!("touch '{}'", marker.display()));
        let r = run_step(&cmd, &cancel).await;
        assert_eq!(r.ended, Ended::Canceled);
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn leftover_pipe_holder_does_not_hang() {
        // The shell exits at once. The background sleep keeps stdout open.
        let r = run(&shell("sleep 100 & echo $!; exit 0")).await;
        assert_eq!(r.ended, Ended::Exited, "{r:?}");
        assert_eq!(r.exit_code, Some(0));
        assert!(r.succeeded());
        assert!(r.message.contains("leftover processes"), "{r:?}");
        assert!(r.duration < Duration::from_secs(5), "{:?}", r.duration);
        assert_process_gone(first_line_pid(&r.output)).await;
    }

    #[tokio::test]
    async fn output_over_cap_keeps_head_and_tail_exactly() {
        let mut cmd = argv(&["seq", "1", "100000"]);
        cmd.output_cap = 1000;
        let r = run(&cmd).await;
        assert!(r.succeeded(), "{r:?}");
        let full: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
        let cut = full.len() - 1000;
        assert_eq!(r.output_cut_bytes, cut as u64);
        let expected = format!(
            "{}\n[... {cut} bytes cut ...]\n{}",
            &full[..500],
            &full[full.len() - 500..]
        );
        assert_eq!(r.output, expected);
    }

    #[tokio::test]
    async fn large_output_on_both_streams_does_not_deadlock() {
        // stderr first, then stdout; then both at once. A reader that waits on
        // one pipe while the other fills up would block here.
        const TEN_MB: u64 = 10 * 1024 * 1024;
        let script = format!(
            "head -c {TEN_MB} /dev/zero | tr '\\0' e >&2; \
             head -c {TEN_MB} /dev/zero | tr '\\0' o; \
             head -c {TEN_MB} /dev/zero >&2 & head -c {TEN_MB} /dev/zero; wait"
        );
        let mut cmd = shell(&script);
        cmd.output_cap = 4096;
        let r = run(&cmd).await;
        assert!(r.succeeded(), "{}", r.message);
        assert_eq!(r.output_cut_bytes, 4 * TEN_MB - 4096);
        assert!(
            r.output.starts_with(&"e".repeat(2048)),
            "head should be stderr's 'e's"
        );
        assert!(r
            .output
            .contains(&format!("\n[... {} bytes cut ...]\n", 4 * TEN_MB - 4096)));
    }

    #[tokio::test]
    async fn spawn_failure_names_program() {
        let r = run(&argv(&["/nonexistent/muster-no-such-program", "x"])).await;
        assert_eq!(r.ended, Ended::SpawnFailed);
        assert_eq!(r.exit_code, None);
        assert!(!r.succeeded());
        assert_eq!(
            r.message,
            "cannot start '/nonexistent/muster-no-such-program': No such file or directory (os error 2)"
        );

        let r = run(&argv(&["muster-no-such-program-in-path"])).await;
        assert_eq!(r.ended, Ended::SpawnFailed);
        assert!(
            r.message
                .starts_with("cannot start 'muster-no-such-program-in-path': "),
            "{}",
            r.message
        );
    }

    #[tokio::test]
    async fn spawn_failure_bad_cwd_names_directory() {
        let mut cmd = argv(&["true"]);
        cmd.cwd = Some(PathBuf::from("/nonexistent/muster-no-such-dir"));
        let r = run(&cmd).await;
        assert_eq!(r.ended, Ended::SpawnFailed);
        assert!(
            r.message.starts_with(
                "cannot start 'true': working directory '/nonexistent/muster-no-such-dir': "
            ),
            "{}",
            r.message
        );
    }

    #[tokio::test]
    async fn empty_argv_is_spawn_failure() {
        let r = run(&argv(&[])).await;
        assert_eq!(r.ended, Ended::SpawnFailed);
        assert!(r.message.contains("empty argv"), "{}", r.message);
    }
}
