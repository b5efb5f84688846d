//! What a reader of the archive checks every object against: the history the root belongs to
//! (`archive-info.json`), and that each segment continues from what came before it.
//!
//! Invariant: a segment, manifest or head naming another history than the root's is named as
//! a fault, never applied; a segment whose link disagrees with the entry (or snapshot) before
//! it is a splice, a gap or a skipped entry, and is named as one. Objects written before
//! histories had ids (format 1) carry no id and no link; they are accepted only while the root
//! has no `archive-info.json` naming a history, or before the first object that names one.

use keepsake_raft::HistoryId;

use crate::head::Head;
use crate::info;
use crate::proto::SnapshotManifest;
use crate::segment::{Link, SegmentHeader};
use crate::store::Archive;

/// The history every object of one archive root must belong to.
#[derive(Debug, Default)]
pub struct Expect {
    history: Option<HistoryId>,
    /// Where the expectation came from, for messages.
    source: String,
}

impl Expect {
    /// The root's history, from `archive-info.json`; with none there, the first object that
    /// names a history sets it.
    pub async fn load(archive: &Archive) -> Result<Expect, String> {
        Ok(match info::read(archive).await.map_err(|e| e.to_string())? {
            Some(found) => {
                let history = found.history().ok_or_else(|| {
                    format!("{}: history id {:?} is not 32 hex digits", info::OBJECT, found.history_id)
                })?;
                Expect { history: Some(history), source: info::OBJECT.into() }
            }
            None => Expect::default(),
        })
    }

    /// Whether the expectation comes from the root's `archive-info.json`.
    pub fn from_info(&self) -> bool {
        self.source == info::OBJECT
    }

    pub fn history(&self) -> Option<HistoryId> {
        self.history
    }

    fn check(&mut self, object: &str, named: Option<HistoryId>) -> Result<(), String> {
        let Some(named) = named else { return Ok(()) };
        match self.history {
            None => {
                self.history = Some(named);
                self.source = object.to_owned();
                Ok(())
            }
            Some(expected) if expected == named => Ok(()),
            Some(expected) => Err(format!(
                "{object}: belongs to history {named}, but this archive root is history {expected}'s (as {} \
                 says): it was spliced in from another history",
                self.source
            )),
        }
    }

    pub fn segment(&mut self, object: &str, header: &SegmentHeader) -> Result<(), String> {
        self.check(object, header.history)
    }

    pub fn manifest(&mut self, object: &str, m: &SnapshotManifest) -> Result<(), String> {
        if m.history_id.is_empty() {
            return Ok(());
        }
        let id: [u8; 16] =
            m.history_id.as_slice().try_into().map_err(|_| format!("{object}: the history id is not 16 bytes"))?;
        self.check(object, Some(HistoryId(id)))
    }

    pub fn head(&mut self, head: &Head) -> Result<(), String> {
        match (&head.history_id, head.history()) {
            (None, _) => Ok(()),
            (Some(raw), None) => Err(format!("{}: history id {raw:?} is not 32 hex digits", crate::head::OBJECT)),
            (Some(_), named) => self.check(crate::head::OBJECT, named),
        }
    }
}

/// Checks that a segment starting right after `before` links to it. `before` is what the
/// reader holds at `first_index - 1`: the last entry it applied or read (its link), or the
/// archive snapshot it started from. Where the two cannot be compared (a format 1 segment,
/// or a segment continuing from an entry the reader only knows through a snapshot), it passes.
pub fn check_link(object: &str, header: &SegmentHeader, before: &Link) -> Result<(), String> {
    match (header.prev, *before) {
        (Link::Entry { index, hash, .. }, Link::Entry { index: at, hash: held, .. }) if index == at && hash != held => {
            Err(format!(
                "{object}: continues from entry {index}, but the archive's entry {index} is another: the segment \
                 comes from another history, or an entry was removed or changed (a splice)"
            ))
        }
        (Link::Snapshot { index, digest, .. }, Link::Snapshot { index: at, digest: held, .. })
            if index == at && digest != held =>
        {
            Err(format!("{object}: continues from a snapshot at index {index} with another state digest (a splice)"))
        }
        (prev, before) => match (prev.point(), before.point()) {
            (Some((index, _)), Some((at, _))) if index != at => Err(format!(
                "{object}: continues from index {index}, but what comes before it ends at index {at}: an entry is \
                 missing or was skipped"
            )),
            _ => Ok(()),
        },
    }
}
