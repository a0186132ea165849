//! Running one job step as a child process.
//!
//! [`run_step`] starts a step, captures its output, and waits for it to end.
//! It also enforces the step's timeout and reacts to cancellation. This file
//! holds that flow and what it reports; the three mechanisms it relies on
//! each have a room of their own:
//!
//! * `process/group.rs`: each step runs in its own process group, so a
//!   timeout, a stop or a cancel reaches the whole tree the step started:
//!   `SIGTERM`, then `SIGKILL` for anything still alive after
//!   [`StepCommand::kill_grace`].
//! * `process/capture.rs`: output is capped to a head and a tail
//!   ([`OutputCapture`]), stdout and stderr read at the same time.
//! * `process/procfs.rs`: `/proc` tells zombies from live processes, and
//!   finds the steps a dead agent left behind ([`terminate_leftovers`]).
//!
//! After the main child exits normally, any descendants that still hold the
//! pipes get a short drain period ([`DRAIN_PERIOD`]). After that, the group is
//! killed so the step cannot hang. Descendants that have detached their output
//! (for example `daemon >/dev/null 2>&1 &`) are left alone after a normal exit.
//! On a timeout or a cancel, they are killed like everything else in the group.

mod account;
mod capture;
mod group;
mod mask;
mod procfs;
#[cfg(test)]
mod testing;

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use capture::OutputCapture;
pub use group::terminate_leftovers;

pub use account::{Account, RunAsError};
use capture::OutputReader;
use group::ProcessGroup;

/// After the main child exits, how long the output readers may keep going
/// before the rest of the process group is killed. Descendants that still hold
/// the pipes get this long to finish writing.
pub const DRAIN_PERIOD: Duration = Duration::from_millis(200);

/// After the process group gets `SIGKILL` because it held the pipes open, how
/// long to wait for the pipes to close. A descendant that left the group (for
/// example with `setsid`) can keep a pipe open anyway. In that case we stop
/// reading and return the output captured so far.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(1);

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
    /// Working directory. `None` means the agent's own, or with `run_as`
    /// that user's home.
    pub cwd: Option<PathBuf>,
    /// The Unix user, and optionally group, to run as (see [`Account`]).
    pub run_as: Option<RunAs>,
    /// Variables added to the agent's environment. They override variables
    /// with the same name.
    pub env: BTreeMap<String, String>,
    /// The longest the step may run. `None` means no limit.
    pub timeout: Option<Duration>,
    /// The most bytes of output kept (head + tail). See [`OutputCapture`].
    pub output_cap: usize,
    /// After `SIGTERM`, how long the process group has to exit before `SIGKILL`.
    pub kill_grace: Duration,
    /// Where the output also goes while the step runs (the run's live
    /// output), if anywhere.
    pub live: Option<crate::live::Tee>,
    /// Where the whole output is kept too, if the job keeps it.
    pub keep: Option<crate::kept::Keep>,
    /// Secret values hidden in the output before anything keeps or
    /// publishes it ([`mask`]).
    pub secrets: Vec<String>,
}

/// A step's `user` and `group`, as named in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub group: Option<String>,
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
    /// The whole output's file, when the job keeps it and the step started.
    pub kept: Option<crate::kept::Kept>,
}

impl StepExit {
    /// True if the step exited by itself with code 0.
    pub fn succeeded(&self) -> bool {
        self.ended == Ended::Exited && self.exit_code == Some(0)
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
            kept: None,
        };
    }

    let account = match cmd.run_as.as_ref().map(|r| Account::resolve(&r.user, r.group.as_deref())).transpose() {
        Ok(account) => account,
        Err(refused) => {
            tracing::debug!(program = %name, %refused, "step refused");
            return spawn_failed(started, refused.to_string());
        }
    };
    let spawned = match build_command(cmd, account.as_ref()) {
        Some(mut command) => ProcessGroup::spawn(&mut command),
        None => Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv")),
    };
    // Safety net: if this future is dropped midway, the group kills the whole
    // tree, not only the child (which kill_on_drop covers).
    let (mut child, mut group) = match spawned {
        Ok(spawned) => spawned,
        Err(err) => {
            let message = spawn_failure_message(&name, cmd.cwd.as_deref(), &err).await;
            tracing::debug!(program = %name, %message, "step spawn failed");
            return spawn_failed(started, message);
        }
    };
    let pgid = group.id();
    let mut reader = OutputReader::start(
        child.stdout.take(),
        child.stderr.take(),
        cmd.output_cap,
        cmd.live.clone(),
        cmd.keep.as_ref(),
        &cmd.secrets,
    );

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
            (Ended::Canceled, group.terminate(&mut child, cmd.kill_grace).await)
        }
        Outcome::TimedOut => {
            tracing::debug!(program = %name, ?pgid, "step timed out, terminating process group");
            (Ended::TimedOut, group.terminate(&mut child, cmd.kill_grace).await)
        }
    };

    // The main child is gone. Let the readers finish, but do not let descendants
    // that still hold the pipes keep us waiting.
    let mut pipes_held = false;
    if !reader.finished_within(DRAIN_PERIOD).await {
        pipes_held = true;
        tracing::debug!(program = %name, ?pgid, "output still open after exit, killing process group");
        group.signal(Signal::SIGKILL);
        if !reader.finished_within(DRAIN_AFTER_KILL).await {
            tracing::warn!(program = %name, "output pipes still open after SIGKILL to the process group; abandoning them");
            reader.abandon();
        }
    }
    // Past this point, the group is not signalled again.
    group.release();

    let (output, output_cut_bytes, kept) = reader.finish();

    let (exit_code, signal, wait_error) = match &status {
        Ok(st) => (st.code(), st.signal(), String::new()),
        Err(err) => (None, None, format!("cannot wait for '{name}': {err}")),
    };
    let mut message = match ended {
        Ended::TimedOut => format!("timed out after {:?}", cmd.timeout.unwrap_or_default()),
        Ended::Canceled => "canceled".to_owned(),
        Ended::Exited => signal.map(|sig| format!("killed by signal {}", signal_name(sig))).unwrap_or_default(),
        Ended::SpawnFailed => String::new(),
    };
    add_note(&mut message, &wait_error);
    if ended == Ended::Exited && pipes_held {
        add_note(&mut message, "leftover processes kept the output open after exit; process group killed");
    }

    StepExit { ended, exit_code, signal, output, output_cut_bytes, duration: started.elapsed(), message, kept }
}

/// The result of a step that could not be started, and why.
fn spawn_failed(started: Instant, message: String) -> StepExit {
    StepExit {
        ended: Ended::SpawnFailed,
        exit_code: None,
        signal: None,
        output: String::new(),
        output_cut_bytes: 0,
        duration: started.elapsed(),
        message,
        kept: None,
    }
}

/// How the wait for the main child ended.
enum Outcome {
    Exited(io::Result<ExitStatus>),
    Canceled,
    TimedOut,
}

/// Builds the command, or returns `None` for an empty argv. Its process
/// group is set up by [`ProcessGroup::spawn`]; `account`, if any, sets the
/// user, its variables (the step's own win) and default directory.
fn build_command(cmd: &StepCommand, account: Option<&Account>) -> Option<Command> {
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
    match account {
        Some(account) => account.apply(&mut command, cmd.cwd.as_deref()),
        None => {
            if let Some(cwd) = &cmd.cwd {
                command.current_dir(cwd);
            }
        }
    }
    command.envs(&cmd.env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    Some(command)
}

/// A clear message for a failed spawn. A missing working directory also gives
/// ENOENT, so it is checked separately to say which part is missing.
async fn spawn_failure_message(name: &str, cwd: Option<&std::path::Path>, err: &io::Error) -> String {
    if let Some(cwd) = cwd {
        match tokio::fs::metadata(cwd).await {
            Err(cwd_err) => return format!("cannot start '{name}': working directory '{}': {cwd_err}", cwd.display()),
            Ok(meta) if !meta.is_dir() => {
                return format!("cannot start '{name}': working directory '{}' is not a directory", cwd.display())
            }
            Ok(_) => {}
        }
    }
    format!("cannot start '{name}': {err}")
}

/// Adds `note` to a message for people, after a "; " if the message already
/// says something. An empty note adds nothing. Step and run messages (see
/// `crate::runner`) are put together the same way.
pub fn add_note(message: &mut String, note: &str) {
    if note.is_empty() {
        return;
    }
    if !message.is_empty() {
        message.push_str("; ");
    }
    message.push_str(note);
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

#[cfg(test)]
mod tests {
    use super::testing::{assert_process_gone, first_line_pid, process_gone};
    use super::*;

    fn shell(script: &str) -> StepCommand {
        StepCommand {
            program: Program::Shell(script.to_owned()),
            cwd: None,
            run_as: None,
            env: BTreeMap::new(),
            timeout: None,
            output_cap: 64 * 1024,
            kill_grace: Duration::from_secs(5),
            live: None,
            keep: None,
            secrets: Vec::new(),
        }
    }

    fn argv(args: &[&str]) -> StepCommand {
        StepCommand { program: Program::Argv(args.iter().map(|s| s.to_string()).collect()), ..shell("") }
    }

    async fn run(cmd: &StepCommand) -> StepExit {
        // Fail the test instead of hanging it forever.
        tokio::time::timeout(Duration::from_secs(60), run_step(cmd, &CancellationToken::new()))
            .await
            .expect("run_step did not finish within 60s")
    }

    #[test]
    fn notes_are_joined_and_empty_ones_left_out() {
        let mut m = String::new();
        add_note(&mut m, "");
        assert_eq!(m, "");
        add_note(&mut m, "first");
        assert_eq!(m, "first");
        add_note(&mut m, "");
        add_note(&mut m, "second");
        assert_eq!(m, "first; second");
    }

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
            assert!(r.output.contains(line), "missing {line:?} in {:?}", r.output);
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
        let pid_text =
            tokio::time::timeout(Duration::from_secs(30), read).await.expect("script never wrote the FIFO").unwrap().unwrap();
        let grandchild: i32 = pid_text.trim().parse().unwrap();
        assert!(!process_gone(grandchild));

        cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(30), task).await.expect("run_step did not return after cancel").unwrap();
        assert_eq!(r.ended, Ended::Canceled, "{r:?}");
        assert_eq!(r.message, "canceled");
        assert!(!r.succeeded());
        assert!(r.duration < Duration::from_secs(8), "{:?}", r.duration);
        assert_process_gone(grandchild).await;
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
        let expected = format!("{}\n[... {cut} bytes cut ...]\n{}", &full[..500], &full[full.len() - 500..]);
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
        assert!(r.output.starts_with(&"e".repeat(2048)), "head should be stderr's 'e's");
        assert!(r.output.contains(&format!("\n[... {} bytes cut ...]\n", 4 * TEN_MB - 4096)));
    }

    #[tokio::test]
    async fn spawn_failure_names_program() {
        let r = run(&argv(&["/nonexistent/muster-no-such-program", "x"])).await;
        assert_eq!(r.ended, Ended::SpawnFailed);
        assert_eq!(r.exit_code, None);
        assert!(!r.succeeded());
        assert_eq!(r.message, "cannot start '/nonexistent/muster-no-such-program': No such file or directory (os error 2)");

        let r = run(&argv(&["muster-no-such-program-in-path"])).await;
        assert_eq!(r.ended, Ended::SpawnFailed);
        assert!(r.message.starts_with("cannot start 'muster-no-such-program-in-path': "), "{}", r.message);
    }

    #[tokio::test]
    async fn spawn_failure_bad_cwd_names_directory() {
        let mut cmd = argv(&["true"]);
        cmd.cwd = Some(PathBuf::from("/nonexistent/muster-no-such-dir"));
        let r = run(&cmd).await;
        assert_eq!(r.ended, Ended::SpawnFailed);
        assert!(
            r.message.starts_with("cannot start 'true': working directory '/nonexistent/muster-no-such-dir': "),
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
