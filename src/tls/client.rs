//! Dialing a TLS port: what a client trusts (the cluster's CA) and what it presents (its
//! certificate, if it has one). A node dialing its peers reloads its files when they change.
//!
//! Invariant: a client that was given a CA never falls back to plaintext; a node's channels to
//! its peers are made again once its material has a new generation.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::material::Material;
use super::material::TlsFiles;

/// What a client trusts and presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    pub ca: PathBuf,
    /// A certificate and key to present; None: the client identifies itself another way.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientFiles {
    /// tonic's TLS settings for a channel.
    pub fn tonic(&self) -> Result<ClientTlsConfig, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(config)
    }
}

impl From<&TlsFiles> for ClientFiles {
    fn from(files: &TlsFiles) -> Self {
        ClientFiles { ca: files.ca.clone(), identity: Some((files.cert.clone(), files.key.clone())) }
    }
}

/// A node's TLS settings for dialing its peers and their Admin API, from the newest
/// generation of its material; a channel made in an older generation is made again.
pub struct PeerTls {
    material: watch::Receiver<Arc<Material>>,
}

impl PeerTls {
    pub fn new(material: watch::Receiver<Arc<Material>>) -> Arc<PeerTls> {
        Arc::new(PeerTls { material })
    }

    /// The newest generation (cheap: no file is read, nothing is built).
    pub fn generation(&self) -> u64 {
        self.material.borrow().generation
    }

    /// The settings for a new channel, and their generation.
    pub fn config(&self) -> (u64, ClientTlsConfig) {
        let material = self.material.borrow().clone();
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&material.ca_pem))
            .identity(Identity::from_pem(&material.cert_pem, &material.key_pem));
        (material.generation, config)
    }
}
