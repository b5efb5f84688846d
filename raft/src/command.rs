//! What a Raft log entry carries and what applying it answers.
//!
//! One entry holds a group of client writes (group commit): each `Write` is atomic on its own —
//! every precondition holds and every op applies, or nothing does. The leader stamps the time
//! when it proposes, so apply never reads a clock and stays deterministic.

use serde::{Deserialize, Serialize};

/// The payload of one normal log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Unix time in microseconds, set by the leader when it proposed the entry.
    pub proposed_at_us: i64,
    pub writes: Vec<Write>,
}

/// One client request: writes to one user's items, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub user_id: String,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put(PutOp),
    Delete(DeleteOp),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutOp {
    pub collection: String,
    pub item_id: String,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub content_type: String,
    /// Apply only if the current revision equals this (0: the item must not exist).
    pub if_revision: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOp {
    pub collection: String,
    pub item_id: String,
    pub if_revision: Option<u64>,
}

impl Op {
    pub fn collection(&self) -> &str {
        match self {
            Op::Put(p) => &p.collection,
            Op::Delete(d) => &d.collection,
        }
    }

    pub fn item_id(&self) -> &str {
        match self {
            Op::Put(p) => &p.item_id,
            Op::Delete(d) => &d.item_id,
        }
    }

    pub fn if_revision(&self) -> Option<u64> {
        match self {
            Op::Put(p) => p.if_revision,
            Op::Delete(d) => d.if_revision,
        }
    }
}

/// What applying one entry answered, one outcome per write in the entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub log_index: u64,
    pub outcomes: Vec<WriteOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// Every op applied; one revision per op, in order.
    Applied { revisions: Vec<u64> },
    /// Nothing applied because op number `op` could not.
    Rejected { op: u32, reason: Rejection },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The precondition named `expected`; the item is at `current` (0: it does not exist).
    RevisionMismatch { expected: u64, current: u64 },
    /// A delete of an item that does not exist.
    NotFound,
}
