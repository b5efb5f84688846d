//! The Raft log store: entries in the `log` column family, vote / committed / last-purged in
//! `raft`.
//!
//! Durability (docs/design.md §1.1): an append is written as one batch, readable when `append`
//! returns, and openraft is told it is flushed only once the WAL holding it is fsynced. The
//! fsyncs are group commits: one thread (`Syncer`) syncs the WAL for every append that queued
//! while the previous sync ran, so Raft keeps replicating while the disk works. The vote is
//! fsynced before `save_vote` returns. Purge and truncate leave no holes, purge never goes
//! past the purge gate, and never past the applied state before the snapshot install that
//! covers it is durable (`install.rs`).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use super::db::{self, cf, CF_LOG, CF_RAFT};
use super::error::{blocking, to_raft, StoreError};
use super::gate::PurgeGate;
use super::install::Installs;
use super::records::DigestPoint;
use crate::keys::{decode_index_key, index_key};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// Log reads of at most this many entries run inline on the async worker (see `blocking`).
const INLINE_READ_ENTRIES: u64 = 64;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    gate: PurgeGate,
    /// The latest committed index openraft told us about (0: none yet).
    committed: Arc<AtomicU64>,
    sizes: Arc<Mutex<Sizes>>,
    syncer: Syncer,
    /// A purge past the state machine's applied index waits for the install that covers it.
    installs: Installs,
    applied: tokio::sync::watch::Receiver<DigestPoint>,
}

/// The log's group commit: appends queue their flush callbacks here; one thread fsyncs the WAL
/// once for all that are queued and then answers them in order.
#[derive(Clone)]
struct Syncer {
    tx: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl Syncer {
    fn start(db: Arc<DB>) -> Result<Self, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
        // Weak, so a closed store releases RocksDB (and its lock) without waiting for this thread.
        let db = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("keepsake-log-sync".into())
            .spawn(move || {
                // Ends when the last LogStore clone (and so the last sender) is dropped.
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let synced = match db.upgrade() {
                        Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
                        None => Err("the log store was closed before its entries were synced".to_string()),
                    };
                    for callback in waiting {
                        callback.log_io_completed(synced.clone().map_err(std::io::Error::other));
                    }
                }
            })
            .map_err(|e| StoreError::io(std::path::Path::new("keepsake-log-sync thread"), e))?;
        Ok(Syncer { tx })
    }
}

/// The encoded size of the entries the log holds, as a running total by index (counted from the
/// first entry present when the store opened), so the bytes between two indices are one
/// subtraction: what the archive backlog is measured in.
#[derive(Default)]
struct Sizes(BTreeMap<u64, u64>);

impl Sizes {
    /// The running total through the greatest index at or below `index` (0 below the first).
    fn through(&self, index: u64) -> u64 {
        self.0.range(..=index).next_back().map_or(0, |(_, total)| *total)
    }

    fn last_within(&self, after: Option<u64>, from: u64, to: u64, budget: u64) -> u64 {
        let base = after.map_or(0, |a| self.through(a));
        let mut last = from;
        for (index, total) in self.0.range(from..=to) {
            if *index > from && total.saturating_sub(base) > budget {
                break;
            }
            last = *index;
        }
        last
    }

    fn push(&mut self, index: u64, bytes: u64) {
        let total = self.through(index.saturating_sub(1)) + bytes;
        self.0.split_off(&index);
        self.0.insert(index, total);
    }
}

impl LogStore {
    pub(crate) fn new(
        db: Arc<DB>,
        gate: PurgeGate,
        installs: Installs,
        applied: tokio::sync::watch::Receiver<DigestPoint>,
    ) -> Result<Self, StoreError> {
        let committed: Option<LogId> = db::get(&db, CF_RAFT, KEY_COMMITTED)?;
        let committed = Arc::new(AtomicU64::new(committed.map_or(0, |c| c.index)));
        let mut sizes = Sizes::default();
        for item in db.iterator_cf(cf(&db, CF_LOG), IteratorMode::Start) {
            let (key, value) = item.map_err(|e| StoreError::rocks("read log", e))?;
            let index = decode_index_key(&key).ok_or_else(|| StoreError::Corrupt("malformed log key".into()))?;
            sizes.push(index, value.len() as u64);
        }
        let syncer = Syncer::start(db.clone())?;
        Ok(LogStore { db, gate, committed, sizes: Arc::new(Mutex::new(sizes)), syncer, installs, applied })
    }

    /// The last index in `[from, to]` such that the entries after `after` through it hold at
    /// most `budget` bytes (at least `from`): how far one segment of `budget` bytes reaches.
    pub fn last_within(&self, after: Option<u64>, from: u64, to: u64, budget: u64) -> u64 {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner()).last_within(after, from, to, budget)
    }

    /// Encoded bytes of the log entries after `after` (None: from the first) through `through`.
    pub fn bytes_between(&self, after: Option<u64>, through: u64) -> u64 {
        let sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        let base = after.map_or(0, |a| sizes.through(a));
        sizes.through(through).saturating_sub(base)
    }

    /// The lowest index the log's size index knows (0 when empty): the first entry, or the last
    /// purged one, which it keeps as a marker. Entries below it are gone.
    pub fn first_index(&self) -> u64 {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner()).0.keys().next().copied().unwrap_or(0)
    }

    /// The last index in the log (0 when it holds no entries).
    pub fn last_index(&self) -> u64 {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner()).0.keys().next_back().copied().unwrap_or(0)
    }

    /// The committed index as last saved by openraft: what the archiver may read up to.
    pub fn committed_index(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// The stored entries in `[from, to]` (inclusive), for readers outside openraft: the
    /// archiver reads only committed ones; the proposer's stamp floor reads the tail too.
    pub async fn read_range(&self, from: u64, to: u64) -> Result<Vec<Entry>, StoreError> {
        let db = self.db.clone();
        blocking(move || read_entries(&db, from, to.saturating_add(1))).await
    }

    /// Restore only: records an empty log that starts after `at`, committed up to it.
    pub async fn seal_restored(&self, at: LogId) -> Result<(), StoreError> {
        let db = self.db.clone();
        self.committed.store(at.index, Ordering::SeqCst);
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(&db, CF_RAFT), KEY_LAST_PURGED, db::encode(&at));
            batch.put_cf(cf(&db, CF_RAFT), KEY_COMMITTED, db::encode(&at));
            db::write_synced(&db, batch, "seal restored log")
        })
        .await
    }

    fn last_purged(&self) -> Result<Option<LogId>, StoreError> {
        db::get(&self.db, CF_RAFT, KEY_LAST_PURGED)
    }
}

fn read_entries(db: &DB, start: u64, end_exclusive: u64) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    let from = index_key(start);
    let iter = db.iterator_cf(cf(db, CF_LOG), IteratorMode::From(&from, Direction::Forward));
    for item in iter {
        let (key, value) = item.map_err(|e| StoreError::rocks("read log", e))?;
        let index = decode_index_key(&key).ok_or_else(|| StoreError::Corrupt("malformed log key".into()))?;
        if index >= end_exclusive {
            break;
        }
        out.push(db::decode::<Entry>(&value, "log")?);
    }
    Ok(out)
}

fn range_to_bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = range_to_bounds(&range);
        let db = self.db.clone();
        let read = if end.saturating_sub(start) <= INLINE_READ_ENTRIES {
            read_entries(&db, start, end) // replication of the newest entries: in the memtable
        } else {
            blocking(move || read_entries(&db, start, end)).await
        };
        read.map_err(to_raft(StorageIOError::read_logs))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = to_raft(StorageIOError::read_logs);
        let last_purged = self.last_purged().map_err(&read)?;
        let db = self.db.clone();
        let last = blocking(move || {
            let mut iter = db.iterator_cf(cf(&db, CF_LOG), IteratorMode::End);
            match iter.next() {
                Some(item) => {
                    let (_, value) = item.map_err(|e| StoreError::rocks("read last log entry", e))?;
                    Ok(Some(db::decode::<Entry>(&value, "log")?.log_id))
                }
                None => Ok(None),
            }
        })
        .await
        .map_err(&read)?;
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let db = self.db.clone();
        let bytes = db::encode(vote);
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(&db, CF_RAFT), KEY_VOTE, bytes);
            // docs/design.md §1.1: a vote is durable before it is cast.
            db::write_synced(&db, batch, "save vote")
        })
        .await
        .map_err(to_raft(StorageIOError::write_vote))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        db::get(&self.db, CF_RAFT, KEY_VOTE).map_err(to_raft(StorageIOError::read_vote))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = &committed {
            self.committed.fetch_max(c.index, Ordering::SeqCst);
        }
        // Only the log id is stored; None is never saved over a known value.
        let Some(committed) = committed else { return Ok(()) };
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_RAFT), KEY_COMMITTED, db::encode(&committed));
        // Not synced: the committed index is a hint that openraft re-learns from a quorum.
        // One small unsynced write: inline (see `blocking`).
        db::write(&self.db, batch, "save committed").map_err(to_raft(StorageIOError::write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        db::get(&self.db, CF_RAFT, KEY_COMMITTED).map_err(to_raft(StorageIOError::read))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let log = cf(&self.db, CF_LOG);
        let mut sizes = Vec::new();
        for entry in entries {
            let value = db::encode(&entry);
            sizes.push((entry.log_id.index, value.len() as u64));
            batch.put_cf(log, index_key(entry.log_id.index), value);
        }
        // Readable now; durable once the syncer has fsynced the WAL (docs/design.md §1.1: openraft
        // counts this node's ack only after the callback). Unsynced, so inline (see `blocking`).
        let result = db::write(&self.db, batch, "append log entries");
        match result {
            Ok(()) => {
                let mut totals = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
                for (index, bytes) in sizes {
                    totals.push(index, bytes);
                }
                drop(totals);
                if let Err(std::sync::mpsc::SendError(callback)) = self.syncer.tx.send(callback) {
                    callback.log_io_completed(Err(std::io::Error::other("the log sync thread has stopped")));
                }
                Ok(())
            }
            Err(e) => {
                let io = std::io::Error::other(e.to_string());
                callback.log_io_completed(Err(io));
                Err(to_raft(StorageIOError::write_logs)(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner()).0.split_off(&log_id.index);
        let db = self.db.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf(&db, CF_LOG), index_key(log_id.index), index_key(u64::MAX));
            batch.delete_cf(cf(&db, CF_LOG), index_key(u64::MAX));
            db::write_synced(&db, batch, "truncate log")
        })
        .await
        .map_err(to_raft(StorageIOError::write_logs))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let applied = self.applied.borrow().index;
        self.installs.purgeable(log_id.index, applied).await.map_err(to_raft(StorageIOError::write_logs))?;
        let limit = self.gate.limit();
        let db = self.db.clone();
        let already = self.last_purged().map_err(to_raft(StorageIOError::read_logs))?;
        blocking(move || {
            let mut upto = log_id;
            // The gate holds back only a purge within the log. A purge to a snapshot installed
            // past the log's end (or over a conflicting entry) goes through: entries kept below
            // it would leave a hole before the entries appended after it, which openraft cannot
            // load at the next start, and this node can no longer archive them anyway.
            if upto.index > limit
                && read_entries(&db, upto.index, upto.index + 1)?.first().map(|e| e.log_id) == Some(upto)
            {
                // Keep what is not yet archived; openraft reads its state again on restart.
                tracing::warn!(requested = upto.index, limit, "purge held back by the purge gate");
                match read_entries(&db, limit, limit.saturating_add(1))?.pop() {
                    Some(entry) => upto = entry.log_id,
                    None => return Ok(0),
                }
            }
            if already.is_some_and(|a| a.index >= upto.index) {
                return Ok(0);
            }
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(&db, CF_RAFT), KEY_LAST_PURGED, db::encode(&upto));
            batch.delete_range_cf(cf(&db, CF_LOG), index_key(0), index_key(upto.index + 1));
            db::write_synced(&db, batch, "purge log")?;
            Ok(upto.index)
        })
        .await
        .map(|upto| {
            // Keep the purged entry's running total: the sums after it still subtract from it.
            let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
            let total = sizes.through(upto);
            sizes.0 = sizes.0.split_off(&upto);
            sizes.0.entry(upto).or_insert(total);
        })
        .map_err(to_raft(StorageIOError::write_logs))
    }
}

#[cfg(test)]
mod tests {
    use super::Sizes;

    #[test]
    fn sizes_sum_the_bytes_between_indices_across_truncate_and_purge() {
        let mut s = Sizes::default();
        for i in 1..=5 {
            s.push(i, 10 * i);
        }
        // 10 + 20 + 30 + 40 + 50
        assert_eq!(s.through(5), 150);
        assert_eq!(s.through(5) - s.through(2), 120);
        // A conflicting append at 4 replaces 4 and 5.
        s.push(4, 7);
        assert_eq!(s.through(9), 67);
        // Purging up to 3 keeps 3's running total.
        s.0 = s.0.split_off(&3);
        assert_eq!(s.through(4) - s.through(3), 7);
        assert_eq!(s.through(0), 0);
    }

    #[test]
    fn a_byte_budget_reaches_as_far_as_it_holds_and_at_least_one_entry() {
        let mut s = Sizes::default();
        for i in 1..=10 {
            s.push(i, 100);
        }
        assert_eq!(s.last_within(Some(2), 3, 10, 250), 4, "entries 3 and 4 fit in 250 bytes");
        assert_eq!(s.last_within(Some(2), 3, 10, 10), 3, "the first entry goes even when it is over");
        assert_eq!(s.last_within(Some(2), 3, 6, 1 << 20), 6, "never past `to`");
        // Purging up to 5 keeps its running total, so sums after it still subtract right.
        let total = s.through(5);
        s.0 = s.0.split_off(&5);
        s.0.entry(5).or_insert(total);
        assert_eq!(s.last_within(Some(5), 6, 10, 200), 7);
    }
}
