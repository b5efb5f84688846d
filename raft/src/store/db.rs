//! Opening RocksDB with Keepsake's column families, and the few helpers every module shares.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, WriteBatch, WriteBufferManager, WriteOptions, DB,
};

use super::error::StoreError;

/// Raft log entries, keyed by index.
pub const CF_LOG: &str = "log";
/// Raft metadata: vote, committed, last purged.
pub const CF_RAFT: &str = "raft";
/// Items (live and tombstones), keyed by (user, collection, item).
pub const CF_ITEMS: &str = "items";
/// The per-user change index, keyed by (user, revision): one entry per item at its latest write.
pub const CF_CHANGES: &str = "changes";
/// State machine metadata: applied log id, membership, digest, revision counter.
pub const CF_META: &str = "meta";
/// The digest at each recent applied index.
pub const CF_DIGESTS: &str = "digests";

const ALL: [&str; 6] = [CF_LOG, CF_RAFT, CF_ITEMS, CF_CHANGES, CF_META, CF_DIGESTS];

/// Memtables of all column families together, at most (RocksDB flushes the largest beyond it).
const MEMTABLE_BUDGET: usize = 128 << 20;
/// The block cache all column families share.
const BLOCK_CACHE: usize = 64 << 20;

pub fn open(path: &Path) -> Result<DB, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Bounded memory: a node must stay small even with millions of items. Memtables share one
    // budget and blocks one cache, instead of 32 MiB × 2 memtables and a cache per column family.
    opts.set_max_total_wal_size(256 << 20);
    opts.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager(MEMTABLE_BUDGET, false));
    opts.increase_parallelism(2);
    let cache = Cache::new_lru_cache(BLOCK_CACHE);
    let cfs = ALL.iter().map(|name| {
        let mut cf = Options::default();
        cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
        cf.set_write_buffer_size(32 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // Point reads (every apply reads the item it replaces) skip SST files without the key.
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        cf.set_block_based_table_factory(&table);
        ColumnFamilyDescriptor::new(*name, cf)
    });
    DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| StoreError::rocks(format!("open {}", path.display()), e))
}

pub fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("every column family is created when the database opens")
}

/// Writes a batch and fsyncs the WAL before returning.
pub fn write_synced(db: &DB, batch: WriteBatch, what: &str) -> Result<(), StoreError> {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(|e| StoreError::rocks(what, e))
}

/// Writes a batch without waiting for the disk (state the log can rebuild).
pub fn write(db: &DB, batch: WriteBatch, what: &str) -> Result<(), StoreError> {
    db.write(batch).map_err(|e| StoreError::rocks(what, e))
}

pub fn get<T: serde::de::DeserializeOwned>(db: &DB, cf_name: &str, key: &[u8]) -> Result<Option<T>, StoreError> {
    let raw = db.get_pinned_cf(cf(db, cf_name), key).map_err(|e| StoreError::rocks(format!("read {cf_name}"), e))?;
    raw.map(|bytes| decode(&bytes, cf_name)).transpose()
}

pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encoding into a Vec cannot fail")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("cannot decode a record in {what}: {e}")))
}
