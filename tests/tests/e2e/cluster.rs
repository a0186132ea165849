//! A 3-node JetStream cluster: replicated streams, two master replicas, and
//! losing a node and a master while jobs keep running.

use std::collections::BTreeSet;
use std::time::Duration;

use muster_tests::{block_on, s, wait_for, Cluster};
use serde_json::Value;

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
    let job = format!(
        r#"{{"name": "tick", "steps": [{{"command": "echo $MUSTER_RUN_ID >> {}"}}],
            "schedules": [{{"name": "every-second", "every_secs": 1}}]}}"#,
        ran.display()
    );
    c.create_job_file(&job).expect("create");
    c.ctl(&["job", "assign", "tick", "--target", "east", "--target", "west"]).expect("assign");
    c.ctl(&["target", "force-poll", "east", "west"]).expect("force-poll");
    wait_for("runs on both targets", WAIT, || {
        let runs = c.try_finished_runs("tick")?;
        let targets: BTreeSet<String> = runs.iter().map(|r| s(r, "target").to_owned()).collect();
        (targets.len() == 2 && runs.len() >= 4).then_some(())
    });

    // Lose a node (possibly a stream leader) and a master at once.
    let before = c.try_finished_runs("tick").expect("history").len();
    c.nats.kill();
    c.masters[0].kill();
    wait_for("runs to keep arriving after the loss", WAIT, || (c.try_finished_runs("tick")?.len() >= before + 6).then_some(()));

    // Stop the schedule, let everything settle, and count.
    wait_for("the job disabled", WAIT, || c.ctl(&["job", "disable", "tick"]).ok());
    wait_for("both targets to poll", WAIT, || c.ctl(&["target", "force-poll", "east", "west"]).ok());
    let runs = wait_for("history to match the runs that happened", WAIT, || {
        let happened: BTreeSet<String> =
            std::fs::read_to_string(&ran).unwrap_or_default().lines().map(str::to_owned).collect();
        let runs = c.try_finished_runs("tick")?;
        let recorded: BTreeSet<String> = runs.iter().map(|r| s(r, "run_id").to_owned()).collect();
        let settled = runs.iter().all(|r| s(r, "outcome") == "succeeded");
        (settled && recorded == happened).then_some(runs)
    });
    let ids: BTreeSet<&str> = runs.iter().map(|r| s(r, "run_id")).collect();
    assert_eq!(ids.len(), runs.len(), "a run shows twice in history");
    println!("TALLY cluster: runs happened {}, in history {}, duplicates 0, lost 0", runs.len(), ids.len());

    // The surviving master still serves and has caught up.
    let status: Vec<Value> = wait_for("job status from the surviving master", WAIT, || {
        let st: Vec<Value> = serde_json::from_value(c.ctl(&["job", "status", "tick"]).ok()?).ok()?;
        (st.len() == 2 && st.iter().all(|x| s(x, "outcome") == "succeeded")).then_some(st)
    });
    assert!(status.iter().all(|s_| s(s_, "outcome") == "succeeded"), "{status:?}");
}
