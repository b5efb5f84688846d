//! The archiver: on the leader, uploads committed log entries as segments, in index order,
//! never skipping one; on every node, keeps the purge gate at the archive's last index.
//!
//! Invariants: a segment holds committed entries only (they never change, so re-uploading one
//! after a leader change is harmless); a node purges nothing past what the archive holds
//! (docs/design.md §1.5); an upload that fails is retried with backoff, and the failure is reported
//! in the status rather than skipped.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use keepsake_archive::entry::archived;
use keepsake_archive::head;
use keepsake_archive::proto::ArchivedEntry;
use keepsake_archive::segment::{self, Segment};
use keepsake_archive::snapshot::parse_manifest_name;
use keepsake_archive::store::{put, Archive};
use keepsake_raft::clock::now_us;
use keepsake_raft::types::Entry;
use keepsake_raft::{LogStore, NodeId, PurgeGate, Raft, StateReader};
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::snapshotter::Snapshotter;
use super::status::ArchiveStatus;
use crate::config::ArchiveConfig;

/// Entries read from the log per step, at most.
const MAX_ENTRIES_PER_SEGMENT: usize = 4096;
/// How often a follower reads `head` to move its purge gate.
const HEAD_POLL: Duration = Duration::from_secs(1);

pub struct Archiver {
    pub archive: Archive,
    pub cluster_id: String,
    pub node_id: NodeId,
    pub raft: Raft,
    pub log: LogStore,
    pub reader: StateReader,
    pub gate: PurgeGate,
    pub config: ArchiveConfig,
    pub status: watch::Sender<ArchiveStatus>,
    /// ARCHIVED writes waiting (see `ArchiveView::urgent`): cut at once while any waits.
    pub waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Archives a snapshot where the log no longer holds the next index to archive.
    pub snapshotter: Arc<Snapshotter>,
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
    async fn follow(&self) {
        self.update(|s| {
            s.uploading = false;
            s.owned = false;
        });
        let mut metrics = self.raft.metrics();
        while !self.is_leader() {
            match head::read(&self.archive).await {
                Ok(Some(index)) => {
                    self.gate.set_limit(index);
                    self.update(|s| s.archived_index = Some(index));
                }
                Ok(None) => {}
                Err(e) => self.fail("reading the archive head", e),
            }
            // Once a second, or at once when this node becomes leader: waking on every metrics
            // change would read `head` once per commit (one object-store GET per write).
            let me = self.node_id;
            let _ = tokio::time::timeout(HEAD_POLL, metrics.wait_for(|m| m.current_leader == Some(me))).await;
        }
    }

    /// Why an archive that claims to hold `archived` cannot be this cluster's: the archive only
    /// ever holds committed entries, and every node that can lead holds every committed entry,
    /// so an archive past the leader's last log index holds another history — a second cluster
    /// started with the same id and archive url. Only the leader can tell: a follower may lag.
    fn foreign(&self, archived: u64) -> Option<String> {
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

    /// The last index the archive holds, from the listing alone: the newest segment's last
    /// entry, or the newest snapshot's index if that is further (retention may have left no
    /// segment after it).
    async fn last_archived(&self) -> Result<Option<u64>, object_store::Error> {
        let segments: Vec<_> = self.archive.store.list(Some(&self.archive.path("segments"))).try_collect().await?;
        let snapshots: Vec<_> = self.archive.store.list(Some(&self.archive.path("snapshots"))).try_collect().await?;
        let last_segment =
            segments.iter().filter_map(|o| segment::parse_object_name(o.location.as_ref())).map(|(_, last)| last).max();
        let last_snapshot = snapshots.iter().filter_map(|o| parse_manifest_name(o.location.as_ref())).max();
        Ok(last_segment.max(last_snapshot))
    }

    /// As leader: upload segments until leadership moves.
    async fn lead(&self) {
        // Until the archive's last index is known, the whole wait counts as archive lag, and
        // nothing counts as archived: what this node read from `head` as a follower is not
        // proof enough for an ARCHIVED write's answer.
        self.update(|s| {
            s.uploading = true;
            s.owned = false;
            s.pending_since_us = now_us();
            s.archived_index = None;
        });
        let archived = loop {
            if !self.is_leader() {
                return;
            }
            match self.last_archived().await {
                Ok(a) => break a,
                Err(e) => {
                    self.fail("listing the archive", e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        if let Some(problem) = archived.and_then(|a| self.foreign(a)) {
            // Never upload into another history, and never let the log be purged on its say
            // (as a follower this node may have opened the gate to that history's `head`).
            self.gate.set_limit(0);
            self.fail("archiving", problem);
            tokio::time::sleep(Duration::from_secs(5)).await;
            return;
        }
        tracing::info!(archived = ?archived, "archiving as leader");
        if let Some(a) = archived {
            self.gate.set_limit(a);
        }
        self.update(|s| {
            s.archived_index = archived;
            s.pending_since_us = 0;
            s.owned = true;
        });
        let mut archived = archived;
        let mut waiting = Waiting::default();
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
                archived = self.bridge(next, "the log no longer holds it").await.or(archived);
                continue;
            }
            let batch = take_segment(entries, next);
            let last = batch.last().map_or(next, |e| e.index);
            match self.upload(batch).await {
                Upload::Done(size) => {
                    archived = Some(last);
                    waiting.archived(last, committed, read_at, self.log.committed_index());
                    self.gate.set_limit(last);
                    self.write_head(last).await;
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
                    archived = self.bridge(next, "its digest is older than the digest history").await.or(archived);
                }
                Upload::LeadershipLost => return,
            }
        }
    }

    /// Where the segments cannot go on from `next` (a Raft snapshot replaced the log there, or
    /// the digest history no longer reaches it), the archive goes on from an archive snapshot of
    /// the current state instead of stopping at a gap. Returns the new archived index.
    async fn bridge(&self, next: u64, why: &str) -> Option<u64> {
        match self.snapshotter.upload_base().await {
            Ok(up) if up.index >= next => {
                tracing::warn!(index = up.index, "archived a snapshot in place of entries {next}-{}: {why}", up.index);
                self.gate.set_limit(up.index);
                self.write_head(up.index).await;
                self.update(|s| {
                    s.archived_index = Some(up.index);
                    s.last_error.clear();
                });
                return Some(up.index);
            }
            Ok(up) => self.fail(
                "archiving",
                format!("cannot archive index {next} ({why}) and the snapshot at {} does not reach it", up.index),
            ),
            Err(e) => self.fail(&format!("archiving a snapshot in place of index {next} ({why})"), e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        None
    }

    /// Uploads one segment, retrying with exponential backoff while this node leads.
    async fn upload(&self, entries: Vec<ArchivedEntry>) -> Upload {
        let Some(last) = entries.last().map(|e| e.index) else { return Upload::Done(0) };
        let digest = match self.digest_after(last).await {
            Some(Some(d)) => d,
            Some(None) => return Upload::NoDigest,
            None => return Upload::LeadershipLost,
        };
        let segment = Segment::new(&self.cluster_id, entries, digest);
        let bytes = bytes::Bytes::from(segment.encode());
        let path = self.archive.path(&segment.object_name());
        let mut backoff = Duration::from_millis(100);
        loop {
            match put(self.archive.store.as_ref(), &path, bytes.clone()).await {
                Ok(()) => {
                    keepsake_raft::crash::point("segment-uploaded");
                    return Upload::Done(bytes.len());
                }
                Err(e) => self.fail(&format!("uploading {path}"), e),
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

    async fn write_head(&self, index: u64) {
        if let Err(e) = self.archive.store.put(&self.archive.path(head::OBJECT), head::encode(index).into()).await {
            // Only a shortcut for followers; the listing stays right.
            tracing::warn!(error = %e, "cannot update the archive head (followers hold their purge gate lower)");
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
