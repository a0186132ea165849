//! Adding and revoking a target in a running installation with accounts
//! and nkeys, as the README says.
//!
//! Adding: run `musterctl auth nats-config` again with the new name (the
//! others keep their keys), reload nats-server twice — nats-server 2.15.1
//! wires a new account's imports to the Muster account only at the second
//! reload — and start the new agent. The targets already there carry on
//! through both reloads.
//!
//! Revoking: `musterctl auth remove-target NAME` and one reload: the server
//! closes the target's connection and refuses its key from then on, while
//! the other targets carry on.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use muster_tests::{bin, block_on, wait_for_described, Cluster};

use crate::security::{env_of, nkey_flag, seed_of};

fn auth(dir: &Path, args: &[&str]) -> String {
    let made = Command::new(bin("musterctl")).arg("auth").args(args).arg("--dir").arg(dir).output().expect("musterctl auth");
    assert!(made.status.success(), "{made:?}");
    std::fs::read_to_string(dir.join("auth.conf")).expect("auth.conf")
}

fn write_users(dir: &Path, targets: &[&str]) -> String {
    let mut args = vec!["nats-config"];
    args.extend(targets);
    auth(dir, &args)
}

/// Starts the master and `targets` under the users of `keys`, and waits
/// until every target answers.
fn installation(keys: &Path, targets: &[&str]) -> Cluster {
    let mut c = Cluster::new_with(&write_users(keys, targets));
    c.env = env_of(keys, "muster-master");
    c.start_master();
    c.env = env_of(keys, "muster-admin");
    for t in targets {
        c.start_target_with(t, 3600, &[&nkey_flag(keys, t)]);
    }
    for t in targets {
        c.wait_target_online(t);
    }
    c
}

#[test]
fn a_target_added_with_two_reloads_joins_and_the_others_carry_on() {
    let keys = tempfile::tempdir().expect("tempdir");
    let mut c = installation(keys.path(), &["web01"]);
    let seed = seed_of(keys.path(), "web01");

    let auth = write_users(keys.path(), &["web02"]);
    assert_eq!(seed_of(keys.path(), "web01"), seed, "web01 keeps its key");
    c.nats.reload_with(&auth);
    c.nats.reload_with(&auth);
    c.start_target_with("web02", 3600, &[&nkey_flag(keys.path(), "web02")]);
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

/// Whether the server takes `seed`: `Ok` when a connection is made, the
/// error otherwise.
fn connects_with(url: &str, seed: &str) -> Result<(), async_nats::ConnectError> {
    let (url, seed) = (url.to_owned(), seed.to_owned());
    block_on(async move {
        async_nats::ConnectOptions::with_nkey(seed).connection_timeout(Duration::from_secs(5)).connect(url).await.map(drop)
    })
}

#[test]
fn a_removed_target_is_refused_after_one_reload_and_the_others_carry_on() {
    let keys = tempfile::tempdir().expect("tempdir");
    let mut c = installation(keys.path(), &["web01", "web02"]);
    c.ctl(&["job", "create", "hello", "--command", "echo hi from $MUSTER_TARGET"]).expect("create");
    c.ctl(&["job", "assign", "hello", "--target", "web01", "--target", "web02"]).expect("assign");
    let web01 = seed_of(keys.path(), "web01");
    let url = c.url();
    connects_with(&url, &web01).expect("web01's key is taken before the removal");

    let auth = auth(keys.path(), &["remove-target", "web01"]);
    assert!(!auth.contains("web01"), "web01 is out of the configuration:\n{auth}");
    assert!(!keys.path().join("web01.env").exists() && !keys.path().join("web01.nk").exists(), "its files are gone");
    c.nats.reload_with(&auth);

    // Its key is refused, as an authorization failure, not a lost server.
    match connects_with(&url, &web01) {
        Err(e) => assert_eq!(e.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{e}"),
        Ok(()) => panic!("web01's key still connects after the reload"),
    }
    // Its running agent was cut off: nothing answers on its control subject.
    let refused = wait_for_described(
        "web01 to stop answering force-poll",
        Duration::from_secs(30),
        || c.ctl(&["target", "force-poll", "web01"]).err(),
        || c.logs() + &c.nats.log_text(),
    );
    assert_eq!(refused.code, 5, "offline (exit 5): {refused:?}");

    // web02 carries on: the loop, after one reload, with no restart.
    let polled = c.ctl(&["target", "force-poll", "web02"]).expect("web02 still answers");
    assert_eq!(polled[0]["report"]["jobs"], 1, "{polled}");
    c.ctl(&["job", "start", "hello", "--target", "web02"]).expect("start on web02");
    let runs = crate::core_loop::finished_runs(&c, "hello", 1);
    assert!(
        runs.iter().all(|r| muster_tests::s(r, "target") == "web02" && muster_tests::s(r, "outcome") == "succeeded"),
        "{runs:?}"
    );
    let web02_log = c.target("web02").log_text();
    assert!(!web02_log.contains("Violation") && !web02_log.contains("disconnected"), "web02 was not disturbed: {web02_log}");
}
