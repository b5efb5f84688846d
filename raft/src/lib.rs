//! keepsake-raft: everything Raft on one Keepsake node.
//!
//! Below, the replicated state: the openraft type configuration (`types`), commands
//! (`command`), the key encoding (`keys`), the cluster's history id (`history`), the order-independent state digest (`digest`) and
//! the RocksDB-backed log store, state machine and Raft snapshots (`store`). Above it, the
//! consensus front the node talks to (`consensus`): group commit (`proposer`), read-index
//! batching (`read_index`) and the leader's lease (`lease`), leader transfer (`transfer`).
//! It depends on no gRPC crate: the `keepsake` crate serves it and carries its messages.

pub mod clock;
pub mod command;
pub mod consensus;
pub mod crash;
pub mod digest;
pub mod error;
pub mod history;
pub mod keys;
pub mod lease;
pub mod proposer;
pub mod read_index;
pub mod store;
pub mod transfer;
pub mod types;

pub use command::{Command, CommandResult, DeleteOp, Op, PutOp, Rejection, Write, WriteOutcome};
pub use consensus::Consensus;
pub use digest::Digest;
pub use error::Error;
pub use history::HistoryId;
pub use proposer::Committed;
pub use store::{
    current_snapshot_path, open, read_snapshot_records, verify_snapshot, ChangeView, DigestPoint, ItemView, LogStore,
    MachineMeta, PurgeGate, ResyncRange, SnapshotHeader, StateLoader, StateMachine, StateReader, Store, StoreError,
    TAG_CHANGE, TAG_ITEM,
};
pub use types::{Node, NodeId, Raft, TypeConfig};
