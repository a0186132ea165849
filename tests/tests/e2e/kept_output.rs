//! Full output kept by choice (issue 16): a step printing 50 MB in a job
//! with `"keep_output": "full"` is downloaded by `musterctl run output`
//! intact (its SHA-256 is the one the step computed of what it printed),
//! step by step or whole; a job that keeps nothing has nothing to download.

use std::fs::File;
use std::process::{Command, Stdio};

use muster_tests::{bin, s, Cluster};
use serde_json::json;

const SIZE: u64 = 50_000_000;

/// `musterctl run output ARGS > path`; whether it succeeded, and its stderr.
fn download(c: &Cluster, args: &[&str], path: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin("musterctl"))
        .env("NATS_URL", c.url())
        .args(["run", "output"])
        .args(args)
        .stdout(Stdio::from(File::create(path).expect("download file")))
        .stderr(Stdio::piped())
        .output()
        .expect("musterctl run output");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn sha256_of(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("a digest").to_owned()
}

#[test]
fn fifty_megabytes_of_output_are_kept_and_downloaded_intact() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 60);
    c.wait_target_online("web01");
    let dir = c.dir.path().to_path_buf();
    let d = dir.display();
    let big = json!({
        "name": "big",
        "keep_output": "full",
        "keep_output_max": "100MiB",
        "steps": [
            {"name": "print", "command": format!("head -c {SIZE} /dev/urandom > {d}/made && sha256sum {d}/made > {d}/made.sum && cat {d}/made")},
            {"name": "after", "command": "echo done"},
        ],
    });
    c.create_job_file(&big.to_string()).expect("create");
    c.ctl(&["job", "create", "small", "--command", "echo hi"]).expect("create");
    for job in ["big", "small"] {
        c.ctl(&["job", "assign", job, "--target", "web01"]).expect("assign");
    }
    c.ctl(&["target", "force-poll", "web01"]).expect("force-poll");
    let started = c.ctl(&["job", "start", "big"]).expect("start");
    let run_id = s(&started[0], "run_id").to_owned();
    let runs = crate::core_loop::finished_runs(&c, "big", 1);
    assert_eq!(s(&runs[0], "outcome"), "succeeded", "{runs:?}");
    let step = &runs[0]["steps"][0];
    assert!(!s(step, "message").contains("not kept"), "{step}");
    assert!(step["output_cut_bytes"].as_u64().unwrap_or(0) > 0, "the record itself keeps head and tail only: {step}");

    // The first step alone: every byte, as the step printed it.
    let made = std::fs::read_to_string(dir.join("made.sum")).expect("the step's checksum");
    let made = made.split_whitespace().next().expect("a digest").to_owned();
    let got = dir.join("got");
    let (ok, stderr) = download(&c, &[&run_id, "--step", "0"], &got);
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::metadata(&got).unwrap().len(), SIZE);
    assert_eq!(sha256_of(&got), made, "the download is what the step printed");

    // All steps, in order.
    let (ok, stderr) = download(&c, &[&run_id], &got);
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::metadata(&got).unwrap().len(), SIZE + 5);
    let all = std::fs::read(&got).unwrap();
    assert_eq!(&all[all.len() - 5..], b"done\n");

    // A job that keeps nothing: not found (exit 3).
    let started = c.ctl(&["job", "start", "small"]).expect("start");
    let small_run = s(&started[0], "run_id").to_owned();
    crate::core_loop::finished_runs(&c, "small", 1);
    let out = c.ctl_raw(&["run", "output", &small_run], false);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("keep_output"), "{out:?}");
}
