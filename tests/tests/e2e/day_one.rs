//! What a new operator trips over on the first day (issue "Day one as an
//! operator"): output piped into `head`, a state directory shared by
//! mistake.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use muster_tests::{bin, wait_for, Cluster};

const WAIT: Duration = Duration::from_secs(30);

/// Runs `musterctl ARGS` with its standard output a pipe whose reader is
/// already gone, as in `musterctl … | head` once `head` has read enough:
/// every write fails with `EPIPE`, whatever the timing.
fn into_closed_pipe(c: &Cluster, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(bin("musterctl"))
        .env("NATS_URL", c.url())
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("running musterctl")
}

#[test]
fn musterctl_piped_into_a_reader_that_stopped_ends_quietly() {
    let c = Cluster::with_master();
    // Before the fix: exit 101 and "failed printing to stdout: Broken pipe".
    for args in [&["completions", "bash"][..], &["target", "list"], &["status"], &["target", "list", "--json"]] {
        let out = into_closed_pipe(&c, args);
        assert_eq!(out.status.code(), Some(0), "musterctl {args:?}: {out:?}");
        assert!(out.stderr.is_empty(), "musterctl {args:?} said: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Starts an agent that must refuse to run: it must exit non-zero within
/// [`WAIT`] (one still running then is killed and fails the test). Returns
/// what it said: its log (standard output) and standard error.
fn refused_agent(c: &Cluster, name: &str, state_dir: &Path) -> String {
    let mut child = Command::new(bin("muster-target"))
        .env("NATS_URL", c.url())
        .args(["--name", name, "--state-dir"])
        .arg(state_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running muster-target");
    let exited = wait_for_exit(&mut child);
    let out = child.wait_with_output().expect("agent output");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(exited, "agent {name} on {} was not refused: it kept running. It said: {said}", state_dir.display());
    assert_ne!(out.status.code(), Some(0), "{name}: {said}");
    said
}

/// Waits up to [`WAIT`] for `child` to exit; kills it when it does not.
fn wait_for_exit(child: &mut Child) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().ok();
    false
}

#[test]
fn a_second_agent_on_a_state_directory_is_refused() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 60);
    c.wait_target_online("web01");
    let dir = c.state_dir("web01");

    // Started while web01 runs, under another name (the typo of the issue)
    // or its own: refused before it loads a job or enlists.
    for name in ["web09", "web01"] {
        let out = refused_agent(&c, name, &dir);
        assert!(out.contains("already running on the state directory"), "{name}: {out}");
    }
    let listed: Vec<serde_json::Value> = c.ctl_ok(&["target", "list"]);
    assert_eq!(listed.len(), 1, "web09 never enlisted: {listed:?}");

    // With web01 stopped, the directory still belongs to web01.
    assert_eq!(c.target("web01").terminate(WAIT), Some(0));
    let out = refused_agent(&c, "web09", &dir);
    assert!(out.contains("belongs to target 'web01'"), "{out}");

    // And web01 itself takes it back, once the other is gone.
    c.start_target("web01", 60);
    c.wait_target_online("web01");
    let listed = wait_for("only web01 enlisted", WAIT, || {
        let l: Vec<serde_json::Value> = c.ctl_ok(&["target", "list"]);
        (l.len() == 1).then_some(l)
    });
    assert_eq!(listed[0]["name"], "web01");
}

#[test]
fn the_three_binaries_share_one_table_of_exit_codes() {
    let state = tempfile::tempdir().expect("tempdir");
    let run = |bin_name: &str, args: &[&str]| {
        let mut cmd = Command::new(bin(bin_name));
        cmd.env_remove("NATS_URL").args(args);
        if bin_name == "muster-target" {
            cmd.args(["--name", "web01", "--state-dir"]).arg(state.path().join("s"));
        }
        let out = cmd.output().expect("running the binary");
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let table = muster_runtime::exit::help("");
    for (b, command) in [("muster-master", &[][..]), ("muster-target", &[]), ("musterctl", &["status"])] {
        let (code, said) = run(b, &[&["--no-such-flag"][..], command].concat());
        assert_eq!(code, Some(2), "{b}, an unknown flag: {said}");
        let (code, said) = run(b, &[&["--server", "foo://127.0.0.1:1"][..], command].concat());
        assert_eq!(code, Some(4), "{b}, a bad URL scheme: {said}");
        assert!(said.contains("bad NATS URL 'foo://127.0.0.1:1'"), "{b}: {said}");
        // A TLS file that cannot be read ends even a daemon, which would
        // otherwise wait for NATS forever: nothing it tries can work.
        let (code, said) = run(b, &[&["--server", "tls://127.0.0.1:1", "--tls-ca", "/nonexistent/ca.pem"][..], command].concat());
        assert_eq!(code, Some(4), "{b}, a missing CA file: {said}");
        assert!(said.contains("/nonexistent/ca.pem"), "{b}: {said}");
        let (code, said) = run(b, &["--help"]);
        assert_eq!(code, Some(0), "{b} --help: {said}");
        assert!(said.contains(table.trim_end()), "{b} --help prints the one table: {said}");
    }
}

#[test]
fn run_show_on_a_terminal_shows_control_characters_instead_of_sending_them() {
    muster_tests::require_on_path("script").expect("script(1), from util-linux, gives musterctl a terminal");
    let mut c = Cluster::with_master();
    c.start_target("web01", 3600);
    c.wait_target_online("web01");
    // Clear the screen and retitle the terminal window, as a hostile job
    // (or a forged record) could.
    c.ctl(&["job", "create", "loud", "--command", r"printf '\033[2J\033]0;owned\007done\n'"]).expect("create");
    c.ctl(&["job", "assign", "loud", "--target", "web01"]).expect("assign");
    let runs: Vec<serde_json::Value> = c.ctl_ok(&["job", "start", "loud", "--wait"]);
    let run_id = runs[0]["run_id"].as_str().expect("run id").to_owned();

    // Piped: byte for byte what the job printed.
    let piped = c.ctl_raw(&["run", "show", &run_id], false);
    assert!(piped.stdout.contains("| \u{1b}[2J\u{1b}]0;owned\u{7}done"), "{piped:?}");

    // On a terminal (script(1) runs it on a pseudo-terminal): shown as `cat -v` shows it.
    let musterctl = bin("musterctl");
    let out = Command::new("script")
        .args(["-qec", &format!("{} run show {run_id}", musterctl.display()), "/dev/null"])
        .env("NATS_URL", c.url())
        .output()
        .expect("running script");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(seen.contains("| ^[[2J^[]0;owned^Gdone"), "{seen:?}");
    assert!(!seen.contains('\u{1b}'), "no escape reached the terminal: {seen:?}");
}

#[test]
fn a_master_killed_mid_request_is_reported_unreachable_not_offline() {
    use futures::StreamExt as _;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let mut c = Cluster::with_master();
    c.start_target("web01", 3600);
    c.wait_target_online("web01");
    // Frozen, web01 still holds its control subscription: the master's
    // force-poll waits for it (10 s) instead of failing at once.
    let agent = Pid::from_raw(c.target("web01").pid());
    kill(agent, Signal::SIGSTOP).expect("SIGSTOP");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let nats = rt.block_on(async_nats::connect(c.url())).expect("connect");
    let mut control = rt.block_on(nats.subscribe("muster.target.web01.control")).expect("subscribe");
    rt.block_on(nats.flush()).expect("flush");
    let mut ctl = Command::new(bin("musterctl"))
        .env("NATS_URL", c.url())
        .args(["target", "force-poll", "web01", "--api-timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("musterctl");
    // The master is in the middle of the request once its control request
    // to web01 is out.
    rt.block_on(async { tokio::time::timeout(WAIT, control.next()).await })
        .expect("the master's force-poll of web01")
        .expect("a message");
    c.masters[0].kill();

    let exited = wait_for_exit(&mut ctl);
    let out = ctl.wait_with_output().expect("musterctl output");
    kill(agent, Signal::SIGCONT).expect("SIGCONT");
    assert!(exited, "musterctl kept waiting for a master that was gone: {out:?}");
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the master stopped while it handled the request"), "{out:?}");
}

/// Runs `musterctl ARGS --json` with `input` on standard input.
fn ctl_with_input(c: &Cluster, args: &[&str], input: &str) -> (Option<i32>, serde_json::Value, String) {
    use std::io::Write as _;
    let mut child = Command::new(bin("musterctl"))
        .env("NATS_URL", c.url())
        .args(args)
        .arg("--json")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("musterctl");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("musterctl output");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn job_show_json_edited_goes_back_through_job_apply() {
    let c = Cluster::with_master();
    c.ctl(&["target", "enlist", "web01"]).expect("enlist web01");
    c.ctl(&["target", "enlist", "web02"]).expect("enlist web02");
    c.ctl(&["group", "create", "db"]).expect("group");

    // Creates from a hand-written spec on standard input.
    let spec = r#"{"name": "backup", "steps": [{"command": "echo one"}]}"#;
    let (code, created, said) = ctl_with_input(&c, &["job", "apply", "-f", "-"], spec);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!((created["revision"].as_u64(), created["spec"]["steps"][0]["command"].as_str()), (Some(1), Some("echo one")));

    // Applied again unchanged: nothing is posted, the revision stays.
    let (code, same, said) = ctl_with_input(&c, &["job", "apply", "-f", "-"], spec);
    assert_eq!((code, same["revision"].as_u64()), (Some(0), Some(1)), "{said}");

    // `job show --json`, edited (a step changed, assigned to web02 and db),
    // goes back unchanged in form, `id`, `revision` and times included.
    let mut shown: serde_json::Value = c.ctl_ok(&["job", "show", "backup"]);
    shown["spec"]["steps"][0]["command"] = "echo two".into();
    shown["targets"] = serde_json::json!(["web02"]);
    shown["groups"] = serde_json::json!(["db"]);
    let (code, applied, said) = ctl_with_input(&c, &["job", "apply", "-f", "-"], &shown.to_string());
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(applied["spec"]["steps"][0]["command"], "echo two");
    assert_eq!(
        (applied["targets"].clone(), applied["groups"].clone()),
        (serde_json::json!(["web02"]), serde_json::json!(["db"]))
    );
    // job update -f takes the same document.
    shown["spec"]["steps"][0]["command"] = "echo three".into();
    let (code, updated, said) = ctl_with_input(&c, &["job", "update", "-f", "-"], &shown.to_string());
    assert_eq!((code, updated["spec"]["steps"][0]["command"].as_str()), (Some(0), Some("echo three")), "{said}");

    // Moved from web02 to web01: web02 unassigned, web01 assigned.
    shown["targets"] = serde_json::json!(["web01"]);
    let (code, moved, said) = ctl_with_input(&c, &["job", "apply", "-f", "-"], &shown.to_string());
    assert_eq!((code, moved["targets"].clone()), (Some(0), serde_json::json!(["web01"])), "{said}");

    // A typo is refused with what is wrong, and nothing changed.
    let (code, _, said) = ctl_with_input(&c, &["job", "apply", "-f", "-"], r#"{"name": "backup", "stepz": []}"#);
    assert_eq!(code, Some(4), "{said}");
    assert!(said.contains("standard input") && said.contains("stepz"), "{said}");
    let kept: serde_json::Value = c.ctl_ok(&["job", "show", "backup"]);
    assert_eq!(kept["spec"]["steps"][0]["command"], "echo three");
}

#[test]
fn scripts_install_puts_working_binaries_and_units_in_place() {
    // The debug build the tests use: the script's own release build is
    // what users run, and would double this test's time.
    bin("musterctl");
    let root = tempfile::tempdir().expect("tempdir");
    let install = || {
        let out = Command::new(muster_tests::workspace().join("scripts/install"))
            .args(["--profile", "dev", "--no-build", "--systemd", "--prefix", "/opt/muster", "--root"])
            .arg(root.path())
            .output()
            .expect("scripts/install");
        assert!(out.status.success(), "{out:?}");
    };
    install();
    let bin_dir = root.path().join("opt/muster/bin");
    let unit = std::fs::read_to_string(root.path().join("etc/systemd/system/muster-target.service")).expect("unit");
    assert!(unit.contains("ExecStart=/opt/muster/bin/muster-target"), "{unit}");
    for f in
        ["etc/systemd/system/muster-master.service", "etc/systemd/system/nats-server.service", "usr/lib/sysusers.d/muster.conf"]
    {
        assert!(root.path().join(f).is_file(), "{f}");
    }
    // Settings are the operator's: a second install keeps them.
    let settings = root.path().join("etc/muster/muster.env");
    std::fs::write(&settings, "MUSTER_NAME=web01\n").expect("edit settings");
    install();
    assert_eq!(std::fs::read_to_string(&settings).expect("settings"), "MUSTER_NAME=web01\n");

    // The installed binaries run the loop.
    let c = Cluster::new();
    let spawn = |name: &str, args: &[&str]| {
        let mut cmd = Command::new(bin_dir.join(name));
        cmd.env("NATS_URL", c.url()).args(args);
        muster_tests::Proc::spawn(name, cmd, c.dir.path().join(format!("installed-{name}.log")))
    };
    let _master = spawn("muster-master", &[]);
    let state = c.dir.path().join("installed-state");
    let _target = spawn("muster-target", &["--name", "web01", "--state-dir", state.to_str().expect("utf8")]);
    wait_for("the installed agent enlisted with the installed master", WAIT, || {
        let out =
            Command::new(bin_dir.join("musterctl")).env("NATS_URL", c.url()).args(["target", "list", "--json"]).output().ok()?;
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        (listed.len() == 1 && listed[0]["name"] == "web01").then_some(())
    });
}

#[test]
fn deleting_a_running_job_stops_its_run_and_records_it_canceled() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 3600);
    c.wait_target_online("web01");
    let pidfile = c.dir.path().join("sleeper.pid");
    c.ctl(&["job", "create", "sleeper", "--command", &format!("sleep 300 & echo $! > {}; wait", pidfile.display())])
        .expect("create");
    c.ctl(&["job", "assign", "sleeper", "--target", "web01"]).expect("assign");
    c.ctl(&["target", "force-poll", "web01"]).expect("poll");
    c.ctl(&["job", "start", "sleeper"]).expect("start");
    let run = wait_for("sleeper running", WAIT, || c.history("sleeper").into_iter().find(|r| r["outcome"] == "running"));
    let pid: i32 = wait_for("the sleep's pid", WAIT, || std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok());

    c.ctl(&["job", "delete", "sleeper"]).expect("delete");
    c.ctl(&["target", "force-poll", "web01"]).expect("poll after the delete");
    let ended = wait_for("the run recorded canceled", WAIT, || {
        c.history("sleeper").into_iter().find(|r| r["run_id"] == run["run_id"] && r["outcome"] != "running")
    });
    assert_eq!(ended["outcome"], "canceled", "{ended}");
    wait_for("no sleep left behind", WAIT, || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let gone =
            stat.is_none_or(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()).is_some_and(|st| st == "Z"));
        gone.then_some(())
    });
}

#[test]
fn job_show_says_retries_flow_timeouts_and_when_each_schedule_fires_next() {
    let c = Cluster::with_master();
    let file = c.dir.path().join("backup.json");
    std::fs::write(
        &file,
        r#"{"name": "backup", "timeout_secs": 3600, "enabled": false,
            "steps": [
              {"name": "dump", "command": "pg_dump db", "timeout_secs": 600, "retries": 2, "retry_interval_secs": 30,
               "on_failure": {"goto": "alert"}},
              {"name": "upload", "command": "true", "on_success": "quit_success"},
              {"name": "alert", "command": "echo failed"}],
            "schedules": [
              {"name": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Berlin"},
              {"name": "office", "every_secs": 900, "between": ["08:00", "18:00"]},
              {"name": "boot", "on_start": true},
              {"name": "paused", "every_secs": 60, "enabled": false}]}"#,
    )
    .expect("job file");
    c.ctl(&["job", "create", "-f", file.to_str().expect("utf8")]).expect("create");
    let out = c.ctl_raw(&["job", "show", "backup", "--utc"], false);
    assert_eq!(out.code, 0, "{out:?}");
    for line in [
        "disabled: its schedules do not fire; `job start` still runs it",
        "timeout: 1h for the whole run",
        "step 1 dump: pg_dump db",
        "timeout 10m; 2 retries, 30s apart; on success: next step; on failure: go to step 3 'alert'",
        "on success: quit, succeeded; on failure: quit, failed",
        "schedule nightly: cron '30 2 * * *' in Europe/Berlin; next 20",
        // Shown in UTC here (--utc), labelled.
        " UTC\n",
        "schedule office: every 15m between 08:00 and 18:00 UTC; next 20",
        "schedule boot: when the agent starts; at each agent start",
        "schedule paused: every 1m; disabled",
    ] {
        assert!(out.stdout.contains(line), "{line:?} in:\n{}", out.stdout);
    }
}

#[test]
fn target_show_tells_what_the_target_holds_and_did() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 3600);
    c.wait_target_online("web01");
    c.ctl(&["group", "create", "web"]).expect("group");
    c.ctl(&["group", "add", "web", "web01"]).expect("member");
    c.ctl(&["job", "create", "direct", "--command", "true"]).expect("create");
    c.ctl(&["job", "create", "via-group", "--command", "echo hi"]).expect("create");
    c.ctl(&["job", "assign", "direct", "--target", "web01"]).expect("assign");
    c.ctl(&["job", "assign", "via-group", "--group", "web"]).expect("assign");
    let runs: Vec<serde_json::Value> = c.ctl_ok(&["job", "start", "via-group", "--wait"]);
    let run_id = runs[0]["run_id"].as_str().expect("run id").to_owned();

    let out = c.ctl_raw(&["target", "show", "web01"], false);
    assert_eq!(out.code, 0, "{out:?}");
    for said in ["jobs that reach it (2): direct,via-group", "newest download-list rows", "upsert_job", "recent runs:", &run_id] {
        assert!(out.stdout.contains(said), "{said:?} in:\n{}", out.stdout);
    }
    // Scripts keep the record they had.
    let json: serde_json::Value = c.ctl_ok(&["target", "show", "web01"]);
    assert_eq!(json["name"], "web01");
}

#[test]
fn times_are_shown_in_the_operators_zone_labelled_or_in_utc() {
    let mut c = Cluster::with_master();
    c.start_target("web01", 3600);
    c.wait_target_online("web01");
    let list = |tz: &str, args: &[&str]| {
        let out = Command::new(bin("musterctl"))
            .env("NATS_URL", c.url())
            .env("TZ", tz)
            .args(["target", "list"])
            .args(args)
            .output()
            .expect("musterctl");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tokyo = list("Asia/Tokyo", &[]);
    assert!(tokyo.contains(" JST"), "the last poll in the operator's zone, labelled: {tokyo}");
    let utc = list("Asia/Tokyo", &["--utc"]);
    assert!(utc.contains(" UTC") && !utc.contains(" JST"), "--utc: {utc}");
}

#[test]
fn a_process_connecting_without_authentication_says_so_once() {
    const WARNING: &str = "connecting to NATS without authentication";
    let mut plain = Cluster::with_master();
    plain.start_target("web01", 3600);
    plain.wait_target_online("web01");
    let logs = plain.logs();
    assert_eq!(logs.matches(WARNING).count(), 2, "the master and the agent, once each:\n{logs}");

    // With a user, not a word of it.
    let mut with_user = Cluster::new_with("authorization { users = [ { user: muster, password: s3cret } ] }");
    with_user.env = vec![("NATS_USER".into(), "muster".into()), ("NATS_PASSWORD".into(), "s3cret".into())];
    with_user.start_master();
    with_user.start_target("web01", 3600);
    with_user.wait_target_online("web01");
    let logs = with_user.logs();
    assert!(!logs.contains(WARNING), "{logs}");
}

#[test]
fn the_agent_says_which_server_failed_and_why_once_per_change() {
    const CANNOT: &str = "cannot connect to NATS";
    const FAILED_ATTEMPT: &str = "connection attempt failed";
    let mut c = Cluster::new();
    let url = c.url();
    let port = url.rsplit(':').next().expect("a port").to_owned();
    c.nats.kill();
    // The default filter, plus async-nats' own debug line for each attempt,
    // which is how the test counts attempts.
    c.env = vec![("MUSTER_LOG".into(), "info,async_nats=warn,async_nats::connector=debug".into())];
    c.start_target_at("web01", 3600, &url, &[]);
    let log = |c: &mut Cluster| c.target("web01").log_text();
    let attempts = |c: &mut Cluster| log(c).matches(FAILED_ATTEMPT).count();
    wait_for("four failed attempts", WAIT, || (attempts(&mut c) >= 4).then_some(()));
    let text = log(&mut c);
    assert_eq!(text.matches(CANNOT).count(), 1, "once, not once per attempt:\n{text}");
    let line = text.lines().find(|l| l.contains(CANNOT)).expect("the line");
    assert!(line.contains(&format!("127.0.0.1:{port}: connection refused")), "the server and the cause: {line}");
    assert!(!text.contains("nats: IO error") && !text.contains("is it enlisted"), "{text}");

    // Back: said once; gone again: said again, once.
    c.nats.restart();
    wait_for("the agent to say it is connected again", WAIT, || log(&mut c).contains("connected to NATS again").then_some(()));
    let before = attempts(&mut c);
    c.nats.kill();
    wait_for("three more failed attempts", WAIT, || (attempts(&mut c) >= before + 3).then_some(()));
    let text = log(&mut c);
    assert_eq!(text.matches("disconnected from NATS").count(), 1, "{text}");
    assert_eq!(text.matches(CANNOT).count(), 2, "once per change:\n{text}");
}
