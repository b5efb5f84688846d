//! What each fuzz target checks, as plain functions of the input bytes: every decoder of bytes
//! that come from disk, the network or a client returns a value or an error, never panics, and
//! never allocates more than the input can justify; what decodes re-encodes to something that
//! decodes the same. `fuzz_targets/*.rs` hand these to libFuzzer; `tests/fuzz_corpus.rs`
//! replays the committed corpora through them on stable Rust in CI.

use keepsake::limits::Limits;
use keepsake::peer;
use keepsake::proto::v1::{
    BatchRequest, ChangesRequest, DeleteRequest, ExportUserRequest, GetRequest, ListRequest, PutRequest,
};
use keepsake::server::validate;
use keepsake_archive::envelope;
use keepsake_archive::keys::KeyRing;
use keepsake_archive::segment::Segment;
use keepsake_archive::snapshot::{decode_manifest, encode_manifest, records, Chunk, Namer};
use keepsake_raft::keys::{decode_change_revision, decode_index_key, decode_item_key, index_key, item_key};
use keepsake_raft::store::ItemRecord;
use keepsake_raft::{MachineMeta, TypeConfig, Write, WriteOutcome};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use prost::Message;
use serde::{de::DeserializeOwned, Serialize};

/// Archive segments (`keepsake_archive::segment`), as a restore reads them from the bucket.
pub fn segment(data: &[u8]) {
    if let Ok(segment) = Segment::decode("fuzz", data) {
        let again = Segment::decode("fuzz", &segment.encode()).expect("a decoded segment re-encodes");
        assert_eq!(again, segment);
        // A restore replays each entry: it becomes a command or an error, never a panic.
        for entry in &segment.entries {
            let _ = keepsake_archive::entry::to_command(entry);
        }
    }
}

/// Archive snapshots: manifests, chunks and the records inside a chunk; and the envelope every
/// object of an encrypted archive is sealed in.
pub fn archive_snapshot(data: &[u8]) {
    if let Ok(m) = decode_manifest("fuzz", data) {
        assert_eq!(decode_manifest("fuzz", &encode_manifest(&m)).expect("a decoded manifest re-encodes"), m);
    }
    // A chunk is checked against the hash in its name; the fuzzer cannot forge BLAKE3, so the
    // record parser is also fed the raw bytes, as a body that passed the hash check would be.
    let _ = Chunk::decode("fuzz", data, &[0; 32], &Namer::Plain);
    // Every object of an encrypted archive is an envelope first (the corpus holds one sealed
    // with this ring's key, so the fuzzer reaches past the tags).
    let _ = envelope::open(&fuzz_ring(), None, "fuzz", data);
    if let Ok(parsed) = records("fuzz", data) {
        let total: usize = parsed.iter().map(|(_, k, v)| 9 + k.len() + v.len()).sum();
        assert_eq!(total, data.len(), "the records account for every byte");
    }
}

/// The key ring the envelope is fuzzed with (its key is 32 zero bytes).
pub fn fuzz_ring() -> KeyRing {
    KeyRing::parse("fuzz:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "fuzz").expect("a valid ring")
}

/// Raft snapshot files, as a node reads one a leader sent it or one it finds on its disk.
pub fn raft_snapshot(data: &[u8]) {
    if let Ok((_, count)) = keepsake_raft::verify_snapshot(data, "fuzz") {
        // Every record takes at least 9 bytes; the framing takes 8 + 4 + 1 + 4.
        assert!(count as usize * 9 + 17 <= data.len(), "{count} records in {} bytes", data.len());
    }
}

/// The key encoding: a decoded key re-encodes to itself, and keys of ids the server accepts
/// decode to those ids and sort as the (user, collection, item) tuples do.
pub fn keys(data: &[u8]) {
    if let Some((u, c, i)) = decode_item_key(data) {
        assert_eq!(item_key(&u, &c, &i), data);
    }
    if let Some(r) = decode_change_revision(data) {
        assert_eq!(data[data.len() - 8..], r.to_be_bytes());
    }
    if let Some(i) = decode_index_key(data) {
        assert_eq!(index_key(i), data);
    }
    let limits = Limits::default();
    let text = String::from_utf8_lossy(data);
    let parts: Vec<&str> = text.split('/').collect();
    if parts.len() < 6 || parts.iter().any(|p| validate::id(&limits, "id", p).is_err()) {
        return;
    }
    let (a, b) = ((parts[0], parts[1], parts[2]), (parts[3], parts[4], parts[5]));
    let (ka, kb) = (item_key(a.0, a.1, a.2), item_key(b.0, b.1, b.2));
    let owned = |t: (&str, &str, &str)| Some((t.0.to_owned(), t.1.to_owned(), t.2.to_owned()));
    assert_eq!(decode_item_key(&ka), owned(a));
    assert_eq!(ka.cmp(&kb), a.cmp(&b), "key order differs from id order for {a:?} and {b:?}");
}

/// Everything a peer sends (Raft RPCs and their answers, forwarded writes and their outcomes),
/// and the records a node keeps in RocksDB: the first byte picks the type.
pub fn messages(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 10 {
        0 => round_trip::<AppendEntriesRequest<TypeConfig>>(body),
        1 => round_trip::<AppendEntriesResponse<u64>>(body),
        2 => round_trip::<VoteRequest<u64>>(body),
        3 => round_trip::<VoteResponse<u64>>(body),
        4 => round_trip::<InstallSnapshotRequest<TypeConfig>>(body),
        5 => round_trip::<InstallSnapshotResponse<u64>>(body),
        6 => round_trip::<Write>(body),
        7 => round_trip::<WriteOutcome>(body),
        8 => round_trip::<ItemRecord>(body),
        _ => round_trip::<MachineMeta>(body),
    }
}

/// Decodes as the peer transport does; what decodes re-encodes to bytes that decode and
/// encode the same again.
fn round_trip<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
    if let Ok(value) = peer::decode::<T>(bytes, "fuzz") {
        let once = peer::encode(&value);
        let again = peer::encode(&peer::decode::<T>(&once, "fuzz").expect("what was encoded decodes"));
        assert_eq!(once, again);
    }
}

/// Client requests as the Store service gets them: protobuf bytes, then validation. A request
/// is accepted or refused with INVALID_ARGUMENT; an accepted write has ids the key encoding
/// can carry.
pub fn requests(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let limits = Limits::default();
    let refused = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(!status.message().is_empty());
    };
    let checked_write = |checked: Result<validate::CheckedWrite, tonic::Status>| match checked {
        Ok((write, _)) => {
            for op in &write.ops {
                let key = item_key(&write.user_id, op.collection(), op.item_id());
                let parts = (write.user_id.clone(), op.collection().to_owned(), op.item_id().to_owned());
                assert_eq!(decode_item_key(&key), Some(parts));
            }
        }
        Err(s) => refused(s),
    };
    match which % 7 {
        0 => {
            if let Ok(req) = PutRequest::decode(body) {
                checked_write(validate::put(&limits, req));
            }
        }
        1 => {
            if let Ok(req) = DeleteRequest::decode(body) {
                checked_write(validate::delete(&limits, req));
            }
        }
        2 => {
            if let Ok(req) = BatchRequest::decode(body) {
                checked_write(validate::batch_request(&limits, req));
            }
        }
        3 => {
            if let Ok(req) = GetRequest::decode(body) {
                let _ = validate::get(&limits, &req).map_err(refused);
            }
        }
        4 => {
            if let Ok(req) = ListRequest::decode(body) {
                match validate::list(&limits, req) {
                    Ok(q) => assert!(q.size >= 1 && q.size <= limits.max_page_size as usize),
                    Err(s) => refused(s),
                }
            }
        }
        5 => {
            if let Ok(req) = ChangesRequest::decode(body) {
                let _ = validate::user_read(&limits, &req.user_id, req.consistency).map_err(refused);
            }
        }
        _ => {
            if let Ok(req) = ExportUserRequest::decode(body) {
                let _ = validate::user_read(&limits, &req.user_id, req.consistency).map_err(refused);
            }
        }
    }
}
