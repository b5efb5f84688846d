//! Read-index batching on the leader: one leadership confirmation (a heartbeat round to a
//! quorum, openraft's `get_read_log_id`) serves every linearizable read that was waiting when
//! the round began, instead of one round per read.
//!
//! Invariant: a read is answered only by a round that *started after the read arrived*, so the
//! index it gets is at least the commit index at its arrival, confirmed by a quorum after it —
//! what linearizability needs. Reads arriving during a round wait for the next one.

use keepsake_raft::Raft;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

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
}

impl ReadIndex {
    pub fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        ReadIndex { tx }
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
async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let result = match raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(RoundError::QuorumNotEnough(e.to_string()))
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => Err(RoundError::NotLeader),
            Err(RaftError::Fatal(e)) => Err(RoundError::Fatal(e.to_string())),
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}
