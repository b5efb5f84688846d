//! Keepsake: a Raft-replicated gRPC store for user data.
//!
//! The path of a write: `server::store` (validate) → `replica` (forward to the leader) →
//! `proposer` (group commit) → keepsake-raft (log, fsync, replicate, apply). Reads pass a
//! read barrier in `replica`, then read `keepsake_raft::StateReader`.

pub mod archive;
pub mod cli;
pub mod config;
pub mod lease;
pub mod limits;
pub mod node;
pub mod peer;
pub mod proposer;
pub mod proto;
pub mod read_index;
pub mod replica;
pub mod server;
