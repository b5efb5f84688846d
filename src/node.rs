//! Starting and stopping one node (`keepsake serve`): open the store, start Raft, serve the
//! client and peer ports, bootstrap a new cluster, and keep the log purged behind snapshots.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keepsake_archive::store::Archive;
use keepsake_raft::consensus::{Parts, Settings};
use keepsake_raft::{Consensus, Node, Raft};
use openraft::SnapshotPolicy;
use tokio::sync::watch;

use crate::backup::archiver::Archiver;
use crate::backup::snapshotter::Snapshotter;
use crate::backup::status::ArchiveStatus;
use crate::config::NodeConfig;
use crate::peer::client::Peers;
use crate::proto::raft::raft_transport_server::RaftTransportServer;
use crate::replica::{ArchiveView, Replica};
use crate::server::peer::PeerService;
use crate::tls::client::PeerTls;
use crate::tls::material;
use crate::tls::server::{accept, ClientAuth, Reloading};

fn raft_config(config: &NodeConfig) -> anyhow::Result<openraft::Config> {
    let r = &config.raft;
    let c = openraft::Config {
        cluster_name: config.cluster_id.clone(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        install_snapshot_timeout: r.install_snapshot_timeout_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_every_entries),
        // Purging is ours (`Consensus::purge_behind_snapshots`), so it can honour the purge gate.
        max_in_snapshot_log_to_keep: u64::MAX,
        max_payload_entries: 1000,
        ..Default::default()
    };
    Ok(c.validate()?)
}

/// Runs a node until `shutdown` resolves, then stops it cleanly.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    // Before anything is written: a node whose archive keys are configured but unavailable
    // does not start.
    let key_source = config.archive.key_source().map_err(anyhow::Error::msg)?;
    let keys = crate::backup::keyring::load(key_source.as_ref()).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    bind_cluster_id(&config)?;
    let store = keepsake_raft::open(&config.data_dir)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    // Closed before Raft starts (openraft purges at start-up): nothing is purged until the
    // archiver knows how far the archive reaches (docs/design.md §1.5).
    store.gate.set_limit(0);
    let client_listener = crate::server::bind(&config.client_addr).await?;
    let peer_listener = crate::server::bind(&config.peer_addr).await?;
    let http_listener = match config.http_addr.as_str() {
        "" => None,
        addr => Some(crate::server::bind(addr).await?),
    };

    // No lease in the term this process starts in (raft/src/lease.rs): a leader transfer
    // started before a restart may still reach its target. Read before Raft starts, as its
    // core will.
    let start_term = {
        use openraft::storage::RaftLogStorage;
        let vote = store.log.clone().read_vote().await.context("cannot read the saved vote")?;
        vote.map_or(0, |v| v.leader_id().get_term())
    };
    // Everything the node starts stops when this turns true.
    let (stop_tx, stop_rx) = watch::channel(false);
    let tls = config.tls.files()?;
    if tls.is_none() {
        tracing::warn!(
            "insecure mode: every port serves plaintext and no client or peer is authenticated; for a test bench only"
        );
    }
    // Checked now (a node with unusable files, or files naming another node, does not start),
    // then watched.
    let material = tls
        .map(|files| material::watch(files, config.node_id, stop_rx.clone()))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let peer_tls = material.clone().map(PeerTls::new);
    let serving = |auth: ClientAuth, alpn: &[&[u8]]| {
        material.clone().map(|m| Reloading::new(m, auth, alpn)).transpose().map_err(anyhow::Error::msg)
    };
    let (client_tls, peer_server_tls) =
        (serving(ClientAuth::Optional, &[b"h2"])?, serving(ClientAuth::Required, &[b"h2"])?);
    let http_tls = serving(ClientAuth::Optional, &[b"http/1.1"])?;
    let tokens = match &config.auth.tokens_file {
        p if p.as_os_str().is_empty() => None,
        p => {
            let tokens = Arc::new(crate::server::tokens::Tokens::load(p.clone()).map_err(anyhow::Error::msg)?);
            tokens.watch(stop_rx.clone());
            Some(tokens)
        }
    };
    crate::backup::keyring::follow(key_source, &keys, stop_rx.clone());
    let peers = Peers::new(config.limits.max_message_bytes(), config.peer_source_ip.parse().ok(), peer_tls);
    let raft =
        Raft::new(config.node_id, Arc::new(raft_config(&config)?), peers.clone(), store.log.clone(), store.machine)
            .await
            .context("cannot start raft")?;
    let settings = Settings {
        election_timeout_min: Duration::from_millis(config.raft.election_timeout_min_ms),
        election_timeout_max: config.raft.election_timeout_max(),
        lease_reads: config.raft.lease_reads,
        max_pending_writes: config.limits.max_pending_writes,
    };
    let parts = Parts { log: store.log.clone(), reader: store.reader.clone(), gate: store.gate.clone() };
    let consensus =
        Arc::new(Consensus::start(config.node_id, raft.clone(), parts, peers.acks.clone(), settings, start_term));
    let archive = Archive::open(&config.archive.url, &config.archive.connection(), &config.cluster_id)?.with_keys(keys);
    let (status_tx, status_rx) = watch::channel(ArchiveStatus::default());
    let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let snapshotter = Arc::new(Snapshotter::new(
        archive.clone(),
        config.cluster_id.clone(),
        config.node_id,
        raft.clone(),
        config.data_dir.clone(),
        config.archive.clone(),
        status_rx.clone(),
    ));
    let archiver = Arc::new(Archiver {
        archive: archive.clone(),
        cluster_id: config.cluster_id.clone(),
        node_id: config.node_id,
        raft: raft.clone(),
        consensus: consensus.clone(),
        log: store.log,
        reader: store.reader,
        gate: store.gate,
        config: config.archive.clone(),
        status: status_tx,
        waiting: waiting.clone(),
        snapshotter: snapshotter.clone(),
        peers: peers.clone(),
    });
    let view = ArchiveView { url: archive.url.clone(), status: status_rx, waiting, snapshotter: snapshotter.clone() };
    let upgrader = crate::upgrade::run(consensus.clone(), peers.clone());
    let replica = Arc::new(Replica::new(consensus, config.clone(), peers, view));

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let max = config.limits.max_message_bytes();
    let transport = RaftTransportServer::new(PeerService::new(replica.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let only_nodes = crate::server::peer::only_nodes(peer_server_tls.is_some());
    let per_address = config.limits.max_connections_per_address;
    let peer_server = tonic::transport::Server::builder()
        .add_service(tonic::service::interceptor::InterceptedService::new(transport, only_nodes))
        .serve_with_incoming_shutdown(
            crate::tls::server::incoming(accept(peer_listener, peer_server_tls, per_address)),
            stopped(stop_rx.clone()),
        );
    let peer_task = tokio::spawn(peer_server);
    let auth = crate::server::auth::AuthLayer::new(tokens, client_tls.is_some(), raft.clone());
    let client_accepted = accept(client_listener, client_tls, per_address);
    let client_task =
        tokio::spawn(crate::server::serve_clients(replica.clone(), client_accepted, auth, stopped(stop_rx.clone())));
    let http_task = match http_listener {
        Some(l) => {
            let local = l.local_addr()?;
            let listener = crate::tls::server::Listener::new(accept(l, http_tls, per_address), local);
            Some(tokio::spawn(crate::server::http::serve(replica.clone(), listener, stopped(stop_rx.clone()))))
        }
        None => None,
    };

    bootstrap(&replica).await?;
    let purger = {
        let (replica, keep) = (replica.clone(), config.raft.keep_entries_after_snapshot);
        tokio::spawn(async move { replica.consensus().purge_behind_snapshots(keep).await })
    };
    let archiving = tokio::spawn(archiver.run());
    let upgrading = tokio::spawn(upgrader);
    let snapshotting = tokio::spawn(snapshotter.run());
    tracing::info!(node = config.node_id, client = %config.client_addr, peer = %config.peer_addr, "node started");

    // A node whose Raft stopped on an error (a full or failing disk) cannot take part any more:
    // it exits, so that a supervisor restarts it once the cause is fixed, instead of lingering
    // half-alive and answering "shutting down" forever.
    let failure = tokio::select! {
        _ = shutdown => None,
        why = replica.consensus().failure() => Some(why),
    };
    match &failure {
        None => tracing::info!(node = config.node_id, "shutting down"),
        Some(why) => tracing::error!(node = config.node_id, error = %why, "raft stopped; shutting down"),
    }
    purger.abort();
    archiving.abort();
    upgrading.abort();
    snapshotting.abort();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), client_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), peer_task).await;
    if let Some(task) = http_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    raft.shutdown().await.ok();
    match failure {
        None => Ok(()),
        Some(why) => anyhow::bail!(
            "raft stopped on this node: {why}; fix the cause (is the disk full or failing?) and start the node again"
        ),
    }
}

/// A data directory belongs to one cluster: a node refuses to start under another cluster id,
/// so a restored node never writes into the old cluster's archive by mistake.
fn bind_cluster_id(config: &NodeConfig) -> anyhow::Result<()> {
    let path = config.data_dir.join("cluster_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if id.trim() == config.cluster_id => Ok(()),
        Ok(id) => anyhow::bail!(
            "{} belongs to cluster {:?}, but this node is configured for {:?}; start it with --cluster-id {}",
            config.data_dir.display(),
            id.trim(),
            config.cluster_id,
            id.trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, &config.cluster_id).with_context(|| format!("cannot write {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A node whose log is empty and that has initial members starts the cluster.
async fn bootstrap(replica: &Replica) -> anyhow::Result<()> {
    let members: BTreeMap<u64, Node> = replica
        .config()
        .members
        .iter()
        .map(|m| (m.id, Node { client_addr: m.client_addr.clone(), peer_addr: m.peer_addr.clone() }))
        .collect();
    Ok(replica.consensus().bootstrap(members).await?)
}
