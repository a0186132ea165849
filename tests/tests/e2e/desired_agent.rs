//! The agent's half of delivery by desired state, against the real master:
//! a start read after its expiry is recorded `expired` and never runs; a
//! defected agent, restarted, stays out. (An agent killed while applying a
//! revision is in `faults.rs`.)
//!
//! Where the master has no operation yet for what a test needs (a start that
//! expired while its target was away), the test writes the next manifest
//! revision itself, the way the master does: a compare-and-set on the
//! manifest's last sequence, with its summary header, so the master's next
//! publish re-reads it and carries the entry on.

use std::path::Path;
use std::time::Duration;

use async_nats::HeaderMap;
use muster_shared::desired::{Manifest, StartEntry, MIN_EXPIRY, SUMMARY_HEADER};
use muster_shared::msg;
use muster_shared::name::JobName;
use muster_tests::{block_on, s, wait_for, Cluster};
use serde_json::Value;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

fn jobs_on_disk(c: &Cluster, target: &str) -> usize {
    std::fs::read_dir(c.state_dir(target).join("jobs")).map_or(0, Iterator::count)
}

/// A target's manifest as stored, with its sequence (read as the admin).
pub(crate) fn manifest(c: &Cluster, target: &str) -> (u64, Manifest) {
    let url = c.url();
    let options = c.connect_options();
    block_on(async move {
        let js = async_nats::jetstream::new(options.connect(url).await.expect("connect"));
        let stream = js.get_stream_no_info("MUSTER_DESIRED").await.expect("stream");
        let m = stream.direct_get_last_for_subject(format!("muster.target.{target}.state")).await.expect("a manifest");
        (m.sequence, msg::decode(&m.payload).expect("a manifest body"))
    })
}

/// Publishes `m` as the next revision of its target's manifest, replacing
/// the message at `seq` (compare-and-set, as the master writes).
fn publish_manifest(c: &Cluster, seq: u64, m: &Manifest) {
    let (url, options) = (c.url(), c.connect_options());
    let subject = format!("muster.target.{}.state", m.target);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Expected-Last-Subject-Sequence", seq.to_string().as_str());
    headers.insert(SUMMARY_HEADER, serde_json::to_string(&m.summary()).expect("summary").as_str());
    headers.insert(muster_shared::KIND_HEADER, muster_shared::desired::KIND_MANIFEST);
    let body = msg::encode(m);
    block_on(async move {
        let js = async_nats::jetstream::new(options.connect(url).await.expect("connect"));
        js.publish_with_headers(subject, headers, body.into()).await.expect("sent").await.expect("stored");
    });
}

/// A job's id, from the master.
fn job_id(c: &Cluster, job: &str) -> Uuid {
    let info: Value = c.ctl_ok(&["job", "show", job]);
    s(&info, "id").parse().expect("a job id")
}

/// Force-polls a target on its control subject directly (whether or not
/// the master has it enlisted); `None` while nothing answers.
fn try_force_poll_raw(c: &Cluster, target: &str) -> Option<Value> {
    let (url, options) = (c.url(), c.connect_options());
    let subject = format!("muster.target.{target}.control");
    block_on(async move {
        let client = options.connect(url).await.expect("connect");
        let reply = client.request(subject, r#"{"v":1,"op":"poll"}"#.into()).await.ok()?;
        Some(serde_json::from_slice(&reply.payload).expect("JSON"))
    })
}

fn force_poll_raw(c: &Cluster, target: &str) -> Value {
    try_force_poll_raw(c, target).expect("the target answers")
}

fn agent_json(c: &Cluster, target: &str) -> Value {
    serde_json::from_slice(&std::fs::read(c.state_dir(target).join("agent.json")).expect("agent.json")).expect("JSON")
}

#[test]
fn an_expired_start_is_recorded_expired_and_never_runs_even_when_the_target_comes_back() {
    let mut c = Cluster::with_master();
    c.start_target("e1", 3600);
    c.wait_target_online("e1");
    let (late_out, fresh_out) = (c.dir.path().join("late.ran"), c.dir.path().join("fresh.ran"));
    for (job, out) in [("late", &late_out), ("fresh", &fresh_out)] {
        c.ctl(&["job", "create", job, "--command", &format!("echo ran >> '{}'", out.display())]).expect("create");
        c.ctl(&["job", "assign", job, "--target", "e1"]).expect("assign");
    }
    c.ctl(&["target", "force-poll", "e1"]).expect("force-poll");
    assert_eq!(jobs_on_disk(&c, "e1"), 2);

    // The target goes away. A start posted a minute ago with a 10 s expiry
    // waits in its manifest; another, posted now, is within its hour.
    c.target("e1").terminate(Duration::from_secs(20));
    let (seq, current) = manifest(&c, "e1");
    let mut next = current.successor(current.derived(), chrono::Utc::now());
    let posted = chrono::Utc::now() - chrono::Duration::seconds(60);
    let expired = StartEntry::new(Uuid::now_v7(), job_id(&c, "late"), JobName::new("late").unwrap(), posted, MIN_EXPIRY).unwrap();
    next.add_start(expired.clone()).unwrap();
    publish_manifest(&c, seq, &next);
    let fresh = c.ctl(&["job", "start", "fresh"]).expect("start while away");
    assert_eq!(s(&fresh[0], "state"), "posted", "{fresh}");

    // Back: the fresh start runs; the expired one is answered, not run.
    c.start_target("e1", 3600);
    let runs = wait_for("the fresh start run and the late one answered", WAIT, || {
        let late = c.try_finished_runs("late")?;
        (c.try_finished_runs("fresh")?.len() == 1 && late.len() == 1).then_some(late)
    });
    assert_eq!(s(&runs[0], "outcome"), "expired", "{runs:?}");
    assert_eq!(s(&runs[0], "run_id"), expired.run_id.to_string());
    assert_eq!(lines(&fresh_out), 1);
    assert_eq!(lines(&late_out), 0, "the expired start never ran");

    // Later still, and after another restart: still one answer, still not run.
    c.target("e1").kill();
    c.start_target("e1", 3600);
    c.wait_target_online("e1");
    c.ctl(&["target", "force-poll", "e1"]).expect("force-poll");
    assert_eq!(c.history("late").len(), 1, "{:?}", c.history("late"));
    assert_eq!(lines(&late_out), 0);
    assert_eq!(lines(&fresh_out), 1, "nor did the fresh start run twice");
}

#[test]
fn a_defected_agent_restarted_stays_out() {
    let mut c = Cluster::with_master();
    c.start_target("d1", 3600);
    c.wait_target_online("d1");
    c.ctl(&["job", "create", "j", "--command", "true"]).expect("create");
    c.ctl(&["job", "assign", "j", "--target", "d1"]).expect("assign");
    c.ctl(&["target", "force-poll", "d1"]).expect("force-poll");
    assert_eq!(jobs_on_disk(&c, "d1"), 1);

    c.ctl(&["target", "defect", "d1"]).expect("defect");
    assert!(manifest(&c, "d1").1.defected, "the manifest says so");
    force_poll_raw(&c, "d1");
    wait_for("the defection applied", WAIT, || {
        (jobs_on_disk(&c, "d1") == 0 && agent_json(&c, "d1")["defected"] == true).then_some(())
    });

    // Restarted, the agent reads its manifest first and does not enlist
    // itself: had it asked, the master would have enlisted it again and
    // published a manifest that is no longer defected.
    c.target("d1").kill();
    c.start_target("d1", 3600);
    wait_for("the restarted agent to answer", WAIT, || try_force_poll_raw(&c, "d1")?["report"].is_object().then_some(()));
    let log = c.target("d1").log_text();
    let restarted = log.rsplit("agent starting").next().unwrap_or_default();
    assert!(restarted.contains("this target defected: not enlisting"), "{log}");
    assert!(!restarted.contains("enlisted target="), "{log}");
    let (_, m) = manifest(&c, "d1");
    assert!(m.defected && m.jobs.is_empty(), "{m:?}");
    assert_eq!(jobs_on_disk(&c, "d1"), 0);
    assert_eq!(agent_json(&c, "d1")["defected"], true);
    let report = force_poll_raw(&c, "d1");
    assert_eq!(report["report"]["applied_revision"]["revision"], m.revision.0, "{report}");

    // An operator enlists it again: the next manifest says so, and the agent follows.
    c.ctl(&["target", "enlist", "d1"]).expect("enlist again");
    wait_for("the agent back in", WAIT, || {
        try_force_poll_raw(&c, "d1")?;
        (agent_json(&c, "d1")["defected"] == false).then_some(())
    });
}
