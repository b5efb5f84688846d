//! Storage errors, carrying what a person needs to find the fault (which file, which record),
//! and their conversion into openraft's storage error.

use std::path::{Path, PathBuf};

use crate::types::{NodeId, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {context}: {source}")]
    Rocks { context: String, source: rocksdb::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("blocking task failed: {0}")]
    Join(String),
    #[error("log purge held back: {0}")]
    PurgeHeld(String),
}

impl StoreError {
    pub fn rocks(context: impl Into<String>, source: rocksdb::Error) -> Self {
        StoreError::Rocks { context: context.into(), source }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io { path: path.to_path_buf(), source }
    }
}

/// How each storage operation reports a failure to openraft.
pub(crate) fn to_raft(
    make: fn(openraft::AnyError) -> openraft::StorageIOError<NodeId>,
) -> impl Fn(StoreError) -> StorageError {
    move |e| make(openraft::AnyError::new(&e)).into()
}

pub(crate) fn write_snapshot(e: openraft::AnyError) -> openraft::StorageIOError<NodeId> {
    openraft::StorageIOError::write_snapshot(None, e)
}

pub(crate) fn read_snapshot(e: openraft::AnyError) -> openraft::StorageIOError<NodeId> {
    openraft::StorageIOError::read_snapshot(None, e)
}

/// Runs blocking storage work (RocksDB iteration over many records, fsyncs, files) off the async
/// workers.
///
/// Small, bounded work — a point read, an unsynced write batch of a few entries, which RocksDB
/// finishes in microseconds from its memtable and WAL buffer — runs inline instead: handing it
/// to the blocking pool costs two thread wake-ups, more than the work itself (the write-path
/// profile in docs/performance.md).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Join(e.to_string()))?
}
