//! A 3-node JetStream cluster: replicated streams, two master replicas, and
//! losing a node and a master while jobs keep running.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use muster_tests::tally::{self, RunTally};
use muster_tests::{block_on, s, wait_for, wait_for_described, Cluster};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_cluster_keeps_every_run_once_when_a_node_and_a_master_die() {
    let mut c = Cluster::clustered();
    c.start_master();
    c.start_master();
    c.start_target("east", 60);
    c.start_target("west", 60);
    c.wait_target_online("east");
    c.wait_target_online("west");

    // Everything Muster keeps is replicated three times.
    let url = c.url();
    let replicas: Vec<(String, usize)> = block_on(async {
        let addrs: Vec<async_nats::ServerAddr> = url.split(',').map(|u| u.parse().unwrap()).collect();
        let js = async_nats::jetstream::new(async_nats::connect(addrs).await.unwrap());
        let mut out = Vec::new();
        for name in ["MUSTER_DESIRED", "MUSTER_RESULTS", "MUSTER_POLLS", "KV_muster-jobs", "KV_muster-jobstatus"] {
            let mut stream = js.get_stream(name).await.unwrap();
            out.push((name.to_owned(), stream.info().await.unwrap().config.num_replicas));
        }
        out
    });
    assert!(replicas.iter().all(|(_, n)| *n == 3), "{replicas:?}");

    let ran = c.dir.path().join("ran");
    let job = json!({
        "name": "tick",
        "steps": [{"command": tally::append_run_id(&ran)}],
        "schedules": [{"name": "every-second", "every_secs": 1}],
    });
    c.create_job_file(&job.to_string()).expect("create");
    c.ctl(&["job", "assign", "tick", "--target", "east", "--target", "west"]).expect("assign");
    c.ctl(&["target", "force-poll", "east", "west"]).expect("force-poll");
    wait_for("runs on both targets", WAIT, || {
        let runs = c.try_finished_runs("tick")?;
        let targets: BTreeSet<String> = runs.iter().map(|r| s(r, "target").to_owned()).collect();
        (targets.len() == 2 && runs.len() >= 4).then_some(())
    });

    // Lose a node (possibly a stream leader) and a master at once.
    let before = tally::run_ids(&ran).len();
    c.nats.kill();
    c.masters[0].kill();
    wait_for_described(
        "runs to keep arriving in history after the loss",
        WAIT,
        || {
            let history: Vec<Value> = serde_json::from_value(c.ctl(&["history", "--job", "tick"]).ok()?).ok()?;
            let after = RunTally::count(&tally::run_ids(&ran), &history);
            (after.recorded - after.unfinished.len() >= before + 6).then_some(())
        },
        || format!("{} runs happened before the loss; now {:?}", before, c.ctl(&["history", "--job", "tick"])),
    );

    // Stop the schedule, let everything settle, and count: every run that
    // happened is in history once, and nothing else ran. A run slowed past
    // 1 s (a busy disk) makes the next fire a `skipped` record; those are
    // accounted for, not counted as runs.
    wait_for("the job disabled", WAIT, || c.ctl(&["job", "disable", "tick"]).ok());
    let (tally, history) = tally::settle(&c, "tick", &["east", "west"], &ran, WAIT);
    println!("TALLY cluster: {tally}");
    let problems = tally.problems();
    assert!(problems.is_empty(), "{problems:?}\n{tally:?}\n{}", c.logs());
    assert!(tally.happened >= before + 6, "{tally}");

    // The surviving master still serves and has caught up: each target's
    // status is its newest record in history.
    let newest: BTreeMap<String, (String, String)> =
        history.iter().map(|r| (s(r, "target").to_owned(), (s(r, "run_id").to_owned(), s(r, "outcome").to_owned()))).collect();
    let status = || -> Option<BTreeMap<String, (String, String)>> {
        let st: Vec<Value> = serde_json::from_value(c.ctl(&["job", "status", "tick"]).ok()?).ok()?;
        Some(st.iter().map(|x| (s(x, "target").to_owned(), (s(x, "run_id").to_owned(), s(x, "outcome").to_owned()))).collect())
    };
    wait_for_described(
        "job status from the surviving master to show each target's newest run",
        WAIT,
        || (status()? == newest).then_some(()),
        || format!("history's newest per target {newest:?}, job status {:?}", status()),
    );
}
