//! keepsake: the node and its command line.
//!
//! The path of a write (docs/design.md, "The path of a write"): `server::store` validates →
//! `replica` forwards it to the leader → keepsake-raft's consensus front commits it (group
//! commit, log fsync, replication, apply) → `backup::archiver` uploads it in a segment. Reads
//! pass a read barrier in `replica`, then read keepsake-raft's `StateReader`.

pub mod backup;
pub mod cli;
pub mod config;
pub mod files;
pub mod limits;
pub mod node;
pub mod peer;
pub mod proto;
pub mod replica;
pub mod server;
pub mod tls;
pub mod upgrade;
