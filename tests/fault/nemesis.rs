//! The nemesis: injects one fault at a time into a running cluster and heals it.
//!
//! Processes are killed (SIGKILL) and paused (SIGSTOP) through the harness; peer links are cut
//! by the proxies every peer dials through (see `proxy.rs`); a disk fills by writing a ballast
//! file into a node's tmpfs data directory; the object store fails through the proxy in front
//! of it. Every random choice comes from the seeded generator the run prints.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keepsake::proto::v1::TriggerSnapshotRequest;

use crate::common::{peer_source_ip, Cluster};
use crate::proxy::{Mode, Proxy};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    KillNode,
    KillLeader,
    PauseLeader,
    IsolateLeader,
    IsolateFollower,
    OneWayFromLeader,
    FlappingLink,
    DiskFull,
    ObjectStoreErrors,
    ObjectStoreSlow,
    ObjectStoreOutage,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::KillNode,
        Kind::KillLeader,
        Kind::PauseLeader,
        Kind::IsolateLeader,
        Kind::IsolateFollower,
        Kind::OneWayFromLeader,
        Kind::FlappingLink,
        Kind::DiskFull,
        Kind::ObjectStoreErrors,
        Kind::ObjectStoreSlow,
        Kind::ObjectStoreOutage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::KillNode => "kill -9 a node",
            Kind::KillLeader => "kill -9 the leader",
            Kind::PauseLeader => "SIGSTOP the leader",
            Kind::IsolateLeader => "leader cut from majority",
            Kind::IsolateFollower => "follower cut (minority)",
            Kind::OneWayFromLeader => "one-way: leader -/-> follower",
            Kind::FlappingLink => "flapping link",
            Kind::DiskFull => "full disk on a node",
            Kind::ObjectStoreErrors => "object store: HTTP 500s",
            Kind::ObjectStoreSlow => "object store: slow",
            Kind::ObjectStoreOutage => "object store: outage",
        }
    }
}

/// A fault in force, and what undoing it needs.
pub struct Active {
    pub kind: Kind,
    pub victim: Option<u64>,
    flapper: Option<tokio::task::JoinHandle<()>>,
    ballast: Option<PathBuf>,
}

pub struct Nemesis {
    cluster: Arc<Cluster>,
    /// Destination node → the proxy its peers dial.
    peers: HashMap<u64, Proxy>,
    object_store: Proxy,
}

impl Nemesis {
    pub fn new(cluster: Arc<Cluster>, peers: HashMap<u64, Proxy>, object_store: Proxy) -> Self {
        Nemesis { cluster, peers, object_store }
    }

    /// The node that leads now (waiting up to 5 s for one), else a random live node.
    async fn leader(&self, rng: &mut Rng) -> u64 {
        for _ in 0..50 {
            if let Some(id) = self.cluster.leader_id().await {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rng.pick(&self.cluster.live_ids())
    }

    fn others(&self, id: u64) -> Vec<u64> {
        self.cluster.ids().into_iter().filter(|&o| o != id).collect()
    }

    /// Connections from `from` to `to` stall.
    fn cut(&self, from: u64, to: u64) {
        self.peers[&to].set_source(peer_source_ip(from).into(), Mode::Stall);
    }

    fn isolate(&self, id: u64) {
        for other in self.others(id) {
            self.cut(id, other);
            self.cut(other, id);
        }
    }

    fn heal_links(&self) {
        for proxy in self.peers.values() {
            proxy.heal();
        }
    }

    /// One of the nodes that do not lead now.
    async fn follower(&self, rng: &mut Rng) -> (u64, u64) {
        let leader = self.leader(rng).await;
        (leader, rng.pick(&self.others(leader)))
    }

    pub async fn inject(&self, kind: Kind, rng: &mut Rng) -> Active {
        let ids = self.cluster.ids();
        let mut active = Active { kind, victim: None, flapper: None, ballast: None };
        let victim = match kind {
            Kind::KillNode => {
                let id = rng.pick(&ids);
                self.cluster.kill(id);
                id
            }
            Kind::KillLeader => {
                let id = self.leader(rng).await;
                self.cluster.kill(id);
                id
            }
            Kind::PauseLeader => {
                let id = self.leader(rng).await;
                self.cluster.pause(id);
                id
            }
            Kind::IsolateLeader => {
                let id = self.leader(rng).await;
                self.isolate(id);
                id
            }
            Kind::IsolateFollower => {
                let (_, id) = self.follower(rng).await;
                self.isolate(id);
                id
            }
            Kind::OneWayFromLeader => {
                let (leader, id) = self.follower(rng).await;
                self.cut(leader, id);
                id
            }
            Kind::FlappingLink => {
                let a = rng.pick(&ids);
                let b = rng.pick(&self.others(a));
                let (to_a, to_b) = (self.peers[&a].handle(), self.peers[&b].handle());
                let (ip_a, ip_b) = (peer_source_ip(a).into(), peer_source_ip(b).into());
                let mut flips = Rng::new(rng.next());
                active.flapper = Some(tokio::spawn(async move {
                    let mut down = false;
                    loop {
                        down = !down;
                        let mode = if down { Mode::Stall } else { Mode::Pass };
                        to_b.set_source(ip_a, mode);
                        to_a.set_source(ip_b, mode);
                        tokio::time::sleep(flips.millis(50, 400)).await;
                    }
                }));
                a
            }
            Kind::DiskFull => {
                let id = rng.pick(&ids);
                let path = self.cluster.data_dir(id).join("ballast");
                fill(&path);
                // Make the node write files now, not only once its preallocated log runs out.
                let mut admin = self.cluster.admin(id);
                let req = crate::common::request(TriggerSnapshotRequest {}, Duration::from_secs(3));
                match tokio::time::timeout(Duration::from_secs(4), admin.trigger_snapshot(req)).await {
                    Ok(Ok(_)) => eprintln!("nemesis: node {id} built a snapshot on a full disk"),
                    Ok(Err(s)) => {
                        eprintln!("nemesis: node {id}: snapshot on a full disk: {:?} {}", s.code(), s.message())
                    }
                    Err(_) => eprintln!("nemesis: node {id}: snapshot on a full disk did not answer"),
                }
                active.ballast = Some(path);
                id
            }
            Kind::ObjectStoreErrors | Kind::ObjectStoreSlow | Kind::ObjectStoreOutage => {
                self.object_store.set_default(match kind {
                    Kind::ObjectStoreErrors => Mode::Http500,
                    Kind::ObjectStoreSlow => Mode::Delay(rng.millis(200, 1500)),
                    _ => rng.pick(&[Mode::Refuse, Mode::Stall]),
                });
                return active;
            }
        };
        active.victim = Some(victim);
        active
    }

    /// Undoes the fault: restarts what was killed, resumes what was paused, heals links, frees
    /// the disk (restarting a node that stopped on it), lets the object store answer again.
    pub async fn heal(&self, active: Active) {
        if let Some(flapper) = active.flapper {
            flapper.abort();
            let _ = flapper.await;
        }
        self.heal_links();
        self.object_store.heal();
        if let Some(path) = &active.ballast {
            std::fs::remove_file(path).unwrap_or_else(|e| panic!("cannot remove {}: {e}", path.display()));
        }
        match (active.kind, active.victim) {
            (Kind::KillNode | Kind::KillLeader, Some(id)) => self.cluster.restart(id),
            (Kind::PauseLeader, Some(id)) => self.cluster.resume(id),
            (Kind::DiskFull, Some(id)) => {
                let tail = self.cluster.log_tail(id, 400);
                let errors: Vec<&str> = tail.lines().filter(|l| l.contains("ERROR") || l.contains("WARN")).collect();
                eprintln!(
                    "nemesis: node {id} on the full disk logged {} warnings/errors; the last: {}",
                    errors.len(),
                    errors.last().unwrap_or(&"(none)")
                );
                if let Some(status) = self.cluster.reap_exited(id) {
                    eprintln!("nemesis: node {id} stopped on the full disk ({status}); restarting it");
                    self.cluster.restart(id);
                }
            }
            _ => {}
        }
    }

    /// Heals everything (for the end of a run, whatever was in force).
    pub fn heal_all(&self) {
        self.heal_links();
        self.object_store.heal();
    }
}

/// Writes zeros to `path` until the filesystem is full.
pub fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    let chunk = vec![0u8; 1 << 20];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // The last partial megabyte too.
    let byte = [0u8; 4096];
    while f.write(&byte).map(|n| n > 0).unwrap_or(false) {}
    let _ = f.sync_all();
}
