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
