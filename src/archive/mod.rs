//! Continuous backup: committed log entries streamed to object storage as segments
//! (DESIGN.md §4).
//!
//! `segment` and `snapshot` are the object formats, `entry` the archived form of a log entry,
//! `store` opens the object store an archive URL names, `archiver` is the leader's upload loop
//! that keeps the archive gap-free and holds the purge gate, `snapshotter` uploads archive
//! snapshots and `retention` deletes what no restore in the window needs. `restore` and
//! `verify` read an archive from the object store alone.

pub mod archiver;
pub mod entry;
pub mod restore;
pub mod retention;
pub mod segment;
pub mod snapshot;
pub mod snapshotter;
pub mod store;
pub mod verify;
