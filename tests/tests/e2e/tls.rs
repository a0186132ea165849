//! TLS between every binary and nats-server, with certificates made in the
//! test (`muster_tests::pki`): the whole loop over `tls://`; a wrong CA, an
//! expired certificate and a host name mismatch each refused at once with
//! the server named and exit 4; a daemon that logs a failing certificate
//! once and connects when the server's certificate is fixed; a plain-text
//! client refused by a TLS-only server, and a client asked for TLS refusing
//! a server without it; client certificates (mTLS); and the installation
//! `musterctl auth init` makes (TLS and nkeys).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::rustls::CertificateError;
use muster_runtime::nats::{connect, ConnectError, NatsOptions, TlsCause, TlsFiles, Wait};
use muster_tests::pki::{server_tls, Ca, Validity};
use muster_tests::{block_on, s, wait_for_described, Cluster};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
/// `muster_runtime::nats`'s connect timeout: a refusal must come before it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn tls_url(c: &Cluster) -> String {
    format!("tls://127.0.0.1:{}", c.nats.port)
}

fn path(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

/// A TLS-only nats-server with a certificate from `ca` for 127.0.0.1, and
/// every process of the cluster given `ca` and the `tls://` URL.
fn tls_cluster(ca: &Ca, validity: Validity) -> Cluster {
    let server = ca.server("server", &["127.0.0.1", "localhost"], validity);
    let mut c = Cluster::new_with(&server_tls(&server, None));
    c.env = vec![("NATS_URL".into(), tls_url(&c)), ("NATS_CA".into(), path(&ca.cert))];
    c
}

/// `muster_runtime::nats::connect` as musterctl calls it, for the typed error.
fn connect_once(url: &str, tls: TlsFiles) -> Result<async_nats::Client, ConnectError> {
    let opts = NatsOptions { tls, ..NatsOptions::default() }.with_servers(url);
    block_on(connect(&opts, Wait::Once))
}

fn with_ca(ca: &Path) -> TlsFiles {
    TlsFiles { ca: Some(ca.to_owned()), ..TlsFiles::default() }
}

#[test]
fn the_whole_loop_runs_over_tls() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(pki.path(), "ca");
    let mut c = tls_cluster(&ca, Validity::Current);
    c.start_master();
    c.start_target("web01", 60);
    c.wait_target_online("web01");

    c.ctl(&["job", "create", "hello", "--command", "echo hello over TLS from $MUSTER_TARGET"]).expect("create");
    c.ctl(&["job", "assign", "hello", "--target", "web01"]).expect("assign");
    let polled = c.ctl(&["target", "force-poll", "web01"]).expect("force-poll");
    assert_eq!(polled[0]["report"]["jobs"], 1, "{polled}");
    let started = c.ctl(&["job", "start", "hello"]).expect("start");
    // `job start` answers once the start is posted (force-polls follow the reply).
    assert_eq!(s(&started[0], "state"), "posted", "{started}");
    let runs: Vec<Value> =
        wait_for_described("the run in history", WAIT, || c.try_finished_runs("hello").filter(|r| !r.is_empty()), || c.logs());
    assert_eq!(s(&runs[0], "outcome"), "succeeded", "{runs:?}");
    assert_eq!(s(&runs[0]["steps"][0], "output"), "hello over TLS from web01\n");

    // Every connection the server has is TLS: it refuses any other (see
    // `a_plain_text_client_is_refused_by_a_tls_only_server`), and the
    // processes above really went through the handshake.
    let log = c.nats.log_text();
    assert!(!log.contains("TLS handshake error"), "no process failed its handshake:\n{log}");
}

#[test]
fn a_wrong_ca_is_refused_at_once_naming_the_server() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(pki.path(), "ca");
    let other = Ca::new(pki.path(), "other-ca");
    let mut c = tls_cluster(&ca, Validity::Current);
    let url = tls_url(&c);
    c.env.push(("NATS_CA".into(), path(&other.cert)));

    let began = Instant::now();
    let out = c.ctl_raw(&["target", "list"], false);
    let took = began.elapsed();
    assert_eq!(out.code, 4, "exit 4 (invalid), as the table says: {out:?}");
    assert!(out.stderr.contains(&url), "the message names the server: {out:?}");
    assert!(out.stderr.contains("not signed by a trusted CA"), "and the cause: {out:?}");
    assert!(took < CONNECT_TIMEOUT, "refused within the connect timeout, took {took:?}");

    match connect_once(&url, with_ca(&other.cert)) {
        Err(ConnectError::Tls { urls, cause: TlsCause::ServerCertificate(CertificateError::UnknownIssuer) }) => {
            assert_eq!(urls, url);
        }
        other => panic!("expected an unknown issuer, got {other:?}"),
    }
    // The right CA connects: the refusal above was the CA, nothing else.
    connect_once(&url, with_ca(&ca.cert)).expect("the right CA");
}

#[test]
fn an_expired_certificate_and_a_host_name_mismatch_are_refused() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(pki.path(), "ca");

    let expired = tls_cluster(&ca, Validity::Expired);
    let url = tls_url(&expired);
    let out = expired.ctl_raw(&["target", "list"], false);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains(&url) && out.stderr.contains("validity"), "{out:?}");
    match connect_once(&url, with_ca(&ca.cert)) {
        Err(ConnectError::Tls {
            cause: TlsCause::ServerCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }),
            ..
        }) => {}
        other => panic!("expected an expired certificate, got {other:?}"),
    }

    // A certificate for another host, served on 127.0.0.1.
    let elsewhere = ca.server("elsewhere", &["nats.example.com"], Validity::Current);
    let mut c = Cluster::new_with(&server_tls(&elsewhere, None));
    let url = tls_url(&c);
    c.env = vec![("NATS_URL".into(), url.clone()), ("NATS_CA".into(), path(&ca.cert))];
    let out = c.ctl_raw(&["target", "list"], false);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains(&url) && out.stderr.contains("does not name the host"), "{out:?}");
    match connect_once(&url, with_ca(&ca.cert)) {
        Err(ConnectError::Tls {
            cause:
                TlsCause::ServerCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }),
            ..
        }) => {}
        other => panic!("expected a host name mismatch, got {other:?}"),
    }
}

/// Lines of `log` that report a failing server certificate.
fn failures_logged(log: &str) -> usize {
    log.lines().filter(|l| l.contains("certificate does not verify")).count()
}

#[test]
fn a_daemon_logs_a_failing_certificate_once_and_connects_once_it_is_fixed() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(pki.path(), "ca");
    let new_ca = Ca::new(pki.path(), "new-ca");
    // The master and musterctl trust both CAs; the target only the new one.
    let both = pki.path().join("both.pem");
    let text = std::fs::read_to_string(&ca.cert).unwrap() + &std::fs::read_to_string(&new_ca.cert).unwrap();
    std::fs::write(&both, text).unwrap();
    let mut c = tls_cluster(&ca, Validity::Current);
    let url = tls_url(&c);
    c.env.push(("NATS_CA".into(), path(&both)));
    c.start_master();
    let target_ca = format!("--tls-ca={}", path(&new_ca.cert));
    c.start_target_with("web01", 60, &[&target_ca]);

    // It keeps trying (the server sees handshake after handshake fail) and
    // says why once, naming the server, instead of exiting or going quiet.
    wait_for_described(
        "three failed handshakes from the target",
        WAIT,
        || (c.nats.log_text().matches("TLS handshake error").count() >= 3).then_some(()),
        || c.logs(),
    );
    let log = c.target("web01").log_text();
    assert!(c.target("web01").is_running(), "a bad certificate does not end the daemon:\n{log}");
    assert_eq!(failures_logged(&log), 1, "logged once, not at every attempt:\n{log}");
    let line = log.lines().find(|l| l.contains("certificate does not verify")).unwrap();
    assert!(line.contains("127.0.0.1") && line.contains(&url) && line.contains("not signed by a trusted CA"), "{line}");

    // The cure is on the server: a certificate from the CA the target
    // trusts, and a reload. The target connects without a restart.
    let renewed = new_ca.server("renewed", &["127.0.0.1"], Validity::Current);
    c.nats.reload_with(&server_tls(&renewed, None));
    c.wait_target_online("web01");
    let log = c.target("web01").log_text();
    assert!(log.contains("certificate verifies"), "the recovery is logged too:\n{log}");
    assert_eq!(failures_logged(&log), 1, "{log}");
}

#[test]
fn a_plain_text_client_is_refused_by_a_tls_only_server() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(pki.path(), "ca");
    let mut c = tls_cluster(&ca, Validity::Current);

    // A client that speaks the NATS protocol in clear, as `telnet` would.
    let mut socket = TcpStream::connect(("127.0.0.1", c.nats.port)).expect("tcp");
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(socket.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).expect("INFO");
    let info: Value = serde_json::from_str(info.trim_end().strip_prefix("INFO ").expect("INFO line")).expect("INFO JSON");
    assert_eq!(info["tls_required"], true, "{info}");
    socket.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\nSUB > 1\r\nPING\r\n").expect("write");
    let mut rest = Vec::new();
    // Ends when the server closes the connection (a reset is a close too).
    let _ = reader.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("PONG"), "the server must not talk in clear: {rest}");

    // Nor does musterctl speak in clear to a server that asks for TLS:
    // with no CA it trusts the system's, which did not sign this server.
    c.env = vec![("NATS_URL".to_owned(), c.nats.url())];
    let out = c.ctl_raw(&["target", "list"], false);
    assert_eq!(out.code, 4, "{out:?}");
}

#[test]
fn a_server_that_requires_client_certificates_accepts_them_and_refuses_a_client_without() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(pki.path(), "ca");
    let server = ca.server("server", &["127.0.0.1"], Validity::Current);
    let mut c = Cluster::new_with(&server_tls(&server, Some(&ca)));
    let url = tls_url(&c);
    let client = ca.client("muster-client");
    c.env = vec![
        ("NATS_URL".into(), url.clone()),
        ("NATS_CA".into(), path(&ca.cert)),
        ("NATS_CERT".into(), path(&client.cert)),
        ("NATS_KEY".into(), path(&client.key)),
    ];
    c.start_master();
    c.start_target("web01", 60);
    c.wait_target_online("web01");
    let targets: Vec<Value> = c.ctl_ok(&["target", "list"]);
    assert_eq!(targets.len(), 1, "{targets:?}");

    let mut without: Vec<(String, String)> = c.env.clone();
    without.retain(|(k, _)| k != "NATS_CERT" && k != "NATS_KEY");
    let began = Instant::now();
    let out = run_ctl(&without, &["target", "list"]);
    assert_eq!(out.0, 4, "{out:?}");
    assert!(out.1.contains(&url) && out.1.contains("--tls-cert"), "{out:?}");
    assert!(began.elapsed() < CONNECT_TIMEOUT, "{:?}", began.elapsed());
    match connect_once(&url, with_ca(&ca.cert)) {
        Err(ConnectError::Tls { cause: TlsCause::RefusedByServer(_), .. }) => {}
        other => panic!("expected a refusal by the server, got {other:?}"),
    }
    // A certificate from another CA is refused the same way.
    let stranger = Ca::new(pki.path(), "stranger").client("stranger");
    let tls = TlsFiles { ca: Some(ca.cert.clone()), cert: Some(stranger.cert), key: Some(stranger.key) };
    assert!(matches!(connect_once(&url, tls), Err(ConnectError::Tls { cause: TlsCause::RefusedByServer(_), .. })));
}

/// musterctl with exactly `env` for NATS: (exit code, stderr).
fn run_ctl(env: &[(String, String)], args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(muster_tests::bin("musterctl"))
        .env_remove("NATS_CERT")
        .env_remove("NATS_KEY")
        .envs(env.iter().cloned())
        .args(args)
        .output()
        .expect("musterctl");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_client_asked_for_tls_never_falls_back_to_clear_text() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new(pki.path(), "ca");
    let mut c = Cluster::new(); // no TLS on the server
    let plain = c.nats.url();
    for (url, ca_var) in [(plain.clone(), Some(path(&ca.cert))), (tls_url(&c), None)] {
        c.env = vec![("NATS_URL".into(), url.clone())];
        c.env.extend(ca_var.map(|v| ("NATS_CA".to_owned(), v)));
        let out = c.ctl_raw(&["target", "list"], false);
        assert_eq!(out.code, 4, "{out:?}");
        assert!(out.stderr.contains(&url) && out.stderr.contains("does not speak TLS"), "{out:?}");
    }
    assert!(matches!(connect_once(&plain, with_ca(&ca.cert)), Err(ConnectError::Tls { cause: TlsCause::NotOffered, .. })));
}

/// The variables of one of `auth init`'s environment files, checking that
/// it holds only `NAME=value` lines.
fn env_file(dir: &Path, identity: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir.join(format!("{identity}.env"))).expect("env file");
    text.lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not NAME=value: {l:?}"));
            assert!(!k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{l:?}");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn auth_init_makes_an_installation_that_runs_over_tls_with_its_users() {
    use std::os::unix::fs::PermissionsExt as _;
    let keys = tempfile::tempdir().expect("tempdir");
    let dir = keys.path().join("muster");
    let made = std::process::Command::new(muster_tests::bin("musterctl"))
        .args(["auth", "init", "web01", "--host", "127.0.0.1", "--dir"])
        .arg(&dir)
        .output()
        .expect("musterctl auth init");
    assert!(made.status.success(), "{made:?}");
    for key in [
        "ca-key.pem",
        "server-key.pem",
        "master.env",
        "admin.env",
        "viewer.env",
        "web01.env",
        "muster-master.nk",
        "muster-viewer.nk",
        "web01.nk",
        "auth.conf",
    ] {
        let mode = std::fs::metadata(dir.join(key)).expect(key).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key} is private");
    }
    // The whole configuration is valid as it is.
    let check = std::process::Command::new("nats-server")
        .arg("-c")
        .arg(dir.join("nats-server.conf"))
        .arg("-t")
        .output()
        .expect("nats-server -t");
    assert!(check.status.success(), "{check:?}");

    // The harness picks the port and store; TLS and users are init's, as
    // nats-server.conf includes them (`include` takes only paths relative
    // to the including file, so their text goes in instead).
    let included = |f: &str| std::fs::read_to_string(dir.join(f)).expect(f);
    let mut c = Cluster::new_with(&(included("tls.conf") + &included("auth.conf")));
    let url = ("NATS_URL".to_owned(), tls_url(&c));
    c.env = env_file(&dir, "master");
    c.env.push(url.clone());
    c.start_master();
    c.env = env_file(&dir, "web01");
    c.env.push(url.clone());
    c.start_target("web01", 60);
    c.env = env_file(&dir, "admin");
    c.env.push(url);
    assert!(c.env.iter().any(|(k, _)| k == "NATS_CA"), "the file names the CA: {:?}", c.env);
    assert!(c.env.iter().any(|(k, _)| k == "NATS_NKEY"), "and the seed: {:?}", c.env);
    assert!(!included("auth.conf").contains("password"), "the server holds only public keys");
    c.wait_target_online("web01");

    c.ctl(&["job", "create", "hello", "--command", "echo hello"]).expect("create");
    c.ctl(&["job", "assign", "hello", "--target", "web01"]).expect("assign");
    c.ctl(&["target", "force-poll", "web01"]).expect("force-poll");
    c.ctl(&["job", "start", "hello"]).expect("start");
    let runs: Vec<Value> =
        wait_for_described("the run in history", WAIT, || c.try_finished_runs("hello").filter(|r| !r.is_empty()), || c.logs());
    assert_eq!(s(&runs[0], "outcome"), "succeeded", "{runs:?}");

    // The CA alone is not enough: the server wants a user.
    let anonymous = vec![("NATS_URL".to_owned(), tls_url(&c)), ("NATS_CA".to_owned(), path(&dir.join("ca.pem")))];
    let (code, said) = run_ctl(&anonymous, &["target", "list"]);
    assert_ne!(code, 0, "{said}");
}
