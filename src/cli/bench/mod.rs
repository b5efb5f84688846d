//! `keepsake bench`: a closed-loop load generator. Each of `--clients` clients issues one
//! operation, waits for its answer, and issues the next; latencies go into an HDR histogram
//! once the warm-up is over. The same client code drives Keepsake (`driver.rs`) and, with the
//! `bench-compare` feature, etcd and PostgreSQL (`compare.rs`), so `ops/bench/compare.sh`
//! compares servers, not clients.

mod cluster;
#[cfg(feature = "bench-compare")]
mod compare;
mod driver;
mod fsync;
mod procs;
mod report;
mod target;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;

use super::client::{connect, node_status, Tls};
use super::{parse_duration, ClientOpts, Failure, Output, WriteDurability};
use crate::proto::v1::admin_client::AdminClient;
use crate::proto::v1::{BackupStatusRequest, Durability};
use driver::Driver;
use report::{ArchiveLag, Latency, Report};
use target::{Connect, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mix {
    /// Puts only.
    Write,
    /// Linearizable gets only.
    Read,
    /// 90% gets, 10% puts.
    #[value(name = "90/10")]
    ReadMostly,
    /// A device resync: read one user's whole collection.
    Changes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyOrder {
    /// Each operation picks a key at random (uniform over users × items).
    Uniform,
    /// Operations walk the key space in order (user 0's items, then user 1's, …), so a write
    /// run of `users × items` operations writes every key once.
    Sequential,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The system under test.
    #[arg(long, value_enum, default_value_t = Target::Keepsake)]
    target: Target,
    /// --endpoints: the nodes (etcd: its members); --timeout: the deadline of each operation.
    #[command(flatten)]
    client: ClientOpts,
    /// Keepsake: spread the clients over every endpoint instead of sending all to the leader
    /// found through them.
    #[arg(long)]
    spread: bool,
    /// PostgreSQL connection string (--target postgres).
    #[arg(long, default_value = "host=127.0.0.1 port=5432 user=postgres dbname=postgres")]
    postgres: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Connections the clients share (default: one per client). gRPC multiplexes concurrent
    /// calls over one HTTP/2 connection, as a gateway holding one channel per node does;
    /// PostgreSQL runs one transaction at a time per connection, so it needs one per client.
    #[arg(long)]
    connections: Option<usize>,
    /// How long to measure (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many measured operations instead (still bounded by --duration).
    #[arg(long)]
    ops: Option<u64>,
    /// Run this long before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Value size: bytes, or with a KiB / MiB suffix (e.g. 100, 1KiB, 16KiB, 1MiB).
    #[arg(long, default_value = "1KiB", value_parser = parse_size)]
    value_size: usize,
    /// Users in the key space.
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Items per user in the key space.
    #[arg(long, default_value_t = 100)]
    items_per_user: u64,
    #[arg(long, value_enum, default_value_t = KeyOrder::Uniform)]
    key_order: KeyOrder,
    /// Workload.
    #[arg(long, value_enum, default_value_t = Mix::Write)]
    mix: Mix,
    /// Keepsake: when a put is acknowledged.
    #[arg(long, value_enum, default_value_t = WriteDurability::Quorum)]
    durability: WriteDurability,
    /// Write every key once before a read workload (read, 90/10, changes) starts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    preload: bool,
    /// Start a 3-node Keepsake cluster (`keepsake serve` processes) for the run and stop it
    /// afterwards; its nodes' CPU time and peak memory are reported.
    #[arg(long)]
    start_cluster: bool,
    /// Where a started cluster keeps its data (default: a new temporary directory).
    #[arg(long)]
    cluster_dir: Option<PathBuf>,
    /// A started cluster's first client port (peer ports +100, HTTP ports +200).
    #[arg(long, default_value_t = 7301)]
    cluster_port: u16,
    /// A node configuration file for a started cluster (e.g. its [archive] section); node id,
    /// addresses and data directory are set by the benchmark.
    #[arg(long)]
    node_config: Option<PathBuf>,
    /// Keep a started cluster's directory afterwards.
    #[arg(long)]
    keep_cluster_dir: bool,
    /// A started cluster serves TLS, with a throwaway CA in its directory (without it, it
    /// serves plaintext in insecure mode). etcd and PostgreSQL are reached with TLS when --ca
    /// names their CA.
    #[arg(long)]
    tls: bool,
    /// Also report these server processes' CPU time and peak memory (comma-separated pids).
    #[arg(long, value_delimiter = ',')]
    watch_pid: Vec<u32>,
    /// Measure the fsync round (4 KiB append + fdatasync) on this directory's disk (default:
    /// a started cluster's directory).
    #[arg(long)]
    fsync_dir: Option<PathBuf>,
    /// Seed of the key choice, so runs can be repeated.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (n, mult) = if let Some(n) = t.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = t.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (t.strip_suffix('B').unwrap_or(t), 1)
    };
    n.trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{text:?} is not a size; write e.g. 100, 1KiB, 16KiB or 1MiB"))
}

pub async fn run(args: BenchArgs) -> Result<(), Failure> {
    if args.clients == 0 || args.users == 0 || args.items_per_user == 0 {
        return Err(Failure::usage("--clients, --users and --items-per-user must be at least 1"));
    }
    let connections = args.connections.unwrap_or(args.clients);
    if connections == 0 || connections > args.clients {
        return Err(Failure::usage("--connections must be between 1 and --clients"));
    }
    if connections != args.clients && args.target == Target::Postgres {
        return Err(Failure::usage(
            "PostgreSQL runs one transaction at a time per connection: drop --connections for --target postgres",
        ));
    }
    if args.start_cluster && args.target != Target::Keepsake {
        return Err(Failure::usage("--start-cluster starts Keepsake; drop it for --target etcd or postgres"));
    }
    if args.tls && !args.start_cluster {
        return Err(Failure::usage(
            "--tls is for a cluster the benchmark starts; reach another with --ca (and --cert, --key)",
        ));
    }
    let cluster = match args.start_cluster {
        true => {
            let dir = match &args.cluster_dir {
                Some(d) => d.clone(),
                None => {
                    tempfile::Builder::new().prefix("keepsake-bench-").tempdir().map_err(anyhow::Error::from)?.keep()
                }
            };
            eprintln!("bench: starting a 3-node cluster in {}", dir.display());
            Some(
                cluster::LocalCluster::start(
                    &dir,
                    args.cluster_port,
                    args.node_config.as_deref(),
                    args.keep_cluster_dir,
                    args.tls,
                )
                .await?,
            )
        }
        false => None,
    };
    let endpoints = match &cluster {
        Some(c) => c.client_addrs.clone(),
        None => args.client.endpoints.clone(),
    };
    let fsync_dir = args.fsync_dir.clone().or_else(|| cluster.as_ref().map(|c| c.dir.clone()));
    let fsync_round = match &fsync_dir {
        Some(dir) => {
            Some(fsync::measure(dir, 200).map_err(|e| anyhow::anyhow!("fsync probe in {}: {e}", dir.display()))?)
        }
        None => None,
    };

    // A cluster the benchmark starts is reached with the certificates it made; another one as
    // the CLI reaches it; etcd and PostgreSQL with TLS only when --ca names their CA.
    let tls = match (&cluster, args.target) {
        (Some(c), _) => c.client_tls().map_err(Failure::usage)?,
        (None, Target::Keepsake) => args.client.tls.resolve()?,
        (None, _) if args.client.tls.ca.is_some() => args.client.tls.resolve()?,
        (None, _) => None,
    };
    if args.client.tls.token.is_some() {
        return Err(Failure::usage(
            "keepsake bench authenticates with a client certificate (--cert, --key), not --token",
        ));
    }
    let leader = match args.target {
        Target::Keepsake => Some(find_leader(&endpoints, args.client.timeout, &tls).await?),
        _ => None,
    };
    let connect = Connect {
        target: args.target,
        endpoints: match (&leader, args.spread) {
            (Some(l), false) => vec![l.clone()],
            _ => endpoints.clone(),
        },
        durability: match args.durability {
            WriteDurability::Quorum => Durability::Quorum,
            WriteDurability::Archived => Durability::Archived,
        },
        timeout: args.client.timeout,
        postgres: args.postgres.clone(),
        tls: tls.clone(),
        postgres_ca: args.client.tls.ca.clone().filter(|_| args.target == Target::Postgres),
    };
    Driver::prepare_target(&connect).await?;
    let mut drivers: Vec<Driver> = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let driver = if i < connections {
            Driver::connect(&connect, i).await?
        } else {
            drivers[i % connections].share().expect("only gRPC targets share connections")
        };
        drivers.push(driver);
    }
    let keys = args.users * args.items_per_user;
    if args.preload && args.mix != Mix::Write {
        drivers = preload(drivers, &args).await?;
    }

    let mut watch = procs::Watch::new(
        cluster
            .as_ref()
            .map(|c| c.pids())
            .unwrap_or_default()
            .into_iter()
            .chain(args.watch_pid.iter().map(|p| (format!("pid {p}"), *p)))
            .collect(),
    );
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        measured: AtomicU64::new(0),
        next_key: AtomicU64::new(0),
        ops_limit: args.ops,
    });
    let value = vec![0x6bu8; args.value_size];
    let mut tasks = Vec::new();
    for (i, driver) in drivers.into_iter().enumerate() {
        let w = Worker {
            driver,
            shared: shared.clone(),
            mix: args.mix,
            key_order: args.key_order,
            users: args.users,
            items: args.items_per_user,
            value: value.clone(),
            rng: Rng::new(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64),
        };
        tasks.push(tokio::spawn(w.run()));
    }

    tokio::time::sleep(args.warmup).await;
    watch.start();
    shared.measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let lag = tokio::spawn(sample_archive_lag(leader.clone(), shared.clone(), args.client.timeout, tls));
    let progress = progress_bar(args.client.output);
    while started.elapsed() < args.duration && args.ops.is_none_or(|n| shared.measured.load(Ordering::Relaxed) < n) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(p) = &progress {
            let n = shared.measured.load(Ordering::Relaxed);
            p.set_message(format!(
                "{:>5.1} s  {n} ops  {:.0} ops/s",
                started.elapsed().as_secs_f64(),
                n as f64 / started.elapsed().as_secs_f64()
            ));
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    let mut histogram = report::new_histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut error_messages: BTreeMap<String, String> = BTreeMap::new();
    let mut last_done = started;
    // The connections stay open until the servers' figures are read (a PostgreSQL backend's
    // memory is gone once its connection closes).
    let mut open_drivers = Vec::with_capacity(tasks.len());
    for t in tasks {
        let mut r = t.await.map_err(|e| anyhow::anyhow!("a benchmark client panicked: {e}"))?;
        open_drivers.push(r.driver.take());
        histogram.add(&r.histogram).map_err(|e| anyhow::anyhow!("merge histograms: {e}"))?;
        for (code, n) in r.errors {
            *errors.entry(code).or_default() += n;
        }
        for (code, message) in r.first_errors {
            error_messages.entry(code).or_insert(message);
        }
        last_done = last_done.max(r.last_done);
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let seconds = last_done.duration_since(started).as_secs_f64().max(1e-9);
    let archive_lag = lag.await.ok().flatten();
    let ops = histogram.len();
    let report = Report {
        target: args.target,
        mix: Mix::to_possible_value(&args.mix).map_or_else(String::new, |v| v.get_name().to_string()),
        durability: format!("{:?}", args.durability).to_lowercase(),
        clients: args.clients,
        connections,
        value_bytes: args.value_size,
        keys,
        seconds,
        ops,
        ops_per_second: ops as f64 / seconds,
        latency: Latency::of(&histogram),
        errors,
        error_messages,
        servers: watch.report(),
        archive_lag,
        fsync_round,
    };
    drop(open_drivers);
    match args.client.output {
        Output::Json => println!("{}", serde_json::to_string(&report).map_err(anyhow::Error::from)?),
        Output::Text => report.print_text(),
    }
    drop(cluster);
    Ok(())
}

fn progress_bar(output: Output) -> Option<indicatif::ProgressBar> {
    if output == Output::Json || !std::io::stderr().is_terminal() {
        return None;
    }
    let p = indicatif::ProgressBar::new_spinner();
    p.enable_steady_tick(Duration::from_millis(200));
    Some(p)
}

/// The leader's client address, asked of each endpoint in turn.
async fn find_leader(endpoints: &[String], timeout: Duration, tls: &Tls) -> Result<String, Failure> {
    if let Some(bad) =
        endpoints.iter().find(|a| tonic::transport::Endpoint::from_shared(format!("http://{a}")).is_err())
    {
        return Err(Failure::usage(format!("{bad} is not a host:port endpoint")));
    }
    let deadline = Instant::now() + timeout.max(Duration::from_secs(5));
    loop {
        for addr in endpoints {
            let Ok(status) = node_status(addr, timeout, tls).await else { continue };
            if let Some(leader) = status.leader_id {
                if let Some(m) = status.members.iter().find(|m| m.node_id == leader) {
                    return Ok(m.client_addr.clone());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(Failure {
                message: format!(
                    "no Keepsake leader found through {}; is the cluster running (`keepsake cluster status`)?",
                    endpoints.join(",")
                ),
                code: 5,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Samples the leader's archive lag every 100 ms while the run is measured; None when the
/// target is not Keepsake or the leader cannot be asked.
async fn sample_archive_lag(
    leader: Option<String>,
    shared: Arc<Shared>,
    timeout: Duration,
    tls: Tls,
) -> Option<ArchiveLag> {
    let mut admin = AdminClient::new(connect(&leader?, timeout, &tls).await.ok()?);
    let mut h = report::new_histogram();
    while !shared.stop.load(Ordering::SeqCst) {
        let mut req = tonic::Request::new(BackupStatusRequest {});
        req.set_timeout(timeout);
        // Only the uploader knows the lag: a node that lost the leadership reports none.
        if let Ok(s) = admin.backup_status(req).await.map(|r| r.into_inner()) {
            if s.uploading {
                let _ = h.record((s.lag_seconds * 1e6) as u64);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (!h.is_empty()).then(|| ArchiveLag {
        samples: h.len(),
        p50_seconds: h.value_at_quantile(0.5) as f64 / 1e6,
        p99_seconds: h.value_at_quantile(0.99) as f64 / 1e6,
        max_seconds: h.max() as f64 / 1e6,
    })
}

/// Writes every key once, the clients sharing the key space, so reads find what they look for.
async fn preload(drivers: Vec<Driver>, args: &BenchArgs) -> Result<Vec<Driver>, Failure> {
    let keys = args.users * args.items_per_user;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let value = vec![0x6bu8; args.value_size];
    let mut tasks = Vec::new();
    for mut d in drivers {
        let (next, value, items) = (next.clone(), value.clone(), args.items_per_user);
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys {
                    return Ok(d);
                }
                let mut tries = 0;
                while let Err(e) = d.put(k / items, k % items, value.clone()).await {
                    tries += 1;
                    if tries == 5 {
                        return Err(anyhow::anyhow!("preloading key {k} failed 5 times: {}: {}", e.code, e.message));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.map_err(|e| anyhow::anyhow!("preload task: {e}"))??);
    }
    eprintln!("bench: preloaded {keys} items in {:.1} s", started.elapsed().as_secs_f64());
    Ok(out)
}

/// How long a client waits after a failed operation before its next one.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);

struct Shared {
    stop: AtomicBool,
    measuring: AtomicBool,
    measured: AtomicU64,
    next_key: AtomicU64,
    ops_limit: Option<u64>,
}

struct Worker {
    driver: Driver,
    shared: Arc<Shared>,
    mix: Mix,
    key_order: KeyOrder,
    users: u64,
    items: u64,
    value: Vec<u8>,
    rng: Rng,
}

struct WorkerResult {
    driver: Option<Driver>,
    histogram: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    first_errors: BTreeMap<String, String>,
    last_done: Instant,
}

impl Worker {
    async fn run(mut self) -> WorkerResult {
        let mut histogram = report::new_histogram();
        let mut errors = BTreeMap::new();
        let mut first_errors = BTreeMap::new();
        let mut last_done = Instant::now();
        let keys = self.users * self.items;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let measured = self.shared.measuring.load(Ordering::Relaxed);
            if measured {
                let n = self.shared.measured.fetch_add(1, Ordering::Relaxed);
                if self.shared.ops_limit.is_some_and(|limit| n >= limit) {
                    break;
                }
            }
            let key = match self.key_order {
                KeyOrder::Uniform => self.rng.below(keys),
                KeyOrder::Sequential => self.shared.next_key.fetch_add(1, Ordering::Relaxed) % keys,
            };
            let (user, item) = (key / self.items, key % self.items);
            let write = match self.mix {
                Mix::Write => true,
                Mix::Read | Mix::Changes => false,
                Mix::ReadMostly => self.rng.below(10) == 0,
            };
            let t = Instant::now();
            let result = if write {
                self.driver.put(user, item, self.value.clone()).await
            } else if self.mix == Mix::Changes {
                self.driver.resync(user).await.map(drop)
            } else {
                self.driver.get(user, item).await
            };
            let failed = result.is_err();
            if measured {
                last_done = Instant::now();
                match result {
                    Ok(()) => {
                        let _ = histogram.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        *errors.entry(e.code.clone()).or_insert(0u64) += 1;
                        first_errors.entry(e.code).or_insert(e.message);
                    }
                }
            }
            if failed {
                // As a real client would: an error comes back at once, and retrying without a
                // pause would turn a leader change into a storm of failed requests.
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
        WorkerResult { driver: Some(self.driver), histogram, errors, first_errors, last_done }
    }
}

/// splitmix64: enough randomness to pick keys, and repeatable from --seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((u128::from(z) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_size, Rng};

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("16KiB"), Ok(16 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("1GB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn keys_are_uniform_and_in_range() {
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[rng.below(10) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
    }
}
