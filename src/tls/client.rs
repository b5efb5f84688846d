//! Dialing a TLS port: what a client trusts (the cluster's CA) and what it presents (its
//! certificate, if it has one). A node dialing its peers reloads its files when they change.
//!
//! Invariant: a client that was given a CA never falls back to plaintext; a peer's channels are
//! made again with the new files once they change.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::server::TlsFiles;

/// How often, at most, a peer looks at its files for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

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

/// A node's TLS settings for dialing its peers, rebuilt when its files change. Each rebuild
/// has a new generation; a channel made in an older one is made again.
pub struct PeerTls {
    files: TlsFiles,
    state: Mutex<State>,
}

struct State {
    stamp: Vec<Option<SystemTime>>,
    checked: Instant,
    generation: u64,
    config: ClientTlsConfig,
}

impl PeerTls {
    pub fn load(files: TlsFiles) -> Result<Arc<PeerTls>, String> {
        let stamp = files.stamp();
        let config = ClientFiles::from(&files).tonic()?;
        let state = Mutex::new(State { stamp, checked: Instant::now(), generation: 0, config });
        Ok(Arc::new(PeerTls { files, state }))
    }

    /// The settings for a new channel, and their generation.
    pub fn current(&self) -> (u64, ClientTlsConfig) {
        let mut state = self.state.lock().expect("the peer TLS state is never poisoned");
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let stamp = self.files.stamp();
            if stamp != state.stamp {
                state.stamp = stamp;
                // Check the files make a working configuration before dialing with them.
                match super::server::Reloading::load(self.files.clone(), super::server::ClientAuth::Required, &[])
                    .and_then(|_| ClientFiles::from(&self.files).tonic())
                {
                    Ok(config) => {
                        state.config = config;
                        state.generation += 1;
                    }
                    Err(e) => tracing::warn!("dialing peers with the previous TLS files: {e}"),
                }
            }
        }
        (state.generation, state.config.clone())
    }
}
