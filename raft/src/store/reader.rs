//! The read side of the state machine: items, pages, changes and exports, each read from one
//! consistent RocksDB view, off the async workers.
//!
//! Readers never write. `wait_for_revision` lets a follow stream sleep until apply moves on.

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions, DB};
use tokio::sync::watch;

use super::apply::{KEY_DIGEST_FORMAT, KEY_META};
use super::db::{self, cf, CF_CHANGES, CF_DIGESTS, CF_ITEMS, CF_META};
use super::error::{blocking, StoreError};
use super::records::{ChangeRecord, DigestPoint, FormatMark, ItemRecord, MachineMeta};
use crate::digest::DigestFormat;
use crate::keys::{
    collection_prefix, decode_change_revision, decode_item_key, index_key, item_key, separated_prefix_end, user_prefix,
};

/// One item with its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemView {
    pub user_id: String,
    pub collection: String,
    pub item_id: String,
    pub record: ItemRecord,
}

/// One entry of a user's change feed: the item's latest write at `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeView {
    pub revision: u64,
    pub collection: String,
    pub item_id: String,
    /// None for a tombstone.
    pub item: Option<ItemView>,
}

#[derive(Clone)]
pub struct StateReader {
    db: Arc<DB>,
    applied: watch::Receiver<DigestPoint>,
}

impl StateReader {
    pub(crate) fn new(db: Arc<DB>, applied: watch::Receiver<DigestPoint>) -> Self {
        StateReader { db, applied }
    }

    /// The latest applied index, digest and revision.
    pub fn applied(&self) -> DigestPoint {
        *self.applied.borrow()
    }

    /// Subscribe to apply progress (for follow streams and waiting for an index).
    pub fn watch(&self) -> watch::Receiver<DigestPoint> {
        self.applied.clone()
    }

    /// The live item, if any.
    pub async fn get(&self, user: &str, collection: &str, item_id: &str) -> Result<Option<ItemView>, StoreError> {
        // One point read: inline (see `blocking`).
        let record: Option<ItemRecord> = db::get(&self.db, CF_ITEMS, &item_key(user, collection, item_id))?;
        Ok(record.filter(|r| !r.deleted).map(|record| ItemView {
            user_id: user.to_owned(),
            collection: collection.to_owned(),
            item_id: item_id.to_owned(),
            record,
        }))
    }

    /// Up to `limit` live items of a collection with ids after `after`, and whether more follow.
    pub async fn list(
        &self,
        user: &str,
        collection: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<ItemView>, bool), StoreError> {
        let db = self.db.clone();
        let prefix = collection_prefix(user, collection);
        blocking(move || {
            let start = match &after {
                Some(id) => {
                    let mut k = prefix.clone();
                    k.extend_from_slice(id.as_bytes());
                    k.push(0); // the smallest key after `id`
                    k
                }
                None => prefix.clone(),
            };
            let mut out = Vec::new();
            let mut more = false;
            for view in scan_items(&db, &start, &separated_prefix_end(&prefix), None) {
                let view = view?;
                if out.len() == limit {
                    more = true;
                    break;
                }
                out.push(view);
            }
            Ok((out, more))
        })
        .await
    }

    /// Up to `limit` changes of a user with revisions above `since`, in revision order.
    pub async fn changes(&self, user: &str, since: u64, limit: usize) -> Result<Vec<ChangeView>, StoreError> {
        let db = self.db.clone();
        let user = user.to_owned();
        blocking(move || {
            let snap = db.snapshot();
            let from = crate::keys::change_key(&user, since.saturating_add(1));
            let end = separated_prefix_end(&user_prefix(&user));
            let mut opts = ReadOptions::default();
            opts.set_snapshot(&snap);
            opts.set_iterate_upper_bound(end);
            let mut out = Vec::new();
            for entry in db.iterator_cf_opt(cf(&db, CF_CHANGES), opts, IteratorMode::From(&from, Direction::Forward)) {
                if out.len() == limit {
                    break;
                }
                let (key, value) = entry.map_err(|e| StoreError::rocks("read changes", e))?;
                let revision =
                    decode_change_revision(&key).ok_or_else(|| StoreError::Corrupt("malformed change key".into()))?;
                let change: ChangeRecord = db::decode(&value, "changes")?;
                let item = if change.deleted {
                    None
                } else {
                    let key = item_key(&user, &change.collection, &change.item_id);
                    let record: Option<ItemRecord> = db
                        .get_pinned_cf_opt(cf(&db, CF_ITEMS), &key, &snapshot_opts(&snap))
                        .map_err(|e| StoreError::rocks("read item for a change", e))?
                        .map(|b| db::decode(&b, "items"))
                        .transpose()?;
                    let record =
                        record.ok_or_else(|| StoreError::Corrupt(format!("change {revision} names a missing item")))?;
                    Some(ItemView {
                        user_id: user.clone(),
                        collection: change.collection.clone(),
                        item_id: change.item_id.clone(),
                        record,
                    })
                };
                out.push(ChangeView { revision, collection: change.collection, item_id: change.item_id, item });
            }
            Ok(out)
        })
        .await
    }

    /// Streams every live item of a user, read at one consistent view, in chunks of `chunk`
    /// items, into `tx`; returns the revision the whole export was read at.
    pub async fn export(
        &self,
        user: &str,
        chunk: usize,
        tx: tokio::sync::mpsc::Sender<Result<(u64, Vec<ItemView>), StoreError>>,
    ) {
        let db = self.db.clone();
        let prefix = user_prefix(user);
        let _ = tokio::task::spawn_blocking(move || {
            let snap = db.snapshot();
            let meta: MachineMeta = match snap.get_cf(cf(&db, CF_META), KEY_META) {
                Ok(Some(b)) => match db::decode(&b, "meta") {
                    Ok(m) => m,
                    Err(e) => return drop(tx.blocking_send(Err(e))),
                },
                Ok(None) => MachineMeta::default(),
                Err(e) => return drop(tx.blocking_send(Err(StoreError::rocks("read meta", e)))),
            };
            let mut batch = Vec::with_capacity(chunk);
            for view in scan_items(&db, &prefix, &separated_prefix_end(&prefix), Some(&snap)) {
                match view {
                    Ok(v) => batch.push(v),
                    Err(e) => return drop(tx.blocking_send(Err(e))),
                }
                if batch.len() == chunk && tx.blocking_send(Ok((meta.revision, std::mem::take(&mut batch)))).is_err() {
                    return; // the client went away
                }
            }
            let _ = tx.blocking_send(Ok((meta.revision, batch)));
        })
        .await;
    }

    /// The state machine's own record (applied index, membership, resync range…).
    pub async fn meta(&self) -> Result<MachineMeta, StoreError> {
        let db = self.db.clone();
        blocking(move || Ok(db::get(&db, CF_META, KEY_META)?.unwrap_or_default())).await
    }

    /// The digest format the state is summed in now (docs/archive-format.md, "State digest").
    pub fn digest_format(&self) -> Result<DigestFormat, StoreError> {
        // One point read: inline (see `blocking`).
        let mark: Option<FormatMark> = db::get(&self.db, CF_META, KEY_DIGEST_FORMAT)?;
        DigestFormat::from_number(mark.map_or(0, |m| m.format)).map_err(StoreError::Corrupt)
    }

    /// The digest point at `index`, if it is still in the recent history.
    pub async fn digest_at(&self, index: u64) -> Result<Option<DigestPoint>, StoreError> {
        let db = self.db.clone();
        blocking(move || db::get(&db, CF_DIGESTS, &index_key(index))).await
    }
}

fn snapshot_opts(snap: &rocksdb::Snapshot<'_>) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_snapshot(snap);
    opts
}

/// Live items with keys in `[start, end)`, optionally at a snapshot.
fn scan_items<'a>(
    db: &'a DB,
    start: &[u8],
    end: &[u8],
    snap: Option<&rocksdb::Snapshot<'_>>,
) -> impl Iterator<Item = Result<ItemView, StoreError>> + 'a {
    let mut opts = snap.map(snapshot_opts).unwrap_or_default();
    opts.set_iterate_upper_bound(end.to_vec());
    db.iterator_cf_opt(cf(db, CF_ITEMS), opts, IteratorMode::From(start, Direction::Forward)).filter_map(|entry| {
        let decoded = entry.map_err(|e| StoreError::rocks("scan items", e)).and_then(|(key, value)| {
            let record: ItemRecord = db::decode(&value, "items")?;
            let (user_id, collection, item_id) =
                decode_item_key(&key).ok_or_else(|| StoreError::Corrupt("malformed item key".into()))?;
            Ok(ItemView { user_id, collection, item_id, record })
        });
        match decoded {
            Ok(v) if v.record.deleted => None,
            other => Some(other),
        }
    })
}
