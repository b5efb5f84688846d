//! Read-index batching on the leader: one leadership confirmation serves every linearizable
//! read that was waiting when it began, instead of one per read. A confirmation is the leader's
//! lease when it holds (`lease`: no messages at all), else a heartbeat round to a quorum
//! (openraft's `get_read_log_id`).
//!
//! Invariant: a read is answered only by a confirmation that *started after the read arrived*,
//! and the index it gets covers every write acknowledged before it arrived: the commit index
//! then, and at least the leader's floor — the last index in its log when it first confirmed a
//! read under its current vote. The floor matters to a leader that restarted and took up its
//! term again: openraft writes no new entry then, and its commit index, not saved with fsync,
//! may come back lower than writes it had acknowledged before the restart. Reads arriving
//! during a confirmation wait for the next one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::Vote;
use tokio::sync::{mpsc, oneshot};

use crate::lease::{leading, Lease};
use crate::{LogStore, NodeId, Raft};

/// Why a confirmation gave no read index.
#[derive(Debug, Clone)]
pub enum RoundError {
    /// A quorum did not answer this round in time; a later round may succeed.
    QuorumNotEnough(String),
    /// This node is not the leader (any more).
    NotLeader,
    /// Raft has stopped.
    Fatal(String),
}

type Waiter = oneshot::Sender<Result<u64, RoundError>>;

#[derive(Clone)]
pub struct ReadIndex {
    tx: mpsc::UnboundedSender<Waiter>,
    pub lease: Arc<Lease>,
    /// Quorum rounds run (when the lease did not hold), for `/metrics`.
    pub rounds: Arc<AtomicU64>,
}

/// What confirms reads: Raft, its log (for the floor) and the lease.
struct Confirmer {
    raft: Raft,
    me: NodeId,
    log: LogStore,
    lease: Arc<Lease>,
    rounds: Arc<AtomicU64>,
    /// The floor under the vote it was taken in.
    floor: Option<(Vote<NodeId>, u64)>,
}

impl ReadIndex {
    pub fn start(raft: Raft, me: NodeId, log: LogStore, lease: Lease) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (lease, rounds) = (Arc::new(lease), Arc::new(AtomicU64::new(0)));
        let confirmer = Confirmer { raft, me, log, lease: lease.clone(), rounds: rounds.clone(), floor: None };
        tokio::spawn(run(confirmer, rx));
        ReadIndex { tx, lease, rounds }
    }

    /// The index a linearizable read must see applied, from the next confirmation.
    pub async fn next_round(&self) -> Result<u64, RoundError> {
        let (done, rx) = oneshot::channel();
        self.tx.send(done).map_err(|_| RoundError::Fatal("the read-index task has stopped".into()))?;
        rx.await.map_err(|_| RoundError::Fatal("the read-index task has stopped".into()))?
    }
}

/// The queue is unbounded but cannot grow without bound: every waiter is a request that the
/// server's concurrency limit and deadlines already bound, and each confirmation drains all of
/// them.
async fn run(mut confirmer: Confirmer, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let result = confirmer.confirm().await;
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

impl Confirmer {
    async fn confirm(&mut self) -> Result<u64, RoundError> {
        let now = leading(&self.raft, self.me).await.map_err(RoundError::Fatal)?.ok_or(RoundError::NotLeader)?;
        let floor = match self.floor {
            Some((vote, floor)) if vote == now.vote => floor,
            _ => {
                // Taken after the core said this node leads: the log holds at least what it held
                // when the leadership began, and a leader's log only grows.
                let floor = self.log.last_index();
                self.floor = Some((now.vote, floor));
                floor
            }
        };
        let index = match self.lease.confirm(&now) {
            Some(index) => index,
            None => {
                self.rounds.fetch_add(1, Ordering::Relaxed);
                round(&self.raft).await?
            }
        };
        Ok(index.max(floor))
    }
}

/// One leadership confirmation by a heartbeat round to a quorum.
async fn round(raft: &Raft) -> Result<u64, RoundError> {
    match raft.get_read_log_id().await {
        Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index)),
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
            Err(RoundError::QuorumNotEnough(e.to_string()))
        }
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => Err(RoundError::NotLeader),
        Err(RaftError::Fatal(e)) => Err(RoundError::Fatal(e.to_string())),
    }
}
