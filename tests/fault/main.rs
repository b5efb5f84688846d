//! The fault matrix (docs/reliability.md): real `keepsake serve` processes under a seeded
//! nemesis — kills, pauses, partitions, a full disk, object-store faults — while clients record
//! what they did, and then machine checks of what they saw.
//!
//! A run is a sequence of rounds on one cluster. Each round uses fresh keys; faults come and go
//! while the clients run; at its end everything is healed and the round is checked:
//! - every key's history is linearizable (`checker.rs`);
//! - no acknowledged ledger write is lost (each is read back, linearizably);
//! - all three nodes have the same digest at the same index.
//!
//! At the end of the run: the change feed of the ledger user never went backwards and had every
//! acknowledged item, and `keepsake drill` restores the archive to the live state.
//!
//! `bounded_fault_run` is the CI version (every fault kind at least once, a few minutes);
//! `soak` is for `ops/soak.sh DURATION [SEED]`.

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod nemesis;
mod proxy;
mod rng;
mod workload;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bounded_for, key, request, Cluster, S3Server};
use keepsake::proto::v1::{Consistency, GetRequest, ItemKey, PutRequest};

use checker::{Input, Op, Output, Verdict};
use nemesis::{Kind, Nemesis};
use proxy::Proxy;
use rng::Rng;
use workload::{Clock, Counts, Feed, History};

/// Search steps the checker may take per key before it calls the key undecided.
const CHECK_BUDGET: u64 = 20_000_000;
/// How long the cluster may take to take writes again after a fault is healed.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// Each node's data directory (a tmpfs the disk fault fills).
const DISK_BYTES: u64 = 256 << 20;

/// What a run does. Every fault kind comes once, in a seeded order, before they are chosen at
/// random.
struct Plan {
    duration: Duration,
    round: Duration,
    seed: u64,
    keys: usize,
    registers: usize,
    ledgers: usize,
}

impl Plan {
    /// A run of `$seconds_var` seconds (default `seconds`), seeded by `KEEPSAKE_FAULT_SEED` or
    /// the clock, with 2 ledger clients.
    fn from_env(seconds_var: &str, seconds: u64, round: u64, keys: usize, registers: usize) -> Plan {
        Plan {
            duration: Duration::from_secs(env_u64(seconds_var).unwrap_or(seconds)),
            round: Duration::from_secs(round),
            seed: env_u64("KEEPSAKE_FAULT_SEED").unwrap_or_else(seed_from_clock),
            keys,
            registers,
            ledgers: 2,
        }
    }
}

#[derive(Default)]
struct Summary {
    faults: BTreeMap<Kind, Vec<Duration>>,
    counts: Counts,
    rounds: usize,
    keys_checked: usize,
    register_ops: usize,
    violations: Vec<String>,
    undecided: Vec<String>,
    acked: usize,
    lost: Vec<String>,
    feed_problems: Vec<String>,
    digest_problems: Vec<String>,
    feed_reconnects: u64,
    /// What `keepsake drill` said when the archive did not restore to the live state.
    drill: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_fault_run() {
    let plan = Plan::from_env("KEEPSAKE_FAULT_SECONDS", 100, 35, 12, 6);
    let summary = run_checked(&plan).await;
    for kind in Kind::ALL {
        assert!(summary.faults.contains_key(&kind), "the bounded run never injected {kind:?} (seed {})", plan.seed);
    }
    assert!(summary.counts.ok >= 500, "too few operations completed to mean anything: {:?}", summary.counts);
    assert!(summary.acked >= 100, "too few acknowledged ledger writes: {}", summary.acked);
}

/// `ops/soak.sh DURATION [SEED]`: `KEEPSAKE_SOAK_SECONDS`, `KEEPSAKE_FAULT_SEED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by ops/soak.sh"]
async fn soak() {
    run_checked(&Plan::from_env("KEEPSAKE_SOAK_SECONDS", 1800, 40, 16, 8)).await;
}

/// A node whose disk fills up stops (it used to linger, answering "shutting down" forever),
/// the others go on, nothing acknowledged is lost, and once space is freed and the node is
/// started again it catches up to the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_full_disk_exits_and_catches_up_once_space_is_freed() {
    if !is_root() {
        eprintln!("skipped: mounting the small tmpfs data directories needs root");
        return;
    }
    let cluster = Cluster::builder().tmpfs_data(64 << 20).start().await;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let victim = cluster.ids().into_iter().find(|&id| id != leader).expect("three nodes");
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != victim).collect();
    let clients = cluster.stores(&others);
    let ballast = cluster.data_dir(victim).join("ballast");
    nemesis::fill(&ballast);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut written = 0;
    let status = loop {
        common::write_items(&clients, "u", "c", written..written + 50, 8).await;
        written += 50;
        let mut admin = cluster.admin(victim);
        let req = request(keepsake::proto::v1::TriggerSnapshotRequest {}, Duration::from_secs(2));
        let _ = tokio::time::timeout(Duration::from_secs(3), admin.trigger_snapshot(req)).await;
        if let Some(status) = cluster.reap_exited(victim) {
            break status;
        }
        assert!(Instant::now() < deadline, "node {victim} kept running on a full disk for 60 s");
    };
    assert!(!status.success(), "node {victim} exited with {status} on a full disk");
    let log = cluster.log_tail(victim, 20);
    assert!(log.contains("start the node again"), "the exit does not say what to do:\n{log}");

    std::fs::remove_file(&ballast).expect("remove the ballast");
    cluster.restart(victim);
    let last = common::write_items(&clients, "u", "c", written..written + 50, 8).await;
    written += 50;
    let index = last.iter().map(|(_, r)| r.log_index).max().expect("writes");
    let digests = cluster.digests_at(index, Duration::from_secs(30)).await;
    assert!(digests.iter().all(|d| d.1 == digests[0].1), "replicas differ after the disk was freed: {digests:?}");
    let missing = common::check_items(&cluster.store(victim), "u", "c", 0..written, 8).await;
    assert!(missing.is_empty(), "acknowledged writes missing after the full disk: {missing:?}");
}

/// The leader's lease (`raft/src/lease.rs`) must run out before another node can lead. A leader
/// cut off from both peers goes on believing it leads; once the other two have elected a new
/// leader and acknowledged a newer value, the old one must never answer a linearizable read
/// with the value that was replaced. While the cluster is whole, its reads come from the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_never_answers_a_read_with_a_value_a_new_leader_replaced() {
    let cluster = Arc::new(Cluster::builder().peer_proxies().prepare());
    let peers = launch_behind_proxies(&cluster).await;
    let old = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let mut on_old = cluster.store(old);
    common::put(&mut on_old, "u", "c", "k", "before").await.expect("put on the whole cluster");
    let lease_reads = || common::metric(&cluster, old, "keepsake_read_index_lease_total");
    let before = lease_reads();
    for _ in 0..20 {
        let item = common::get(&mut on_old, "u", "c", "k").await.expect("read on the whole cluster");
        assert_eq!(item.value, b"before");
    }
    assert!(lease_reads() > before, "no read on the whole cluster came from the leader's lease");

    let others = cut_off(&cluster, &peers, old, proxy::Mode::Stall);
    let new = leader_among(&cluster, &others).await;
    common::put(&mut cluster.store(new), "u", "c", "k", "after").await.expect("the majority takes the write");

    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let message = GetRequest { key: Some(key("u", "c", "k")), consistency: Consistency::Linearizable as i32 };
        match bounded_for(Duration::from_millis(600), on_old.get(request(message, Duration::from_millis(500)))).await {
            Ok(resp) => {
                let value = resp.item.map(|i| i.value).unwrap_or_default();
                assert_ne!(value, b"before", "node {old}, cut off, answered a read with a value node {new} replaced");
            }
            Err(_) => refused += 1,
        }
    }
    assert!(refused > 0, "the cut-off leader answered every read");
    for proxy in peers.values() {
        proxy.handle().heal();
    }
}

/// A leader cut off with a write in flight has proposed it into its own log only. When the
/// majority then moves so far ahead that the old leader catches up by installing a snapshot,
/// openraft 0.9 never answers that proposal: its entry is neither applied there nor deleted as
/// a conflict. The node must still take writes when it leads again (`raft/src/proposer.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_that_catches_up_by_snapshot_takes_writes_when_it_leads_again() {
    let cluster = Arc::new(Cluster::builder().peer_proxies().snapshot_every(100).keep_after_snapshot(0).prepare());
    let peers = launch_behind_proxies(&cluster).await;
    let old = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let mut on_old = cluster.store(old);
    common::put(&mut on_old, "u", "c", "before", "x").await.expect("put on the whole cluster");
    let last_before = cluster.get_node_status(old).await.expect("the leader's status").last_log_index;

    // Refused, not stalled: a stalled link would deliver the new leader's first AppendEntries
    // on healing, and their conflict would delete the stranded entry (and answer it).
    let others = cut_off(&cluster, &peers, old, proxy::Mode::Refuse);
    // Proposed at once, before the cut-off leader notices it has lost its quorum.
    let message = PutRequest { key: Some(key("u", "c", "stranded")), value: b"x".to_vec(), ..Default::default() };
    let stranded = bounded_for(Duration::from_secs(2), on_old.put(request(message, Duration::from_secs(1)))).await;
    assert!(stranded.is_err(), "a leader cut off from both peers acknowledged a write");
    let last_cut = cluster.get_node_status(old).await.expect("the old leader's status").last_log_index;
    assert!(last_cut > last_before, "the write was not proposed into the cut-off leader's log");

    let new = leader_among(&cluster, &others).await;
    common::write_items(&cluster.stores(&[new]), "u", "after", 0..300, 1).await;
    let snapshot = cluster.trigger_snapshot(new).await.snapshot_index;
    assert!(snapshot > last_cut);
    let c = &cluster;
    common::eventually(Duration::from_secs(30), || async move {
        let s = c.get_node_status(new).await.ok()?;
        (s.purged_index > last_cut).then_some(())
    })
    .await
    .expect("the new leader purges what the old one lacks: it must send a snapshot");

    for proxy in peers.values() {
        proxy.handle().heal();
    }
    common::eventually(Duration::from_secs(30), || async move {
        let s = c.get_node_status(old).await.ok()?;
        (s.snapshot_index >= snapshot).then_some(())
    })
    .await
    .expect("the old leader catches up by installing the new leader's snapshot");
    cluster.make_leader(old).await;
    let took = common::eventually(Duration::from_secs(10), || async {
        common::put(&mut cluster.store(old), "u", "c", "again", "y").await.ok()
    })
    .await;
    assert!(took.is_some(), "node {old} leads again but takes no write");
    assert!(common::check_items(&cluster.store(old), "u", "after", 0..300, 8).await.is_empty());
}

/// Puts a fault proxy in front of every node's peer port, then starts the three nodes.
async fn launch_behind_proxies(cluster: &Cluster) -> HashMap<u64, Proxy> {
    let mut peers = HashMap::new();
    for id in cluster.ids() {
        peers.insert(id, Proxy::start(&cluster.peer_addr(id), &cluster.peer_listen_addr(id)).await);
    }
    cluster.launch(3).await;
    peers
}

/// Sets every link between `node` and the other nodes, both ways, to `mode`; returns the others.
fn cut_off(cluster: &Cluster, peers: &HashMap<u64, Proxy>, node: u64, mode: proxy::Mode) -> Vec<u64> {
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != node).collect();
    for &other in &others {
        peers[&other].handle().set_source(common::peer_source_ip(node).into(), mode);
        peers[&node].handle().set_source(common::peer_source_ip(other).into(), mode);
    }
    others
}

/// The node of `ids` that reports itself leader; panics after 20 s.
async fn leader_among(cluster: &Cluster, ids: &[u64]) -> u64 {
    common::eventually(Duration::from_secs(20), || async {
        for &id in ids {
            if cluster.get_node_status(id).await.is_ok_and(|s| s.role == "leader") {
                return Some(id);
            }
        }
        None
    })
    .await
    .unwrap_or_else(|| panic!("none of nodes {ids:?} became the leader"))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

fn seed_from_clock() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Runs the plan, prints the summary, and fails on anything the checks found.
async fn run_checked(plan: &Plan) -> Summary {
    let summary = run(plan).await;
    print_summary(plan, &summary);
    assert_clean(&summary);
    summary
}

fn assert_clean(s: &Summary) {
    assert!(s.violations.is_empty(), "non-linearizable histories: {:#?}", s.violations);
    assert!(s.undecided.is_empty(), "the checker could not decide: {:#?}", s.undecided);
    assert!(s.lost.is_empty(), "acknowledged writes lost: {:#?}", s.lost);
    assert!(s.feed_problems.is_empty(), "change feed problems: {:#?}", s.feed_problems);
    assert!(s.digest_problems.is_empty(), "replicas differ: {:#?}", s.digest_problems);
    assert!(s.drill.is_none(), "the archive does not restore to the live state: {}", s.drill.as_deref().unwrap_or(""));
}

async fn run(plan: &Plan) -> Summary {
    eprintln!("fault run: seed {} (replay the schedule with KEEPSAKE_FAULT_SEED={})", plan.seed, plan.seed);
    let s3 = S3Server::start();
    let object_store = Proxy::start("127.0.0.1:0", &s3.addr).await;
    let small_disks = is_root();
    if !small_disks {
        eprintln!("fault run: not root, so no tmpfs data directories: the full-disk fault is skipped");
    }
    let mut builder = Cluster::builder()
        .peer_proxies()
        .archive_s3_via(&s3, "faults", &format!("http://{}", object_store.listen))
        .snapshot_every(2_000)
        .keep_after_snapshot(500);
    if small_disks {
        builder = builder.tmpfs_data(DISK_BYTES);
    }
    let cluster = Arc::new(builder.prepare());
    let peers = launch_behind_proxies(&cluster).await;
    let nemesis = Nemesis::new(cluster.clone(), peers, object_store);

    let mut rng = Rng::new(plan.seed);
    let clock = Clock::new();
    let mut summary = Summary::default();
    let feed = Arc::new(Mutex::new(Feed::default()));
    let feed_stop = Arc::new(AtomicBool::new(false));
    let follower =
        tokio::spawn(workload::follow_ledger(cluster.clone(), Rng::new(rng.next()), feed.clone(), feed_stop.clone()));
    let kinds: Vec<Kind> = Kind::ALL.into_iter().filter(|k| *k != Kind::DiskFull || small_disks).collect();
    let mut to_cover = kinds.clone();
    let started = Instant::now();
    let mut all_acked: HashMap<String, u64> = HashMap::new();
    let mut all_unknown: Vec<String> = Vec::new();

    // Rounds go on past the planned time until every fault kind has come at least once.
    while started.elapsed() < plan.duration || !to_cover.is_empty() {
        let round = format!("r{}", summary.rounds);
        let stop = Arc::new(AtomicBool::new(false));
        let clients_round = workload::Round {
            name: round.clone(),
            keys: plan.keys,
            registers: plan.registers,
            ledgers: plan.ledgers,
            seed: rng.next(),
        };
        let clients = tokio::spawn(workload::run_clients(cluster.clone(), clients_round, clock, stop.clone()));
        let round_end = Instant::now() + plan.round;
        while Instant::now() < round_end {
            tokio::time::sleep(rng.millis(500, 2000)).await;
            let kind = if to_cover.is_empty() {
                rng.pick(&kinds)
            } else {
                to_cover.remove(rng.below(to_cover.len() as u64) as usize)
            };
            let active = nemesis.inject(kind, &mut rng).await;
            let hold = rng.millis(1000, 5000);
            eprintln!(
                "[{:>6.1}s] {} (node {:?}) for {hold:?}",
                started.elapsed().as_secs_f64(),
                kind.name(),
                active.victim
            );
            tokio::time::sleep(hold).await;
            nemesis.heal(active).await;
            let recovery = recover(&cluster).await.unwrap_or_else(|| {
                // The cluster outlives this panic (the clients hold it), so its logs go here.
                for id in cluster.ids() {
                    eprintln!("----- node {id}: last 400 lines of its log -----\n{}", cluster.log_tail(id, 400));
                }
                panic!(
                    "the cluster did not take writes within {RECOVERY_LIMIT:?} after healing {kind:?} (seed {})",
                    plan.seed
                )
            });
            eprintln!("[{:>6.1}s]   healed; writes again after {recovery:?}", started.elapsed().as_secs_f64());
            summary.faults.entry(kind).or_default().push(recovery);
        }
        stop.store(true, Ordering::Relaxed);
        let mut history = clients.await.expect("the clients panicked");
        nemesis.heal_all();
        recover(&cluster).await.expect("the cluster takes writes at the end of a round");
        final_reads(&cluster, &round, plan.keys, clock, &mut history).await;
        check_round(&cluster, &round, &history, clock, &mut summary).await;
        all_acked.extend(history.acked.iter().map(|(k, v)| (k.clone(), *v)));
        all_unknown.extend(history.unknown.iter().cloned());
        summary.counts.add(history.counts);
        summary.rounds += 1;
    }

    check_feed(&feed, &all_acked, &all_unknown, &mut summary).await;
    summary.drill = drill(&cluster).await;
    feed_stop.store(true, Ordering::Relaxed);
    let _ = follower.await;
    summary.feed_reconnects = feed.lock().unwrap().reconnects;
    summary.acked = all_acked.len();
    summary
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Writes a probe item through every live node (each forwards to the leader) until each has
/// taken one: how long until the whole cluster served again. A node that exits on its own
/// meanwhile fails the run at once, with its log.
async fn recover(cluster: &Cluster) -> Option<Duration> {
    let started = Instant::now();
    let mut n = 0u64;
    for id in cluster.live_ids() {
        loop {
            cluster.check_no_node_exited();
            if started.elapsed() > RECOVERY_LIMIT {
                return None;
            }
            n += 1;
            let item = key("probe", "p", &format!("node{id}"));
            let req = PutRequest { key: Some(item), value: n.to_be_bytes().to_vec(), ..Default::default() };
            let mut store = cluster.store(id);
            if bounded_for(Duration::from_secs(2), store.put(request(req, Duration::from_secs(1)))).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Some(started.elapsed())
}

/// A linearizable Get through the live nodes in turn, retried on errors up to `attempts`
/// times: the item, or None when it does not exist, with the invocation and completion times
/// of the read that answered.
async fn read_back(
    cluster: &Cluster,
    item: &ItemKey,
    attempts: usize,
    clock: Clock,
) -> (u64, u64, Option<keepsake::proto::v1::Item>) {
    let mut last = None;
    for attempt in 0..attempts {
        let live = cluster.live_ids();
        let id = live[attempt % live.len()];
        let called = clock.now();
        let req = GetRequest { key: Some(item.clone()), consistency: Consistency::Linearizable as i32 };
        match bounded_for(Duration::from_secs(3), cluster.store(id).get(request(req, Duration::from_secs(2)))).await {
            Ok(r) => return (called, clock.now(), Some(r.item.expect("Get answers an item"))),
            Err(s) if s.code() == tonic::Code::NotFound => return (called, clock.now(), None),
            Err(s) => last = Some(format!("{:?} {}", s.code(), s.message())),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("reading back {item:?} failed {attempts} times; last: {}", last.unwrap_or_default());
}

/// After healing: one linearizable read of every key, recorded as a client of its own.
async fn final_reads(cluster: &Cluster, round: &str, keys: usize, clock: Clock, history: &mut History) {
    for k in 0..keys {
        let (item, name) = workload::register(round, k);
        let (called, returned, item) = read_back(cluster, &item, 30, clock).await;
        let output = Output::Read(item.map(|it| (workload::decode(&it.value), it.revision)));
        history.registers.entry(name).or_default().push(Op {
            client: 1000,
            input: Input::Get,
            output,
            called,
            returned,
        });
    }
}

async fn check_round(cluster: &Cluster, round: &str, history: &History, clock: Clock, summary: &mut Summary) {
    for (k, ops) in &history.registers {
        summary.keys_checked += 1;
        summary.register_ops += ops.len();
        let started = Instant::now();
        let verdict = checker::check(ops, CHECK_BUDGET);
        if verdict != Verdict::Linearizable {
            let path = save_history(k, ops);
            match verdict {
                Verdict::Violation(why) => summary.violations.push(format!("{k}: {why} (history: {path})")),
                _ => summary.undecided.push(format!("{k}: {} ops, gave up (history: {path})", ops.len())),
            }
        }
        let took = started.elapsed();
        if took > Duration::from_secs(2) {
            eprintln!("checker: {k} ({} ops) took {took:?}", ops.len());
        }
    }
    // Every acknowledged ledger write reads back, linearizably, with its revision.
    for (name, revision) in &history.acked {
        let (collection, item) = name.split_once('/').expect("ledger names are round/item");
        match read_back(cluster, &key(workload::LEDGER_USER, collection, item), 20, clock).await.2 {
            Some(it) if it.revision == *revision && it.value == item.as_bytes() => {}
            Some(it) => {
                summary.lost.push(format!("{name}: acknowledged at revision {revision}, now at {}", it.revision))
            }
            None => summary.lost.push(format!("{name}: acknowledged at revision {revision}, now not found")),
        }
    }
    // All nodes reach the same state: a write now, then every node's digest at its index.
    let req = PutRequest { key: Some(key("probe", "p", round)), value: b"end".to_vec(), ..Default::default() };
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let index = bounded_for(Duration::from_secs(5), cluster.store(leader).put(request(req, Duration::from_secs(4))))
        .await
        .expect("the end-of-round write succeeds")
        .log_index;
    let digests = cluster.digests_at(index, Duration::from_secs(60)).await;
    if digests.iter().any(|d| d.1.digest != digests[0].1.digest) {
        summary.digest_problems.push(format!("round {round}, index {index}: {digests:?}"));
    }
}

/// After everything healed: `keepsake drill` rebuilds the state from the object store alone
/// and compares it with the live cluster's. None when it matches.
async fn drill(cluster: &Cluster) -> Option<String> {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let mut args = vec!["drill".to_owned(), "--cluster-id".into(), cluster.id().into()];
    args.extend(cluster.archive_args());
    args.extend(["--endpoints".into(), cluster.client_addr(leader)]);
    let (code, text) = tokio::task::spawn_blocking(move || common::keepsake_cli(&args)).await.expect("drill ran");
    eprintln!("drill: {}", text.trim());
    (code != 0 || !text.contains("ok: the archive restores to the live state")).then(|| format!("exit {code}: {text}"))
}

/// Writes a key's history where a person can read it; returns the path.
fn save_history(key: &str, ops: &[Op]) -> String {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("history-{}.txt", key.replace('/', "-")));
    std::fs::write(&path, checker::format_history(ops))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path.display().to_string()
}

/// Waits until the follower has seen every acknowledged revision; then checks it saw nothing
/// out of order and nothing nobody wrote.
async fn check_feed(feed: &Mutex<Feed>, acked: &HashMap<String, u64>, unknown: &[String], summary: &mut Summary) {
    let newest = acked.values().copied().max().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while feed.lock().unwrap().last_revision < newest && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let f = feed.lock().unwrap();
    for (prev, this) in &f.out_of_order {
        summary.feed_problems.push(format!("revision {this} came after {prev}"));
    }
    for (name, revision) in acked {
        match f.seen.get(name) {
            Some(r) if r == revision => {}
            Some(r) => summary.feed_problems.push(format!("{name}: acknowledged at {revision}, feed said {r}")),
            None => summary.feed_problems.push(format!("{name} (revision {revision}) never came through the feed")),
        }
    }
    let unknown: std::collections::HashSet<&String> = unknown.iter().collect();
    for name in f.seen.keys() {
        if !acked.contains_key(name) && !unknown.contains(name) {
            summary.feed_problems.push(format!("{name} came through the feed but nobody wrote it"));
        }
    }
}

fn print_summary(plan: &Plan, s: &Summary) {
    let mut out = String::new();
    out.push_str(&format!(
        "\nfault run summary — seed {}, {} s, {} rounds\n",
        plan.seed,
        plan.duration.as_secs(),
        s.rounds
    ));
    out.push_str(&format!("{:<32} {:>6} {:>14} {:>14}\n", "fault", "count", "recovery p50", "recovery max"));
    for (kind, times) in &s.faults {
        let mut t = times.clone();
        t.sort();
        out.push_str(&format!(
            "{:<32} {:>6} {:>13.2}s {:>13.2}s\n",
            kind.name(),
            t.len(),
            t[t.len() / 2].as_secs_f64(),
            t[t.len() - 1].as_secs_f64()
        ));
    }
    let yes_no = |b: bool| if b { "yes" } else { "NO" };
    out.push_str(&format!(
        "operations: {} ok, {} failed, {} unknown; {} register ops on {} keys; {} ledger writes acknowledged\n",
        s.counts.ok, s.counts.failed, s.counts.unknown, s.register_ops, s.keys_checked, s.acked
    ));
    out.push_str(&format!(
        "linearizable: {} ({} violations, {} undecided)\nlost acknowledged writes: {}\n\
         change feed in order and complete: {} ({} reconnects)\nreplicas identical after each round: {}\n\
         archive restores to the live state (drill): {}\n",
        yes_no(s.violations.is_empty() && s.undecided.is_empty()),
        s.violations.len(),
        s.undecided.len(),
        s.lost.len(),
        yes_no(s.feed_problems.is_empty()),
        s.feed_reconnects,
        yes_no(s.digest_problems.is_empty()),
        yes_no(s.drill.is_none()),
    ));
    // Standard output: nextest shows it for a failing test, `--nocapture` always.
    println!("{out}");
}
