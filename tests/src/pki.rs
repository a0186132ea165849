//! Certificates for the TLS tests, made in the test with `rcgen`: a CA, and
//! server and client certificates it signs, as PEM files in a directory,
//! plus the nats-server `tls` block that uses them. Each test makes its own,
//! so a wrong CA is simply another test's CA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority whose certificate is `dir/<name>.pem`.
#[derive(Debug)]
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    dir: PathBuf,
    /// Its certificate (what `--tls-ca` takes).
    pub cert: PathBuf,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday to next year.
    Current,
    /// Ended yesterday.
    Expired,
}

impl Ca {
    /// A new CA; its certificate goes to `dir/<name>.pem`.
    ///
    /// # Panics
    /// When a key cannot be made or a file written.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = named(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, Validity::Current);
        let key = KeyPair::generate().expect("CA key");
        let cert = dir.join(format!("{name}.pem"));
        std::fs::write(&cert, params.self_signed(&key).expect("self-signed CA").pem()).expect("CA file");
        Ca { params, key, dir: dir.to_owned(), cert }
    }

    /// A server certificate for `hosts` (names or IP addresses).
    ///
    /// # Panics
    /// When a key cannot be made or a file written.
    pub fn server(&self, name: &str, hosts: &[&str], validity: Validity) -> Pair {
        let mut params = CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()).expect("host names");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(name, params, validity)
    }

    /// A client certificate (for mTLS) named `name`.
    ///
    /// # Panics
    /// When a key cannot be made or a file written.
    pub fn client(&self, name: &str) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(name, params, Validity::Current)
    }

    fn sign(&self, name: &str, mut params: CertificateParams, validity: Validity) -> Pair {
        params.distinguished_name = named(name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        set_validity(&mut params, validity);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &Issuer::from_params(&self.params, &self.key)).expect("signing");
        let pair = Pair { cert: self.dir.join(format!("{name}.pem")), key: self.dir.join(format!("{name}-key.pem")) };
        std::fs::write(&pair.cert, cert.pem()).expect("certificate file");
        // Private, as every binary requires of a key (nats-server reads it as the same user).
        muster_runtime::fsutil::write_private(&pair.key, key.serialize_pem().as_bytes()).expect("key file");
        pair
    }
}

fn named(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    (params.not_before, params.not_after) = match validity {
        Validity::Current => (now - day, now + 365 * day),
        Validity::Expired => (now - 30 * day, now - day),
    };
}

/// The nats-server `tls` block serving `server`; with `clients_of`, client
/// certificates signed by that CA are required (mTLS, `verify: true`).
pub fn server_tls(server: &Pair, clients_of: Option<&Ca>) -> String {
    let verify = clients_of.map_or(String::new(), |ca| format!("  ca_file: \"{}\"\n  verify: true\n", ca.cert.display()));
    format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n{verify}  timeout: 2\n}}\n",
        server.cert.display(),
        server.key.display()
    )
}
