//! History reads what it returns, and returns everything it was asked for.
//!
//! Records are published straight to `MUSTER_RESULTS` the way the agent's
//! spool does (subject `muster.result.<t>.run.<job-id>`, `Nats-Msg-Id`
//! `run-<id>-start|end`), so the tests can hold hundreds of large records
//! without running hundreds of jobs. Then the real `musterctl` reads them,
//! with the real master running (it drains them and keeps the run index) or
//! not.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use muster_shared::msg::{self, RunRecord};
use muster_shared::name::TargetName;
use muster_shared::subject::{Bucket, Subjects};
use muster_tests::{block_on, wait_for, Cluster};
use serde::Deserialize;
use uuid::Uuid;

/// What the tests read back of each run.
#[derive(Debug, Deserialize)]
struct Seen {
    run_id: Uuid,
    target: String,
    outcome: String,
}

/// A final run record of `job_id` on `target` whose one step printed
/// `output_bytes` bytes.
fn record(target: &str, job: &str, job_id: Uuid, output_bytes: usize) -> RunRecord {
    serde_json::from_value(serde_json::json!({
        "v": 1, "run_id": Uuid::now_v7(), "job_id": job_id, "job": job,
        "target": target, "trigger": {"kind": "manual"}, "outcome": "succeeded",
        "started_at": chrono::Utc::now(), "finished_at": chrono::Utc::now(),
        "steps": [{"name": "dump", "index": 0, "outcome": "succeeded", "exit_code": 0,
                   "started_at": chrono::Utc::now(), "duration_ms": 4, "retries": 0,
                   "output": "x".repeat(output_bytes), "output_cut_bytes": 0}]
    }))
    .expect("a run record")
}

/// Publishes records as the agent's spool does, awaiting every ack.
fn publish(c: &Cluster, records: &[RunRecord]) {
    let (url, options) = (c.url(), c.connect_options());
    block_on(async move {
        let js = jetstream::new(options.connect(url).await.expect("connect"));
        let subjects = Subjects::default();
        for chunk in records.chunks(32) {
            let mut acks = Vec::with_capacity(chunk.len());
            for r in chunk {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", r.msg_id().as_str());
                let subject = subjects.result_run(&r.target, r.job_id);
                acks.push(js.publish_with_headers(subject, headers, msg::encode(r).into()).await.expect("publish"));
            }
            for a in acks {
                a.await.expect("stored");
            }
        }
    });
}

/// Waits until the master's consumer has handled every record.
fn wait_drained(c: &Cluster) {
    let results = Subjects::default().results_stream();
    wait_for("the master to drain the results stream", Duration::from_secs(120), || {
        let s = c.consumer_state(&results, muster_shared::streams::MASTER_CONSUMER);
        (s.pending == 0 && s.ack_pending == 0).then_some(())
    });
}

/// The peak resident memory of a process (`VmHWM`), in MiB.
fn peak_rss_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmHWM");
    kib / 1024
}

/// `musterctl ARGS --json` read as runs; exit 0 required.
fn runs(c: &Cluster, args: &[&str]) -> (Vec<Seen>, String) {
    let out = c.ctl_raw(args, true);
    assert_eq!(out.code, 0, "musterctl {args:?} failed: {}", out.stderr);
    let seen = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("musterctl {args:?}: {e}"));
    (seen, out.stderr)
}

#[test]
fn six_hundred_large_records_are_read_whole_and_drained_in_little_memory() {
    const RECORDS: usize = 600;
    const OUTPUT: usize = 700 * 1024;
    let mut c = Cluster::with_master();
    c.ctl(&["job", "create", "big", "--command", "true"]).expect("create");
    // A backlog while the master is down: the restarted master drains it all.
    c.masters[0].kill();
    let job_id = Uuid::nil();
    let records: Vec<RunRecord> = (0..RECORDS).map(|i| record(&format!("h{:02}", i % 3), "big", job_id, OUTPUT)).collect();
    publish(&c, &records);
    c.start_master();
    let master = c.masters.last().expect("a master").pid();
    wait_drained(&c);
    let peak = peak_rss_mib(master);
    eprintln!("master peak RSS while draining {RECORDS} records of {OUTPUT} B: {peak} MiB");
    assert!(peak < 150, "the master reached {peak} MiB draining {RECORDS} records of {OUTPUT} B");

    // Everything, or a loud failure: never exit 0 with fewer.
    let (all, _) = runs(&c, &["history"]);
    let ids: HashSet<Uuid> = all.iter().map(|r| r.run_id).collect();
    assert_eq!(ids.len(), RECORDS, "history returned {} of {RECORDS} runs", ids.len());
    assert!(all.iter().all(|r| r.outcome == "succeeded"));

    // The runs recorded last, oldest first.
    let (last, _) = runs(&c, &["history", "--limit", "20"]);
    let want: Vec<Uuid> = records[RECORDS - 20..].iter().map(|r| r.run_id).collect();
    assert_eq!(last.iter().map(|r| r.run_id).collect::<Vec<_>>(), want);

    // `run show` through the index, then without it.
    let probe = &records[123];
    let id = probe.run_id.to_string();
    let out = c.ctl_raw(&["run", "show", &id], true);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let shown: Seen = serde_json::from_str(&out.stdout).expect("a run");
    assert_eq!((shown.run_id, shown.target.as_str()), (probe.run_id, probe.target.as_str()));
    assert!(!out.stderr.contains("not in the run index"), "found without the index: {}", out.stderr);
    let (url, options) = (c.url(), c.connect_options());
    block_on(async move {
        let js = jetstream::new(options.connect(url).await.expect("connect"));
        let index = js.get_key_value(Subjects::default().bucket(Bucket::Runs)).await.expect("run index");
        assert!(index.get(&id).await.expect("index read").is_some(), "run {id} was indexed");
        index.delete(&id).await.expect("delete the entry");
    });
    let out = c.ctl_raw(&["run", "show", &probe.run_id.to_string()], true);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let shown: Seen = serde_json::from_str(&out.stdout).expect("a run");
    assert_eq!(shown.run_id, probe.run_id);
    assert!(out.stderr.contains("not in the run index"), "the fallback says so: {}", out.stderr);

    // No master: history still reads.
    c.masters[0].kill();
    let (last, _) = runs(&c, &["history", "--limit", "5", "--target", "h01"]);
    let want: Vec<Uuid> = records.iter().filter(|r| r.target.as_str() == "h01").map(|r| r.run_id).collect();
    assert_eq!(last.iter().map(|r| r.run_id).collect::<Vec<_>>(), want[want.len() - 5..]);
    let out = c.ctl_raw(&["run", "show", &Uuid::now_v7().to_string()], true);
    assert_eq!(out.code, 3, "an unknown run is not found (exit 3): {out:?}");
}

#[test]
fn limited_reads_match_the_whole_read() {
    let c = Cluster::with_master();
    let created = c.ctl(&["job", "create", "often", "--command", "true"]).expect("create");
    let often: Uuid = created["id"].as_str().expect("job id").parse().expect("uuid");
    c.ctl(&["job", "create", "rare", "--command", "true"]).expect("create rare");
    let rare: Uuid = c.ctl(&["job", "show", "rare"]).expect("show")["id"].as_str().expect("id").parse().expect("uuid");
    // Mostly `often` on three targets, a start and an end per run; `rare`
    // on w2 now and then, so its recent runs sit far apart in the stream.
    let mut records = Vec::new();
    for i in 0..3000 {
        let target = format!("w{}", i % 3);
        let (job, id) = if i % 400 == 7 && target == "w1" { ("rare", rare) } else { ("often", often) };
        let mut r = record(&target, job, id, 10);
        let end = r.clone();
        r.outcome = msg::Outcome::Running;
        records.push(r);
        records.push(end);
    }
    publish(&c, &records);
    let (all, _) = runs(&c, &["history"]);
    assert_eq!(all.len(), 3000);
    let last_ids = |f: &dyn Fn(&RunRecord) -> bool, n: usize| -> Vec<Uuid> {
        let ids: Vec<Uuid> = records.iter().filter(|r| r.outcome.is_final() && f(r)).map(|r| r.run_id).collect();
        ids[ids.len().saturating_sub(n)..].to_vec()
    };
    let w1 = TargetName::new("w1").expect("name");
    for (args, want) in [
        (vec!["history", "--limit", "20"], last_ids(&|_| true, 20)),
        (vec!["history", "--limit", "3", "--target", "w1"], last_ids(&|r| r.target == w1, 3)),
        (vec!["history", "--limit", "4", "--job", "rare", "--target", "w1"], last_ids(&|r| r.job_id == rare, 4)),
        (vec!["history", "--limit", "100", "--job", "rare"], last_ids(&|r| r.job_id == rare, 100)),
    ] {
        let (got, _) = runs(&c, &args);
        assert_eq!(got.iter().map(|r| r.run_id).collect::<Vec<_>>(), want, "{args:?}");
        assert!(got.iter().all(|r| r.outcome == "succeeded"), "{args:?}: the end wins");
    }
}
