//! `job start --expires` and `job stop --expires`: how long a start or stop
//! waits for a target that has not read it. The expiry reaches the entry in
//! the target's manifest; a value outside 10 s..7 d is refused with a clear
//! error and exit 4 before anything is posted, by musterctl and by the
//! master alike.

use std::time::Duration;

use muster_shared::api::Op;
use muster_shared::desired::Manifest;
use muster_shared::subject::Subjects;
use muster_tests::{block_on, Cluster};
use serde_json::{json, Value};

/// The target's manifest as it reads it.
fn manifest(c: &Cluster, target: &str) -> Manifest {
    crate::desired_agent::manifest(c, target).1
}

/// The master's answer to a raw API request, bypassing musterctl's checks.
fn raw_api(c: &Cluster, op: Op, body: Value) -> Value {
    let (options, url) = (c.connect_options(), c.url());
    let subject = Subjects::default().api(op);
    block_on(async move {
        let client = options.connect(url).await.expect("connecting");
        let reply = client.request(subject, serde_json::to_vec(&body).unwrap().into()).await.expect("an answer");
        serde_json::from_slice(&reply.payload).expect("JSON")
    })
}

#[test]
fn expiry_reaches_the_manifest_and_bad_values_are_refused_before_posting() {
    let c = Cluster::with_master();
    c.ctl(&["target", "enlist", "a"]).expect("enlist");
    c.ctl(&["job", "create", "j", "--command", "true"]).expect("create");
    c.ctl(&["job", "assign", "j", "--target", "a"]).expect("assign");
    let before = manifest(&c, "a").revision;

    for args in [
        ["job", "start", "j", "--expires", "5s"],
        ["job", "start", "j", "--expires", "8d"],
        ["job", "start", "j", "--expires", "soon"],
        ["job", "stop", "j", "--expires", "1s"],
    ] {
        let out = c.ctl_raw(&args, false);
        assert_eq!(out.code, 4, "{args:?}: {out:?}");
        assert!(out.stderr.contains("--expires") && out.stderr.contains("10s"), "{out:?}");
    }
    // The master checks too (an older or another client).
    let answer = raw_api(&c, Op::JobStart, json!({"v": 1, "job": "j", "targets": ["a"], "expires_secs": 1}));
    assert_eq!(answer["error"]["code"], "invalid_request", "{answer}");
    assert_eq!(manifest(&c, "a").revision, before, "nothing was posted");

    // The target is offline: the start and the stop wait in its manifest.
    c.ctl_raw(&["job", "start", "j", "--target", "a", "--expires", "10m"], false);
    let m = manifest(&c, "a");
    assert_eq!(m.starts.len(), 1);
    let waits = m.starts[0].expires_at - m.starts[0].posted_at;
    assert_eq!(waits.to_std().unwrap(), Duration::from_secs(600));

    c.ctl_raw(&["job", "stop", "j", "--target", "a", "--expires", "2h"], false);
    let m = manifest(&c, "a");
    assert_eq!(m.stops.len(), 1);
    let waits = m.stops[0].expires_at - m.stops[0].posted_at;
    assert_eq!(waits.to_std().unwrap(), Duration::from_secs(7200));

    // Without --expires: an hour.
    c.ctl_raw(&["job", "start", "j", "--target", "a"], false);
    let m = manifest(&c, "a");
    let newest = m.starts.iter().max_by_key(|s| s.posted_at).unwrap();
    assert_eq!((newest.expires_at - newest.posted_at).to_std().unwrap(), Duration::from_secs(3600));
}
