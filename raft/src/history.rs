//! The cluster's history id: which continuous history of writes this state belongs to, so an
//! archive can tell its own cluster from a second one rendered from the same config, and a
//! restored cluster from the one it was restored from (docs/archive-format.md, "History").
//!
//! The id is one item of a reserved system user that no client can name (client ids are
//! printable, this one starts with a control character). Kept as an ordinary item, it is
//! agreed through Raft, travels in Raft snapshots, archive segments and archive snapshots, and
//! is covered by the digest, with no format of its own.
//!
//! Invariant: a state has at most one current history id; it changes only by a conditional
//! write (first proposal wins), and a state restored since the id was set (one more resync
//! range than the record counts) gets a new one before anything is archived from it.

use serde::{Deserialize, Serialize};

use crate::command::{Op, PutOp, Write};
pub use crate::keys::SYSTEM_USER;
use crate::keys::{HISTORY_COLLECTION as COLLECTION, HISTORY_ITEM as ITEM};
use crate::store::{StateReader, StoreError};

const CONTENT_TYPE: &str = "application/json";

/// 128 random bits naming one history.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HistoryId(pub [u8; 16]);

impl HistoryId {
    /// A fresh id from the operating system's random source.
    pub fn random() -> HistoryId {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).expect("the operating system's random source is available");
        HistoryId(id)
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn parse(hex: &str) -> Option<HistoryId> {
        if hex.len() != 32 || !hex.is_ascii() {
            return None;
        }
        let mut id = [0u8; 16];
        for (k, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * k..2 * k + 2], 16).ok()?;
        }
        Some(HistoryId(id))
    }
}

impl std::fmt::Display for HistoryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for HistoryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HistoryId({})", self.to_hex())
    }
}

/// The item's value (JSON, so an archive reader sees what it is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Hex of the id.
    pub id: String,
    /// How many restores the state had been through (its resync ranges) when the id was set.
    pub restores: usize,
    /// The history this one was restored from, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Where the cluster archives (`ArchiveConfig::location`): cluster state, so a node whose
    /// config names another archive refuses to archive rather than start a second copy
    /// somewhere else. Absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// The digest format the state is summed with from this record on (`DigestFormat`): the
    /// state machine reads it when the record is applied or loaded. Absent (0) in records
    /// written before format 2, which leaves the state on format 1.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub digest_format: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The current record and the item's revision (None: the state has no history id yet).
pub async fn read(reader: &StateReader) -> Result<Option<(HistoryRecord, u64)>, StoreError> {
    let Some(item) = reader.get(SYSTEM_USER, COLLECTION, ITEM).await? else { return Ok(None) };
    let record: HistoryRecord = serde_json::from_slice(&item.record.value)
        .map_err(|e| StoreError::Corrupt(format!("the history record does not decode: {e}")))?;
    Ok(Some((record, item.record.revision)))
}

/// The record and its revision, if the state holds one that was set after its last restore
/// (a record from before a restore names the history the state was restored from).
pub async fn read_current(reader: &StateReader) -> Result<Option<(HistoryRecord, u64)>, StoreError> {
    let restores = reader.meta().await?.resync.len();
    Ok(read(reader).await?.filter(|(r, _)| r.restores == restores))
}

/// The id a state holds, if it holds one that was set after its last restore.
pub async fn current(reader: &StateReader) -> Result<Option<HistoryId>, StoreError> {
    Ok(read_current(reader).await?.and_then(|(r, _)| HistoryId::parse(&r.id)))
}

/// The write that sets a new id, if the item is still at `if_revision` (0: absent).
pub fn set(record: &HistoryRecord, if_revision: u64) -> Write {
    let value = serde_json::to_vec(record).expect("a history record encodes");
    Write {
        user_id: SYSTEM_USER.to_owned(),
        ops: vec![Op::Put(PutOp {
            collection: COLLECTION.to_owned(),
            item_id: ITEM.to_owned(),
            value,
            content_type: CONTENT_TYPE.to_owned(),
            if_revision: Some(if_revision),
        })],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex_and_bad_hex_is_refused() {
        let id = HistoryId::random();
        assert_eq!(HistoryId::parse(&id.to_hex()), Some(id));
        assert_ne!(HistoryId::random(), id, "two draws differ");
        assert_eq!(HistoryId::parse("zz"), None);
        assert_eq!(HistoryId::parse(&"g".repeat(32)), None);
    }

    #[test]
    fn the_system_user_is_not_a_valid_client_id_and_holds_no_key_separator() {
        assert!(SYSTEM_USER.chars().next().is_some_and(char::is_control));
        assert!(!SYSTEM_USER.as_bytes().contains(&0));
    }
}
