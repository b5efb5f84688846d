//! `keepsake restore`: rebuilds a node's data directory from the archive alone.
//!
//! It starts from the newest whole archive snapshot at or before the target (one naming a
//! missing chunk is passed over, and reported), chains segments from there to the target, and
//! checks every checksum and, at every segment boundary, that the replayed state's digest
//! equals the one the segment recorded. The result is the first state of a new cluster (new
//! cluster id, revisions continuing above anything the old cluster could have handed out). It
//! works in `<dir>.partial` and renames it into place only when everything checked out, so a
//! failed restore leaves no data directory behind.
//!
//! Invariant: a restore never reports success for less than was asked. A target index or time
//! the archive does not reach fails with `NotReached`, naming the last point it does reach;
//! a restore to the latest point fails when it ends before the index `head` claims.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::TryStreamExt;
use keepsake_raft::types::{Entry, LogId};
use keepsake_raft::{MachineMeta, Node, NodeId, ResyncRange};
use object_store::ObjectStoreExt;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, Membership};

use crate::chain::{check_link, Expect};
use crate::entry::to_command;
use crate::envelope::Kind;
use crate::lease::{LeaseGuard, LEASE_DURATION};
use crate::proto::{ArchivedEntry, SnapshotManifest};
use crate::segment::{Link, Segment};
use crate::snapshot::{
    chunk_name, chunks_missing, decode_manifest, parse_chunk_name, parse_manifest_name, records, Chunk, ChunkId,
};
use crate::store::Archive;
use crate::verify::{list, Listed};

/// Revisions left unused above the old cluster's archived ones, for writes it committed but
/// never archived (bounded by `archive.max_backlog_*`, far below this): devices that saw one are
/// told to resync rather than having their cursor silently reused.
pub const UNARCHIVED_REVISION_MARGIN: u64 = 1 << 32;

/// Where a restore stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The newest archived entry.
    Latest,
    /// Up to and including this log index.
    Index(u64),
    /// Every entry proposed at or before this unix time (microseconds).
    Time(i64),
}

pub struct Plan {
    pub archive: Archive,
    pub target: Target,
    pub data_dir: PathBuf,
    pub new_cluster_id: String,
    /// The new cluster's voters; the restored node is one of them.
    pub members: BTreeMap<NodeId, Node>,
    /// The root the new cluster will archive into: it must be empty (None: not checked, for a
    /// drill's throwaway restore).
    pub target_root: Option<Archive>,
}

#[derive(Debug, Default)]
pub struct Report {
    /// The archive snapshot the restore started from (None: it replayed from index 0).
    pub snapshot_index: Option<u64>,
    /// The last old-cluster index applied.
    pub index: u64,
    /// Proposal time of the last applied entry that carried writes (unix microseconds).
    pub last_entry_time_us: i64,
    pub items: u64,
    pub revision: u64,
    pub revision_floor: u64,
    pub segments: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub digest: String,
    /// Newer archive snapshots the restore could not start from, a chunk they name being
    /// missing (`backup verify` names them); it started from an older one or from index 0.
    pub passed_over: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Refused(String),
    /// The archive ends before the target: the message names the last point it reaches.
    #[error("{0}")]
    NotReached(String),
    #[error("the archive is broken: {0}")]
    Archive(String),
    /// One object of an archive snapshot is damaged: the restore can start from another.
    #[error("the archive is broken: {0}")]
    Damaged(String),
    #[error("reading the archive: {0}")]
    Store(#[from] object_store::Error),
    #[error("local store: {0}")]
    Local(#[from] keepsake_raft::StoreError),
}

/// The segments to read, in order: from index `from` on, each starting at or before the next
/// needed index and reaching furthest, up to the head or the first index no segment holds
/// (returned too: a target before it is still reachable; one after it is not).
fn chain(listed: &[Listed], from: u64) -> (Vec<Listed>, Option<u64>) {
    let mut out = Vec::new();
    let mut next = from;
    let head = listed.iter().map(|s| s.last).max();
    while head.is_some_and(|h| next <= h) {
        let Some(best) = listed.iter().filter(|s| s.first <= next && s.last >= next).max_by_key(|s| s.last) else {
            return (out, Some(next));
        };
        next = best.last + 1;
        out.push(best.clone());
    }
    (out, None)
}

/// The archive's snapshot manifests a restore to `target` may start from, newest first, and
/// the chunks the listing holds.
async fn base_candidates(archive: &Archive, target: Target) -> Result<(Vec<String>, HashSet<ChunkId>), RestoreError> {
    let prefix = archive.path("snapshots");
    let objects: Vec<object_store::ObjectMeta> = archive.store.list(Some(&prefix)).try_collect().await?;
    let listed_chunks: HashSet<ChunkId> =
        objects.iter().filter_map(|o| parse_chunk_name(o.location.as_ref())).collect();
    let mut manifests: Vec<(u64, String)> = objects
        .iter()
        .filter_map(|o| Some((parse_manifest_name(o.location.as_ref())?, o.location.to_string())))
        .filter(|(index, _)| !matches!(target, Target::Index(i) if *index > i))
        .collect();
    manifests.sort();
    Ok((manifests.into_iter().rev().map(|(_, name)| name).collect(), listed_chunks))
}

/// One candidate manifest, read: Ok(Some) to start from, Ok(None) when it holds writes after a
/// time target, Err with why it is passed over: a chunk it names is missing (a deposed
/// leader's retention could once delete one), the manifest is damaged, or it names another
/// history.
async fn base_candidate(
    archive: &Archive,
    name: &str,
    target: Target,
    expect: &mut Expect,
    listed_chunks: &HashSet<ChunkId>,
) -> Result<Result<Option<SnapshotManifest>, String>, RestoreError> {
    let bytes = archive.store.get(&object_store::path::Path::from(name)).await?.bytes().await?;
    let m = match archive.keys.open(Kind::Manifest, name, &bytes) {
        Ok(opened) => decode_manifest(name, &opened.bytes).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let m = match m {
        Ok(m) => m,
        Err(e) => return Ok(Err(format!("{name} ({e})"))),
    };
    if matches!(target, Target::Time(t) if m.last_write_us > t) {
        return Ok(Ok(None));
    }
    if let Err(problem) = expect.manifest(name, &m) {
        return Ok(Err(problem));
    }
    let missing = chunks_missing(&m.chunks, listed_chunks);
    if missing > 0 {
        return Ok(Err(format!("{name} ({missing} of its {} chunks missing)", m.chunks.len())));
    }
    Ok(Ok(Some(m)))
}

/// Loads an archive snapshot's chunks into `store`, checking each chunk's hash and, at the end,
/// the loaded state's digest against the manifest's.
async fn load_snapshot(
    archive: &Archive,
    store: &mut keepsake_raft::Store,
    name: &str,
    m: &SnapshotManifest,
    report: &mut Report,
    progress: &impl Fn(&str),
    lease: &LeaseGuard,
) -> Result<(), RestoreError> {
    let mut loader = store.machine.loader();
    let mut renewed = Instant::now();
    for (n, c) in m.chunks.iter().enumerate() {
        if renewed.elapsed() > LEASE_DURATION / 4 {
            lease.renew().await?;
            renewed = Instant::now();
        }
        let id = ChunkId::of(c)
            .ok_or_else(|| RestoreError::Archive(format!("{name}: chunk {n} has a hash that is not 32 bytes")))?;
        let hash = id.hash;
        let object = archive.path(&chunk_name(&id)).to_string();
        let bytes = match archive.store.get(&object_store::path::Path::from(object.as_str())).await {
            Ok(got) => got.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RestoreError::Damaged(format!("{object}, named by {name}, is missing")))
            }
            Err(e) => return Err(e.into()),
        };
        report.bytes += bytes.len() as u64;
        let opened =
            archive.keys.open(Kind::Chunk, &object, &bytes).map_err(|e| RestoreError::Damaged(e.to_string()))?;
        let chunk = Chunk::decode(&object, &opened.bytes, &hash, &opened.namer)
            .map_err(|e| RestoreError::Damaged(e.to_string()))?;
        for (tag, key, value) in records(&object, &chunk.body).map_err(|e| RestoreError::Damaged(e.to_string()))? {
            loader.record(tag, key, value, &object).map_err(|e| RestoreError::Damaged(e.to_string()))?;
        }
        progress(&format!("snapshot {name}: chunk {}/{}", n + 1, m.chunks.len()));
    }
    let digest: [u8; 32] =
        m.digest.as_slice().try_into().map_err(|_| RestoreError::Archive(format!("{name}: bad digest length")))?;
    let expected = MachineMeta {
        applied: Some(LogId::new(CommittedLeaderId::new(m.term, 0), m.index)),
        digest: keepsake_raft::Digest(digest),
        revision: m.revision,
        items: m.items,
        last_write_us: m.last_write_us,
        resync: m.resync.iter().map(|r| ResyncRange { restored: r.restored, floor: r.floor }).collect(),
        ..MachineMeta::default()
    };
    store.machine.load_archived(loader, expected).await.map_err(|e| {
        RestoreError::Damaged(format!("{name}: {e}: refusing a state that differs from the one archived"))
    })?;
    report.snapshot_index = Some(m.index);
    report.index = m.index;
    report.last_entry_time_us = m.last_write_us;
    Ok(())
}

/// A point in the archive as a person reads it: its index and the time of its last write.
fn last_point(report: &Report) -> String {
    format!("index {} (last write at {})", report.index, time(report.last_entry_time_us))
}

/// Unix microseconds in RFC 3339 (UTC).
fn time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(|| format!("{us} µs after the epoch"), |t| t.to_rfc3339())
}

fn included(target: Target, e: &ArchivedEntry) -> bool {
    match target {
        Target::Latest => true,
        Target::Index(i) => e.index <= i,
        // Blank and membership entries carry no time: they go with what precedes them.
        Target::Time(t) => e.proposed_at_us == 0 || e.proposed_at_us <= t,
    }
}

fn ops(e: &ArchivedEntry) -> u64 {
    match &e.payload {
        Some(crate::proto::archived_entry::Payload::Writes(w)) => w.writes.iter().map(|w| w.ops.len() as u64).sum(),
        _ => 0,
    }
}

pub async fn run(plan: Plan, progress: impl Fn(&str)) -> Result<Report, RestoreError> {
    let started = Instant::now();
    let dir = &plan.data_dir;
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(RestoreError::Refused(format!(
            "{} exists and is not empty; restore into a new directory",
            dir.display()
        )));
    }
    if let Some(root) = &plan.target_root {
        let mut objects = root.store.list(Some(&root.root));
        if let Some(found) = objects.try_next().await? {
            return Err(RestoreError::Refused(format!(
                "the new cluster's archive root {}/{} already holds objects ({}, …): an earlier attempt or another \
                 cluster archives there, and a restored cluster starts a history of its own in an empty root; choose \
                 another --new-cluster-id, or remove that root once nothing needs it",
                root.url, root.root, found.location
            )));
        }
    }
    let partial = PathBuf::from(format!("{}.partial", dir.display()));
    let _ = std::fs::remove_dir_all(&partial);
    // Retention leaves the archive alone while this restore reads it.
    let holder = format!("restore-{}-{}", plan.new_cluster_id, keepsake_raft::clock::now_us());
    let lease = LeaseGuard::take(&plan.archive, &holder).await?;
    let result = replay(&plan, &partial, &progress, &lease).await;
    lease.release().await;
    let published = result.and_then(|report| publish(&partial, dir, &plan.new_cluster_id).map(|()| report));
    match published {
        Ok(mut report) => {
            report.seconds = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

/// Moves the finished state into place, whole: the directory appears with its cluster id in it
/// or not at all (a crash before the rename leaves only `<dir>.partial`, which the next restore
/// removes).
fn publish(partial: &Path, dir: &Path, cluster_id: &str) -> Result<(), RestoreError> {
    let id_file = partial.join("cluster_id");
    std::fs::write(&id_file, cluster_id)
        .and_then(|()| std::fs::File::open(&id_file)?.sync_all())
        .and_then(|()| std::fs::File::open(partial)?.sync_all())
        .map_err(|e| RestoreError::Refused(format!("cannot write {}: {e}", id_file.display())))?;
    keepsake_raft::crash::point("restore-before-publish");
    let _ = std::fs::remove_dir(dir);
    std::fs::rename(partial, dir)
        .map_err(|e| RestoreError::Refused(format!("cannot move the restored state into {}: {e}", dir.display())))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(())
}

async fn replay(plan: &Plan, dir: &Path, progress: &impl Fn(&str), lease: &LeaseGuard) -> Result<Report, RestoreError> {
    let mut expect = Expect::load(&plan.archive).await.map_err(RestoreError::Archive)?;
    // Read before the listing: `head` never leads it, so segments ending before it are lost.
    let head = match plan.target {
        Target::Latest => crate::head::read(&plan.archive).await.map_err(|e| RestoreError::Archive(e.to_string()))?,
        Target::Index(_) | Target::Time(_) => None,
    };
    if let Some(h) = &head {
        expect.head(h).map_err(|p| RestoreError::Archive(format!("{p}; refusing to trust it")))?;
    }
    let head = head.map(|h| h.archived_index);
    // The newest snapshot that loads whole, read one at a time: one with a missing or damaged
    // chunk (or manifest) is passed over, and the restore starts again from the one before it
    // or from 0.
    let (candidates, listed_chunks) = base_candidates(&plan.archive, plan.target).await?;
    let mut passed_over = Vec::new();
    let mut report = Report::default();
    let mut base = None;
    let mut store = keepsake_raft::open(dir)?;
    for name in candidates {
        let m = match base_candidate(&plan.archive, &name, plan.target, &mut expect, &listed_chunks).await? {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(why) => {
                progress(&format!("passing over snapshot {why}"));
                passed_over.push(why);
                continue;
            }
        };
        match load_snapshot(&plan.archive, &mut store, &name, &m, &mut report, progress, lease).await {
            Ok(()) => {
                base = Some((name, m));
                break;
            }
            Err(RestoreError::Damaged(problem)) => {
                progress(&format!("passing over snapshot {name}: {problem}"));
                passed_over.push(format!("{name} ({problem})"));
                drop(store);
                std::fs::remove_dir_all(dir)
                    .map_err(|e| RestoreError::Refused(format!("cannot clear {}: {e}", dir.display())))?;
                store = keepsake_raft::open(dir)?;
                report = Report::default();
            }
            Err(e) => return Err(e),
        }
    }
    // A gap the passed-over snapshots would have bridged is theirs to explain.
    let passed = |message: String| {
        if passed_over.is_empty() {
            RestoreError::Archive(message)
        } else {
            RestoreError::Archive(format!(
                "{message}; passed over the snapshot(s) {}, which name missing or damaged chunks",
                passed_over.join(", ")
            ))
        }
    };
    let from = base.as_ref().map_or(0, |(_, m)| m.index + 1);
    let listed = list(&plan.archive).await?;
    if listed.is_empty() && base.is_none() {
        return Err(passed(format!(
            "{} holds no snapshot to start from and no segment for this cluster",
            plan.archive.url
        )));
    }
    let holds_from = listed.iter().any(|s| s.first <= from && s.last >= from);
    if let Some(oldest) = listed.iter().filter(|s| s.first > from).min_by_key(|s| s.first) {
        if !holds_from && base.is_none() {
            return Err(passed(format!(
                "no snapshot is at or before the target, and the oldest segment, {}, starts at index {}: the \
                 entries before it are gone (retention deleted what this target needs, or they are missing)",
                oldest.name, oldest.first
            )));
        }
    }
    let (segments, gap) = chain(&listed, from);
    report.passed_over = passed_over.clone();
    // What the next segment must continue from.
    let mut before = Link::None;
    if let Some((_, m)) = &base {
        let digest = m.digest.as_slice().try_into().unwrap_or([0; 32]);
        before = Link::Snapshot { index: m.index, term: m.term, digest };
    }
    let mut next = from;
    let mut done = false;
    let mut ops_after = 0u64;
    let mut renewed = Instant::now();
    for (n, listed) in segments.iter().enumerate() {
        if renewed.elapsed() > LEASE_DURATION / 4 {
            lease.renew().await?;
            renewed = Instant::now();
        }
        let bytes =
            plan.archive.store.get(&object_store::path::Path::from(listed.name.as_str())).await?.bytes().await?;
        report.bytes += bytes.len() as u64;
        let opened = plan
            .archive
            .keys
            .open(Kind::Segment, &listed.name, &bytes)
            .map_err(|e| RestoreError::Archive(e.to_string()))?;
        let segment = Segment::decode(&listed.name, &opened.bytes).map_err(|e| RestoreError::Archive(e.to_string()))?;
        expect.segment(&listed.name, &segment.header).map_err(RestoreError::Archive)?;
        if !done {
            link_holds(&listed.name, &segment, next, &before, &store)?;
        }
        let from_index = next;
        let fresh = segment.entries.into_iter().filter(move |e| e.index >= from_index);
        if done {
            ops_after += fresh.map(|e| ops(&e)).sum::<u64>();
            continue;
        }
        let mut batch = Vec::new();
        let mut whole = true;
        let mut last_applied = None;
        for e in fresh {
            if done || !included(plan.target, &e) {
                done = true;
                whole = false;
                ops_after += ops(&e);
                continue;
            }
            let command = to_command(&e).map_err(|p| RestoreError::Archive(format!("{}: {p}", listed.name)))?;
            if command.is_some() && e.proposed_at_us != 0 {
                report.last_entry_time_us = e.proposed_at_us;
            }
            let log_id = LogId::new(CommittedLeaderId::new(e.term, 0), e.index);
            let payload = command.map_or(EntryPayload::Blank, EntryPayload::Normal);
            batch.push(Entry { log_id, payload });
            report.index = e.index;
            next = e.index + 1;
            last_applied = Some(e);
        }
        if let Some(e) = last_applied.take() {
            before = Link::after(&e);
        }
        store.machine.apply(batch).await.map_err(|e| RestoreError::Refused(format!("applying: {e}")))?;
        report.segments += 1;
        keepsake_raft::crash::point("restore-segment-applied");
        if whole {
            let applied = store.reader.applied();
            if applied.digest.0 != segment.header.digest_after {
                return Err(RestoreError::Archive(format!(
                    "{}: the replayed state's digest at index {} is {}, the segment recorded another: refusing a \
                     state that differs from the one archived",
                    listed.name,
                    applied.index,
                    applied.digest.to_hex()
                )));
            }
        }
        if matches!(plan.target, Target::Index(i) if report.index >= i) {
            done = true;
        }
        progress(&format!("segment {}/{}: index {}", n + 1, segments.len(), report.index));
    }
    if let Some(missing) = gap.filter(|_| !done) {
        return Err(passed(format!(
            "no segment holds entry {missing} (after index {}): a segment is missing before the target",
            report.index
        )));
    }
    let last = last_point(&report);
    match plan.target {
        Target::Index(i) if report.index < i => {
            return Err(RestoreError::NotReached(format!(
                "recovery target not reached: the archive ends at {last}, before the target index {i}; restore \
                 to that point with --to-index {}",
                report.index
            )))
        }
        // No entry after the target time was seen: the archive cannot show that nothing was
        // written between its end and the target.
        Target::Time(t) if !done => {
            return Err(RestoreError::NotReached(format!(
                "recovery target not reached: the archive ends at {last}, before the target time {}; restore to \
                 that point with --to-index {}",
                time(t),
                report.index
            )))
        }
        Target::Latest if head.is_some_and(|h| report.index < h) => {
            return Err(passed(format!(
                "the archive's head says index {} is archived, but its segments end at {last}: the newest \
                 segments are missing; restore to that point explicitly with --to-index {} if it will do",
                head.unwrap_or_default(),
                report.index
            )))
        }
        _ => {}
    }
    let point = store.reader.applied();
    // Revisions the old cluster handed out after the restored point: those in archived entries
    // past the target, and — for writes committed but never archived — a wide margin.
    let floor = point.revision.saturating_add(ops_after).saturating_add(UNARCHIVED_REVISION_MARGIN);
    let resync = ResyncRange { restored: point.revision, floor };
    let voters: std::collections::BTreeSet<NodeId> = plan.members.keys().copied().collect();
    let membership = Membership::new(vec![voters], plan.members.clone());
    // The new cluster's log starts right after the restored state (term 0: before any election).
    let at = LogId::new(CommittedLeaderId::new(0, 0), 0);
    store.machine.seal_restored(at, membership, resync).await?;
    store.log.seal_restored(at).await?;
    report.items = point.items;
    report.revision = point.revision;
    report.revision_floor = resync.floor;
    report.digest = point.digest.to_hex();
    Ok(report)
}

/// Checks that a segment the restore is about to apply from `next` on continues from what it
/// holds at `next - 1` (`before`): by the segment's own link when it starts at `next`, by its
/// copy of entry `next - 1` when it overlaps what was applied, and by the state digest when it
/// links to a snapshot.
fn link_holds(
    name: &str,
    segment: &Segment,
    next: u64,
    before: &Link,
    store: &keepsake_raft::Store,
) -> Result<(), RestoreError> {
    let h = &segment.header;
    if h.first_index == next {
        check_link(name, h, before).map_err(RestoreError::Archive)?;
        if let Link::Snapshot { index, digest, .. } = h.prev {
            let applied = store.reader.applied();
            if applied.index == index && applied.digest.0 != digest {
                return Err(RestoreError::Archive(format!(
                    "{name}: continues from a snapshot at index {index} whose state digest differs from the \
                     replayed state's there (a splice)"
                )));
            }
        }
    } else if let Some(inner) = next.checked_sub(1).and_then(|i| segment.entries.iter().find(|e| e.index == i)) {
        if let (Link::Entry { hash, .. }, Link::Entry { hash: held, index, .. }) = (Link::after(inner), before) {
            if hash != *held {
                return Err(RestoreError::Archive(format!(
                    "{name}: its entry {index} differs from the one the restore applied: the archive holds two \
                     histories (a splice)"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(first: u64, last: u64) -> Listed {
        Listed { name: format!("{first}-{last}"), first, last, bytes: 0 }
    }

    #[test]
    fn the_chain_takes_the_furthest_reaching_segments_and_stops_at_a_gap() {
        let listed = [seg(0, 9), seg(5, 19), seg(10, 14), seg(20, 29), seg(40, 49)];
        let (chain_from_0, gap) = chain(&listed, 0);
        let names: Vec<&str> = chain_from_0.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["0-9", "5-19", "20-29"]);
        assert_eq!(gap, Some(30), "entries 30-39 are missing: targets before 30 are still reachable");
        let (from_snapshot, gap) = chain(&listed, 40);
        assert_eq!(from_snapshot.len(), 1);
        assert_eq!(gap, None, "a snapshot at 39 bridges the gap");
    }
}
