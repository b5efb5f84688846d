//! The clients of a fault run and what they record.
//!
//! - Register clients: puts, conditional puts, deletes and linearizable gets on a few keys,
//!   each operation recorded with its invocation and completion time (or as unknown) for the
//!   linearizability checker.
//! - Ledger clients: each writes items nobody else writes, once; every acknowledged one must be
//!   readable at the end, with the revision it was acknowledged at.
//! - A change-feed follower of the ledger user, reconnecting to any node from the last revision
//!   it saw: revisions must only go up, and at the end it must have seen every acknowledged item.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use keepsake::proto::v1::{ChangesRequest, Consistency, DeleteRequest, Durability, GetRequest, ItemKey, PutRequest};
use tonic::Code;

use crate::checker::{Input, Op, Output};
use crate::common::{key, request, Cluster};
use crate::rng::Rng;

pub const REGISTER_USER: &str = "registers";
pub const LEDGER_USER: &str = "ledger";
/// The deadline of one client operation.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);

/// Everything the clients of one round recorded.
#[derive(Default)]
pub struct History {
    /// Per key, the register operations.
    pub registers: BTreeMap<String, Vec<Op>>,
    /// Ledger items acknowledged: item id → revision.
    pub acked: HashMap<String, u64>,
    /// Ledger writes whose outcome is unknown.
    pub unknown: Vec<String>,
    pub counts: Counts,
}

#[derive(Default, Clone, Copy, Debug)]
pub struct Counts {
    pub ok: u64,
    /// Definitely not done (a refused conditional write counts as ok: it is an answer).
    pub failed: u64,
    pub unknown: u64,
}

impl Counts {
    pub fn add(&mut self, o: Counts) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.unknown += o.unknown;
    }
}

/// The clock every recorded time is read from.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Clock {
        Clock(Instant::now())
    }
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// One round's clients: `registers` register clients on `keys` keys and `ledgers` ledger
/// clients, all in collection `name`.
#[derive(Clone)]
pub struct Round {
    pub name: String,
    pub keys: usize,
    pub registers: usize,
    pub ledgers: usize,
    pub seed: u64,
}

/// Runs the round's clients until `stop` is set; returns what they recorded.
pub async fn run_clients(cluster: Arc<Cluster>, round: Round, clock: Clock, stop: Arc<AtomicBool>) -> History {
    let history = Arc::new(Mutex::new(History::default()));
    let mut tasks = Vec::new();
    for c in 0..round.registers {
        let (cluster, round, history, stop) = (cluster.clone(), round.clone(), history.clone(), stop.clone());
        let rng = Rng::new(round.seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9));
        tasks.push(tokio::spawn(register_client(cluster, round, c, rng, clock, history, stop)));
    }
    for c in 0..round.ledgers {
        let (cluster, name, history, stop) = (cluster.clone(), round.name.clone(), history.clone(), stop.clone());
        let rng = Rng::new(round.seed ^ (c as u64 + 101).wrapping_mul(0x9e37_79b9));
        tasks.push(tokio::spawn(ledger_client(cluster, name, c, rng, history, stop)));
    }
    for t in tasks {
        t.await.expect("a client task panicked");
    }
    Arc::try_unwrap(history).ok().expect("every client is done").into_inner().unwrap()
}

/// After a pause of up to `jitter_ms`, a live node chosen at random (a client of a real
/// deployment would retry another node); None, after another 100 ms, while none is live.
async fn next_node(cluster: &Cluster, rng: &mut Rng, jitter_ms: u64) -> Option<u64> {
    tokio::time::sleep(Duration::from_millis(rng.below(jitter_ms))).await;
    let live = cluster.live_ids();
    if live.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        return None;
    }
    Some(rng.pick(&live))
}

/// Register `k` of round `round`: its key, and its name in the history.
pub fn register(round: &str, k: usize) -> (ItemKey, String) {
    (key(REGISTER_USER, round, &format!("k{k}")), format!("{round}/k{k}"))
}

fn encode(value: u64) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

/// A value the clients never write decodes to u64::MAX, which the checker cannot explain.
pub fn decode(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX)
}

async fn register_client(
    cluster: Arc<Cluster>,
    round: Round,
    client: usize,
    mut rng: Rng,
    clock: Clock,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0u64;
    // The revision this client last saw per key: what its conditional puts expect.
    let mut seen: HashMap<usize, u64> = HashMap::new();
    let mut counts = Counts::default();
    while !stop.load(Ordering::Relaxed) {
        let Some(node) = next_node(&cluster, &mut rng, 40).await else { continue };
        let k = rng.below(round.keys as u64) as usize;
        let (item_key, name) = register(&round.name, k);
        seq += 1;
        let value = ((client as u64 + 1) << 40) | seq;
        let input = match rng.below(100) {
            0..40 => Input::Get,
            40..65 => Input::Put { value },
            65..85 => Input::Cas { expect: seen.get(&k).copied().unwrap_or(0), value },
            _ => Input::Delete,
        };
        let mut store = cluster.store(node);
        let called = clock.now();
        let result = tokio::time::timeout(OP_TIMEOUT + Duration::from_millis(500), async {
            match input {
                Input::Get => {
                    let req = GetRequest { key: Some(item_key.clone()), consistency: Consistency::Linearizable as i32 };
                    store.get(request(req, OP_TIMEOUT)).await.map(|r| {
                        let item = r.into_inner().item.expect("Get answers an item");
                        Output::Read(Some((decode(&item.value), item.revision)))
                    })
                }
                Input::Put { value } | Input::Cas { value, .. } => {
                    let if_revision = match input {
                        Input::Cas { expect, .. } => Some(expect),
                        _ => None,
                    };
                    let req = PutRequest {
                        key: Some(item_key.clone()),
                        value: encode(value),
                        if_revision,
                        ..Default::default()
                    };
                    store
                        .put(request(req, OP_TIMEOUT))
                        .await
                        .map(|r| Output::Written { revision: r.into_inner().revision })
                }
                Input::Delete => {
                    let req = DeleteRequest { key: Some(item_key.clone()), ..Default::default() };
                    store
                        .delete(request(req, OP_TIMEOUT))
                        .await
                        .map(|r| Output::Written { revision: r.into_inner().revision })
                }
            }
        })
        .await;
        let returned = clock.now();
        let output = match result {
            Ok(Ok(out)) => out,
            Ok(Err(s)) => match (input, s.code()) {
                (Input::Get, Code::NotFound) => Output::Read(None),
                (Input::Cas { .. }, Code::FailedPrecondition) => Output::CasRefused,
                (Input::Delete, Code::NotFound) => Output::DeleteRefused,
                // A failed read changed nothing: it is left out of the history.
                (Input::Get, _) => {
                    counts.failed += 1;
                    continue;
                }
                (_, Code::InvalidArgument) => panic!("the workload sent an invalid request: {}", s.message()),
                _ => Output::Unknown,
            },
            Err(_) if input == Input::Get => {
                counts.failed += 1;
                continue;
            }
            Err(_) => Output::Unknown,
        };
        match output {
            Output::Unknown => counts.unknown += 1,
            _ => counts.ok += 1,
        }
        match output {
            Output::Written { revision } => {
                seen.insert(k, if matches!(input, Input::Delete) { 0 } else { revision });
            }
            Output::Read(r) => {
                seen.insert(k, r.map_or(0, |(_, rev)| rev));
            }
            _ => {}
        }
        let returned = if output == Output::Unknown { u64::MAX } else { returned };
        let op = Op { client, input, output, called, returned };
        history.lock().unwrap().registers.entry(name).or_default().push(op);
    }
    history.lock().unwrap().counts.add(counts);
}

async fn ledger_client(
    cluster: Arc<Cluster>,
    round: String,
    client: usize,
    mut rng: Rng,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0u64;
    let mut counts = Counts::default();
    while !stop.load(Ordering::Relaxed) {
        let Some(node) = next_node(&cluster, &mut rng, 20).await else { continue };
        seq += 1;
        let item = format!("c{client}-{seq}");
        let req = PutRequest {
            key: Some(key(LEDGER_USER, &round, &item)),
            value: item.as_bytes().to_vec(),
            if_revision: Some(0),
            // Every other ledger client waits for its writes to reach the archive.
            durability: if client % 2 == 1 { Durability::Archived } else { Durability::Quorum } as i32,
            ..Default::default()
        };
        let mut store = cluster.store(node);
        let result =
            tokio::time::timeout(OP_TIMEOUT + Duration::from_millis(500), store.put(request(req, OP_TIMEOUT))).await;
        let mut h = history.lock().unwrap();
        match result {
            Ok(Ok(r)) => {
                counts.ok += 1;
                h.acked.insert(format!("{round}/{item}"), r.into_inner().revision);
            }
            Ok(Err(s)) if s.code() == Code::InvalidArgument => panic!("invalid ledger write: {}", s.message()),
            _ => {
                counts.unknown += 1;
                h.unknown.push(format!("{round}/{item}"));
            }
        }
    }
    history.lock().unwrap().counts.add(counts);
}

/// What the change-feed follower saw.
#[derive(Default)]
pub struct Feed {
    /// `collection/item` → revision.
    pub seen: HashMap<String, u64>,
    pub last_revision: u64,
    /// Revisions that did not go up: (previous, this).
    pub out_of_order: Vec<(u64, u64)>,
    pub reconnects: u64,
}

/// Follows the ledger user's changes until `stop`, reconnecting to a random live node from
/// the last revision seen after every error.
pub async fn follow_ledger(cluster: Arc<Cluster>, mut rng: Rng, feed: Arc<Mutex<Feed>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Some(node) = next_node(&cluster, &mut rng, 0).await else { continue };
        let since = feed.lock().unwrap().last_revision;
        let req = ChangesRequest {
            user_id: LEDGER_USER.into(),
            since_revision: since,
            follow: true,
            consistency: Consistency::Linearizable as i32,
        };
        let mut store = cluster.store(node);
        let stream = tokio::time::timeout(OP_TIMEOUT, store.changes(request(req, OP_TIMEOUT * 4))).await;
        if let Ok(Ok(stream)) = stream {
            let mut stream = stream.into_inner();
            loop {
                // A stream that says nothing for a while may sit on a partitioned node: move on.
                let next = tokio::select! {
                    n = tokio::time::timeout(Duration::from_secs(3), stream.next()) => n,
                    _ = wait_for(&stop) => break,
                };
                let Ok(Some(Ok(change))) = next else { break };
                let mut f = feed.lock().unwrap();
                if change.revision <= f.last_revision {
                    let last = f.last_revision;
                    f.out_of_order.push((last, change.revision));
                } else {
                    f.last_revision = change.revision;
                }
                let k = change.key.expect("a change names its item");
                f.seen.insert(format!("{}/{}", k.collection, k.item_id), change.revision);
            }
        }
        feed.lock().unwrap().reconnects += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
