//! Archive snapshots on the leader: uploads the node's newest Raft snapshot to the archive as
//! chunks and a manifest, on schedule (`archive.snapshot_every_entries` /
//! `snapshot_every_seconds`) and on demand (`keepsake backup snapshot`), then applies retention.
//!
//! Invariant: a manifest is written last — after every chunk it names, and after the segments
//! up to its index, are in the archive — so every listed manifest is a complete starting point
//! for a restore. Uploads and retention run one at a time (one lock), so retention never deletes
//! a chunk that a snapshot being written is about to name; and since a node that no longer
//! leads may not know it yet, the chunks are listed again before the manifest goes up.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use keepsake_archive::envelope::Kind;
use keepsake_archive::proto::{ChunkRef, ResyncRange, SnapshotManifest};
use keepsake_archive::snapshot::{
    chunk_name, chunks_missing, decode_manifest, encode_manifest, manifest_name, parse_chunk_name, parse_manifest_name,
    ChunkId, Chunker,
};
use keepsake_archive::store::{put, put_new, Archive};
use keepsake_raft::clock::now_us;
use keepsake_raft::{NodeId, Raft};
use object_store::ObjectStoreExt;
use tokio::sync::{mpsc, watch, Mutex};

use super::status::ArchiveStatus;
use super::{retention, scrub};
use crate::config::ArchiveConfig;

/// How long an on-demand snapshot waits for a new leader's archiver to confirm the archive.
const OWNED_WAIT: Duration = Duration::from_secs(10);
/// How long the leader waits for the segments up to a snapshot's index before giving up on it.
const SEGMENTS_WAIT: Duration = Duration::from_secs(120);

pub struct Snapshotter {
    pub archive: Archive,
    pub cluster_id: String,
    pub node_id: NodeId,
    pub raft: Raft,
    pub data_dir: PathBuf,
    pub config: ArchiveConfig,
    pub status: watch::Receiver<ArchiveStatus>,
    known: Mutex<Known>,
    /// `Known::newest`, readable without waiting for an upload (for `backup status`).
    newest: std::sync::Mutex<Option<(u64, i64)>>,
    /// What scrubbing found, readable at any time (for `backup status` and `/metrics`).
    scrubbed: std::sync::Mutex<Scrubbed>,
}

/// What scrubbing has found on this node since it started.
#[derive(Debug, Default, Clone)]
pub struct Scrubbed {
    pub chunks: u64,
    pub bytes: u64,
    pub repaired: u64,
    /// Damaged chunks this node's state could not rebuild.
    pub damaged: BTreeSet<ChunkId>,
}

/// What this leader knows of the archive's snapshots (re-listed after every leader change).
#[derive(Default)]
struct Known {
    listed: bool,
    /// Every chunk object listed or written, and one of them for each content hash.
    chunks: HashSet<ChunkId>,
    by_hash: HashMap<[u8; 32], ChunkId>,
    /// (index, created_at_us) of the newest manifest.
    newest: Option<(u64, i64)>,
    /// When this leader listed the archive: with no snapshot there yet, the schedule in time
    /// counts from here (not from 1970, which would snapshot at once).
    listed_at_us: i64,
    /// Chunks of snapshots being written, with how many uploads hold each: retention leaves
    /// them alone.
    pinned: HashMap<ChunkId, usize>,
    last_retention_us: i64,
    /// Where the running scrub pass resumes (after this chunk; None: from the start).
    scrub_after: Option<ChunkId>,
    /// No scheduled scrubbing before this (unix µs): the rest after a whole pass.
    scrub_rest_until_us: i64,
}

/// Chunk copies or uploads one snapshot keeps in flight.
const WRITES_IN_FLIGHT: usize = 4;

/// The rest between two scheduled scrub passes.
const SCRUB_REST_US: i64 = 3_600_000_000;

impl Known {
    fn learn(&mut self, id: ChunkId) {
        self.chunks.insert(id);
        self.by_hash.insert(id.hash, id);
    }
}

/// What an uploaded snapshot was.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub index: u64,
    /// The term of the entry at `index`, and the state digest there: a segment that continues
    /// from this snapshot links to them.
    pub term: u64,
    pub digest: [u8; 32],
    pub chunks: usize,
    pub new_chunks: usize,
    pub new_bytes: u64,
}

impl Snapshotter {
    pub fn new(
        archive: Archive,
        cluster_id: String,
        node_id: NodeId,
        raft: Raft,
        data_dir: PathBuf,
        config: ArchiveConfig,
        status: watch::Receiver<ArchiveStatus>,
    ) -> Self {
        Snapshotter {
            archive,
            cluster_id,
            node_id,
            raft,
            data_dir,
            config,
            status,
            known: Mutex::default(),
            newest: std::sync::Mutex::default(),
            scrubbed: std::sync::Mutex::default(),
        }
    }

    /// (index, unix µs) of the newest snapshot in the archive, as this leader last saw it.
    pub fn newest(&self) -> Option<(u64, i64)> {
        *self.newest.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_newest(&self, known: &mut Known, newest: Option<(u64, i64)>) {
        known.newest = newest;
        *self.newest.lock().unwrap_or_else(|e| e.into_inner()) = newest;
    }

    pub fn scrubbed(&self) -> Scrubbed {
        self.scrubbed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Checks chunks from where the last part stopped, `budget` bytes of them (None: a whole
    /// pass from the start), and records what it found. The listing is taken under the lock;
    /// the reads are not, so snapshots and bridges do not wait for a scrub.
    async fn scrub(&self, budget: Option<u64>) -> Result<scrub::Report, String> {
        let (chunks, after) = {
            let mut known = self.known.lock().await;
            if budget.is_some() && now_us() < known.scrub_rest_until_us {
                return Ok(scrub::Report::default());
            }
            self.refresh(&mut known).await?;
            let chunks: BTreeSet<ChunkId> = known.chunks.iter().copied().collect();
            (chunks, if budget.is_some() { known.scrub_after } else { None })
        };
        // A budgeted part skips chunks already known damaged; a whole pass checks them again.
        let known_damaged = if budget.is_some() { self.scrubbed().damaged } else { BTreeSet::new() };
        let (report, resume) =
            scrub::check(&self.archive, &chunks, after, budget, &known_damaged, &self.data_dir).await?;
        if budget.is_some() {
            let mut known = self.known.lock().await;
            known.scrub_after = resume;
            if resume.is_none() {
                // A pass is done: the next starts after a rest, not at once (an archive of a few
                // chunks would otherwise be read over and over).
                known.scrub_rest_until_us = now_us() + SCRUB_REST_US;
            }
        }
        let mut s = self.scrubbed.lock().unwrap_or_else(|e| e.into_inner());
        s.chunks += report.chunks;
        s.bytes += report.bytes;
        s.repaired += report.repaired.len() as u64;
        if budget.is_none() {
            s.damaged.clear();
        }
        for id in &report.repaired {
            s.damaged.remove(id);
        }
        s.damaged.extend(report.damaged.iter().copied());
        Ok(report)
    }

    /// On demand: one whole scrub pass.
    pub async fn scrub_now(&self) -> Result<scrub::Report, String> {
        if !self.is_leader() || !self.status.borrow().owned {
            return Err("this node is not the leader archiving now".into());
        }
        self.scrub(None).await
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// Runs until aborted: on the leader, takes scheduled snapshots and applies retention.
    pub async fn run(self: Arc<Self>) {
        let mut was_leader = false;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let leader = self.is_leader();
            if leader && !was_leader {
                let mut known = self.known.lock().await;
                known.listed = false;
                known.listed_at_us = 0;
            }
            was_leader = leader;
            if !leader {
                continue;
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(archive = %self.archive.url, "archive snapshot: {e}");
            }
        }
    }

    async fn tick(&self) -> Result<(), String> {
        // Nothing is uploaded into, or deleted from, an archive the archiver has not found to
        // hold this cluster's history (it refuses another cluster's, and says why).
        if !self.status.borrow().owned {
            return Ok(());
        }
        let (newest, created) = {
            let mut known = self.known.lock().await;
            self.refresh(&mut known).await?;
            known.newest.unwrap_or((0, known.listed_at_us))
        };
        let applied = self.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let raft_snapshot = self.raft.metrics().borrow().snapshot.map_or(0, |s| s.index);
        let every = self.config.snapshot_every_entries;
        let by_entries = every > 0 && raft_snapshot >= newest + every;
        let by_time = self.config.snapshot_every_seconds > 0
            && applied > newest
            && now_us() - created >= self.config.snapshot_every_seconds as i64 * 1_000_000;
        if by_time && !by_entries {
            keepsake_raft::consensus::snapshot_covering_applied(&self.raft).await.map_err(|e| e.to_string())?;
        }
        if by_entries || by_time {
            let up = self.upload(true).await?;
            tracing::info!(index = up.index, chunks = up.chunks, new = up.new_chunks, "archive snapshot uploaded");
        }
        let last_retention = self.known.lock().await.last_retention_us;
        if by_entries || by_time || now_us() - last_retention >= 3_600_000_000 {
            self.apply_retention().await?;
        }
        // One tick's share of the scrub (a tick is about a second).
        if self.config.scrub_bytes_per_second > 0 {
            self.scrub(Some(self.config.scrub_bytes_per_second)).await?;
        }
        Ok(())
    }

    /// On demand: a Raft snapshot covering everything applied, uploaded as an archive snapshot.
    pub async fn snapshot_now(&self) -> Result<Uploaded, String> {
        if !self.is_leader() {
            return Err("this node is not the leader".into());
        }
        // A new leader's archiver lists the archive first; another cluster's archive never
        // becomes this one's.
        let mut status = self.status.clone();
        let owned = matches!(tokio::time::timeout(OWNED_WAIT, status.wait_for(|s| s.owned)).await, Ok(Ok(_)));
        if !owned {
            let why = self.status.borrow().last_error.clone();
            return Err(format!("the archive is not confirmed as this cluster's, so nothing is uploaded: {why}"));
        }
        keepsake_raft::consensus::snapshot_covering_applied(&self.raft).await.map_err(|e| e.to_string())?;
        let up = self.upload(true).await?;
        self.apply_retention().await?;
        Ok(up)
    }

    async fn apply_retention(&self) -> Result<(), String> {
        let mut known = self.known.lock().await;
        known.last_retention_us = now_us();
        let term = self.status.borrow().term;
        if term == 0 {
            return Err("retention: this node does not own the archive".into());
        }
        let damaged = self.scrubbed().damaged;
        retention::apply(&self.archive, &self.config, term, &known.pinned.keys().copied().collect(), &damaged)
            .await
            .map_err(|e| format!("retention: {e}"))?;
        known.listed = false; // what retention deleted is no longer there
        Ok(())
    }

    /// For the archiver, where the log no longer holds the next index to archive: a snapshot
    /// covering everything applied, uploaded without waiting for segments (it is their base).
    pub async fn upload_base(&self) -> Result<Uploaded, String> {
        keepsake_raft::consensus::snapshot_covering_applied(&self.raft).await.map_err(|e| e.to_string())?;
        self.upload(false).await
    }

    /// Learns the archive's chunks and newest manifest from the listing, once per leadership.
    async fn refresh(&self, known: &mut Known) -> Result<(), String> {
        if known.listed {
            return Ok(());
        }
        let prefix = self.archive.path("snapshots");
        let objects: Vec<_> =
            self.archive.store.list(Some(&prefix)).try_collect().await.map_err(|e| format!("listing: {e}"))?;
        known.chunks.clear();
        known.by_hash.clear();
        for id in objects.iter().filter_map(|o| parse_chunk_name(o.location.as_ref())) {
            known.learn(id);
        }
        let newest = objects
            .iter()
            .filter_map(|o| Some((parse_manifest_name(o.location.as_ref())?, o.last_modified.timestamp_micros())))
            .max();
        self.set_newest(known, newest);
        if known.listed_at_us == 0 {
            known.listed_at_us = now_us();
        }
        known.listed = true;
        Ok(())
    }

    /// Uploads the node's current Raft snapshot file: its new chunks, then (once the segments
    /// reach its index, when `after_segments`) the manifest. Its chunks stay pinned against
    /// retention until the manifest that names them is written.
    ///
    /// The pins hold only in this process. A deposed leader that does not know it yet (cut off
    /// from its peers, not from the archive) may still run retention and delete chunks this
    /// leader's listing has; so the chunks are listed again just before the manifest goes up,
    /// and if one is gone the upload starts over from a fresh listing, once.
    async fn upload(&self, after_segments: bool) -> Result<Uploaded, String> {
        let mut relisted = false;
        loop {
            let (manifest, mut up) = {
                let mut known = self.known.lock().await;
                self.refresh(&mut known).await?;
                self.upload_chunks(&mut known).await?
            };
            let name = manifest_name(manifest.index);
            keepsake_raft::crash::point("archive-chunks-uploaded");
            let written: Result<usize, String> = async {
                if after_segments {
                    self.wait_for_segments(manifest.index).await?;
                }
                keepsake_raft::crash::point("archive-manifest-next");
                let gone = self.chunks_gone(&manifest.chunks).await?;
                if gone > 0 {
                    return Ok(gone);
                }
                // Create-only: a manifest at this index from an earlier upload (this leader's, or
                // a deposed one's) stays if it states the same snapshot; one from another history
                // is never replaced.
                let path = self.archive.path(&name);
                let bytes = self.archive.keys.seal(Kind::Manifest, &encode_manifest(&manifest));
                put_new(self.archive.store.as_ref(), &path, bytes.into(), |existing| {
                    let existing =
                        self.archive.keys.open(Kind::Manifest, path.as_ref(), existing).map_err(|e| e.to_string())?;
                    let other = decode_manifest(path.as_ref(), &existing.bytes).map_err(|e| e.to_string())?;
                    // A manifest from before history ids names none.
                    let history = other.history_id.is_empty() || other.history_id == manifest.history_id;
                    let same = history
                        && (other.index, other.term, &other.digest)
                            == (manifest.index, manifest.term, &manifest.digest);
                    if same {
                        Ok(())
                    } else {
                        Err(format!("it states index {} of another history or state", other.index))
                    }
                })
                .await
                .map_err(|e| e.to_string())?;
                Ok(0)
            }
            .await;
            let mut known = self.known.lock().await;
            for id in manifest.chunks.iter().filter_map(ChunkId::of) {
                if let Some(n) = known.pinned.get_mut(&id) {
                    *n -= 1;
                    if *n == 0 {
                        known.pinned.remove(&id);
                    }
                }
            }
            match written? {
                0 => {
                    self.set_newest(&mut known, Some((manifest.index, manifest.created_at_us)));
                    up.index = manifest.index;
                    return Ok(up);
                }
                gone => {
                    known.listed = false;
                    let why = format!(
                        "{gone} chunks snapshot {name} would name were deleted from the archive while it was \
                         written (retention on a node that no longer leads?)"
                    );
                    if relisted {
                        return Err(format!("{why}; not writing its manifest"));
                    }
                    tracing::warn!(archive = %self.archive.url, "{why}; uploading them again");
                    relisted = true;
                }
            }
        }
    }

    /// How many of `chunks` are not in the archive's listing now.
    async fn chunks_gone(&self, chunks: &[ChunkRef]) -> Result<usize, String> {
        let prefix = self.archive.path("snapshots/chunks");
        let listed: HashSet<ChunkId> = self
            .archive
            .store
            .list(Some(&prefix))
            .map_ok(|o| parse_chunk_name(o.location.as_ref()))
            .try_filter_map(|hash| futures::future::ready(Ok(hash)))
            .try_collect()
            .await
            .map_err(|e| format!("listing the chunks: {e}"))?;
        Ok(chunks_missing(chunks, &listed))
    }

    async fn upload_chunks(&self, known: &mut Known) -> Result<(SnapshotManifest, Uploaded), String> {
        let path = keepsake_raft::current_snapshot_path(&self.data_dir);
        let (tx, mut rx) = mpsc::channel(2);
        // One key names and seals every chunk of this snapshot, even if the ring rotates meanwhile.
        let sealer = self.archive.keys.sealer();
        let namer = sealer.namer();
        let reading = tokio::task::spawn_blocking(move || {
            let mut chunker = Chunker::new(namer);
            let header = keepsake_raft::read_snapshot_records(&path, |tag, key, value| {
                for chunk in chunker.push(tag, key, value) {
                    tx.blocking_send(chunk)
                        .map_err(|_| keepsake_raft::StoreError::Corrupt("the uploader stopped".into()))?;
                }
                Ok(())
            })?;
            if let Some(chunk) = chunker.finish() {
                let _ = tx.blocking_send(chunk);
            }
            Ok::<_, keepsake_raft::StoreError>(header)
        });
        // Chunks go under this leader's term; one an earlier term wrote is copied inside the
        // store rather than named where it is (retention: a deposed leader may delete it).
        let term = self.status.borrow().term;
        if term == 0 {
            return Err("this node does not own the archive".into());
        }
        let mut up = Uploaded { index: 0, term: 0, digest: [0; 32], chunks: 0, new_chunks: 0, new_bytes: 0 };
        let mut refs = Vec::new();
        // Up to WRITES_IN_FLIGHT chunk writes (copies or uploads) at once.
        let mut writes = futures::stream::FuturesUnordered::new();
        let mut scheduled: HashSet<ChunkId> = HashSet::new();
        let mut done = |result: Result<(ChunkId, Option<u64>), String>, known: &mut Known| {
            let (id, uploaded) = result?;
            known.learn(id);
            if let Some(bytes) = uploaded {
                up.new_bytes += bytes;
                up.new_chunks += 1;
            }
            Ok::<_, String>(())
        };
        while let Some(chunk) = rx.recv().await {
            let id = ChunkId { term, hash: chunk.hash };
            refs.push(ChunkRef {
                hash: chunk.hash.to_vec(),
                bytes: chunk.body.len() as u64,
                records: chunk.records,
                term,
            });
            if known.chunks.contains(&id) || !scheduled.insert(id) {
                continue;
            }
            let from = known.by_hash.get(&chunk.hash).map(|from| self.archive.path(&chunk_name(from)));
            let (store, to) = (self.archive.store.clone(), self.archive.path(&chunk_name(&id)));
            let sealer = sealer.clone();
            writes.push(async move {
                if let Some(from) = from {
                    if store.copy(&from, &to).await.is_ok() {
                        return Ok((id, None));
                    }
                }
                let bytes = bytes::Bytes::from(sealer.seal(Kind::Chunk, &chunk.encode()));
                let size = bytes.len() as u64;
                put(store.as_ref(), &to, bytes).await.map_err(|e| format!("uploading {to}: {e}"))?;
                Ok((id, Some(size)))
            });
            while writes.len() >= WRITES_IN_FLIGHT {
                if let Some(result) = writes.next().await {
                    done(result, known)?;
                }
            }
        }
        while let Some(result) = writes.next().await {
            done(result, known)?;
        }
        let header = reading
            .await
            .map_err(|e| format!("reading the snapshot: {e}"))?
            .map_err(|e| format!("reading the snapshot: {e}"))?;
        let machine = header.machine;
        let applied = machine.applied.ok_or("the node's snapshot is empty")?;
        up.chunks = refs.len();
        // The lock is held from the existence checks to here, so retention (which takes it too)
        // cannot have deleted any of these chunks; pinned, it leaves them until the manifest is in.
        for id in refs.iter().filter_map(ChunkId::of) {
            *known.pinned.entry(id).or_default() += 1;
        }
        let history = self.status.borrow().history.ok_or("this node does not own the archive (no history yet)")?;
        up.term = applied.leader_id.term;
        up.digest = machine.digest.0;
        let manifest = SnapshotManifest {
            history_id: history.0.to_vec(),
            cluster_id: self.cluster_id.clone(),
            index: applied.index,
            term: applied.leader_id.term,
            last_write_us: machine.last_write_us,
            revision: machine.revision,
            items: machine.items,
            digest: machine.digest.0.to_vec(),
            created_at_us: now_us(),
            chunks: refs,
            resync: machine.resync.iter().map(|r| ResyncRange { restored: r.restored, floor: r.floor }).collect(),
        };
        Ok((manifest, up))
    }

    /// Waits until the segments reach `index`, so the snapshot never stands beyond the log.
    async fn wait_for_segments(&self, index: u64) -> Result<(), String> {
        let mut status = self.status.clone();
        let reached =
            async move { status.wait_for(|s| s.archived_index.is_some_and(|a| a >= index)).await.map(|_| ()) };
        match tokio::time::timeout(SEGMENTS_WAIT, reached).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the node is shutting down".into()),
            Err(_) => Err(format!("the archive did not reach index {index} within {SEGMENTS_WAIT:?}")),
        }
    }
}
