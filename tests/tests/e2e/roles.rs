//! Operator roles. With the users `musterctl auth nats-config` writes, the
//! viewer (`muster-viewer`) lists and shows everything the API reads and
//! `run show`s a run, and every change it attempts is refused by the
//! server (its account does not import `muster.api.admin.>` and its user may
//! not publish there), which `musterctl` reports at once as a permissions
//! error, exit 10. The admin does everything. A viewer aiming the answers
//! to its allowed requests at the installation's own subjects changes
//! nothing: its account gets them back (the targets' reply-injection test,
//! for the viewer).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use muster_tests::{block_on, s, Cluster, CtlOutput};
use serde_json::Value;

use crate::reply_injection::{answers, changed, inject, snapshot};
use crate::security::{env_of, secured_cluster, seed_of};

/// `musterctl ARGS --json` as the viewer.
fn as_viewer(c: &mut Cluster, viewer: &[(String, String)], args: &[&str]) -> CtlOutput {
    let admin = std::mem::replace(&mut c.env, viewer.to_vec());
    let out = c.ctl_raw(args, true);
    c.env = admin;
    out
}

#[test]
fn a_viewer_reads_and_every_change_it_attempts_is_refused_by_the_server() {
    let (keys, mut c) = secured_cluster();
    let viewer = env_of(keys.path(), "muster-viewer");

    // The admin does everything: a job on web01, run once.
    c.ctl(&["job", "create", "hello", "--command", "echo hi from $MUSTER_TARGET"]).expect("create");
    c.ctl(&["group", "create", "g1"]).expect("group");
    c.ctl(&["job", "assign", "hello", "--target", "web01"]).expect("assign");
    c.ctl(&["target", "force-poll", "web01"]).expect("force-poll");
    c.ctl(&["job", "start", "hello"]).expect("start");
    let runs = crate::core_loop::finished_runs(&c, "hello", 1);
    let run_id = s(&runs[0], "run_id").to_owned();
    // The run index has it (written by the master's ingest).
    muster_tests::wait_for("the run index to hold the run", Duration::from_secs(30), || {
        let out = c.ctl_raw(&["run", "show", &run_id], true);
        (out.code == 0 && !out.stderr.contains("not in the run index")).then_some(())
    });

    // What the viewer reads is what the admin reads.
    for args in [
        &["target", "list"][..],
        &["target", "show", "web01"],
        &["job", "list"],
        &["job", "show", "hello"],
        &["job", "status", "hello"],
        &["group", "list"],
        &["instructions"],
        &["run", "show", &run_id],
    ] {
        let out = as_viewer(&mut c, &viewer, args);
        assert_eq!(out.code, 0, "the viewer's {args:?}: {out:?}");
        let admin = c.ctl_raw(args, true);
        let (theirs, ours): (Value, Value) =
            (serde_json::from_str(&out.stdout).unwrap(), serde_json::from_str(&admin.stdout).unwrap());
        if args[0] != "target" {
            // (Targets' last-seen times move between the two reads.)
            assert_eq!(theirs, ours, "{args:?}");
        }
    }
    for args in [&["status"][..], &["ping"]] {
        let out = as_viewer(&mut c, &viewer, args);
        assert_eq!(out.code, 0, "the viewer's {args:?}: {out:?}");
    }

    // `target show` for people leaves out the recent runs, which come from
    // history: the viewer gets no consumer (see `perms`), so `history` is
    // refused, at once and as such, rather than left to time out.
    let admin = std::mem::replace(&mut c.env, viewer.clone());
    let shown = c.ctl_raw(&["target", "show", "web01"], false);
    c.env = admin;
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(shown.stdout.contains("web01") && shown.stderr.contains("recent runs not shown"), "{shown:?}");
    let history = as_viewer(&mut c, &viewer, &["history", "--job", "hello"]);
    assert_eq!(history.code, 10, "{history:?}");
    assert!(history.stderr.contains("permissions violation") && history.stderr.contains("$JS.API."), "{history:?}");

    // Every change: refused by the server, reported at once as such.
    let changes: [&[&str]; 12] = [
        &["job", "create", "x", "--command", "true"],
        &["job", "start", "hello"],
        &["job", "stop", "hello"],
        &["job", "disable", "hello"],
        &["job", "delete", "hello"],
        &["job", "assign", "hello", "--target", "web02"],
        &["target", "force-poll", "web01"],
        &["target", "enlist", "web03"],
        &["target", "defect", "web02"],
        &["target", "resync", "web01"],
        &["group", "create", "g2"],
        &["group", "add", "g1", "web01"],
    ];
    for args in changes {
        let started = Instant::now();
        let out = as_viewer(&mut c, &viewer, args);
        assert_eq!(out.code, 10, "the viewer's {args:?}: {out:?}");
        assert!(out.stderr.contains("permissions violation") && out.stderr.contains("muster.api.admin."), "{args:?}: {out:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?} waited {:?}", started.elapsed());
    }
    // `--help` documents the code.
    let help = c.ctl_raw(&["--help"], false);
    assert!(help.stdout.contains("10  permission denied"), "{}", help.stdout);

    // Not the client's doing: the viewer's own request, sent by hand, is
    // dropped by the server and reaches no master.
    let (url, seed) = (c.url(), seed_of(keys.path(), "muster-viewer"));
    let by_hand = block_on(async move {
        let viewer = async_nats::ConnectOptions::with_nkey(seed)
            .request_timeout(Some(Duration::from_secs(2)))
            .connect(url)
            .await
            .expect("the viewer connects");
        viewer
            .request(
                "muster.api.admin.job.create",
                r#"{"v":1,"spec":{"name":"byhand","steps":[{"name":"s","command":"true"}]}}"#.into(),
            )
            .await
    });
    assert!(by_hand.is_err(), "{by_hand:?}");

    // Nothing changed: the job, its assignment, the targets, the groups.
    let jobs: Vec<Value> = c.ctl_ok(&["job", "list"]);
    assert_eq!(jobs.iter().map(|j| s(&j["spec"], "name")).collect::<Vec<_>>(), ["hello"], "{jobs:?}");
    let hello: Value = c.ctl_ok(&["job", "show", "hello"]);
    assert_eq!(hello["targets"], serde_json::json!(["web01"]), "{hello}");
    let targets: Vec<Value> = c.ctl_ok(&["target", "list"]);
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert!(targets.iter().all(|t| s(t, "status") != "defected"), "{targets:?}");
    let groups: Vec<Value> = c.ctl_ok(&["group", "list"]);
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(crate::core_loop::finished_runs(&c, "hello", 1).len(), 1, "no second run");
}

#[test]
fn answers_to_the_viewer_never_land_outside_its_own_account() {
    let (keys, c) = secured_cluster();
    c.ctl(&["job", "create", "hello", "--command", "echo hi"]).expect("create");
    c.ctl(&["group", "create", "g1"]).expect("group");
    c.ctl(&["job", "assign", "hello", "--target", "web01", "--target", "web02"]).expect("assign");
    c.ctl(&["target", "force-poll", "web01", "web02"]).expect("force-poll");
    c.ctl(&["job", "start", "hello"]).expect("start");
    let runs = crate::core_loop::finished_runs(&c, "hello", 2);
    let run_id = s(&runs[0], "run_id").to_owned();
    let hello = s(&c.ctl(&["job", "show", "hello"]).expect("show"), "id").to_owned();
    muster_tests::wait_for("the master to take in every result", Duration::from_secs(30), || {
        let st = c.consumer_state("MUSTER_RESULTS", "master");
        (st.pending == 0 && st.ack_pending == 0).then_some(())
    });

    let aims = crate::reply_injection::aims(&hello, &run_id);
    // Every request the viewer may send: the read API, the service ping,
    // the JetStream reads of `run show` (found and not found).
    let api_requests: Vec<(String, Vec<u8>)> = vec![
        ("muster.api.read.target.list".into(), br#"{"v":1}"#.to_vec()),
        ("muster.api.read.job.show".into(), br#"{"v":1,"job":"hello"}"#.to_vec()),
        ("muster.api.read.job.show".into(), br#"{"v":1,"job":"nope"}"#.to_vec()),
        ("muster.api.read.status".into(), br#"{"v":1}"#.to_vec()),
    ];
    let jetstream_requests: Vec<(String, Vec<u8>)> = vec![
        ("$SRV.PING.muster".into(), Vec::new()),
        ("$JS.API.DIRECT.GET.MUSTER_RESULTS".into(), br#"{"seq":1}"#.to_vec()),
        (format!("$JS.API.DIRECT.GET.KV_muster-runs.$KV.muster-runs.{run_id}"), Vec::new()),
        ("$JS.API.DIRECT.GET.KV_muster-runs.$KV.muster-runs.nope".into(), Vec::new()),
    ];

    let (url, admin_options, seed) = (c.url(), c.connect_options(), seed_of(keys.path(), "muster-viewer"));
    let (before, after, (answered, sent)) = block_on(async {
        let admin = admin_options.connect(url.clone()).await.expect("admin connects");
        let admin_js = jetstream::new(admin.clone());
        let viewer = async_nats::ConnectOptions::with_nkey(seed).connect(url).await.expect("the viewer connects");
        // Allowed, answered in the viewer's account.
        for (subject, body) in api_requests.iter().chain(&jetstream_requests) {
            let answer = viewer.request(subject.clone(), body.clone().into()).await.expect(subject);
            let text = String::from_utf8_lossy(&answer.payload);
            let found = !subject.ends_with("nope") && !String::from_utf8_lossy(body).contains("nope");
            if subject.starts_with("muster.api.") {
                assert_eq!(text.contains("\"ok\""), found, "{subject}: {text}");
            } else if subject.starts_with("$JS.API.DIRECT.GET") {
                assert_eq!(answer.status.is_none(), found, "{subject}: {answer:?}");
            } else {
                assert!(text.contains("muster"), "{subject}: {text}");
            }
        }

        let before = snapshot(&admin_js).await;
        let answered = inject(&viewer, &aims, &jetstream_requests, &api_requests, || answers(&admin, false)).await;
        (before, snapshot(&admin_js).await, answered)
    });
    let changes = changed(&before, &after);
    assert!(changes.is_empty(), "answers aimed elsewhere changed {changes:?}");
    assert_eq!(answered, sent, "the master answered every read (into the viewer's account)");
    let job: Value = c.ctl_ok(&["job", "show", "hello"]);
    assert_eq!(s(&job, "id"), hello);
    let polled = c.ctl(&["target", "force-poll", "web02"]).expect("web02 still answers");
    assert_eq!(polled[0]["report"]["bad_control"].as_u64().unwrap_or(0), 0, "{polled}");
}
