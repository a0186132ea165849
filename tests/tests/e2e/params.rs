//! Job parameters on a live target: bad starts refused with exit 4
//! (required missing, a choice outside its values, an int that is not one,
//! an unknown name), `--param who=world` reaching the step as
//! `MUSTER_PARAM_WHO`, defaults used by a scheduled run, and the run
//! records showing the values used; a secret sealed for the target,
//! received by the step, masked in its output and record, and found in no
//! stream, bucket or log.

use std::time::Duration;

use futures::TryStreamExt as _;
use muster_tests::{block_on, s, wait_for, Cluster};
use serde_json::{json, Value};

use crate::core_loop::finished_runs;

const WAIT: Duration = Duration::from_secs(30);

fn cluster() -> Cluster {
    let mut c = Cluster::with_master();
    c.start_target_with("p1", 60, &[]);
    c.wait_target_online("p1");
    c
}

/// The job of the example, echoing its parameters.
fn greet(c: &Cluster) {
    let spec = json!({"name": "greet",
        "params": [{"name": "who", "type": "string", "required": true}, {"name": "token", "type": "secret"},
                   {"name": "mode", "type": "choice", "values": ["a", "b"], "default": "a"}, {"name": "n", "type": "int"}],
        "steps": [{"command": "echo \"hello $MUSTER_PARAM_WHO mode=$MUSTER_PARAM_MODE n=${MUSTER_PARAM_N-unset}\""}]});
    c.create_job_file(&spec.to_string()).expect("create greet");
    c.ctl(&["job", "assign", "greet", "--target", "p1"]).expect("assign");
}

/// `job start greet ARGS` is refused with exit 4 and a message containing `says`.
fn refused(c: &Cluster, args: &[&str], says: &str) {
    let mut all = vec!["job", "start", "greet"];
    all.extend_from_slice(args);
    let e = c.ctl(&all).expect_err("refused");
    assert_eq!(e.code, 4, "{args:?}: {e:?}");
    assert!(e.stderr.contains(says), "{args:?}: {e:?}");
}

#[test]
fn bad_parameters_are_refused_and_good_ones_reach_the_step() {
    let c = cluster();
    greet(&c);
    refused(&c, &[], "parameter 'who' is required");
    refused(&c, &["--param", "who=w", "--param", "mode=c"], "'c' is not one of a, b");
    refused(&c, &["--param", "who=w", "--param", "n=x"], "'x' is not an int");
    refused(&c, &["--param", "who=w", "--param", "whom=x"], "no parameter 'whom'");
    // Nothing was posted for the refused starts.
    assert!(c.history("greet").is_empty());

    let started = c.ctl(&["job", "start", "greet", "--param", "who=world", "--param", "n=7"]).expect("start");
    assert_eq!(s(&started[0], "state"), "posted", "{started}");
    let run = finished_runs(&c, "greet", 1).remove(0);
    assert_eq!(s(&run, "outcome"), "succeeded", "{run}");
    assert_eq!(s(&run["steps"][0], "output").trim(), "hello world mode=a n=7", "{run}");
    assert_eq!(run["params"], json!({"who": "world", "mode": "a", "n": "7"}), "the record shows what the run used");

    let shown = c.ctl_raw(&["run", "show", s(&run, "run_id")], false);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(shown.stdout.contains("params: mode=a n=7 who=world"), "{}", shown.stdout);
}

#[test]
fn a_secret_reaches_the_step_sealed_and_is_stored_nowhere() {
    const SECRET: &str = "s3cret-4f9a-0b7e";
    let c = cluster();
    let got = c.dir.path().join("got-token");
    let spec = json!({"name": "vault", "keep_output": "full",
        "params": [{"name": "token", "type": "secret", "required": true}, {"name": "who", "type": "string", "default": "ops"}],
        "steps": [{"command": format!("printf %s \"$MUSTER_PARAM_TOKEN\" > {}; echo \"token=$MUSTER_PARAM_TOKEN for $MUSTER_PARAM_WHO\"; echo \"$MUSTER_PARAM_TOKEN\" >&2", got.display())}]});
    c.create_job_file(&spec.to_string()).expect("create vault");
    c.ctl(&["job", "assign", "vault", "--target", "p1"]).expect("assign");

    let token = format!("token={SECRET}");
    c.ctl(&["job", "start", "vault", "--param", &token, "--wait"]).expect("the run succeeds");
    assert_eq!(std::fs::read_to_string(&got).expect("the step wrote the token"), SECRET, "the step got the secret");
    let run = finished_runs(&c, "vault", 1).remove(0);
    // stdout and stderr, in whichever order the pipes were read.
    let mut lines: Vec<&str> = s(&run["steps"][0], "output").lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["***", "token=*** for ops"], "{run}");
    assert_eq!(run["params"], json!({"token": "***", "who": "ops"}), "{run}");

    // A target whose agent gave no key (enlisted by an operator only) is
    // refused a start with secrets, before anything is posted.
    c.ctl(&["target", "enlist", "bare"]).expect("enlist bare");
    c.ctl(&["job", "assign", "vault", "--target", "bare"]).expect("assign bare");
    let e = c.ctl(&["job", "start", "vault", "--target", "bare", "--param", &token]).expect_err("no key");
    assert_eq!(e.code, 4, "{e:?}");
    assert!(e.stderr.contains("target 'bare' has no key"), "{e:?}");

    // The secret is nowhere: no stream or bucket message (manifests, live
    // and kept output, history), no log (the scan does find what is stored).
    assert!(!found_in_streams(&c, "for ops").is_empty(), "the scan reads the run records");
    let found = found_in_streams(&c, SECRET);
    assert!(found.is_empty(), "the secret is stored in {found:?}");
    let logs = c.logs();
    assert!(!logs.is_empty() && !logs.contains(SECRET), "the secret is logged:\n{logs}");
}

/// The subjects (stream: subject) of every stored message, in every stream
/// and bucket, whose body or headers contain `needle`.
fn found_in_streams(c: &Cluster, needle: &str) -> Vec<String> {
    let (url, options) = (c.url(), c.connect_options());
    let names: Vec<String> = block_on(async move {
        let js = async_nats::jetstream::new(options.connect(url).await.expect("connect"));
        js.stream_names().try_collect().await.expect("stream names")
    });
    assert!(names.iter().any(|n| n.starts_with("KV_")) && names.len() > 3, "{names:?}");
    let mut found = Vec::new();
    for name in names {
        for m in c.stored(&name, ">") {
            if String::from_utf8_lossy(&m.payload).contains(needle) || m.msg_id.contains(needle) {
                found.push(format!("{name}: {}", m.subject));
            }
        }
    }
    found
}

#[test]
fn a_scheduled_run_uses_the_defaults() {
    let c = cluster();
    // A schedule cannot run a job with a required parameter without default.
    let needs = json!({"name": "tick", "params": [{"name": "who", "type": "string", "required": true}],
        "steps": [{"command": "true"}], "schedules": [{"name": "s", "every_secs": 1}]});
    let e = c.create_job_file(&needs.to_string()).expect_err("refused");
    assert_eq!(e.code, 4, "{e:?}");
    assert!(e.stderr.contains("params[0]") && e.stderr.contains("schedule 's'"), "{e:?}");

    let spec = json!({"name": "tick", "params": [{"name": "who", "type": "string", "required": true, "default": "cron"},
                                                   {"name": "dry", "type": "bool", "default": "true"}],
        "steps": [{"command": "echo $MUSTER_PARAM_WHO $MUSTER_PARAM_DRY"}], "schedules": [{"name": "s", "every_secs": 1}]});
    c.create_job_file(&spec.to_string()).expect("create tick");
    c.ctl(&["job", "assign", "tick", "--target", "p1"]).expect("assign");
    c.ctl(&["target", "force-poll", "p1"]).expect("force-poll");
    let run: Value = wait_for("a scheduled run of tick", WAIT, || c.finished_runs("tick").into_iter().next());
    assert_eq!(run["trigger"], json!({"kind": "schedule", "schedule": "s"}), "{run}");
    assert_eq!(s(&run["steps"][0], "output").trim(), "cron true", "{run}");
    assert_eq!(run["params"], json!({"who": "cron", "dry": "true"}), "{run}");
}
