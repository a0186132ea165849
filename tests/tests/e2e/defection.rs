//! Defection is state on the master: an agent of a defected target that
//! enlists is refused with `defected` (whether its record still says so, or
//! only its manifest, after a forced defection or once it applied the
//! defection); `musterctl target enlist` brings it back.
//!
//! The agent's calls are made raw, on the agent's own subject, exactly as
//! an agent makes them, so the test pins down the master alone.

use chrono::Utc;
use muster_shared::desired::{Applied, AppliedRecord, Manifest};
use muster_shared::msg;
use muster_shared::name::TargetName;
use muster_tests::{block_on, s, wait_for, Cluster};
use serde_json::{json, Value};
use uuid::Uuid;

const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The target's manifest as it reads it.
fn manifest(c: &Cluster, target: &str) -> Manifest {
    crate::desired_agent::manifest(c, target).1
}

/// An agent enlisting itself; the error code, or `None` when enlisted.
fn agent_enlist(c: &Cluster, target: &str) -> Option<String> {
    let (options, url) = (c.connect_options(), c.url());
    let subject = format!("muster.api.agent.{target}.enlist");
    let body = json!({"v": 1, "name": target, "instance": Uuid::new_v4()});
    block_on(async move {
        // Agents ask from their own inbox, the only place the master answers them.
        let client = options.custom_inbox_prefix(format!("_INBOX_{target}")).connect(url).await.expect("connecting");
        let reply = client.request(subject, serde_json::to_vec(&body).unwrap().into()).await.expect("an answer");
        let v: Value = serde_json::from_slice(&reply.payload).expect("JSON");
        v["error"]["code"].as_str().map(str::to_owned)
    })
}

fn publish_applied(c: &Cluster, target: &str, m: &Manifest) {
    let record = AppliedRecord {
        v: 1,
        target: TargetName::new(target).unwrap(),
        applied: Applied { epoch: m.epoch, revision: m.revision, changes: m.changes },
        at: Utc::now(),
        refused: None,
        errors: Vec::new(),
    };
    let (options, url) = (c.connect_options(), c.url());
    let subject = format!("muster.result.{target}.applied");
    block_on(async move {
        let client = options.connect(url).await.expect("connecting");
        let js = async_nats::jetstream::new(client);
        js.publish(subject, msg::encode(&record).into()).await.expect("publish").await.expect("stored");
    });
}

#[test]
fn a_defected_target_stays_out_until_an_operator_enlists_it() {
    let c = Cluster::with_master();
    c.ctl(&["job", "create", "j", "--command", "true"]).expect("create");

    // Forced: no record, the manifest alone says defected.
    assert_eq!(agent_enlist(&c, "gone"), None, "an agent enlists itself");
    c.ctl(&["job", "assign", "j", "--target", "gone"]).expect("assign");
    c.ctl(&["target", "defect", "gone", "--force"]).expect("forced defect");
    assert_eq!(c.ctl(&["target", "show", "gone"]).unwrap_err().code, 3);
    assert!(manifest(&c, "gone").defected);
    assert_eq!(agent_enlist(&c, "gone").as_deref(), Some("defected"), "a returning agent stays out");
    assert_eq!(c.ctl(&["target", "show", "gone"]).unwrap_err().code, 3, "and is not enlisted by trying");
    c.ctl(&["target", "enlist", "gone"]).expect("the operator brings it back");
    assert!(!manifest(&c, "gone").defected);
    assert_eq!(agent_enlist(&c, "gone"), None, "its agent enlists again");

    // Told to defect: `defected` in the list while the record says so; the
    // record goes once the target applied the defected manifest, and the
    // manifest keeps it out.
    assert_eq!(agent_enlist(&c, "told"), None);
    c.ctl(&["target", "defect", "told"]).expect("defect");
    let info: Value = c.ctl_ok(&["target", "show", "told"]);
    assert_eq!(s(&info, "status"), "defected", "{info}");
    let list: Vec<Value> = c.ctl_ok(&["target", "list"]);
    assert!(list.iter().any(|t| s(t, "name") == "told" && s(t, "status") == "defected"), "{list:?}");
    assert_eq!(agent_enlist(&c, "told").as_deref(), Some("defected"));
    let m = manifest(&c, "told");
    assert!(m.defected);
    publish_applied(&c, "told", &m);
    wait_for("the defected record gone", WAIT, || c.ctl(&["target", "show", "told"]).is_err_and(|e| e.code == 3).then_some(()));
    assert_eq!(agent_enlist(&c, "told").as_deref(), Some("defected"), "still out without its record");
    c.ctl(&["target", "enlist", "told"]).expect("enlist again");
    let info: Value = c.ctl_ok(&["target", "show", "told"]);
    assert_ne!(s(&info, "status"), "defected", "{info}");
    assert_eq!(agent_enlist(&c, "told"), None);
}
