//! Checks the process tests share: whether a process has really gone.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::procfs::parse_proc_stat;

/// True once `pid` no longer runs: gone entirely, or a zombie waiting for a
/// reaper (some container inits never reap orphans).
pub(super) fn process_gone(pid: i32) -> bool {
    match nix::sys::signal::kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => true,
        _ => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => matches!(parse_proc_stat(&stat), Some(('Z' | 'X', _))),
            Err(_) => true,
        },
    }
}

/// Checks, a bounded number of times, that `pid` has gone.
pub(super) async fn assert_process_gone(pid: i32) {
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

/// The pid a test script printed on its first line.
pub(super) fn first_line_pid(output: &str) -> i32 {
    output.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("no pid on the first line of {output:?}"))
}
