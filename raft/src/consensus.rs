//! One node's consensus front: its Raft instance with the log, state and purge gate beneath
//! it, the proposer that commits writes and the read index that confirms linearizable reads.
//! The node's gRPC services reach Raft through these methods; the peer transport and the
//! archiver take the `Raft` and store handles themselves.
//!
//! Invariant: a write, a read barrier and a read index wait at most until the caller's
//! deadline less a margin, so the answer arrives in time; with no leader or no quorum the
//! caller gets an `Error` it can act on, never a hang. Membership changes and snapshots wait
//! on openraft (callers that need a bound add one).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, RaftMetrics};
use tokio::time::Instant;

use crate::error::Error;
use crate::lease::{elected, Acks, Lease};
use crate::proposer::{Committed, Proposer};
use crate::read_index::{ReadIndex, RoundError};
use crate::transfer::Leader;
use crate::{LogStore, Node, NodeId, PurgeGate, Raft, StateReader, Write};

/// Answer this long before the client's deadline, so the answer arrives in time.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// How the consensus front is tuned (from the node's `[raft]` and `[limits]` config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Confirm reads by the leader's lease (`lease.rs`) when it holds.
    pub lease_reads: bool,
    /// Writes queued on the leader before `Error::Overloaded`.
    pub max_pending_writes: usize,
}

pub struct Consensus {
    id: NodeId,
    raft: Raft,
    log: LogStore,
    reader: StateReader,
    gate: PurgeGate,
    proposer: Proposer,
    read_index: ReadIndex,
    settings: Settings,
}

/// The parts of a node's store that the consensus front works on.
pub struct Parts {
    pub log: LogStore,
    pub reader: StateReader,
    pub gate: PurgeGate,
}

impl Consensus {
    /// Starts the front on a Raft instance that runs over `parts`. `acks` is where the peer
    /// transport records accepted AppendEntries (the lease's evidence); `start_term` is the term
    /// in the vote this process started with (no lease in it: `lease.rs`).
    pub fn start(id: NodeId, raft: Raft, parts: Parts, acks: Arc<Acks>, settings: Settings, start_term: u64) -> Self {
        // An entry left unanswered across a term change gives way after two election timeouts.
        let grace = 2 * settings.election_timeout_max;
        let proposer =
            Proposer::start(raft.clone(), parts.log.clone(), parts.reader.clone(), settings.max_pending_writes, grace);
        let lease = Lease::new(id, acks, settings.election_timeout_min, settings.lease_reads, start_term);
        let read_index = ReadIndex::start(raft.clone(), id, parts.log.clone(), lease);
        Consensus { id, raft, log: parts.log, reader: parts.reader, gate: parts.gate, proposer, read_index, settings }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The openraft instance, for the peer transport's RPCs.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn log(&self) -> &LogStore {
        &self.log
    }

    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    pub fn lease(&self) -> &Lease {
        &self.read_index.lease
    }

    /// Leadership confirmations that needed a quorum round (the lease did not hold).
    pub fn read_rounds(&self) -> u64 {
        self.read_index.rounds.load(Ordering::Relaxed)
    }

    /// A copy of Raft's current metrics.
    pub fn metrics(&self) -> RaftMetrics<NodeId, Node> {
        self.raft.metrics().borrow().clone()
    }

    pub fn committed_index(&self) -> u64 {
        self.log.committed_index()
    }

    /// The time left before `deadline`, less the margin that lets the answer arrive in time.
    pub fn time_left(deadline: Instant) -> Duration {
        deadline.saturating_duration_since(Instant::now()).saturating_sub(DEADLINE_MARGIN)
    }

    /// The current leader and its address, as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, Node)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
    }

    /// Refuses writes up front when this leader has lost touch with its quorum, rather than
    /// letting them wait for the deadline.
    pub fn check_quorum(&self) -> Result<(), Error> {
        let limit = self.settings.election_timeout_max.as_millis() as u64;
        match self.raft.metrics().borrow().millis_since_quorum_ack {
            Some(ms) if ms > limit => Err(Error::NoQuorum(format!(
                "the leader has not heard from a quorum for {ms} ms: too many nodes are down or unreachable"
            ))),
            _ => Ok(()),
        }
    }

    /// As leader: commits one client write (group commit in `proposer.rs`).
    pub async fn propose(&self, write: Write, deadline: Instant) -> Result<Committed, Error> {
        tokio::time::timeout(Self::time_left(deadline), self.proposer.propose(write)).await.map_err(|_| {
            Error::Timeout(
                "the write was not committed before the deadline (no quorum answered); it may still be applied: \
                 retry with if_revision to be safe"
                    .into(),
            )
        })?
    }

    /// As leader: confirms leadership (lease or quorum round) and returns the index reads must
    /// wait for. A quorum round can miss its short timeout under load, so it is retried until
    /// the deadline.
    pub async fn read_index(&self, deadline: Instant) -> Result<u64, Error> {
        let confirm = async {
            loop {
                match self.read_index.next_round().await {
                    Ok(index) => return Ok(index),
                    Err(RoundError::QuorumNotEnough(e)) => {
                        tracing::debug!(error = %e, "read index: quorum not confirmed yet; retrying");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(RoundError::NotLeader) => {
                        return Err(Error::NoLeader("this node stopped being the leader; retry".into()))
                    }
                    Err(RoundError::Fatal(e)) => return Err(Error::raft_stopped(e)),
                }
            }
        };
        tokio::time::timeout(Self::time_left(deadline), confirm).await.unwrap_or_else(|_| {
            Err(Error::NoQuorum(
                "could not confirm leadership with a quorum before the deadline: too many nodes are down or \
                 unreachable"
                    .into(),
            ))
        })
    }

    /// Waits until this node has applied `index`.
    pub async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), Error> {
        let mut applied = self.reader.watch();
        let reached = async move { applied.wait_for(|p| p.index >= index).await.map(|_| ()) };
        match tokio::time::timeout(Self::time_left(deadline), reached).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::Timeout(format!(
                "this node had not applied up to index {index} before the deadline; retry or read from the leader"
            ))),
        }
    }

    /// Builds a Raft snapshot that covers everything this node has applied; returns its index.
    pub async fn snapshot_covering_applied(&self) -> Result<u64, Error> {
        snapshot_covering_applied(&self.raft).await
    }

    /// As leader: hands leadership to `to` (`transfer.rs`); returns the new leader and term.
    pub async fn transfer_leader<F, Fut>(
        &self,
        to: NodeId,
        deadline: Instant,
        timeout_now: F,
    ) -> Result<(NodeId, u64), Error>
    where
        F: FnOnce(Node, u64) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let leader = Leader {
            raft: &self.raft,
            me: self.id,
            lease: self.lease(),
            election_timeout_max: self.settings.election_timeout_max,
        };
        crate::transfer::run(leader, to, deadline, timeout_now).await
    }

    /// As the target of a leader transfer: stands for election, if this node still follows
    /// `from` in `term`.
    pub async fn stand_for_election(&self, from: NodeId, term: u64) -> Result<(), Error> {
        let follows = self
            .raft
            .with_raft_state(move |st| {
                let vote = st.vote_ref();
                elected(vote, from) && vote.leader_id().get_term() == term
            })
            .await
            .map_err(|e| Error::NoLeader(format!("raft stopped: {e}")))?;
        if !follows {
            return Err(Error::FailedPrecondition(format!(
                "this node no longer follows node {from} in term {term}; not standing for election"
            )));
        }
        tracing::info!(from, term, "leader transfer: starting an election");
        self.raft.trigger().elect().await.map_err(|e| Error::NoLeader(format!("raft stopped: {e}")))
    }

    /// As leader: adds `node` as a learner and answers once it holds the membership entry that
    /// added it (then it has the log, or a snapshot, up to there and can be promoted without
    /// stalling commits). Returns that entry's index.
    pub async fn add_learner(&self, id: NodeId, node: Node, deadline: Instant) -> Result<u64, Error> {
        let resp = self
            .raft
            .add_learner(id, node, false)
            .await
            .map_err(|e| Error::FailedPrecondition(format!("cannot add learner {id}: {e}")))?;
        let index = resp.log_id.index;
        let mut metrics = self.raft.metrics();
        let caught_up = async move {
            metrics
                .wait_for(|m| {
                    m.replication.as_ref().and_then(|r| r.get(&id)).is_some_and(|l| l.is_some_and(|l| l.index >= index))
                })
                .await
                .map(|_| ())
        };
        match tokio::time::timeout_at(deadline, caught_up).await {
            Ok(_) => Ok(index),
            Err(_) => Err(Error::Deadline(format!(
                "node {id} was added as a learner but has not caught up yet; check that it runs and that its \
                 peer address is reachable, then watch `keepsake cluster status`"
            ))),
        }
    }

    /// As leader: changes the membership; returns the index of the entry that did it.
    pub async fn change_membership(&self, change: ChangeMembers<NodeId, Node>, retain: bool) -> Result<u64, Error> {
        let refused = |e: RaftError<NodeId, ClientWriteError<NodeId, Node>>| {
            Error::FailedPrecondition(format!("membership change refused: {e}"))
        };
        let resp = self.raft.change_membership(change, retain).await.map_err(refused)?;
        Ok(resp.log_id.index)
    }

    /// A node whose log is empty starts the cluster with `members`. Every initial member may do
    /// this with the same membership: openraft accepts that.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, Node>) -> Result<(), Error> {
        if members.is_empty() || self.raft.is_initialized().await.map_err(Error::raft_stopped)? {
            return Ok(());
        }
        let voters = members.len();
        match self.raft.initialize(members).await {
            Ok(()) => tracing::info!("bootstrapped a new cluster with {voters} voters"),
            Err(e) => tracing::info!("not bootstrapping: {e}"),
        }
        Ok(())
    }

    /// The one place that purges the Raft log: behind the newest snapshot, keeping `keep`
    /// entries, and never past the purge gate (docs/design.md §1.5). Runs until Raft stops.
    pub async fn purge_behind_snapshots(&self, keep: u64) {
        let mut metrics = self.raft.metrics();
        let mut last = 0;
        loop {
            let snapshot = metrics.borrow_and_update().snapshot.map_or(0, |s| s.index);
            let upto = snapshot.saturating_sub(keep).min(self.gate.limit());
            if upto > last {
                if let Err(e) = self.raft.trigger().purge_log(upto).await {
                    tracing::warn!(error = %e, "cannot purge the log");
                    return;
                }
                last = upto;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves with the error that stopped this node's Raft.
    pub async fn failure(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(e) = &metrics.borrow_and_update().running_state {
                return e.to_string();
            }
            if metrics.changed().await.is_err() {
                return "raft stopped without saying why".into();
            }
        }
    }
}

/// Builds a Raft snapshot that covers everything `raft` has applied; returns its index.
/// openraft ignores a trigger while it is building a snapshot, and that one may stop short of
/// the applied index: it asks again until a snapshot covers it. Unbounded: callers add a
/// deadline.
pub async fn snapshot_covering_applied(raft: &Raft) -> Result<u64, Error> {
    let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
    let mut metrics = raft.metrics();
    loop {
        raft.trigger().snapshot().await.map_err(Error::raft_stopped)?;
        let built = metrics.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= applied));
        match tokio::time::timeout(Duration::from_millis(500), built).await {
            Ok(Ok(m)) => return Ok(m.snapshot.map_or(0, |s| s.index)),
            Ok(Err(_)) => return Err(Error::ShuttingDown),
            Err(_) => continue,
        }
    }
}
