//! `keepsake dev`: three nodes in one process on loopback, for trying Keepsake out, with TLS on
//! as in production: a throwaway CA and certificates in its data directory, which the CLI finds
//! in `~/.keepsake/certs` (written there only if that directory is free or holds a dev
//! cluster's, never over an operator's own certificates).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::config::{ArchiveConfig, Member, NodeConfig, TlsConfig};
use crate::tls::certs;
use crate::tls::client::ClientFiles;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the nodes keep their data (default: a new temporary directory, kept on exit).
    #[arg(long, env = "KEEPSAKE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// First client port; the nodes use it and the next two (peers: +100, +101, +102).
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    super::init_logging();
    let dir = match args.data_dir {
        Some(d) => d,
        None => tempfile::Builder::new().prefix("keepsake-dev-").tempdir()?.keep(),
    };
    let members: Vec<Member> = (0..3u16)
        .map(|i| Member {
            id: u64::from(i) + 1,
            client_addr: format!("127.0.0.1:{}", args.base_port + i),
            peer_addr: format!("127.0.0.1:{}", args.base_port + 100 + i),
        })
        .collect();
    let certs = dir.join("certs");
    make_certs(&certs, &members)?;
    let for_cli = share_with_cli(&certs)?;
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut nodes = Vec::new();
    for m in &members {
        let config = NodeConfig {
            node_id: m.id,
            cluster_id: "keepsake-dev".into(),
            data_dir: dir.join(format!("node{}", m.id)),
            client_addr: m.client_addr.clone(),
            peer_addr: m.peer_addr.clone(),
            http_addr: format!("127.0.0.1:{}", args.base_port + 200 + (m.id as u16 - 1)),
            members: members.clone(),
            // One archive the three share, so it stays whole across leader changes.
            archive: ArchiveConfig { url: dir.join("archive").display().to_string(), ..ArchiveConfig::default() },
            tls: {
                let pair = certs::node_pair(&certs, m.id);
                TlsConfig { ca: certs.join(certs::CA_CERT), cert: pair.cert, key: pair.key, insecure: false }
            },
            ..NodeConfig::default()
        };
        let mut stop = stop_tx.subscribe();
        nodes.push(tokio::spawn(crate::node::run(config, async move {
            let _ = stop.recv().await;
        })));
    }
    let leader = tokio::select! {
        l = wait_for_leader(&members[0].client_addr, &certs, &nodes) => match l {
            Ok(l) => l,
            Err(e) => {
                let _ = stop_tx.send(());
                for n in nodes {
                    if let Ok(Err(node_error)) = n.await {
                        return Err(node_error.context("a dev node failed to start"));
                    }
                }
                return Err(e);
            }
        },
        _ = super::shutdown_signal() => { let _ = stop_tx.send(()); return Ok(()) }
    };
    println!("keepsake dev cluster is up (leader: node {leader})");
    println!("data directory: {}", dir.display());
    println!("archive: {}", dir.join("archive").join("keepsake-dev").display());
    match &for_cli {
        Some(shared) => {
            println!("TLS: a throwaway CA in {}; the CLI reads it from {}", certs.display(), shared.display())
        }
        None => println!(
            "TLS: a throwaway CA in {0}; ~/.keepsake/certs holds other certificates, so point the CLI here: \
             export KEEPSAKE_CERTS_DIR={0}",
            certs.display()
        ),
    }
    for m in &members {
        let http = args.base_port + 200 + (m.id as u16 - 1);
        println!(
            "node {}: client {}  peer {}  metrics https://127.0.0.1:{http}/metrics",
            m.id, m.client_addr, m.peer_addr
        );
    }
    println!("endpoints: {}", members.iter().map(|m| m.client_addr.as_str()).collect::<Vec<_>>().join(","));
    println!("press Ctrl-C to stop");
    super::shutdown_signal().await;
    println!("stopping the three nodes");
    let _ = stop_tx.send(());
    for n in nodes {
        n.await.context("node task")??;
    }
    Ok(())
}

/// The dev cluster's CA, its three nodes' certificates and an operator's client certificate
/// (`client.crt`, `client.key`, the names the CLI looks for), made once per data directory.
fn make_certs(dir: &Path, members: &[Member]) -> anyhow::Result<()> {
    if dir.join(certs::CA_CERT).exists() {
        return Ok(());
    }
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    certs::create_local(dir, "keepsake dev CA (throwaway)", &ids).map_err(anyhow::Error::msg)?;
    Ok(())
}

/// Marks a certs directory as a dev cluster's, with the hash of each file it copied there, so
/// the next `keepsake dev` replaces those files only while they are still what it wrote.
const DEV_MARK: &str = "KEEPSAKE_DEV";
const SHARED: [&str; 3] = [certs::CA_CERT, "client.crt", "client.key"];

fn file_hash(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|bytes| blake3::hash(&bytes).to_hex().to_string())
}

/// Copies the dev CA and the operator's certificate to `~/.keepsake/certs`, where the CLI looks
/// by default, if that directory is free or holds only what an earlier `keepsake dev` put
/// there, unchanged; returns it. None: it holds anything else, which is never touched.
fn share_with_cli(certs: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Some(shared) = super::client::default_certs_dir() else { return Ok(None) };
    let entries: Vec<String> = match std::fs::read_dir(&shared) {
        Ok(dir) => dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    let recorded = std::fs::read_to_string(shared.join(DEV_MARK)).unwrap_or_default();
    let ours = |name: &String| {
        name == DEV_MARK
            || (SHARED.contains(&name.as_str())
                && file_hash(&shared.join(name)).is_some_and(|h| recorded.lines().any(|l| l == format!("{name} {h}"))))
    };
    if !entries.iter().all(ours) {
        return Ok(None);
    }
    std::fs::create_dir_all(&shared).with_context(|| format!("cannot create {}", shared.display()))?;
    let mut mark = format!("# copied by `keepsake dev` from {}\n", certs.display());
    for name in SHARED {
        // Replaced by a rename: a CLI reading meanwhile sees the old file or the new one.
        let staged = shared.join(format!(".{name}.new"));
        std::fs::copy(certs.join(name), &staged)?;
        std::fs::rename(&staged, shared.join(name))?;
        mark.push_str(&format!("{name} {}\n", file_hash(&shared.join(name)).unwrap_or_default()));
    }
    std::fs::write(shared.join(DEV_MARK), mark)?;
    Ok(Some(shared))
}

async fn wait_for_leader(
    addr: &str,
    certs: &Path,
    nodes: &[tokio::task::JoinHandle<anyhow::Result<()>>],
) -> anyhow::Result<u64> {
    let files = ClientFiles {
        ca: certs.join(certs::CA_CERT),
        identity: Some((certs.join("client.crt"), certs.join("client.key"))),
    };
    let tls = Some(files.tonic().map_err(anyhow::Error::msg)?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(status) = super::client::node_status(addr, Duration::from_secs(1), &tls).await {
            if let Some(leader) = status.leader_id {
                return Ok(leader);
            }
        }
        if nodes.iter().any(|n| n.is_finished()) {
            anyhow::bail!("a node stopped before a leader was elected");
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no leader was elected within 30 s; see the log above");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
