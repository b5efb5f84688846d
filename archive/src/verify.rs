//! `keepsake backup verify` and `backup list`: checks an archive from the object store alone —
//! every segment's checksums and structure, that its name matches its contents, that every
//! segment, manifest and the head belong to the root's history, that each segment continues
//! from the entry before it (its link), that the segments cover every index from the first to
//! the head with no gap (or a snapshot bridges it), that overlapping segments agree entry for
//! entry, and every snapshot manifest and the hash of every chunk it names; and that every
//! object is sealed with one of the archive's keys (in an encrypted archive) or none is.
//!
//! It reads, never writes. (Digests are proved by replaying: that is restore's job.)

use std::collections::{BTreeMap, HashSet};

use futures::TryStreamExt;
use object_store::{ObjectMeta, ObjectStoreExt};

use crate::chain::{check_link, Expect};
use crate::envelope::Kind;
use crate::segment::{entry_hash, parse_object_name, Link, Segment};
use crate::snapshot::{chunk_name, decode_manifest, parse_manifest_name, Chunk, ChunkId};
use crate::store::Archive;

/// One segment as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub first: u64,
    pub last: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub segments: usize,
    pub bytes: u64,
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    /// When the newest archived write was proposed (unix µs; 0: none).
    pub last_write_us: i64,
    /// The history the root belongs to (hex; empty: not known, an archive from before ids).
    pub history: String,
    /// Snapshot manifests that check out, and distinct chunks read.
    pub snapshots: usize,
    pub chunks: usize,
    /// Each fault, naming the object it was found in.
    pub problems: Vec<String>,
}

/// The archive's segments, sorted by first index, from the listing alone.
pub async fn list(archive: &Archive) -> Result<Vec<Listed>, object_store::Error> {
    let prefix = archive.path("segments");
    let objects: Vec<ObjectMeta> = archive.store.list(Some(&prefix)).try_collect().await?;
    let mut out: Vec<Listed> = objects
        .into_iter()
        .filter_map(|o| {
            let name = o.location.to_string();
            let (first, last) = parse_object_name(&name)?;
            Some(Listed { name, first, last, bytes: o.size })
        })
        .collect();
    out.sort_by_key(|s| (s.first, s.last));
    Ok(out)
}

/// The archive's snapshot manifests, sorted by index: (index, object, bytes).
pub async fn list_snapshots(archive: &Archive) -> Result<Vec<(u64, String, u64)>, object_store::Error> {
    let objects: Vec<ObjectMeta> = archive.store.list(Some(&archive.path("snapshots"))).try_collect().await?;
    let mut out: Vec<(u64, String, u64)> = objects
        .into_iter()
        .filter_map(|o| Some((parse_manifest_name(o.location.as_ref())?, o.location.to_string(), o.size)))
        .collect();
    out.sort();
    Ok(out)
}

pub async fn verify(archive: &Archive, cluster_id: &str) -> Result<Report, object_store::Error> {
    let mut report = Report::default();
    let loaded = Expect::load(archive).await;
    // Whether there was an info object to read (one that appears later is swept).
    let info_read = loaded.as_ref().map_or(true, Expect::from_info);
    let mut expect = loaded.unwrap_or_else(|problem| {
        report.problems.push(problem);
        Expect::default()
    });
    // Read before the listing: `head` never leads it (crate::head).
    let head = crate::head::read(archive).await.map_err(|e| e.to_string());
    let head_read = !matches!(head, Ok(None));
    if let Ok(Some(h)) = &head {
        if let Err(problem) = expect.head(h) {
            report.problems.push(format!("{problem} (a forged or foreign head)"));
        }
    }
    let head = head.map(|h| h.map(|h| h.archived_index));
    let listed = list(archive).await?;
    report.segments = listed.len();
    // The hash of every archived entry, to compare overlaps and links.
    let mut seen: BTreeMap<u64, ([u8; 32], String)> = BTreeMap::new();
    // Each segment's link: (object, first index, what it continues from).
    let mut links: Vec<(String, crate::segment::SegmentHeader)> = Vec::new();
    for s in &listed {
        report.bytes += s.bytes;
        let bytes = match archive.store.get(&object_store::path::Path::from(s.name.as_str())).await {
            Ok(got) => got.bytes().await?,
            Err(e) => {
                report.problems.push(format!("{}: cannot read: {e}", s.name));
                continue;
            }
        };
        let segment = match archive.keys.open(Kind::Segment, &s.name, &bytes) {
            Ok(opened) => Segment::decode(&s.name, &opened.bytes).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let segment = match segment {
            Ok(seg) => seg,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
        let h = &segment.header;
        if (h.first_index, h.last_index) != (s.first, s.last) {
            report
                .problems
                .push(format!("{}: holds entries {}-{}, not what its name says", s.name, h.first_index, h.last_index));
        }
        if h.cluster_id != cluster_id {
            report.problems.push(format!("{}: belongs to cluster {:?}, not {cluster_id:?}", s.name, h.cluster_id));
        }
        if let Err(problem) = expect.segment(&s.name, h) {
            report.problems.push(problem);
        }
        report.last_write_us = report.last_write_us.max(h.last_time_us);
        links.push((s.name.clone(), h.clone()));
        for e in &segment.entries {
            let hash = entry_hash(e);
            if let Some((other, other_name)) = seen.insert(e.index, (hash, s.name.clone())) {
                if other != hash {
                    report.problems.push(format!(
                        "{} and {other_name} disagree about entry {}: the archive is inconsistent",
                        s.name, e.index
                    ));
                }
            }
        }
    }
    report.first_index = seen.keys().next().copied();
    report.last_index = seen.keys().next_back().copied();
    // Each link against the archive's own copy of the entry before the segment, where it has one.
    for (name, header) in &links {
        if let Link::Entry { index, term, .. } = header.prev {
            if let Some((hash, _)) = seen.get(&index) {
                if let Err(problem) = check_link(name, header, &Link::Entry { index, term, hash: *hash }) {
                    report.problems.push(problem);
                }
            }
        }
    }
    let (snapshots, digests, mut read) = verify_snapshots(archive, cluster_id, &mut expect, &mut report).await?;
    read.extend(listed.iter().map(|s| s.name.clone()));
    // The head and the info, where they were there to read (one that appears since is swept).
    for (object, was_read) in [(crate::head::OBJECT, head_read), (crate::info::OBJECT, info_read)] {
        if was_read {
            read.insert(archive.path(object).to_string());
        }
    }
    sweep(archive, &read, &mut report).await?;
    // A segment that continues from a snapshot names its digest: the manifest there must agree.
    for (name, header) in &links {
        if let Link::Snapshot { index, digest, .. } = header.prev {
            if digests.get(&index).is_some_and(|held| *held != digest) {
                report.problems.push(format!(
                    "{name}: continues from a snapshot at index {index} whose state digest is not the one the \
                     archive's manifest there records (a splice)"
                ));
            }
        }
    }
    report.history = expect.history().map(|h| h.to_hex()).unwrap_or_default();
    report.snapshots = snapshots.len();
    let last = report.last_index.unwrap_or(0);
    // A snapshot at s bridges missing entries below s + 1 when the log goes on from s + 1.
    let bridged =
        |missing_to: u64| snapshots.iter().any(|s| *s >= missing_to && (seen.contains_key(&(s + 1)) || *s >= last));
    if let Some(first) = report.first_index.filter(|f| *f != 0) {
        if !bridged(first - 1) {
            report.problems.push(format!(
                "the first archived entry is {first}, not 0, and no snapshot reaches it: entries 0-{} are missing",
                first - 1
            ));
        }
    }
    let mut expected = report.first_index.unwrap_or(0);
    for index in seen.keys() {
        if *index != expected && !bridged(index - 1) {
            report.problems.push(format!("gap: no segment holds entries {expected}-{}", index - 1));
        }
        expected = index + 1;
    }
    let reaches = report.last_index.into_iter().chain(snapshots.iter().copied()).max();
    match head {
        Ok(Some(h)) if reaches.is_none_or(|r| r < h) => report.problems.push(format!(
            "head says index {h} is archived, but the segments and snapshots end at {}: the newest segments \
             are missing",
            reaches.map_or("nothing".into(), |r| format!("index {r}"))
        )),
        Ok(_) => {}
        Err(e) => report.problems.push(e),
    }
    Ok(report)
}

/// Checks every snapshot manifest and every chunk they name (each chunk once); returns the
/// indices of the snapshots that check out, every decoded manifest's state digest, and the
/// objects read.
async fn verify_snapshots(
    archive: &Archive,
    cluster_id: &str,
    expect: &mut Expect,
    report: &mut Report,
) -> Result<(Vec<u64>, BTreeMap<u64, [u8; 32]>, HashSet<String>), object_store::Error> {
    let objects: Vec<ObjectMeta> = archive.store.list(Some(&archive.path("snapshots"))).try_collect().await?;
    let mut checked: BTreeMap<ChunkId, bool> = BTreeMap::new();
    let mut read = HashSet::new();
    let (mut good, mut digests) = (Vec::new(), BTreeMap::new());
    for o in &objects {
        let Some(index) = parse_manifest_name(o.location.as_ref()) else { continue };
        let name = o.location.to_string();
        read.insert(name.clone());
        report.bytes += o.size;
        let bytes = archive.store.get(&o.location).await?.bytes().await?;
        let m = match archive.keys.open(Kind::Manifest, &name, &bytes) {
            Ok(opened) => decode_manifest(&name, &opened.bytes).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                report.problems.push(e);
                continue;
            }
        };
        if let Ok(digest) = <[u8; 32]>::try_from(m.digest.as_slice()) {
            digests.insert(index, digest);
        }
        let mut ok = true;
        if m.index != index || m.cluster_id != cluster_id {
            report.problems.push(format!(
                "{name}: holds the state of cluster {:?} at index {}, not what its name and place say",
                m.cluster_id, m.index
            ));
            ok = false;
        }
        if let Err(problem) = expect.manifest(&name, &m) {
            report.problems.push(problem);
            ok = false;
        }
        for c in &m.chunks {
            let Some(id) = ChunkId::of(c) else {
                report.problems.push(format!("{name}: names a chunk whose hash is not 32 bytes"));
                ok = false;
                continue;
            };
            if let Some(fine) = checked.get(&id) {
                ok &= *fine;
                continue;
            }
            let (hash, object) = (id.hash, archive.path(&chunk_name(&id)));
            let fine = match archive.store.get(&object).await {
                Ok(got) => {
                    let bytes = got.bytes().await?;
                    report.bytes += bytes.len() as u64;
                    let chunk = archive.keys.open(Kind::Chunk, object.as_ref(), &bytes).map_err(|e| e.to_string());
                    match chunk.and_then(|o| {
                        Chunk::decode(object.as_ref(), &o.bytes, &hash, &o.namer).map_err(|e| e.to_string())
                    }) {
                        Ok(_) => true,
                        Err(e) => {
                            report.problems.push(format!("{e} (named by {name})"));
                            false
                        }
                    }
                }
                Err(object_store::Error::NotFound { .. }) => {
                    report.problems.push(format!("{object}, named by {name}, is missing"));
                    false
                }
                Err(e) => return Err(e),
            };
            checked.insert(id, fine);
            ok &= fine;
        }
        if ok {
            good.push(index);
        }
    }
    report.chunks = checked.len();
    read.extend(checked.keys().map(|id| archive.path(&chunk_name(id)).to_string()));
    Ok((good, digests, read))
}

/// Reads every object of the root the checks above did not (`read`: leases, probes, chunks no
/// manifest names, objects listed since, and whatever else is there) and names each one the
/// archive's keys refuse: in an encrypted archive, every object must be sealed with one of its
/// keys and authenticate; in a plaintext one, none may be sealed.
async fn sweep(archive: &Archive, read: &HashSet<String>, report: &mut Report) -> Result<(), object_store::Error> {
    let mut objects = archive.store.list(Some(&archive.root));
    while let Some(o) = objects.try_next().await? {
        if read.contains(o.location.as_ref()) {
            continue;
        }
        let bytes = match archive.store.get(&o.location).await {
            Ok(got) => got.bytes().await?,
            // A lease released, a probe finished, a chunk retention deleted, since the listing.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        if let Err(e) = archive.keys.authenticate(o.location.as_ref(), &bytes) {
            report.problems.push(e.to_string());
        }
    }
    Ok(())
}
