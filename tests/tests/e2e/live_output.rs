//! Live output (issue 16): `run logs --follow` prints a step's lines while
//! the step runs — a line is read while history still has no final record
//! of the run — and ends with the run; `run logs` without `--follow` prints
//! what is stored; `exec --follow` interleaves the targets' lines, each
//! prefixed with its target, stderr told apart.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use muster_tests::{bin, s, wait_for, Cluster};

const WAIT: Duration = Duration::from_secs(30);

/// Whether history holds a final record of `run_id`.
fn final_in_history(c: &Cluster, job: &str, run_id: &str) -> bool {
    c.history(job).iter().any(|r| s(r, "run_id") == run_id && s(r, "outcome") != "running")
}

#[test]
fn run_logs_follow_shows_lines_before_the_step_ends() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 60);
    c.wait_target_online("web01");
    c.ctl(&["job", "create", "ticker", "--command", "for i in 1 2 3 4 5 6; do echo tick $i; sleep 1; done; echo oops >&2"])
        .expect("create");
    c.ctl(&["job", "assign", "ticker", "--target", "web01"]).expect("assign");
    c.ctl(&["target", "force-poll", "web01"]).expect("force-poll");
    let started = c.ctl(&["job", "start", "ticker"]).expect("start");
    let run_id = s(&started[0], "run_id").to_owned();

    let mut follow = Command::new(bin("musterctl"))
        .env("NATS_URL", c.url())
        .args(["run", "logs", &run_id, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("musterctl run logs --follow");
    let (tx, lines) = mpsc::channel();
    let stdout = follow.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = lines.recv_timeout(WAIT).expect("a line of live output");
    assert_eq!(first, "tick 1");
    // The line came while the run runs: history has no final record of it.
    assert!(!final_in_history(&c, "ticker", &run_id), "the run was over before its first line was read");
    let mut seen = vec![first];
    while let Ok(line) = lines.recv_timeout(WAIT) {
        seen.push(line);
    }
    let status = follow.wait().expect("run logs ends");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().expect("stderr"), &mut stderr).ok();
    assert!(status.success(), "run logs --follow: {status:?} {stderr}");
    let ticks: Vec<String> = (1..=6).map(|i| format!("tick {i}")).collect();
    assert_eq!(seen, ticks, "every line, in order, once");
    assert!(stderr.contains("oops"), "stderr is printed apart: {stderr:?}");
    // It ended with the run: history has the final record now.
    wait_for("the run's final record in history", WAIT, || final_in_history(&c, "ticker", &run_id).then_some(()));

    // Without --follow: what is stored, then exit.
    let out = c.ctl_raw(&["run", "logs", &run_id], false);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), ticks, "{out:?}");
    assert!(out.stderr.contains("oops"), "{out:?}");
    // A run nobody knows.
    let unknown = c.ctl_raw(&["run", "logs", &uuid::Uuid::now_v7().to_string()], false);
    assert_eq!(unknown.code, 3, "{unknown:?}");
}

#[test]
fn exec_follow_interleaves_targets_each_line_prefixed() {
    let mut c = Cluster::with_master();
    for t in ["web01", "web02"] {
        c.start_target(t, 60);
    }
    for t in ["web01", "web02"] {
        c.wait_target_online(t);
    }
    let script = r#"echo "one from $MUSTER_TARGET"; echo "two from $MUSTER_TARGET" >&2"#;
    let out = c.ctl_raw(&["exec", "--follow", "-t", "web01", "-t", "web02", "--", "sh", "-c", script], false);
    assert_eq!(out.code, 0, "{out:?}");
    for t in ["web01", "web02"] {
        assert!(out.stdout.contains(&format!("{t}: one from {t}\n")), "{}", out.stdout);
        assert!(out.stdout.contains(&format!("{t} (stderr): two from {t}\n")), "{}", out.stdout);
    }
    // Printed live, not again under the final lines.
    assert!(!out.stdout.contains("    one from"), "{}", out.stdout);
    assert!(out.stdout.contains("2 of 2 succeeded"), "{}", out.stdout);

    // More than the rate cap allows at once: the rest is dropped, and said.
    let flood = "head -c 3000000 /dev/zero | tr '\\0' x; echo";
    let out = c.ctl_raw(&["exec", "--follow", "-t", "web01", "--", "sh", "-c", flood], false);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("bytes of live output dropped"), "{}", &out.stdout[..out.stdout.len().min(300)]);
    let shown = out.stdout.matches('x').count();
    // At most a burst (1 MiB) and the average since; some, not all.
    assert!((1..2_000_000).contains(&shown), "part is shown, not all: {shown}");

    // job start --wait --follow the same way.
    c.ctl(&["job", "create", "hello", "--command", "echo hi from $MUSTER_TARGET"]).expect("create");
    c.ctl(&["job", "assign", "hello", "--target", "web01", "--target", "web02"]).expect("assign");
    let out = c.ctl_raw(&["job", "start", "hello", "--wait", "--follow"], false);
    assert_eq!(out.code, 0, "{out:?}");
    for t in ["web01", "web02"] {
        assert!(out.stdout.contains(&format!("{t}: hi from {t}\n")), "{}", out.stdout);
    }
    assert!(out.stdout.contains("2 of 2 succeeded"), "{}", out.stdout);
}
