//! Every binary refuses a private key file that group or others can read:
//! a NATS nkey seed (`--nkey`), a credentials file (`--creds`) and a TLS
//! client key (`--tls-key`). Each exits 4 at once, before any connection,
//! with a message that names the file, says why and gives the `chmod`; the
//! same file at mode 0600 is taken (by a real nats-server that knows the
//! key), so the refusal is the mode and nothing else. The master's web
//! console refuses its users file and TLS key the same way.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use muster_tests::pki::{server_tls, Ca, Validity};
use muster_tests::{bin, Cluster};

use crate::security::env_of;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs `binary` with `args` and `env` (and NATS_URL), for what it says.
fn run(binary: &str, url: &str, env: &[(String, String)], args: &[&str], state: &Path) -> Output {
    let mut cmd = Command::new(bin(binary));
    cmd.env("NATS_URL", url).envs(env.iter().cloned());
    match binary {
        "musterctl" => cmd.args(["target", "list"]),
        "muster-target" => cmd.args(["--name", "web01", "--state-dir"]).arg(state),
        _ => &mut cmd,
    };
    cmd.args(args).stdin(std::process::Stdio::null());
    // A daemon that connected would run on: it gets 10 s, then is killed.
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().expect("output")));
    rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let out = rx.recv().expect("output after the kill");
        panic!("{binary} still ran after 10 s: {}", String::from_utf8_lossy(&out.stderr))
    })
}

fn assert_refused(binary: &str, out: &Output, path: &Path) {
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{binary} exits 4 (invalid): {said}");
    assert!(said.contains(&format!("chmod 600 {}", path.display())), "{binary} gives the chmod: {said}");
    assert!(said.contains("mode 0644") && said.contains("open to other users"), "{binary} says why: {said}");
}

#[test]
fn a_seed_others_can_read_is_refused_by_every_binary() {
    let keys = tempfile::tempdir().expect("tempdir");
    let made = Command::new(bin("musterctl"))
        .args(["auth", "nats-config", "web01", "--dir"])
        .arg(keys.path())
        .output()
        .expect("musterctl auth");
    assert!(made.status.success(), "{made:?}");
    let mut c = Cluster::new_with(&std::fs::read_to_string(keys.path().join("auth.conf")).expect("auth.conf"));
    let url = c.url();
    let state = tempfile::tempdir().expect("state");
    for (binary, user) in [("musterctl", "muster-admin"), ("muster-master", "muster-master"), ("muster-target", "web01")] {
        let env = env_of(keys.path(), user);
        let seed = keys.path().canonicalize().unwrap().join(format!("{user}.nk"));
        chmod(&seed, 0o644);
        let out = run(binary, &url, &env, &[], state.path());
        assert_refused(binary, &out, &seed);
        chmod(&seed, 0o600);
    }
    let log = c.nats.log_text();
    assert!(!log.contains("Client connection created"), "no binary connected with an exposed seed:\n{log}");

    // The same files at 0600: the master and target run, musterctl lists.
    c.env = env_of(keys.path(), "muster-master");
    c.start_master();
    c.env = env_of(keys.path(), "muster-admin");
    let flag = format!("--nkey={}", keys.path().join("web01.nk").display());
    c.start_target_with("web01", 3600, &[&flag]);
    c.wait_target_online("web01");
}

#[test]
fn a_credentials_file_or_tls_key_others_can_read_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.server("server", &["127.0.0.1"], Validity::Current);
    let c = Cluster::new_with(&server_tls(&server, Some(&ca)));
    let url = format!("tls://127.0.0.1:{}", c.nats.port);
    let client = ca.client("client");
    let creds = dir.path().join("user.creds");
    std::fs::write(&creds, "not read: refused before\n").expect("creds");
    chmod(&creds, 0o644);
    chmod(&client.key, 0o644);
    let state = tempfile::tempdir().expect("state");
    let tls = |key: &Path| {
        vec![
            ("NATS_CA".to_owned(), ca.cert.display().to_string()),
            ("NATS_CERT".to_owned(), client.cert.display().to_string()),
            ("NATS_KEY".to_owned(), key.display().to_string()),
        ]
    };
    for binary in ["musterctl", "muster-master", "muster-target"] {
        let creds_flag = format!("--creds={}", creds.display());
        assert_refused(binary, &run(binary, &url, &[], &[&creds_flag], state.path()), &creds);
        assert_refused(binary, &run(binary, &url, &tls(&client.key), &[], state.path()), &client.key);
    }
    // At 0600 the key is taken: musterctl gets through TLS (mTLS) to the
    // server, and fails only for want of a master (exit 6, not 4).
    chmod(&client.key, 0o600);
    let out = run("musterctl", &url, &tls(&client.key), &["--api-timeout=1"], state.path());
    assert_ne!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_consoles_users_file_or_tls_key_others_can_read_stops_the_master() {
    let dir = tempfile::tempdir().expect("tempdir");
    let made = Command::new(bin("musterctl"))
        .args(["auth", "console-user", "alice", "--role", "admin", "--dir"])
        .arg(dir.path())
        .output()
        .expect("musterctl auth console-user");
    assert!(made.status.success(), "{made:?}");
    let users = dir.path().join("console-users.json");
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.server("console", &["127.0.0.1"], Validity::Current);
    let c = Cluster::new();
    let state = tempfile::tempdir().expect("state");
    let console = |users: &Path, tls: bool| {
        let mut args = vec!["--http=127.0.0.1:0".to_owned(), format!("--http-users={}", users.display())];
        if tls {
            args.push(format!("--http-tls-cert={}", server.cert.display()));
            args.push(format!("--http-tls-key={}", server.key.display()));
        }
        args
    };
    let master = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("muster-master", &c.url(), &[], &args, state.path())
    };
    chmod(&users, 0o644);
    assert_refused("muster-master", &master(console(&users, false)), &users);
    chmod(&users, 0o600);
    chmod(&server.key, 0o644);
    assert_refused("muster-master", &master(console(&users, true)), &server.key);
    // --http without users: refused too, there is no open console.
    let out = master(vec!["--http=127.0.0.1:0".to_owned()]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{said}");
    assert!(said.contains("--http needs --http-users"), "{said}");
    let log = c.nats.log_text();
    assert!(!log.contains("Client connection created"), "the master stopped before connecting:\n{log}");
}
