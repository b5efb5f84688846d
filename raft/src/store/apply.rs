//! Applying committed entries: the deterministic heart of the state machine.
//!
//! Invariant: the same entries applied to the same state give the same items, revisions and
//! digest on every node. An `Applier` stages one apply call into a single write batch together
//! with the new `MachineMeta`, digest history and digest format, so a crash leaves all of it or
//! none. The digest is in the format the state's history record names: applying a record that
//! names another re-sums the whole state at that entry's index.

use std::collections::HashMap;

use openraft::EntryPayload;
use rocksdb::{IteratorMode, WriteBatch, DB};

use super::db::{self, cf, CF_CHANGES, CF_DIGESTS, CF_ITEMS, CF_META};
use super::error::StoreError;
use super::records::{ChangeRecord, FormatMark, ItemRecord, MachineMeta};
use crate::command::{Command, CommandResult, Op, Rejection, Write, WriteOutcome};
use crate::digest::{Digest, DigestFormat};
use crate::keys::{change_key, index_key, item_key, HISTORY_RECORD_KEY, SYSTEM_USER};
use crate::types::{Entry, StoredMembership};

pub(crate) const KEY_META: &[u8] = b"machine";
/// The `FormatMark`: the digest format `MachineMeta::digest` is in (absent: format 1).
pub(crate) const KEY_DIGEST_FORMAT: &[u8] = b"digest_format";

/// Stages `meta` and the mark of its digest format: every write of the meta goes through here.
pub(crate) fn put_meta(batch: &mut WriteBatch, db: &DB, meta: &MachineMeta, format: DigestFormat) {
    let mark = FormatMark { format: format.number(), applied: meta.applied };
    batch.put_cf(cf(db, CF_META), KEY_META, db::encode(meta));
    batch.put_cf(cf(db, CF_META), KEY_DIGEST_FORMAT, db::encode(&mark));
}
/// How many recent applied indices keep their digest ("digest at index N").
pub const DIGEST_HISTORY: u64 = 100_000;

/// The item operations an entry carries (what applying it reads and writes). A write of the
/// system user counts as the whole state: it may move the digest format, which re-sums it.
pub(crate) fn op_count(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(command) => {
            let whole = |w: &Write| if w.user_id == SYSTEM_USER { usize::MAX / 2 } else { w.ops.len() };
            command.writes.iter().map(whole).fold(0, usize::saturating_add)
        }
        _ => 0,
    }
}

pub(crate) struct Applier<'a> {
    db: &'a DB,
    batch: WriteBatch,
    /// Items written earlier in this apply call, which the database does not show yet.
    staged: HashMap<Vec<u8>, ItemRecord>,
    pub meta: MachineMeta,
    format: DigestFormat,
    /// The entry being applied wrote the history record.
    history_written: bool,
}

struct Effect {
    key: Vec<u8>,
    old: Option<ItemRecord>,
    new: ItemRecord,
    collection: String,
    item_id: String,
}

impl<'a> Applier<'a> {
    pub fn new(db: &'a DB, meta: MachineMeta, format: DigestFormat) -> Self {
        Applier { db, batch: WriteBatch::default(), staged: HashMap::new(), meta, format, history_written: false }
    }

    pub fn apply(&mut self, entry: &Entry) -> Result<CommandResult, StoreError> {
        let index = entry.log_id.index;
        let mut result = CommandResult { log_index: index, outcomes: Vec::new() };
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(command) => {
                result.outcomes = self.apply_command(command, index)?;
                self.meta.last_write_us = command.proposed_at_us;
                if std::mem::take(&mut self.history_written) {
                    self.follow_history_record()?;
                }
            }
            EntryPayload::Membership(m) => {
                if m.get_joint_config().len() > 1 {
                    crate::crash::point("joint-membership-applied");
                }
                self.meta.membership = StoredMembership::new(Some(entry.log_id), m.clone());
            }
        }
        self.meta.applied = Some(entry.log_id);
        let point = self.meta.point();
        self.batch.put_cf(cf(self.db, CF_DIGESTS), index_key(index), db::encode(&point));
        if let Some(old) = index.checked_sub(DIGEST_HISTORY) {
            self.batch.delete_cf(cf(self.db, CF_DIGESTS), index_key(old));
        }
        Ok(result)
    }

    /// Stages the new meta and writes everything in one batch. Not fsynced: the log (fsynced)
    /// can rebuild it, and a later synced write (purge, snapshot) orders it onto disk first.
    /// Returns the meta and the digest format after the last entry.
    pub fn commit(mut self) -> Result<(MachineMeta, DigestFormat), StoreError> {
        put_meta(&mut self.batch, self.db, &self.meta, self.format);
        db::write(self.db, self.batch, "apply entries")?;
        Ok((self.meta, self.format))
    }

    /// After an entry that wrote the history record: re-sums the state if the record names
    /// another digest format. Once per format change in a history, so a full pass is affordable.
    fn follow_history_record(&mut self) -> Result<(), StoreError> {
        let record = self.staged.get(HISTORY_RECORD_KEY).filter(|r| !r.deleted);
        let format = DigestFormat::named_by(record.map(|r| r.value.as_slice())).map_err(StoreError::Corrupt)?;
        if format != self.format {
            tracing::info!(from = self.format.number(), to = format.number(), "re-summing the state digest");
            self.meta.digest = sum(self.db, format, &self.staged)?;
            self.format = format;
        }
        Ok(())
    }

    fn apply_command(&mut self, command: &Command, index: u64) -> Result<Vec<WriteOutcome>, StoreError> {
        command.writes.iter().map(|w| self.apply_write(w, index, command.proposed_at_us)).collect()
    }

    fn current(&self, key: &[u8]) -> Result<Option<ItemRecord>, StoreError> {
        if let Some(staged) = self.staged.get(key) {
            return Ok(Some(staged.clone()));
        }
        db::get(self.db, CF_ITEMS, key)
    }

    /// Checks every op of one write against the state as the earlier ops leave it; applies all
    /// of them or none.
    fn apply_write(&mut self, write: &Write, index: u64, at_us: i64) -> Result<WriteOutcome, StoreError> {
        let mut scratch: HashMap<Vec<u8>, ItemRecord> = HashMap::new();
        let mut effects = Vec::with_capacity(write.ops.len());
        let mut revision = self.meta.revision;
        for (n, op) in write.ops.iter().enumerate() {
            let key = item_key(&write.user_id, op.collection(), op.item_id());
            let old = match scratch.get(&key) {
                Some(r) => Some(r.clone()),
                None => self.current(&key)?,
            };
            let live = old.as_ref().filter(|r| !r.deleted);
            let current = live.map_or(0, |r| r.revision);
            if let Some(expected) = op.if_revision() {
                if expected != current {
                    let reason = Rejection::RevisionMismatch { expected, current };
                    return Ok(WriteOutcome::Rejected { op: n as u32, reason });
                }
            }
            if matches!(op, Op::Delete(_)) && live.is_none() {
                return Ok(WriteOutcome::Rejected { op: n as u32, reason: Rejection::NotFound });
            }
            revision += 1;
            let new = match op {
                Op::Put(p) => ItemRecord {
                    revision,
                    log_index: index,
                    updated_at_us: at_us,
                    deleted: false,
                    content_type: p.content_type.clone(),
                    value: p.value.clone(),
                },
                Op::Delete(_) => ItemRecord {
                    revision,
                    log_index: index,
                    updated_at_us: at_us,
                    deleted: true,
                    content_type: String::new(),
                    value: Vec::new(),
                },
            };
            scratch.insert(key.clone(), new.clone());
            let (collection, item_id) = (op.collection().to_owned(), op.item_id().to_owned());
            effects.push(Effect { key, old, new, collection, item_id });
        }
        let revisions = effects.iter().map(|e| e.new.revision).collect();
        for effect in effects {
            self.stage(&write.user_id, effect);
        }
        self.meta.revision = revision;
        Ok(WriteOutcome::Applied { revisions })
    }

    fn stage(&mut self, user_id: &str, e: Effect) {
        let (items, changes) = (cf(self.db, CF_ITEMS), cf(self.db, CF_CHANGES));
        if let Some(old) = &e.old {
            if let Some(h) = old.digest_hash(&e.key, self.format) {
                self.meta.digest.sub(&h);
            }
            self.meta.items -= u64::from(!old.deleted);
            self.batch.delete_cf(changes, change_key(user_id, old.revision));
        }
        if let Some(h) = e.new.digest_hash(&e.key, self.format) {
            self.meta.digest.add(&h);
        }
        self.meta.items += u64::from(!e.new.deleted);
        self.history_written |= e.key == HISTORY_RECORD_KEY;
        let change = ChangeRecord { collection: e.collection, item_id: e.item_id, deleted: e.new.deleted };
        self.batch.put_cf(changes, change_key(user_id, e.new.revision), db::encode(&change));
        self.batch.put_cf(items, &e.key, db::encode(&e.new));
        self.staged.insert(e.key, e.new);
    }
}

/// The digest of the whole state in `format`: the `items` column family as `overlay` (writes
/// not yet in the database) leaves it.
pub(crate) fn sum(db: &DB, format: DigestFormat, overlay: &HashMap<Vec<u8>, ItemRecord>) -> Result<Digest, StoreError> {
    let mut digest = Digest::default();
    let mut add = |key: &[u8], record: &ItemRecord| {
        if let Some(h) = record.digest_hash(key, format) {
            digest.add(&h);
        }
    };
    for item in db.iterator_cf(cf(db, CF_ITEMS), IteratorMode::Start) {
        let (key, value) = item.map_err(|e| StoreError::rocks("read items to re-sum the digest", e))?;
        if !overlay.contains_key(key.as_ref()) {
            add(&key, &db::decode(&value, "an item record")?);
        }
    }
    overlay.iter().for_each(|(key, record)| add(key, record));
    Ok(digest)
}
