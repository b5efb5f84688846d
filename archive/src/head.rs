//! `head`: the small object that names the archive's last index — a shortcut for followers,
//! which hold their purge gate there, and a claim a restore to the latest point checks its
//! segments against. It names the history and the leader's term that wrote it.
//!
//! Invariant: `head` may lag the listing, never lead it: the leader writes it only once the
//! segments up to its index are uploaded, or the archive snapshot at its index that bridges a
//! gap. So a listing read after `head` whose segments and snapshots end before it has lost
//! objects. A reader trusts a head only for the history it names (`Head::history`). Writers
//! are fenced by term: `write` replaces a head only by a compare-and-swap on its version, and
//! never one a leader of a later term wrote.

use keepsake_raft::HistoryId;
use object_store::{ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::envelope::Kind;
use crate::sealing::ReadError;
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

/// The object's bytes for `index` in `history`, written by a leader of `term`, before they are
/// sealed (tests forge heads with it).
pub fn encode(index: u64, history: HistoryId, term: u64) -> Vec<u8> {
    let head = Head { archived_index: index, history_id: Some(history.to_hex()), term };
    serde_json::to_vec(&head).expect("a head encodes")
}

/// The head, None while the archive has none.
pub async fn read(archive: &Archive) -> Result<Option<Head>, ReadError> {
    Ok(read_versioned(archive).await?.map(|(head, _)| head))
}

/// The head and the version a compare-and-swap must name to replace it.
async fn read_versioned(archive: &Archive) -> Result<Option<(Head, UpdateVersion)>, ReadError> {
    let path = archive.path(OBJECT);
    let failed = |e: object_store::Error| ReadError::Store(format!("reading {path}: {e}"));
    let got = match archive.store.get(&path).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
    let bytes = got.bytes().await.map_err(failed)?;
    let opened = archive.keys.open(Kind::Head, path.as_ref(), &bytes).map_err(ReadError::Keys)?;
    let head =
        serde_json::from_slice(&opened.bytes).map_err(|e| ReadError::Store(format!("{path} is malformed: {e}")))?;
    Ok(Some((head, version)))
}

/// Why a head was not written.
#[derive(Debug, PartialEq, Eq)]
pub enum NotWritten {
    /// A leader of a later term, or of another history, wrote it: this writer no longer leads
    /// the archive.
    Superseded(String),
    /// The store failed; the head is only a shortcut, so the next write tries again.
    Store(String),
}

/// A leader's writer of `head`: it remembers the version it last wrote, so that each update is
/// one conditional put.
#[derive(Debug)]
pub struct Writer {
    history: HistoryId,
    term: u64,
    version: Option<UpdateVersion>,
}

impl Writer {
    pub fn new(history: HistoryId, term: u64) -> Writer {
        Writer { history, term, version: None }
    }

    /// Moves `head` to `index`. Replaces only the version this writer last read or wrote, so a
    /// head a newer leader wrote in between is re-read, and then left alone. A local directory
    /// cannot compare-and-swap: there the head is written after the same read check (a local
    /// archive serves one machine; `backup status` says it is not off-box).
    pub async fn write(&mut self, archive: &Archive, index: u64) -> Result<(), NotWritten> {
        let path = archive.path(OBJECT);
        for _ in 0..3 {
            let mode = match self.version.take() {
                Some(version) => PutMode::Update(version),
                None => match read_versioned(archive).await.map_err(|e| NotWritten::Store(e.to_string()))? {
                    None => PutMode::Create,
                    Some((head, version)) => {
                        if head.term > self.term || head.history().is_some_and(|h| h != self.history) {
                            return Err(NotWritten::Superseded(format!(
                                "{path} was written by the leader of term {} (history {}): this node, of term {}, \
                                 no longer leads the archive",
                                head.term,
                                head.history_id.as_deref().unwrap_or("none"),
                                self.term
                            )));
                        }
                        PutMode::Update(version)
                    }
                },
            };
            let bytes = archive.keys.seal(Kind::Head, &encode(index, self.history, self.term));
            let options = PutOptions { mode: mode.clone(), ..PutOptions::default() };
            match archive.store.put_opts(&path, bytes.clone().into(), options).await {
                Ok(done) => {
                    self.version = Some(UpdateVersion { e_tag: done.e_tag, version: done.version });
                    return Ok(());
                }
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {}
                Err(object_store::Error::NotImplemented { .. }) if matches!(mode, PutMode::Update(_)) => {
                    archive.store.put(&path, bytes.into()).await.map_err(|e| NotWritten::Store(e.to_string()))?;
                    return Ok(());
                }
                Err(e) => return Err(NotWritten::Store(format!("writing {path}: {e}"))),
            }
        }
        Err(NotWritten::Store(format!("{path} kept changing under this writer")))
    }
}
