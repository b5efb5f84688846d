//! Request limits and their defaults, in one place (documented in docs/operations.md, "Limits").
//!
//! Every limit is checked before a request reaches the Raft log, so a bad request costs the
//! cluster nothing.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest value of one item, in bytes.
    pub max_value_bytes: usize,
    /// Longest user id, collection or item id, in bytes (UTF-8, no control characters).
    pub max_id_bytes: usize,
    /// Longest content type, in bytes.
    pub max_content_type_bytes: usize,
    /// Most ops in one Batch.
    pub max_batch_ops: usize,
    /// Most bytes (ids and values) in one Batch.
    pub max_batch_bytes: usize,
    /// Largest List page.
    pub max_page_size: u32,
    /// List page size when the request names none.
    pub default_page_size: u32,
    /// Deadline of a request that sets none, in milliseconds.
    pub default_timeout_ms: u64,
    /// Client writes waiting to be proposed before new ones are refused.
    pub max_pending_writes: usize,
    /// Connections one IP address may hold open on one port, handshakes included; more are
    /// closed at once, so one host cannot use up the node's descriptors.
    pub max_connections_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 4 << 20,
            max_id_bytes: 256,
            max_content_type_bytes: 128,
            max_batch_ops: 128,
            max_batch_bytes: 16 << 20,
            max_page_size: 1000,
            default_page_size: 100,
            default_timeout_ms: 10_000,
            max_pending_writes: 10_000,
            max_connections_per_address: 1024,
        }
    }
}

impl Limits {
    /// The largest gRPC message a node accepts: a full batch plus framing.
    pub fn max_message_bytes(&self) -> usize {
        self.max_batch_bytes.max(self.max_value_bytes) + (1 << 20)
    }
}
