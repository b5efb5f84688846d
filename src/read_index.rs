//! Read-index batching on the leader: one leadership confirmation serves every linearizable
//! read that was waiting when it began, instead of one per read. A confirmation is the leader's
//! lease when it holds (`lease`: no messages at all), else a heartbeat round to a quorum
//! (openraft's `get_read_log_id`).
//!
//! Invariant: a read is answered only by a confirmation that *started after the read arrived*,
//! so the index it gets is at least the commit index at its arrival, confirmed after it — what
//! linearizability needs. Reads arriving during a confirmation wait for the next one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keepsake_raft::Raft;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::lease::Lease;

/// Why a confirmation round gave no read index.
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

impl ReadIndex {
    pub fn start(raft: Raft, lease: Lease) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (lease, rounds) = (Arc::new(lease), Arc::new(AtomicU64::new(0)));
        tokio::spawn(run(raft, lease.clone(), rounds.clone(), rx));
        ReadIndex { tx, lease, rounds }
    }

    /// The index a linearizable read must see applied, from the next confirmation round.
    pub async fn next_round(&self) -> Result<u64, RoundError> {
        let (done, rx) = oneshot::channel();
        self.tx.send(done).map_err(|_| RoundError::Fatal("the read-index task has stopped".into()))?;
        rx.await.map_err(|_| RoundError::Fatal("the read-index task has stopped".into()))?
    }
}

/// The queue is unbounded but cannot grow without bound: every waiter is a request that the
/// server's concurrency limit and deadlines already bound, and each round drains all of them.
async fn run(raft: Raft, lease: Arc<Lease>, rounds: Arc<AtomicU64>, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let result = match lease.read_index().await {
            Some(index) => Ok(index),
            None => {
                rounds.fetch_add(1, Ordering::Relaxed);
                round(&raft).await
            }
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
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
