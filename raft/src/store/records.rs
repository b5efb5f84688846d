//! The records the state machine keeps in RocksDB (postcard-encoded), and what an item record
//! adds to the state digest in each digest format.

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestFormat};
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
    /// What this record, stored under `key`, adds to a digest of `format` (docs/design.md §3).
    pub fn digest_hash(&self, key: &[u8], format: DigestFormat) -> Option<[u8; 32]> {
        self.hash_in(key, format, blake3::hash(&self.value))
    }

    /// What it adds in each format (`DigestFormat::ALL` order), hashing the value once: a
    /// loader learns the state's format only once it meets the history record.
    pub fn digest_hashes(&self, key: &[u8]) -> [Option<[u8; 32]>; 2] {
        let value = blake3::hash(&self.value);
        DigestFormat::ALL.map(|format| self.hash_in(key, format, value))
    }

    fn hash_in(&self, key: &[u8], format: DigestFormat, value: blake3::Hash) -> Option<[u8; 32]> {
        match format {
            DigestFormat::V1 => (!self.deleted).then(|| {
                let mut h = blake3::Hasher::new();
                h.update(&(key.len() as u64).to_le_bytes());
                h.update(key);
                h.update(&self.revision.to_le_bytes());
                h.update(value.as_bytes());
                *h.finalize().as_bytes()
            }),
            DigestFormat::V2 => {
                // Every field, each fixed-width or length-prefixed, under a context of its own.
                let mut h = blake3::Hasher::new_derive_key("keepsake 2026 item record digest v2");
                h.update(&(key.len() as u64).to_le_bytes());
                h.update(key);
                h.update(&self.revision.to_le_bytes());
                h.update(&self.log_index.to_le_bytes());
                h.update(&self.updated_at_us.to_le_bytes());
                h.update(&[self.deleted as u8]);
                h.update(&(self.content_type.len() as u64).to_le_bytes());
                h.update(self.content_type.as_bytes());
                h.update(&(self.value.len() as u64).to_le_bytes());
                h.update(value.as_bytes());
                Some(*h.finalize().as_bytes())
            }
        }
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

/// Which digest format `MachineMeta::digest` is in, written with every meta this build writes,
/// with that meta's applied log id: a build from before formats writes the meta alone, so a
/// mark behind the meta says such a build ran the node since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatMark {
    pub format: u32,
    pub applied: Option<LogId>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ItemRecord {
        ItemRecord {
            revision: 7,
            log_index: 9,
            updated_at_us: 1_000,
            deleted: false,
            content_type: "text/plain".into(),
            value: b"v".to_vec(),
        }
    }

    #[test]
    fn format_2_hashes_every_field_and_tombstones() {
        let base = record();
        let v2 = |r: &ItemRecord, key: &[u8]| r.digest_hash(key, DigestFormat::V2).expect("format 2 hashes all");
        let changed: Vec<(&str, ItemRecord)> = vec![
            ("revision", ItemRecord { revision: 8, ..base.clone() }),
            ("log_index", ItemRecord { log_index: 10, ..base.clone() }),
            ("updated_at_us", ItemRecord { updated_at_us: 1_001, ..base.clone() }),
            ("deleted", ItemRecord { deleted: true, ..base.clone() }),
            ("content_type", ItemRecord { content_type: "text/html".into(), ..base.clone() }),
            ("value", ItemRecord { value: b"w".to_vec(), ..base.clone() }),
        ];
        for (field, other) in &changed {
            assert_ne!(v2(&base, b"k"), v2(other, b"k"), "format 2 covers {field}");
        }
        assert_ne!(v2(&base, b"k"), v2(&base, b"k2"), "format 2 covers the key");
        let tombstone = ItemRecord { deleted: true, content_type: String::new(), value: Vec::new(), ..base.clone() };
        assert!(tombstone.digest_hash(b"k", DigestFormat::V2).is_some(), "a tombstone counts");
        // A field boundary cannot move: "ab" + "" and "a" + "b" differ.
        let (one, two) = (
            ItemRecord { content_type: "ab".into(), value: Vec::new(), ..base.clone() },
            ItemRecord { content_type: "a".into(), value: b"b".to_vec(), ..base.clone() },
        );
        assert_ne!(v2(&one, b"k"), v2(&two, b"k"));
    }

    #[test]
    fn format_1_is_unchanged_and_skips_tombstones_and_metadata() {
        let base = record();
        // Format 1 as archives written before format 2 recorded it: key, revision, value hash.
        let mut h = blake3::Hasher::new();
        h.update(&1u64.to_le_bytes());
        h.update(b"k");
        h.update(&7u64.to_le_bytes());
        h.update(blake3::hash(b"v").as_bytes());
        assert_eq!(base.digest_hash(b"k", DigestFormat::V1), Some(*h.finalize().as_bytes()));
        let restamped = ItemRecord { updated_at_us: 5, content_type: "x".into(), log_index: 1, ..base.clone() };
        assert_eq!(base.digest_hash(b"k", DigestFormat::V1), restamped.digest_hash(b"k", DigestFormat::V1));
        assert_eq!(ItemRecord { deleted: true, ..base.clone() }.digest_hash(b"k", DigestFormat::V1), None);
        let both = base.digest_hashes(b"k");
        assert_eq!(both, [base.digest_hash(b"k", DigestFormat::V1), base.digest_hash(b"k", DigestFormat::V2)]);
    }
}
