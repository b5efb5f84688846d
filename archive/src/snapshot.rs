//! Archive snapshots: the full state at one log index, as content-addressed chunks and a
//! manifest (`docs/archive-format.md` is the reader's specification).
//!
//! Chunk boundaries are set by the keys — a chunk ends after a record whose key hashes to 0
//! modulo `BOUNDARY_MODULUS`, where the record kind changes, or at `MAX_CHUNK_BYTES` — so an
//! unchanged key range gives the same chunk whichever node built the snapshot and however its
//! RocksDB compacted. Each chunk is uploaded once and referenced by every later snapshot that
//! holds it. The decoders check every length and hash and never panic, whatever the bytes.

use std::collections::HashSet;

use prost::Message;

use crate::proto::{ChunkRef, SnapshotManifest};

pub const CHUNK_MAGIC: &[u8; 8] = b"KSCHK001";
pub const MANIFEST_MAGIC: &[u8; 8] = b"KSSNP001";
/// A chunk ends after a record whose key's hash is 0 modulo this (≈ this many records each).
const BOUNDARY_MODULUS: u64 = 1024;
/// A chunk also ends once its records reach this many bytes.
pub const MAX_CHUNK_BYTES: usize = 16 << 20;
/// Largest chunk body a decoder accepts: a full chunk plus one largest record.
const MAX_BODY_BYTES: u64 = (MAX_CHUNK_BYTES as u64) + (64 << 20);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("archive snapshot object {object}: {problem} (at byte {offset})")]
pub struct SnapshotError {
    pub object: String,
    pub offset: u64,
    pub problem: String,
}

fn fail(object: &str, offset: usize, problem: impl Into<String>) -> SnapshotError {
    SnapshotError { object: object.to_owned(), offset: offset as u64, problem: problem.into() }
}

/// `snapshots/<index>.snap`, zero-padded so names sort by index.
pub fn manifest_name(index: u64) -> String {
    format!("snapshots/{index:020}.snap")
}

/// The index a manifest object name states, if it is one.
pub fn parse_manifest_name(name: &str) -> Option<u64> {
    let file = name.rsplit('/').next()?.strip_suffix(".snap")?;
    (file.len() == 20).then_some(())?;
    file.parse().ok()
}

/// One chunk object: its content hash, under the Raft term of the leader that wrote it. A
/// leader names in its manifests only chunks of its own term (copying an older term's object
/// where the content is the same), and deletes only chunks of its own term or older: so a
/// deposed leader's retention can never delete a chunk a newer leader's manifest names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    /// 0: a format 1 chunk, written before chunks had terms.
    pub term: u64,
    pub hash: [u8; 32],
}

impl ChunkId {
    /// The id a manifest's reference names (None: a hash that is not 32 bytes).
    pub fn of(c: &ChunkRef) -> Option<ChunkId> {
        Some(ChunkId { term: c.term, hash: c.hash.as_slice().try_into().ok()? })
    }
}

/// The object name of a chunk.
pub fn chunk_name(id: &ChunkId) -> String {
    match id.term {
        0 => format!("snapshots/chunks/{}.chunk", hex(&id.hash)),
        term => format!("snapshots/chunks/{term:020}/{}.chunk", hex(&id.hash)),
    }
}

/// The chunk a chunk object name states, if it is one.
pub fn parse_chunk_name(name: &str) -> Option<ChunkId> {
    let mut parts = name.rsplit('/');
    let file = parts.next()?.strip_suffix(".chunk")?;
    let term = match parts.next()? {
        "chunks" => 0,
        dir if dir.len() == 20 => dir.parse().ok().filter(|t| *t > 0)?,
        _ => return None,
    };
    let bytes: Vec<u8> = (0..file.len())
        .step_by(2)
        .map(|i| file.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()?;
    Some(ChunkId { term, hash: bytes.try_into().ok()? })
}

/// How many of a manifest's `chunks` are not among `listed` (read from a listing with
/// `parse_chunk_name`); a hash that is not 32 bytes counts as missing.
pub fn chunks_missing(chunks: &[ChunkRef], listed: &HashSet<ChunkId>) -> usize {
    chunks.iter().filter(|c| ChunkId::of(c).is_none_or(|id| !listed.contains(&id))).count()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One chunk: records `tag u8 | key len u32 LE | key | value len u32 LE | value`, and the
/// BLAKE3 hash of exactly those bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub hash: [u8; 32],
    pub body: Vec<u8>,
    pub records: u32,
}

/// How chunks are named and cut: plainly (BLAKE3 of the records, boundaries from BLAKE3 of the
/// keys) in a plaintext archive; with keyed BLAKE3 in an encrypted one, so that neither a
/// chunk's name nor where chunks end says anything about the records to whoever lacks the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Namer {
    Plain,
    Keyed { names: [u8; 32], cuts: [u8; 32] },
}

impl std::fmt::Debug for Namer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Namer::Plain => "Namer::Plain",
            Namer::Keyed { .. } => "Namer::Keyed",
        })
    }
}

impl Namer {
    /// The name (content hash) of a chunk's records.
    pub fn name(&self, body: &[u8]) -> [u8; 32] {
        match self {
            Namer::Plain => *blake3::hash(body).as_bytes(),
            Namer::Keyed { names, .. } => *blake3::keyed_hash(names, body).as_bytes(),
        }
    }

    /// Whether a chunk ends after a record with this key.
    fn cuts_after(&self, key: &[u8]) -> bool {
        let h = match self {
            Namer::Plain => blake3::hash(key),
            Namer::Keyed { cuts, .. } => blake3::keyed_hash(cuts, key),
        };
        u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) % BOUNDARY_MODULUS == 0
    }
}

impl Chunk {
    fn seal(namer: &Namer, body: Vec<u8>, records: u32) -> Chunk {
        Chunk { hash: namer.name(&body), body, records }
    }

    /// The object: magic, the body's length (u64 LE), the body as one zstd frame.
    pub fn encode(&self) -> Vec<u8> {
        let compressed = zstd::bulk::compress(&self.body, 3).expect("compressing into memory cannot fail");
        let mut out = Vec::with_capacity(compressed.len() + 16);
        out.extend_from_slice(CHUNK_MAGIC);
        out.extend_from_slice(&(self.body.len() as u64).to_le_bytes());
        out.extend_from_slice(&compressed);
        out
    }

    /// Decodes a chunk object (opened, if the archive is encrypted) and checks that its records
    /// are named `expected` by `namer`.
    pub fn decode(object: &str, bytes: &[u8], expected: &[u8; 32], namer: &Namer) -> Result<Chunk, SnapshotError> {
        if bytes.len() < 16 || &bytes[..8] != CHUNK_MAGIC {
            return Err(fail(object, 0, "not a Keepsake snapshot chunk (bad magic or too short)"));
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        if len > MAX_BODY_BYTES {
            return Err(fail(object, 8, format!("states a body of {len} bytes, above the {MAX_BODY_BYTES} limit")));
        }
        let body = crate::decompress_exact(&bytes[16..], len)
            .map_err(|e| fail(object, 16, format!("the zstd frame does not decompress: {e}")))?;
        let chunk = Chunk::seal(namer, body, 0);
        if &chunk.hash != expected {
            return Err(fail(
                object,
                16,
                format!("its records hash to {}, not {}: the object is damaged", hex(&chunk.hash), hex(expected)),
            ));
        }
        let records = records(object, &chunk.body)?.len() as u32;
        Ok(Chunk { records, ..chunk })
    }
}

/// One state record: (tag, key, value).
pub type Record<'a> = (u8, &'a [u8], &'a [u8]);

/// The records of a chunk body, each checked against the body's bounds.
pub fn records<'a>(object: &str, body: &'a [u8]) -> Result<Vec<Record<'a>>, SnapshotError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&'a [u8], SnapshotError> {
        let end = pos.checked_add(n).filter(|e| *e <= body.len()).ok_or_else(|| {
            fail(object, *pos, format!("a record runs past the end of the chunk ({} bytes)", body.len()))
        })?;
        let bytes = &body[*pos..end];
        *pos = end;
        Ok(bytes)
    };
    while pos < body.len() {
        let tag = take(&mut pos, 1)?[0];
        if tag != keepsake_raft::TAG_ITEM && tag != keepsake_raft::TAG_CHANGE {
            return Err(fail(object, pos - 1, format!("unknown record tag {tag}")));
        }
        let klen = u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4 bytes")) as usize;
        let key = take(&mut pos, klen)?;
        let vlen = u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4 bytes")) as usize;
        let value = take(&mut pos, vlen)?;
        out.push((tag, key, value));
    }
    Ok(out)
}

/// Cuts a stream of records, in key order, into chunks at key-defined boundaries.
pub struct Chunker {
    namer: Namer,
    body: Vec<u8>,
    records: u32,
    tag: u8,
}

impl Chunker {
    pub fn new(namer: Namer) -> Chunker {
        Chunker { namer, body: Vec::new(), records: 0, tag: 0 }
    }

    /// Adds one record; returns the chunks it completed (none, one, or — when the record kind
    /// changes — the previous kind's last chunk, and maybe this record's).
    pub fn push(&mut self, tag: u8, key: &[u8], value: &[u8]) -> Vec<Chunk> {
        let mut done = Vec::new();
        if tag != self.tag {
            done.extend(self.cut());
            self.tag = tag;
        }
        self.body.push(tag);
        self.body.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.body.extend_from_slice(key);
        self.body.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.body.extend_from_slice(value);
        self.records += 1;
        if self.namer.cuts_after(key) || self.body.len() >= MAX_CHUNK_BYTES {
            done.extend(self.cut());
        }
        done
    }

    /// The last, partial chunk.
    pub fn finish(mut self) -> Option<Chunk> {
        self.cut()
    }

    fn cut(&mut self) -> Option<Chunk> {
        if self.body.is_empty() {
            return None;
        }
        let records = std::mem::take(&mut self.records);
        Some(Chunk::seal(&self.namer, std::mem::take(&mut self.body), records))
    }
}

/// The manifest object: magic, the protobuf `SnapshotManifest`, the CRC32C (LE) of both.
pub fn encode_manifest(m: &SnapshotManifest) -> Vec<u8> {
    let mut out = MANIFEST_MAGIC.to_vec();
    m.encode(&mut out).expect("encoding into a Vec cannot fail");
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode_manifest(object: &str, bytes: &[u8]) -> Result<SnapshotManifest, SnapshotError> {
    if bytes.len() < MANIFEST_MAGIC.len() + 4 {
        return Err(fail(object, 0, format!("too short to be a snapshot manifest ({} bytes)", bytes.len())));
    }
    let (content, trailer) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(content);
    if stored != computed {
        return Err(fail(
            object,
            content.len(),
            format!("checksum mismatch (stored {stored:08x}, computed {computed:08x}): the object is damaged"),
        ));
    }
    if &content[..8] != MANIFEST_MAGIC {
        return Err(fail(object, 0, "not a Keepsake snapshot manifest (bad magic)"));
    }
    let m = SnapshotManifest::decode(&content[8..]).map_err(|e| fail(object, 8, format!("bad protobuf: {e}")))?;
    if m.digest.len() != 32 || m.chunks.iter().any(|c| c.hash.len() != 32) {
        return Err(fail(object, 8, "a digest or chunk hash is not 32 bytes"));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keepsake_raft::{TAG_CHANGE, TAG_ITEM};
    use proptest::prelude::*;

    fn chunks_of(records: &[(u8, Vec<u8>, Vec<u8>)]) -> Vec<Chunk> {
        let mut c = Chunker::new(Namer::Plain);
        let mut out: Vec<Chunk> = records.iter().flat_map(|(t, k, v)| c.push(*t, k, v)).collect();
        out.extend(c.finish());
        out
    }

    fn state(n: usize, changed: Option<usize>) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
        let mut r: Vec<_> = (0..n)
            .map(|i| {
                let v = if Some(i) == changed { b"changed".to_vec() } else { format!("v{i}").into_bytes() };
                (TAG_ITEM, format!("user\0c\0item-{i:06}").into_bytes(), v)
            })
            .collect();
        r.extend((0..n).map(|i| (TAG_CHANGE, format!("user\0{i:08}").into_bytes(), b"c".to_vec())));
        r
    }

    #[test]
    fn one_changed_record_changes_one_chunk_and_the_rest_are_shared() {
        let before = chunks_of(&state(20_000, None));
        let after = chunks_of(&state(20_000, Some(12_345)));
        assert!(before.len() > 10, "{} chunks", before.len());
        assert_eq!(before.len(), after.len());
        let differ = before.iter().zip(&after).filter(|(a, b)| a.hash != b.hash).count();
        assert_eq!(differ, 1, "only the chunk holding the changed record differs");
        // Chunks never mix record kinds.
        for c in &before {
            let kinds: std::collections::BTreeSet<u8> =
                records("c", &c.body).unwrap().iter().map(|(t, _, _)| *t).collect();
            assert_eq!(kinds.len(), 1);
        }
    }

    #[test]
    fn an_inserted_record_leaves_the_other_chunks_alone() {
        let before = chunks_of(&state(20_000, None));
        let mut grown = state(20_000, None);
        grown.insert(5_000, (TAG_ITEM, b"user\0c\0item-004999x".to_vec(), b"new".to_vec()));
        let after = chunks_of(&grown);
        let old: std::collections::HashSet<_> = before.iter().map(|c| c.hash).collect();
        let new = after.iter().filter(|c| !old.contains(&c.hash)).count();
        assert_eq!(new, 1, "one new chunk");
    }

    #[test]
    fn chunks_round_trip_and_damage_is_named() {
        let chunk = chunks_of(&state(100, None)).remove(0);
        let bytes = chunk.encode();
        assert_eq!(Chunk::decode("x", &bytes, &chunk.hash, &Namer::Plain).unwrap(), chunk);
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(Chunk::decode("snapshots/chunks/x", &bad, &chunk.hash, &Namer::Plain)
            .unwrap_err()
            .to_string()
            .contains("snapshots/chunks/x"));
        assert!(Chunk::decode("x", &bytes, &[0; 32], &Namer::Plain).unwrap_err().problem.contains("damaged"));
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_manifest_name(&manifest_name(42)), Some(42));
        for term in [0, 1, 77] {
            let id = ChunkId { term, hash: [7u8; 32] };
            assert_eq!(parse_chunk_name(&format!("root/{}", chunk_name(&id))), Some(id));
        }
        assert_eq!(parse_chunk_name("snapshots/chunks/zz.chunk"), None);
        assert_eq!(
            parse_chunk_name(&format!("snapshots/chunks/3/{}.chunk", hex(&[1; 32]))),
            None,
            "terms have 20 digits"
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_manifest("m", &bytes);
            let _ = Chunk::decode("c", &bytes, &[0; 32], &Namer::Plain);
            let _ = records("c", &bytes);
        }

        #[test]
        fn every_manifest_truncation_is_rejected(cut in 0usize..100) {
            let m = SnapshotManifest { cluster_id: "c".into(), index: 9, digest: vec![1; 32], ..Default::default() };
            let bytes = encode_manifest(&m);
            prop_assert_eq!(decode_manifest("m", &bytes).unwrap(), m);
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode_manifest("m", &bytes[..cut]).is_err());
        }
    }
}
