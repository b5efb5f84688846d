//! The records the state machine keeps in RocksDB (postcard-encoded).

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::types::{LogId, StoredMembership};

/// One item as stored under its key: the latest write, live or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    pub revision: u64,
    pub log_index: u64,
    pub updated_at_us: i64,
    pub deleted: bool,
    pub content_type: String,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl ItemRecord {
    /// What this item adds to the digest (tombstones add nothing).
    pub fn digest_hash(&self, key: &[u8]) -> Option<[u8; 32]> {
        (!self.deleted).then(|| Digest::item_hash(key, self.revision, &self.value))
    }
}

/// The `changes` value: which item of the user changed at the revision in the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub collection: String,
    pub item_id: String,
    pub deleted: bool,
}

/// Everything the state machine knows about itself, written in the same batch as each apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineMeta {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub digest: Digest,
    /// The highest revision handed out.
    pub revision: u64,
    /// Live items.
    pub items: u64,
    /// When the leader proposed the last applied entry that carried writes (unix µs; 0: none).
    pub last_write_us: i64,
    /// One range per restore in this cluster's history (a restored cluster restored again keeps
    /// the earlier ranges): change-feed cursors in any of them come from writes a restore did not
    /// bring back, so a device holding one must resync in full.
    pub resync: Vec<ResyncRange>,
}

/// Revisions `(restored, floor]` of the old cluster that a restore did not bring back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncRange {
    /// The revision the restored state is at.
    pub restored: u64,
    /// Above every revision the old cluster could have handed out; new writes start above it.
    pub floor: u64,
}

impl ResyncRange {
    /// Whether a change-feed cursor at `since` lies in writes the restore did not bring back.
    pub fn contains(&self, since: u64) -> bool {
        since > self.restored && since <= self.floor
    }
}

/// The digest, revision and live-item count right after applying one index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestPoint {
    pub index: u64,
    pub digest: Digest,
    pub revision: u64,
    pub items: u64,
}

impl MachineMeta {
    /// The lost range a change-feed cursor at `since` falls in, if any.
    pub fn lost_range(&self, since: u64) -> Option<&ResyncRange> {
        self.resync.iter().find(|r| r.contains(since))
    }

    pub fn point(&self) -> DigestPoint {
        DigestPoint {
            index: self.applied.map_or(0, |l| l.index),
            digest: self.digest,
            revision: self.revision,
            items: self.items,
        }
    }
}
