//! The operator's surface: groups, target lifecycle, posted instructions
//! (set-poll, sync-time, resync), the download list, target status, `job
//! start --wait` and `musterctl status` — each against a live system.

use std::process::Command;
use std::time::Duration;

use muster_tests::{bin, s, wait_for, wait_for_described, Cluster, Proc};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// The download list of one target, oldest first.
fn rows(c: &Cluster, target: &str) -> Vec<Value> {
    c.ctl_ok(&["instructions", "--target", target])
}

/// `(op, status)` of each row of a target's download list.
fn ops(c: &Cluster, target: &str) -> Vec<(String, String)> {
    rows(c, target).iter().map(|r| (s(r, "op").to_owned(), s(r, "status").to_owned())).collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

/// Force-polls a target and returns how many jobs from the master it holds.
fn jobs_held(c: &Cluster, target: &str) -> u64 {
    let polled = c.ctl(&["target", "force-poll", target]).expect("force-poll");
    polled[0]["report"]["jobs"].as_u64().unwrap_or_else(|| panic!("no report: {polled}"))
}

fn jobs_on_disk(c: &Cluster, target: &str) -> usize {
    std::fs::read_dir(c.state_dir(target).join("jobs")).map_or(0, Iterator::count)
}

fn status_of(c: &Cluster, target: &str) -> String {
    let t: Value = c.ctl_ok(&["target", "show", target]);
    s(&t, "status").to_owned()
}

#[test]
fn group_membership_changes_post_the_right_instructions() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 3600);
    c.start_target("web02", 3600);
    c.wait_target_online("web01");
    c.wait_target_online("web02");

    c.ctl(&["group", "create", "web"]).expect("group create");
    assert_eq!(c.ctl(&["group", "create", "web"]).unwrap_err().code, 7, "a second group of the same name");
    let ghost = c.ctl_raw(&["group", "add", "web", "ghost"], false);
    assert_eq!(ghost.code, 3, "{ghost:?}");
    assert!(ghost.stderr.contains("target 'ghost' is not enlisted"), "{ghost:?}");
    c.ctl(&["group", "add", "web", "web01"]).expect("group add");
    c.ctl(&["job", "create", "nightly", "--command", "echo hi"]).expect("job create");
    c.ctl(&["job", "assign", "nightly", "--group", "web"]).expect("assign to the group");
    assert_eq!(ops(&c, "web01"), pairs(&[("upsert_job", "pending")]));
    assert!(ops(&c, "web02").is_empty(), "web02 is not in the group");
    assert_eq!(jobs_held(&c, "web01"), 1);
    assert_eq!(jobs_held(&c, "web02"), 0);
    wait_for("web01's upsert applied", WAIT, || (ops(&c, "web01") == pairs(&[("upsert_job", "applied")])).then_some(()));

    // Joining the group posts the group's jobs.
    c.ctl(&["group", "add", "web", "web02"]).expect("group add web02");
    assert_eq!(ops(&c, "web02"), pairs(&[("upsert_job", "pending")]));
    assert_eq!(jobs_held(&c, "web02"), 1);
    assert_eq!(jobs_on_disk(&c, "web02"), 1);

    // A job update reaches every member.
    c.ctl(&["job", "update", "nightly", "--command", "echo changed"]).expect("job update");
    for t in ["web01", "web02"] {
        assert_eq!(ops(&c, t).last().expect("rows"), &("upsert_job".to_owned(), "pending".to_owned()), "{t}");
    }

    // Assigned directly as well: leaving the group must not delete the job.
    c.ctl(&["job", "assign", "nightly", "--target", "web01", "--group", "web"]).expect("mixed assign");
    let before = ops(&c, "web01").len();
    c.ctl(&["group", "remove", "web", "web01"]).expect("group remove web01");
    assert_eq!(ops(&c, "web01").len(), before, "nothing posted to web01: {:?}", ops(&c, "web01"));
    assert_eq!(jobs_held(&c, "web01"), 1);

    // Leaving the group deletes the job from a target that reached it only that way.
    c.ctl(&["group", "remove", "web", "web02"]).expect("group remove web02");
    assert_eq!(ops(&c, "web02").last().expect("rows"), &("delete_job".to_owned(), "pending".to_owned()));
    assert_eq!(jobs_held(&c, "web02"), 0);
    assert_eq!(jobs_on_disk(&c, "web02"), 0);

    // A group a job uses cannot be deleted; the error says what to do.
    let refused = c.ctl_raw(&["group", "delete", "web"], false);
    assert_eq!(refused.code, 7, "{refused:?}");
    assert!(refused.stderr.contains("musterctl job unassign nightly --group web"), "{refused:?}");
    c.ctl(&["job", "unassign", "nightly", "--target", "web01", "--group", "web"]).expect("unassign");
    assert_eq!(ops(&c, "web01").last().expect("rows").0, "delete_job");
    assert_eq!(jobs_held(&c, "web01"), 0);
    c.ctl(&["group", "delete", "web"]).expect("group delete");
    let groups: Vec<Value> = c.ctl_ok(&["group", "list"]);
    assert!(groups.is_empty(), "{groups:?}");
}

#[test]
fn resync_republishes_the_whole_state_and_the_target_applies_it_once() {
    let mut c = Cluster::with_master();
    c.ctl(&["target", "enlist", "late"]).expect("enlist");
    c.ctl(&["job", "create", "keep", "--command", "echo kept"]).expect("create keep");
    c.ctl(&["job", "create", "gone", "--command", "echo gone"]).expect("create gone");
    c.ctl(&["job", "assign", "keep", "--target", "late"]).expect("assign keep");
    c.ctl(&["job", "assign", "gone", "--target", "late"]).expect("assign gone");
    c.ctl(&["job", "start", "keep"]).expect("start while offline");
    c.ctl(&["job", "unassign", "gone", "--target", "late"]).expect("unassign gone");
    let pending: Vec<Value> = c.ctl_ok(&["instructions", "--target", "late", "--pending"]);
    assert_eq!(pending.len(), 4, "upsert, upsert, start, delete: {pending:?}");

    // Resync drops nothing: a new revision carries the whole state, the
    // waiting start included; a second one changes nothing but the revision.
    let posted: Vec<Value> = c.ctl_ok(&["target", "resync", "late"]);
    assert_eq!(posted[0]["ops"], json!(["delete_all_jobs", "upsert_job"]), "{posted:?}");
    assert_eq!(posted[0]["dropped"], 0, "{posted:?}");
    let info: Value = c.ctl_ok(&["target", "show", "late"]);
    assert_eq!(info["unread"], 6, "nothing applied yet: {info}");

    c.start_target("late", 3600);
    wait_for("every row applied", WAIT, || {
        let o = ops(&c, "late");
        (o.len() == 6 && o.iter().all(|(_, status)| status == "applied")).then_some(())
    });
    assert_eq!(jobs_on_disk(&c, "late"), 1, "only the assigned job");
    let runs = wait_for("the start ran", WAIT, || {
        let r = c.finished_runs("keep");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(runs.len(), 1, "the start ran once: {runs:?}");
    wait_for("nothing unread", WAIT, || {
        let info: Value = c.ctl_ok(&["target", "show", "late"]);
        (info["unread"] == 0).then_some(())
    });
}

#[test]
fn set_poll_is_validated_and_takes_effect_at_the_next_poll() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 2);
    c.wait_target_online("web01");
    for (args, why) in [
        (vec!["target", "set-poll", "web01", "5"], "outside 10..=28800"),
        (vec!["target", "set-poll", "web01", "28801"], "outside 10..=28800"),
        (vec!["target", "set-poll", "web01", "soon"], "not a number of seconds"),
        (vec!["target", "set-poll", "30"], "name at least one target"),
    ] {
        let out = c.ctl_raw(&args, false);
        assert_eq!(out.code, 4, "{args:?}: {out:?}");
        assert!(out.stderr.contains(why), "{args:?}: {out:?}");
    }
    assert!(ops(&c, "web01").is_empty(), "nothing posted by refused requests");

    c.ctl(&["target", "set-poll", "web01", "30"]).expect("set-poll");
    // No force-poll: the agent's own next poll (2 s) downloads it.
    wait_for("the new interval reported", Duration::from_secs(15), || {
        let t: Value = c.ctl_ok(&["target", "show", "web01"]);
        (t["poll_interval_secs"] == 30).then_some(())
    });
    // The applied row comes from the target's results, apart from its poll report.
    wait_for_described(
        "the set-poll applied in the download list",
        WAIT,
        || (ops(&c, "web01") == pairs(&[("set_poll_interval", "applied")])).then_some(()),
        || format!("{:?}", ops(&c, "web01")),
    );

    c.ctl(&["group", "create", "all-web"]).expect("group");
    c.ctl(&["group", "add", "all-web", "web01"]).expect("add");
    let by_group: Vec<Value> = c.ctl_ok(&["target", "set-poll", "--group", "all-web", "40"]);
    assert_eq!(by_group.len(), 1, "{by_group:?}");
    let all: Vec<Value> = c.ctl_ok(&["target", "set-poll", "--all", "50"]);
    assert_eq!(s(&all[0], "target"), "web01", "{all:?}");
    jobs_held(&c, "web01");
    // The poll report is stored in the background, after the poll.
    let interval = || c.ctl_ok::<Value>(&["target", "show", "web01"])["poll_interval_secs"].clone();
    wait_for_described("the last set-poll reported", WAIT, || (interval() == 50).then_some(()), || interval().to_string());
}

#[test]
fn a_stopped_target_becomes_suspected_offline() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 1);
    c.wait_target_online("web01");
    wait_for("web01 normal", WAIT, || (status_of(&c, "web01") == "normal").then_some(()));
    c.target("web01").kill();
    wait_for("web01 suspected_offline", Duration::from_secs(15), || {
        (status_of(&c, "web01") == "suspected_offline").then_some(())
    });
    let status: Value = c.ctl_ok(&["status"]);
    assert_eq!(status["summary"]["targets_by_status"]["suspected_offline"], 1, "{status}");
    assert_eq!(s(&status["summary"]["attention"][0], "name"), "web01", "{status}");
    let human = c.ctl_raw(&["target", "list"], false);
    assert!(human.stdout.contains("suspected_offline"), "{human:?}");

    // A second master replica is seen by `status` once it answers.
    c.start_master();
    wait_for_described(
        "status to show two masters",
        WAIT,
        || (masters_in_status(&c) == Some(2)).then_some(()),
        || format!("{:?}", c.ctl(&["status"])),
    );
}

/// How many master replicas `musterctl status` saw answer its ping.
fn masters_in_status(c: &Cluster) -> Option<usize> {
    c.ctl(&["status"]).ok()?["masters"].as_array().map(Vec::len)
}

#[test]
fn a_refused_job_shows_its_error_and_blocks_the_target_until_a_clean_poll() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 3600);
    c.wait_target_online("web01");

    // A job document the target must refuse, written by hand over the
    // master's (as an operator with the admin user could): it names
    // another target.
    c.ctl(&["job", "create", "j", "--command", "true"]).expect("create");
    c.ctl(&["job", "assign", "j", "--target", "web01"]).expect("assign");
    let job: Value = c.ctl_ok(&["job", "show", "j"]);
    let subject = format!("muster.target.web01.job.{}", s(&job, "id"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(c.url()).await.unwrap());
        let stream = js.get_stream_no_info("MUSTER_DESIRED").await.unwrap();
        let doc = stream.direct_get_last_for_subject(subject.clone()).await.unwrap();
        let mut bad: Value = serde_json::from_slice(&doc.payload).unwrap();
        bad["target"] = json!("web02");
        js.publish(subject, bad.to_string().into()).await.unwrap().await.unwrap();
    });
    // The poll report says so, and the exit code tells scripts (9).
    let out = c.ctl_raw(&["target", "force-poll", "web01"], true);
    assert_eq!(out.code, 9, "{out:?}");
    let polled: Value = serde_json::from_str(&out.stdout).expect("the reports, as JSON");
    assert_eq!(polled[0]["report"]["failed"], 1, "{polled}");

    let errors: Vec<Value> = wait_for("the failure in the download list", WAIT, || {
        let e: Vec<Value> = c.ctl_ok(&["instructions", "--errors"]);
        (!e.is_empty()).then_some(e)
    });
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((s(&errors[0], "op"), s(&errors[0], "status")), ("upsert_job", "failed"));
    assert!(s(&errors[0], "error").contains("names target 'web02'"), "{errors:?}");
    wait_for("web01 blocked", WAIT, || (status_of(&c, "web01") == "blocked").then_some(()));
    let human = c.ctl_raw(&["instructions", "--errors"], false);
    assert!(human.stdout.contains("names target 'web02'"), "{human:?}");

    // `status` collects ping answers for 500 ms: on a busy machine the one
    // master may answer later, so ask until it is counted.
    let status: Value = wait_for_described(
        "status to see the master",
        WAIT,
        || {
            let st: Value = c.ctl_ok(&["status"]);
            (st["masters"].as_array().map(Vec::len) == Some(1)).then_some(st)
        },
        || format!("{:?}", c.ctl(&["status"])),
    );
    assert_eq!(status["summary"]["failed_instructions"], 1, "{status}");
    assert_eq!(status["summary"]["targets_by_status"]["blocked"], 1, "{status}");
    let human = wait_for_described(
        "human status to see the master",
        WAIT,
        || {
            let out = c.ctl_raw(&["status"], false);
            out.stdout.contains("masters:      1").then_some(out)
        },
        || format!("{:?}", c.ctl_raw(&["status"], false)),
    );
    assert!(human.stdout.contains("blocked"), "{human:?}");

    // The target carried on: a new revision of the job is written by the
    // master and applies, and the next clean poll clears the block.
    c.ctl(&["job", "update", "j", "--command", "true"]).expect("update");
    let posted: Vec<Value> = c.ctl_ok(&["target", "sync-time", "web01"]);
    assert_eq!(posted[0]["ops"], json!(["sync_time"]));
    wait_for("web01 normal again, with its skew recorded", WAIT, || {
        let t: Value = c.ctl_ok(&["target", "show", "web01"]);
        (s(&t, "status") == "normal" && t["clock_skew_ms"].is_i64()).then_some(())
    });
}

#[test]
fn defection_from_the_master_by_the_target_itself_and_forced() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 3600);
    c.start_target("web02", 3600);
    c.wait_target_online("web01");
    c.wait_target_online("web02");
    c.ctl(&["job", "create", "j", "--command", "true"]).expect("create");
    c.ctl(&["job", "assign", "j", "--target", "web01", "--target", "web02"]).expect("assign");
    c.ctl(&["group", "create", "g"]).expect("group");
    c.ctl(&["group", "add", "g", "web01"]).expect("group add");
    assert_eq!(jobs_held(&c, "web01"), 1);
    assert_eq!(jobs_held(&c, "web02"), 1);

    // Defected by the master: the target deletes its jobs; its record goes
    // when it reports the defection applied.
    c.ctl(&["target", "defect", "web01"]).expect("defect");
    wait_for("web01's record removed", WAIT, || c.ctl(&["target", "show", "web01"]).is_err_and(|e| e.code == 3).then_some(()));
    assert_eq!(jobs_on_disk(&c, "web01"), 0);
    let job: Value = c.ctl_ok(&["job", "show", "j"]);
    assert_eq!(job["targets"], json!(["web02"]), "{job}");
    let groups: Vec<Value> = c.ctl_ok(&["group", "list"]);
    assert_eq!(groups[0]["members"], json!([]), "{groups:?}");

    // A defected target can enlist again.
    c.ctl(&["target", "enlist", "web01"]).expect("enlist again");
    c.wait_target_online("web01");

    // A target defects itself on its own agent subject; another name on it is refused.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ask = |subject: &str, body: &str| -> Value {
        rt.block_on(async {
            // From the agent's own inbox, the only place the master answers it.
            let target = subject.split('.').nth(3).unwrap_or_default();
            let client =
                async_nats::ConnectOptions::new().custom_inbox_prefix(format!("_INBOX_{target}")).connect(c.url()).await.unwrap();
            let reply = client.request(subject.to_owned(), body.to_owned().into()).await.unwrap();
            serde_json::from_slice(&reply.payload).unwrap()
        })
    };
    let wrong = ask("muster.api.agent.web02.defect", r#"{"v":1,"name":"web01"}"#);
    assert_eq!(s(&wrong["error"], "code"), "invalid_request", "{wrong}");
    let own = Command::new(bin("muster-target"))
        .env("NATS_URL", c.url())
        .args(["--name", "web02", "--defect", "--state-dir"])
        .arg(c.state_dir("web02"))
        .output()
        .expect("muster-target --defect");
    assert!(own.status.success(), "{own:?}");
    assert!(String::from_utf8_lossy(&own.stdout).contains("defection requested"), "{own:?}");
    wait_for("web02's record removed", WAIT, || c.ctl(&["target", "show", "web02"]).is_err_and(|e| e.code == 3).then_some(()));
    assert_eq!(jobs_on_disk(&c, "web02"), 0);

    // Forced: a target gone for good, with instructions still queued.
    c.ctl(&["target", "enlist", "gone"]).expect("enlist gone");
    c.ctl(&["job", "assign", "j", "--target", "gone"]).expect("assign gone");
    c.ctl(&["target", "defect", "gone", "--force"]).expect("forced defect");
    assert_eq!(c.ctl(&["target", "show", "gone"]).unwrap_err().code, 3);
    assert_eq!(ops(&c, "gone"), pairs(&[("upsert_job", "dropped")]));
    // Its manifest stays behind, saying defected, so a returning agent
    // stays out; its job documents are gone.
    let (_, manifest) = crate::desired_agent::manifest(&c, "gone");
    assert!(manifest.defected && manifest.jobs.is_empty(), "{manifest:?}");
    let job: Value = c.ctl_ok(&["job", "show", "j"]);
    let doc = format!("muster.target.gone.job.{}", s(&job, "id"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let doc_gone = rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(c.url()).await.unwrap());
        let stream = js.get_stream_no_info("MUSTER_DESIRED").await.unwrap();
        stream
            .direct_get_last_for_subject(doc)
            .await
            .is_err_and(|e| e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound)
    });
    assert!(doc_gone, "the forced defection purges the target's job documents");
}

#[test]
fn a_name_held_by_another_running_agent_is_refused() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 3600);
    c.wait_target_online("web01");

    let second = |c: &Cluster, n: u32| {
        let mut cmd = Command::new(bin("muster-target"));
        cmd.env("NATS_URL", c.url())
            .args(["--name", "web01", "--poll-interval", "3600", "--state-dir"])
            .arg(c.dir.path().join(format!("state-impostor-{n}")));
        Proc::spawn("second web01", cmd, c.dir.path().join(format!("impostor-{n}.log")))
    };
    let mut impostor = second(&c, 1);
    wait_for("the second agent to give up", WAIT, || (!impostor.is_running()).then_some(()));
    let log = impostor.log_text();
    assert!(log.contains("already enlisted by another running agent"), "{log}");
    assert!(log.contains("stop that agent first"), "{log}");
    assert_eq!(status_of(&c, "web01"), "normal");

    // Once the first agent is gone, the name is free again.
    c.target("web01").kill();
    let mut successor = second(&c, 2);
    c.wait_target_online("web01");
    assert!(successor.is_running(), "{}", successor.log_text());
}

#[test]
fn job_start_wait_follows_the_runs_and_exits_8_on_failure() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 3600);
    c.start_target("web02", 3600);
    c.wait_target_online("web01");
    c.wait_target_online("web02");
    c.ctl(&["job", "create", "ok", "--command", "sleep 1; echo done"]).expect("create ok");
    c.ctl(&["job", "assign", "ok", "--target", "web01", "--target", "web02"]).expect("assign ok");
    let out = c.ctl_raw(&["job", "start", "ok", "--wait"], false);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("web01: succeeded") && out.stdout.contains("web02: succeeded"), "{out:?}");
    assert!(out.stdout.ends_with("2 of 2 succeeded\n"), "{out:?}");

    let json: Vec<Value> = c.ctl_ok(&["job", "start", "ok", "--target", "web02", "--wait"]);
    assert_eq!(json.len(), 1, "{json:?}");
    assert_eq!(s(&json[0], "state"), "succeeded", "{json:?}");

    c.ctl(&["job", "create", "bad", "--command", "exit 2"]).expect("create bad");
    c.ctl(&["job", "assign", "bad", "--target", "web01"]).expect("assign bad");
    let out = c.ctl_raw(&["job", "start", "bad", "--wait"], false);
    assert_eq!(out.code, 8, "{out:?}");
    assert!(out.stdout.contains("web01: failed"), "{out:?}");
    assert!(out.stderr.contains("did not succeed") && out.stderr.contains("musterctl history --job bad"), "{out:?}");
    let status: Value = c.ctl_ok(&["status"]);
    assert_eq!(s(&status["summary"]["failing"][0], "job"), "bad", "{status}");

    // An offline target is reported and not waited for (its start waits
    // on the server until it expires): --wait returns at once, exit 5,
    // with no --timeout.
    c.ctl(&["target", "enlist", "late"]).expect("enlist late");
    c.ctl(&["job", "assign", "ok", "--target", "late"]).expect("assign late");
    let started = std::time::Instant::now();
    let out = c.ctl_raw(&["job", "start", "ok", "--target", "late", "--target", "web01", "--wait"], false);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(60), "{out:?}");
    assert!(out.stdout.contains("late: offline"), "{out:?}");
    assert!(out.stdout.contains("web01: succeeded"), "the online one is followed: {out:?}");
    assert!(out.stdout.contains("1 of 2 succeeded, 1 offline"), "{out:?}");
    assert!(out.stderr.contains("offline, not waited for: late"), "{out:?}");

    // A run longer than --timeout: gives up with exit 5, naming it.
    c.ctl(&["job", "create", "slow", "--command", "sleep 20"]).expect("create slow");
    c.ctl(&["job", "assign", "slow", "--target", "web01"]).expect("assign slow");
    let out = c.ctl_raw(&["job", "start", "slow", "--wait", "--timeout", "1"], false);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("still not finished on web01"), "{out:?}");
    c.ctl(&["job", "stop", "slow"]).expect("stop slow");
}

#[test]
fn every_command_has_help_completions_and_documented_exit_codes() {
    let c = Cluster::new();
    let help = c.ctl_raw(&["--help"], false);
    assert_eq!(help.code, 0, "{help:?}");
    for code in
        ["3  not found", "4  invalid input", "5  a target is offline", "6  the master", "7  conflict", "8  a run did not succeed"]
    {
        assert!(help.stdout.contains(code), "{code}: {}", help.stdout);
    }
    let bash = c.ctl_raw(&["completions", "bash"], false);
    assert_eq!(bash.code, 0, "{bash:?}");
    for word in ["set-poll", "sync-time", "resync", "instructions", "status", "group", "--wait", "--errors"] {
        assert!(bash.stdout.contains(word), "completions lack {word}");
    }
    // With no master running: exit 6 and what to check.
    let out = c.ctl_raw(&["status"], false);
    assert_eq!(out.code, 6, "{out:?}");
    assert!(out.stderr.contains("is muster-master running"), "{out:?}");
}

#[test]
fn replies_bigger_than_one_nats_message_arrive_whole() {
    // A small max_payload stands for 10,000 targets' worth of list.
    let mut c = Cluster::new_with("max_payload: 32768");
    c.start_master();
    let long = "x".repeat(20_000);
    let names = ["big1", "big2", "big3", "big4"];
    for name in names {
        c.ctl(&["job", "create", name, "--command", &format!("echo {long}")]).expect("create");
    }
    let jobs = c.ctl(&["job", "list"]).expect("a list of about 80 KB: three parts or more");
    let mut listed: Vec<&str> = jobs.as_array().unwrap().iter().map(|j| s(&j["spec"], "name")).collect();
    listed.sort_unstable();
    assert_eq!(listed, names, "{listed:?}");
    assert_eq!(jobs.to_string().matches(long.as_str()).count(), 4, "every command arrived intact");
    assert!(!c.logs().contains("could not send the API reply"), "{}", c.logs());
}
