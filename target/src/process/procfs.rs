//! Looking at processes through `/proc`, for the two questions signals alone
//! cannot answer.
//!
//! * **Has a process group really gone?** The agent may run under an init
//!   that does not reap orphans (some container inits do not). A grandchild
//!   killed there stays a zombie forever, and `killpg(pgid, 0)` still reports
//!   the group as alive. [`group_has_live_processes`] reads each process's
//!   state from `/proc/<pid>/stat` and does not count zombies.
//! * **Which processes did a dead agent leave behind?** An agent killed with
//!   `kill -9` cannot end its steps, which go on as orphans. Every step
//!   carries its run id in its environment (`MUSTER_RUN_ID`), so the restarted
//!   agent finds exactly those processes by reading `/proc/<pid>/environ`
//!   ([`processes_with_env`]); a recycled pid cannot match. Ending them is
//!   [`super::group::terminate_leftovers`]'s job.
//!
//! Without `/proc` (or where it cannot be read) the answers say so, and the
//! callers fall back to what signals tell them.

use nix::unistd::Pid;

/// A process found in `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcEntry {
    pub(super) pid: i32,
    pub(super) pgrp: i32,
}

/// Whether a process in the group is not a zombie. Returns `None` if `/proc`
/// cannot be read (so the caller assumes the group is alive).
pub(super) fn group_has_live_processes(pgid: Pid) -> Option<bool> {
    Some(live_processes()?.any(|p| p.pgrp == pgid.as_raw()))
}

/// The live processes, other than this one, whose environment holds
/// `var=value`. Empty without `/proc`.
pub(super) fn processes_with_env(var: &str, value: &str) -> Vec<ProcEntry> {
    let wanted = format!("{var}={value}").into_bytes();
    let me = std::process::id() as i32;
    let Some(all) = live_processes() else {
        return Vec::new();
    };
    all.filter(|p| p.pid != me)
        .filter(|p| {
            std::fs::read(format!("/proc/{}/environ", p.pid)).is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == wanted))
        })
        .collect()
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

/// Reads the state and the process group from a `/proc/<pid>/stat` line:
/// `pid (comm) state ppid pgrp ...`. `comm` may hold spaces and parentheses,
/// so parsing starts after the last `)`.
pub(super) fn parse_proc_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_parsing() {
        assert_eq!(parse_proc_stat("123 (sleep) S 1 120 120 0"), Some(('S', 120)));
        assert_eq!(parse_proc_stat("7 (a) b (c)) Z 1 99 99 0"), Some(('Z', 99)));
        assert_eq!(parse_proc_stat("garbage"), None);
    }
}
