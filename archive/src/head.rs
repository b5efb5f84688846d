//! `head`: the small object that names the archive's last index — a shortcut for followers,
//! which hold their purge gate there, and a claim a restore to the latest point checks its
//! segments against. It names the history and the leader's term that wrote it.
//!
//! Invariant: `head` may lag the listing, never lead it: the leader writes it only once the
//! segments up to its index are uploaded, or the archive snapshot at its index that bridges a
//! gap. So a listing read after `head` whose segments and snapshots end before it has lost
//! objects. A reader trusts a head only for the history it names (`Head::history`).

use keepsake_raft::HistoryId;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::store::Archive;

/// The object's name under the archive root.
pub const OBJECT: &str = "head";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub archived_index: u64,
    /// Hex of the history id (absent in heads written before histories had ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_id: Option<String>,
    /// The Raft term of the leader that wrote it.
    #[serde(default)]
    pub term: u64,
}

impl Head {
    pub fn history(&self) -> Option<HistoryId> {
        self.history_id.as_deref().and_then(HistoryId::parse)
    }
}

/// The object's bytes for `index` in `history`, written by a leader of `term`.
pub fn encode(index: u64, history: HistoryId, term: u64) -> Vec<u8> {
    let head = Head { archived_index: index, history_id: Some(history.to_hex()), term };
    serde_json::to_vec(&head).expect("a head encodes")
}

/// The head, None while the archive has none.
pub async fn read(archive: &Archive) -> Result<Option<Head>, String> {
    let path = archive.path(OBJECT);
    let bytes = match archive.store.get(&path).await {
        Ok(got) => got.bytes().await.map_err(|e| format!("reading {path}: {e}"))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(format!("reading {path}: {e}")),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{path} is malformed: {e}"))
}
