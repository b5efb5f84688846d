//! The integration tests, against real `keepsake` processes: one binary (one link of RocksDB)
//! with a module per area, so a test's name is `module::test_name`.
//!
//! - `admin`: leader transfer, a learner joining and being promoted, removing a node, CLI exit codes.
//! - `backup`: continuous backup: no gap across leader changes, matching digests, the purge gate.
//! - `bench`: `keepsake bench` drives every workload, writes what it reports, stops its own cluster.
//! - `cluster`: replication, failover, catch-up, restarts, compare-and-set, changes, exports, batches.
//! - `crash`: crash points (`failpoints`): killed mid install, upload, restore or membership change.
//! - `encryption`: the encrypted archive: wrong keys, forgeries and plaintext refused, rotation.
//! - `history`: one history per archive root; splices, skipped entries and forged heads are named.
//! - `hostile`: bytes that are not protobuf, oversized messages, idle connections, follow streams.
//! - `measure`: run by hand only (ignored): archive lag under load and restore speed.
//! - `restore`: restores from the archive alone: Sidekick, point in time, resync for lost cursors.
//! - `s3`: backup to a real S3-compatible server: restore after losing every node, an outage.
//! - `security`: TLS on every port, the peer port for members only, certificates rotating.
//! - `snapshots`: archive snapshots, retention, restores from a snapshot, restoring twice, drill.

#[path = "../common/mod.rs"]
mod common;
#[path = "../fault/proxy.rs"]
#[allow(dead_code)]
mod proxy;

mod admin;
mod backup;
mod bench;
mod cluster;
mod crash;
mod encryption;
mod history;
mod hostile;
mod measure;
mod restore;
mod s3;
mod security;
mod snapshots;
