//! Reply-subject injection. nats-server checks the subject a client
//! publishes to against its permissions, never the reply subject of its
//! request, and whoever answers — JetStream, the master — publishes the
//! answer with its own rights. So a target, with its own generated
//! credentials, sends every request it may send (Direct Gets of its desired
//! state, publishes that JetStream acknowledges, its agent API calls) with
//! the reply aimed at the installation's own subjects: every bucket, another
//! target's stream subjects and control subject, the master's API and
//! JetStream's. Nothing outside the target's own subjects may change: every
//! stream (buckets included) is compared, subject by subject, before and
//! after, with its consumers, and the other target must not have heard a
//! control request.
//!
//! The users and accounts are the ones `musterctl auth nats-config` writes
//! (an account per target); with the previous single-account users this
//! test fails (job `hello` overwritten, streams purged, ...).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt as _;
use muster_tests::{block_on, s, wait_for, wait_for_described, Cluster};
use serde_json::Value;

use crate::security::{secured_cluster, seed_of};

const WAIT: Duration = Duration::from_secs(30);

/// Every stream's subjects, each with its message count and the sequence of
/// its last message (which moves when a one-per-subject bucket key is
/// overwritten), and every stream's consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    streams: BTreeMap<String, (BTreeSet<String>, Subjects)>,
}

/// Subject → (message count, sequence of the last message).
type Subjects = BTreeMap<String, (usize, u64)>;

pub(crate) async fn snapshot(js: &jetstream::Context) -> Snapshot {
    let names: Vec<String> = js.stream_names().try_collect().await.expect("stream names");
    let mut streams = BTreeMap::new();
    for name in names {
        let stream = js.get_stream_no_info(&name).await.expect("stream handle");
        let consumers: BTreeSet<String> = stream.consumer_names().try_collect().await.expect("consumer names");
        let counts: Vec<(String, usize)> =
            stream.info_with_subjects(">").await.expect("stream info").try_collect().await.expect("subjects");
        let mut subjects = BTreeMap::new();
        for (subject, count) in counts {
            let last = stream.get_last_raw_message_by_subject(&subject).await.expect("last message").sequence;
            subjects.insert(subject, (count, last));
        }
        streams.insert(name, (consumers, subjects));
    }
    Snapshot { streams }
}

/// The subjects whose messages differ between two snapshots, per stream.
pub(crate) fn changed(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for (name, (consumers, subjects)) in &before.streams {
        let Some((consumers_after, subjects_after)) = after.streams.get(name) else {
            out.push(format!("stream {name} is gone"));
            continue;
        };
        if consumers != consumers_after {
            out.push(format!("consumers of {name}: {consumers:?} -> {consumers_after:?}"));
        }
        let keys: BTreeSet<&String> = subjects.keys().chain(subjects_after.keys()).collect();
        for k in keys {
            if subjects.get(k) != subjects_after.get(k) {
                out.push(k.clone());
            }
        }
    }
    for name in after.streams.keys().filter(|n| !before.streams.contains_key(*n)) {
        out.push(format!("stream {name} is new"));
    }
    out
}

/// A subject that is web01's own: its desired state, results and poll
/// report, and the bucket keys about it (its registry record, its
/// download-list rows, its job status).
fn web01s_own(subject: &str) -> bool {
    let t: Vec<&str> = subject.split('.').collect();
    matches!(
        t.as_slice(),
        ["muster", "target" | "result" | "poll", "web01", ..]
            | ["$KV", "muster-targets", "web01"]
            | ["$KV", "muster-instructions", "web01", ..]
            | ["$KV", "muster-jobstatus", _, "web01"]
    )
}

/// How many requests the master's agent endpoints (`agent`) or its other
/// endpoints (the admin and read API) answered.
pub(crate) async fn answers(client: &async_nats::Client, agent: bool) -> u64 {
    let stats = client.request("$SRV.STATS.muster", "".into()).await.expect("service stats");
    let stats: Value = serde_json::from_slice(&stats.payload).expect("JSON");
    stats["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("agent-") == agent))
        .filter_map(|e| e["num_requests"].as_u64())
        .sum()
}

/// The master's count of bad requests.
async fn bad_requests(client: &async_nats::Client) -> u64 {
    let stats = client.request("$SRV.STATS.muster", "".into()).await.expect("service stats");
    let stats: Value = serde_json::from_slice(&stats.payload).expect("JSON");
    stats["endpoints"].as_array().expect("endpoints").iter().filter_map(|e| e["data"]["bad_requests"].as_u64()).max().unwrap_or(0)
}

/// Where injected answers are aimed: every bucket (a key of each), web02's
/// stream subjects and control subject, the master's API (admin and agent)
/// and JetStream's; `job` is job `hello`'s id, `run` a run id in the index.
pub(crate) fn aims(job: &str, run: &str) -> Vec<String> {
    vec![
        "$KV.muster-targets.web02".into(),
        "$KV.muster-jobs.hello".into(),
        "$KV.muster-groups.g1".into(),
        format!("$KV.muster-jobstatus.{job}.web02"),
        "$KV.muster-instructions.web02.injected".into(),
        format!("$KV.muster-runs.{run}"),
        "muster.target.web02.state".into(),
        format!("muster.target.web02.job.{job}"),
        format!("muster.result.web02.run.{job}"),
        "muster.result.web02.applied".into(),
        "muster.poll.web02".into(),
        "muster.target.web02.control".into(),
        "muster.api.admin.job.delete".into(),
        "muster.api.admin.target.defect".into(),
        "muster.api.admin.group.delete".into(),
        "muster.api.agent.web02.defect".into(),
        "$JS.API.STREAM.PURGE.MUSTER_RESULTS".into(),
        "$JS.API.STREAM.PURGE.KV_muster-jobs".into(),
        "$JS.API.STREAM.DELETE.MUSTER_POLLS".into(),
        "$JS.API.CONSUMER.DELETE.MUSTER_RESULTS.master".into(),
    ]
}

/// Sends each of `jetstream`'s and `service`'s requests with its answer
/// aimed at each of `aims`, then waits until every answer was sent:
/// JetStream answers each stream's requests in order, so an answered
/// request behind the aimed ones on the same stream is a barrier; the
/// master counts an answer (`answered`) once it is handed to its
/// connection, which carries its later answers after it. Returns how many
/// of `service`'s requests the master answered, and how many were sent
/// (should it never get there, what changed is still the first thing the
/// caller reports).
pub(crate) async fn inject<F, Fut>(
    client: &async_nats::Client,
    aims: &[String],
    jetstream: &[(String, Vec<u8>)],
    service: &[(String, Vec<u8>)],
    answered: F,
) -> (u64, u64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let before = answered().await;
    for aim in aims {
        for (subject, body) in jetstream.iter().chain(service) {
            client.publish_with_reply(subject.clone(), aim.clone(), body.clone().into()).await.expect("sent");
        }
    }
    client.flush().await.expect("flush");
    for (subject, body) in jetstream {
        client.request(subject.clone(), body.clone().into()).await.ok();
    }
    let sent = (aims.len() * service.len()) as u64;
    let mut now = before;
    let deadline = tokio::time::Instant::now() + WAIT;
    while now < before + sent && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = answered().await;
    }
    (now - before, sent)
}

#[test]
fn answers_to_a_target_never_land_outside_its_own_subjects() {
    let (keys, c) = secured_cluster();

    // Something in every bucket and stream: a job on both, a group, a run.
    c.ctl(&["job", "create", "hello", "--command", "echo hi from $MUSTER_TARGET"]).expect("create");
    c.ctl(&["group", "create", "g1"]).expect("group");
    c.ctl(&["group", "add", "g1", "web02"]).expect("group add");
    c.ctl(&["job", "assign", "hello", "--target", "web01", "--group", "g1"]).expect("assign");
    c.ctl(&["target", "force-poll", "web01", "web02"]).expect("force-poll");
    c.ctl(&["job", "start", "hello"]).expect("start");
    let runs = crate::core_loop::finished_runs(&c, "hello", 2);
    let web02_run = runs.iter().find(|r| s(r, "target") == "web02").map(|r| s(r, "run_id").to_owned()).expect("web02's run");
    let hello = s(&c.ctl(&["job", "show", "hello"]).expect("show"), "id").to_owned();
    let polled = c.ctl(&["target", "force-poll", "web01", "web02"]).expect("force-poll");
    let web01_instance = polled[0]["report"]["instance"].as_str().expect("instance").to_owned();
    let web02_bad_control = polled[1]["report"]["bad_control"].as_u64().unwrap_or(0);
    // Quiet: the master took in every result and applied record.
    wait_for("the master to take in every result", WAIT, || {
        let st = c.consumer_state("MUSTER_RESULTS", "master");
        (st.pending == 0 && st.ack_pending == 0).then_some(())
    });

    // Where the answers are aimed: every bucket, web02's stream subjects
    // and control subject, the master's API and JetStream's.
    let aims = aims(&hello, &web02_run);
    let direct_get = |subject: String| format!("$JS.API.DIRECT.GET.MUSTER_DESIRED.{subject}");
    let own_poll = c.stored("MUSTER_POLLS", "muster.poll.web01").pop().expect("web01's poll report").payload;
    // Every request web01 may send: Direct Gets (found and not found),
    // publishes JetStream acknowledges, and its agent API (answered, and
    // refused with an error).
    let jetstream_requests: Vec<(String, Vec<u8>)> = vec![
        (direct_get("muster.target.web01.state".into()), Vec::new()),
        (direct_get(format!("muster.target.web01.job.{hello}")), Vec::new()),
        (direct_get(format!("muster.target.web01.job.{}", uuid::Uuid::new_v4())), Vec::new()),
        (format!("muster.result.web01.run.{hello}"), b"not a run record".to_vec()),
        ("muster.result.web01.applied".into(), b"not an applied record".to_vec()),
        ("muster.poll.web01".into(), own_poll.clone()),
    ];
    let agent_requests: Vec<(String, Vec<u8>)> = vec![
        (
            "muster.api.agent.web01.enlist".into(),
            format!(r#"{{"v":1,"name":"web01","instance":"{web01_instance}"}}"#).into_bytes(),
        ),
        ("muster.api.agent.web01.enlist".into(), br#"{"v":1,"name":"web02"}"#.to_vec()),
        ("muster.api.agent.web01.defect".into(), br#"{"v":1,"name":"web02"}"#.to_vec()),
    ];

    let seed = seed_of(keys.path(), "web01");
    let (url, admin_options) = (c.url(), c.connect_options());
    let (before, after, (bad_before, bad_after), (answered, sent)) = block_on(async {
        let admin = admin_options.connect(url.clone()).await.expect("admin connects");
        let admin_js = jetstream::new(admin.clone());
        let web01 = async_nats::ConnectOptions::with_nkey(seed)
            .custom_inbox_prefix("_INBOX_web01")
            .connect(url)
            .await
            .expect("web01 connects");

        let before = snapshot(&admin_js).await;
        let bad_before = bad_requests(&admin).await;
        // (Errors are judged below: a Direct Get of a missing document
        // answers "no message", and a stream an answer deleted has no
        // responders; the snapshot says which.)
        let answered = inject(&web01, &aims, &jetstream_requests, &agent_requests, || answers(&admin, true)).await;
        let after = snapshot(&admin_js).await;
        (before, after, (bad_before, bad_requests(&admin).await), answered)
    });

    let changes = changed(&before, &after);
    let foreign: Vec<&String> = changes.iter().filter(|s| !web01s_own(s)).collect();
    assert!(foreign.is_empty(), "answers aimed elsewhere changed {foreign:?} (all changes: {changes:?})");
    assert!(changes.iter().any(|s| s.starts_with("muster.result.web01.")), "web01's own publishes were stored: {changes:?}");
    assert_eq!(answered, sent, "the master answered web01's agent requests (into web01's own account)");
    // The master saw only the two agent requests web01 sent wrong on purpose, once per aim.
    assert_eq!(bad_after - bad_before, 2 * aims.len() as u64, "a request the master counted as bad came from an answer");
    // web02 heard no control request.
    let polled = c.ctl(&["target", "force-poll", "web02"]).expect("web02 still answers");
    assert_eq!(polled[0]["report"]["bad_control"].as_u64().unwrap_or(0), web02_bad_control, "{polled}");
    // And the installation is whole: the job, the group, web02.
    let job: Value = c.ctl_ok(&["job", "show", "hello"]);
    assert_eq!(s(&job, "id"), hello);
    c.ctl(&["group", "list"]).expect("groups readable");
    wait_for_described(
        "web02's job status readable",
        WAIT,
        || c.ctl(&["job", "status", "hello"]).ok(),
        || format!("{:?}", c.ctl(&["job", "status", "hello"])),
    );
    let agents = c.logs();
    assert!(!agents.contains("record is corrupt"), "{agents}");
}

/// The master answers an agent only on the agent's own inbox (or on the
/// reply subject the server makes up for a request from the agent's own
/// account): a target whose user shares the Muster account, as with
/// hand-written users, cannot aim the master's answer elsewhere either.
#[test]
fn the_master_answers_an_agent_only_on_its_own_inbox() {
    let c = Cluster::with_master();
    c.ctl(&["target", "enlist", "web02"]).expect("enlist web02");
    let url = c.url();
    let enlist = br#"{"v":1,"name":"web01"}"#;
    let (own, elsewhere, revision) = block_on(async {
        let own_inbox = async_nats::ConnectOptions::new().custom_inbox_prefix("_INBOX_web01").connect(&url).await;
        let own = own_inbox.expect("connects").request("muster.api.agent.web01.enlist", enlist.to_vec().into()).await;
        let plain = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(2)))
            .connect(&url)
            .await
            .expect("connects");
        // Another inbox: no answer at all.
        let elsewhere = plain.request("muster.api.agent.web01.enlist", enlist.to_vec().into()).await;
        // Aimed at web02's registry record, which must stay as it is.
        let kv = jetstream::new(plain.clone()).get_key_value("muster-targets").await.expect("bucket");
        let record = kv.entry("web02").await.expect("read").expect("web02's record").revision;
        plain
            .publish_with_reply("muster.api.agent.web01.enlist", "$KV.muster-targets.web02", enlist.to_vec().into())
            .await
            .expect("sent");
        plain.flush().await.expect("flush");
        (own, elsewhere, record)
    });
    let own = own.expect("answered on its own inbox");
    assert!(String::from_utf8_lossy(&own.payload).contains("\"ok\""), "{own:?}");
    assert!(
        elsewhere.as_ref().is_err_and(|e| e.kind() == async_nats::RequestErrorKind::TimedOut),
        "answered on another inbox: {elsewhere:?}"
    );
    // The master logs each refusal as it drops it; then web02's record is checked.
    let master = c.masters[0].log.clone();
    wait_for("the master to log both refusals", WAIT, || {
        let log = std::fs::read_to_string(&master).unwrap_or_default();
        (log.matches("refused an agent request whose reply subject").count() >= 2).then_some(())
    });
    let now = block_on(async move {
        let kv = jetstream::new(async_nats::connect(url).await.expect("connects"));
        let kv = kv.get_key_value("muster-targets").await.expect("bucket");
        kv.entry("web02").await.expect("read").expect("web02's record").revision
    });
    assert_eq!(now, revision, "the master's answer was written into web02's record");
}
