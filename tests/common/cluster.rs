//! A `Cluster` of real `keepsake serve` processes on 127.0.0.1, built by `ClusterBuilder`: each
//! node with its own ports, temporary directory and test-speed Raft timings; kill, stop, restart
//! (with a crash or stop point armed), pause and resume; leader helpers; tmpfs data directories.
//! Dropping it kills every node still running and, when a test panics, prints each node's log.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use keepsake::proto::v1::admin_client::AdminClient;
use keepsake::proto::v1::store_client::StoreClient;
use keepsake::proto::v1::{
    BackupStatusRequest, BackupStatusResponse, DigestRequest, DigestResponse, NodeStatus, NodeStatusRequest,
    TransferLeaderRequest, TriggerSnapshotRequest, TriggerSnapshotResponse,
};
use tempfile::TempDir;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;

use super::os::{lock, signal};
use super::ports::free_ports;
use super::rpc::{bounded, bounded_for, connect, eventually, request, RPC_TIMEOUT};
use super::s3::{S3Server, S3_ENV};

/// How long `start` waits for the new cluster to elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `stop` waits for a node to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each node's log printed when a test panics.
const LOG_TAIL_LINES: usize = 40;
/// Largest message a test client accepts (List pages and export chunks stay far below).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// `KEEPSAKE_*` variables that would override the written config file.
const OVERRIDING_VARS: [&str; 10] = [
    "KEEPSAKE_CRASH_AT",
    "KEEPSAKE_STOP_AT",
    "KEEPSAKE_CLOCK_OFFSET_MS",
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
    /// Nodes whose clock runs this many milliseconds off (needs the failpoints feature).
    clock_offsets: Vec<(u64, i64)>,
    /// Each node reads copies of its TLS files in its own directory (`tls/`), which a test may
    /// replace; otherwise every node reads the shared test certificates.
    own_certs: bool,
    /// `auth.tokens_file` of every node.
    tokens_file: Option<PathBuf>,
    /// `archive.key_file` of every node: the archive is encrypted.
    key_file: Option<PathBuf>,
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
        let (initial, new) = (self.nodes, self.bootstrap);
        let cluster = self.prepare();
        cluster.launch(initial).await;
        if new {
            cluster.wait_until_settled().await;
        }
        cluster
    }

    /// The cluster's own id (default `keepsake-test`).
    pub fn cluster_id(mut self, id: &str) -> Self {
        self.cluster_id = id.to_owned();
        self
    }

    /// Each node reads copies of the test certificates in `<node dir>/tls/`
    /// (`Cluster::node_tls_dir`), so a test can rotate them.
    pub fn own_certs(mut self) -> Self {
        self.own_certs = true;
        self
    }

    /// Every node accepts the bearer tokens in `file` (`auth.tokens_file`).
    pub fn tokens_file(mut self, file: &Path) -> Self {
        self.tokens_file = Some(file.to_path_buf());
        self
    }

    /// Every node seals the archive with the key ring in `file` (`archive.key_file`); the test's
    /// own readers (`Cluster::open_archive`, `archive_args`) use it too.
    pub fn archive_key_file(mut self, file: &Path) -> Self {
        self.key_file = Some(file.to_path_buf());
        self.archive_option("key_file", &toml_string(&file.display().to_string()))
    }

    /// Nodes start with no initial members: the cluster already exists in a seeded data dir.
    pub fn no_bootstrap(mut self) -> Self {
        self.bootstrap = false;
        self
    }

    /// Runs node `id` with its clock `ms` milliseconds off (`KEEPSAKE_CLOCK_OFFSET_MS`, a
    /// failpoints hook: raft/src/clock.rs).
    pub fn clock_offset(mut self, id: u64, ms: i64) -> Self {
        self.clock_offsets.push((id, ms));
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
            let tls_dir = self.own_certs.then(|| super::tls::copy_node_files(&dir.path().join("tls"), *id));
            config.push_str(&super::tls::node_tls_config(tls_dir.as_deref(), *id));
            if let Some(file) = &self.tokens_file {
                config.push_str(&format!("\n[auth]\ntokens_file = {}\n", toml_string(&file.display().to_string())));
            }
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
                clock_offset_ms: self.clock_offsets.iter().find(|(n, _)| n == id).map(|(_, ms)| *ms),
                dir,
            });
        }
        Cluster {
            nodes,
            archive,
            archive_url,
            archive_endpoint,
            cluster_id: self.cluster_id.clone(),
            mounts,
            key_file: self.key_file.clone(),
        }
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
    /// The archive's key ring, when it is encrypted.
    key_file: Option<PathBuf>,
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
    /// `KEEPSAKE_CLOCK_OFFSET_MS` for this node, if its clock is skewed.
    clock_offset_ms: Option<i64>,
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
        if let Some(ms) = self.clock_offset_ms {
            cmd.env("KEEPSAKE_CLOCK_OFFSET_MS", ms.to_string());
        }
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
            clock_offsets: Vec::new(),
            own_certs: false,
            tokens_file: None,
            key_file: None,
        }
    }

    /// Waits until a new cluster's first leader has written its history record in the newest
    /// digest format (keepsake::upgrade may take a few seconds when a member answered late), so
    /// a test that compares log indices sees no write of the cluster's own.
    async fn wait_until_settled(&self) {
        let settled = super::rpc::eventually(Duration::from_secs(20), || async {
            let leader = self.leader_id().await?;
            let status = self.get_node_status(leader).await.ok()?;
            (status.digest_format == 2).then_some(())
        })
        .await;
        assert!(settled.is_some(), "the new cluster's leader did not settle on digest format 2 within 20 s");
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
    pub fn open_archive(&self) -> keepsake_archive::store::Archive {
        self.open_archive_at(&self.archive_url)
    }

    /// This cluster's root in the archive at `url`, reached as the nodes reach theirs.
    pub fn open_archive_at(&self, url: &str) -> keepsake_archive::store::Archive {
        let connection = keepsake_archive::store::Connection {
            endpoint: self.archive_endpoint.clone(),
            region: S3_ENV[2].1.into(),
            access_key_id: S3_ENV[0].1.into(),
            secret_access_key: S3_ENV[1].1.into(),
            // `Default`'s timeout is zero: 30 s, the default of the nodes' `archive.request_timeout_ms`.
            request_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let archive =
            keepsake_archive::store::Archive::open(url, &connection, &self.cluster_id).expect("open the archive");
        match &self.key_file {
            None => archive,
            Some(file) => {
                let ring = keepsake_archive::keys::KeySource::File(file.clone()).load().expect("the test's key ring");
                archive.with_keys(keepsake_archive::sealing::Keys::sealed(ring))
            }
        }
    }

    /// The archive's segment objects, sorted by first index, read through object_store.
    pub async fn segment_objects(&self) -> Vec<keepsake_archive::verify::Listed> {
        keepsake_archive::verify::list(&self.open_archive()).await.expect("list the archive's segments")
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

    /// `--archive URL [--endpoint E] [--key-file F]`, as the CLI's archive commands take them.
    pub fn archive_args(&self) -> Vec<String> {
        let mut args = vec!["--archive".to_owned(), self.archive_url.clone()];
        if !self.archive_endpoint.is_empty() {
            args.extend(["--endpoint".to_owned(), self.archive_endpoint.clone()]);
        }
        if let Some(file) = &self.key_file {
            args.extend(["--key-file".to_owned(), file.display().to_string()]);
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

    /// Where node `id` reads its TLS files from, with `own_certs` (`ca.crt`, `node-<id>.crt`,
    /// `node-<id>.key`).
    pub fn node_tls_dir(&self, id: u64) -> PathBuf {
        self.node_dir(id).join("tls")
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

    /// The archive as node `id` sees it (Admin.BackupStatus; panics if it does not answer).
    pub async fn backup_status(&self, id: u64) -> BackupStatusResponse {
        bounded(self.admin(id).backup_status(request(BackupStatusRequest {}, Duration::from_secs(5))))
            .await
            .expect("BackupStatus answers")
    }

    /// The node among `ids` that says it leads, once one does (panics after `timeout`). Unlike
    /// `wait_for_leader`, asks only those nodes: one that is frozen still believes it leads.
    pub async fn leader_among(&self, ids: &[u64], timeout: Duration) -> u64 {
        let found = eventually(timeout, || async {
            for id in ids {
                if self.get_node_status(*id).await.is_ok_and(|s| s.role == "leader") {
                    return Some(*id);
                }
            }
            None
        })
        .await;
        found.unwrap_or_else(|| panic!("none of nodes {ids:?} became leader within {timeout:?}"))
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

    /// Points a stopped node's config at another archive URL (for the next `restart`).
    pub fn set_archive_url(&self, id: u64, url: &str) {
        let path = &self.node(id).config_path;
        let config = std::fs::read_to_string(path).expect("read node.toml");
        let line = format!("url = {}", toml_string(&self.archive_url));
        assert!(config.contains(&line), "node {id}'s config names the cluster's archive: {config}");
        let config = config.replace(&line, &format!("url = {}", toml_string(url)));
        std::fs::write(path, config).expect("write node.toml");
    }

    /// Adds `key = value` to a stopped node's `[archive]` table (for the next `restart`).
    pub fn add_archive_option(&self, id: u64, key: &str, value: &str) {
        let path = &self.node(id).config_path;
        let config = std::fs::read_to_string(path).expect("read node.toml");
        let config = config.replacen("\n[archive]\n", &format!("\n[archive]\n{key} = {value}\n"), 1);
        std::fs::write(path, config).expect("write node.toml");
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
