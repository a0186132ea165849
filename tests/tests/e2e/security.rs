//! Identity is the subject. With the users `musterctl auth nats-config`
//! writes, targets run the whole loop under least privilege, and a target
//! using its own credentials cannot read another target's manifest or jobs
//! (nor a job never assigned to it) or control subject, publish results,
//! live output or kept output as another target, or call the admin API.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use futures::{FutureExt as _, StreamExt};
use muster_tests::{bin, block_on, s, Cluster};

/// The variables of `<user>.env` as `musterctl auth` wrote it, checking
/// that it holds only `NAME=value` lines and names a seed, not a password.
pub(crate) fn env_of(dir: &Path, user: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir.join(format!("{user}.env"))).expect("env file");
    let vars: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not NAME=value: {l:?}"));
            assert!(!k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{l:?}");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert!(vars.iter().all(|(k, _)| k != "NATS_PASSWORD"), "{user}.env holds a password: {text}");
    vars
}

/// The flag that gives a process `user`'s seed file (`--nkey=…`).
pub(crate) fn nkey_flag(dir: &Path, user: &str) -> String {
    let env = env_of(dir, user);
    let path = env.iter().find(|(k, _)| k == "NATS_NKEY").map(|(_, v)| v.clone()).expect("NATS_NKEY");
    format!("--nkey={path}")
}

/// `user`'s seed, read as the binaries read it (mode 0600 checked).
pub(crate) fn seed_of(dir: &Path, user: &str) -> String {
    muster_runtime::nats::read_seed(&dir.join(format!("{user}.nk"))).expect("seed file")
}

/// A server configured with the users `musterctl auth nats-config web01
/// web02` writes (the real command, before any server exists), the master
/// and both agents running under theirs, and the admin's user for
/// `musterctl`. Returns the keys' directory with the cluster.
pub(crate) fn secured_cluster() -> (tempfile::TempDir, Cluster) {
    let keys = tempfile::tempdir().expect("tempdir");
    let made = Command::new(bin("musterctl"))
        .args(["auth", "nats-config", "web01", "web02", "--dir"])
        .arg(keys.path())
        .output()
        .expect("musterctl auth");
    assert!(made.status.success(), "{made:?}");
    let auth = std::fs::read_to_string(keys.path().join("auth.conf")).expect("auth.conf");

    let mut c = Cluster::new_with(&auth);
    c.env = env_of(keys.path(), "muster-master");
    c.start_master();
    c.env = env_of(keys.path(), "muster-admin");
    for t in ["web01", "web02"] {
        c.start_target_with(t, 3600, &[&nkey_flag(keys.path(), t)]);
    }
    c.wait_target_online("web01");
    c.wait_target_online("web02");
    (keys, c)
}

#[test]
fn a_target_can_touch_only_its_own_subjects() {
    let (keys, c) = secured_cluster();

    // The whole loop works under the targets' limits: enlist (done), read
    // desired state by Direct Get, poll reports, control replies, results.
    c.ctl(&["job", "create", "hello", "--command", "echo hi from $MUSTER_TARGET"]).expect("create");
    c.ctl(&["job", "assign", "hello", "--target", "web01", "--target", "web02"]).expect("assign");
    c.ctl(&["job", "create", "secret", "--command", "echo for web02 only"]).expect("create");
    c.ctl(&["job", "assign", "secret", "--target", "web02"]).expect("assign");
    let polled = c.ctl(&["target", "force-poll", "web01", "web02"]).expect("force-poll");
    let held: Vec<u64> = polled.as_array().unwrap().iter().map(|r| r["report"]["jobs"].as_u64().unwrap_or(0)).collect();
    assert_eq!(held, [1, 2], "{polled}");
    c.ctl(&["job", "start", "hello"]).expect("start");
    let runs = crate::core_loop::finished_runs(&c, "hello", 2);
    assert!(runs.iter().all(|r| s(r, "outcome") == "succeeded"), "{runs:?}");
    let id_of = |job: &str| -> String {
        let info: serde_json::Value = c.ctl_ok(&["job", "show", job]);
        s(&info, "id").to_owned()
    };
    let (hello, secret) = (id_of("hello"), id_of("secret"));

    // Now web01 misbehaves, with its own credentials.
    let seed = seed_of(keys.path(), "web01");
    let url = c.url();
    let forged_job = uuid::Uuid::new_v4();
    let forged_subject = format!("muster.result.web02.run.{forged_job}");
    let forged_output = format!("muster.output.web02.{forged_job}");
    let forged_kept = format!("muster.kept.web02.{forged_job}.0");
    block_on(async {
        let web01 = async_nats::ConnectOptions::with_nkey(seed)
            .custom_inbox_prefix("_INBOX_web01")
            .request_timeout(Some(Duration::from_secs(2)))
            .connect(url)
            .await
            .expect("web01 connects");
        let mut js = jetstream::new(web01.clone());
        js.set_timeout(Duration::from_secs(2));
        // Its own manifest and job: allowed, so what follows is refusal, not a broken connection.
        let desired = js.get_stream_no_info("MUSTER_DESIRED").await.expect("a handle, no request");
        let own = desired.direct_get_last_for_subject("muster.target.web01.state").await.expect("its own manifest");
        assert!(String::from_utf8_lossy(&own.payload).contains(r#""target":"web01""#));
        desired.direct_get_last_for_subject(format!("muster.target.web01.job.{hello}")).await.expect("its own job");
        // A job never assigned to it: its own subject holds nothing.
        let never = desired.direct_get_last_for_subject(format!("muster.target.web01.job.{secret}")).await;
        assert!(never.is_err_and(|e| e.kind() == DirectGetErrorKind::NotFound), "web01 has no copy of web02's job");
        // Another target's manifest and jobs, by any form of read: refused by the server.
        for subject in [
            "$JS.API.DIRECT.GET.MUSTER_DESIRED.muster.target.web02.state".to_owned(),
            format!("$JS.API.DIRECT.GET.MUSTER_DESIRED.muster.target.web02.job.{secret}"),
            format!("$JS.API.DIRECT.GET.MUSTER_DESIRED.muster.target.web02.job.{hello}"),
            "$JS.API.DIRECT.GET.MUSTER_DESIRED.muster.target.*.state".to_owned(),
        ] {
            let read = web01.request(subject.clone(), "".into()).await;
            assert!(read.is_err(), "web01 read {subject}: {read:?}");
        }
        let body_form =
            web01.request("$JS.API.DIRECT.GET.MUSTER_DESIRED", r#"{"last_by_subj":"muster.target.web02.state"}"#.into()).await;
        assert!(body_form.is_err(), "the body form of Direct Get answered web01: {body_form:?}");
        let msg_get = web01
            .request("$JS.API.STREAM.MSG.GET.MUSTER_DESIRED", r#"{"last_by_subj":"muster.target.web02.state"}"#.into())
            .await;
        assert!(msg_get.is_err(), "STREAM.MSG.GET answered web01: {msg_get:?}");
        // Nothing of the previous design's queue either.
        let next = web01.request("$JS.API.CONSUMER.MSG.NEXT.MUSTER_ASSIGN.web01", r#"{"batch":1,"no_wait":true}"#.into()).await;
        assert!(next.is_err(), "web01 may still fetch from MUSTER_ASSIGN: {next:?}");
        // Results in another target's name: never acked.
        let body = format!(r#"{{"v":1,"job_id":"{forged_job}","target":"web02"}}"#);
        let forged = js.publish(forged_subject.clone(), body.into()).await.expect("sent").await;
        assert!(forged.is_err(), "a forged result was stored: {forged:?}");
        // Live output: its own runs' is stored (acked), another target's never.
        let own = js.publish(format!("muster.output.web01.{forged_job}"), "{}".into()).await.expect("sent").await;
        assert!(own.is_ok(), "web01 cannot publish its own live output: {own:?}");
        let forged = js.publish(forged_output.clone(), r#"{"v":1,"target":"web02"}"#.into()).await.expect("sent").await;
        assert!(forged.is_err(), "web01 published web02's live output: {forged:?}");
        // Kept output (`keep_output: full`) the same way.
        let own = js.publish(format!("muster.kept.web01.{forged_job}.0"), "x".into()).await.expect("sent").await;
        assert!(own.is_ok(), "web01 cannot keep its own output: {own:?}");
        let forged = js.publish(forged_kept.clone(), "x".into()).await.expect("sent").await;
        assert!(forged.is_err(), "web01 wrote web02's kept output: {forged:?}");
        // Events come from the master only: not even in its own name.
        for subject in ["muster.event.job_failed.web01", "muster.event.job_recovered.web02"] {
            let forged = js.publish(subject, r#"{"v":1}"#.into()).await.expect("sent").await;
            assert!(forged.is_err(), "web01 published the event {subject}: {forged:?}");
        }
        // The admin API.
        let api = web01.request("muster.api.read.target.list", r#"{"v":1}"#.into()).await;
        assert!(api.is_err(), "the admin API answered a target: {api:?}");
        // Nor can it run a command on another target through `exec`.
        let exec = muster_shared::subject::Subjects::default().api(muster_shared::api::Op::Exec);
        let body = r#"{"v":1,"targets":["web02"],"argv":["true"],"timeout_secs":60}"#;
        let api = web01.request(exec, body.into()).await;
        assert!(api.is_err(), "exec answered a target: {api:?}");

        // Another target's control subject: web01 hears nothing while
        // web02 is force-polled and answers. The server queues a message
        // for web01's connection as it routes the request, before web02
        // even has it; a PING sent after the force-poll returned is answered
        // after it, and the client hands out messages in the order they
        // arrived: once the flush returns, a control request that reached
        // web01 would be waiting in the subscription.
        let mut heard = web01.subscribe("muster.target.web02.control").await.expect("subscribe is sent");
        web01.flush().await.expect("flush");
        let polled = c.ctl(&["target", "force-poll", "web02"]).expect("web02 still answers");
        assert_eq!(polled[0]["report"]["target"], "web02", "{polled}");
        web01.flush().await.expect("flush after the force-poll");
        let overheard = heard.next().now_or_never();
        assert!(!matches!(overheard, Some(Some(_))), "web01 read web02's control request: {overheard:?}");
    });

    assert!(c.stored("MUSTER_RESULTS", &forged_subject).is_empty(), "the forged record is in the stream");
    assert!(c.stored("MUSTER_OUTPUT", &forged_output).is_empty(), "the forged output is in the stream");
    assert!(c.stored("MUSTER_KEPT", &forged_kept).is_empty(), "the forged kept output is in the stream");
    // Every run succeeded, so no event is stored: none of web01's forged ones.
    assert!(c.stored("MUSTER_EVENTS", "muster.event.>").is_empty(), "a forged event is in the stream");
    // The agents published their runs' output under these permissions.
    assert!(!c.stored("MUSTER_OUTPUT", "muster.output.web02.*").is_empty(), "web02's run left no live output");
    let server_log = c.nats.log_text();
    assert!(server_log.contains("Violation") && server_log.contains("web02"), "the server logged the refusals");
    assert!(
        server_log.contains("DIRECT.GET.MUSTER_DESIRED.muster.target.web02.state"),
        "the read of web02's manifest was refused: {server_log}"
    );
    // The agents themselves never needed more than they were given.
    let agents = c.logs();
    assert!(!agents.contains("Violation"), "an agent was refused something: {agents}");
}
