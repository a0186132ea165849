//! Desired state on `MUSTER_DESIRED`, read the way a target will read it (a
//! Direct Get of its own subjects; here with the admin's credentials): every
//! operator change converges the manifests and job documents of the targets
//! concerned, and a master killed between its record write and its
//! publishes converges after a restart, by reconcile.
//!
//! The agents still apply changes from `MUSTER_ASSIGN` at this stage, so
//! these tests need no agent: they check what the master publishes.

use std::process::Command;
use std::time::Duration;

use muster_shared::desired::{JobDoc, Manifest, Revision};
use muster_shared::msg;
use muster_tests::proxy::Proxy;
use muster_tests::{bin, block_on, s, wait_for, Cluster};
use serde_json::Value;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// The last message on a `MUSTER_DESIRED` subject, by Direct Get.
fn direct_get(c: &Cluster, subject: String) -> Option<Vec<u8>> {
    let (options, url) = (c.connect_options(), c.url());
    block_on(async move {
        let client = options.connect(url).await.expect("connecting");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream_no_info("MUSTER_DESIRED").await.expect("the stream");
        stream.direct_get_last_for_subject(subject).await.ok().map(|m| m.payload.to_vec())
    })
}

fn manifest(c: &Cluster, target: &str) -> Option<Manifest> {
    direct_get(c, format!("muster.target.{target}.state")).map(|b| msg::decode(&b).expect("a manifest"))
}

fn doc(c: &Cluster, target: &str, job: Uuid) -> Option<JobDoc> {
    direct_get(c, format!("muster.target.{target}.job.{job}")).map(|b| msg::decode(&b).expect("a job document"))
}

/// `(job name, job revision)` of every job a target's manifest lists.
fn listed(c: &Cluster, target: &str) -> Vec<(String, u64)> {
    manifest(c, target).map_or_else(Vec::new, |m| m.jobs.iter().map(|j| (j.name.to_string(), j.revision)).collect())
}

fn revision(c: &Cluster, target: &str) -> Revision {
    manifest(c, target).expect("a manifest").revision
}

fn job_id(c: &Cluster, job: &str) -> Uuid {
    let info: Value = c.ctl_ok(&["job", "show", job]);
    s(&info, "id").parse().expect("a job id")
}

fn one(job: &str, revision: u64) -> Vec<(String, u64)> {
    vec![(job.to_owned(), revision)]
}

#[test]
fn manifests_and_documents_follow_every_change() {
    let c = Cluster::with_master();
    for t in ["a", "b", "c"] {
        c.ctl(&["target", "enlist", t]).expect("enlist");
        let m = manifest(&c, t).expect("enlisting publishes the first manifest");
        assert_eq!((m.revision, m.jobs.len(), m.defected), (Revision(1), 0, false));
    }

    c.ctl(&["job", "create", "j1", "--command", "echo one"]).expect("create");
    let id = job_id(&c, "j1");
    assert_eq!(revision(&c, "a"), Revision(1), "a job assigned nowhere changes no manifest");
    c.ctl(&["job", "assign", "j1", "--target", "a"]).expect("assign");
    assert_eq!(listed(&c, "a"), one("j1", 1));
    assert_eq!(revision(&c, "a"), Revision(2), "one change, one revision");
    assert_eq!(doc(&c, "a", id).expect("the document").job.revision, 1);
    assert!(listed(&c, "b").is_empty() && doc(&c, "b", id).is_none(), "b is not concerned");

    c.ctl(&["job", "update", "j1", "--command", "echo two"]).expect("update");
    assert_eq!(listed(&c, "a"), one("j1", 2));
    let d = doc(&c, "a", id).expect("the document");
    assert_eq!((d.job.revision, d.job.spec.steps[0].command.as_deref()), (2, Some("echo two")));

    // Through a group: membership moves the job.
    c.ctl(&["group", "create", "g"]).expect("group create");
    c.ctl(&["group", "add", "g", "b"]).expect("group add");
    c.ctl(&["job", "assign", "j1", "--group", "g"]).expect("assign to the group");
    assert_eq!(listed(&c, "b"), one("j1", 2));
    c.ctl(&["group", "add", "g", "c"]).expect("group add");
    assert_eq!(listed(&c, "c"), one("j1", 2));
    c.ctl(&["group", "remove", "g", "b"]).expect("group remove");
    assert!(listed(&c, "b").is_empty());
    assert!(doc(&c, "b", id).is_none(), "the document of a job a target lost is deleted");

    c.ctl(&["job", "unassign", "j1", "--target", "a"]).expect("unassign");
    assert!(listed(&c, "a").is_empty() && doc(&c, "a", id).is_none());

    // A start is an entry with the run id the operator was told.
    let started: Vec<Value> = c.ctl_ok(&["job", "start", "j1", "--target", "c"]);
    let run_id: Uuid = s(&started[0], "run_id").parse().expect("a run id");
    let m = manifest(&c, "c").expect("manifest");
    assert_eq!(m.starts.iter().map(|s| s.run_id).collect::<Vec<_>>(), [run_id]);
    assert_eq!(m.starts[0].expires_at - m.starts[0].posted_at, chrono::Duration::hours(1), "default expiry");

    // Resync: a new revision, the same content; again: one more, still the same.
    let before = manifest(&c, "c").expect("manifest");
    c.ctl(&["target", "resync", "c"]).expect("resync");
    c.ctl(&["target", "resync", "c"]).expect("resync");
    let after = manifest(&c, "c").expect("manifest");
    assert_eq!(after.revision, Revision(before.revision.0 + 2));
    assert_eq!((after.jobs, after.starts), (before.jobs, before.starts));

    // Delete: every target concerned drops it, its documents go everywhere.
    c.ctl(&["job", "delete", "j1"]).expect("delete");
    assert!(listed(&c, "c").is_empty());
    assert!(doc(&c, "c", id).is_none());
    let jobs: Vec<Value> = c.ctl_ok(&["job", "list"]);
    assert!(jobs.is_empty(), "{jobs:?}");
    c.ctl(&["job", "create", "j1", "--command", "echo again"]).expect("the name is free again");

    // Defect: the manifest says so, and holds nothing.
    c.ctl(&["job", "assign", "j1", "--target", "a"]).expect("assign");
    c.ctl(&["target", "defect", "a", "--force"]).expect("defect");
    let m = manifest(&c, "a").expect("a defected target keeps its manifest");
    assert!(m.defected && m.jobs.is_empty(), "{m:?}");
}

/// Starts a master that reaches NATS through `proxy`, and waits for its API.
fn start_master_behind(c: &mut Cluster, proxy: &Proxy) -> usize {
    c.env.push(("NATS_URL".into(), proxy.url()));
    let n = c.spawn_master();
    c.env.pop();
    wait_for("the master's API", WAIT, || c.ctl(&["target", "list"]).ok().map(|_| ()));
    n
}

#[test]
fn a_master_killed_between_record_and_publish_converges_after_restart() {
    let mut c = Cluster::new();
    let proxy = Proxy::start(c.nats.port);
    let first = start_master_behind(&mut c, &proxy);
    for t in ["p1", "h1"] {
        c.ctl(&["target", "enlist", t]).expect("enlist");
    }
    c.ctl(&["job", "create", "k", "--command", "true"]).expect("create");

    // (a) Nothing published: the record is written, every publish to the
    // targets' subjects vanishes, the master dies.
    proxy.drop_publishes_to("muster.target.");
    let mut assign = Command::new(bin("musterctl"))
        .env("NATS_URL", c.url())
        .args(["job", "assign", "k", "--target", "p1", "--target", "h1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("musterctl");
    wait_for("the assignment recorded", WAIT, || {
        let info: Value = c.ctl_ok(&["job", "show", "k"]);
        (info["targets"].as_array().map_or(0, Vec::len) == 2).then_some(())
    });
    wait_for("the master's first publish dropped", WAIT, || (proxy.dropped() > 0).then_some(()));
    c.masters[first].kill();
    assign.wait().ok();
    assert!(listed(&c, "p1").is_empty() && listed(&c, "h1").is_empty(), "nothing was published");

    // (b) Half published: p2's manifest goes out, h2's is dropped, the master dies.
    proxy.drop_publishes_to("muster.target.h");
    let second = start_master_behind(&mut c, &proxy);
    c.ctl(&["target", "enlist", "p2"]).expect("enlist");
    c.ctl(&["target", "enlist", "h2"]).expect("the record is written; the publish is retried later");
    assert!(manifest(&c, "p2").is_some());
    assert!(manifest(&c, "h2").is_none(), "h2's publish was dropped");
    c.masters[second].kill();

    // A new master reconciles: every target converges to the records.
    proxy.restore();
    c.start_master();
    let id = job_id(&c, "k");
    for t in ["p1", "h1"] {
        wait_for(&format!("{t}'s manifest to list k"), WAIT, || (listed(&c, t) == one("k", 1)).then_some(()));
        assert!(doc(&c, t, id).is_some(), "{t}'s document is there");
    }
    wait_for("h2's first manifest", WAIT, || manifest(&c, "h2"));
    assert_eq!(revision(&c, "p2"), Revision(1), "p2 was right already: not republished");
}
