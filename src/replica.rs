//! One running node: its Raft instance, its state, and the two client paths through it —
//! writes (proposed here when leader, forwarded to the leader otherwise) and linearizable reads
//! (a read index from the leader, then a local read once apply has reached it).
//!
//! Every wait is bounded by the request's deadline: with no leader or no quorum the caller gets
//! an error it can act on, never a hang.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keepsake_raft::{LogStore, Node, NodeId, PurgeGate, Raft, StateReader, Write};
use tokio::time::Instant;

use crate::archive::archiver::ArchiveStatus;
use crate::config::NodeConfig;
use crate::peer::client::Peers;
use crate::proposer::{now_us, Committed, Proposer};
use crate::read_index::{ReadIndex, RoundError};

/// Answer this long before the client's deadline, so the answer arrives in time.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicaError {
    #[error("{0}")]
    NoLeader(String),
    #[error("{0}")]
    NoQuorum(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Timeout(String),
    #[error("the leader answered: {}", .0.message())]
    Remote(tonic::Status),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    NotArchived(String),
    #[error("{0}")]
    ArchiveBehind(String),
    #[error("the node is shutting down; retry on another node")]
    ShuttingDown,
}

pub struct Replica {
    pub id: NodeId,
    pub config: NodeConfig,
    pub raft: Raft,
    pub reader: StateReader,
    pub log: LogStore,
    pub gate: PurgeGate,
    pub peers: Peers,
    pub proposer: Proposer,
    pub read_index: ReadIndex,
    pub archive: ArchiveView,
}

/// What the node knows of its archive: where it is and the archiver's status.
pub struct ArchiveView {
    pub url: String,
    pub status: tokio::sync::watch::Receiver<ArchiveStatus>,
    /// ARCHIVED writes waiting: while any waits, the archiver cuts segments at once.
    pub waiting: Arc<AtomicUsize>,
    /// Takes archive snapshots on demand (`keepsake backup snapshot`).
    pub snapshotter: Arc<crate::archive::snapshotter::Snapshotter>,
}

impl ArchiveView {
    /// Counts one waiting ARCHIVED write until the guard drops.
    pub fn urgent(&self) -> UrgentGuard {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        UrgentGuard(self.waiting.clone())
    }
}

pub struct UrgentGuard(Arc<AtomicUsize>);

impl Drop for UrgentGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Replica {
    /// The current leader and its address, as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, Node)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    fn time_left(deadline: Instant) -> Duration {
        deadline.saturating_duration_since(Instant::now()).saturating_sub(DEADLINE_MARGIN)
    }

    /// Commits one client write through the leader; `forwarded` writes are not forwarded again.
    /// With `archived`, answers only once the write's entry is in the archive.
    pub async fn write(
        &self,
        write: Write,
        archived: bool,
        deadline: Instant,
        forwarded: bool,
    ) -> Result<Committed, ReplicaError> {
        match self.leader() {
            None => Err(no_leader()),
            Some((id, _)) if id == self.id => {
                self.check_quorum()?;
                self.check_archive_backlog()?;
                let _urgent = archived.then(|| self.archive.urgent());
                let committed = tokio::time::timeout(Self::time_left(deadline), self.proposer.propose(write))
                    .await
                    .map_err(|_| {
                    ReplicaError::Timeout(
                        "the write was not committed before the deadline (no quorum answered); it may still be \
                             applied: retry with if_revision to be safe"
                            .into(),
                    )
                })??;
                if archived && matches!(committed.outcome, keepsake_raft::WriteOutcome::Applied { .. }) {
                    self.wait_archived(committed.log_index, deadline).await?;
                }
                Ok(committed)
            }
            Some(_) if forwarded => Err(ReplicaError::NoLeader("leadership is moving; retry shortly".into())),
            Some((id, node)) => {
                let (log_index, proposed_at_us, outcome) = self
                    .peers
                    .propose(&node.peer_addr, &write, archived, Self::time_left(deadline))
                    .await
                    .map_err(|s| remote(id, s))?;
                Ok(Committed { log_index, proposed_at_us, outcome })
            }
        }
    }

    /// Waits until the archive holds `index` (DESIGN.md §1.3: an ARCHIVED write survives the loss
    /// of every node).
    async fn wait_archived(&self, index: u64, deadline: Instant) -> Result<(), ReplicaError> {
        let mut status = self.archive.status.clone();
        let reached =
            async move { status.wait_for(|s| s.archived_index.is_some_and(|a| a >= index)).await.map(|_| ()) };
        match tokio::time::timeout(Self::time_left(deadline), reached).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ReplicaError::ShuttingDown),
            Err(_) => {
                let error = self.archive.status.borrow().last_error.clone();
                let why = if error.is_empty() { String::new() } else { format!(" (archive: {error})") };
                Err(ReplicaError::NotArchived(format!(
                    "the write is committed at log index {index} on a quorum but was not archived before the \
                     deadline{why}; it will be archived when the archive catches up"
                )))
            }
        }
    }

    /// Refuses writes while the archive is further behind than `archive.max_backlog_*` allow
    /// (DESIGN.md §4): the client learns the archive is behind, rather than the gap growing
    /// silently.
    fn check_archive_backlog(&self) -> Result<(), ReplicaError> {
        match self.archive_backlog_problem() {
            Some(problem) => Err(ReplicaError::ArchiveBehind(problem)),
            None => Ok(()),
        }
    }

    /// Encoded bytes of the committed entries after `archived`, measured now rather than when
    /// the archiver last looked (it may be stuck retrying an upload).
    pub fn archive_backlog_bytes(&self, archived: Option<u64>) -> u64 {
        let committed = self.log.committed_index();
        match archived {
            Some(a) if committed <= a => 0,
            archived => self.log.bytes_between(archived, committed),
        }
    }

    /// Why writes are refused for the archive's sake right now, if they are.
    pub fn archive_backlog_problem(&self) -> Option<String> {
        let limits = &self.config.archive;
        let s = self.archive.status.borrow();
        if !s.uploading {
            return None; // not the uploader, or leadership just moved here
        }
        let seconds =
            if s.pending_since_us == 0 { 0 } else { (now_us() - s.pending_since_us).max(0) as u64 / 1_000_000 };
        let why = if s.last_error.is_empty() {
            "uploads are slower than writes".to_owned()
        } else {
            format!("last archive error: {}", s.last_error)
        };
        let backlog_bytes = self.archive_backlog_bytes(s.archived_index);
        if limits.max_backlog_bytes > 0 && backlog_bytes > limits.max_backlog_bytes {
            return Some(format!(
                "writes are paused: the archive is {} bytes behind the committed log (archive.max_backlog_bytes = \
                 {}); {why}. Retry later; `keepsake backup status` shows the lag",
                backlog_bytes, limits.max_backlog_bytes
            ));
        }
        if limits.max_backlog_seconds > 0 && seconds > limits.max_backlog_seconds {
            return Some(format!(
                "writes are paused: the oldest committed write not yet archived has waited {seconds} s \
                 (archive.max_backlog_seconds = {}); {why}. Retry later; `keepsake backup status` shows the lag",
                limits.max_backlog_seconds
            ));
        }
        None
    }

    /// Refuses writes up front when this leader has lost touch with its quorum, rather than
    /// letting them wait for the deadline.
    fn check_quorum(&self) -> Result<(), ReplicaError> {
        let limit = self.config.raft.election_timeout_max_ms;
        let since = self.raft.metrics().borrow().millis_since_quorum_ack;
        match since {
            Some(ms) if ms > limit => Err(ReplicaError::NoQuorum(format!(
                "the leader has not heard from a quorum for {ms} ms: too many nodes are down or unreachable"
            ))),
            _ => Ok(()),
        }
    }

    /// Waits until this node's state includes every write acknowledged before the call.
    pub async fn read_barrier(&self, deadline: Instant) -> Result<(), ReplicaError> {
        let index = match self.leader() {
            None => return Err(no_leader()),
            Some((id, _)) if id == self.id => self.leader_read_index(deadline).await?,
            Some((id, node)) => {
                self.peers.read_index(&node.peer_addr, Self::time_left(deadline)).await.map_err(|s| remote(id, s))?
            }
        };
        let mut applied = self.reader.watch();
        let reached = async move { applied.wait_for(|p| p.index >= index).await.map(|_| ()) };
        match tokio::time::timeout(Self::time_left(deadline), reached).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ReplicaError::ShuttingDown),
            Err(_) => Err(ReplicaError::Timeout(format!(
                "this node had not applied up to index {index} before the deadline; retry or read from the leader"
            ))),
        }
    }

    /// As leader: confirms leadership with a quorum and returns the index reads must wait for.
    /// A quorum round can miss its short timeout under load, so it is retried until the deadline.
    pub async fn leader_read_index(&self, deadline: Instant) -> Result<u64, ReplicaError> {
        let confirm = async {
            loop {
                match self.read_index.next_round().await {
                    Ok(index) => return Ok(index),
                    Err(RoundError::QuorumNotEnough(e)) => {
                        tracing::debug!(error = %e, "read index: quorum not confirmed yet; retrying");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(RoundError::NotLeader) => {
                        return Err(ReplicaError::NoLeader("this node stopped being the leader; retry".into()))
                    }
                    Err(RoundError::Fatal(e)) => return Err(ReplicaError::Internal(format!("raft stopped: {e}"))),
                }
            }
        };
        tokio::time::timeout(Self::time_left(deadline), confirm).await.unwrap_or_else(|_| {
            Err(ReplicaError::NoQuorum(
                "could not confirm leadership with a quorum before the deadline: too many nodes are down or \
                 unreachable"
                    .into(),
            ))
        })
    }
}

fn no_leader() -> ReplicaError {
    ReplicaError::NoLeader(
        "no leader is elected right now (an election is under way or a quorum is down); retry shortly".into(),
    )
}

fn remote(leader: NodeId, status: tonic::Status) -> ReplicaError {
    match status.code() {
        // The leader could not be reached at all.
        tonic::Code::Unavailable | tonic::Code::Unknown if status.message().contains("transport") => {
            ReplicaError::NoLeader(format!(
                "the leader (node {leader}) is unreachable: {}; retry shortly",
                status.message()
            ))
        }
        _ => ReplicaError::Remote(status),
    }
}

/// Builds a Raft snapshot that covers everything this node has applied; returns its index.
/// openraft ignores a trigger while it is building a snapshot, and that one may stop short of
/// the applied index: it asks again until a snapshot covers it. Unbounded: callers add a deadline.
pub async fn snapshot_covering_applied(raft: &Raft) -> Result<u64, ReplicaError> {
    let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
    let mut metrics = raft.metrics();
    loop {
        raft.trigger().snapshot().await.map_err(|e| ReplicaError::Internal(format!("raft stopped: {e}")))?;
        let built = metrics.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= applied));
        match tokio::time::timeout(Duration::from_millis(500), built).await {
            Ok(Ok(m)) => return Ok(m.snapshot.map_or(0, |s| s.index)),
            Ok(Err(_)) => return Err(ReplicaError::ShuttingDown),
            Err(_) => continue,
        }
    }
}
