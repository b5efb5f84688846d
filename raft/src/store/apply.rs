//! Applying committed entries: the deterministic heart of the state machine.
//!
//! Invariant: the same entries applied to the same state give the same items, revisions and
//! digest on every node. An `Applier` stages one apply call into a single write batch together
//! with the new `MachineMeta` and digest history, so a crash leaves all of it or none.

use std::collections::HashMap;

use openraft::EntryPayload;
use rocksdb::{WriteBatch, DB};

use super::db::{self, cf, CF_CHANGES, CF_DIGESTS, CF_ITEMS, CF_META};
use super::error::StoreError;
use super::records::{ChangeRecord, ItemRecord, MachineMeta};
use crate::command::{Command, CommandResult, Op, Rejection, Write, WriteOutcome};
use crate::keys::{change_key, index_key, item_key};
use crate::types::{Entry, StoredMembership};

pub(crate) const KEY_META: &[u8] = b"machine";
/// How many recent applied indices keep their digest ("digest at index N").
pub const DIGEST_HISTORY: u64 = 100_000;

/// The item operations an entry carries (what applying it reads and writes).
pub(crate) fn op_count(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(command) => command.writes.iter().map(|w| w.ops.len()).sum(),
        _ => 0,
    }
}

pub(crate) struct Applier<'a> {
    db: &'a DB,
    batch: WriteBatch,
    /// Items written earlier in this apply call, which the database does not show yet.
    staged: HashMap<Vec<u8>, ItemRecord>,
    pub meta: MachineMeta,
}

struct Effect {
    key: Vec<u8>,
    old: Option<ItemRecord>,
    new: ItemRecord,
    collection: String,
    item_id: String,
}

impl<'a> Applier<'a> {
    pub fn new(db: &'a DB, meta: MachineMeta) -> Self {
        Applier { db, batch: WriteBatch::default(), staged: HashMap::new(), meta }
    }

    pub fn apply(&mut self, entry: &Entry) -> Result<CommandResult, StoreError> {
        let index = entry.log_id.index;
        let mut result = CommandResult { log_index: index, outcomes: Vec::new() };
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(command) => {
                result.outcomes = self.apply_command(command, index)?;
                self.meta.last_write_us = command.proposed_at_us;
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
    pub fn commit(mut self) -> Result<MachineMeta, StoreError> {
        self.batch.put_cf(cf(self.db, CF_META), KEY_META, db::encode(&self.meta));
        db::write(self.db, self.batch, "apply entries")?;
        Ok(self.meta)
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
            if let Some(h) = old.digest_hash(&e.key) {
                self.meta.digest.sub(&h);
                self.meta.items -= 1;
            }
            self.batch.delete_cf(changes, change_key(user_id, old.revision));
        }
        if let Some(h) = e.new.digest_hash(&e.key) {
            self.meta.digest.add(&h);
            self.meta.items += 1;
        }
        let change = ChangeRecord { collection: e.collection, item_id: e.item_id, deleted: e.new.deleted };
        self.batch.put_cf(changes, change_key(user_id, e.new.revision), db::encode(&change));
        self.batch.put_cf(items, &e.key, db::encode(&e.new));
        self.staged.insert(e.key, e.new);
    }
}
