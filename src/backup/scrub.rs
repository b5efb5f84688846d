//! Scrub: re-reads the archive's chunks and checks each against its content hash, on the
//! leader, within a byte budget per second (`archive.scrub_bytes_per_second`) or in one pass on
//! demand (`keepsake backup scrub`). A chunk is uploaded once and then shared by every later
//! snapshot of its term, so one flipped bit there would spoil every one of them.
//!
//! Invariant: a damaged chunk is replaced only by bytes that hash to its name — rebuilt from
//! this node's own state where that state still holds the same records — so a repair can never
//! make anything worse; one that cannot be rebuilt is reported (and retention does not take a
//! snapshot naming it as its base).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use keepsake_archive::envelope::Kind;
use keepsake_archive::sealing::Sealer;
use keepsake_archive::snapshot::{chunk_name, Chunk, ChunkId, Chunker};
use keepsake_archive::store::{put, Archive};
use object_store::ObjectStoreExt;

/// What a scrub pass (or part of one) found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub chunks: u64,
    pub bytes: u64,
    /// Chunks found damaged or missing and rewritten whole from this node's state.
    pub repaired: Vec<ChunkId>,
    /// Chunks found damaged that this node's state no longer holds.
    pub damaged: Vec<ChunkId>,
}

/// The chunks' object names, as an operator reads them.
pub fn names<'a>(archive: &Archive, ids: impl IntoIterator<Item = &'a ChunkId>) -> Vec<String> {
    ids.into_iter().map(|id| archive.path(&chunk_name(id)).to_string()).collect()
}

/// Objects one budgeted part reads at most, however small they are (requests cost too).
const MAX_OBJECTS_PER_PART: u64 = 256;

/// Checks `chunks` in order, from the first after `after`, until `budget` bytes are read (or
/// all, with None). Chunks in `known_damaged` are not checked again. Returns what it found and
/// the chunk the next part resumes after (None: the pass is complete).
pub async fn check(
    archive: &Archive,
    chunks: &BTreeSet<ChunkId>,
    after: Option<ChunkId>,
    budget: Option<u64>,
    known_damaged: &BTreeSet<ChunkId>,
    state: &Path,
) -> Result<(Report, Option<ChunkId>), String> {
    let mut report = Report::default();
    let mut bad: Vec<ChunkId> = Vec::new();
    let (mut last, mut complete) = (after, true);
    let start = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    for id in chunks.range((start, std::ops::Bound::Unbounded)) {
        if budget.is_some_and(|b| report.bytes >= b || report.chunks >= MAX_OBJECTS_PER_PART) {
            complete = false;
            break;
        }
        last = Some(*id);
        if known_damaged.contains(id) {
            continue;
        }
        let path = archive.path(&chunk_name(id));
        let bytes = match archive.store.get(&path).await {
            Ok(got) => got.bytes().await.map_err(|e| format!("reading {path}: {e}"))?,
            // Retention deleted it since the listing: nothing to check.
            Err(object_store::Error::NotFound { .. }) => continue,
            // Unreadable now (a network error, a denied read): not known damaged; the next
            // pass reads it again, and this one moves on rather than stick here.
            Err(e) => {
                tracing::warn!(chunk = %path, "scrub: cannot read the chunk: {e}");
                continue;
            }
        };
        report.chunks += 1;
        report.bytes += bytes.len() as u64;
        let fine = archive
            .keys
            .open(Kind::Chunk, path.as_ref(), &bytes)
            .map_err(|e| e.to_string())
            .and_then(|o| Chunk::decode(path.as_ref(), &o.bytes, &id.hash, &o.namer).map_err(|e| e.to_string()));
        if let Err(e) = fine {
            tracing::error!(chunk = %path, "scrub: the chunk does not match its hash or does not open: {e}");
            bad.push(*id);
        }
    }
    if !bad.is_empty() {
        repair(archive, &bad, state, &mut report).await?;
    }
    Ok((report, if complete { None } else { last }))
}

/// Rewrites each damaged chunk from the node's current Raft snapshot file, where a chunk of it
/// has the same name under one of the archive's keys (the one that named it, then seals it
/// again); the rest are reported as damaged.
async fn repair(archive: &Archive, bad: &[ChunkId], state: &Path, report: &mut Report) -> Result<(), String> {
    let mut rebuilt: HashMap<[u8; 32], (Chunk, Sealer)> = HashMap::new();
    for sealer in archive.keys.sealers() {
        let wanted: HashSet<[u8; 32]> = bad.iter().map(|id| id.hash).filter(|h| !rebuilt.contains_key(h)).collect();
        if wanted.is_empty() {
            break;
        }
        let found = rebuild(state, wanted, &sealer).await?;
        rebuilt.extend(found.into_iter().map(|(hash, chunk)| (hash, (chunk, sealer.clone()))));
    }
    for id in bad {
        match rebuilt.get(&id.hash) {
            Some((chunk, sealer)) => {
                // Content-addressed: the only records with this name are these.
                let path = archive.path(&chunk_name(id));
                put(archive.store.as_ref(), &path, sealer.seal(Kind::Chunk, &chunk.encode()).into())
                    .await
                    .map_err(|e| format!("rewriting {path}: {e}"))?;
                tracing::warn!(chunk = %path, "scrub: rewrote a damaged chunk from this node's state");
                report.repaired.push(*id);
            }
            None => report.damaged.push(*id),
        }
    }
    Ok(())
}

/// The chunks of the node's current Raft snapshot file that `sealer`'s namer names as one of
/// `wanted`.
async fn rebuild(state: &Path, wanted: HashSet<[u8; 32]>, sealer: &Sealer) -> Result<HashMap<[u8; 32], Chunk>, String> {
    let path = keepsake_raft::current_snapshot_path(state);
    let namer = sealer.namer();
    tokio::task::spawn_blocking(move || {
        let mut found = HashMap::new();
        let mut chunker = Chunker::new(namer);
        let mut keep = |chunk: Chunk| {
            if wanted.contains(&chunk.hash) {
                found.insert(chunk.hash, chunk);
            }
        };
        keepsake_raft::read_snapshot_records(&path, |tag, key, value| {
            chunker.push(tag, key, value).into_iter().for_each(&mut keep);
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        if let Some(chunk) = chunker.finish() {
            keep(chunk);
        }
        Ok::<_, String>(found)
    })
    .await
    .map_err(|e| format!("rebuilding chunks: {e}"))?
}
