//! `archive-info.json`: the object that binds an archive root to one cluster history. The
//! first leader of a history writes it with a create-only put; every later leader reads it and
//! archives only when it names the history the leader's state holds (keepsake_raft::history).
//!
//! Invariant: the object is never overwritten. Two writers racing to create it cannot both
//! win, so two histories can never both believe a root is theirs; and on a store that does not
//! honour create-only puts, nothing is archived at all (`probe`).

use keepsake_raft::HistoryId;
use object_store::{ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};

use crate::envelope::Kind;
pub use crate::sealing::ReadError;
use crate::store::Archive;

/// The object's name under the archive root.
pub const OBJECT: &str = "archive-info.json";
/// The archive format this build writes (segments v2, manifests with history ids).
pub const FORMAT: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    pub format: u32,
    pub cluster_id: String,
    /// Hex of the history id.
    pub history_id: String,
    /// The history this one was restored from, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_history_id: Option<String>,
    pub created_at_us: i64,
}

impl ArchiveInfo {
    pub fn history(&self) -> Option<HistoryId> {
        HistoryId::parse(&self.history_id)
    }
}

/// What claiming a root found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The root names this history (this call created the object, or an earlier one did).
    Ours,
    /// The root belongs to another history.
    Foreign(ArchiveInfo),
}

/// The root's info, if it has one.
pub async fn read(archive: &Archive) -> Result<Option<ArchiveInfo>, ReadError> {
    let path = archive.path(OBJECT);
    let bytes = match archive.store.get(&path).await {
        Ok(got) => got.bytes().await.map_err(|e| ReadError::Store(format!("reading {path}: {e}")))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(ReadError::Store(format!("reading {path}: {e}"))),
    };
    let opened = archive.keys.open(Kind::Info, path.as_ref(), &bytes).map_err(ReadError::Keys)?;
    serde_json::from_slice(&opened.bytes).map(Some).map_err(|e| ReadError::Store(format!("{path} is malformed: {e}")))
}

/// Binds the root to `info`'s history unless another history holds it already.
pub async fn claim(archive: &Archive, info: &ArchiveInfo) -> Result<Claim, ReadError> {
    let path = archive.path(OBJECT);
    let bytes = archive.keys.seal(Kind::Info, &serde_json::to_vec_pretty(info).expect("archive info encodes"));
    let create = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    match archive.store.put_opts(&path, bytes.into(), create).await {
        Ok(_) => return Ok(Claim::Ours),
        Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(e) => return Err(ReadError::Store(format!("writing {path}: {e}"))),
    }
    let found =
        read(archive).await?.ok_or_else(|| ReadError::Store(format!("{path} exists and then does not: retrying")))?;
    Ok(if found.history_id == info.history_id { Claim::Ours } else { Claim::Foreign(found) })
}

/// What probing a store's create-only puts found.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// The second create-only put was refused: the store can fence a deposed writer.
    Fenced,
    /// The store overwrote, or does not do create-only puts: nothing may be archived there.
    Unfenced(String),
    /// The probe itself failed (the network, a conflict): try again.
    Failed(String),
}

/// Checks that the store refuses to overwrite an object on a create-only put, which every
/// fence here relies on: a store that quietly overwrites is refused, never raced.
pub async fn probe(archive: &Archive, marker: &str) -> Probe {
    let path = archive.path(&format!("probe/{marker}"));
    let create = || PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    let bytes = bytes::Bytes::from(archive.keys.seal(Kind::Probe, b"probe"));
    let first = archive.store.put_opts(&path, bytes.clone().into(), create()).await;
    let second = match &first {
        Ok(_) => Some(archive.store.put_opts(&path, bytes.into(), create()).await),
        Err(_) => None,
    };
    let _ = archive.store.delete(&path).await;
    let unfenced = |how: String| {
        Probe::Unfenced(format!(
            "{} {how}: it cannot fence a deposed leader, so nothing is archived there; use a store that honours \
             conditional writes (If-None-Match: *, docs/archive-format.md)",
            archive.url
        ))
    };
    match (first, second) {
        (Ok(_), Some(Err(object_store::Error::AlreadyExists { .. }))) => Probe::Fenced,
        (Ok(_), Some(Ok(_))) => unfenced("overwrote an object on a create-only put".into()),
        (Err(e @ object_store::Error::NotImplemented { .. }), _)
        | (Ok(_), Some(Err(e @ object_store::Error::NotImplemented { .. }))) => {
            unfenced(format!("does not take create-only puts ({e})"))
        }
        (Err(e), _) | (Ok(_), Some(Err(e))) => Probe::Failed(format!("probing {}: {e}", archive.url)),
        (Ok(_), None) => Probe::Failed("the probe did not run".into()),
    }
}
