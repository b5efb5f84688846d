//! Node configuration: a TOML file, overridden by `KEEPSAKE_*` environment variables and flags
//! (clap resolves flag-over-environment; both win over the file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::Limits;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, unique in the cluster, above 0.
    pub node_id: u64,
    /// Names the cluster (and, later, its archive).
    pub cluster_id: String,
    pub data_dir: PathBuf,
    /// Client port (Store, Admin, health, reflection): listened on and advertised to peers.
    pub client_addr: String,
    /// Peer port (the Raft transport).
    pub peer_addr: String,
    /// The local IP address this node's outgoing peer connections come from (a multi-homed
    /// host, or a firewall keyed by source address). Empty: the OS chooses.
    pub peer_source_ip: String,
    /// HTTP port: Prometheus `/metrics`, `/healthz`, `/readyz`. Empty: not served.
    pub http_addr: String,
    /// The initial voters. A node whose data directory is new bootstraps the cluster with them;
    /// once the cluster exists, membership changes go through `keepsake cluster`.
    pub members: Vec<Member>,
    pub raft: RaftConfig,
    pub archive: ArchiveConfig,
    pub limits: Limits,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
}

/// Who may call what on the client port (docs/security.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer tokens (`keepsake token create`), kept hashed; reloaded when it changes. Empty:
    /// clients are identified by their certificates alone.
    pub tokens_file: PathBuf,
}

/// TLS on every port (docs/security.md). Required unless plaintext is chosen on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster's CA certificate (PEM): every peer's and client certificate must chain to it.
    pub ca: PathBuf,
    /// This node's certificate (PEM), naming its node id (`keepsake cert create-node`).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// Serve every port in plaintext, with no authentication: for a test bench only. `serve`
    /// warns at every start.
    pub insecure: bool,
}

impl TlsConfig {
    /// The files to serve TLS with, or None in insecure mode; an error when neither is chosen.
    pub fn files(&self) -> Result<Option<crate::tls::material::TlsFiles>, ConfigError> {
        let set = [&self.ca, &self.cert, &self.key].iter().filter(|p| !p.as_os_str().is_empty()).count();
        match (self.insecure, set) {
            (true, 0) => Ok(None),
            (true, _) => Err(ConfigError::Invalid(
                "tls.insecure is set together with TLS files: choose one (remove tls.insecure to serve TLS)".into(),
            )),
            (false, 3) => Ok(Some(crate::tls::material::TlsFiles {
                ca: self.ca.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
            })),
            (false, _) => Err(ConfigError::Invalid(
                "TLS is not configured: set tls.ca, tls.cert and tls.key (`keepsake cert` makes them), or serve \
                 plaintext on purpose with --insecure (tls.insecure = true)"
                    .into(),
            )),
        }
    }
}

/// Continuous backup to object storage (docs/design.md §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `s3://bucket/prefix`, `file:///path` or a plain directory path. Required: a node refuses
    /// to start without one, rather than archive onto its own disk by default.
    pub url: String,
    /// S3 endpoint for S3-compatible servers (e.g. `http://127.0.0.1:9000`); empty: AWS.
    pub endpoint: String,
    /// S3 region; empty: `AWS_REGION` or `us-east-1`.
    pub region: String,
    /// S3 credentials; empty: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or the instance's
    /// role). Prefer the environment: a config file is easier to leak.
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// Address buckets as `bucket.endpoint` rather than `endpoint/bucket` (path style, the
    /// default, which S3-compatible servers expect).
    pub virtual_hosted_style: bool,
    /// Cut a segment once it holds this many bytes of entries.
    pub max_segment_bytes: u64,
    /// Cut a segment once its oldest entry has waited this long.
    pub max_segment_age_ms: u64,
    /// Give up on one object-store request after this long (the archiver then retries it).
    pub request_timeout_ms: u64,
    /// Refuse writes (RESOURCE_EXHAUSTED) while the committed entries not yet archived hold
    /// more than this many bytes…
    pub max_backlog_bytes: u64,
    /// …or while the oldest of them has waited longer than this. 0 turns either check off.
    pub max_backlog_seconds: u64,
    /// Upload an archive snapshot once the node's Raft snapshot is this many entries past the
    /// newest one in the archive (0: never by entries)…
    pub snapshot_every_entries: u64,
    /// …or once the newest one is this old and writes came since (0: never by time).
    pub snapshot_every_seconds: u64,
    /// How far back a restore can reach (e.g. `30d`, `12h`); older snapshots and segments are
    /// deleted once no restore inside the window can need them. Empty or `0`: keep everything.
    pub retention: String,
    /// Retention leaves a chunk no manifest names alone until it is this old: it may belong
    /// to a snapshot a leader of an earlier term is still writing.
    pub chunk_grace_seconds: u64,
    /// The leader re-reads this many bytes of archive chunks a second, checking each against
    /// its hash and rewriting a damaged one from its own state (0: only `backup scrub`).
    pub scrub_bytes_per_second: u64,
    /// Retention keeps at least this many whole archive snapshots (every chunk there, none
    /// found damaged), and everything after the oldest of them, even beyond the window.
    pub keep_whole_snapshots: u64,
    /// Seal every archive object with the key ring (docs/security.md) read from this file,
    /// which the node re-reads when it changes…
    pub key_file: String,
    /// …or from this environment variable…
    pub key_env: String,
    /// …or from what this command prints (`sh -c`; for a KMS). None of the three: the archive
    /// is plaintext, and the node says so at every start. Redacted when printed: a command
    /// may carry a credential.
    pub key_command: Secret,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            url: String::new(),
            endpoint: String::new(),
            region: String::new(),
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            virtual_hosted_style: false,
            max_segment_bytes: 16 << 20,
            max_segment_age_ms: 250,
            request_timeout_ms: 30_000,
            max_backlog_bytes: 1 << 30,
            max_backlog_seconds: 300,
            snapshot_every_entries: 100_000,
            snapshot_every_seconds: 3600,
            retention: "30d".into(),
            chunk_grace_seconds: 3600,
            scrub_bytes_per_second: 1 << 20,
            keep_whole_snapshots: 2,
            key_file: String::new(),
            key_env: String::new(),
            key_command: Secret::default(),
        }
    }
}

/// A secret from the config file: read like a string, never printed (its Debug is redacted).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"<redacted>\"" })
    }
}

impl ArchiveConfig {
    /// The archive as cluster state names it: the URL, and the endpoint when one is set (the
    /// same bucket name on another server is another archive). Never credentials.
    pub fn location(&self) -> String {
        let url = self.url.trim_end_matches('/');
        match self.endpoint.trim_end_matches('/') {
            "" => url.to_owned(),
            endpoint => format!("{url} at {endpoint}"),
        }
    }

    /// How to reach the archive's object store.
    pub fn connection(&self) -> keepsake_archive::store::Connection {
        keepsake_archive::store::Connection {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.0.clone(),
            virtual_hosted_style: self.virtual_hosted_style,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        }
    }

    /// Where the archive's key ring comes from (None: the archive is plaintext).
    pub fn key_source(&self) -> Result<Option<keepsake_archive::keys::KeySource>, String> {
        keepsake_archive::keys::KeySource::from_settings(&self.key_file, &self.key_env, &self.key_command.0)
    }

    /// The retention window; None keeps everything.
    pub fn retention(&self) -> Result<Option<Duration>, String> {
        match self.retention.trim() {
            "" | "0" => Ok(None),
            text => parse_duration(text).map(Some),
        }
    }
}

/// Parses `500ms`, `5s`, `2m`, `12h` or `30d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err = || format!("{text:?} is not a duration; write e.g. 500ms, 5s, 2m, 12h or 30d");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| err())?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs).ok_or_else(err);
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(err()),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind the newest snapshot, for followers that lag a little.
    pub keep_entries_after_snapshot: u64,
    /// How long a follower waits for one snapshot chunk.
    pub install_snapshot_timeout_ms: u64,
    /// The leader answers linearizable reads from its lease (replication acknowledgements no
    /// older than `election_timeout_min_ms`) instead of a heartbeat round per batch of reads.
    /// Needs the nodes' clocks to run at about the same rate (see `lease.rs`).
    pub lease_reads: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 0,
            cluster_id: "keepsake".into(),
            data_dir: PathBuf::from("/var/lib/keepsake"),
            client_addr: "127.0.0.1:7001".into(),
            peer_addr: "127.0.0.1:7101".into(),
            peer_source_ip: String::new(),
            http_addr: "127.0.0.1:7201".into(),
            members: Vec::new(),
            raft: RaftConfig::default(),
            archive: ArchiveConfig::default(),
            limits: Limits::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every_entries: 10_000,
            keep_entries_after_snapshot: 5_000,
            install_snapshot_timeout_ms: 30_000,
            lease_reads: true,
        }
    }
}

impl RaftConfig {
    pub fn election_timeout_max(&self) -> Duration {
        Duration::from_millis(self.election_timeout_max_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("--members entry {0:?} is not ID=CLIENT_ADDR/PEER_ADDR (e.g. 1=127.0.0.1:7001/127.0.0.1:7101)")]
    Member(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Ok(NodeConfig::default()) };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 {
            return bad("node_id must be set and above 0 (--node-id or KEEPSAKE_NODE_ID)".into());
        }
        if !self.members.is_empty() && !self.members.iter().any(|m| m.id == self.node_id) {
            return bad(format!("members does not include this node ({})", self.node_id));
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return bad("raft.election_timeout_min_ms must be above raft.heartbeat_interval_ms".into());
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad("raft.election_timeout_max_ms must be above raft.election_timeout_min_ms".into());
        }
        if !self.peer_source_ip.is_empty() && self.peer_source_ip.parse::<std::net::IpAddr>().is_err() {
            return bad(format!("peer_source_ip {:?} is not an IP address (e.g. 10.0.0.5)", self.peer_source_ip));
        }
        let a = &self.archive;
        // Fail closed: an ARCHIVED write must never be acknowledged onto a default that happens
        // to be this node's own disk.
        if a.url.trim().is_empty() {
            return bad("archive.url is empty: set it under [archive] in the config file, to s3://bucket/prefix to \
                 keep the archive off this machine, or to a directory (file:///path) to keep it here \
                 knowingly"
                .into());
        }
        if a.max_segment_bytes == 0 || a.max_segment_age_ms == 0 || a.request_timeout_ms == 0 {
            return bad("archive.max_segment_bytes, max_segment_age_ms and request_timeout_ms must be above 0".into());
        }
        a.retention().map_err(|e| ConfigError::Invalid(format!("archive.retention: {e}")))?;
        a.key_source().map_err(|e| ConfigError::Invalid(format!("archive.key_file, key_env, key_command: {e}")))?;
        if self.limits.max_connections_per_address == 0 {
            return bad("limits.max_connections_per_address must be above 0".into());
        }
        if self.limits.max_page_size == 0 || self.limits.default_page_size > self.limits.max_page_size {
            return bad("limits.default_page_size must be between 1 and limits.max_page_size".into());
        }
        if self.tls.files()?.is_none() && !self.auth.tokens_file.as_os_str().is_empty() {
            return bad("auth.tokens_file is set in insecure mode: bearer tokens would cross the network in \
                 plaintext and nobody is checked anyway; serve TLS (tls.ca, tls.cert, tls.key) to use tokens"
                .into());
        }
        Ok(())
    }
}

/// Parses `1=127.0.0.1:7001/127.0.0.1:7101,2=…` (the `--members` flag).
pub fn parse_members(text: &str) -> Result<Vec<Member>, ConfigError> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|entry| {
            let err = || ConfigError::Member(entry.to_owned());
            let (id, addrs) = entry.trim().split_once('=').ok_or_else(err)?;
            let (client, peer) = addrs.split_once('/').ok_or_else(err)?;
            let id = id.parse().map_err(|_| err())?;
            Ok(Member { id, client_addr: client.into(), peer_addr: peer.into() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_flag_parses_and_rejects_garbage() {
        let m = parse_members("1=127.0.0.1:7001/127.0.0.1:7101, 2=h:1/h:2").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1], Member { id: 2, client_addr: "h:1".into(), peer_addr: "h:2".into() });
        assert!(parse_members("1=nopeer").is_err());
        assert!(parse_members("x=a/b").is_err());
    }

    #[test]
    fn toml_file_fills_what_it_names_and_defaults_the_rest() {
        let c: NodeConfig = toml::from_str(
            "node_id = 2\n[limits]\nmax_value_bytes = 10\n[archive]\nurl = \"s3://b/p\"\n[[members]]\nid = 2\n\
             client_addr = \"a:1\"\npeer_addr = \"a:2\"\n[tls]\nca = \"ca.crt\"\ncert = \"n.crt\"\nkey = \"n.key\"\n",
        )
        .unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.limits.max_value_bytes, 10);
        assert_eq!(c.limits.max_batch_ops, Limits::default().max_batch_ops);
        c.validate().unwrap();
        assert!(toml::from_str::<NodeConfig>("nod_id = 2").is_err(), "unknown keys are refused");
    }

    #[test]
    fn validation_names_the_problem() {
        let c = NodeConfig::default();
        assert!(c.validate().unwrap_err().to_string().contains("node_id"));
        let c = NodeConfig { node_id: 1, ..NodeConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("archive.url is empty"));
    }

    #[test]
    fn tls_or_plaintext_must_be_chosen_and_not_both() {
        let archive = ArchiveConfig { url: "s3://b/p".into(), ..ArchiveConfig::default() };
        let c = NodeConfig { node_id: 1, archive, ..NodeConfig::default() };
        let refused = c.validate().unwrap_err().to_string();
        assert!(refused.contains("TLS is not configured") && refused.contains("--insecure"), "{refused}");
        let half = TlsConfig { ca: "ca.crt".into(), ..TlsConfig::default() };
        assert!(NodeConfig { tls: half, ..c.clone() }.validate().is_err(), "all three files or none");
        let insecure = TlsConfig { insecure: true, ..TlsConfig::default() };
        NodeConfig { tls: insecure, ..c.clone() }.validate().expect("plaintext, chosen");
        let both = TlsConfig { insecure: true, ca: "ca.crt".into(), cert: "n.crt".into(), key: "n.key".into() };
        assert!(NodeConfig { tls: both, ..c }.validate().unwrap_err().to_string().contains("choose one"));
    }
}
