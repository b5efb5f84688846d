//! The fuzz targets in CI, on stable Rust: every committed input under `fuzz/corpus/<target>/`
//! and `fuzz/regressions/<target>/`, and seeded mutations of each, go through the same checks
//! libFuzzer runs (`fuzz/src/lib.rs`), with every allocation watched: no input may make a
//! decoder ask for more than `LARGEST_ALLOCATION` at once, which is what libFuzzer's
//! `-malloc_limit_mb` catches in the long runs (docs/reliability.md).
//!
//! `write_seed_inputs` (ignored) writes the hand-made valid inputs each corpus started from.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The most any one input may make a decoder allocate at once.
const LARGEST_ALLOCATION: usize = 64 << 20;
/// Mutations of each corpus input.
const MUTATIONS: u64 = 24;

/// The system allocator, noting the largest single request.
struct Watching;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes straight to the system allocator with the caller's arguments.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else { continue };
        for entry in entries {
            let path = entry.expect("list the corpus").path();
            out.push((path.clone(), std::fs::read(&path).expect("read a corpus input")));
        }
    }
    out.sort();
    out
}

/// The fault runs' seeded generator: the mutations are the same on every run.
#[allow(dead_code)]
#[path = "fault/rng.rs"]
mod rng;
use rng::Rng;

fn below(rng: &mut Rng, n: usize) -> usize {
    rng.below(n as u64) as usize
}

/// A bit flip, a cut, an inserted byte, a length field made huge, or a duplicated slice.
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    let at = below(rng, out.len());
    match below(rng, 5) {
        0 if !out.is_empty() => out[at] ^= 1 << below(rng, 8),
        1 => out.truncate(at),
        2 => out.insert(at, rng.next() as u8),
        3 if out.len() >= 4 => {
            let at = at.min(out.len() - 4);
            out[at..at + 4].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
        }
        _ => {
            let end = (at + 1 + below(rng, 64)).min(out.len());
            let slice = out[at..end].to_vec();
            out.splice(at..at, slice);
        }
    }
    out
}

/// Runs `check` on one input; fails naming the input if it panics or allocates too much.
fn run_one(check: fn(&[u8]), name: &str, data: &[u8]) {
    LARGEST.store(0, Ordering::Relaxed);
    if let Err(panic) = std::panic::catch_unwind(|| check(data)) {
        let hex: String = data.iter().take(64).map(|b| format!("{b:02x}")).collect();
        panic!("{name} ({} bytes, starting {hex}) failed the check: {panic:?}", data.len());
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= LARGEST_ALLOCATION,
        "{name} ({} bytes) made the decoder allocate {largest} bytes at once",
        data.len()
    );
}

fn replay(target: &str, check: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(inputs.len() >= 10, "fuzz/corpus/{target} has only {} inputs; is the corpus committed?", inputs.len());
    let mut rng = Rng::new(0x5EED);
    for (path, data) in &inputs {
        let name = path.display().to_string();
        run_one(check, &name, data);
        for m in 0..MUTATIONS {
            run_one(check, &format!("{name}, mutation {m}"), &mutate(data, &mut rng));
        }
    }
    eprintln!("{target}: {} inputs, {} mutations each", inputs.len(), MUTATIONS);
}

#[test]
fn segment() {
    replay("segment", targets::segment);
}

#[test]
fn archive_snapshot() {
    replay("archive_snapshot", targets::archive_snapshot);
}

#[test]
fn raft_snapshot() {
    replay("raft_snapshot", targets::raft_snapshot);
}

#[test]
fn keys() {
    replay("keys", targets::keys);
}

#[test]
fn messages() {
    replay("messages", targets::messages);
}

#[test]
fn requests() {
    replay("requests", targets::requests);
}

/// `cargo nextest run --test fuzz_corpus write_seed_inputs --run-ignored only`: the valid
/// inputs each corpus started from (libFuzzer grew the rest).
#[test]
#[ignore = "a tool: writes fuzz/corpus/*/seed-*"]
fn write_seed_inputs() {
    for (target, inputs) in seeds::all() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (n, input) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n}")), input).expect("write a seed");
        }
    }
    for (target, name, input) in seeds::regressions() {
        let dir = fuzz_dir().join("regressions").join(target);
        std::fs::create_dir_all(&dir).expect("create the regressions directory");
        std::fs::write(dir.join(name), input).expect("write a regression input");
    }
}

mod seeds {
    use keepsake::peer::encode;
    use keepsake::proto::v1::*;
    use keepsake_archive::entry::archived;
    use keepsake_archive::envelope;
    use keepsake_archive::proto::SnapshotManifest;
    use keepsake_archive::segment::Segment;
    use keepsake_archive::snapshot::{encode_manifest, Chunker, Namer};
    use keepsake_raft::keys::{change_key, index_key, item_key};
    use keepsake_raft::store::ItemRecord;
    use keepsake_raft::types::{Entry, LogId, SnapshotMeta, Vote};
    use keepsake_raft::{Command, DeleteOp, MachineMeta, Op, PutOp, SnapshotHeader, Write, TAG_ITEM};
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::{CommittedLeaderId, EntryPayload};
    use prost::Message;

    fn write() -> Write {
        Write {
            user_id: "alice".into(),
            ops: vec![
                Op::Put(PutOp {
                    collection: "contacts".into(),
                    item_id: "c1".into(),
                    value: b"Bob, +1 555 0100".to_vec(),
                    content_type: "text/plain".into(),
                    if_revision: Some(0),
                }),
                Op::Delete(DeleteOp { collection: "photos".into(), item_id: "p9".into(), if_revision: None }),
            ],
        }
    }

    fn entry(index: u64) -> Entry {
        let command = Command { proposed_at_us: 1_700_000_000_000_000, writes: vec![write()] };
        Entry { log_id: LogId::new(CommittedLeaderId::new(2, 1), index), payload: EntryPayload::Normal(command) }
    }

    fn blank(index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(2, 1), index), payload: EntryPayload::Blank }
    }

    fn tagged(tag: u8, body: Vec<u8>) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(body);
        out
    }

    /// A Raft snapshot file, laid out as raft/src/store/snapshot.rs writes one.
    fn raft_snapshot(records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let header = SnapshotHeader { meta: SnapshotMeta::default(), machine: MachineMeta::default() };
        let head = postcard::to_stdvec(&header).expect("encode");
        let mut out = b"KSSNAP01".to_vec();
        out.extend((head.len() as u32).to_le_bytes());
        out.extend(head);
        for (k, v) in records {
            out.push(TAG_ITEM);
            out.extend((k.len() as u32).to_le_bytes());
            out.extend(*k);
            out.extend((v.len() as u32).to_le_bytes());
            out.extend(*v);
        }
        out.push(0);
        let crc = crc32c::crc32c(&out);
        out.extend(crc.to_le_bytes());
        out
    }

    /// Inputs that once made a decoder allocate what a length field claimed, before reading
    /// what was there (gigabytes for a few hundred bytes).
    pub fn regressions() -> Vec<(&'static str, &'static str, Vec<u8>)> {
        // A segment whose body length says almost 4 GiB, with a checksum that matches.
        let mut segment = Segment::new("seed", vec![archived(&entry(4))], [7; 32]).encode();
        let frame = segment.windows(4).position(|w| w == [0x28, 0xb5, 0x2f, 0xfd]).expect("a zstd frame");
        segment[frame - 16..frame - 8].copy_from_slice(&0xFFFF_FFF0u64.to_le_bytes());
        let content = segment.len() - 4;
        let crc = crc32c::crc32c(&segment[..content]);
        segment[content..].copy_from_slice(&crc.to_le_bytes());
        // A snapshot chunk whose body length says 80 MiB (its hash is checked only after).
        let mut chunker = Chunker::new(Namer::Plain);
        let mut chunk = chunker.push(TAG_ITEM, b"k", b"v");
        chunk.extend(chunker.finish());
        let mut chunk = chunk[0].encode();
        chunk[8..16].copy_from_slice(&(80u64 << 20).to_le_bytes());
        // A Raft snapshot whose first record's key length says 2 GiB.
        let mut raft = raft_snapshot(&[(b"a\0b\0c", b"v")]);
        let at = raft.len() - 4 - 1 - 1 - 4 - 4 - 5;
        raft[at..at + 4].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        vec![
            ("segment", "huge-body-length", segment),
            ("archive_snapshot", "huge-chunk-length", chunk),
            ("raft_snapshot", "huge-key-length", raft),
        ]
    }

    pub fn all() -> Vec<(&'static str, Vec<Vec<u8>>)> {
        let segment =
            Segment::new("seed", vec![archived(&blank(3)), archived(&entry(4)), archived(&entry(5))], [7; 32]);
        let mut chunker = Chunker::new(Namer::Plain);
        let mut chunks = chunker.push(TAG_ITEM, &item_key("alice", "contacts", "c1"), b"record");
        chunks.extend(chunker.finish());
        let manifest = SnapshotManifest { index: 9, term: 2, ..Default::default() };
        let item = ItemRecord {
            revision: 3,
            log_index: 5,
            updated_at_us: 1_700_000_000_000_000,
            deleted: false,
            content_type: "text/plain".into(),
            value: b"Bob".to_vec(),
        };
        let key = || Some(ItemKey { user_id: "alice".into(), collection: "contacts".into(), item_id: "c1".into() });
        let put = PutRequest { key: key(), value: b"Bob".to_vec(), durability: 2, ..Default::default() };
        let batch = BatchRequest {
            user_id: "alice".into(),
            ops: vec![BatchOp {
                op: Some(batch_op::Op::Put(BatchPut {
                    collection: "c".into(),
                    item_id: "i".into(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        let append = AppendEntriesRequest::<keepsake_raft::TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 3)),
            entries: vec![entry(4), blank(5)],
            leader_commit: Some(LogId::new(CommittedLeaderId::new(2, 1), 3)),
        };
        let vote = VoteRequest::<u64> { vote: Vote::new(3, 2), last_log_id: None };
        vec![
            ("segment", vec![segment.encode(), Segment::new("seed", vec![], [0; 32]).encode()]),
            (
                "archive_snapshot",
                vec![
                    encode_manifest(&manifest),
                    chunks[0].encode(),
                    chunks[0].body.clone(),
                    vec![],
                    envelope::seal(crate::targets::fuzz_ring().active(), envelope::Kind::Chunk, &chunks[0].encode()),
                ],
            ),
            (
                "raft_snapshot",
                vec![
                    raft_snapshot(&[]),
                    raft_snapshot(&[(b"alice\0contacts\0c1", b"v")]),
                    raft_snapshot(&[(b"a\0b\0c", b""), (b"a\0b\0d", b"xyz")]),
                ],
            ),
            (
                "keys",
                vec![
                    item_key("alice", "contacts", "c1"),
                    change_key("alice", 42),
                    index_key(7).to_vec(),
                    b"alice/contacts/c1/alice/contacts/c2".to_vec(),
                    "ü/日本/x/u/c/i".as_bytes().to_vec(),
                ],
            ),
            (
                "messages",
                vec![
                    tagged(0, encode(&append)),
                    tagged(2, encode(&vote)),
                    tagged(6, encode(&write())),
                    tagged(8, encode(&item)),
                    tagged(9, encode(&MachineMeta::default())),
                ],
            ),
            (
                "requests",
                vec![
                    tagged(0, put.encode_to_vec()),
                    tagged(1, DeleteRequest { key: key(), if_revision: Some(3), ..Default::default() }.encode_to_vec()),
                    tagged(2, batch.encode_to_vec()),
                    tagged(3, GetRequest { key: key(), consistency: 2 }.encode_to_vec()),
                    tagged(
                        4,
                        ListRequest {
                            user_id: "alice".into(),
                            collection: "contacts".into(),
                            page_size: 10,
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    ),
                    tagged(
                        5,
                        ChangesRequest {
                            user_id: "alice".into(),
                            since_revision: 3,
                            follow: true,
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    ),
                    tagged(6, ExportUserRequest { user_id: "alice".into(), ..Default::default() }.encode_to_vec()),
                ],
            ),
        ]
    }
}
