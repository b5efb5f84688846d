//! Serving a port with TLS: accepting connections, the handshake (bounded in time and in how
//! many run at once, off the accept loop), with a configuration rebuilt from each new
//! generation of the node's material (`material.rs`), so certificates rotate without a
//! restart. A port in insecure mode goes through the same loop as plain TCP.
//!
//! Invariant: a connection reaches a server only once its handshake has completed with the
//! newest checked material's configuration, and stays only if its client starts speaking
//! within `FIRST_BYTES_TIMEOUT`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::identity::Identity;
use super::material::Material;

/// A handshake that takes longer is dropped (a client that connects and sends nothing).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once on one port, from every address together, and from one; a
/// connection beyond them is closed at once, so a flood costs neither unbounded tasks nor
/// signatures, and one host cannot take the others' share.
const HANDSHAKES: usize = 4096;
const HANDSHAKES_PER_ADDRESS: usize = 32;
/// A client must send its first 24 bytes (the HTTP/2 connection preface exactly; an HTTP/1
/// request with its headers is longer) within this long of its connection reaching the server,
/// or the connection is closed: one that connects and then says nothing holds nothing for long.
const FIRST_BYTES: usize = 24;
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const BACKLOG: usize = 64;

/// Whether a port asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// The client port: a certificate or a bearer token identifies the client.
    Optional,
    /// The peer port: only members, by their certificates.
    Required,
}

/// A port's server configuration, rebuilt from each new generation of the node's material.
pub struct Reloading {
    material: watch::Receiver<Arc<Material>>,
    auth: ClientAuth,
    alpn: Vec<Vec<u8>>,
    /// The configuration and the generation it was built from.
    built: Mutex<(u64, Arc<ServerConfig>)>,
}

impl Reloading {
    pub fn new(
        material: watch::Receiver<Arc<Material>>,
        auth: ClientAuth,
        alpn: &[&[u8]],
    ) -> Result<Arc<Reloading>, String> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let first = material.borrow().clone();
        let built = Mutex::new((first.generation, build(&first, auth, &alpn)?));
        Ok(Arc::new(Reloading { material, auth, alpn, built }))
    }

    /// The configuration for the next handshake: the newest material's.
    pub fn current(&self) -> Arc<ServerConfig> {
        let material = self.material.borrow().clone();
        let mut built = self.built.lock().expect("the TLS state is never poisoned");
        if built.0 != material.generation {
            match build(&material, self.auth, &self.alpn) {
                Ok(config) => *built = (material.generation, config),
                // Material is checked before it is published: this does not happen.
                Err(e) => tracing::warn!("keeping the previous TLS configuration: {e}"),
            }
        }
        built.1.clone()
    }
}

fn build(material: &Material, auth: ClientAuth, alpn: &[Vec<u8>]) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(material.roots.clone(), provider.clone());
    let verifier = match auth {
        ClientAuth::Optional => verifier.allow_unauthenticated(),
        ClientAuth::Required => verifier,
    };
    let verifier = verifier.build().map_err(|e| format!("the CA: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.certs.clone(), material.key.clone_key())
        .map_err(|e| format!("the certificate and key: {e}"))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

/// One accepted connection: TLS, or plain TCP in insecure mode, holding its address's slot.
pub struct Conn {
    io: Io,
    _slot: Slot,
    /// Until the client has sent its first `FIRST_BYTES`: when it must have.
    first_bytes: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
}

impl Conn {
    fn new(io: Io, slot: Slot) -> Conn {
        let deadline = Box::pin(tokio::time::sleep(FIRST_BYTES_TIMEOUT));
        Conn { io, _slot: slot, first_bytes: Some((0, deadline)) }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Connections (or handshakes) open per address on one port.
type Open = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// What counts as one address: an IPv4 address, or an IPv6 /64 (one host's usual share).
fn address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
    }
}

/// One connection's place in its address's count, given back when the connection closes.
struct Slot {
    open: Open,
    ip: IpAddr,
}

impl Slot {
    /// A place for one more connection from `ip`, if it holds fewer than `cap`.
    fn take(open: &Open, ip: IpAddr, cap: usize) -> Option<Slot> {
        let ip = address(ip);
        let mut counts = open.lock().expect("the connection counts are never poisoned");
        let count = counts.entry(ip).or_default();
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(Slot { open: open.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().expect("the connection counts are never poisoned");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
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
        match &self.io {
            Io::Plain(s) => Peer { addr: s.peer_addr().ok(), tls: false, identity: None },
            Io::Tls(s) => {
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
        let conn = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut conn.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        let Some((got, deadline)) = &mut conn.first_bytes else { return read };
        *got += buf.filled().len() - before;
        if *got >= FIRST_BYTES {
            conn.first_bytes = None;
        } else if read.is_pending() && deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client sent no request within 10 s of connecting",
            )));
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts connections on `listener` (Nagle off: a small response must not wait for the
/// client's delayed ACK), at most `per_address` open at once from one IP address, and hands
/// over each once its handshake is done. The loop ends when the receiver is dropped.
pub fn accept(listener: TcpListener, tls: Option<Arc<Reloading>>, per_address: usize) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES));
    let (open, shaking): (Open, Open) = (Arc::default(), Arc::default());
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
            let Some(slot) = Slot::take(&open, from.ip(), per_address) else {
                tracing::debug!(%from, "{per_address} connections from this address are open: closing a new one");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &tls else {
                if tx.send(Conn::new(Io::Plain(tcp), slot)).await.is_err() {
                    return;
                }
                continue;
            };
            let (Ok(permit), Some(shake)) =
                (handshakes.clone().try_acquire_owned(), Slot::take(&shaking, from.ip(), HANDSHAKES_PER_ADDRESS))
            else {
                tracing::debug!(%from, "too many TLS handshakes under way: closing a new connection");
                continue;
            };
            let (acceptor, tx) = (TlsAcceptor::from(tls.current()), tx.clone());
            tokio::spawn(async move {
                let (_permit, _shake) = (permit, shake);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Conn::new(Io::Tls(Box::new(stream)), slot)).await;
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
