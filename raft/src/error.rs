//! The consensus front's one error type: why a write, a read or a leadership operation did not
//! complete, each with a message that tells the client what to do.
//!
//! The node maps each variant to one gRPC status (`src/server/status.rs`); storage failures
//! below this layer are `StoreError`.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No leader is known, or leadership moved: retry shortly.
    #[error("{0}")]
    NoLeader(String),
    /// The leader cannot reach a quorum.
    #[error("{0}")]
    NoQuorum(String),
    /// Too many writes wait on the leader: retry with backoff.
    #[error("{0}")]
    Overloaded(String),
    /// Not done in time for a reason the client can retry past; the message says whether the
    /// write may still apply.
    #[error("{0}")]
    Timeout(String),
    /// The caller's deadline passed while the operation was still under way.
    #[error("{0}")]
    Deadline(String),
    /// The leader a request was forwarded to answered with this gRPC status code and message.
    #[error("the leader answered: {message}")]
    Remote { code: i32, message: String },
    #[error("internal error: {0}")]
    Internal(String),
    /// An ARCHIVED write committed but not yet in the archive at the deadline.
    #[error("{0}")]
    NotArchived(String),
    /// Writes are refused while the archive is too far behind.
    #[error("{0}")]
    ArchiveBehind(String),
    /// The request names a node or thing that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The cluster is not in a state where the request can run (e.g. a transfer to a learner).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("the node is shutting down; retry on another node")]
    ShuttingDown,
}

impl Error {
    /// Raft's core has stopped on this node.
    pub fn raft_stopped(e: impl std::fmt::Display) -> Self {
        Error::Internal(format!("raft stopped: {e}"))
    }
}
