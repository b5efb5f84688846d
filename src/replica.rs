//! One running node as the client-facing services see it: the consensus front, the node's
//! config, its peers and its archive, and the two client paths through them — writes (proposed
//! here when leader, forwarded to the leader otherwise) and linearizable reads (a read index
//! from the leader, then a local read once apply has reached it).
//!
//! Every wait is bounded by the request's deadline: with no leader or no quorum the caller gets
//! an error it can act on, never a hang.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keepsake_raft::clock::now_us;
use keepsake_raft::{Committed, Consensus, Error, Node, NodeId, Write};
use tokio::time::Instant;

use crate::backup::snapshotter::Snapshotter;
use crate::backup::status::ArchiveStatus;
use crate::config::NodeConfig;
use crate::peer::client::Peers;

pub struct Replica {
    consensus: Arc<Consensus>,
    config: NodeConfig,
    peers: Peers,
    archive: ArchiveView,
}

/// What the node knows of its archive: where it is and the archiver's status.
pub struct ArchiveView {
    pub url: String,
    pub status: tokio::sync::watch::Receiver<ArchiveStatus>,
    /// ARCHIVED writes waiting: while any waits, the archiver cuts segments at once.
    pub waiting: Arc<AtomicUsize>,
    /// Takes archive snapshots on demand (`keepsake backup snapshot`).
    pub snapshotter: Arc<Snapshotter>,
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
    pub fn new(consensus: Arc<Consensus>, config: NodeConfig, peers: Peers, archive: ArchiveView) -> Self {
        Replica { consensus, config, peers, archive }
    }

    pub fn id(&self) -> NodeId {
        self.consensus.id()
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn consensus(&self) -> &Consensus {
        &self.consensus
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    pub fn archive(&self) -> &ArchiveView {
        &self.archive
    }

    /// The current leader and its address, as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, Node)> {
        self.consensus.leader()
    }

    /// Commits one client write through the leader; `forwarded` writes are not forwarded again.
    /// With `archived`, answers only once the write's entry is in the archive.
    pub async fn write(
        &self,
        write: Write,
        archived: bool,
        deadline: Instant,
        forwarded: bool,
    ) -> Result<Committed, Error> {
        match self.leader() {
            None => Err(no_leader()),
            Some((id, _)) if id == self.id() => {
                self.consensus.check_quorum()?;
                self.check_archive_backlog()?;
                if archived {
                    self.check_archive_refused()?;
                }
                let _urgent = archived.then(|| self.archive.urgent());
                let committed = self.consensus.propose(write, deadline).await?;
                if archived && matches!(committed.outcome, keepsake_raft::WriteOutcome::Applied { .. }) {
                    self.wait_archived(committed.log_index, deadline).await?;
                }
                Ok(committed)
            }
            Some(_) if forwarded => Err(Error::NoLeader("leadership is moving; retry shortly".into())),
            Some((id, node)) => {
                let (log_index, proposed_at_us, outcome) = self
                    .peers
                    .propose(&node.peer_addr, &write, archived, Consensus::time_left(deadline))
                    .await
                    .map_err(|s| remote(id, s))?;
                Ok(Committed { log_index, proposed_at_us, outcome })
            }
        }
    }

    /// Waits until the archive holds `index` (docs/design.md §1.3: an ARCHIVED write survives
    /// the loss of every node).
    async fn wait_archived(&self, index: u64, deadline: Instant) -> Result<(), Error> {
        let mut status = self.archive.status.clone();
        // Decided from the status the wait saw: a refusal cleared a moment later must not turn
        // into an acknowledgement of a write the archive does not hold.
        let reached =
            async move {
                status
                    .wait_for(|s| s.archived_index.is_some_and(|a| a >= index) || !s.refused.is_empty())
                    .await
                    .map(|s| if s.archived_index.is_some_and(|a| a >= index) { None } else { Some(s.refused.clone()) })
            };
        match tokio::time::timeout(Consensus::time_left(deadline), reached).await {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(why))) => Err(refused(&why)),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => {
                let error = self.archive.status.borrow().last_error.clone();
                let why = if error.is_empty() { String::new() } else { format!(" (archive: {error})") };
                Err(Error::NotArchived(format!(
                    "the write is committed at log index {index} on a quorum but was not archived before the \
                     deadline{why}; it will be archived when the archive catches up"
                )))
            }
        }
    }

    /// Refuses ARCHIVED writes at once while this leader refuses to archive: waiting for their
    /// deadline would only hide why they cannot be answered.
    fn check_archive_refused(&self) -> Result<(), Error> {
        match self.archive_refused() {
            Some(why) => Err(refused(&why)),
            None => Ok(()),
        }
    }

    /// Why this node, leading, refuses to archive, if it does.
    pub fn archive_refused(&self) -> Option<String> {
        let s = self.archive.status.borrow();
        (!s.refused.is_empty()).then(|| s.refused.clone())
    }

    /// Refuses writes while the archive is further behind than `archive.max_backlog_*` allow
    /// (docs/design.md §4): the client learns the archive is behind, rather than the gap
    /// growing silently.
    fn check_archive_backlog(&self) -> Result<(), Error> {
        match self.archive_backlog_problem() {
            Some(problem) => Err(Error::ArchiveBehind(problem)),
            None => Ok(()),
        }
    }

    /// Encoded bytes of the committed entries after `archived`, measured now rather than when
    /// the archiver last looked (it may be stuck retrying an upload).
    pub fn archive_backlog_bytes(&self, archived: Option<u64>) -> u64 {
        let log = self.consensus.log();
        let committed = log.committed_index();
        match archived {
            Some(a) if committed <= a => 0,
            archived => log.bytes_between(archived, committed),
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
        let why = if !s.refused.is_empty() {
            format!("archiving is refused: {}", s.refused)
        } else if s.last_error.is_empty() {
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

    /// Waits until this node's state includes every write acknowledged before the call.
    pub async fn read_barrier(&self, deadline: Instant) -> Result<(), Error> {
        let index = match self.leader() {
            None => return Err(no_leader()),
            Some((id, _)) if id == self.id() => self.consensus.read_index(deadline).await?,
            Some((id, node)) => self
                .peers
                .read_index(&node.peer_addr, Consensus::time_left(deadline))
                .await
                .map_err(|s| remote(id, s))?,
        };
        self.consensus.wait_applied(index, deadline).await
    }

    /// As leader: hands leadership to `to`, sending it TimeoutNow over the peer transport;
    /// returns the new leader and its term.
    pub async fn transfer_leader(&self, to: NodeId, deadline: Instant) -> Result<(NodeId, u64), Error> {
        let me = self.id();
        let send = |target: Node, term: u64| async move {
            self.peers
                .timeout_now(&target.peer_addr, me, term, Duration::from_secs(2))
                .await
                .map_err(|s| s.message().to_owned())
        };
        self.consensus.transfer_leader(to, deadline, send).await
    }
}

fn no_leader() -> Error {
    Error::NoLeader(
        "no leader is elected right now (an election is under way or a quorum is down); retry shortly".into(),
    )
}

fn remote(leader: NodeId, status: tonic::Status) -> Error {
    match status.code() {
        // The leader could not be reached at all.
        tonic::Code::Unavailable | tonic::Code::Unknown if status.message().contains("transport") => {
            Error::NoLeader(format!("the leader (node {leader}) is unreachable: {}; retry shortly", status.message()))
        }
        code => Error::Remote { code: code as i32, message: status.message().to_owned() },
    }
}

/// The answer to an ARCHIVED write while the leader refuses to archive.
fn refused(why: &str) -> Error {
    Error::ArchiveBehind(format!(
        "ARCHIVED writes are refused: this leader archives nothing ({why}); a write refused before it was \
         proposed was not applied, one refused while it waited for the archive was committed but not archived"
    ))
}
