//! Each step runs in a process group of its own, and is ended by signalling
//! the whole group: `SIGTERM`, then `SIGKILL` after a grace period.
//!
//! A step is usually a shell script that starts children of its own
//! (pipelines, `cmd &`, tools that fork workers). If we signalled only the
//! direct child, its descendants would survive and keep running. They would
//! also keep the output pipes open, so reading the output would never finish.
//! Because the step leads a process group (`setpgid(0, 0)` via
//! `process_group(0)`), `killpg` reaches the whole tree at once.
//!
//! The same `SIGTERM`-then-`SIGKILL` ending applies to the processes a dead
//! agent left behind ([`terminate_leftovers`]), found through `/proc`
//! ([`super::procfs`]).

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::procfs::{self, ProcEntry};

/// While waiting for a signalled process group to go away, how often to check it.
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The process group a step's child leads. Dropped while armed (the step's
/// future was dropped midway), it sends `SIGKILL` to the whole group, not only
/// to the child (which `kill_on_drop` covers).
#[derive(Debug)]
pub(super) struct ProcessGroup {
    /// `None` if the child's pid could not be read, or once released.
    pgid: Option<Pid>,
}

impl ProcessGroup {
    /// Spawns `command` as the leader of a new process group, killed when the
    /// returned child is dropped.
    pub(super) fn spawn(command: &mut Command) -> io::Result<(Child, ProcessGroup)> {
        let child = command.process_group(0).kill_on_drop(true).spawn()?;
        // process_group(0) makes the child the leader of a new group whose id
        // is its pid. The child is not reaped yet, so id() is Some here.
        let pgid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
        Ok((child, ProcessGroup { pgid }))
    }

    /// The group's id, for logs.
    pub(super) fn id(&self) -> Option<Pid> {
        self.pgid
    }

    /// Sends `sig` to the group (see [`signal_group`]).
    pub(super) fn signal(&self, sig: Signal) {
        if let Some(pgid) = self.pgid {
            signal_group(pgid, sig);
        }
    }

    /// Sends `SIGTERM` to the group. It then waits up to `grace` for the main
    /// child and every other live group member to exit, and sends `SIGKILL` to
    /// whatever is left. Returns the main child's exit status.
    pub(super) async fn terminate(&self, child: &mut Child, grace: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + grace;
        self.signal(Signal::SIGTERM);
        if self.pgid.is_none() {
            // Without a group id, we can only signal the child itself.
            let _ = child.start_kill();
        }
        let status = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.signal(Signal::SIGKILL);
                let _ = child.start_kill();
                return child.wait().await;
            }
        };
        // The main child is gone. Other group members (grandchildren) get the
        // rest of the grace period.
        if let Some(pgid) = self.pgid {
            while group_has_live_members(pgid) {
                if Instant::now() >= deadline {
                    signal_group(pgid, Signal::SIGKILL);
                    break;
                }
                tokio::time::sleep(GROUP_POLL_INTERVAL).await;
            }
        }
        status
    }

    /// From here on the group is not signalled again, not even on drop.
    pub(super) fn release(&mut self) {
        self.pgid = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// Ends the processes left over from runs the agent died in (it was killed
/// with `kill -9`, or the machine's OOM killer chose it): their steps kept
/// running as orphans. They are found by their environment, which carries
/// `var=value` (every step gets its run id), so a reused pid is never
/// mistaken for one of them. Each one's process group gets
/// `SIGTERM`, then `SIGKILL` after `grace`. Returns how many processes were
/// found. Blocking; call it once at start. Without `/proc` it does nothing.
pub fn terminate_leftovers(var: &str, value: &str, grace: Duration) -> usize {
    let my_group = nix::unistd::getpgrp().as_raw();
    let signal = |procs: &[ProcEntry], sig: Signal| {
        for p in procs {
            if p.pgrp != my_group {
                signal_group(Pid::from_raw(p.pgrp), sig);
            }
            // It may have left the group (setsid); signal it by itself too.
            let _ = nix::sys::signal::kill(Pid::from_raw(p.pid), sig);
        }
    };
    let found = procfs::processes_with_env(var, value);
    if found.is_empty() {
        return 0;
    }
    tracing::warn!(processes = found.len(), "terminating processes left over from interrupted runs");
    signal(&found, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    loop {
        let left = procfs::processes_with_env(var, value);
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

/// Sends `sig` to the process group. A group that is already gone is not an
/// error. Other errors are logged.
fn signal_group(pgid: Pid, sig: Signal) {
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
        _ => procfs::group_has_live_processes(pgid).unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt as _;
    use std::process::Stdio;

    use super::super::testing::process_gone;
    use super::*;

    #[test]
    fn leftovers_are_found_by_their_environment_and_terminated() {
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
        let mut other =
            std::process::Command::new("sleep").arg("300").env("MUSTER_TEST_LEFTOVER", "another-run").spawn().unwrap();

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
}
