//! Jobs as administrators know them, on a live target: flow actions, `goto`,
//! retries, timeouts that kill whole process trees, capped output, a
//! 1-second schedule, stop, concurrent starts, a target killed mid-run, and
//! bad job files.

use std::path::Path;
use std::time::Duration;

use muster_shared::api::{ApiError, ErrorCode, Op, Reply};
use muster_shared::subject::Subjects;
use muster_tests::proxy::Proxy;
use muster_tests::{block_on, s, wait_for, wait_for_described, Cluster};
use serde_json::{json, Value};

use crate::core_loop::finished_runs;

const WAIT: Duration = Duration::from_secs(30);

/// A cluster with a master and one online target started with `flags`.
fn cluster_with_target(name: &str, flags: &[&str]) -> Cluster {
    let mut c = Cluster::with_master();
    c.start_target_with(name, 60, flags);
    c.wait_target_online(name);
    c
}

/// Creates a job from `spec`, assigns it to `target` and starts it there;
/// returns the run id.
pub(crate) fn create_and_start(c: &Cluster, target: &str, spec: &Value) -> String {
    let name = s(spec, "name");
    c.create_job_file(&spec.to_string()).unwrap_or_else(|e| panic!("creating {name}: {e:?}"));
    c.ctl(&["job", "assign", name, "--target", target]).expect("assign");
    let started = c.ctl(&["job", "start", name, "--target", target]).expect("start");
    assert_eq!(s(&started[0], "state"), "posted", "{started}");
    s(&started[0], "run_id").to_owned()
}

/// The single finished run of `job`.
pub(crate) fn only_run(c: &Cluster, job: &str) -> Value {
    let runs = finished_runs(c, job, 1);
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs.into_iter().next().expect("one run")
}

/// `(name, outcome, exit_code, retries)` of each step record.
fn steps(run: &Value) -> Vec<(String, String, Option<i64>, u64)> {
    run["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|st| {
            (s(st, "name").to_owned(), s(st, "outcome").to_owned(), st["exit_code"].as_i64(), st["retries"].as_u64().unwrap_or(0))
        })
        .collect()
}

fn step(name: &str, outcome: &str, exit: Option<i64>, retries: u64) -> (String, String, Option<i64>, u64) {
    (name.to_owned(), outcome.to_owned(), exit, retries)
}

/// Waits for the run's `running` record, i.e. the job is running on the target.
fn wait_running(c: &Cluster, job: &str) -> Value {
    wait_for(&format!("{job} to be running"), WAIT, || c.history(job).into_iter().find(|r| s(r, "outcome") == "running"))
}

/// Whether `pid` no longer runs (gone, or a zombie nobody reaped).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()).is_some_and(|st| st == "Z" || st == "X")
        }
    }
}

fn read_pid(path: &Path) -> i32 {
    wait_for(&format!("a pid in {}", path.display()), WAIT, || {
        std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse().ok())
    })
}

#[test]
fn flow_actions_goto_and_retries_are_recorded() {
    let c = cluster_with_target("web01", &[]);
    let dir = c.dir.path().display().to_string();
    let jobs = [
        // next, then quit_success: the third step never runs.
        json!({"name": "flow-next", "steps": [
            {"name": "a", "command": "echo a", "on_success": "next"},
            {"name": "b", "command": "echo \"$MUSTER_JOB $MUSTER_TARGET $MUSTER_STEP $MUSTER_RUN_ID\"", "on_success": "quit_success"},
            {"name": "c", "command": "echo never"}]}),
        // A step that succeeds but whose flow is quit_failure fails the run.
        json!({"name": "flow-quit-failure", "steps": [
            {"name": "a", "command": "true", "on_success": "quit_failure"},
            {"name": "b", "command": "echo never"}]}),
        // goto on failure skips b; c's default on the last step is quit_success.
        json!({"name": "flow-goto", "steps": [
            {"name": "a", "command": "exit 2", "on_failure": {"goto": "c"}},
            {"name": "b", "command": "echo never"},
            {"name": "c", "command": "echo recovered"}]}),
        // The default on_failure is quit_failure.
        json!({"name": "flow-default-failure", "steps": [
            {"name": "a", "command": "exit 5"},
            {"name": "b", "command": "echo never"}]}),
        // Fails until its counter reaches 3: two retries used, then success.
        json!({"name": "retry-succeeds", "steps": [
            {"name": "count", "retries": 5, "retry_interval_secs": 1, "command":
                format!("n=$(cat {dir}/counter 2>/dev/null || echo 0); n=$((n+1)); echo $n > {dir}/counter; echo attempt $n; [ $n -ge 3 ] || exit 9")}]}),
        // Always fails: the retries are used up and the last exit code kept.
        json!({"name": "retry-exhausted", "steps": [
            {"name": "fail", "command": "echo trying; exit 7", "retries": 2},
            {"name": "after", "command": "echo never"}]}),
    ];
    let run_ids: Vec<String> = jobs.iter().map(|j| create_and_start(&c, "web01", j)).collect();

    let r = only_run(&c, "flow-next");
    assert_eq!(s(&r, "outcome"), "succeeded", "{r}");
    assert_eq!(steps(&r), [step("a", "succeeded", Some(0), 0), step("b", "succeeded", Some(0), 0)]);
    assert_eq!(s(&r["trigger"], "kind"), "manual", "{r}");
    assert_eq!(s(&r["steps"][1], "output"), format!("flow-next web01 b {}\n", run_ids[0]), "the MUSTER_* variables");

    let r = only_run(&c, "flow-quit-failure");
    assert_eq!(s(&r, "outcome"), "failed", "{r}");
    assert_eq!(steps(&r), [step("a", "succeeded", Some(0), 0)]);
    assert!(s(&r, "message").contains("quit_failure"), "{r}");

    let r = only_run(&c, "flow-goto");
    assert_eq!(s(&r, "outcome"), "succeeded", "{r}");
    assert_eq!(steps(&r), [step("a", "failed", Some(2), 0), step("c", "succeeded", Some(0), 0)]);
    assert_eq!(r["steps"][1]["index"], 2);
    assert_eq!(s(&r["steps"][1], "output"), "recovered\n");

    let r = only_run(&c, "flow-default-failure");
    assert_eq!(s(&r, "outcome"), "failed", "{r}");
    assert_eq!(steps(&r), [step("a", "failed", Some(5), 0)]);
    assert!(s(&r, "message").contains("step 'a' failed: exit code 5"), "{r}");

    let r = only_run(&c, "retry-succeeds");
    assert_eq!(s(&r, "outcome"), "succeeded", "{r}");
    assert_eq!(steps(&r), [step("count", "succeeded", Some(0), 2)]);
    assert_eq!(s(&r["steps"][0], "output"), "attempt 3\n", "the record keeps the last attempt");
    assert!(r["steps"][0]["duration_ms"].as_u64().is_some());
    let took = chrono_ms(&r);
    assert!(took >= 2000, "two retry intervals of 1 s: {took} ms");

    let r = only_run(&c, "retry-exhausted");
    assert_eq!(s(&r, "outcome"), "failed", "{r}");
    assert_eq!(steps(&r), [step("fail", "failed", Some(7), 2)]);
    assert!(s(&r, "message").contains("exit code 7"), "{r}");

    // `job update -f` reaches the target: the next run follows the new flow.
    let path = c.dir.path().join("update.json");
    let fixed =
        json!({"name": "flow-default-failure", "steps": [{"name": "a", "command": "exit 5", "on_failure": "quit_success"}]});
    std::fs::write(&path, fixed.to_string()).expect("write");
    c.ctl(&["job", "update", "-f", path.to_str().expect("utf8")]).expect("update");
    c.ctl(&["job", "start", "flow-default-failure"]).expect("start again");
    let runs = finished_runs(&c, "flow-default-failure", 2);
    assert_eq!(s(&runs[1], "outcome"), "succeeded", "{runs:?}");
    assert_eq!(steps(&runs[1]), [step("a", "failed", Some(5), 0)]);
}

/// A time field of a run.
fn time(run: &Value, key: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s(run, key)).unwrap_or_else(|e| panic!("{key}: {e}: {run}")).to_utc()
}

/// Milliseconds from a run's start to its end.
fn chrono_ms(run: &Value) -> i64 {
    (time(run, "finished_at") - time(run, "started_at")).num_milliseconds()
}

#[test]
fn timeouts_kill_the_process_tree_and_end_goto_loops() {
    let c = cluster_with_target("web01", &["--kill-grace", "1"]);
    let pidfile = c.dir.path().join("grandchild.pid");
    create_and_start(
        &c,
        "web01",
        &json!({"name": "slow", "steps": [{"name": "fork", "timeout_secs": 1,
            "command": format!("sleep 300 & echo $! > {}; sleep 300", pidfile.display())}]}),
    );
    // A goto loop that only the job timeout ends.
    create_and_start(
        &c,
        "web01",
        &json!({"name": "loop", "timeout_secs": 2, "steps": [
            {"name": "ping", "command": "sleep 0.2", "on_success": {"goto": "pong"}},
            {"name": "pong", "command": "sleep 0.2", "on_success": {"goto": "ping"}}]}),
    );

    let r = only_run(&c, "slow");
    assert_eq!(s(&r, "outcome"), "timed_out", "{r}");
    assert_eq!(s(&r["steps"][0], "outcome"), "timed_out", "{r}");
    assert_eq!(r["steps"][0]["signal"], 15, "the step obeyed SIGTERM: {r}");
    assert!(s(&r["steps"][0], "message").contains("timed out after 1s"), "{r}");
    let grandchild = read_pid(&pidfile);
    wait_for("the forked grandchild to be killed", Duration::from_secs(5), || process_gone(grandchild).then_some(()));

    let r = only_run(&c, "loop");
    assert_eq!(s(&r, "outcome"), "timed_out", "{r}");
    assert!(s(&r, "message").contains("job timeout"), "{r}");
    let n = r["steps"].as_array().expect("steps").len();
    assert!(n >= 4, "the loop went round several times before the timeout: {n} steps");
    let took = chrono_ms(&r);
    assert!((2000..6000).contains(&took), "ended by the 2 s job timeout: {took} ms");
}

#[test]
fn output_over_the_cap_is_cut_with_a_marker_and_10_mb_does_not_deadlock() {
    let c = cluster_with_target("web01", &["--output-cap", "1000"]);
    create_and_start(&c, "web01", &json!({"name": "chatty", "steps": [{"name": "seq", "argv": ["seq", "1", "100000"]}]}));
    create_and_start(
        &c,
        "web01",
        &json!({"name": "flood", "timeout_secs": 60, "steps": [{"name": "ten-mb",
            "command": "head -c 5242880 /dev/zero | tr '\\0' e >&2 & head -c 5242880 /dev/zero | tr '\\0' o; wait"}]}),
    );

    let r = only_run(&c, "chatty");
    assert_eq!(s(&r, "outcome"), "succeeded", "{r}");
    let full: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    let cut = full.len() - 1000;
    assert_eq!(r["steps"][0]["output_cut_bytes"], cut);
    assert_eq!(
        s(&r["steps"][0], "output"),
        format!("{}\n[... {cut} bytes cut ...]\n{}", &full[..500], &full[full.len() - 500..])
    );

    let r = only_run(&c, "flood");
    assert_eq!(s(&r, "outcome"), "succeeded", "{r}");
    assert_eq!(r["steps"][0]["output_cut_bytes"], 10 * 1024 * 1024 - 1000);
    assert!(s(&r["steps"][0], "output").contains(&format!("[... {} bytes cut ...]", 10 * 1024 * 1024 - 1000)), "{r}");
}

#[test]
fn a_run_whose_outputs_add_up_past_the_message_limit_is_still_recorded() {
    // Six steps of 300 kB each: about 1.8 MB, over the 1 MiB a result may be.
    let c = cluster_with_target("big", &["--output-cap", "300000"]);
    let counter = c.dir.path().join("loops");
    create_and_start(
        &c,
        "big",
        &json!({"name": "verbose-loop", "steps": [{"name": "shout", "on_success": {"goto": "shout"}, "on_failure": "quit_success",
            "command": format!("n=$(cat {f} 2>/dev/null || echo 0); [ $n -lt 6 ] || exit 1; echo $((n+1)) > {f}; head -c 300000 /dev/zero | tr '\\0' x",
                f = counter.display())}]}),
    );
    let r = only_run(&c, "verbose-loop");
    assert_eq!(s(&r, "outcome"), "succeeded", "{r}");
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 7, "six loud rounds and the one that ends the loop");
    assert!(steps[..6].iter().all(|st| st["output_cut_bytes"].as_u64() > Some(0)), "every output was shortened alike");
    assert!(s(&r, "message").contains("shortened to fit"), "{}", s(&r, "message"));
    // Results behind it are not held up.
    create_and_start(&c, "big", &json!({"name": "after", "steps": [{"command": "echo next"}]}));
    assert_eq!(s(&only_run(&c, "after"), "outcome"), "succeeded");
}

#[test]
fn a_one_second_schedule_runs_on_a_live_target() {
    let c = cluster_with_target("web01", &[]);
    c.create_job_file(
        &json!({"name": "tick", "steps": [{"command": "echo tick"}], "schedules": [{"name": "every-second", "every_secs": 1}]})
            .to_string(),
    )
    .expect("create");
    c.ctl(&["job", "assign", "tick", "--target", "web01"]).expect("assign");
    c.ctl(&["target", "force-poll", "web01"]).expect("force-poll");
    let runs = finished_runs(&c, "tick", 3);
    for r in &runs {
        assert_eq!(s(r, "outcome"), "succeeded", "{r}");
        assert_eq!(r["trigger"], json!({"kind": "schedule", "schedule": "every-second"}), "{r}");
    }
    let mut starts: Vec<String> = runs.iter().map(|r| s(r, "started_at").to_owned()).collect();
    starts.dedup();
    assert_eq!(starts.len(), runs.len(), "distinct runs");

    // A run longer than the period: the fires during it are one `skipped`
    // record, and the next fire after it starts the next run.
    c.create_job_file(
        &json!({"name": "slow-tick", "steps": [{"command": "sleep 3.5"}], "schedules": [{"name": "s", "every_secs": 1}]})
            .to_string(),
    )
    .expect("create slow-tick");
    c.ctl(&["job", "assign", "slow-tick", "--target", "web01"]).expect("assign slow-tick");
    c.ctl(&["target", "force-poll", "web01"]).expect("force-poll");
    let runs = wait_for("two runs of slow-tick", WAIT, || {
        let runs = c.history("slow-tick");
        (runs.iter().filter(|r| s(r, "outcome") == "succeeded").count() >= 2).then_some(runs)
    });
    let second = runs.iter().filter(|r| s(r, "outcome") == "succeeded").nth(1).expect("second run");
    let between: Vec<&str> =
        runs.iter().filter(|r| time(r, "started_at") < time(second, "started_at")).map(|r| s(r, "outcome")).collect();
    assert_eq!(between, ["succeeded", "skipped"], "{runs:?}");

    // Disabled, it stops firing. Once the target has applied the disable,
    // is not running it and has nothing left in its spool, history holds all
    // the runs it will ever have. Another every-second job is the clock:
    // three of its runs later, there is not one more.
    c.ctl(&["job", "disable", "tick"]).expect("disable");
    c.ctl(&["target", "force-poll", "web01"]).expect("force-poll");
    let run_ids = || -> Vec<String> { c.history("tick").iter().map(|r| s(r, "run_id").to_owned()).collect() };
    wait_for_described(
        "tick to be over: not running, nothing spooled",
        WAIT,
        || {
            let report = &c.ctl(&["target", "force-poll", "web01"]).ok()?[0]["report"];
            let running = report["running"].as_array()?.iter().any(|j| j == "tick");
            (!running && report["spooled"] == 0).then_some(())
        },
        || format!("{:?}", c.ctl(&["target", "force-poll", "web01"])),
    );
    let settled = run_ids();
    c.create_job_file(
        &json!({"name": "clock", "steps": [{"command": "true"}], "schedules": [{"name": "s", "every_secs": 1}]}).to_string(),
    )
    .expect("create clock");
    c.ctl(&["job", "assign", "clock", "--target", "web01"]).expect("assign clock");
    c.ctl(&["target", "force-poll", "web01"]).expect("force-poll");
    finished_runs(&c, "clock", 3);
    assert_eq!(run_ids(), settled, "runs kept coming after the disable");
}

#[test]
fn stopping_a_running_job_terms_then_kills_its_process_group() {
    let mut c = cluster_with_target("web01", &["--kill-grace", "1"]);
    let dir = c.dir.path().to_owned();
    let (pidfile, termfile) = (dir.join("stubborn.pid"), dir.join("term.log"));
    // The script and its background child ignore SIGTERM: only SIGKILL ends them.
    create_and_start(
        &c,
        "web01",
        &json!({"name": "stubborn", "steps": [{"name": "hold", "command": format!(
            "trap 'echo TERM >> {t}' TERM; sleep 300 & echo $! > {p}; while true; do sleep 0.1; done",
            t = termfile.display(), p = pidfile.display())}]}),
    );
    wait_running(&c, "stubborn");
    let grandchild = read_pid(&pidfile);

    let asked = chrono::Utc::now();
    let stopped = c.ctl(&["job", "stop", "stubborn"]).expect("stop");
    assert_eq!(s(&stopped[0], "state"), "delivered", "{stopped}");
    assert_eq!(s(&stopped[0], "message"), "stopped", "{stopped}");
    let r = only_run(&c, "stubborn");
    assert_eq!(s(&r, "outcome"), "canceled", "{r}");
    assert_eq!(s(&r["steps"][0], "outcome"), "canceled", "{r}");
    assert_eq!(r["steps"][0]["signal"], 9, "SIGKILL after the grace period: {r}");
    assert!(std::fs::read_to_string(&termfile).unwrap_or_default().contains("TERM"), "SIGTERM came first");
    let took = (time(&r, "finished_at") - asked).num_milliseconds();
    assert!((1000..10_000).contains(&took), "SIGKILL came after the 1 s grace, and the stop was prompt: {took} ms");
    assert!(process_gone(grandchild), "the whole group was killed");

    // Not running any more. The agent lets go of the run just after its final
    // record is stored, so history can show it a moment before: wait for it.
    let last = std::cell::RefCell::new(serde_json::Value::Null);
    wait_for_described(
        "a second stop to find nothing running",
        WAIT,
        || {
            let again = c.ctl(&["job", "stop", "stubborn"]).expect("stop again");
            let done = s(&again[0], "message") == "was not running";
            *last.borrow_mut() = again;
            done.then_some(())
        },
        || format!("the last stop answered {}", last.borrow()),
    );

    // A target the master cannot reach gets the stop as an instruction, and
    // at its next poll it stops the run that was going when it was posted.
    let proxy = Proxy::start(c.nats.port);
    c.start_target_at("away", 3600, &proxy.url(), &["--kill-grace", "1"]);
    c.wait_target_online("away");
    let held = create_and_start(&c, "away", &json!({"name": "held", "steps": [{"command": "sleep 300"}]}));
    wait_running(&c, "held");
    proxy.cut();
    wait_for_described(
        "away to be unreachable",
        WAIT,
        || c.ctl(&["target", "force-poll", "away"]).is_err_and(|e| e.code == 5).then_some(()),
        || format!("{:?}", c.ctl(&["target", "force-poll", "away"])),
    );
    let queued = c.ctl(&["job", "stop", "held", "--target", "away"]).expect("stop while cut off");
    assert_eq!(s(&queued[0], "state"), "queued", "{queued}");
    assert_eq!(stop_rows(&c, "away"), ["pending"], "the stop is queued");
    proxy.restore();
    c.wait_target_online("away"); // its force-poll reads the stop
    let r = only_run(&c, "held");
    assert_eq!((s(&r, "run_id"), s(&r, "outcome")), (held.as_str(), "canceled"), "the queued stop stopped the run: {r}");
    wait_for_described(
        "the stop applied in the download list",
        WAIT,
        || (stop_rows(&c, "away") == ["applied"]).then_some(()),
        || format!("{:?}", stop_rows(&c, "away")),
    );
    assert!(c.target("away").is_running());
}

/// The status of each `stop_job` row in a target's download list.
fn stop_rows(c: &Cluster, target: &str) -> Vec<String> {
    let rows: Vec<Value> = c.ctl_ok(&["instructions", "--target", target]);
    rows.iter().filter(|r| s(r, "op") == "stop_job").map(|r| s(r, "status").to_owned()).collect()
}

#[test]
fn a_concurrent_start_is_recorded_as_skipped() {
    let c = cluster_with_target("web01", &[]);
    let release = c.dir.path().join("release");
    let first = create_and_start(
        &c,
        "web01",
        &json!({"name": "busy", "steps": [{"command": format!("while [ ! -e {} ]; do sleep 0.1; done", release.display())}]}),
    );
    wait_running(&c, "busy");
    let second = c.ctl(&["job", "start", "busy"]).expect("second start");
    let second = s(&second[0], "run_id").to_owned();
    let skipped = wait_for("the second start to be recorded", WAIT, || {
        c.history("busy").into_iter().find(|r| s(r, "run_id") == second && s(r, "outcome") != "running")
    });
    assert_eq!(s(&skipped, "outcome"), "skipped", "{skipped}");
    assert!(s(&skipped, "message").contains(&first), "names the running run: {skipped}");
    assert!(skipped["steps"].as_array().is_some_and(Vec::is_empty));

    std::fs::write(&release, "").expect("release");
    let runs = finished_runs(&c, "busy", 2);
    let first_run = runs.iter().find(|r| s(r, "run_id") == first).expect("first run");
    assert_eq!(s(first_run, "outcome"), "succeeded", "{first_run}");
}

#[test]
fn a_target_killed_mid_run_reports_it_interrupted_after_restart() {
    let mut c = cluster_with_target("web01", &[]);
    let pidfile = c.dir.path().join("step.pid");
    let run_id = create_and_start(
        &c,
        "web01",
        &json!({"name": "cut-short", "steps": [{"command": format!("echo $$ > {}; sleep 300", pidfile.display())}]}),
    );
    let running = wait_running(&c, "cut-short");
    assert_eq!(s(&running, "run_id"), run_id);
    let step_pid = read_pid(&pidfile);
    // A job that runs when the agent starts: it will run once, after the restart.
    c.create_job_file(
        &json!({"name": "boot", "steps": [{"command": "echo booted"}], "schedules": [{"name": "b", "on_start": true}]})
            .to_string(),
    )
    .expect("create boot");
    c.ctl(&["job", "assign", "boot", "--target", "web01"]).expect("assign boot");
    c.ctl(&["target", "force-poll", "web01"]).expect("deliver boot");

    c.target("web01").kill();
    c.start_target("web01", 60);
    let r = wait_for("the run to be reported interrupted", WAIT, || {
        c.history("cut-short").into_iter().find(|r| s(r, "outcome") != "running")
    });
    assert_eq!(s(&r, "outcome"), "interrupted", "{r}");
    assert_eq!(s(&r, "run_id"), run_id, "the same run, not a new one");
    assert!(s(&r, "message").contains("leftover processes of it were terminated"), "{r}");
    let all = c.history("cut-short");
    assert_eq!(all.len(), 1, "exactly one record for the run: {all:?}");
    let boot = only_run(&c, "boot");
    assert_eq!(boot["trigger"], json!({"kind": "on_start"}), "{boot}");
    assert_eq!(s(&boot, "outcome"), "succeeded", "{boot}");
    // The restarted agent does not leave the orphaned step running.
    wait_for("the orphaned step to be killed", Duration::from_secs(10), || process_gone(step_pid).then_some(()));
}

/// Sends a request body to the master's API as any client could, without
/// `musterctl`'s own checks, and returns the master's reply.
fn api(c: &Cluster, op: Op, body: &Value) -> Result<Value, ApiError> {
    let (options, url, subject) = (c.connect_options(), c.url(), Subjects::default().api(op));
    let payload = serde_json::to_vec(body).expect("JSON");
    let reply = block_on(async move {
        let client = options.connect(url).await.expect("connect");
        client.request(subject, payload.into()).await.expect("the master answers")
    });
    serde_json::from_slice::<Reply<Value>>(&reply.payload).expect("a reply").into_result()
}

#[test]
fn bad_job_files_are_refused_naming_the_field() {
    let c = Cluster::with_master();
    let good_step = json!({"name": "a", "command": "true"});
    // A job that exists: a refused update must leave it as it is.
    let good = json!({"name": "j", "steps": [good_step]});
    c.create_job_file(&good.to_string()).expect("create the good job");
    let before: Value = c.ctl_ok(&["job", "show", "j"]);
    for (spec, field, why, code) in [
        (
            json!({"name": "j", "steps": [{"name": "a", "command": "x", "on_failure": {"goto": "nope"}}]}),
            "steps[0].on_failure.goto",
            "no step is named 'nope'",
            ErrorCode::InvalidJob,
        ),
        (
            json!({"name": "j", "steps": [good_step, {"name": "b", "command": "x", "argv": ["y"]}]}),
            "steps[1].argv",
            "not both",
            ErrorCode::InvalidJob,
        ),
        (
            json!({"name": "j", "steps": [good_step], "schedules": [{"name": "s", "cron": "61 * * * *"}]}),
            "schedules[0].cron",
            "61 * * * *",
            ErrorCode::InvalidJob,
        ),
        (
            json!({"name": "j", "steps": [good_step], "schedules": [{"name": "s", "cron": "0 2 * * *", "timezone": "Mars/Olympus"}]}),
            "schedules[0].timezone",
            "Mars/Olympus",
            ErrorCode::InvalidJob,
        ),
        (
            json!({"name": "j", "steps": [good_step], "schedules": [{"name": "s", "every_secs": 0}]}),
            "schedules[0].every_secs",
            "at least 1",
            ErrorCode::InvalidJob,
        ),
        (json!({"name": "j", "steps": []}), "steps", "at least one step", ErrorCode::InvalidJob),
        // Not a job at all: refused when the request is read.
        (
            json!({"name": "j", "steps": [{"name": "a", "command": "x", "colour": "red"}]}),
            "",
            "colour",
            ErrorCode::InvalidRequest,
        ),
    ] {
        // musterctl refuses the file before sending it...
        let path = c.dir.path().join("bad.json");
        std::fs::write(&path, spec.to_string()).expect("write");
        let out = c.ctl_raw(&["job", "create", "-f", path.to_str().expect("utf8")], false);
        assert_eq!(out.code, 4, "{spec}: {out:?}");
        // The file's path to the field in error (an unknown key's own path).
        let field_in_cli = if field.is_empty() { "steps[0].colour" } else { field };
        assert!(out.stderr.contains(field_in_cli) && out.stderr.contains(why), "{field_in_cli} / {why} in {out:?}");
        let out = c.ctl_raw(&["job", "update", "-f", path.to_str().expect("utf8")], false);
        assert_eq!(out.code, 4, "update {spec}: {out:?}");

        // ...and the master refuses it from any other client.
        let mut fresh = spec.clone();
        fresh["name"] = json!("fresh");
        for (op, body) in [(Op::JobCreate, fresh), (Op::JobUpdate, spec.clone())] {
            let refused = api(&c, op, &json!({"v": 1, "spec": body})).expect_err("the master refuses it");
            assert_eq!(refused.code, code, "{op:?} {body}: {refused:?}");
            assert!(refused.message.contains(field) && refused.message.contains(why), "{field} / {why} in {refused:?}");
        }
    }
    let jobs: Vec<Value> = c.ctl_ok(&["job", "list"]);
    assert_eq!(jobs.len(), 1, "nothing new was stored: {jobs:?}");
    assert_eq!(c.ctl_ok::<Value>(&["job", "show", "j"]), before, "the job is unchanged");
}
