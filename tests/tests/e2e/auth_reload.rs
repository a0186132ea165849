//! Adding a target to a running installation with accounts, as the README
//! says: run `musterctl auth nats-config` again with the new name (the
//! others keep their passwords), reload nats-server twice — nats-server
//! 2.15.1 wires a new account's imports to the Muster account only at the
//! second reload — and start the new agent. The targets already there carry
//! on through both reloads.

use std::path::Path;
use std::process::Command;

use muster_tests::{bin, Cluster};

use crate::security::credentials;

fn write_users(dir: &Path, targets: &[&str]) -> String {
    let made = Command::new(bin("musterctl"))
        .args(["auth", "nats-config"])
        .args(targets)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("musterctl auth");
    assert!(made.status.success(), "{made:?}");
    std::fs::read_to_string(dir.join("auth.conf")).expect("auth.conf")
}

#[test]
fn a_target_added_with_two_reloads_joins_and_the_others_carry_on() {
    let keys = tempfile::tempdir().expect("tempdir");
    let mut c = Cluster::new_with(&write_users(keys.path(), &["web01"]));
    c.env = crate::security::env_of(keys.path(), "muster-master");
    c.start_master();
    c.env = crate::security::env_of(keys.path(), "muster-admin");
    let (user, password) = credentials(keys.path(), "web01");
    c.start_target_with("web01", 3600, &["--user", &user, "--password", &password]);
    c.wait_target_online("web01");

    let auth = write_users(keys.path(), &["web02"]);
    assert_eq!(credentials(keys.path(), "web01"), (user, password), "web01 keeps its password");
    c.nats.reload_with(&auth);
    c.nats.reload_with(&auth);
    let (user2, password2) = credentials(keys.path(), "web02");
    c.start_target_with("web02", 3600, &["--user", &user2, "--password", &password2]);
    c.wait_target_online("web02");
    c.wait_target_online("web01");

    // The whole loop for the new target, under its own account.
    c.ctl(&["job", "create", "hello", "--command", "echo hi from $MUSTER_TARGET"]).expect("create");
    c.ctl(&["job", "assign", "hello", "--target", "web01", "--target", "web02"]).expect("assign");
    let polled = c.ctl(&["target", "force-poll", "web01", "web02"]).expect("force-poll");
    let held: Vec<u64> = polled.as_array().unwrap().iter().map(|r| r["report"]["jobs"].as_u64().unwrap_or(0)).collect();
    assert_eq!(held, [1, 1], "{polled}");
    c.ctl(&["job", "start", "hello"]).expect("start");
    let runs = crate::core_loop::finished_runs(&c, "hello", 2);
    assert!(runs.iter().all(|r| muster_tests::s(r, "outcome") == "succeeded"), "{runs:?}");
    let agents = c.logs();
    assert!(!agents.contains("Violation"), "an agent was refused something: {agents}");
}
