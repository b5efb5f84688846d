//! Archive segments: a run of committed log entries as one self-checking object
//! (`docs/archive-format.md` is the reader's specification).
//!
//! Layout: magic `KSSEG001`, a format version, a fixed little-endian header, a zstd frame
//! holding the entries (each `len u32 | crc32c u32 | protobuf ArchivedEntry`), and the CRC32C
//! of everything before it. Version 2 headers also name the history the segment belongs to and
//! link it to what it continues from (`Link`), so a reader can chain segments and tell a splice
//! from another history, a gap, or a skipped entry. The decoder reads versions 1 and 2, checks
//! every length, checksum, index and count, and rejects anything malformed with an error naming
//! the object and the byte offset; it never panics.

use prost::Message;

use keepsake_raft::HistoryId;

use crate::proto::ArchivedEntry;

pub const MAGIC: &[u8; 8] = b"KSSEG001";
/// The version this build writes; it reads this one and version 1 (no history, no link).
pub const FORMAT_VERSION: u16 = 2;
/// Largest entry a decoder accepts (a batch of the largest values, with room to spare).
const MAX_ENTRY_BYTES: usize = 256 << 20;
/// Largest decompressed body a decoder accepts.
const MAX_BODY_BYTES: u64 = 4 << 30;

/// What a segment says about itself before its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub cluster_id: String,
    pub first_index: u64,
    pub last_index: u64,
    pub first_term: u64,
    pub last_term: u64,
    /// Proposal times of the first and last entries that carry one (0 if none does).
    pub first_time_us: i64,
    pub last_time_us: i64,
    pub entry_count: u32,
    /// The state digest right after applying `last_index`.
    pub digest_after: [u8; 32],
    /// The history that wrote it (None: a version 1 segment, written before histories had ids).
    pub history: Option<HistoryId>,
    /// What it continues from (version 2).
    pub prev: Link,
}

/// What a segment continues from: the entry at `first_index - 1`, as the previous segment holds
/// it, or the archive snapshot at that index that bridged a gap in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Link {
    /// Nothing: a version 1 segment, or one starting at index 0.
    #[default]
    None,
    /// `entry_hash` of the entry at `index`.
    Entry { index: u64, term: u64, hash: [u8; 32] },
    /// The archive snapshot at `index`, by its state digest.
    Snapshot { index: u64, term: u64, digest: [u8; 32] },
}

impl Link {
    const NONE: u8 = 0;
    const ENTRY: u8 = 1;
    const SNAPSHOT: u8 = 2;

    /// The link to `entry`, the last one before a segment.
    pub fn after(entry: &ArchivedEntry) -> Link {
        Link::Entry { index: entry.index, term: entry.term, hash: entry_hash(entry) }
    }

    /// The (index, term) linked to, if any.
    pub fn point(&self) -> Option<(u64, u64)> {
        match *self {
            Link::None => None,
            Link::Entry { index, term, .. } | Link::Snapshot { index, term, .. } => Some((index, term)),
        }
    }
}

/// The hash that links a segment to the entry before it: BLAKE3 of the entry's protobuf
/// encoding (deterministic: fields in tag order, no unknown fields), under a domain tag.
pub fn entry_hash(entry: &ArchivedEntry) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"keepsake.archive.entry.v1\0");
    h.update(&entry.encode_to_vec());
    *h.finalize().as_bytes()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub header: SegmentHeader,
    pub entries: Vec<ArchivedEntry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("segment {object}: {problem} (at byte {offset})")]
pub struct SegmentError {
    pub object: String,
    pub offset: u64,
    pub problem: String,
}

/// The object name of a segment holding `[first, last]` (zero-padded, so names sort by index).
pub fn object_name(first: u64, last: u64) -> String {
    format!("segments/{first:020}-{last:020}.seg")
}

/// The index range a segment object name states, if it is one.
pub fn parse_object_name(name: &str) -> Option<(u64, u64)> {
    let file = name.rsplit('/').next()?.strip_suffix(".seg")?;
    let (first, last) = file.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

impl Segment {
    /// Builds a segment from consecutive entries; the header's ranges and times come from them.
    pub fn new(cluster_id: &str, entries: Vec<ArchivedEntry>, digest_after: [u8; 32]) -> Self {
        let first = entries.first().cloned().unwrap_or_default();
        let last = entries.last().cloned().unwrap_or_default();
        let times: Vec<i64> = entries.iter().map(|e| e.proposed_at_us).filter(|t| *t != 0).collect();
        let header = SegmentHeader {
            cluster_id: cluster_id.to_owned(),
            first_index: first.index,
            last_index: last.index,
            first_term: first.term,
            last_term: last.term,
            first_time_us: times.first().copied().unwrap_or(0),
            last_time_us: times.last().copied().unwrap_or(0),
            entry_count: entries.len() as u32,
            digest_after,
            history: None,
            prev: Link::None,
        };
        Segment { header, entries }
    }

    /// Names the history the segment belongs to and what it continues from (a version 2
    /// segment; without this it encodes as version 1).
    pub fn in_history(mut self, history: HistoryId, prev: Link) -> Self {
        self.header.history = Some(history);
        self.header.prev = prev;
        self
    }

    pub fn object_name(&self) -> String {
        object_name(self.header.first_index, self.header.last_index)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for entry in &self.entries {
            let bytes = entry.encode_to_vec();
            body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
            body.extend_from_slice(&bytes);
        }
        let compressed = zstd::bulk::compress(&body, 3).expect("compressing into memory cannot fail");
        let h = &self.header;
        let mut out = Vec::with_capacity(compressed.len() + 160);
        out.extend_from_slice(MAGIC);
        let version: u16 = if h.history.is_some() { FORMAT_VERSION } else { 1 };
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(h.cluster_id.len() as u16).to_le_bytes());
        out.extend_from_slice(h.cluster_id.as_bytes());
        if let Some(history) = h.history {
            out.extend_from_slice(&history.0);
            let (kind, index, term, hash) = match h.prev {
                Link::None => (Link::NONE, 0, 0, [0; 32]),
                Link::Entry { index, term, hash } => (Link::ENTRY, index, term, hash),
                Link::Snapshot { index, term, digest } => (Link::SNAPSHOT, index, term, digest),
            };
            out.push(kind);
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&term.to_le_bytes());
            out.extend_from_slice(&hash);
        }
        for v in [h.first_index, h.last_index, h.first_term, h.last_term] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&h.first_time_us.to_le_bytes());
        out.extend_from_slice(&h.last_time_us.to_le_bytes());
        out.extend_from_slice(&h.entry_count.to_le_bytes());
        out.extend_from_slice(&h.digest_after);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
        out.extend_from_slice(&compressed);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and checks a segment object; `object` names it in errors.
    pub fn decode(object: &str, bytes: &[u8]) -> Result<Segment, SegmentError> {
        let fail =
            |offset: usize, problem: String| SegmentError { object: object.to_owned(), offset: offset as u64, problem };
        if bytes.len() < MAGIC.len() + 4 {
            return Err(fail(0, format!("too short to be a segment ({} bytes)", bytes.len())));
        }
        let (content, trailer) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(trailer.try_into().expect("split at 4 bytes"));
        let computed = crc32c::crc32c(content);
        if stored != computed {
            return Err(fail(
                content.len(),
                format!("checksum mismatch (stored {stored:08x}, computed {computed:08x}): the object is damaged"),
            ));
        }
        let mut r = Reader { bytes: content, pos: 0 };
        let magic = r.take(MAGIC.len()).map_err(|p| fail(r.pos, p))?;
        if magic != MAGIC {
            return Err(fail(0, "not a Keepsake segment (bad magic)".into()));
        }
        let version = r.u16().map_err(|p| fail(r.pos, p))?;
        if version != 1 && version != FORMAT_VERSION {
            return Err(fail(
                8,
                format!("format version {version} is not supported (this reader knows 1 and {FORMAT_VERSION})"),
            ));
        }
        let header = read_header(&mut r, version).map_err(|p| fail(r.pos, p))?;
        let body_len = r.u64().map_err(|p| fail(r.pos, p))?;
        let compressed_len = r.u64().map_err(|p| fail(r.pos, p))?;
        let body_at = r.pos;
        if body_len > MAX_BODY_BYTES || compressed_len != (content.len() - body_at) as u64 {
            return Err(fail(
                body_at,
                format!("body lengths do not add up ({compressed_len} compressed, {body_len} raw)"),
            ));
        }
        let body = crate::decompress_exact(&content[body_at..], body_len)
            .map_err(|e| fail(body_at, format!("cannot decompress the body: {e}")))?;
        let entries =
            read_entries(&body, &header).map_err(|(at, p)| fail(body_at, format!("{p} (body offset {at})")))?;
        Ok(Segment { header, entries })
    }
}

fn read_header(r: &mut Reader<'_>, version: u16) -> Result<SegmentHeader, String> {
    let id_len = r.u16()? as usize;
    let cluster_id = String::from_utf8(r.take(id_len)?.to_vec()).map_err(|_| "cluster id is not UTF-8".to_string())?;
    let (history, prev) = if version >= 2 {
        let history = HistoryId(r.take(16)?.try_into().expect("took 16 bytes"));
        let kind = r.take(1)?[0];
        let (index, term) = (r.u64()?, r.u64()?);
        let hash: [u8; 32] = r.take(32)?.try_into().expect("took 32 bytes");
        let prev = match kind {
            Link::NONE => Link::None,
            Link::ENTRY => Link::Entry { index, term, hash },
            Link::SNAPSHOT => Link::Snapshot { index, term, digest: hash },
            other => return Err(format!("unknown link kind {other}")),
        };
        (Some(history), prev)
    } else {
        (None, Link::None)
    };
    let (first_index, last_index, first_term, last_term) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let (first_time_us, last_time_us) = (r.u64()? as i64, r.u64()? as i64);
    let entry_count = r.u32()?;
    let digest_after: [u8; 32] = r.take(32)?.try_into().expect("took 32 bytes");
    if last_index < first_index || last_index - first_index + 1 != u64::from(entry_count) {
        return Err(format!("index range {first_index}-{last_index} does not hold {entry_count} entries"));
    }
    if let Some((index, _)) = prev.point().filter(|(index, _)| index + 1 != first_index) {
        return Err(format!("links to index {index}, but its first entry is {first_index}"));
    }
    Ok(SegmentHeader {
        cluster_id,
        first_index,
        last_index,
        first_term,
        last_term,
        first_time_us,
        last_time_us,
        entry_count,
        digest_after,
        history,
        prev,
    })
}

fn read_entries(body: &[u8], header: &SegmentHeader) -> Result<Vec<ArchivedEntry>, (usize, String)> {
    let mut r = Reader { bytes: body, pos: 0 };
    let mut entries = Vec::with_capacity(header.entry_count.min(1 << 16) as usize);
    while r.pos < body.len() {
        let at = r.pos;
        let len = r.u32().map_err(|p| (at, p))? as usize;
        let crc = r.u32().map_err(|p| (at, p))?;
        if len > MAX_ENTRY_BYTES {
            return Err((at, format!("entry length {len} is over the limit")));
        }
        let bytes = r.take(len).map_err(|p| (at, p))?;
        if crc32c::crc32c(bytes) != crc {
            return Err((at, "entry checksum mismatch".into()));
        }
        let entry = ArchivedEntry::decode(bytes).map_err(|e| (at, format!("entry does not decode: {e}")))?;
        let expected = header.first_index + entries.len() as u64;
        if entry.index != expected {
            return Err((at, format!("entry has index {}, expected {expected}", entry.index)));
        }
        entries.push(entry);
    }
    if entries.len() as u64 != u64::from(header.entry_count) {
        return Err((body.len(), format!("holds {} entries, the header says {}", entries.len(), header.entry_count)));
    }
    Ok(entries)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| format!("truncated: needs {n} more bytes, {} left", self.bytes.len() - self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("took 2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("took 4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("took 8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{archived_entry::Payload, op, Blank, Op, Put, Write, Writes};
    use proptest::prelude::*;

    fn entries(first: u64, n: u64) -> Vec<ArchivedEntry> {
        (first..first + n)
            .map(|index| ArchivedEntry {
                index,
                term: 2,
                proposed_at_us: if index % 3 == 0 { 0 } else { 1_000 + index as i64 },
                payload: Some(if index % 3 == 0 {
                    Payload::Blank(Blank {})
                } else {
                    Payload::Writes(Writes {
                        writes: vec![Write {
                            user_id: "u".into(),
                            ops: vec![Op {
                                collection: "c".into(),
                                item_id: format!("i{index}"),
                                if_revision: None,
                                kind: Some(op::Kind::Put(Put { value: vec![7; 100], content_type: "t".into() })),
                            }],
                        }],
                    })
                }),
            })
            .collect()
    }

    #[test]
    fn round_trips_and_states_its_range_and_times() {
        let seg = Segment::new("c1", entries(10, 5), [9; 32]);
        assert_eq!(seg.object_name(), "segments/00000000000000000010-00000000000000000014.seg");
        assert_eq!(parse_object_name(&seg.object_name()), Some((10, 14)));
        assert_eq!((seg.header.first_time_us, seg.header.last_time_us), (1_010, 1_014));
        let decoded = Segment::decode("x", &seg.encode()).expect("decodes");
        assert_eq!(decoded, seg);
    }

    #[test]
    fn a_version_2_segment_round_trips_with_its_history_and_link_and_version_1_still_reads() {
        let before = entries(9, 1).remove(0);
        let history = HistoryId([7; 16]);
        let seg = Segment::new("c1", entries(10, 5), [9; 32]).in_history(history, Link::after(&before));
        let bytes = seg.encode();
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), FORMAT_VERSION);
        let decoded = Segment::decode("x", &bytes).expect("decodes");
        assert_eq!(decoded, seg);
        assert_eq!(decoded.header.prev, Link::Entry { index: 9, term: 2, hash: entry_hash(&before) });
        for k in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[k / 8] ^= 1 << (k % 8);
            assert!(Segment::decode("x", &flipped).is_err(), "bit {k} flipped still decodes");
        }
        let v1 = Segment::new("c1", entries(10, 5), [9; 32]);
        assert_eq!(Segment::decode("x", &v1.encode()).expect("version 1 decodes").header.history, None);
    }

    #[test]
    fn a_link_that_is_not_the_index_before_the_segment_is_refused() {
        let before = entries(7, 1).remove(0);
        let bytes =
            Segment::new("c1", entries(10, 5), [9; 32]).in_history(HistoryId([1; 16]), Link::after(&before)).encode();
        let e = Segment::decode("x", &bytes).expect_err("a link to index 7 before index 10");
        assert!(e.problem.contains("links to index 7"), "{e}");
    }

    #[test]
    fn every_truncation_is_rejected_with_the_object_name() {
        let bytes = Segment::new("c1", entries(1, 4), [1; 32]).encode();
        for cut in 0..bytes.len() {
            let err = Segment::decode("segments/x.seg", &bytes[..cut]).expect_err("a truncated segment is refused");
            assert_eq!(err.object, "segments/x.seg");
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let bytes = Segment::new("c1", entries(1, 3), [1; 32]).encode();
        for i in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(Segment::decode("s", &bad).is_err(), "flipping bit {bit} of byte {i} went unnoticed");
            }
        }
    }

    #[test]
    fn a_header_that_lies_about_its_range_is_rejected_even_with_a_good_checksum() {
        let mut seg = Segment::new("c1", entries(1, 3), [1; 32]);
        seg.header.last_index = 4;
        seg.header.entry_count = 4;
        let err = Segment::decode("s", &seg.encode()).expect_err("count mismatch");
        assert!(err.problem.contains("holds 3 entries"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Segment::decode("fuzz", &bytes);
        }

        #[test]
        fn well_checksummed_garbage_never_panics_the_decoder(tail in proptest::collection::vec(any::<u8>(), 0..400)) {
            // Past the checksum, so the parser itself meets the garbage.
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            bytes.extend_from_slice(&tail);
            let crc = crc32c::crc32c(&bytes);
            bytes.extend_from_slice(&crc.to_le_bytes());
            prop_assert!(Segment::decode("fuzz", &bytes).is_err());
        }

        #[test]
        fn any_run_of_entries_round_trips(first in 1u64..1_000_000, n in 1u64..40) {
            let seg = Segment::new("c", entries(first, n), [3; 32]);
            prop_assert_eq!(Segment::decode("p", &seg.encode()).expect("decodes"), seg);
        }
    }
}
