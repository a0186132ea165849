//! The master's side of what targets report with desired state: an applied
//! record settles the download-list rows at or below its revision (applied,
//! or failed with the target's error; the rest stay unread), and a manual
//! run's first record takes its start entry out of the manifest.
//!
//! The records are published here with the admin's credentials, exactly as
//! an agent publishes them on its own result subjects, so the test needs no
//! agent and pins down the master alone.

use std::time::Duration;

use chrono::Utc;
use muster_shared::desired::{Applied, AppliedRecord, JobError, Manifest};
use muster_shared::msg::{self, Outcome, RunRecord, Trigger};
use muster_shared::name::{JobName, TargetName};
use muster_tests::{block_on, s, wait_for, Cluster};
use serde_json::Value;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// The target's manifest as it reads it.
fn manifest(c: &Cluster, target: &str) -> Manifest {
    crate::desired_agent::manifest(c, target).1
}

/// Publishes `body` on `subject` of `MUSTER_RESULTS`, as a target would.
fn publish(c: &Cluster, subject: String, body: Vec<u8>) {
    let (options, url) = (c.connect_options(), c.url());
    block_on(async move {
        let client = options.connect(url).await.expect("connecting");
        let js = async_nats::jetstream::new(client);
        js.publish(subject, body.into()).await.expect("publish").await.expect("stored");
    });
}

fn applied(m: &Manifest, target: &str, refused: Option<&str>, errors: Vec<JobError>) -> AppliedRecord {
    AppliedRecord {
        v: 1,
        target: TargetName::new(target).unwrap(),
        applied: Applied { epoch: m.epoch, revision: m.revision, changes: m.changes },
        at: Utc::now(),
        refused: refused.map(str::to_owned),
        errors,
    }
}

/// `(op, status, revision)` of each download-list row of `target`.
fn rows(c: &Cluster, target: &str) -> Vec<(String, String, u64)> {
    let rows: Vec<Value> = c.ctl_ok(&["instructions", "--target", target]);
    rows.iter().map(|r| (s(r, "op").to_owned(), s(r, "status").to_owned(), r["revision"].as_u64().unwrap_or(0))).collect()
}

fn status_of(c: &Cluster, target: &str, op: &str) -> String {
    rows(c, target).into_iter().find(|r| r.0 == op).map(|r| r.1).unwrap_or_default()
}

#[test]
fn applied_records_settle_rows_and_a_runs_first_record_answers_its_start() {
    let c = Cluster::with_master();
    c.ctl(&["target", "enlist", "a"]).expect("enlist");
    c.ctl(&["job", "create", "j", "--command", "true"]).expect("create");
    c.ctl(&["job", "assign", "j", "--target", "a"]).expect("assign");
    let assigned = manifest(&c, "a");
    let started: Vec<Value> = c.ctl_ok(&["job", "start", "j", "--target", "a"]);
    let run_id: Uuid = s(&started[0], "run_id").parse().expect("a run id");
    let with_start = manifest(&c, "a");
    assert!(with_start.revision > assigned.revision);
    assert_eq!(with_start.starts.len(), 1);

    // The target applied the assignment's revision, not yet the start's.
    publish(&c, "muster.result.a.applied".into(), msg::encode(&applied(&assigned, "a", None, Vec::new())));
    wait_for("the upsert row applied", WAIT, || (status_of(&c, "a", "upsert_job") == "applied").then_some(()));
    assert_eq!(status_of(&c, "a", "start_job"), "pending", "posted above the applied revision: unread");

    // A record that names another target than its subject is ignored.
    publish(&c, "muster.result.b.applied".into(), msg::encode(&applied(&with_start, "a", None, Vec::new())));

    // The run's first record takes the start out of the manifest.
    let job_id = with_start.starts[0].job_id;
    let run = RunRecord {
        params: Default::default(),
        v: 1,
        run_id,
        job_id,
        job: JobName::new("j").unwrap(),
        target: TargetName::new("a").unwrap(),
        trigger: Trigger::Manual,
        outcome: Outcome::Running,
        started_at: Utc::now(),
        finished_at: None,
        message: String::new(),
        steps: Vec::new(),
    };
    publish(&c, format!("muster.result.a.run.{job_id}"), msg::encode(&run));
    let answered = wait_for("the start entry removed", WAIT, || {
        let m = manifest(&c, "a");
        m.starts.is_empty().then_some(m)
    });
    assert!(answered.revision > with_start.revision);
    assert_eq!(status_of(&c, "a", "start_job"), "pending", "the forged record settled nothing");

    // The target refuses the next revision: every row it covers fails, and
    // the target is blocked until a clean record.
    publish(&c, "muster.result.a.applied".into(), msg::encode(&applied(&answered, "a", Some("bad manifest"), Vec::new())));
    wait_for("the start row failed", WAIT, || (status_of(&c, "a", "start_job") == "failed").then_some(()));
    let failed: Vec<Value> = c.ctl_ok(&["instructions", "--target", "a", "--errors"]);
    assert_eq!(s(&failed[0], "error"), "bad manifest");
    let info: Value = c.ctl_ok(&["target", "show", "a"]);
    assert_eq!(s(&info, "status"), "blocked", "{info}");

    // A job error fails only that job's rows; a clean record unblocks.
    c.ctl(&["job", "update", "j", "--command", "false"]).expect("update");
    let updated = manifest(&c, "a");
    let error = JobError { job_id, job: JobName::new("j").unwrap(), error: "cannot write".into() };
    publish(&c, "muster.result.a.applied".into(), msg::encode(&applied(&updated, "a", None, vec![error])));
    wait_for("the update's row failed", WAIT, || {
        rows(&c, "a").iter().any(|r| r.0 == "upsert_job" && r.2 == updated.revision.0 && r.1 == "failed").then_some(())
    });
    c.ctl(&["job", "update", "j", "--command", "true"]).expect("update");
    let fixed = manifest(&c, "a");
    publish(&c, "muster.result.a.applied".into(), msg::encode(&applied(&fixed, "a", None, Vec::new())));
    wait_for("unblocked", WAIT, || {
        let info: Value = c.ctl_ok(&["target", "show", "a"]);
        (s(&info, "status") != "blocked").then_some(())
    });
    // Each failing record told once that the target is blocked, the clean one not.
    let events: Vec<Value> = c.ctl_ok(&["events"]);
    let blocked: Vec<(&str, &str)> =
        events.iter().filter(|e| s(e, "kind") == "target_blocked").map(|e| (s(e, "target"), s(e, "message"))).collect();
    assert_eq!(blocked, [("a", "bad manifest"), ("a", "job 'j': cannot write")], "{events:?}");
    assert!(
        rows(&c, "a").iter().all(|r| r.1 != "pending" || r.2 > fixed.revision.0),
        "nothing at or below the applied revision stays unread: {:?}",
        rows(&c, "a")
    );
}
