//! `keepsake dev`: three nodes in one process on loopback, for trying Keepsake out.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::config::{ArchiveConfig, Member, NodeConfig};

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
            ..NodeConfig::default()
        };
        let mut stop = stop_tx.subscribe();
        nodes.push(tokio::spawn(crate::node::run(config, async move {
            let _ = stop.recv().await;
        })));
    }
    let leader = tokio::select! {
        l = wait_for_leader(&members[0].client_addr, &nodes) => match l {
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
    for m in &members {
        let http = args.base_port + 200 + (m.id as u16 - 1);
        println!(
            "node {}: client {}  peer {}  metrics http://127.0.0.1:{http}/metrics",
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

async fn wait_for_leader(addr: &str, nodes: &[tokio::task::JoinHandle<anyhow::Result<()>>]) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(status) = super::client::node_status(addr, Duration::from_secs(1)).await {
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
