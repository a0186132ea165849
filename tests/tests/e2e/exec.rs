//! `musterctl exec`: a one-off command on two live targets and a stopped
//! one — each target's output and exit code, the offline one reported and
//! not waited for, the runs in history with trigger `exec`, no job left
//! behind, the exit codes (0, 8, 5), the timeout, and the reserved name.

use std::time::{Duration, Instant};

use muster_tests::{s, wait_for, Cluster};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A master, web01 and web02 online, web03 enlisted and then stopped.
fn cluster() -> Cluster {
    let mut c = Cluster::with_master();
    for t in ["web01", "web02", "web03"] {
        c.start_target(t, 60);
    }
    for t in ["web01", "web02", "web03"] {
        c.wait_target_online(t);
    }
    c.target("web03").terminate(WAIT);
    c
}

/// The exec runs of `target` in history, oldest first.
fn exec_runs(c: &Cluster, target: &str) -> Vec<Value> {
    let runs: Vec<Value> = c.ctl_ok(&["history", "--target", target]);
    runs.into_iter().filter(|r| r["trigger"]["kind"] == "exec").collect()
}

#[test]
fn exec_runs_once_per_target_reports_output_exit_codes_and_offline_targets() {
    let c = cluster();
    let script = r#"echo "hello from $MUSTER_TARGET"; [ "$MUSTER_TARGET" = web02 ] && exit 3; exit 0"#;

    // As a person runs it: one line per target as it ends, its output under it.
    let out = c.ctl_raw(&["exec", "-t", "web01", "-t", "web02", "-t", "web03", "--", "sh", "-c", script], false);
    assert_eq!(out.code, 8, "a run did not succeed: exit 8\n{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let at =
        |prefix: &str| lines.iter().position(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}: {}", out.stdout));
    let web01 = at("web01: succeeded (exit 0)");
    assert_eq!(lines[web01 + 1], "    hello from web01", "{}", out.stdout);
    let web02 = at("web02: failed (exit 3)");
    assert_eq!(lines[web02 + 1], "    hello from web02", "{}", out.stdout);
    assert!(at("web03: offline") < web01.min(web02), "the offline target is reported at once: {}", out.stdout);
    assert!(out.stdout.contains("1 of 3 succeeded, 1 offline"), "{}", out.stdout);
    assert!(out.stderr.contains("web02"), "{}", out.stderr);

    // Every run is in history, with its own trigger; nothing ran on web03.
    let one = wait_for("web01's exec run in history", WAIT, || {
        exec_runs(&c, "web01").into_iter().find(|r| s(r, "outcome") != "running")
    });
    assert_eq!(s(&one, "job"), "_exec");
    assert_eq!(s(&one["steps"][0], "output"), "hello from web01\n");
    let two = wait_for("web02's exec run in history", WAIT, || {
        exec_runs(&c, "web02").into_iter().find(|r| s(r, "outcome") != "running")
    });
    assert_eq!((s(&two, "outcome"), two["steps"][0]["exit_code"].as_i64()), ("failed", Some(3)));
    assert_eq!(s(&one, "job_id"), s(&two, "job_id"), "one exec, one job id");
    assert!(exec_runs(&c, "web03").is_empty());

    // No job definition is left behind, and nobody can make one of that name.
    let jobs: Vec<Value> = c.ctl_ok(&["job", "list"]);
    assert!(jobs.is_empty(), "{jobs:?}");
    let reserved = c.ctl(&["job", "create", "_exec", "--command", "true"]).unwrap_err();
    assert!(reserved.stderr.contains("reserved"), "{reserved:?}");

    // All succeeded: exit 0 (a group, in JSON: each target's exit code and output).
    c.ctl(&["group", "create", "web"]).unwrap();
    c.ctl(&["group", "add", "web", "web01", "web02"]).unwrap();
    // (`--json` before `--`: after it, it would be an argument of the command.)
    let ok = c.ctl_raw(&["--json", "exec", "--group", "web", "--", "echo", "a  b"], false);
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    let ok: Vec<Value> = serde_json::from_str(&ok.stdout).unwrap();
    let got: Vec<(&str, &str, Option<i64>, &str)> =
        ok.iter().map(|p| (s(p, "target"), s(p, "state"), p["exit_code"].as_i64(), s(p, "output"))).collect();
    assert_eq!(got, [("web01", "succeeded", Some(0), "a  b\n"), ("web02", "succeeded", Some(0), "a  b\n")], "argv, no shell");

    // --all includes the stopped target: reported offline, exit 5, not waited for.
    let began = Instant::now();
    let all = c.ctl_raw(&["exec", "--all", "--", "true"], false);
    assert_eq!(all.code, 5, "{}\n{}", all.stdout, all.stderr);
    assert!(all.stderr.contains("offline, not waited for: web03"), "{}", all.stderr);
    assert!(began.elapsed() < Duration::from_secs(20), "took {:?}", began.elapsed());
}

#[test]
fn exec_gives_up_at_its_timeout_and_the_target_stops_the_command() {
    let mut c = Cluster::with_master();
    c.start_target_with("web01", 60, &["--kill-grace", "1"]);
    c.wait_target_online("web01");
    let began = Instant::now();
    let out = c.ctl_raw(&["exec", "--target", "web01", "--timeout", "2s", "--", "sleep", "60"], false);
    let took = began.elapsed();
    assert_eq!(out.code, 5, "the timeout passed: exit 5\n{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("gave up waiting; still not finished on web01"), "{}", out.stderr);
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(15), "took {took:?}");
    let run = wait_for("the exec run to be recorded timed_out", WAIT, || {
        exec_runs(&c, "web01").into_iter().find(|r| s(r, "outcome") != "running")
    });
    assert_eq!(s(&run, "outcome"), "timed_out", "{run}");

    // Bad input is refused before anything is posted.
    for (args, why) in [
        (&["exec", "--", "true"][..], "name the targets"),
        (&["exec", "--target", "web01", "--timeout", "0s", "--", "true"][..], "--timeout"),
    ] {
        let e = c.ctl(args).unwrap_err();
        assert!(e.stderr.contains(why), "{args:?}: {e:?}");
    }
    assert_eq!(exec_runs(&c, "web01").len(), 1);
}
