//! Retention: deletes from the archive only what no restore inside the window can need, and
//! nothing while a restore or drill holds a lease on it (`keepsake_archive::lease`).
//!
//! Invariant: the base — the newest whole snapshot (every chunk there, none found damaged by a
//! scrub) whose last write is at or before the window's start, or an older whole one so that
//! `archive.keep_whole_snapshots` stay — stays, with every snapshot and segment after it (so
//! the newest snapshot and the segments after it always stay); nothing is deleted while any lease is live; a chunk goes only
//! when no kept manifest names it, no snapshot being written has pinned it, and it is over an
//! hour old (`archive.chunk_grace_seconds`). Manifests go before the segments and chunks they
//! start from.
//!
//! Fencing: a leader of term T deletes no chunk of a later term. A new leader names in its
//! manifests only chunks of its own term, so a deposed leader's retention, however late it
//! runs, never deletes a chunk a newer manifest names. What else it deletes (manifests older
//! than its base, the segments such a base covers) a newer leader, seeing at least the same
//! snapshots, would delete too.

use std::collections::{BTreeSet, HashSet};

use futures::TryStreamExt;
use keepsake_archive::envelope::Kind;
use keepsake_archive::segment::parse_object_name;
use keepsake_archive::snapshot::{decode_manifest, parse_chunk_name, parse_manifest_name, ChunkId};
use keepsake_archive::store::Archive;
use keepsake_raft::clock::now_us;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};

use crate::config::ArchiveConfig;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The index of the base snapshot (None: no snapshot is old enough yet; nothing deleted).
    pub base: Option<u64>,
    pub manifests: usize,
    pub segments: usize,
    pub chunks: usize,
    /// A live lease held retention off.
    pub held: bool,
}

async fn list(archive: &Archive, dir: &str) -> Result<Vec<ObjectMeta>, object_store::Error> {
    archive.store.list(Some(&archive.path(dir))).try_collect().await
}

/// Applies `config.retention` to the archive as the leader of `term`; `pinned` chunks belong to
/// snapshots being written; `damaged` ones failed a scrub and could not be rebuilt, so no
/// snapshot naming one is taken as the base.
pub async fn apply(
    archive: &Archive,
    config: &ArchiveConfig,
    term: u64,
    pinned: &HashSet<ChunkId>,
    damaged: &BTreeSet<ChunkId>,
) -> Result<Report, String> {
    let Some(window) = config.retention()? else { return Ok(Report::default()) };
    if keepsake_archive::lease::held(archive).await? {
        return Ok(Report { held: true, ..Report::default() });
    }
    let cutoff = now_us() - window.as_micros() as i64;
    let objects = list(archive, "snapshots").await.map_err(|e| format!("listing snapshots: {e}"))?;
    // Every manifest, read: (index, last write, chunks, object).
    let mut manifests = Vec::new();
    for o in &objects {
        let Some(index) = parse_manifest_name(o.location.as_ref()) else { continue };
        let name = o.location.to_string();
        let bytes = archive
            .store
            .get(&o.location)
            .await
            .map_err(|e| format!("reading {name}: {e}"))?
            .bytes()
            .await
            .map_err(|e| format!("reading {name}: {e}"))?;
        // A damaged manifest stops retention: it cannot tell what the snapshot needs.
        let bytes = archive.keys.open(Kind::Manifest, &name, &bytes).map_err(|e| e.to_string())?.bytes;
        let m = decode_manifest(&name, &bytes).map_err(|e| e.to_string())?;
        let chunks: Vec<ChunkId> = m.chunks.iter().filter_map(ChunkId::of).collect();
        manifests.push((index, m.last_write_us, chunks, o.location.clone()));
    }
    // Only a complete snapshot (every chunk it names is there) can be the base.
    let present: HashSet<ChunkId> = objects.iter().filter_map(|o| parse_chunk_name(o.location.as_ref())).collect();
    let complete = |chunks: &[ChunkId]| chunks.iter().all(|c| present.contains(c) && !damaged.contains(c));
    let Some(base) = base(&manifests.iter().map(|m| (m.0, m.1, complete(&m.2))).collect::<Vec<_>>(), cutoff, config)
    else {
        return Ok(Report::default());
    };
    let mut report = Report { base: Some(base), ..Report::default() };
    keepsake_raft::crash::point("retention-before-delete");
    let mut kept: HashSet<ChunkId> = pinned.clone();
    for (index, _, chunks, location) in &manifests {
        if *index < base {
            delete(archive, location).await?;
            report.manifests += 1;
        } else {
            kept.extend(chunks.iter().copied());
        }
    }
    for o in list(archive, "segments").await.map_err(|e| format!("listing segments: {e}"))? {
        if parse_object_name(o.location.as_ref()).is_some_and(|(_, last)| last <= base) {
            delete(archive, &o.location).await?;
            report.segments += 1;
        }
    }
    let grace_us = config.chunk_grace_seconds as i64 * 1_000_000;
    for o in &objects {
        let Some(id) = parse_chunk_name(o.location.as_ref()) else { continue };
        if id.term <= term && !kept.contains(&id) && o.last_modified.timestamp_micros() < now_us() - grace_us {
            delete(archive, &o.location).await?;
            report.chunks += 1;
        }
    }
    if report.manifests + report.segments + report.chunks > 0 {
        tracing::info!(?report, "retention deleted what no restore in the window needs");
    }
    Ok(report)
}

/// The base, from each snapshot's (index, last write, whole): the newest whole snapshot whose
/// last write is at or before `cutoff`, or, if older, the `keep_whole_snapshots`-th newest
/// whole one (the oldest whole one, when there are fewer): a snapshot found damaged later
/// still leaves that many whole restore points. None: no whole snapshot is old enough.
fn base(snapshots: &[(u64, i64, bool)], cutoff: i64, config: &ArchiveConfig) -> Option<u64> {
    let window = snapshots.iter().filter(|s| s.1 <= cutoff && s.2).map(|s| s.0).max()?;
    let mut whole: Vec<u64> = snapshots.iter().filter(|s| s.2).map(|s| s.0).collect();
    whole.sort_unstable_by(|a, b| b.cmp(a));
    let kth = whole.get(config.keep_whole_snapshots.max(1) as usize - 1).or(whole.last()).copied();
    Some(kth.map_or(window, |k| k.min(window)))
}

async fn delete(archive: &Archive, location: &Path) -> Result<(), String> {
    match archive.store.delete(location).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(format!("deleting {location}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keep: u64) -> ArchiveConfig {
        ArchiveConfig { keep_whole_snapshots: keep, ..ArchiveConfig::default() }
    }

    #[test]
    fn the_base_leaves_the_newest_whole_snapshots_however_new() {
        // (index, last write, whole): the window's start is at 100.
        let snapshots = [(10, 10, true), (20, 20, true), (30, 30, true), (40, 200, false), (50, 300, true)];
        assert_eq!(base(&snapshots, 100, &config(1)), Some(30), "the newest whole one before the window");
        assert_eq!(base(&snapshots, 100, &config(2)), Some(30), "50 and 30 are the two newest whole ones");
        assert_eq!(base(&snapshots, 100, &config(3)), Some(20));
        assert_eq!(base(&snapshots, 100, &config(9)), Some(10), "fewer whole ones than asked: keep them all");
        let damaged_new = [(10, 10, true), (20, 20, true), (30, 30, true), (40, 200, false), (50, 300, false)];
        assert_eq!(base(&damaged_new, 100, &config(2)), Some(20), "the damaged ones do not count");
        assert_eq!(base(&[(40, 200, true)], 100, &config(2)), None, "nothing is old enough to be the base");
        assert_eq!(base(&[(10, 10, false), (40, 200, true)], 100, &config(2)), None, "no whole one is old enough");
    }
}
