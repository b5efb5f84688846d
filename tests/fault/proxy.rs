//! A fault-injecting TCP proxy: one listener in front of one server, with a mode per source
//! address that the nemesis changes while connections are open.
//!
//! Peer links use one proxy per destination node; node N's connections come from 127.0.1.N, so
//! the mode for that source is the link N → destination. The object store gets one proxy, whose
//! default mode applies to every connection.
//!
//! `Stall` holds bytes instead of dropping them (a TCP stream cannot lose bytes in the middle
//! and stay valid): nothing crosses until the link heals, exactly as if every packet were lost
//! and then retransmitted. Senders notice through their own timeouts and keep-alives, as they
//! would on a real network; bytes held across a heal arrive late, as delayed packets do.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Nothing crosses, in either direction, until the mode changes.
    Stall,
    /// Each chunk waits this long before it crosses.
    Delay(Duration),
    /// Every new HTTP request gets `500 Internal Server Error` (open connections are closed).
    Http500,
    /// New connections are closed at once (open ones too): a server that is down.
    Refuse,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Rules {
    default: Option<Mode>,
    by_source: HashMap<IpAddr, Mode>,
}

impl Rules {
    fn mode(&self, source: IpAddr) -> Mode {
        self.by_source.get(&source).copied().or(self.default).unwrap_or(Mode::Pass)
    }
}

pub struct Proxy {
    pub listen: SocketAddr,
    control: Control,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` and forwards to `target`.
    pub async fn start(listen: &str, target: &str) -> Proxy {
        let listener = TcpListener::bind(listen).await.unwrap_or_else(|e| panic!("proxy cannot bind {listen}: {e}"));
        let listen = listener.local_addr().expect("a bound listener has an address");
        let (rules, rx) = watch::channel(Rules::default());
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, from)) = listener.accept().await else { continue };
                tokio::spawn(serve(conn, from.ip(), target.clone(), rx.clone()));
            }
        });
        Proxy { listen, control: Control(Arc::new(rules)), task }
    }

    /// A handle that changes the modes from another task.
    pub fn handle(&self) -> Control {
        self.control.clone()
    }
}

impl std::ops::Deref for Proxy {
    type Target = Control;
    fn deref(&self) -> &Control {
        &self.control
    }
}

/// Changes a proxy's modes; takes effect at once, also on open connections.
#[derive(Clone)]
pub struct Control(Arc<watch::Sender<Rules>>);

impl Control {
    /// Sets the mode of every connection from `source`.
    pub fn set_source(&self, source: IpAddr, mode: Mode) {
        self.0.send_modify(|r| {
            r.by_source.insert(source, mode);
        });
    }

    /// Sets the mode of connections from sources without one of their own.
    pub fn set_default(&self, mode: Mode) {
        self.0.send_modify(|r| r.default = Some(mode));
    }

    /// Every connection passes again.
    pub fn heal(&self) {
        self.0.send_replace(Rules::default());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(client: TcpStream, source: IpAddr, target: String, rules: watch::Receiver<Rules>) {
    let _ = client.set_nodelay(true);
    let mode = rules.borrow().mode(source);
    match mode {
        Mode::Refuse => return,
        Mode::Http500 => {
            answer_500(client).await;
            return;
        }
        _ => {}
    }
    let Ok(server) = TcpStream::connect(&target).await else { return };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Either direction ending (or the mode turning to refuse or 500) ends both.
    tokio::select! {
        _ = pump(client_read, server_write, source, rules.clone()) => {}
        _ = pump(server_read, client_write, source, rules) => {}
    }
}

/// Copies one direction, chunk by chunk, obeying the current mode before each chunk crosses.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    source: IpAddr,
    mut rules: watch::Receiver<Rules>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mode = match rules.wait_for(|r| r.mode(source) != Mode::Stall).await {
            Ok(r) => r.mode(source),
            Err(_) => return,
        };
        match mode {
            Mode::Refuse | Mode::Http500 => return,
            Mode::Delay(d) => tokio::time::sleep(d).await,
            Mode::Pass | Mode::Stall => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Reads one request head and answers it with an S3-style 500.
async fn answer_500(mut client: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
        match tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>\
                <Message>injected by the fault proxy</Message></Error>";
    let response = format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}
