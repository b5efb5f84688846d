//! The integration-test harness: a `Cluster` of real `keepsake serve` processes on 127.0.0.1,
//! plus small gRPC helpers (bounded in time) that the cluster tests share.
//!
//! Each node gets fresh ports (reserved for the test process, below the ephemeral range: see
//! `free_ports`), its own temporary directory (data dir, `node.toml`, `node.log`)
//! and test-speed Raft timings. The harness can kill (SIGKILL), stop (SIGTERM), restart, pause
//! (SIGSTOP) and resume (SIGCONT) nodes. Dropping the `Cluster` kills every node it still runs,
//! also when a test panics — and then it prints the tail of every node's log.
//!
//! Every call made here carries a gRPC deadline and a local timeout, so a broken cluster fails
//! the test instead of hanging it.

#![allow(dead_code)]

mod s3;
pub use s3::{S3Server, S3_ENV};

use std::fs::OpenOptions;
use std::future::Future;
use std::net::TcpListener;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use keepsake::proto::v1::admin_client::AdminClient;
use keepsake::proto::v1::store_client::StoreClient;
use keepsake::proto::v1::{
    Consistency, DeleteRequest, DeleteResponse, DigestRequest, DigestResponse, GetRequest, Item, ItemKey, ListRequest,
    NodeStatus, NodeStatusRequest, PutRequest, PutResponse, TransferLeaderRequest, TriggerSnapshotRequest,
    TriggerSnapshotResponse,
};
use tempfile::TempDir;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// The deadline of an ordinary test request.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `start` waits for the new cluster to elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `stop` waits for a node to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each node's log printed when a test panics.
const LOG_TAIL_LINES: usize = 40;
/// Largest message a test client accepts (List pages and export chunks stay far below).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// `KEEPSAKE_*` variables that would override the written config file.
const OVERRIDING_VARS: [&str; 9] = [
    "KEEPSAKE_CRASH_AT",
    "KEEPSAKE_STOP_AT",
    "KEEPSAKE_CONFIG",
    "KEEPSAKE_NODE_ID",
    "KEEPSAKE_CLUSTER_ID",
    "KEEPSAKE_DATA_DIR",
    "KEEPSAKE_CLIENT_ADDR",
    "KEEPSAKE_PEER_ADDR",
    "KEEPSAKE_MEMBERS",
];

/// Options of a test cluster; `start` launches it.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    /// Extra nodes with no initial members, not started: learners-to-be (`restart` starts one).
    spares: usize,
    cluster_id: String,
    bootstrap: bool,
    snapshot_every: u64,
    keep_after_snapshot: u64,
    /// (url, endpoint) of an S3 archive; None: a fresh local directory.
    s3_archive: Option<(String, String)>,
    /// Extra lines for the `[archive]` table.
    archive_extra: String,
    /// Peers dial each other through addresses a test's proxies listen on (see `peer_proxies`).
    peer_proxies: bool,
    /// Each node's data directory is a tmpfs of this many bytes (a disk that can fill up).
    tmpfs_bytes: Option<u64>,
}

impl ClusterBuilder {
    /// Archive to `server`, under `s3://<bucket>/<prefix>/<cluster-id>/`.
    pub fn archive_s3(mut self, server: &S3Server, prefix: &str) -> Self {
        self.s3_archive = Some((server.url(prefix), server.endpoint.clone()));
        self
    }

    /// Archive to `server` as `archive_s3` does, but reach it at `endpoint` (a proxy in front).
    pub fn archive_s3_via(mut self, server: &S3Server, prefix: &str, endpoint: &str) -> Self {
        self.s3_archive = Some((server.url(prefix), endpoint.to_owned()));
        self
    }

    /// Each node listens for peers on one port but is known to the others by another, which
    /// the test serves with a proxy (`Cluster::peer_listen_addr` → `Cluster::peer_addr`), and
    /// node N's outgoing peer connections come from 127.0.1.N, so a proxy can tell links apart.
    pub fn peer_proxies(mut self) -> Self {
        self.peer_proxies = true;
        self
    }

    /// Puts every node's data directory on its own tmpfs of `bytes` (needs root): a disk the
    /// test can fill. Unmounted when the cluster is dropped.
    pub fn tmpfs_data(mut self, bytes: u64) -> Self {
        self.tmpfs_bytes = Some(bytes);
        self
    }

    /// One more `key = value` line in every node's `[archive]` table.
    pub fn archive_option(mut self, key: &str, value: &str) -> Self {
        self.archive_extra.push_str(&format!("{key} = {value}\n"));
        self
    }

    /// How many nodes (ids 1..=n); 3 unless set.
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Extra nodes (ids n+1..) that are configured but not started and not initial members.
    pub fn spares(mut self, n: usize) -> Self {
        self.spares = n;
        self
    }

    /// `raft.snapshot_every_entries` (default 10,000).
    pub fn snapshot_every(mut self, entries: u64) -> Self {
        self.snapshot_every = entries;
        self
    }

    /// Archive snapshots only when asked for (`keepsake backup snapshot`), never on schedule.
    pub fn archive_snapshots_on_demand(self) -> Self {
        self.archive_option("snapshot_every_entries", "0").archive_option("snapshot_every_seconds", "0")
    }

    /// `raft.keep_entries_after_snapshot` (default 1,000).
    pub fn keep_after_snapshot(mut self, entries: u64) -> Self {
        self.keep_after_snapshot = entries;
        self
    }

    /// Starts every node and waits until they agree on a leader.
    pub async fn start(self) -> Cluster {
        let initial = self.nodes;
        let cluster = self.prepare();
        cluster.launch(initial).await;
        cluster
    }

    /// The cluster's own id (default `keepsake-test`).
    pub fn cluster_id(mut self, id: &str) -> Self {
        self.cluster_id = id.to_owned();
        self
    }

    /// Nodes start with no initial members: the cluster already exists in a seeded data dir.
    pub fn no_bootstrap(mut self) -> Self {
        self.bootstrap = false;
        self
    }

    /// Allocates ports, directories and configs, and starts nothing (see `Cluster::launch`).
    pub fn prepare(self) -> Cluster {
        assert!(self.nodes > 0, "a cluster needs at least one node");
        let total = self.nodes + self.spares;
        let ports = free_ports(total * 4);
        let all: Vec<(u64, String, String)> = (0..total)
            .map(|i| {
                let id = i as u64 + 1;
                (id, format!("127.0.0.1:{}", ports[4 * i]), format!("127.0.0.1:{}", ports[4 * i + 1]))
            })
            .collect();
        // What the others dial: a proxy's port when peers go through proxies.
        let advertised: Vec<(u64, String, String)> = all
            .iter()
            .enumerate()
            .map(|(i, (id, client, peer))| {
                let peer = if self.peer_proxies { format!("127.0.0.1:{}", ports[4 * i + 3]) } else { peer.clone() };
                (*id, client.clone(), peer)
            })
            .collect();
        let addrs = &advertised[..self.nodes];
        let archive =
            tempfile::Builder::new().prefix("keepsake-test-archive-").tempdir().expect("create an archive dir");
        let (archive_url, archive_endpoint) = match &self.s3_archive {
            Some((url, endpoint)) => (url.clone(), endpoint.clone()),
            None => (archive.path().to_string_lossy().into_owned(), String::new()),
        };
        let mut nodes = Vec::with_capacity(total);
        let mut mounts = Vec::new();
        for (i, (id, client_addr, peer_addr)) in all.iter().enumerate() {
            let dir = tempfile::Builder::new()
                .prefix(&format!("keepsake-test-node{id}-"))
                .tempdir()
                .expect("create a temporary directory for a test node");
            let config_path = dir.path().join("node.toml");
            let log_path = dir.path().join("node.log");
            let data_dir = dir.path().join("data");
            if let Some(bytes) = self.tmpfs_bytes {
                mount_tmpfs(&data_dir, bytes);
                mounts.push(data_dir.clone());
            }
            let members = if self.bootstrap && (*id as usize) <= self.nodes { addrs } else { &[] };
            let http_addr = format!("127.0.0.1:{}", ports[4 * i + 2]);
            let mut config = node_config(&self, *id, &data_dir, client_addr, peer_addr, members);
            config.insert_str(0, &format!("http_addr = {}\n", toml_string(&http_addr)));
            if self.peer_proxies {
                config.insert_str(0, &format!("peer_source_ip = \"{}\"\n", peer_source_ip(*id)));
            }
            config.push_str(&format!(
                "\n[archive]\nurl = {}\nendpoint = {}\nmax_segment_age_ms = 100\nrequest_timeout_ms = 2000\n{}",
                toml_string(&archive_url),
                toml_string(&archive_endpoint),
                self.archive_extra
            ));
            std::fs::write(&config_path, config).expect("write the test node's node.toml");
            nodes.push(NodeProc {
                http_addr,
                id: *id,
                client_addr: client_addr.clone(),
                peer_addr: advertised[i].2.clone(),
                peer_listen_addr: peer_addr.clone(),
                config_path,
                log_path,
                child: Mutex::new(None),
                paused: AtomicBool::new(false),
                channel: Mutex::new(connect(client_addr)),
                dir,
            });
        }
        Cluster { nodes, archive, archive_url, archive_endpoint, cluster_id: self.cluster_id.clone(), mounts }
    }
}

/// Three (or more) real `keepsake serve` processes. Node ids are 1..=n.
pub struct Cluster {
    nodes: Vec<NodeProc>,
    cluster_id: String,
    /// The local archive directory (used unless the cluster archives to S3).
    archive: TempDir,
    /// What the nodes are configured with: a directory or `s3://…`, and the S3 endpoint.
    archive_url: String,
    archive_endpoint: String,
    /// tmpfs data directories to unmount on drop.
    mounts: Vec<PathBuf>,
}

struct NodeProc {
    id: u64,
    http_addr: String,
    client_addr: String,
    /// What the other nodes dial…
    peer_addr: String,
    /// …and what this node listens on (the same unless peers go through proxies).
    peer_listen_addr: String,
    config_path: PathBuf,
    log_path: PathBuf,
    /// None once killed or stopped.
    child: Mutex<Option<Child>>,
    paused: AtomicBool,
    /// Replaced on restart, so clients never reuse a connection to the previous process.
    channel: Mutex<Channel>,
    /// Holds the data dir, config and log; removed when the cluster is dropped.
    dir: TempDir,
}

impl NodeProc {
    /// Starts `keepsake serve`, with `armed` (a crash-point variable and its value) when given.
    fn spawn(&self, armed: Option<(&str, &str)>) -> Child {
        let log =
            OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open the test node's log file");
        let log_err = log.try_clone().expect("duplicate the test node's log file handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keepsake"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        for var in OVERRIDING_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(S3_ENV);
        if let Some((var, point)) = armed {
            cmd.env(var, point);
        }
        keepsake::cli::die_with_parent(&mut cmd);
        cmd.spawn().unwrap_or_else(|e| panic!("cannot start `keepsake serve` for node {}: {e}", self.id))
    }

    fn pid(&self) -> Option<libc::pid_t> {
        lock(&self.child).as_ref().map(|c| c.id() as libc::pid_t)
    }

    fn log_tail(&self, lines: usize) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log_path.display()),
        }
    }
}

impl Cluster {
    /// A cluster of `n` nodes with the default test options.
    pub async fn start(n: usize) -> Cluster {
        Cluster::builder().nodes(n).start().await
    }

    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            nodes: 3,
            spares: 0,
            snapshot_every: 10_000,
            keep_after_snapshot: 1000,
            cluster_id: "keepsake-test".into(),
            bootstrap: true,
            s3_archive: None,
            archive_extra: String::new(),
            peer_proxies: false,
            tmpfs_bytes: None,
        }
    }

    /// Starts nodes 1..=n and waits until they agree on a leader.
    pub async fn launch(&self, n: usize) {
        for node in &self.nodes[..n] {
            *lock(&node.child) = Some(node.spawn(None));
        }
        self.wait_for_leader(START_TIMEOUT).await;
    }

    /// `ID=CLIENT/PEER,…` for every node (the `--members` format).
    pub fn members_flag(&self) -> String {
        self.nodes.iter().map(|n| format!("{}={}/{}", n.id, n.client_addr, n.peer_addr)).collect::<Vec<_>>().join(",")
    }

    /// A node's data directory (what `keepsake serve` is configured with).
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node_dir(id).join("data")
    }

    /// The cluster's id.
    pub fn id(&self) -> &str {
        &self.cluster_id
    }

    /// The directory holding the cluster's archive (`<dir>/keepsake-test/segments/…`), when it
    /// is local.
    pub fn archive_dir(&self) -> std::path::PathBuf {
        assert!(self.archive_endpoint.is_empty(), "this cluster archives to S3, not to a directory");
        self.archive.path().to_path_buf()
    }

    /// The cluster's archive, opened from the test process as the nodes open it.
    pub fn open_archive(&self) -> keepsake::archive::store::Archive {
        let config = keepsake::config::ArchiveConfig {
            url: self.archive_url.clone(),
            endpoint: self.archive_endpoint.clone(),
            region: S3_ENV[2].1.into(),
            access_key_id: S3_ENV[0].1.into(),
            secret_access_key: keepsake::config::Secret(S3_ENV[1].1.into()),
            ..Default::default()
        };
        keepsake::archive::store::Archive::open(&config, std::path::Path::new(&self.archive_url), &self.cluster_id)
            .expect("open the cluster's archive")
    }

    /// The archive's segment objects, sorted by first index, read through object_store.
    pub async fn segment_objects(&self) -> Vec<keepsake::archive::verify::Listed> {
        keepsake::archive::verify::list(&self.open_archive()).await.expect("list the archive's segments")
    }

    /// One archive object's bytes, by its full name as listed.
    pub async fn archive_object(&self, name: &str) -> Vec<u8> {
        use object_store::ObjectStoreExt;
        let store = self.open_archive().store;
        let got = store.get(&object_store::path::Path::from(name)).await.expect("get an archive object");
        got.bytes().await.expect("read an archive object").to_vec()
    }

    /// Replaces one archive object (to damage it on purpose).
    pub async fn put_archive_object(&self, name: &str, bytes: Vec<u8>) {
        use object_store::ObjectStoreExt;
        let store = self.open_archive().store;
        store.put(&object_store::path::Path::from(name), bytes.into()).await.expect("put an archive object");
    }

    pub async fn delete_archive_object(&self, name: &str) {
        use object_store::ObjectStoreExt;
        let store = self.open_archive().store;
        store.delete(&object_store::path::Path::from(name)).await.expect("delete an archive object");
    }

    /// `--archive URL [--endpoint E]`, as the CLI's archive commands take them.
    pub fn archive_args(&self) -> Vec<String> {
        let mut args = vec!["--archive".to_owned(), self.archive_url.clone()];
        if !self.archive_endpoint.is_empty() {
            args.extend(["--endpoint".to_owned(), self.archive_endpoint.clone()]);
        }
        args
    }

    /// Every node's client address, comma-separated (the CLI's `--endpoints`).
    pub fn endpoints(&self) -> String {
        self.nodes.iter().map(|n| n.client_addr.as_str()).collect::<Vec<_>>().join(",")
    }

    /// A node id not in `not`.
    pub fn other(&self, not: &[u64]) -> u64 {
        self.ids().into_iter().find(|id| !not.contains(id)).expect("the cluster has a node outside the given ones")
    }

    /// Every node id, running or not.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Nodes that are running and not paused.
    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| lock(&n.child).is_some() && !n.paused.load(Ordering::SeqCst))
            .map(|n| n.id)
            .collect()
    }

    pub fn is_running(&self, id: u64) -> bool {
        lock(&self.node(id).child).is_some()
    }

    pub fn client_addr(&self, id: u64) -> String {
        self.node(id).client_addr.clone()
    }

    /// The node's HTTP address (/metrics, /healthz, /readyz).
    pub fn http_addr(&self, id: u64) -> String {
        self.node(id).http_addr.clone()
    }

    pub fn peer_addr(&self, id: u64) -> String {
        self.node(id).peer_addr.clone()
    }

    /// The address the node listens on for peers (differs from `peer_addr` with proxies).
    pub fn peer_listen_addr(&self, id: u64) -> String {
        self.node(id).peer_listen_addr.clone()
    }

    /// If the node's process has exited on its own, reaps it and says how it ended.
    pub fn reap_exited(&self, id: u64) -> Option<std::process::ExitStatus> {
        let mut guard = lock(&self.node(id).child);
        let status = guard.as_mut()?.try_wait().ok().flatten()?;
        guard.take();
        Some(status)
    }

    /// The node process's resident memory, from /proc (None when it is not running).
    pub fn rss_bytes(&self, id: u64) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.node(id).pid()?)).ok()?;
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim();
        Some(kib.parse::<u64>().ok()? * 1024)
    }

    /// How many file descriptors the node process has open.
    pub fn open_fds(&self, id: u64) -> Option<usize> {
        Some(std::fs::read_dir(format!("/proc/{}/fd", self.node(id).pid()?)).ok()?.count())
    }

    /// The node's directory (data dir, node.toml, node.log).
    pub fn node_dir(&self, id: u64) -> PathBuf {
        self.node(id).dir.path().to_path_buf()
    }

    /// A lazily connected channel to the node's client port (never fails up front).
    pub fn channel(&self, id: u64) -> Channel {
        lock(&self.node(id).channel).clone()
    }

    pub fn store(&self, id: u64) -> StoreClient<Channel> {
        StoreClient::new(self.channel(id))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn admin(&self, id: u64) -> AdminClient<Channel> {
        AdminClient::new(self.channel(id))
    }

    /// Store clients for the given nodes, in that order.
    pub fn stores(&self, ids: &[u64]) -> Vec<StoreClient<Channel>> {
        ids.iter().map(|&id| self.store(id)).collect()
    }

    /// The node's own view of itself (Admin.NodeStatus, 500 ms deadline).
    pub async fn get_node_status(&self, id: u64) -> Result<NodeStatus, Status> {
        let mut admin = self.admin(id);
        bounded_for(
            Duration::from_secs(1),
            admin.get_node_status(request(NodeStatusRequest {}, Duration::from_millis(500))),
        )
        .await
    }

    /// The leader as the live nodes see it now: a node reporting itself leader (highest term).
    pub async fn leader_id(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for id in self.live_ids() {
            if let Ok(s) = self.get_node_status(id).await {
                if s.role == "leader" && best.is_none_or(|(term, _)| s.term > term) {
                    best = Some((s.term, s.node_id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Polls NodeStatus on every live node (every 50 ms) until all of them name the same live
    /// leader and that leader reports itself leader; panics after `timeout`, or at once when a
    /// node has exited on its own.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        loop {
            self.check_no_node_exited();
            let live = self.live_ids();
            assert!(!live.is_empty(), "wait_for_leader: no node is running");
            let mut views = Vec::with_capacity(live.len());
            for &id in &live {
                match self.get_node_status(id).await {
                    Ok(s) => views.push(s),
                    Err(e) => {
                        last = format!("node {id} did not answer NodeStatus: {:?} {}", e.code(), e.message());
                        break;
                    }
                }
            }
            if views.len() == live.len() {
                if let Some(leader) = agreed_leader(&views, &live) {
                    return leader;
                }
                last = views
                    .iter()
                    .map(|s| format!("node {}: {} term {} leader {:?}", s.node_id, s.role, s.term, s.leader_id))
                    .collect::<Vec<_>>()
                    .join("; ");
            }
            if Instant::now() >= deadline {
                panic!("live nodes {live:?} did not agree on a leader within {timeout:?}; last seen: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes `id` the leader (it must be caught up enough to win), retrying leader transfers
    /// while elections settle; panics after 60 s.
    pub async fn make_leader(&self, id: u64) {
        let done = eventually(Duration::from_secs(60), || async {
            let leader = self.leader_id().await?;
            if leader == id {
                return Some(());
            }
            let to = TransferLeaderRequest { to_node_id: id };
            let _ = self.admin(leader).transfer_leader(request(to, Duration::from_secs(10))).await;
            (self.leader_id().await == Some(id)).then_some(())
        })
        .await;
        assert!(done.is_some(), "node {id} did not become the leader");
    }

    /// Polls NodeStatus until the node's applied index is at least `index`.
    pub async fn wait_for_applied(&self, id: u64, index: u64, timeout: Duration) -> NodeStatus {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match self.get_node_status(id).await {
                Ok(s) if s.applied_index >= index => return s,
                Ok(s) => {
                    last = format!(
                        "applied {} (last log {}, committed {}, snapshot {}, role {})",
                        s.applied_index, s.last_log_index, s.committed_index, s.snapshot_index, s.role
                    )
                }
                Err(e) => last = format!("NodeStatus failed: {:?} {}", e.code(), e.message()),
            }
            if Instant::now() >= deadline {
                panic!("node {id} did not apply up to index {index} within {timeout:?}; last seen: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Admin.Digest on one node (index 0: its applied index).
    pub async fn digest(&self, id: u64, index: u64) -> DigestResponse {
        let mut admin = self.admin(id);
        bounded(admin.digest(request(DigestRequest { index }, RPC_TIMEOUT)))
            .await
            .unwrap_or_else(|e| panic!("Digest(index {index}) on node {id} failed: {:?} {}", e.code(), e.message()))
    }

    /// Every node's digest at `index`, once each has applied it (waiting up to `timeout` each).
    pub async fn digests_at(&self, index: u64, timeout: Duration) -> Vec<(u64, DigestResponse)> {
        let mut digests = Vec::new();
        for id in self.ids() {
            self.wait_for_applied(id, index, timeout).await;
            digests.push((id, self.digest(id, index).await));
        }
        digests
    }

    /// Admin.TriggerSnapshot on one node.
    pub async fn trigger_snapshot(&self, id: u64) -> TriggerSnapshotResponse {
        let mut admin = self.admin(id);
        bounded_for(
            Duration::from_secs(20),
            admin.trigger_snapshot(request(TriggerSnapshotRequest {}, Duration::from_secs(15))),
        )
        .await
        .unwrap_or_else(|e| panic!("TriggerSnapshot on node {id} failed: {:?} {}", e.code(), e.message()))
    }

    /// SIGKILL, then reap the process.
    pub fn kill(&self, id: u64) {
        let node = self.node(id);
        let mut child = lock(&node.child).take().unwrap_or_else(|| panic!("kill: node {id} is not running"));
        if node.paused.swap(false, Ordering::SeqCst) {
            signal(child.id() as libc::pid_t, libc::SIGCONT);
        }
        child.kill().unwrap_or_else(|e| panic!("cannot SIGKILL node {id}: {e}"));
        child.wait().unwrap_or_else(|e| panic!("cannot reap node {id}: {e}"));
    }

    /// SIGTERM, then wait up to 10 s for a clean exit; panics (after SIGKILL) if it does not exit.
    pub async fn stop(&self, id: u64) {
        let node = self.node(id);
        let pid = node.pid().unwrap_or_else(|| panic!("stop: node {id} is not running"));
        if node.paused.swap(false, Ordering::SeqCst) {
            signal(pid, libc::SIGCONT);
        }
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let exited = {
                let mut guard = lock(&node.child);
                let state = guard.as_mut().map(|c| c.try_wait());
                match state {
                    Some(Ok(Some(status))) => {
                        guard.take();
                        Some(status)
                    }
                    Some(Ok(None)) => None,
                    Some(Err(e)) => panic!("cannot wait for node {id}: {e}"),
                    None => panic!("stop: node {id} was reaped by someone else"),
                }
            };
            if exited.is_some() {
                return;
            }
            if Instant::now() >= deadline {
                if let Some(mut child) = lock(&node.child).take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                panic!("node {id} did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed it)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a killed or stopped node again: same config, data dir and ports. Does not wait.
    pub fn restart(&self, id: u64) {
        self.restart_with(id, None);
    }

    /// `restart`, with the crash point `point` armed (`KEEPSAKE_CRASH_AT`, see
    /// raft/src/crash.rs): the node SIGKILLs itself when it gets there.
    pub fn restart_crashing_at(&self, id: u64, point: &str) {
        self.restart_with(id, Some(("KEEPSAKE_CRASH_AT", point)));
    }

    /// `restart`, with the node set to SIGSTOP itself at `point` (`KEEPSAKE_STOP_AT`); see
    /// `wait_for_stop`, then `resume`.
    pub fn restart_stopping_at(&self, id: u64, point: &str) {
        self.restart_with(id, Some(("KEEPSAKE_STOP_AT", point)));
    }

    fn restart_with(&self, id: u64, armed: Option<(&str, &str)>) {
        let node = self.node(id);
        let mut child = lock(&node.child);
        assert!(child.is_none(), "restart: node {id} is still running; kill or stop it first");
        node.paused.store(false, Ordering::SeqCst);
        *child = Some(node.spawn(armed));
        *lock(&node.channel) = connect(&node.client_addr);
    }

    /// Waits for a node armed by `restart_crashing_at` to die at its crash point; panics if it
    /// is still running after `timeout` or ended any other way.
    pub async fn wait_for_crash(&self, id: u64, point: &str, timeout: Duration) {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.reap_exited(id) {
                break status;
            }
            if Instant::now() >= deadline {
                panic!("node {id} did not reach crash point {point} within {timeout:?}:\n{}", self.log_tail(id, 20));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL), "node {id} ended with {status}, not at its crash point");
        let log = std::fs::read_to_string(&self.node(id).log_path).unwrap_or_default();
        assert!(log.contains(&format!("crash point {point}")), "node {id} was killed, but not at {point}");
    }

    /// Waits for a node armed by `restart_stopping_at` to stop itself at its point; panics if
    /// it has not within `timeout`.
    pub async fn wait_for_stop(&self, id: u64, point: &str, timeout: Duration) {
        let node = self.node(id);
        let deadline = Instant::now() + timeout;
        loop {
            let pid = node.pid().unwrap_or_else(|| panic!("node {id} is not running"));
            let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            if all_threads_stopped(pid) && log.contains(&format!("crash point {point}: SIGSTOP")) {
                node.paused.store(true, Ordering::SeqCst);
                return;
            }
            if Instant::now() >= deadline {
                panic!("node {id} did not stop at {point} within {timeout:?}:\n{}", self.log_tail(id, 20));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGSTOP: the process stays alive but answers nothing (returns once every thread stopped).
    pub fn pause(&self, id: u64) {
        let node = self.node(id);
        let pid = node.pid().unwrap_or_else(|| panic!("pause: node {id} is not running"));
        signal(pid, libc::SIGSTOP);
        node.paused.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(pid) {
            assert!(Instant::now() < deadline, "pause: node {id}'s threads did not all stop within 5 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self, id: u64) {
        let node = self.node(id);
        let pid = node.pid().unwrap_or_else(|| panic!("resume: node {id} is not running"));
        signal(pid, libc::SIGCONT);
        node.paused.store(false, Ordering::SeqCst);
    }

    /// The last `lines` lines of a node's log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        self.node(id).log_tail(lines)
    }

    fn node(&self, id: u64) -> &NodeProc {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("there is no node {id} in this cluster (ids {:?})", self.ids()))
    }

    /// Panics, with the node's log, when a node the harness did not stop has exited.
    pub fn check_no_node_exited(&self) {
        for node in &self.nodes {
            let exited = {
                let mut guard = lock(&node.child);
                let state = guard.as_mut().map(|c| c.try_wait());
                match state {
                    Some(Ok(Some(status))) => {
                        guard.take();
                        Some(status)
                    }
                    _ => None,
                }
            };
            if let Some(status) = exited {
                panic!(
                    "node {} exited on its own ({status}); last lines of {}:\n{}",
                    node.id,
                    node.log_path.display(),
                    node.log_tail(LOG_TAIL_LINES)
                );
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(mut child) = lock(&node.child).take() {
                if node.paused.swap(false, Ordering::SeqCst) {
                    signal(child.id() as libc::pid_t, libc::SIGCONT);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for dir in &self.mounts {
            unmount(dir);
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "----- node {} (client {}, peer {}): last {LOG_TAIL_LINES} lines of {} -----\n{}",
                    node.id,
                    node.client_addr,
                    node.peer_addr,
                    node.log_path.display(),
                    node.log_tail(LOG_TAIL_LINES)
                );
            }
        }
    }
}

/// The leader every view names, if they all name the same live node and it says it leads.
fn agreed_leader(views: &[NodeStatus], live: &[u64]) -> Option<u64> {
    let leader = views.first()?.leader_id?;
    if !live.contains(&leader) || views.iter().any(|v| v.leader_id != Some(leader)) {
        return None;
    }
    let own = views.iter().find(|v| v.node_id == leader)?;
    (own.role == "leader").then_some(leader)
}

fn node_config(
    options: &ClusterBuilder,
    id: u64,
    data_dir: &std::path::Path,
    client_addr: &str,
    peer_addr: &str,
    members: &[(u64, String, String)],
) -> String {
    let mut text = format!(
        "node_id = {id}\n\
         cluster_id = {}\n\
         data_dir = {}\n\
         client_addr = {}\n\
         peer_addr = {}\n\
         \n\
         [raft]\n\
         heartbeat_interval_ms = 50\n\
         election_timeout_min_ms = 150\n\
         election_timeout_max_ms = 450\n\
         snapshot_every_entries = {}\n\
         keep_entries_after_snapshot = {}\n\
         install_snapshot_timeout_ms = 10000\n",
        toml_string(&options.cluster_id),
        toml_string(&data_dir.to_string_lossy()),
        toml_string(client_addr),
        toml_string(peer_addr),
        options.snapshot_every,
        options.keep_after_snapshot,
    );
    for (member, client, peer) in members {
        text.push_str(&format!(
            "\n[[members]]\nid = {member}\nclient_addr = {}\npeer_addr = {}\n",
            toml_string(client),
            toml_string(peer)
        ));
    }
    text
}

/// The address node `id`'s outgoing peer connections come from when peers go through proxies.
pub fn peer_source_ip(id: u64) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 1, id as u8)
}

/// Mounts a tmpfs of `bytes` at `dir` (created first).
fn mount_tmpfs(dir: &std::path::Path, bytes: u64) {
    std::fs::create_dir_all(dir).expect("create a mount point");
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "cannot mount a tmpfs at {} (the full-disk tests need root): {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lazily unmounts `dir` (nothing may use it any more: its node is gone).
fn unmount(dir: &std::path::Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Where test processes reserve ports: one lock file per port, locked for the life of the
/// process that holds it (the kernel drops the lock when that process dies, however it dies).
const PORT_LOCKS: &str = "keepsake-test-ports";

/// The reserved port range: below the kernel's ephemeral range (32768–60999 by default), so an
/// outgoing connection never takes a node's port between its choice and the node's bind, or
/// while a killed node is down; and below the bench tests' 20000–30100 blocks.
const TEST_PORTS: Range<u16> = 10_000..20_000;

/// `n` distinct ports on 127.0.0.1, each free when chosen and reserved for this test process
/// (see `PORT_LOCKS`), so that neither a concurrent test nor an outgoing connection can take it
/// before a node listens on it.
fn free_ports(n: usize) -> Vec<u16> {
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join(PORT_LOCKS);
    std::fs::create_dir_all(&dir).expect("create the test port-lock directory");
    let span = u64::from(TEST_PORTS.end - TEST_PORTS.start);
    let mut next = u64::from(std::process::id()).wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut held = lock(&HELD);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        if ports.len() == n {
            break;
        }
        next = next.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let port = TEST_PORTS.start + ((next >> 33) % span) as u16;
        if ports.contains(&port) {
            continue;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
            .expect("open a test port-lock file");
        if try_lock(&file) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            held.push(file);
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "not enough free ports in {TEST_PORTS:?} on 127.0.0.1");
    ports
}

/// An exclusive `flock` on `file`, if no other open file holds one (`File::try_lock` needs
/// Rust 1.89, above the crate's minimum).
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor the `File` owns and keeps open.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

pub fn connect(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a node address makes a valid URI")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Runs the `keepsake` binary with `args` (and the S3 test credentials); returns its exit code
/// and everything it printed.
pub fn keepsake_cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String) {
    let (status, text) = keepsake_cli_crashing_at(args, None);
    (status.code().unwrap_or(-1), text)
}

/// A client command against `cluster` (`--endpoints` of every node appended).
pub fn cluster_cli(cluster: &Cluster, args: &[&str]) -> (i32, String) {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--endpoints".into(), cluster.endpoints()]);
    keepsake_cli(&all)
}

/// An archive command on `cluster`'s archive (`--cluster-id` and the archive flags appended).
pub fn archive_cli(cluster: &Cluster, args: &[&str]) -> (i32, String) {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--cluster-id".into(), cluster.id().into()]);
    all.extend(cluster.archive_args());
    keepsake_cli(&all)
}

/// `keepsake_cli` with the crash point `crash_at` armed (see raft/src/crash.rs); returns the
/// exit status, so that a test can tell a crash from an exit.
pub fn keepsake_cli_crashing_at<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    crash_at: Option<&str>,
) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keepsake"));
    cmd.args(args)
        .envs(S3_ENV)
        .env_remove("KEEPSAKE_ENDPOINTS")
        .env_remove("KEEPSAKE_CRASH_AT")
        .env_remove("KEEPSAKE_STOP_AT")
        .stdin(Stdio::null());
    if let Some(point) = crash_at {
        cmd.env("KEEPSAKE_CRASH_AT", point);
    }
    keepsake::cli::die_with_parent(&mut cmd);
    let out = cmd.output().expect("run the keepsake binary");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

/// The JSON object a command printed (its one line starting with `{`).
pub fn json_line(text: &str) -> serde_json::Value {
    let line = text.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON in: {text}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// Runs `keepsake restore` from `from`'s archive (local or S3) into node 1 of `to`, with
/// `extra` flags; returns its exit code and output.
pub fn restore_cli(from: &Cluster, to: &Cluster, extra: &[&str]) -> (i32, String) {
    keepsake_cli(&restore_args(from, to, extra))
}

/// The arguments `restore_cli` runs `keepsake` with.
pub fn restore_args(from: &Cluster, to: &Cluster, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["restore".to_owned(), "--cluster-id".into(), from.id().into()];
    args.extend(from.archive_args());
    args.extend(["--new-cluster-id".into(), to.id().into(), "--members".into(), to.members_flag()]);
    args.extend(["--data-dir".into(), to.data_dir(1).to_string_lossy().into_owned()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// One bodiless HTTP/1.1 request to `addr`; returns the status code and the whole response.
pub fn http_request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    Ok((code, response))
}

/// The value of one metric in a node's `/metrics` (panics if it is missing).
pub fn metric(cluster: &Cluster, id: u64, name: &str) -> f64 {
    let (code, text) = http_request(&cluster.http_addr(id), "GET", "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} is not in /metrics: {text}"))
}

/// Whether every thread of `pid` is stopped: a SIGSTOP stops the threads one by one, and a
/// thread still running may yet finish a request.
fn all_threads_stopped(pid: libc::pid_t) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    let mut any = false;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        if state != Some('T') {
            return false;
        }
        any = true;
    }
    any
}

fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is a child we have not reaped.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed: {}", std::io::Error::last_os_error());
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Request helpers
// ---------------------------------------------------------------------------------------------

/// A request carrying a gRPC deadline.
pub fn request<T>(message: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(timeout);
    r
}

/// Awaits a unary call, giving up (DEADLINE_EXCEEDED) a second after `RPC_TIMEOUT`.
pub async fn bounded<T>(call: impl Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T, Status> {
    bounded_for(RPC_TIMEOUT + Duration::from_secs(1), call).await
}

/// Awaits a unary call for at most `limit`.
pub async fn bounded_for<T>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!("the test gave up waiting after {limit:?}"))),
    }
}

/// Runs a whole test body, failing it if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, body).await {
        Ok(v) => v,
        Err(_) => panic!("the test did not finish within {limit:?}"),
    }
}

/// Polls `probe` every 50 ms until it returns Some, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn key(user: &str, collection: &str, item_id: &str) -> ItemKey {
    ItemKey { user_id: user.into(), collection: collection.into(), item_id: item_id.into() }
}

/// The id of the i-th generated item.
pub fn item_id(i: usize) -> String {
    format!("item-{i:04}")
}

/// The value the i-th generated item of (user, collection) is written with.
pub fn value_of(user: &str, collection: &str, i: usize) -> Vec<u8> {
    format!("value of {user}/{collection}/{}", item_id(i)).into_bytes()
}

pub async fn put(
    client: &mut StoreClient<Channel>,
    user: &str,
    collection: &str,
    item_id: &str,
    value: impl Into<Vec<u8>>,
) -> Result<PutResponse, Status> {
    put_if(client, user, collection, item_id, value, None).await
}

/// Put with an `if_revision` precondition.
pub async fn put_if(
    client: &mut StoreClient<Channel>,
    user: &str,
    collection: &str,
    item_id: &str,
    value: impl Into<Vec<u8>>,
    if_revision: Option<u64>,
) -> Result<PutResponse, Status> {
    let message = PutRequest {
        key: Some(key(user, collection, item_id)),
        value: value.into(),
        content_type: "text/plain".into(),
        if_revision,
        durability: 0,
    };
    bounded(client.put(request(message, RPC_TIMEOUT))).await
}

/// A linearizable Get of the item.
pub async fn get(
    client: &mut StoreClient<Channel>,
    user: &str,
    collection: &str,
    item_id: &str,
) -> Result<Item, Status> {
    get_with(client, user, collection, item_id, Consistency::Linearizable).await
}

pub async fn get_with(
    client: &mut StoreClient<Channel>,
    user: &str,
    collection: &str,
    item_id: &str,
    consistency: Consistency,
) -> Result<Item, Status> {
    let message = GetRequest { key: Some(key(user, collection, item_id)), consistency: consistency as i32 };
    let response = bounded(client.get(request(message, RPC_TIMEOUT))).await?;
    response.item.ok_or_else(|| Status::internal("a GetResponse without an item"))
}

pub async fn delete(
    client: &mut StoreClient<Channel>,
    user: &str,
    collection: &str,
    item_id: &str,
) -> Result<DeleteResponse, Status> {
    let message = DeleteRequest { key: Some(key(user, collection, item_id)), if_revision: None, durability: 0 };
    bounded(client.delete(request(message, RPC_TIMEOUT))).await
}

/// Every item of a collection, following `next_page_token` (at most 1,000 pages).
pub async fn list_all(
    client: &mut StoreClient<Channel>,
    user: &str,
    collection: &str,
    consistency: Consistency,
    page_size: u32,
) -> Result<Vec<Item>, Status> {
    let mut items = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let message = ListRequest {
            user_id: user.into(),
            collection: collection.into(),
            page_token: token.clone(),
            page_size,
            consistency: consistency as i32,
        };
        let page = bounded(client.list(request(message, RPC_TIMEOUT))).await?;
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return Ok(items);
        }
        token = page.next_page_token;
    }
    Err(Status::internal(format!("List of {user}/{collection} did not end within 1000 pages")))
}

/// Writes items `ids` of (user, collection) with `value_of`, round-robin over `clients`,
/// `concurrency` at a time; panics on the first failed write. Returns (item id, response).
pub async fn write_items(
    clients: &[StoreClient<Channel>],
    user: &str,
    collection: &str,
    ids: Range<usize>,
    concurrency: usize,
) -> Vec<(String, PutResponse)> {
    assert!(!clients.is_empty(), "write_items needs at least one client");
    let writes = ids.map(|i| {
        let mut client = clients[i % clients.len()].clone();
        let (user, collection) = (user.to_owned(), collection.to_owned());
        async move {
            let id = item_id(i);
            match put(&mut client, &user, &collection, &id, value_of(&user, &collection, i)).await {
                Ok(r) => Ok((id, r)),
                Err(e) => Err(format!("put {user}/{collection}/{id}: {:?} {}", e.code(), e.message())),
            }
        }
    });
    let results: Vec<Result<(String, PutResponse), String>> =
        futures::stream::iter(writes).buffer_unordered(concurrency.max(1)).collect().await;
    results.into_iter().map(|r| r.unwrap_or_else(|e| panic!("a write failed on a healthy cluster: {e}"))).collect()
}

/// Linearizable Gets of items `ids` of (user, collection), `concurrency` at a time; returns a
/// description of every item that is missing or has the wrong value.
pub async fn check_items(
    client: &StoreClient<Channel>,
    user: &str,
    collection: &str,
    ids: Range<usize>,
    concurrency: usize,
) -> Vec<String> {
    let reads = ids.map(|i| {
        let mut client = client.clone();
        let (user, collection) = (user.to_owned(), collection.to_owned());
        async move {
            let id = item_id(i);
            match get(&mut client, &user, &collection, &id).await {
                Ok(item) if item.value == value_of(&user, &collection, i) => None,
                Ok(item) => Some(format!("{id}: wrong value {:?}", String::from_utf8_lossy(&item.value))),
                Err(e) => Some(format!("{id}: {:?} {}", e.code(), e.message())),
            }
        }
    });
    futures::stream::iter(reads)
        .buffer_unordered(concurrency.max(1))
        .filter_map(|r| async move { r })
        .collect::<Vec<String>>()
        .await
}
