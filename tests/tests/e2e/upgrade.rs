//! Upgrading an installation made by the previous version: its records, and
//! `MUSTER_ASSIGN` with a consumer per target and instructions still queued
//! (a start among them), no `MUSTER_DESIRED`. The fixture's queue is built
//! the old way with raw async-nats; a master of this version started on it
//! converts it and loses no job, assignment or start.

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use chrono::Utc;
use muster_shared::desired::Manifest;
use muster_shared::msg;
use muster_tests::{block_on, s, wait_for, Cluster};
use serde_json::{json, Value};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn manifest(c: &Cluster, target: &str) -> Option<Manifest> {
    let (options, url) = (c.connect_options(), c.url());
    let subject = format!("muster.target.{target}.state");
    block_on(async move {
        let client = options.connect(url).await.expect("connecting");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream_no_info("MUSTER_DESIRED").await.ok()?;
        let m = stream.direct_get_last_for_subject(subject).await.ok()?;
        Some(msg::decode(&m.payload).expect("a manifest"))
    })
}

fn stream_exists(c: &Cluster, name: &str) -> bool {
    let (options, url, name) = (c.connect_options(), c.url(), name.to_owned());
    block_on(async move {
        let client = options.connect(url).await.expect("connecting");
        async_nats::jetstream::new(client).get_stream(name).await.is_ok()
    })
}

/// `(op, status)` of each download-list row of `target`.
fn rows(c: &Cluster, target: &str) -> Vec<(String, String)> {
    let rows: Vec<Value> = c.ctl_ok(&["instructions", "--target", target]);
    rows.iter().map(|r| (s(r, "op").to_owned(), s(r, "status").to_owned())).collect()
}

#[test]
fn a_previous_versions_queue_is_converted_and_loses_nothing() {
    let mut c = Cluster::with_master();
    // The records, as any version writes them.
    for t in ["a", "b"] {
        c.ctl(&["target", "enlist", t]).expect("enlist");
    }
    c.ctl(&["job", "create", "j", "--command", "true"]).expect("create");
    c.ctl(&["job", "assign", "j", "--target", "a", "--target", "b"]).expect("assign");
    let job: Value = c.ctl_ok(&["job", "show", "j"]);
    let job_id: Uuid = s(&job, "id").parse().unwrap();
    c.masters[0].kill();

    // What the previous version had on the server besides the records: no
    // desired state, and a work-queue stream with a consumer per target
    // holding what the targets had not fetched yet.
    let run_id = Uuid::now_v7();
    let stale_run = Uuid::now_v7();
    let now = Utc::now();
    // An instruction: its op's fields beside its own (serde flatten).
    let instr = |target: &str, op: Value, posted_at: chrono::DateTime<Utc>| {
        let mut i = json!({"v": 1, "id": Uuid::now_v7(), "target": target, "posted_at": posted_at});
        i.as_object_mut().unwrap().extend(op.as_object().unwrap().clone());
        i
    };
    let mut def = job["spec"].clone();
    def["id"] = json!(job_id);
    def["revision"] = job["revision"].clone();
    let queued = [
        ("a", instr("a", json!({"op": "upsert_job", "job": def}), now)),
        ("a", instr("a", json!({"op": "start_job", "job_id": job_id, "job": "j", "run_id": run_id}), now)),
        (
            "a",
            instr(
                "a",
                json!({"op": "start_job", "job_id": job_id, "job": "j", "run_id": stale_run}),
                now - chrono::Duration::hours(3),
            ),
        ),
        ("b", instr("b", json!({"op": "set_poll_interval", "secs": 30}), now)),
    ];
    let (options, url) = (c.connect_options(), c.url());
    let bodies: Vec<(String, Value)> = queued.iter().map(|(t, v)| ((*t).to_owned(), v.clone())).collect();
    block_on(async move {
        let client = options.connect(url).await.expect("connecting");
        let js = async_nats::jetstream::new(client);
        js.delete_stream("MUSTER_DESIRED").await.expect("no desired state before");
        js.create_stream(stream::Config {
            name: "MUSTER_ASSIGN".into(),
            subjects: vec!["muster.target.*.assign".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .expect("the old stream");
        for t in ["a", "b"] {
            js.create_consumer_on_stream(
                consumer::pull::Config {
                    durable_name: Some(t.into()),
                    filter_subject: format!("muster.target.{t}.assign"),
                    ..Default::default()
                },
                "MUSTER_ASSIGN",
            )
            .await
            .expect("a consumer per target");
        }
        let kv = js.get_key_value("muster-instructions").await.expect("the download list");
        for (t, i) in bodies {
            let body = serde_json::to_vec(&i).unwrap();
            js.publish(format!("muster.target.{t}.assign"), body.into()).await.unwrap().await.unwrap();
            let row = json!({
                "id": i["id"], "target": t, "op": i["op"], "posted_at": i["posted_at"], "status": "pending",
            });
            kv.put(format!("{t}.{}", s(&i, "id")), serde_json::to_vec(&row).unwrap().into()).await.unwrap();
        }
    });

    c.start_master();
    wait_for("the old stream converted and deleted", WAIT, || (!stream_exists(&c, "MUSTER_ASSIGN")).then_some(()));
    let a = wait_for("a's manifest", WAIT, || manifest(&c, "a"));
    let b = wait_for("b's manifest", WAIT, || manifest(&c, "b"));
    assert_eq!(a.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [job_id], "a keeps its job");
    assert_eq!(b.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [job_id], "b keeps its job");
    assert_eq!(
        a.starts.iter().map(|s| s.run_id).collect::<Vec<_>>(),
        [run_id],
        "the queued start carried over with its run id; the expired one not"
    );
    // The first row is the assignment's, made by this version's master
    // before the fixture (pending until the target applies a revision).
    let a_rows = rows(&c, "a");
    assert_eq!(
        a_rows[1..],
        [
            ("upsert_job".to_owned(), "dropped".to_owned()),
            ("start_job".to_owned(), "pending".to_owned()),
            ("start_job".to_owned(), "dropped".to_owned()),
        ],
        "{a_rows:?}"
    );
    assert_eq!(rows(&c, "b")[1..], [("set_poll_interval".to_owned(), "dropped".to_owned())]);

    // An agent of the previous version reports no applied revision: outdated.
    let report = json!({
        "v": 1, "target": "a", "polled_at": Utc::now(), "agent_version": "0.0.9", "instance": Uuid::new_v4(),
        "poll_interval_secs": 60, "applied": 0, "failed": 0, "jobs": 1,
    });
    let (options, url) = (c.connect_options(), c.url());
    block_on(async move {
        let client = options.connect(url).await.expect("connecting");
        let js = async_nats::jetstream::new(client);
        js.publish("muster.poll.a", serde_json::to_vec(&report).unwrap().into()).await.unwrap().await.unwrap();
    });
    let list: Vec<Value> = c.ctl_ok(&["target", "list"]);
    let status = |n: &str| list.iter().find(|t| s(t, "name") == n).map(|t| s(t, "status").to_owned());
    assert_eq!(status("a").as_deref(), Some("outdated"), "{list:?}");
    assert_eq!(status("b").as_deref(), Some("never_polled"), "{list:?}");
}
