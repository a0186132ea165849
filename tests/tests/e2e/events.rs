//! Events: a failing job gives `job_failed` for its target, the first
//! success after it `job_recovered`, and nothing else; with two masters
//! draining the results, each event is stored once. `musterctl events
//! --json` lists them, `--follow` prints new ones as they come.

use std::process::Command;
use std::time::Duration;

use muster_tests::{bin, s, wait_for_described, Cluster, Proc};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn failures_and_recoveries_are_told_once_each_with_two_masters() {
    let mut c = Cluster::new();
    c.start_master();
    c.start_master();
    c.start_target("web01", 60);
    c.wait_target_online("web01");
    let flag = c.dir.path().join("ok");
    let command = format!("test -e {}", flag.display());
    c.ctl(&["job", "create", "flaky", "--command", &command]).expect("create");
    c.ctl(&["job", "assign", "flaky", "--target", "web01"]).expect("assign");

    // `--follow` started before anything happened prints the events as
    // they are stored, one JSON object per line.
    let mut cmd = Command::new(bin("musterctl"));
    cmd.env("NATS_URL", c.url()).args(["events", "--follow", "--json"]);
    let follower = Proc::spawn("musterctl events --follow", cmd, c.dir.path().join("follow.log"));

    // fail, fail, succeed, succeed, fail, succeed
    let plan = [false, false, true, true, false, true];
    for (i, ok) in plan.iter().enumerate() {
        if *ok {
            std::fs::write(&flag, "").expect("flag");
        } else {
            let _ = std::fs::remove_file(&flag);
        }
        c.ctl(&["job", "start", "flaky", "--target", "web01"]).expect("start");
        crate::core_loop::finished_runs(&c, "flaky", i + 1);
    }
    let mut runs = c.finished_runs("flaky");
    runs.sort_by(|a, b| s(a, "started_at").cmp(s(b, "started_at")));
    let outcomes: Vec<&str> = runs.iter().map(|r| s(r, "outcome")).collect();
    assert_eq!(outcomes, ["failed", "failed", "succeeded", "succeeded", "failed", "succeeded"], "{runs:?}");
    let id = |i: usize| s(&runs[i], "run_id").to_owned();
    let expected: Vec<(String, String)> =
        [("job_failed", 0), ("job_failed", 1), ("job_recovered", 2), ("job_failed", 4), ("job_recovered", 5)]
            .into_iter()
            .map(|(kind, i)| (kind.to_owned(), id(i)))
            .collect();
    let of = |events: &[Value]| -> Vec<(String, String)> {
        events.iter().map(|e| (s(e, "kind").to_owned(), s(e, "run_id").to_owned())).collect()
    };

    // Each event once, in order, though two masters drained the results.
    let listed = wait_for_described(
        "five events",
        WAIT,
        || {
            let listed: Vec<Value> = c.ctl_ok(&["events"]);
            (listed.len() >= expected.len()).then_some(listed)
        },
        || format!("{:?}\n{}", c.ctl(&["events"]), c.logs()),
    );
    assert_eq!(of(&listed), expected, "{listed:?}");
    for e in &listed {
        assert_eq!((s(e, "target"), s(e, "job")), ("web01", "flaky"), "{e}");
    }
    assert_eq!(c.stored("MUSTER_EVENTS", "muster.event.job_failed.web01").len(), 3, "stored once each");
    assert_eq!(c.stored("MUSTER_EVENTS", "muster.event.job_recovered.web01").len(), 2, "stored once each");
    assert!(c.masters.iter_mut().all(|m| m.is_running()), "both masters ran throughout");

    // The follower printed the same, as they came (stderr is empty).
    let followed = wait_for_described(
        "five events followed",
        WAIT,
        || {
            let text = follower.log_text();
            let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            (lines.len() >= expected.len()).then_some(lines)
        },
        || follower.log_text(),
    );
    assert_eq!(of(&followed), expected, "{}", follower.log_text());
    drop(follower);

    // `--last` bounds the stored part.
    let last: Vec<Value> = c.ctl_ok(&["events", "--last", "2"]);
    assert_eq!(of(&last), expected[3..], "{last:?}");
}
