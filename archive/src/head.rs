//! `head`: the small object that names the archive's last index — a shortcut for followers,
//! which hold their purge gate there, and a claim a restore to the latest point checks its
//! segments against.
//!
//! Invariant: `head` may lag the listing, never lead it: the leader writes it only once the
//! segments up to its index are uploaded, or the archive snapshot at its index that bridges a
//! gap. So a listing read after `head` whose segments and snapshots end before it has lost
//! objects.

use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::store::Archive;

/// The object's name under the archive root.
pub const OBJECT: &str = "head";

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    archived_index: u64,
}

/// The object's bytes for `index`.
pub fn encode(index: u64) -> Vec<u8> {
    serde_json::to_vec(&Head { archived_index: index }).expect("a head encodes")
}

/// The index `head` names; None while the archive has none.
pub async fn read(archive: &Archive) -> Result<Option<u64>, String> {
    let path = archive.path(OBJECT);
    let bytes = match archive.store.get(&path).await {
        Ok(got) => got.bytes().await.map_err(|e| format!("reading {path}: {e}"))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(format!("reading {path}: {e}")),
    };
    let head: Head = serde_json::from_slice(&bytes).map_err(|e| format!("{path} is malformed: {e}"))?;
    Ok(Some(head.archived_index))
}
