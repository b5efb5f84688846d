//! Loading a whole state from a stream of records — a Raft snapshot file, or an archive
//! snapshot's chunks during a restore — into the `items` and `changes` column families.
//!
//! Invariant: the digest and live-item count are recomputed from the records as they load, in
//! the digest format the loaded history record names, and the caller's expected values are
//! checked before anything describes the state as loaded; a loader never merges into existing
//! state (it clears both column families first).

use std::sync::Arc;

use rocksdb::{WriteBatch, DB};

use super::db::{self, cf, CF_CHANGES, CF_ITEMS};
use super::error::StoreError;
use super::records::ItemRecord;
use crate::digest::{Digest, DigestFormat};
use crate::keys::HISTORY_RECORD_KEY;

/// Record tags, shared by snapshot files and archive chunks: 1 is an `items` record, 2 a
/// `changes` record.
pub const TAG_ITEM: u8 = 1;
pub const TAG_CHANGE: u8 = 2;
/// Bytes staged per write batch.
const BATCH_BYTES: usize = 4 << 20;

pub struct StateLoader {
    db: Arc<DB>,
    batch: WriteBatch,
    /// The sum in each format (`DigestFormat::ALL` order).
    sums: [Digest; 2],
    items: u64,
    /// The format the history record names, once it has loaded.
    format: Result<DigestFormat, String>,
}

impl StateLoader {
    /// Starts a load into `db`, whose items and changes it deletes first.
    pub(crate) fn new(db: Arc<DB>) -> Self {
        let mut batch = WriteBatch::default();
        for name in [CF_ITEMS, CF_CHANGES] {
            // Ids are UTF-8, which never contains 0xff: this range covers every key.
            batch.delete_range_cf(cf(&db, name), [].as_slice(), [0xffu8; 2].as_slice());
        }
        StateLoader { db, batch, sums: Default::default(), items: 0, format: Ok(DigestFormat::V1) }
    }

    /// Stages one record; `what` names its source in errors.
    pub fn record(&mut self, tag: u8, key: &[u8], value: &[u8], what: &str) -> Result<(), StoreError> {
        let name = match tag {
            TAG_ITEM => {
                let record: ItemRecord = db::decode(value, what)?;
                for (sum, hash) in self.sums.iter_mut().zip(record.digest_hashes(key)) {
                    if let Some(h) = hash {
                        sum.add(&h);
                    }
                }
                self.items += u64::from(!record.deleted);
                if key == HISTORY_RECORD_KEY {
                    self.format = DigestFormat::named_by((!record.deleted).then_some(record.value.as_slice()));
                }
                CF_ITEMS
            }
            TAG_CHANGE => CF_CHANGES,
            other => return Err(StoreError::Corrupt(format!("{what}: unknown record tag {other}"))),
        };
        self.batch.put_cf(cf(&self.db, name), key, value);
        if self.batch.size_in_bytes() >= BATCH_BYTES {
            db::write(&self.db, std::mem::take(&mut self.batch), "load state")?;
        }
        Ok(())
    }

    /// Writes what is staged and checks the loaded state against the expected digest and
    /// live-item count; `what` names the source in the error. Returns the state's format.
    pub(crate) fn finish(mut self, digest: Digest, items: u64, what: &str) -> Result<DigestFormat, StoreError> {
        db::write(&self.db, std::mem::take(&mut self.batch), "load state")?;
        // Items and changes replaced; nothing yet says which state they are.
        crate::crash::point("state-loaded");
        let format = self.format.map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
        let loaded = self.sums[format.number() as usize - 1];
        if loaded != digest || self.items != items {
            return Err(StoreError::Corrupt(format!(
                "{what}: loaded state has digest {} (format {}) with {} items, the source recorded {} with {items}",
                loaded.to_hex(),
                format.number(),
                self.items,
                digest.to_hex()
            )));
        }
        Ok(format)
    }
}
