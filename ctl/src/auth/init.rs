//! `musterctl auth init`: what an installation without its own PKI needs to
//! run over TLS with its users: a CA, a server certificate for the given
//! host names, the users of `auth nats-config`, and a complete nats-server
//! configuration that uses them.
//!
//! Certificates are made by `rcgen` (on the ring backend async-nats already
//! links), never by hand-written ASN.1. The CA's key is kept in
//! `ca-key.pem` (0600) so that running the command again (another host
//! name, a renewal) signs a new server certificate with the same CA: every
//! process that trusts `ca.pem` keeps trusting the server. The users' nkeys
//! are kept too ([`super::write_config`]).
//!
//! nats-server reads `cert_file`, `key_file` and `store_dir` from its
//! working directory, not from the configuration file's, so those paths
//! are absolute (the directory as it is now): after moving the directory,
//! run the command again there. `include` is relative to the including
//! file, so `nats-server.conf` includes `tls.conf` and `auth.conf` by name.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use muster_shared::name::TargetName;
use muster_shared::subject::Subjects;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The CA certificate every process is given (`NATS_CA`).
pub const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const SERVER_CERT_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server-key.pem";
const TLS_CONFIG_FILE: &str = "tls.conf";
/// The complete server configuration: `nats-server -c DIR/nats-server.conf`.
pub const SERVER_CONFIG_FILE: &str = "nats-server.conf";

/// Host names in the server certificate when none is given.
pub const DEFAULT_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// What [`init`] wrote.
#[derive(Debug, Clone)]
pub struct Initialized {
    pub server_config: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    /// The host names (and addresses) the server certificate is valid for.
    pub hosts: Vec<String>,
    /// Each identity's environment file: `master`, `admin`, `viewer`, then
    /// targets.
    pub env_files: Vec<(String, PathBuf)>,
}

/// Writes (or renews) the CA, the server certificate for `hosts`, the
/// users of `targets` and the nats-server configuration in `dir`.
///
/// # Errors
/// A host name a certificate cannot hold, a file that cannot be read or
/// written, a CA key that does not parse.
pub fn init(dir: &Path, subjects: &Subjects, hosts: &[String], targets: &[TargetName]) -> anyhow::Result<Initialized> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let hosts: Vec<String> =
        if hosts.is_empty() { DEFAULT_HOSTS.iter().map(|h| (*h).to_owned()).collect() } else { hosts.to_vec() };

    let (ca_params, ca_key) = load_or_make_ca(&dir)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(hosts.clone()).context("a --host that a certificate cannot name")?;
    params.distinguished_name = common_name("Muster NATS server");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    valid_for(&mut params, 825);
    let key = KeyPair::generate().context("making the server's key")?;
    let cert = params.signed_by(&key, &issuer).context("signing the server's certificate")?;
    write_private(&dir.join(SERVER_KEY_FILE), &key.serialize_pem())?;
    write_public(&dir.join(SERVER_CERT_FILE), &cert.pem())?;

    let q = |name: &str| format!("\"{}\"", dir.join(name).display());
    write_public(
        &dir.join(TLS_CONFIG_FILE),
        &format!(
            "# Written by `musterctl auth init`: every client connection is TLS.\n\
             tls {{\n  cert_file: {}\n  key_file: {}\n  timeout: 2\n}}\n",
            q(SERVER_CERT_FILE),
            q(SERVER_KEY_FILE)
        ),
    )?;
    let server_config = dir.join(SERVER_CONFIG_FILE);
    write_public(
        &server_config,
        &format!(
            "# Written by `musterctl auth init`: nats-server -c {}\n\
             # TLS for every client, the users of auth.conf, JetStream; monitoring\n\
             # on loopback only. Paths are absolute: nats-server reads them from its\n\
             # working directory.\n\
             listen: 0.0.0.0:4222\n\
             http: 127.0.0.1:8222\n\
             jetstream {{\n  store_dir: {}\n}}\n\
             include \"{TLS_CONFIG_FILE}\"\n\
             include \"{}\"\n",
            server_config.display(),
            q("jetstream"),
            super::CONFIG_FILE
        ),
    )?;

    // The users, whose files now also name the CA (`write_config` adds
    // `NATS_CA` whenever `ca.pem` is in the directory).
    let written = super::write_config(&dir, subjects, targets)?;
    let mut env_files = Vec::new();
    let roles = [("master", super::MASTER_USER), ("admin", super::ADMIN_USER), ("viewer", super::VIEWER_USER)];
    for (identity, user) in roles {
        let link = dir.join(format!("{identity}.env"));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("{user}.env"), &link).with_context(|| format!("linking {}", link.display()))?;
        env_files.push((identity.to_owned(), link));
    }
    env_files.extend(written.users.into_iter().filter(|(u, _)| !roles.iter().any(|(_, user)| user == u)));
    Ok(Initialized { server_config, ca: dir.join(CA_FILE), server_cert: dir.join(SERVER_CERT_FILE), hosts, env_files })
}

/// The CA of `dir`: its key from `ca-key.pem`, or a new CA written there
/// and to `ca.pem`. Signing needs only the CA's name and key, so the
/// parameters are made again the same way rather than parsed back.
fn load_or_make_ca(dir: &Path) -> anyhow::Result<(CertificateParams, KeyPair)> {
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params.distinguished_name = common_name("Muster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    valid_for(&mut params, 3650);
    let key_path = dir.join(CA_KEY_FILE);
    match fs::read_to_string(&key_path) {
        Ok(pem) => {
            let key = KeyPair::from_pem(&pem).with_context(|| format!("reading the CA key {}", key_path.display()))?;
            if !dir.join(CA_FILE).exists() {
                // The same name and key: whoever trusted the old file trusts this one.
                write_public(&dir.join(CA_FILE), &params.self_signed(&key).context("making the CA certificate")?.pem())?;
            }
            Ok((params, key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate().context("making the CA's key")?;
            let cert = params.self_signed(&key).context("making the CA certificate")?;
            write_private(&key_path, &key.serialize_pem())?;
            write_public(&dir.join(CA_FILE), &cert.pem())?;
            Ok((params, key))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", key_path.display())),
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// Valid from an hour ago (clocks differ a little) for `days`.
fn valid_for(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    muster_runtime::fsutil::write_private(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    muster_runtime::fsutil::write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_run_keeps_the_ca_and_keys_and_a_new_target_names_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        let s = Subjects::default();
        let web01 = TargetName::new("web01").unwrap();
        let first = init(&dir, &s, &[], std::slice::from_ref(&web01)).unwrap();
        assert_eq!(first.hosts, DEFAULT_HOSTS);
        let identities: Vec<&str> = first.env_files.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(identities, ["master", "admin", "viewer", "web01"]);
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        let (ca, ca_key, web01_env, server) = (read(CA_FILE), read(CA_KEY_FILE), read("web01.env"), read(SERVER_CERT_FILE));
        let ca_line = format!("NATS_CA={}", dir.canonicalize().unwrap().join(CA_FILE).display());
        assert!(read("admin.env").lines().any(|l| l == ca_line), "{}", read("admin.env"));
        assert!(
            read("viewer.env").lines().any(|l| l.starts_with("NATS_NKEY=") && l.ends_with("muster-viewer.nk")),
            "{}",
            read("viewer.env")
        );

        let again = init(&dir, &s, &["nats.example.com".to_owned()], &[]).unwrap();
        assert_eq!(again.hosts, ["nats.example.com"]);
        assert_eq!((read(CA_FILE), read(CA_KEY_FILE), read("web01.env")), (ca, ca_key, web01_env.clone()));
        assert_ne!(read(SERVER_CERT_FILE), server, "a new server certificate, for the new host");

        // `auth add-target` (and `nats-config`) in an init'd directory.
        super::super::write_config(&dir, &s, &[TargetName::new("web02").unwrap()]).unwrap();
        assert!(read("web02.env").lines().any(|l| l == ca_line), "{}", read("web02.env"));
        assert_eq!(read("web01.env"), web01_env);

        let err = init(&dir, &s, &[], &[TargetName::new("admin").unwrap()]).unwrap_err();
        assert!(err.to_string().contains("Muster's own NATS users"), "{err}");
    }
}
