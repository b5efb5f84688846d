//! keepsake-raft: the replicated state of one Keepsake node.
//!
//! Owns the openraft type configuration, the RocksDB-backed Raft log and state machine, the
//! key encoding, the order-independent state digest and Raft snapshots. It knows nothing about
//! gRPC: the `keepsake` binary serves it.

pub mod command;
pub mod crash;
pub mod digest;
pub mod keys;
pub mod store;
pub mod types;

pub use command::{Command, CommandResult, DeleteOp, Op, PutOp, Rejection, Write, WriteOutcome};
pub use digest::Digest;
pub use store::{
    current_snapshot_path, open, read_snapshot_records, verify_snapshot, ChangeView, DigestPoint, ItemView, LogStore,
    MachineMeta, PurgeGate, ResyncRange, SnapshotHeader, StateLoader, StateMachine, StateReader, Store, StoreError,
    TAG_CHANGE, TAG_ITEM,
};
pub use types::{Node, NodeId, Raft, TypeConfig};
