//! The core loop: enlist, post, poll, run, upload, force-poll.

use std::time::Duration;

use muster_tests::{s, wait_for, wait_for_described, Cluster};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// Waits until `job` has `n` finished runs in history and returns them.
pub fn finished_runs(c: &Cluster, job: &str, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} finished runs of {job}"), WAIT, || {
        let done = c.finished_runs(job);
        (done.len() >= n).then_some(done)
    })
}

#[test]
fn history_on_a_fresh_server_is_empty() {
    // nats-server only: no master has ever created the results stream.
    let c = Cluster::new();
    let runs = c.ctl(&["history"]).expect("history before any master ran");
    assert_eq!(runs, Value::Array(Vec::new()));
}

#[test]
fn two_targets_run_a_job_and_history_has_both() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 60);
    c.start_target("web02", 60);
    c.wait_target_online("web01");
    c.wait_target_online("web02");

    let job = c.ctl(&["job", "create", "hello", "--command", "echo hello from $MUSTER_TARGET", "--command", "echo second"]);
    assert!(job.is_ok(), "{job:?}");
    c.ctl(&["job", "assign", "hello", "--target", "web01", "--target", "web02"]).expect("assign");
    let polled = c.ctl(&["target", "force-poll", "web01", "web02"]).expect("force-poll");
    assert_eq!(polled.as_array().map(Vec::len), Some(2), "{polled}");
    for r in polled.as_array().unwrap() {
        assert_eq!(r["report"]["jobs"], 1, "the assigned job reached the target: {r}");
    }

    // The answer says the starts are posted; the force-polls that make the
    // targets (polling every 60 s) start now follow it.
    let started = c.ctl(&["job", "start", "hello"]).expect("start");
    let states: Vec<&str> = started.as_array().unwrap().iter().map(|d| s(d, "state")).collect();
    assert_eq!(states, ["posted", "posted"], "{started}");

    let runs = finished_runs(&c, "hello", 2);
    let mut targets: Vec<&str> = runs.iter().map(|r| s(r, "target")).collect();
    targets.sort_unstable();
    assert_eq!(targets, ["web01", "web02"]);
    for r in &runs {
        assert_eq!(s(r, "outcome"), "succeeded", "{r}");
        assert_eq!(s(r, "job"), "hello");
        assert!(!s(r, "run_id").is_empty() && !s(r, "started_at").is_empty() && !s(r, "finished_at").is_empty());
        let steps = r["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 2, "{r}");
        assert_eq!(steps[0]["exit_code"], 0);
        assert_eq!(s(&steps[0], "output"), format!("hello from {}\n", s(r, "target")), "the step got its target's name");
        assert_eq!(s(&steps[1], "output"), "second\n");
    }

    // The master keeps the last outcome per job and target.
    let status: Vec<Value> = wait_for("job status for both targets", WAIT, || {
        let st: Vec<Value> = c.ctl_ok(&["job", "status", "hello"]);
        (st.len() == 2 && st.iter().all(|x| s(x, "outcome") == "succeeded")).then_some(st)
    });
    assert_eq!(status.len(), 2);

    // target list shows both, normal, with a last poll (poll reports are
    // stored in the background, after each poll).
    wait_for_described(
        "both targets listed normal, with a last poll",
        WAIT,
        || {
            let targets: Vec<Value> = c.ctl_ok(&["target", "list"]);
            (targets.len() == 2 && targets.iter().all(|t| s(t, "status") == "normal" && !s(t, "last_poll").is_empty()))
                .then_some(())
        },
        || format!("{:?}", c.ctl(&["target", "list"])),
    );
}

#[test]
fn a_failing_command_is_recorded_with_exit_code_and_output() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 60);
    c.wait_target_online("web01");
    c.ctl(&["job", "create", "breaks", "--command", "echo about to fail; echo on stderr >&2; exit 3", "--command", "echo never"])
        .expect("create");
    c.ctl(&["job", "assign", "breaks", "--target", "web01"]).expect("assign");
    c.ctl(&["job", "start", "breaks"]).expect("start");
    let runs = finished_runs(&c, "breaks", 1);
    let r = &runs[0];
    assert_eq!(s(r, "outcome"), "failed", "{r}");
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "the second step must not run: {r}");
    assert_eq!(steps[0]["exit_code"], 3);
    let out = s(&steps[0], "output");
    assert!(out.contains("about to fail") && out.contains("on stderr"), "{out}");
    assert!(s(r, "message").contains("exit code 3"), "{r}");
}

#[test]
fn offline_target_is_reported_and_gets_its_instructions_at_first_poll() {
    let mut c = Cluster::with_master();
    c.ctl(&["target", "enlist", "late"]).expect("enlist");
    c.ctl(&["job", "create", "waiting", "--command", "echo I ran late"]).expect("create");
    c.ctl(&["job", "assign", "waiting", "--target", "late"]).expect("assign");

    let err = c.ctl(&["target", "force-poll", "late"]).unwrap_err();
    assert_eq!(err.code, 5, "{err:?}");
    let human = c.ctl_raw(&["target", "force-poll", "late"], false);
    assert!(human.stdout.contains("offline") && human.stdout.contains("queued"), "{human:?}");

    let started = c.ctl(&["job", "start", "waiting"]).expect("start while offline");
    assert_eq!(s(&started[0], "state"), "posted", "in its manifest, read at its next poll: {started}");
    let info: Value = c.ctl_ok(&["target", "show", "late"]);
    assert_eq!(info["unread"], 2, "upsert and start are queued: {info}");

    // A long interval: only the poll at start-up can apply them.
    c.start_target("late", 3600);
    let runs = finished_runs(&c, "waiting", 1);
    assert_eq!(s(&runs[0], "outcome"), "succeeded");
    assert_eq!(s(&runs[0]["steps"][0], "output"), "I ran late\n");
    wait_for("no unread instructions", WAIT, || {
        let info: Value = c.ctl_ok(&["target", "show", "late"]);
        (info["unread"] == 0).then_some(())
    });
    assert!(c.state_dir("late").join("jobs").read_dir().unwrap().count() == 1, "the job is kept on disk");
}

#[test]
fn force_poll_by_group_and_all_answers_for_each_target() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 3600);
    c.start_target("web02", 3600);
    c.wait_target_online("web01");
    c.wait_target_online("web02");
    c.ctl(&["target", "enlist", "late"]).expect("enlist an offline target");
    c.ctl(&["group", "create", "web"]).expect("group");
    c.ctl(&["group", "add", "web", "web01", "web02"]).expect("members");

    let polled = c.ctl(&["target", "force-poll", "--group", "web"]).expect("force-poll a group");
    let names: Vec<&str> = polled.as_array().unwrap().iter().map(|r| s(r, "target")).collect();
    assert_eq!(names, ["web01", "web02"], "{polled}");
    assert!(polled.as_array().unwrap().iter().all(|r| r["report"]["target"] == r["target"]), "{polled}");

    // One offline target fails alone: the others' reports are there, and
    // the exit code says that not every target polled.
    let all = c.ctl_raw(&["target", "force-poll", "--all"], true);
    assert_eq!(all.code, 5, "{all:?}");
    let outcomes: Value = serde_json::from_str(&all.stdout).expect("JSON outcomes");
    let by_name = |n: &str| outcomes.as_array().unwrap().iter().find(|r| s(r, "target") == n).cloned().unwrap();
    assert_eq!(by_name("web01")["report"]["target"], "web01", "{outcomes}");
    assert_eq!(by_name("web02")["report"]["target"], "web02", "{outcomes}");
    assert_eq!(s(&by_name("late")["error"], "code"), "offline", "{outcomes}");
    let human = c.ctl_raw(&["target", "force-poll", "--all"], false);
    assert!(human.stdout.contains("web01: polled at") && human.stdout.contains("late: target 'late' is offline"), "{human:?}");

    let none = c.ctl_raw(&["target", "force-poll"], false);
    assert_eq!(none.code, 4, "naming nothing is refused: {none:?}");
}

#[test]
fn operations_on_unenlisted_targets_fail_with_not_enlisted() {
    let c = Cluster::with_master();
    c.ctl(&["job", "create", "j", "--command", "true"]).expect("create");
    for args in [
        vec!["target", "force-poll", "ghost"],
        vec!["job", "assign", "j", "--target", "ghost"],
        vec!["job", "start", "j", "--target", "ghost"],
        vec!["target", "show", "ghost"],
    ] {
        let out = c.ctl_raw(&args, false);
        assert_eq!(out.code, 3, "{args:?}: {out:?}");
        assert!(format!("{}{}", out.stdout, out.stderr).contains("target 'ghost' is not enlisted"), "{args:?}: {out:?}");
    }
}

#[test]
fn invalid_names_are_refused_with_the_reason() {
    let c = Cluster::with_master();
    for (name, why) in [
        ("web.01", "'.'"),
        ("web*", "wildcard"),
        ("web>", "wildcard"),
        ("web 01", "whitespace"),
        (&"x".repeat(65), "65 characters"),
    ] {
        let out = c.ctl_raw(&["target", "enlist", name], false);
        assert_eq!(out.code, 4, "{name}: {out:?}");
        assert!(out.stderr.contains(why), "{name}: {out:?}");
        let out = c.ctl_raw(&["job", "create", name, "--command", "true"], false);
        assert_eq!(out.code, 4, "{name}: {out:?}");
    }
    // The API refuses them too, whatever the client.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt.block_on(async {
        let client = async_nats::connect(c.url()).await.unwrap();
        client.request("muster.api.admin.target.enlist", r#"{"v":1,"name":"a.b"}"#.into()).await.unwrap()
    });
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(s(&v["error"], "code"), "invalid_request", "{v}");
    assert!(s(&v["error"], "message").contains("'.'"), "{v}");
}

#[test]
fn restarting_the_master_loses_nothing() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 60);
    c.wait_target_online("web01");
    c.ctl(&["target", "enlist", "web02", "--location", "rack 2"]).expect("enlist");
    c.ctl(&["job", "create", "keep", "--command", "echo kept"]).expect("create");
    c.ctl(&["job", "assign", "keep", "--target", "web01", "--target", "web02"]).expect("assign");
    c.ctl(&["job", "start", "keep", "--target", "web01"]).expect("start");
    finished_runs(&c, "keep", 1);
    let status_before: Vec<Value> = wait_for("job status", WAIT, || {
        let st: Vec<Value> = c.ctl_ok(&["job", "status", "keep"]);
        (st.len() == 1).then_some(st)
    });
    let jobs_before: Value = c.ctl_ok(&["job", "list"]);
    let targets_before: Vec<Value> = c.ctl_ok(&["target", "list"]);

    c.masters[0].kill();
    // Once the server has seen the master's connection close, no one answers.
    wait_for_described(
        "no master: exit 6",
        WAIT,
        || c.ctl(&["job", "list"]).is_err_and(|e| e.code == 6).then_some(()),
        || format!("{:?}", c.ctl(&["job", "list"])),
    );
    c.start_master();

    assert_eq!(c.ctl_ok::<Value>(&["job", "list"]), jobs_before);
    let targets_after: Vec<Value> = c.ctl_ok(&["target", "list"]);
    let names = |ts: &[Value]| ts.iter().map(|t| (s(t, "name").to_owned(), s(t, "location").to_owned())).collect::<Vec<_>>();
    assert_eq!(names(&targets_after), names(&targets_before));
    assert_eq!(c.ctl_ok::<Vec<Value>>(&["job", "status", "keep"]), status_before);
    // And it still works.
    c.ctl(&["job", "start", "keep", "--target", "web01"]).expect("start after restart");
    finished_runs(&c, "keep", 2);
}

#[test]
fn ping_lists_the_masters_that_answer_and_fails_without_one() {
    let mut c = Cluster::with_master();
    c.spawn_master();
    wait_for("both master replicas to answer the ping", WAIT, || {
        let seen = c.ctl(&["ping"]).ok()?;
        (seen.as_array()?.len() == 2).then_some(())
    });
    for m in &mut c.masters {
        m.kill();
    }
    let none = c.ctl_raw(&["ping"], false);
    assert_eq!(none.code, 6, "{none:?}");
    assert!(none.stderr.contains("no master answered"), "{none:?}");
}
