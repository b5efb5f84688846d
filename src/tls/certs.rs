//! Making a cluster's certificates (`keepsake cert`): a CA, a certificate per node and one per
//! client, each naming its Keepsake identity (`identity.rs`). ECDSA P-256 keys, as rcgen makes
//! them.
//!
//! Invariant: nothing is ever overwritten (a CA replaced by accident would orphan every
//! certificate it signed), and private keys are written readable by their owner only.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::FromDer;

use super::identity::Identity;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

/// A certificate and key pair as files under a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    /// `<dir>/<name>.crt` and `<dir>/<name>.key`.
    pub fn named(dir: &Path, name: &str) -> Pair {
        Pair { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) }
    }
}

/// The file names of node `id`'s pair.
pub fn node_pair(dir: &Path, id: u64) -> Pair {
    Pair::named(dir, &format!("node-{id}"))
}

/// The file names of client `name`'s pair.
pub fn client_pair(dir: &Path, name: &str) -> Pair {
    Pair::named(dir, &format!("client-{name}"))
}

/// Creates a CA in `dir` (`ca.crt`, `ca.key`), valid for `days`.
pub fn create_ca(dir: &Path, name: &str, days: u32) -> Result<Pair, String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    valid_for(&mut params, days)?;
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params.self_signed(&key).map_err(|e| format!("cannot make the CA certificate: {e}"))?;
    let pair = Pair::named(dir, "ca");
    write_new(&pair, &cert.pem(), &key.serialize_pem())?;
    Ok(pair)
}

/// Creates node `id`'s certificate, signed by the CA in `dir`, for the host names and IP
/// addresses in `hosts` (what clients and peers dial). Nodes are servers and, to their peers,
/// clients.
pub fn create_node(dir: &Path, id: u64, hosts: &[String], days: u32) -> Result<Pair, String> {
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(|e| format!("bad host name: {e}"))?;
    params.distinguished_name = common_name(&format!("keepsake node {id}"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    sign(dir, params, &Identity::Node(id), &node_pair(dir, id), days)
}

/// A throwaway CA in `dir` for a cluster on this machine (a dev cluster, a benchmark's), with
/// a certificate for each of `nodes` (for 127.0.0.1 and localhost) and an operator's client
/// certificate, also as `client.crt` and `client.key` (the names the CLI looks for).
pub fn create_local(dir: &Path, name: &str, nodes: &[u64]) -> Result<Pair, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    create_ca(dir, name, 3650)?;
    let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    for id in nodes {
        create_node(dir, *id, &hosts, 3650)?;
    }
    let operator = Identity::Client { role: super::identity::Role::Operator, tenants: vec![] };
    let pair = create_client(dir, "operator", &operator, 3650)?;
    let client = Pair::named(dir, "client");
    for (from, to) in [(&pair.cert, &client.cert), (&pair.key, &client.key)] {
        std::fs::copy(from, to).map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
    }
    Ok(client)
}

/// Creates a client certificate named `name` for `identity`, signed by the CA in `dir`.
pub fn create_client(dir: &Path, name: &str, identity: &Identity, days: u32) -> Result<Pair, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("client name {name:?}: use letters, digits, '-' and '_'"));
    }
    if matches!(identity, Identity::Node(_)) {
        return Err("a client certificate names a role, not a node id".into());
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    sign(dir, params, identity, &client_pair(dir, name), days)
}

fn sign(
    dir: &Path,
    mut params: CertificateParams,
    identity: &Identity,
    pair: &Pair,
    days: u32,
) -> Result<Pair, String> {
    let (ca, ca_expires) = read_ca(dir)?;
    for uri in identity.uris() {
        let uri = uri.try_into().map_err(|e| format!("cannot name {identity}: {e}"))?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    valid_for(&mut params, days)?;
    // Never past the CA: a certificate outliving it would fail to verify on that day.
    params.not_after = params.not_after.min(ca_expires);
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params.signed_by(&key, &ca).map_err(|e| format!("cannot sign the certificate: {e}"))?;
    write_new(pair, &cert.pem(), &key.serialize_pem())?;
    Ok(pair.clone())
}

/// The CA in `dir`, and when its certificate expires.
fn read_ca(dir: &Path) -> Result<(Issuer<'static, KeyPair>, time::OffsetDateTime), String> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e} (run `keepsake cert create-ca` first)", path.display()))
    };
    let (cert_pem, key) = (read(CA_CERT)?, read(CA_KEY)?);
    let key = KeyPair::from_pem(&key).map_err(|e| format!("{CA_KEY} is not a private key: {e}"))?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("{CA_CERT} is not a certificate: {e}"))?;
    let (_, parsed) = x509_parser::prelude::X509Certificate::from_der(&der)
        .map_err(|e| format!("{CA_CERT} is not a certificate: {e}"))?;
    let expires = time::OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp())
        .map_err(|e| format!("{CA_CERT}: {e}"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| format!("{CA_CERT} is not a certificate: {e}"))?;
    Ok((issuer, expires))
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn valid_for(params: &mut CertificateParams, days: u32) -> Result<(), String> {
    if days == 0 {
        return Err("--days must be at least 1".into());
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

/// Writes the certificate and the key (mode 0600), refusing to replace either. Each is written
/// under a temporary name first, so a failure leaves neither half of a pair behind.
fn write_new(pair: &Pair, cert_pem: &str, key_pem: &str) -> Result<(), String> {
    for path in [&pair.cert, &pair.key] {
        if path.exists() {
            return Err(format!("{} exists: Keepsake never replaces a certificate or key", path.display()));
        }
    }
    let write = |path: &Path, text: &str, mode: u32| -> Result<PathBuf, String> {
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let staged = path.with_file_name(format!(".{name}.partial"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&staged)
            .map_err(|e| format!("cannot create {}: {e}", staged.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", staged.display()))?;
        Ok(staged)
    };
    let (key, cert) = (write(&pair.key, key_pem, 0o600)?, write(&pair.cert, cert_pem, 0o644)?);
    std::fs::rename(&key, &pair.key).map_err(|e| format!("cannot write {}: {e}", pair.key.display()))?;
    std::fs::rename(&cert, &pair.cert).map_err(|e| format!("cannot write {}: {e}", pair.cert.display()))
}

#[cfg(test)]
mod tests {
    use super::super::identity::Role;
    use super::*;

    fn der(pem_path: &Path) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(pem_path).unwrap().to_vec()
    }

    #[test]
    fn a_ca_signs_node_and_client_certificates_that_name_who_they_are() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), "test", 30).unwrap();
        let node = create_node(dir.path(), 3, &["localhost".into(), "127.0.0.1".into()], 30).unwrap();
        assert_eq!(Identity::of_certificate(&der(&node.cert)), Ok(Identity::Node(3)));
        let gateway = Identity::Client { role: Role::Gateway, tenants: vec!["acme:".into()] };
        let client = create_client(dir.path(), "gw", &gateway, 30).unwrap();
        assert_eq!(Identity::of_certificate(&der(&client.cert)), Ok(gateway.clone()));
        let mode = std::fs::metadata(&client.key).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600, "keys are the owner's only");
        let again = create_client(dir.path(), "gw", &gateway, 30).unwrap_err();
        assert!(again.contains("never replaces"), "{again}");
        assert!(create_ca(dir.path(), "test", 30).is_err(), "a CA is never replaced");
        assert!(create_client(dir.path(), "../x", &gateway, 30).is_err());
    }
}
