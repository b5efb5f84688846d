//! The archiver: on the leader, uploads committed log entries as segments, in index order,
//! never skipping one; on every node, keeps the purge gate at the archive's last index.
//!
//! Invariants: a segment holds committed entries only (they never change, so re-uploading one
//! after a leader change is harmless), goes up with a create-only put, and names this
//! cluster's history and what it continues from; nothing is uploaded into a root that
//! `archive-info.json` binds to another history, or into a store that cannot refuse an
//! overwrite; a node purges nothing past what the archive holds for its own history
//! (docs/design.md §1.5); an upload that fails is retried with backoff, and the failure is
//! reported in the status rather than skipped.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use keepsake_archive::entry::archived;
use keepsake_archive::envelope::{Kind, OpenError, Why};
use keepsake_archive::head;
use keepsake_archive::info::{self, ArchiveInfo, Claim, Probe};
use keepsake_archive::proto::ArchivedEntry;
use keepsake_archive::segment::{self, Link, Segment};
use keepsake_archive::snapshot::{decode_manifest, manifest_name, parse_manifest_name};
use keepsake_archive::store::{put_new, Archive, PutNewError};
use keepsake_raft::clock::now_us;
use keepsake_raft::history::{self, HistoryRecord};
use keepsake_raft::types::Entry;
use keepsake_raft::{Consensus, HistoryId, LogStore, NodeId, PurgeGate, Raft, StateReader};
use object_store::ObjectStoreExt;
use openraft::EntryPayload;
use tokio::sync::watch;
use tokio::time::Instant;

use super::snapshotter::Snapshotter;
use super::status::ArchiveStatus;
use crate::config::ArchiveConfig;
use crate::peer::client::Peers;

/// Entries read from the log per step, at most.
const MAX_ENTRIES_PER_SEGMENT: usize = 4096;
/// How often a follower reads `head` to move its purge gate.
const HEAD_POLL: Duration = Duration::from_secs(1);
/// How long a refusing leader waits before it looks at the archive again.
const REFUSED_RETRY: Duration = Duration::from_secs(5);

pub struct Archiver {
    pub archive: Archive,
    pub cluster_id: String,
    pub node_id: NodeId,
    pub raft: Raft,
    /// Proposes the history id where the state has none (keepsake_raft::history).
    pub consensus: Arc<Consensus>,
    pub log: LogStore,
    pub reader: StateReader,
    pub gate: PurgeGate,
    pub config: ArchiveConfig,
    pub status: watch::Sender<ArchiveStatus>,
    /// ARCHIVED writes waiting (see `ArchiveView::urgent`): cut at once while any waits.
    pub waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Archives a snapshot where the log no longer holds the next index to archive.
    pub snapshotter: Arc<Snapshotter>,
    /// Asks the members which digest formats they sum, for a new history's record.
    pub peers: Peers,
}

/// What a leader knows once it owns the archive root.
struct Office {
    history: HistoryId,
    term: u64,
    /// The last index the archive holds.
    archived: Option<u64>,
    /// What the next segment continues from.
    prev: Link,
}

/// Why a leader does not archive (yet).
enum NotYet {
    /// A passing failure: try again soon.
    Retry(String),
    /// The archive cannot be this cluster's, or cannot fence writers: refuse until it changes.
    Refuse(String),
    /// A leader of a later term writes the archive: this node no longer leads, whatever its
    /// Raft state says (openraft 0.9 does not step down on a lost quorum).
    Superseded(String),
}

/// Reading the root's info: a store failure passes; keys that do not fit the root (plaintext
/// where this node seals, sealed where it has no key, a key it lacks) are refused until the
/// keys or the root change.
fn not_yet(e: info::ReadError) -> NotYet {
    match e {
        info::ReadError::Store(e) => NotYet::Retry(e),
        info::ReadError::Keys(e) => refused_by_keys(e),
    }
}

/// Whether an object did not open because the root is sealed otherwise than this node seals,
/// rather than because the object is damaged or forged.
fn keys_do_not_fit(e: &OpenError) -> bool {
    matches!(e.why, Why::Plaintext | Why::NoKeys { .. } | Why::UnknownKey { .. } | Why::WrongKey { .. })
}

/// An object of the root this node's keys do not open as it seals: nothing is written there.
fn refused_by_keys(e: OpenError) -> NotYet {
    if e.why != Why::Plaintext {
        return NotYet::Refuse(e.to_string());
    }
    NotYet::Refuse(format!(
        "{} is plaintext: this archive root is not encrypted, and this node has archive keys. An archive \
         is encrypted from its first object or never (a plaintext archive read with keys could be a \
         forged one): to encrypt the cluster's archive, give it a new, empty root (docs/operations.md, \
         Encrypting the archive)",
        e.object
    ))
}

/// What the listing says the archive ends with.
#[derive(Default)]
struct End {
    /// The newest segment's (last index, object).
    segment: Option<(u64, object_store::path::Path)>,
    /// The newest snapshot manifest's index.
    snapshot: Option<u64>,
}

impl End {
    /// The last index the archive holds: the newest segment's last entry, or the newest
    /// snapshot's index if that is further (retention may have left no segment after it).
    fn last(&self) -> Option<u64> {
        self.segment.as_ref().map(|(last, _)| *last).max(self.snapshot)
    }
}

impl Archiver {
    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    fn update(&self, f: impl FnOnce(&mut ArchiveStatus)) {
        self.status.send_modify(f);
    }

    /// Publishes when the oldest unarchived entry started waiting, if that changed.
    fn show_waiting(&self, waiting: &Waiting) {
        let us = waiting.since_us();
        self.status.send_if_modified(|s| std::mem::replace(&mut s.pending_since_us, us) != us);
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) {
        let message = format!("{what}: {e}");
        tracing::warn!(archive = %self.archive.url, "{message}");
        self.update(|s| s.last_error = message);
    }

    /// Archives nothing, says why everywhere a person or a client looks, and keeps the log.
    fn refuse(&self, problem: &str) {
        tracing::error!(archive = %self.archive.url, "refusing to archive: {problem}");
        self.gate.set_limit(0);
        self.update(|s| {
            s.owned = false;
            s.history = None;
            s.term = 0;
            s.refused = problem.to_owned();
            s.last_error = problem.to_owned();
        });
    }

    /// Runs until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        // Nothing may be purged until the archive's last index is known.
        self.gate.set_limit(0);
        loop {
            if self.is_leader() {
                self.lead().await;
            } else {
                self.follow().await;
            }
        }
    }

    /// As a follower: learn the archive's last index from `head`, to hold the purge gate there.
    /// Only a head of this node's own history counts: another history's says nothing about
    /// what of this log is safe.
    async fn follow(&self) {
        self.update(|s| {
            s.uploading = false;
            s.owned = false;
            s.history = None;
            s.term = 0;
            s.refused.clear();
        });
        let mut metrics = self.raft.metrics();
        while !self.is_leader() {
            let ours = history::current(&self.reader).await.ok().flatten();
            match head::read(&self.archive).await {
                Ok(Some(h)) if ours.is_some() && h.history() == ours => {
                    self.gate.set_limit(h.archived_index);
                    self.update(|s| s.archived_index = Some(h.archived_index));
                }
                Ok(_) => {}
                Err(e) => self.fail("reading the archive head", e.to_string()),
            }
            // Once a second, or at once when this node becomes leader: waking on every metrics
            // change would read `head` once per commit (one object-store GET per write).
            let me = self.node_id;
            let waited = tokio::time::timeout(HEAD_POLL, metrics.wait_for(|m| m.current_leader == Some(me)))
                .await
                .map(|r| r.is_err());
            if waited == Ok(true) {
                // Raft has stopped (the node is shutting down): no busy loop meanwhile.
                tokio::time::sleep(HEAD_POLL).await;
            }
        }
    }

    /// The history this cluster's state belongs to (its id, and the one it was restored from),
    /// proposing a fresh id where the state has none yet (a new cluster, or one restored since
    /// its id was set), and the archive the cluster state names, which must be this node's:
    /// one that disagrees is refused.
    async fn history(&self) -> Result<(HistoryId, Option<String>), NotYet> {
        let retry = |e: String| NotYet::Retry(format!("setting the history id: {e}"));
        let mine = self.config.location();
        for _ in 0..3 {
            let current = history::read_current(&self.reader).await.map_err(|e| retry(e.to_string()))?;
            let (record, revision) = match current {
                Some((r, revision)) => match (HistoryId::parse(&r.id), r.archive.as_deref()) {
                    (Some(id), Some(archive)) if archive == mine => return Ok((id, r.parent)),
                    (Some(_), Some(archive)) => {
                        return Err(NotYet::Refuse(format!(
                            "this cluster archives to {archive} (cluster state, agreed through Raft), but this \
                             node's config names {mine}: it archives nothing. Give this node the cluster's \
                             archive; to move the cluster's archive on purpose, give every node the new one and \
                             run `keepsake backup adopt-archive` against the leader"
                        )))
                    }
                    // A record from before the archive was kept: this leader's becomes the cluster's.
                    (Some(_), None) => (HistoryRecord { archive: Some(mine.clone()), ..r }, revision),
                    (None, _) => (self.fresh_history(Some(&r)).await.map_err(retry)?, revision),
                },
                // None yet, or one from before the last restore (which becomes the parent).
                None => match history::read(&self.reader).await.map_err(|e| retry(e.to_string()))? {
                    Some((stale, revision)) => (self.fresh_history(Some(&stale)).await.map_err(retry)?, revision),
                    None => (self.fresh_history(None).await.map_err(retry)?, 0),
                },
            };
            // Conditional on the item's revision: of two leaders racing, one record wins.
            let deadline = Instant::now() + Duration::from_secs(5);
            let write = history::set(&record, revision);
            self.consensus.propose(write, deadline).await.map_err(|e| retry(e.to_string()))?;
        }
        Err(retry("the history record did not settle".into()))
    }

    /// A new history's record for the state as it is, archiving where this node's config says;
    /// `parent` is the record the state holds from before its last restore. The digest format
    /// is the state's, or this build's where every member sums it (`crate::upgrade`).
    async fn fresh_history(&self, parent: Option<&HistoryRecord>) -> Result<HistoryRecord, String> {
        let restores = self.reader.meta().await.map_err(|e| e.to_string())?.resync.len();
        let carried = parent.map_or(0, |p| p.digest_format);
        Ok(HistoryRecord {
            id: HistoryId::random().to_hex(),
            restores,
            parent: parent.map(|p| p.id.clone()),
            archive: Some(self.config.location()),
            digest_format: crate::upgrade::format_for_new_history(&self.consensus, &self.peers, carried).await,
        })
    }

    /// Why an archive that claims to hold `archived`, with no `archive-info.json`, cannot be
    /// this cluster's: the archive only ever holds committed entries, and every node that can
    /// lead holds every committed entry, so an archive past the leader's last log index holds
    /// another history.
    fn past_my_log(&self, archived: u64) -> Option<String> {
        let last = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        (archived > last).then(|| {
            format!(
                "the archive {} already holds index {archived}, past this node's last log index {last}: another \
                 cluster with id {:?} archives there (or did). Nothing is uploaded into a history that is not this \
                 cluster's: give this cluster its own archive url or cluster id, or restore from that archive",
                self.archive.url, self.cluster_id
            )
        })
    }

    /// What the listing says the archive ends with. With `head` (this history's), only the
    /// segments that can reach past it are listed: `head` never leads the listing, and a
    /// segment holds at most `MAX_ENTRIES_PER_SEGMENT` entries, so the end is in a segment
    /// starting after `head - MAX_ENTRIES_PER_SEGMENT` (or a snapshot). An election then reads
    /// a page or two, not the archive's millions of segments; should that find nothing
    /// reaching `head` (objects lost), the whole listing decides, as without a head.
    async fn end(&self, head: Option<u64>) -> Result<End, object_store::Error> {
        let store = &self.archive.store;
        let prefix = self.archive.path("segments");
        // Manifests lie directly under snapshots/, chunks a level below: list one level.
        let snapshots = store.list_with_delimiter(Some(&self.archive.path("snapshots"))).await?.objects;
        let snapshot = snapshots.iter().filter_map(|o| parse_manifest_name(o.location.as_ref())).max();
        let newest = |segments: Vec<object_store::ObjectMeta>| {
            segments
                .into_iter()
                .filter_map(|o| Some((segment::parse_object_name(o.location.as_ref())?.1, o.location)))
                .max_by_key(|(last, _)| *last)
        };
        if let Some(head) = head {
            let from = head.saturating_sub(MAX_ENTRIES_PER_SEGMENT as u64);
            let offset = self.archive.path(&segment::object_name(from, 0));
            let segment = newest(store.list_with_offset(Some(&prefix), &offset).try_collect().await?);
            let end = End { segment, snapshot };
            if end.last().is_some_and(|last| last >= head) {
                return Ok(end);
            }
        }
        let segment = newest(store.list(Some(&prefix)).try_collect().await?);
        Ok(End { segment, snapshot })
    }

    /// Makes sure the archive root is this history's, and learns where it ends. Nothing is
    /// written to a root found to be another's; the store's fencing is probed before the root
    /// is claimed or written.
    async fn take_office(&self) -> Result<Office, NotYet> {
        let (history, parent) = self.history().await?;
        let term = self.raft.metrics().borrow().current_term;
        // A head that does not decode, or does not authenticate, is no head: the listing
        // decides (verify names it). One this node's keys do not fit (plaintext where it seals,
        // sealed where it does not, a key it lacks) is refused: the root is not its to write.
        let head = match head::read(&self.archive).await {
            Ok(head) => head,
            Err(info::ReadError::Keys(e)) if keys_do_not_fit(&e) => return Err(refused_by_keys(e)),
            Err(e) => {
                tracing::warn!(archive = %self.archive.url, "ignoring the archive head: {e}");
                None
            }
        };
        if let Some(h) = head.as_ref().filter(|h| h.history() == Some(history) && h.term > term) {
            return Err(NotYet::Superseded(format!(
                "the archive head was written by the leader of term {}, later than this node's {term}: this node \
                 no longer leads",
                h.term
            )));
        }
        let ours = head.as_ref().filter(|h| h.history() == Some(history)).map(|h| h.archived_index);
        let end = self.end(ours).await.map_err(|e| NotYet::Retry(format!("listing the archive: {e}")))?;
        let foreign = |whose: String| {
            NotYet::Refuse(format!(
                "the archive {} {whose}, not to this cluster's history {history}: another cluster with id {:?} \
                 archives there (or did), or this cluster was restored or rebuilt under the same id. Nothing is \
                 archived into another history: give this cluster its own archive url or cluster id",
                self.archive.url, self.cluster_id
            ))
        };
        let belongs = |other: &ArchiveInfo| {
            format!(
                "belongs to history {} (cluster {:?}, created at {} µs, see {})",
                other.history_id,
                other.cluster_id,
                other.created_at_us,
                info::OBJECT
            )
        };
        let claimed = match info::read(&self.archive).await.map_err(not_yet)? {
            Some(found) if found.history() == Some(history) => true,
            Some(found) => return Err(foreign(belongs(&found))),
            // An archive from before histories had ids: this history may adopt it only if it
            // cannot be another's — it does not reach past this log, and its head (if it names
            // a history, as a root whose info was deleted would) names this one.
            None => {
                if let Some(problem) = end.last().and_then(|a| self.past_my_log(a)) {
                    return Err(NotYet::Refuse(problem));
                }
                if let Some(other) = head.as_ref().and_then(|h| h.history()).filter(|h| *h != history) {
                    return Err(foreign(format!(
                        "belongs, by its head (its {} is missing), to history {other}",
                        info::OBJECT
                    )));
                }
                self.sealed_as_this_node_seals(&end).await?;
                false
            }
        };
        match info::probe(&self.archive, &format!("{}-{term}-{}", self.node_id, now_us())).await {
            Probe::Fenced => {}
            Probe::Unfenced(problem) => return Err(NotYet::Refuse(problem)),
            Probe::Failed(e) => return Err(NotYet::Retry(e)),
        }
        if !claimed {
            let info = ArchiveInfo {
                format: info::FORMAT,
                cluster_id: self.cluster_id.clone(),
                history_id: history.to_hex(),
                parent_history_id: parent,
                created_at_us: now_us(),
            };
            if let Claim::Foreign(other) = info::claim(&self.archive, &info).await.map_err(not_yet)? {
                return Err(foreign(belongs(&other)));
            }
        }
        let archived = end.last();
        let prev = self.link_to(&end).await.map_err(NotYet::Retry)?;
        Ok(Office { history, term, archived, prev })
    }

    /// With no `archive-info.json` to say whether the root is encrypted, its newest segment or
    /// manifest says: one this node's keys do not open as it seals (plaintext where it has keys,
    /// sealed where it has none) means nothing is written there.
    async fn sealed_as_this_node_seals(&self, end: &End) -> Result<(), NotYet> {
        let (kind, path) = match (&end.segment, end.snapshot) {
            (Some((_, path)), _) => (Kind::Segment, path.clone()),
            (None, Some(index)) => (Kind::Manifest, self.archive.path(&manifest_name(index))),
            (None, None) => return Ok(()),
        };
        let failed = |e: object_store::Error| NotYet::Retry(format!("reading {path}: {e}"));
        let bytes = self.archive.store.get(&path).await.map_err(failed)?.bytes().await.map_err(failed)?;
        self.archive.keys.open(kind, path.as_ref(), &bytes).map(drop).map_err(refused_by_keys)
    }

    /// What a segment after the archive's end continues from: the last archived entry (from
    /// the log while it still holds it, else from the newest segment), or the snapshot there.
    async fn link_to(&self, end: &End) -> Result<Link, String> {
        let Some(last) = end.last() else { return Ok(Link::None) };
        let purged = self.raft.metrics().borrow().purged.map(|l| l.index);
        if purged.is_none_or(|p| last > p) {
            if let Ok(entries) = self.log.read_range(last, last).await {
                if let Some(e) = entries.first().filter(|e| e.log_id.index == last) {
                    return Ok(Link::after(&archived(e)));
                }
            }
        }
        if let Some((_, path)) = end.segment.as_ref().filter(|(l, _)| *l == last) {
            let bytes = self.archive.store.get(path).await.map_err(|e| format!("reading {path}: {e}"))?;
            let bytes = bytes.bytes().await.map_err(|e| format!("reading {path}: {e}"))?;
            let bytes = self.archive.keys.open(Kind::Segment, path.as_ref(), &bytes).map_err(|e| e.to_string())?.bytes;
            let segment = Segment::decode(path.as_ref(), &bytes).map_err(|e| e.to_string())?;
            let entry = segment.entries.last().ok_or_else(|| format!("{path} holds no entry"))?;
            return Ok(Link::after(entry));
        }
        let path = self.archive.path(&manifest_name(last));
        let bytes = self.archive.store.get(&path).await.map_err(|e| format!("reading {path}: {e}"))?;
        let bytes = bytes.bytes().await.map_err(|e| format!("reading {path}: {e}"))?;
        let bytes = self.archive.keys.open(Kind::Manifest, path.as_ref(), &bytes).map_err(|e| e.to_string())?.bytes;
        let m = decode_manifest(path.as_ref(), &bytes).map_err(|e| e.to_string())?;
        let digest = m.digest.as_slice().try_into().map_err(|_| format!("{path}: the digest is not 32 bytes"))?;
        Ok(Link::Snapshot { index: m.index, term: m.term, digest })
    }

    /// When the oldest committed entry after `archived` was proposed: the backlog clock runs
    /// from there, across leader changes and refusals, not from when this node took over.
    /// 0 when nothing committed waits.
    async fn wait_began(&self, archived: Option<u64>) -> i64 {
        let next = archived.map_or(0, |a| a + 1);
        let committed = self.log.committed_index();
        if committed < next {
            return 0;
        }
        let entries = self.log.read_range(next, committed.min(next + 63)).await.unwrap_or_default();
        entries
            .iter()
            .find_map(|e| match &e.payload {
                EntryPayload::Normal(c) if c.proposed_at_us != 0 => Some(c.proposed_at_us),
                _ => None,
            })
            .unwrap_or_else(now_us)
    }

    /// As leader: upload segments until leadership moves.
    async fn lead(&self) {
        // Until the archive's last index is known, nothing counts as archived: what this node
        // read from `head` as a follower is not proof enough for an ARCHIVED write's answer.
        // The wait is timed from the oldest entry the archive is known to lack; with nothing
        // known yet, from now (an old entry 0 would pause every write at once).
        let known = self.status.borrow().archived_index;
        let began = match known {
            Some(_) => self.wait_began(known).await,
            None => now_us(),
        };
        self.update(|s| {
            s.uploading = true;
            s.owned = false;
            s.history = None;
            s.term = 0;
            s.pending_since_us = began;
            s.archived_index = None;
        });
        let office = loop {
            if !self.is_leader() {
                return;
            }
            match self.take_office().await {
                Ok(office) => break office,
                Err(NotYet::Retry(e)) => {
                    self.fail("archiving", e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(NotYet::Refuse(problem)) => {
                    self.refuse(&problem);
                    tokio::time::sleep(REFUSED_RETRY).await;
                    return;
                }
                Err(NotYet::Superseded(why)) => return self.stand_down(&why).await,
            }
        };
        let Office { history, term, archived, mut prev } = office;
        let mut head = head::Writer::new(history, term);
        tracing::info!(archived = ?archived, %history, "archiving as leader");
        if let Some(a) = archived {
            self.gate.set_limit(a);
        }
        let began = self.wait_began(archived).await;
        self.update(|s| {
            s.archived_index = archived;
            s.pending_since_us = began;
            s.owned = true;
            s.history = Some(history);
            s.term = term;
            s.refused.clear();
        });
        let mut archived = archived;
        let mut waiting = Waiting::since(began);
        let max_age = Duration::from_millis(self.config.max_segment_age_ms);
        let max_bytes = self.config.max_segment_bytes;
        while self.is_leader() {
            let read_at = Stamp::now();
            let committed = self.log.committed_index();
            let next = archived.map_or(0, |a| a + 1);
            let backlog = if committed < next { 0 } else { self.log.bytes_between(archived, committed) };
            if committed < next {
                waiting.none();
                self.show_waiting(&waiting);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let since = waiting.seen(read_at);
            self.show_waiting(&waiting);
            // Decide from the byte totals whether to cut now, before reading anything.
            let last = self.log.last_within(
                archived,
                next,
                committed.min(next + MAX_ENTRIES_PER_SEGMENT as u64 - 1),
                max_bytes,
            );
            let full =
                backlog >= max_bytes || last < committed || committed - next + 1 >= MAX_ENTRIES_PER_SEGMENT as u64;
            let urgent = self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0;
            if !full && !urgent && since.at.elapsed() < max_age {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            // openraft's view of the log wins over what RocksDB still holds: entries at or below
            // its purged index may be leftovers the purge gate kept after a snapshot install.
            let purged = self.raft.metrics().borrow().purged.map(|l| l.index);
            let entries = if purged.is_some_and(|p| next <= p) {
                Vec::new()
            } else {
                match self.log.read_range(next, last).await {
                    Ok(e) => e,
                    Err(e) => {
                        self.fail("reading the log", e);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            };
            if entries.first().map(|e| e.log_id.index) != Some(next) {
                match self.bridge(next, "the log no longer holds it", &mut head).await {
                    Ok(Some(link)) => {
                        archived = link.point().map(|(index, _)| index);
                        prev = link;
                    }
                    Ok(None) => {}
                    Err(why) => return self.stand_down(&why).await,
                }
                continue;
            }
            let batch = take_segment(entries, next);
            let last = batch.last().map_or(next, |e| e.index);
            let link_after = batch.last().map(Link::after).unwrap_or(prev);
            match self.upload(batch, history, prev).await {
                Upload::Done(size) => {
                    archived = Some(last);
                    prev = link_after;
                    waiting.archived(last, committed, read_at, self.log.committed_index());
                    self.gate.set_limit(last);
                    if let Err(why) = self.write_head(&mut head, last).await {
                        return self.stand_down(&why).await;
                    }
                    self.update(|s| {
                        s.archived_index = Some(last);
                        s.pending_since_us = waiting.since_us();
                        s.last_success_us = now_us();
                        s.last_error.clear();
                        s.segments_uploaded += 1;
                        s.bytes_uploaded += size as u64;
                    });
                }
                Upload::NoDigest => {
                    match self.bridge(next, "its digest is older than the digest history", &mut head).await {
                        Ok(Some(link)) => {
                            archived = link.point().map(|(index, _)| index);
                            prev = link;
                        }
                        Ok(None) => {}
                        Err(why) => return self.stand_down(&why).await,
                    }
                }
                Upload::Refused(problem) => {
                    self.refuse(&problem);
                    tokio::time::sleep(REFUSED_RETRY).await;
                    return;
                }
                Upload::LeadershipLost => return,
            }
        }
    }

    /// Where the segments cannot go on from `next` (a Raft snapshot replaced the log there, or
    /// the digest history no longer reaches it), the archive goes on from an archive snapshot of
    /// the current state instead of stopping at a gap. Returns the link to that snapshot (None:
    /// not this time), or why this node no longer leads the archive.
    async fn bridge(&self, next: u64, why: &str, head: &mut head::Writer) -> Result<Option<Link>, String> {
        match self.snapshotter.upload_base().await {
            Ok(up) if up.index >= next => {
                tracing::warn!(index = up.index, "archived a snapshot in place of entries {next}-{}: {why}", up.index);
                self.gate.set_limit(up.index);
                self.write_head(head, up.index).await?;
                self.update(|s| {
                    s.archived_index = Some(up.index);
                    s.last_error.clear();
                });
                return Ok(Some(Link::Snapshot { index: up.index, term: up.term, digest: up.digest }));
            }
            Ok(up) => self.fail(
                "archiving",
                format!("cannot archive index {next} ({why}) and the snapshot at {} does not reach it", up.index),
            ),
            Err(e) => self.fail(&format!("archiving a snapshot in place of index {next} ({why})"), e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(None)
    }

    /// Uploads one segment, create-only, retrying with exponential backoff while this node
    /// leads. A segment of that name already there is fine when it holds the same entries of
    /// the same history (an upload this node or a deposed leader made before); anything else
    /// is another history's, and nothing more is archived.
    async fn upload(&self, entries: Vec<ArchivedEntry>, history: HistoryId, prev: Link) -> Upload {
        let Some(last) = entries.last().map(|e| e.index) else { return Upload::Done(0) };
        let digest = match self.digest_after(last).await {
            Some(Some(d)) => d,
            Some(None) => return Upload::NoDigest,
            None => return Upload::LeadershipLost,
        };
        let segment = Segment::new(&self.cluster_id, entries, digest).in_history(history, prev);
        let bytes = bytes::Bytes::from(self.archive.keys.seal(Kind::Segment, &segment.encode()));
        let path = self.archive.path(&segment.object_name());
        let same = |existing: &[u8]| {
            let existing = self.archive.keys.open(Kind::Segment, path.as_ref(), existing).map_err(|e| e.to_string())?;
            let other = Segment::decode(path.as_ref(), &existing.bytes).map_err(|e| e.to_string())?;
            // A format 1 segment (an upgrading cluster's older leader) holds no history id.
            if other.header.history.is_some() && other.header.history != segment.header.history {
                return Err(format!(
                    "it belongs to history {}",
                    other.header.history.map_or("(none: written before histories had ids)".into(), |h| h.to_hex())
                ));
            }
            if other.entries != segment.entries {
                return Err("it holds other entries".into());
            }
            Ok(())
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match put_new(self.archive.store.as_ref(), &path, bytes.clone(), same).await {
                Ok(_) => {
                    keepsake_raft::crash::point("segment-uploaded");
                    return Upload::Done(bytes.len());
                }
                Err(PutNewError::Differs(problem)) => return Upload::Refused(problem),
                Err(PutNewError::Store(e)) => self.fail(&format!("uploading {path}"), e),
            }
            if !self.is_leader() {
                return Upload::LeadershipLost;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// The state digest right after `index` (waits for this node to apply it): None when
    /// leadership moved first, Some(None) when the digest history no longer holds it.
    async fn digest_after(&self, index: u64) -> Option<Option<[u8; 32]>> {
        loop {
            let mut applied = self.reader.watch();
            let reached = async move { applied.wait_for(|p| p.index >= index).await.map(|_| ()) };
            let reached = tokio::time::timeout(Duration::from_secs(1), reached).await;
            if !self.is_leader() {
                return None;
            }
            if !matches!(reached, Ok(Ok(()))) {
                continue;
            }
            match self.reader.digest_at(index).await {
                Ok(Some(point)) => return Some(Some(point.digest.0)),
                Ok(None) => return Some(None),
                Err(e) => self.fail("reading the digest", e),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Moves `head`; Err when a newer leader wrote it (this node no longer leads the archive,
    /// whatever its Raft metrics still say: openraft 0.9 does not step down on a lost quorum).
    async fn write_head(&self, head: &mut head::Writer, index: u64) -> Result<(), String> {
        match head.write(&self.archive, index).await {
            Ok(()) => Ok(()),
            Err(head::NotWritten::Superseded(why)) => Err(why),
            Err(head::NotWritten::Store(e)) => {
                // Only a shortcut for followers; the listing stays right.
                tracing::warn!(error = %e, "cannot update the archive head (followers hold their purge gate lower)");
                Ok(())
            }
        }
    }

    /// Archives, snapshots, scrubs and deletes nothing until this node's Raft term or
    /// leadership changes: a later term's leader writes the archive.
    async fn stand_down(&self, why: &str) {
        tracing::warn!(archive = %self.archive.url, "standing down: {why}");
        self.gate.set_limit(0);
        self.update(|s| {
            s.owned = false;
            s.term = 0;
            s.history = None;
            s.last_error = why.to_owned();
        });
        let (me, term) = (self.node_id, self.raft.metrics().borrow().current_term);
        let mut metrics = self.raft.metrics();
        let stopped = metrics.wait_for(|m| m.current_term != term || m.current_leader != Some(me)).await.is_err();
        if stopped {
            // Raft has stopped (the node is shutting down): no busy loop meanwhile.
            tokio::time::sleep(HEAD_POLL).await;
        }
    }
}

/// A moment, on the monotonic clock (for decisions) and the wall clock (for the status).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stamp {
    at: Instant,
    us: i64,
}

impl Stamp {
    fn now() -> Stamp {
        Stamp { at: Instant::now(), us: now_us() }
    }
}

/// Since when the oldest committed entry not yet archived has waited (the archive lag), as
/// far as the archiver can tell without timing every entry. The bound it keeps: the lag it
/// reports is never less than the real one, and exceeds it by at most one upload cycle.
#[derive(Debug, Default)]
struct Waiting(Option<Stamp>);

impl Waiting {
    /// A clock that started at unix time `us` (0: nothing waits).
    fn since(us: i64) -> Waiting {
        if us == 0 {
            return Waiting(None);
        }
        let age = Duration::from_micros((now_us() - us).max(0) as u64);
        Waiting(Some(Stamp { at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now), us }))
    }

    /// Committed entries wait, seen `now`: the clock starts unless it already runs.
    fn seen(&mut self, now: Stamp) -> Stamp {
        *self.0.get_or_insert(now)
    }

    /// Nothing waits.
    fn none(&mut self) {
        self.0 = None;
    }

    /// A segment archived every entry up to `last`; the cycle read the log at `read_at`, when
    /// `read` was the committed index; `committed` is the committed index now. When the
    /// segment took everything committed at `read_at`, whatever waits now was committed
    /// after it, so the clock restarts there; when it took less (the segment was full), the
    /// entry after `last` may have waited from the start, so the clock runs on.
    fn archived(&mut self, last: u64, read: u64, read_at: Stamp, committed: u64) {
        self.0 = if committed <= last {
            None
        } else if last >= read {
            Some(read_at)
        } else {
            self.0
        };
    }

    /// Unix microseconds when the wait began (0: nothing waits).
    fn since_us(&self) -> i64 {
        self.0.map_or(0, |s| s.us)
    }
}

/// The entries in archived form, up to the first break in their indices (a segment holds
/// consecutive entries only, starting at `next`).
fn take_segment(entries: Vec<Entry>, next: u64) -> Vec<ArchivedEntry> {
    entries
        .iter()
        .enumerate()
        .take_while(|(k, e)| e.log_id.index == next + *k as u64)
        .map(|(_, e)| archived(e))
        .collect()
}

enum Upload {
    Done(usize),
    NoDigest,
    /// Another history's segment has the name: archive nothing more.
    Refused(String),
    LeadershipLost,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ms: u64, origin: Instant) -> Stamp {
        Stamp { at: origin + Duration::from_millis(ms), us: ms as i64 * 1000 }
    }

    /// Under writes that never stop, every upload sees new commits arrive while it runs. The lag
    /// must stay about one cycle, not grow with the length of the run: a lag that grows
    /// without end pauses every write once it passes `archive.max_backlog_seconds`.
    #[test]
    fn the_lag_stays_one_cycle_under_writes_that_never_stop() {
        let origin = Instant::now();
        let mut waiting = Waiting::default();
        let mut committed = 0;
        for cycle in 0..1000u64 {
            let read_at = stamp(cycle * 250, origin);
            committed += 10;
            waiting.seen(read_at);
            let read = committed;
            committed += 3; // committed while the segment uploaded
            waiting.archived(read, read, read_at, committed);
            assert_eq!(waiting.since_us(), read_at.us, "cycle {cycle}: the wait restarts where the log was read");
        }
    }

    #[test]
    fn a_full_segment_keeps_the_clock_running_and_catching_up_stops_it() {
        let origin = Instant::now();
        let mut waiting = Waiting::default();
        let first = waiting.seen(stamp(0, origin));
        // The segment took entries up to 100 of the 500 committed when it read the log.
        waiting.archived(100, 500, stamp(10, origin), 600);
        assert_eq!(waiting.since_us(), first.us, "entry 101 may have waited since the start");
        assert_eq!(waiting.seen(stamp(20, origin)), first, "a running clock is not restarted");
        waiting.archived(600, 600, stamp(20, origin), 600);
        assert_eq!(waiting.since_us(), 0, "nothing waits once the archive holds every committed entry");
        waiting.seen(stamp(30, origin));
        waiting.none();
        assert_eq!(waiting.since_us(), 0);
    }
}
