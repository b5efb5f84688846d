//! Serving a port with TLS: accepting connections, the handshake (bounded in time, off the
//! accept loop), and the node's certificate, key and CA reloaded from disk when they change,
//! so certificates rotate without a restart. A port in insecure mode goes through the same
//! loop as plain TCP.
//!
//! Invariant: a connection reaches a server only once its handshake has completed with the
//! current files' configuration; a reload that fails keeps the last good one and says why.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::identity::Identity;

/// A handshake that takes longer is dropped (a client that connects and sends nothing).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often, at most, the files are looked at for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// Handshaken connections waiting for the server to take them.
const BACKLOG: usize = 64;

/// Where a node's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster's CA: peers' and clients' certificates must chain to it.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub(crate) fn stamp(&self) -> Vec<Option<SystemTime>> {
        [&self.ca, &self.cert, &self.key].iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
    }

    /// The CA's certificates, for a verifier.
    pub fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&self.ca)? {
            roots.add(cert).map_err(|e| format!("{}: not a CA certificate: {e}", self.ca.display()))?;
        }
        Ok(roots)
    }

    /// This node's certificate chain and key.
    pub fn identity(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("{}: no private key: {e}", self.key.display()))?;
        Ok((read_certs(&self.cert)?, key))
    }
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Whether a port asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// The client port: a certificate or a bearer token identifies the client.
    Optional,
    /// The peer port: only members, by their certificates.
    Required,
}

/// A server configuration, rebuilt when the files change.
pub struct Reloading {
    files: TlsFiles,
    auth: ClientAuth,
    alpn: Vec<Vec<u8>>,
    state: Mutex<State>,
}

struct State {
    config: Arc<ServerConfig>,
    stamp: Vec<Option<SystemTime>>,
    checked: Instant,
}

impl Reloading {
    /// Loads the files now: a node with TLS configured and unreadable files does not start.
    pub fn load(files: TlsFiles, auth: ClientAuth, alpn: &[&[u8]]) -> Result<Arc<Reloading>, String> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let stamp = files.stamp();
        let config = build(&files, auth, &alpn)?;
        let state = Mutex::new(State { config, stamp, checked: Instant::now() });
        Ok(Arc::new(Reloading { files, auth, alpn, state }))
    }

    /// The configuration for the next handshake, reloaded first if the files changed.
    pub fn current(&self) -> Arc<ServerConfig> {
        let mut state = self.state.lock().expect("the TLS state is never poisoned");
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let stamp = self.files.stamp();
            if stamp != state.stamp {
                state.stamp = stamp;
                match build(&self.files, self.auth, &self.alpn) {
                    Ok(config) => {
                        tracing::info!(cert = %self.files.cert.display(), "reloaded the TLS certificate, key and CA");
                        state.config = config;
                    }
                    // Half-written files during a rotation, most likely: the next change retries.
                    Err(e) => tracing::warn!("keeping the previous TLS configuration: {e}"),
                }
            }
        }
        state.config.clone()
    }
}

fn build(files: &TlsFiles, auth: ClientAuth, alpn: &[Vec<u8>]) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(files.roots()?), provider.clone());
    let verifier = match auth {
        ClientAuth::Optional => verifier.allow_unauthenticated(),
        ClientAuth::Required => verifier,
    };
    let verifier = verifier.build().map_err(|e| format!("{}: {e}", files.ca.display()))?;
    let (certs, key) = files.identity()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {} do not make a key pair: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

/// One accepted connection: TLS, or plain TCP in insecure mode.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a server knows of a connection: where it comes from, whether it is TLS, and who the
/// certificate the client presented (verified against the CA in the handshake) says it is.
/// Worked out once per connection; tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    pub tls: bool,
    /// None: no client certificate. `Err`: one that names no Keepsake identity.
    pub identity: Option<Result<Identity, String>>,
}

impl Conn {
    pub fn peer(&self) -> Peer {
        match self {
            Conn::Plain(s) => Peer { addr: s.peer_addr().ok(), tls: false, identity: None },
            Conn::Tls(s) => {
                let (tcp, session) = s.get_ref();
                let identity = session.peer_certificates().and_then(|c| c.first()).map(|c| Identity::of_certificate(c));
                Peer { addr: tcp.peer_addr().ok(), tls: true, identity }
            }
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts connections on `listener` (Nagle off: a small response must not wait for the
/// client's delayed ACK) and hands over each once its handshake is done. The loop ends when
/// the receiver is dropped.
pub fn accept(listener: TcpListener, tls: Option<Arc<Reloading>>) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let (tcp, from) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, most likely: let some close.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &tls else {
                if tx.send(Conn::Plain(tcp)).await.is_err() {
                    return;
                }
                continue;
            };
            let (acceptor, tx) = (TlsAcceptor::from(tls.current()), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Conn::Tls(Box::new(stream))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%from, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%from, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The accepted connections as tonic's incoming stream.
pub fn incoming(rx: mpsc::Receiver<Conn>) -> impl tokio_stream::Stream<Item = Result<Conn, io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
}

/// The accepted connections as axum's listener.
pub struct Listener {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

impl Listener {
    pub fn new(rx: mpsc::Receiver<Conn>, local: SocketAddr) -> Listener {
        Listener { rx, local }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = Option<SocketAddr>;

    async fn accept(&mut self) -> (Conn, Option<SocketAddr>) {
        match self.rx.recv().await {
            Some(conn) => {
                let addr = conn.peer().addr;
                (conn, addr)
            }
            // The accept loop ended (it never does while this listener lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        Ok(Some(self.local))
    }
}
