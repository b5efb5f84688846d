//! The command line: `serve`, `dev`, cluster commands and data commands. This is the contract
//! scripts rely on: flags, `KEEPSAKE_*` variables, `--output json`, and the exit codes below.
//!
//! Exit codes: 0 ok, 1 other error, 2 bad usage, 3 not found, 4 precondition failed,
//! 5 unavailable (no leader, no quorum, no node reachable), 6 deadline exceeded.

mod archive_key;
mod backup;
mod bench;
mod cert;
mod client;
mod cluster;
mod data;
mod dev;
mod drill;
mod restore;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use client::Failure;

#[derive(Parser)]
#[command(name = "keepsake", version, about = "A replicated store for user data, with continuous backup")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node.
    Serve(ServeArgs),
    /// Run a local 3-node cluster (client ports 7001-7003) until Ctrl-C.
    Dev(dev::DevArgs),
    /// Cluster administration.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Continuous backup: status of the archive.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Rebuild a node's data from the archive alone, as the first node of a new cluster.
    Restore(restore::RestoreArgs),
    /// Rehearse a restore: restore the latest archived point into a scratch directory and prove
    /// it equals the live cluster's state at the same index.
    Drill(drill::DrillArgs),
    /// Create or replace an item.
    Put(data::PutArgs),
    /// Print an item.
    Get(data::GetArgs),
    /// Delete an item.
    Delete(data::DeleteArgs),
    /// List a user's collection.
    List(data::ListArgs),
    /// Print a user's changes since a revision (optionally following new ones).
    Changes(data::ChangesArgs),
    /// Export everything a user has.
    Export(data::ExportArgs),
    /// Load generator: drive Keepsake (or etcd, or PostgreSQL) with concurrent clients and
    /// report throughput and latency.
    Bench(bench::BenchArgs),
    /// Certificates: the cluster's CA, and a certificate per node and per client.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Bearer tokens for clients without a certificate.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// The key ring that encrypts the archive: add a key, choose the one that seals.
    #[command(subcommand)]
    ArchiveKey(archive_key::ArchiveKeyCommand),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file; flags and KEEPSAKE_* variables override it.
    #[arg(long, env = "KEEPSAKE_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "KEEPSAKE_NODE_ID")]
    node_id: Option<u64>,
    #[arg(long, env = "KEEPSAKE_CLUSTER_ID")]
    cluster_id: Option<String>,
    #[arg(long, env = "KEEPSAKE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Client port address (Store, Admin, health, reflection).
    #[arg(long, env = "KEEPSAKE_CLIENT_ADDR")]
    client_addr: Option<String>,
    /// Peer port address (Raft transport).
    #[arg(long, env = "KEEPSAKE_PEER_ADDR")]
    peer_addr: Option<String>,
    /// HTTP address for /metrics, /healthz and /readyz ("" turns it off).
    #[arg(long, env = "KEEPSAKE_HTTP_ADDR")]
    http_addr: Option<String>,
    /// Initial voters: ID=CLIENT_ADDR/PEER_ADDR,… (used only to bootstrap a new cluster).
    #[arg(long, env = "KEEPSAKE_MEMBERS")]
    members: Option<String>,
    /// Serve every port in plaintext with no authentication (tls.insecure): a test bench only.
    #[arg(long, env = "KEEPSAKE_INSECURE")]
    insecure: bool,
}

/// Options every client command shares.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// Nodes to try, in order (host:port, comma-separated).
    #[arg(
        long,
        env = "KEEPSAKE_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    pub endpoints: Vec<String>,
    /// Deadline of each request, e.g. 500ms, 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub tls: client::TlsOpts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// When a write is acknowledged: once a quorum has it on disk, or once it is also archived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WriteDurability {
    Quorum,
    Archived,
}

impl WriteDurability {
    pub fn wire(self) -> i32 {
        match self {
            WriteDurability::Quorum => crate::proto::v1::Durability::Quorum as i32,
            WriteDurability::Archived => crate::proto::v1::Durability::Archived as i32,
        }
    }
}

pub use crate::config::parse_duration;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = std::env::var("KEEPSAKE_WORKER_THREADS").ok().and_then(|v| v.parse::<usize>().ok()) {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await.map_err(Failure::from),
            Command::Dev(args) => dev::run(args).await.map_err(Failure::from),
            Command::Cluster(cmd) => cluster::run(cmd).await,
            Command::Backup(cmd) => backup::run(cmd).await,
            Command::Restore(a) => restore::run(a).await,
            Command::Drill(a) => drill::run(a).await,
            Command::Put(a) => data::put(a).await,
            Command::Get(a) => data::get(a).await,
            Command::Delete(a) => data::delete(a).await,
            Command::List(a) => data::list(a).await,
            Command::Changes(a) => data::changes(a).await,
            Command::Export(a) => data::export(a).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Cert(cmd) => cert::run(cmd).await,
            Command::Token(cmd) => token::run(cmd).await,
            Command::ArchiveKey(cmd) => archive_key::run(cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEPSAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let mut config = crate::config::NodeConfig::load(args.config.as_deref())?;
    if let Some(v) = args.node_id {
        config.node_id = v;
    }
    if let Some(v) = args.cluster_id {
        config.cluster_id = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.client_addr {
        config.client_addr = v;
    }
    if let Some(v) = args.peer_addr {
        config.peer_addr = v;
    }
    if let Some(v) = args.http_addr {
        config.http_addr = v;
    }
    if let Some(v) = args.members {
        config.members = crate::config::parse_members(&v)?;
    }
    if args.insecure {
        config.tls.insecure = true;
    }
    crate::node::run(config, shutdown_signal()).await
}

/// Makes a child process get SIGKILL when the thread that started it dies, so servers started
/// by a command (`keepsake bench --start-cluster`) or a test never outlive it, even when it is
/// killed without running its clean-up.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: prctl is async-signal-safe, the only kind of call allowed between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return drop(ctrl_c.await),
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
