//! A node's TLS material as one checked unit: the CA, its certificate chain and its key, read
//! together (each file once), parsed, and checked to make a working pair that names this node.
//! A background task looks at the files every second, off the async workers, and publishes a
//! new generation when they change and check out; servers and peer clients rebuild their
//! configurations from it.
//!
//! Invariant: only material that checked out is ever published; files that do not are retried
//! every second (a rotation caught half-written settles), and said once per distinct problem.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use super::identity::Identity;
use crate::files::{file_stamp, FileStamp};

/// How often the files are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Where a node's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster's CA: peers' and clients' certificates must chain to it.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The CA's certificates, for a verifier.
    pub fn roots(&self) -> Result<RootCertStore, String> {
        let pem = std::fs::read(&self.ca).map_err(|e| format!("cannot read {}: {e}", self.ca.display()))?;
        roots(&pem, &self.ca)
    }
}

/// The certificates in a PEM file's bytes (`path` names it in errors); at least one.
fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(certs)
}

/// A CA file's bytes as verifier roots.
fn roots(pem: &[u8], path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for ca in parse_certs(pem, path)? {
        roots.add(ca).map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// One checked generation of a node's CA, certificate chain and key.
pub struct Material {
    /// 0 for what the node started with, one more for each change adopted.
    pub generation: u64,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub roots: Arc<RootCertStore>,
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Material {
    /// Reads and checks the files: a CA, a chain whose key is the key, naming node `node_id`.
    pub fn read(files: &TlsFiles, node_id: u64) -> Result<Material, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let (ca_pem, cert_pem, key_pem) = (read(&files.ca)?, read(&files.cert)?, read(&files.key)?);
        let roots = roots(&ca_pem, &files.ca)?;
        let certs = parse_certs(&cert_pem, &files.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("{}: no private key: {e}", files.key.display()))?;
        match Identity::of_certificate(&certs[0]) {
            Ok(Identity::Node(id)) if id == node_id => {}
            Ok(other) => {
                return Err(format!("{} names {other}, but this is node {node_id}", files.cert.display()));
            }
            Err(e) => return Err(format!("{}: {e}", files.cert.display())),
        }
        // The certificate chains to the CA and is valid now, as its peers will check: a half-done
        // CA rotation is not adopted.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("{}: {e}", files.ca.display()))?;
        verifier
            .verify_client_cert(&certs[0], &certs[1..], rustls_pki_types::UnixTime::now())
            .map_err(|e| format!("{} does not verify against {}: {e}", files.cert.display(), files.ca.display()))?;
        // The same check a server makes: the key signs for the certificate.
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("{} and {} are not a pair: {e}", files.cert.display(), files.key.display()))?;
        Ok(Material { generation: 0, ca_pem, cert_pem, key_pem, roots, certs, key })
    }
}

/// What the files look like from outside: a change to any of them changes it.
fn stamp(files: &TlsFiles) -> Vec<Option<FileStamp>> {
    [&files.ca, &files.cert, &files.key].iter().map(|p| file_stamp(p)).collect()
}

/// Reads the material now (a node with unusable files does not start) and keeps it current
/// until every receiver is gone.
pub fn watch(
    files: TlsFiles,
    node_id: u64,
    mut stop: watch::Receiver<bool>,
) -> Result<watch::Receiver<Arc<Material>>, String> {
    let first = Material::read(&files, node_id)?;
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut adopted = stamp(&files);
        let (mut generation, mut said) = (0, String::new());
        loop {
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let f = files.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || stamp(&f)).await else { continue };
            if now == adopted {
                continue;
            }
            let f = files.clone();
            match tokio::task::spawn_blocking(move || Material::read(&f, node_id)).await {
                Ok(Ok(mut material)) => {
                    generation += 1;
                    material.generation = generation;
                    tracing::info!(cert = %files.cert.display(), generation, "adopted new TLS files");
                    tx.send_replace(Arc::new(material));
                    adopted = now;
                    said.clear();
                }
                Ok(Err(e)) if e != said => {
                    tracing::warn!("keeping the previous TLS files, and retrying every second: {e}");
                    said = e;
                }
                _ => {}
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs;

    #[test]
    fn material_is_refused_unless_it_is_a_pair_naming_this_node() {
        let dir = tempfile::tempdir().unwrap();
        certs::create_ca(dir.path(), "test", 1).unwrap();
        let (one, two) = (
            certs::create_node(dir.path(), 1, &["127.0.0.1".into()], 1).unwrap(),
            certs::create_node(dir.path(), 2, &["127.0.0.1".into()], 1).unwrap(),
        );
        let files = |cert: &Path, key: &Path| TlsFiles {
            ca: dir.path().join(certs::CA_CERT),
            cert: cert.into(),
            key: key.into(),
        };
        Material::read(&files(&one.cert, &one.key), 1).expect("node 1's own files");
        let other = Material::read(&files(&two.cert, &two.key), 1).err().expect("refused");
        assert!(other.contains("names node 2, but this is node 1"), "{other}");
        let mismatched = Material::read(&files(&one.cert, &two.key), 1).err().expect("refused");
        assert!(mismatched.contains("are not a pair"), "{mismatched}");
    }
}
