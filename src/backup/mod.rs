//! Continuous backup from the live cluster (docs/design.md §4): the leader's side of the
//! archive, whose formats and readers live in the keepsake-archive crate.
//!
//! `archiver` is the leader's upload loop that keeps the archive gap-free and holds the purge
//! gate, publishing its `status`; `snapshotter` uploads archive snapshots, `retention`
//! deletes what no restore in the window needs, and `scrub` re-checks and repairs chunks;
//! `keyring` holds the keys that seal the archive's objects.

pub mod archiver;
pub mod keyring;
pub mod retention;
pub mod scrub;
pub mod snapshotter;
pub mod status;
