//! Run as: a step naming a Unix `user` (and `group`) runs as that account on
//! a root agent, with its environment and home; a user this host lacks, or
//! any such step on an agent that is not root, is refused with a clear run
//! record while the agent goes on.
//!
//! Switching accounts needs root, so these tests need the test process to be
//! root; otherwise each says so and returns (skipped, never passed silently).

use muster_tests::{require_on_path, s, Cluster};
use nix::unistd::{geteuid, Group, User};
use serde_json::{json, Value};

use crate::jobs::{create_and_start, only_run};

/// True when the test process is root; otherwise prints why `test` is
/// skipped.
fn root_or_skip(test: &str) -> bool {
    let root = geteuid().is_root();
    if !root {
        eprintln!("SKIPPED {test}: the test process is not root (uid {}), so no agent can switch accounts", geteuid());
    }
    root
}

/// Starts job `spec` on `target` and returns its one finished run.
fn run_once(c: &Cluster, target: &str, spec: Value) -> Value {
    create_and_start(c, target, &spec);
    only_run(c, s(&spec, "name"))
}

#[test]
fn a_step_runs_as_its_user_with_that_users_environment() {
    if !root_or_skip("a_step_runs_as_its_user_with_that_users_environment") {
        return;
    }
    let nobody = User::from_name("nobody").expect("passwd").expect("this host has a 'nobody' user");
    let primary = Group::from_gid(nobody.gid).expect("group").expect("nobody's group").name;
    let daemon = Group::from_name("daemon").expect("group").expect("this host has a 'daemon' group");
    let mut c = Cluster::with_master();
    c.start_target("web01", 60);
    c.wait_target_online("web01");

    let run = run_once(
        &c,
        "web01",
        json!({"name": "as-nobody", "steps": [
            {"name": "who", "user": "nobody",
             "command": "echo \"$(id -un) $(id -gn) $HOME $USER $LOGNAME $SHELL $(pwd)\"; id -G"},
            {"name": "group", "user": "nobody", "group": "daemon", "cwd": "/tmp", "env": {"HOME": "/step-home"},
             "command": "echo \"$(id -un) $(id -gn) $(pwd) $HOME\""},
        ]}),
    );
    assert_eq!(s(&run, "outcome"), "succeeded", "{run}");
    let who = s(&run["steps"][0], "output");
    let mut lines = who.lines();
    // nobody's home is usually /nonexistent: the step then starts in `/`.
    let dir = if nobody.dir.is_dir() { nobody.dir.display().to_string() } else { "/".to_owned() };
    assert_eq!(
        lines.next(),
        Some(format!("nobody {primary} {} nobody nobody {} {dir}", nobody.dir.display(), nobody.shell.display()).as_str()),
        "{run}"
    );
    let groups: Vec<&str> = lines.next().expect("id -G").split_whitespace().collect();
    assert!(!groups.contains(&"0"), "root's groups are dropped: {groups:?}");
    assert_eq!(
        s(&run["steps"][1], "output"),
        format!("nobody {} /tmp /step-home\n", daemon.name),
        "named group, step's cwd and env win"
    );

    let run = run_once(&c, "web01", json!({"name": "as-ghost", "steps": [{"command": "true", "user": "no-such-user-muster"}]}));
    assert_eq!(s(&run, "outcome"), "failed", "{run}");
    let message = s(&run["steps"][0], "message");
    assert_eq!(message, "cannot run as user 'no-such-user-muster': no such user on this host", "{run}");
    assert!(s(&run, "message").contains(message), "the run's message says why: {run}");

    let run = run_once(
        &c,
        "web01",
        json!({"name": "as-nogroup", "steps": [{"command": "true", "user": "nobody", "group": "no-such-group-muster"}]}),
    );
    assert_eq!(s(&run["steps"][0], "message"), "cannot run as group 'no-such-group-muster': no such group on this host", "{run}");
    assert!(c.target("web01").is_running(), "refusals do not end the agent");
}

#[test]
fn an_agent_that_is_not_root_refuses_run_as() {
    if !root_or_skip("an_agent_that_is_not_root_refuses_run_as") {
        return;
    }
    require_on_path("setpriv").expect("setpriv (util-linux) starts the agent as nobody");
    let nobody = User::from_name("nobody").expect("passwd").expect("this host has a 'nobody' user");
    let mut c = Cluster::with_master();
    // The unprivileged agent must reach its own state directory.
    std::fs::set_permissions(c.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let state = c.state_dir("web02");
    std::fs::create_dir(&state).expect("state dir");
    std::os::unix::fs::chown(&state, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).expect("chown");
    let url = c.url();
    let (uid, gid) = (format!("--reuid={}", nobody.uid), format!("--regid={}", nobody.gid));
    c.start_target_wrapped("web02", 60, &url, &[], &["setpriv", &uid, &gid, "--clear-groups", "--"]);
    c.wait_target_online("web02");

    let run = run_once(&c, "web02", json!({"name": "plain", "steps": [{"command": "id -u"}]}));
    assert_eq!(s(&run["steps"][0], "output"), format!("{}\n", nobody.uid), "the agent runs as nobody: {run}");

    let run = run_once(&c, "web02", json!({"name": "as-root", "steps": [{"command": "id -un", "user": "root"}]}));
    assert_eq!(s(&run, "outcome"), "failed", "{run}");
    assert_eq!(
        s(&run["steps"][0], "message"),
        format!("cannot run as user 'root': the agent is not running as root (uid {})", nobody.uid),
        "{run}"
    );
    assert_eq!(s(&run["steps"][0], "output"), "", "nothing ran: {run}");
    assert!(c.target("web02").is_running(), "the refusal does not end the agent");
}
