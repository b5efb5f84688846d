//! One RocksDB per node holding the Raft log, the Raft metadata and the state machine, each in
//! its own column family, plus the snapshot files beside it.
//!
//! `open` recovers whatever a crash left half done (an interrupted snapshot install) before it
//! hands out the log store, the state machine and the read side.

mod apply;
mod db;
mod error;
mod gate;
mod install;
mod loader;
mod log;
mod machine;
mod reader;
mod records;
mod snapshot;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

pub use error::StoreError;
pub use gate::PurgeGate;
pub use loader::{StateLoader, TAG_CHANGE, TAG_ITEM};
pub use log::LogStore;
pub use machine::StateMachine;
pub use reader::{ChangeView, ItemView, StateReader};
pub use records::{DigestPoint, ItemRecord, MachineMeta, ResyncRange};
pub use snapshot::{read_records as read_snapshot_records, verify_stream as verify_snapshot, SnapshotHeader};

/// The node's newest Raft snapshot file under its data directory (absent until one is built).
pub fn current_snapshot_path(dir: &Path) -> std::path::PathBuf {
    dir.join("snapshots").join(machine::CURRENT)
}

/// Everything one node keeps on disk.
pub struct Store {
    pub log: LogStore,
    pub machine: StateMachine,
    pub reader: StateReader,
    pub gate: PurgeGate,
}

/// Opens (or creates) the node's store under `dir`.
pub fn open(dir: &Path) -> Result<Store, StoreError> {
    let db = Arc::new(db::open(&dir.join("db"))?);
    let gate = PurgeGate::default();
    let snapshots = dir.join("snapshots");
    std::fs::create_dir_all(&snapshots).map_err(|e| StoreError::io(&snapshots, e))?;
    let installs = install::Installs::default();
    let machine = StateMachine::open(db.clone(), snapshots, installs.clone())?;
    let reader = machine.reader();
    let log = LogStore::new(db, gate.clone(), installs, reader.watch())?;
    Ok(Store { log, machine, reader, gate })
}
