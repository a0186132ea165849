//! Operator roles. With the users `musterctl auth nats-config` writes, the
//! viewer (`muster-viewer`) lists and shows everything the API reads, reads
//! history (Direct Gets only: filters, `--limit`, `--since`, the recent runs
//! of `target show`, `run show` of a running or unindexed run) exactly as
//! the admin does, reads a run's stored output (`run logs`, `run output`;
//! not `--follow`), and every change it attempts is refused by the
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

    // The admin does everything: a job on both targets, run twice (four
    // runs, two per target), and a slow job on web01, left running.
    c.ctl(&["job", "create", "hello", "--command", "echo hi from $MUSTER_TARGET"]).expect("create");
    c.ctl(&["job", "create", "slow", "--command", "sleep 60"]).expect("create");
    c.ctl(&["group", "create", "g1"]).expect("group");
    c.ctl(&["job", "assign", "hello", "--target", "web01", "--target", "web02"]).expect("assign");
    c.ctl(&["job", "assign", "slow", "--target", "web01"]).expect("assign");
    c.ctl(&["target", "force-poll", "web01", "web02"]).expect("force-poll");
    c.ctl(&["job", "start", "hello"]).expect("start");
    crate::core_loop::finished_runs(&c, "hello", 2);
    c.ctl(&["job", "start", "hello"]).expect("start");
    let runs = crate::core_loop::finished_runs(&c, "hello", 4);
    let run_id = s(&runs[0], "run_id").to_owned();
    c.ctl(&["job", "start", "slow"]).expect("start");
    let running: Vec<Value> = muster_tests::wait_for("the slow run to be recorded", Duration::from_secs(30), || {
        let runs: Vec<Value> = c.ctl_ok(&["history", "--job", "slow"]);
        (runs.len() == 1).then_some(runs)
    });
    assert_eq!(s(&running[0], "outcome"), "running", "{running:?}");
    let running_id = s(&running[0], "run_id").to_owned();
    // The run index has both (written by the master's ingest).
    for id in [&run_id, &running_id] {
        muster_tests::wait_for("the run index to hold the run", Duration::from_secs(30), || {
            let out = c.ctl_raw(&["run", "show", id], true);
            (out.code == 0 && !out.stderr.contains("not in the run index")).then_some(())
        });
    }

    // What the viewer reads is what the admin reads: the API's reads and
    // history, with every filter and limit.
    for args in [
        &["target", "list"][..],
        &["target", "show", "web01"],
        &["job", "list"],
        &["job", "show", "hello"],
        &["job", "status", "hello"],
        &["group", "list"],
        &["instructions"],
        &["run", "show", &run_id],
        &["run", "show", &running_id],
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
    for (args, want) in [
        (&["history"][..], 5),
        (&["history", "--limit", "2"], 2),
        (&["history", "--job", "hello"], 4),
        (&["history", "--job", "hello", "--target", "web02", "--limit", "1"], 1),
        (&["history", "--target", "web01", "--outcome", "running"], 1),
        (&["history", "--outcome", "succeeded", "--since", "1h"], 4),
    ] {
        let out = as_viewer(&mut c, &viewer, args);
        assert_eq!(out.code, 0, "the viewer's {args:?}: {out:?}");
        let theirs: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
        let ours: Vec<Value> = c.ctl_ok(args);
        assert_eq!(theirs, ours, "{args:?}");
        // The filters did filter (the equality is not of two empty lists).
        assert_eq!(theirs.len(), want, "{args:?}: {theirs:?}");
    }
    let limited: Vec<Value> = serde_json::from_str(&as_viewer(&mut c, &viewer, &["history", "--limit", "2"]).stdout).unwrap();
    assert!(limited.iter().any(|r| s(r, "run_id") == running_id), "the newest run is in the last two: {limited:?}");
    let web02: Vec<Value> = serde_json::from_str(
        &as_viewer(&mut c, &viewer, &["history", "--job", "hello", "--target", "web02", "--limit", "1"]).stdout,
    )
    .unwrap();
    assert_eq!(s(&web02[0], "target"), "web02", "{web02:?}");
    for args in [&["status"][..], &["ping"]] {
        let out = as_viewer(&mut c, &viewer, args);
        assert_eq!(out.code, 0, "the viewer's {args:?}: {out:?}");
    }

    // The run's output as stored, by Direct Gets; following it takes a
    // consumer, refused.
    let logs = as_viewer(&mut c, &viewer, &["run", "logs", &run_id]);
    let said = format!("hi from {}\n", s(&runs[0], "target"));
    assert_eq!((logs.code, logs.stdout.as_str()), (0, said.as_str()), "{logs:?}");
    let follow = as_viewer(&mut c, &viewer, &["run", "logs", &run_id, "--follow"]);
    assert_eq!(follow.code, 10, "{follow:?}");
    // Kept output is readable the same way (this job keeps none: not found, not refused).
    let output = as_viewer(&mut c, &viewer, &["run", "output", &run_id]);
    assert_eq!(output.code, 3, "{output:?}");

    // `target show` for people has the recent runs, read from history.
    let admin = std::mem::replace(&mut c.env, viewer.clone());
    let shown = c.ctl_raw(&["target", "show", "web01"], false);
    c.env = admin;
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(shown.stdout.contains("recent runs") && shown.stdout.contains(&running_id), "{shown:?}");
    assert!(!shown.stderr.contains("not shown"), "{shown:?}");

    // A run the index does not have (its entry deleted, as with no master
    // or an ingest behind) is found by reading history from its time.
    let (url, options) = (c.url(), c.connect_options());
    let index_key = run_id.clone();
    block_on(async move {
        let admin = options.connect(url).await.expect("admin connects");
        let index = jetstream::new(admin).get_key_value("muster-runs").await.expect("the run index");
        index.delete(&index_key).await.expect("entry deleted");
    });
    let unindexed = as_viewer(&mut c, &viewer, &["run", "show", &run_id]);
    assert_eq!(unindexed.code, 0, "{unindexed:?}");
    assert!(unindexed.stderr.contains("not in the run index"), "{unindexed:?}");
    let found: Value = serde_json::from_str(&unindexed.stdout).unwrap();
    assert_eq!((s(&found, "run_id"), s(&found, "outcome")), (run_id.as_str(), "succeeded"), "{found}");
    c.ctl(&["job", "stop", "slow"]).expect("stop");

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
    assert_eq!(jobs.iter().map(|j| s(&j["spec"], "name")).collect::<Vec<_>>(), ["hello", "slow"], "{jobs:?}");
    let hello: Value = c.ctl_ok(&["job", "show", "hello"]);
    assert_eq!(hello["targets"], serde_json::json!(["web01", "web02"]), "{hello}");
    let targets: Vec<Value> = c.ctl_ok(&["target", "list"]);
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert!(targets.iter().all(|t| s(t, "status") != "defected"), "{targets:?}");
    let groups: Vec<Value> = c.ctl_ok(&["group", "list"]);
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(crate::core_loop::finished_runs(&c, "hello", 4).len(), 4, "no further run");
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
    // the Direct Gets of history and `run show` (found and not found; one
    // answer, and a batch of several answers and an end-of-batch status).
    let api_requests: Vec<(String, Vec<u8>)> = vec![
        ("muster.api.read.target.list".into(), br#"{"v":1}"#.to_vec()),
        ("muster.api.read.job.show".into(), br#"{"v":1,"job":"hello"}"#.to_vec()),
        ("muster.api.read.job.show".into(), br#"{"v":1,"job":"nope"}"#.to_vec()),
        ("muster.api.read.status".into(), br#"{"v":1}"#.to_vec()),
    ];
    let jetstream_requests: Vec<(String, Vec<u8>)> = vec![
        ("$SRV.PING.muster".into(), Vec::new()),
        ("$JS.API.DIRECT.GET.MUSTER_RESULTS".into(), br#"{"seq":1}"#.to_vec()),
        ("$JS.API.DIRECT.GET.MUSTER_OUTPUT".into(), br#"{"next_by_subj":"muster.output.>"}"#.to_vec()),
        ("$JS.API.DIRECT.GET.MUSTER_KEPT".into(), br#"{"next_by_subj":"muster.kept.nope.>"}"#.to_vec()),
        ("$JS.API.DIRECT.GET.MUSTER_RESULTS".into(), br#"{"last_by_subj":"muster.result.*.run.*"}"#.to_vec()),
        (
            "$JS.API.DIRECT.GET.MUSTER_RESULTS".into(),
            br#"{"seq":1,"batch":100,"max_bytes":1048576,"next_by_subj":"muster.result.>"}"#.to_vec(),
        ),
        ("$JS.API.DIRECT.GET.MUSTER_RESULTS".into(), br#"{"seq":1,"batch":10,"next_by_subj":"nope.>"}"#.to_vec()),
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

        // A batch crosses the account boundary whole: every record the first
        // one announces, then the end-of-batch status (an import taking one
        // answer would deliver the first record and nothing more).
        let inbox = viewer.new_inbox();
        let mut replies = viewer.subscribe(inbox.clone()).await.expect("subscribed");
        let batch = br#"{"seq":1,"batch":1000,"max_bytes":4194304,"next_by_subj":"muster.result.>"}"#;
        viewer.publish_with_reply("$JS.API.DIRECT.GET.MUSTER_RESULTS", inbox, batch.to_vec().into()).await.expect("sent");
        let header = |m: &async_nats::Message, name: &str| -> u64 {
            m.headers.as_ref().and_then(|h| h.get(name)).and_then(|v| v.as_str().parse().ok()).expect(name)
        };
        let (mut records, mut announced) = (0, None);
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut replies))
                .await
                .expect("the batch goes on to its end")
                .expect("a reply");
            if m.status.is_some() {
                assert_eq!(m.status.map(|s| s.as_u16()), Some(204), "{m:?}");
                assert_eq!(header(&m, "Nats-Num-Pending"), 0, "{m:?}");
                break;
            }
            records += 1;
            announced.get_or_insert(header(&m, "Nats-Num-Pending") + 1);
        }
        assert!(records > 4, "every record of the stream: {records}");
        assert_eq!(Some(records), announced, "as many records as the first announced");

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
