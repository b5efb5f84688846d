//! Restores from the archive alone, with real processes: the Sidekick test (every node and
//! every disk lost at once, the archive in a real S3-compatible server), point-in-time restores
//! by index and by time, the change-feed resync status for cursors from the lost timeline, and
//! restores and drills that refuse to report success for less than was asked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keepsake::proto::v1::*;
use keepsake_archive::envelope::Kind;
use keepsake_archive::segment::Segment;

use crate::common::*;

const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The archive's newest segment, decoded (read through object_store, as a restore reads it).
async fn last_segment(cluster: &Cluster) -> Segment {
    use object_store::ObjectStoreExt;
    let archive = cluster.open_archive();
    let listed = keepsake_archive::verify::list(&archive).await.expect("list the archive's segments");
    let newest = listed.iter().max_by_key(|s| s.last).expect("at least one segment");
    let path = object_store::path::Path::from(newest.name.as_str());
    let bytes = archive.store.get(&path).await.expect("get").bytes().await.expect("read the segment");
    let opened = archive.keys.open(Kind::Segment, &newest.name, &bytes).expect("the newest segment opens");
    Segment::decode(&newest.name, &opened.bytes).expect("the newest segment decodes")
}

/// What anyone holding `bytes` can read without a key: the bytes, and every zstd frame found
/// in them, decompressed (a plaintext archive's values are compressed, not hidden).
fn readable_forms(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![bytes.to_vec()];
    for at in 0..bytes.len().saturating_sub(4) {
        if bytes[at..at + 4] == [0x28, 0xb5, 0x2f, 0xfd] {
            let mut frame = Vec::new();
            let decoder = zstd::stream::read::Decoder::new(&bytes[at..]).map(|d| d.single_frame());
            if decoder.and_then(|mut d| std::io::Read::read_to_end(&mut d, &mut frame)).is_ok() {
                out.push(frame);
            }
        }
    }
    out
}

#[test]
fn a_plaintext_segment_shows_its_values_to_readable_forms() {
    let entry = keepsake_archive::proto::ArchivedEntry { index: 1, term: 1, ..Default::default() };
    let mut plain = Segment::new("c", vec![entry], [0; 32]).encode();
    assert!(readable_forms(&plain).len() > 1, "the segment's zstd frame is found and read");
    plain.extend_from_slice(&zstd::bulk::compress(b"contact w0-1 and contact w0-2", 3).unwrap());
    assert!(readable_forms(&plain).iter().any(|r| r.windows(8).any(|w| w == b"contact ")));
}

/// Every object under `prefix` in the bucket: (name, bytes).
async fn every_object(s3: &S3Server, prefix: &str, cluster: &Cluster) -> Vec<(String, Vec<u8>)> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let archive = cluster.open_archive_at(&s3.url(prefix));
    let listed: Vec<_> = archive.store.list(Some(&archive.root)).try_collect().await.expect("list the bucket");
    let mut out = Vec::new();
    for o in listed {
        let bytes = archive.store.get(&o.location).await.expect("get").bytes().await.expect("read an object");
        out.push((o.location.to_string(), bytes.to_vec()));
    }
    out
}

#[derive(Clone, Debug)]
struct Acked {
    value: Vec<u8>,
    log_index: u64,
    archived: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidekick_losing_every_node_and_disk_loses_no_archived_write() {
    sidekick(None).await;
}

/// The Sidekick test with the archive encrypted: it passes the same, and no value or user id
/// written appears in any object of the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidekick_with_an_encrypted_archive_loses_nothing_and_the_bucket_holds_no_value() {
    let keys = tempfile::tempdir().expect("a directory for the key file");
    let ring = format!("{} {}:active", key_entry("sidekick-2026-11"), key_entry("sidekick-2026-12"));
    sidekick(Some(&write_key_file(&keys.path().join("archive.keys"), &ring))).await;
}

/// Every node and every disk lost at once, mid-write; the archive (sealed with the ring in
/// `key_file`, if given) restores every acknowledged ARCHIVED write.
async fn sidekick(key_file: Option<&std::path::Path>) {
    let s3 = S3Server::start();
    let builder = |b: ClusterBuilder| match key_file {
        Some(file) => b.archive_key_file(file),
        None => b,
    };
    let old = builder(Cluster::builder().archive_s3(&s3, "sidekick")).start().await;
    old.wait_for_leader(LEADER_TIMEOUT).await;
    let acked: Arc<Mutex<BTreeMap<String, Acked>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let clients = old.stores(&old.ids());
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let archived = w % 2 == 0; // half the clients ask for ARCHIVED
                let durability = if archived { Durability::Archived } else { Durability::Quorum } as i32;
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("w{w}-{i}");
                    let value = format!("contact {id}").into_bytes();
                    let req = PutRequest {
                        key: Some(key("sidekick-user", "contacts", &id)),
                        value: value.clone(),
                        durability,
                        ..Default::default()
                    };
                    let mut c = clients[i % clients.len()].clone();
                    if let Ok(r) = bounded(c.put(request(req, Duration::from_secs(3)))).await {
                        acked.lock().expect("lock").insert(id, Acked { value, log_index: r.log_index, archived });
                    }
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // An archive snapshot mid-write, so the restore starts from chunks and replays segments.
    let (code, text) = cluster_cli(&old, &["backup", "snapshot", "--timeout", "60s"]);
    assert_eq!(code, 0, "backup snapshot: {text}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The disaster: every node dies at once, mid-write, and every disk is lost.
    for id in old.ids() {
        old.kill(id);
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    for id in old.ids() {
        std::fs::remove_dir_all(old.data_dir(id)).expect("lose the disk");
    }
    let archived_head = last_segment(&old).await;

    if key_file.is_some() {
        let objects = every_object(&s3, "sidekick", &old).await;
        assert!(objects.iter().any(|(name, _)| name.contains("/chunks/")), "the archive holds snapshot chunks");
        for (name, bytes) in &objects {
            for readable in readable_forms(bytes) {
                assert!(!readable.windows(8).any(|w| w == b"contact "), "{name} holds a value in the clear");
                assert!(!readable.windows(13).any(|w| w == b"sidekick-user"), "{name} holds a user id in the clear");
            }
            assert!(bytes.starts_with(keepsake_archive::envelope::MAGIC), "{name} is not sealed");
        }
    }

    let new = builder(Cluster::builder().cluster_id("sidekick-restored").archive_s3(&s3, "sidekick"))
        .no_bootstrap()
        .prepare();
    let (code, text) = restore_cli(&old, &new, &[]);
    assert_eq!(code, 0, "restore succeeds: {text}");
    println!("{text}");
    assert!(text.contains("started from the snapshot at index") && !text.contains("passed over"), "{text}");
    new.launch(3).await;
    let leader = new.wait_for_leader(LEADER_TIMEOUT).await;

    let acked = acked.lock().expect("lock").clone();
    let head = archived_head.header.last_index;
    let mut client = new.store(leader);
    let (mut archived_ok, mut archived_lost, mut covered_ok, mut covered_lost, mut beyond) = (0, 0, 0, 0, 0);
    for (id, a) in &acked {
        let found = get(&mut client, "sidekick-user", "contacts", id).await.ok().map(|item| item.value);
        let present = found.as_deref() == Some(a.value.as_slice());
        match (a.archived, a.log_index <= head) {
            (true, _) if present => archived_ok += 1,
            (true, _) => archived_lost += 1,
            (false, true) if present => covered_ok += 1,
            (false, true) => covered_lost += 1,
            (false, false) => beyond += 1,
        }
    }
    println!(
        "acknowledged: {} | ARCHIVED present {archived_ok}, lost {archived_lost} | QUORUM at or below the archive head \
         ({head}) present {covered_ok}, lost {covered_lost} | QUORUM beyond the head: {beyond}",
        acked.len()
    );
    assert!(archived_ok > 0 && covered_ok > 0, "the test wrote both kinds");
    assert_eq!(archived_lost, 0, "every acknowledged ARCHIVED write survives losing every node");
    assert_eq!(covered_lost, 0, "every acknowledged write the archive reached survives");

    // The restored state is the archived state: the same digest on every new node, at index 1
    // (the new cluster's first entry, its first leader's blank one; the history record that
    // leader writes next changes the digest, as any write would).
    let hex = keepsake_raft::Digest(archived_head.header.digest_after).to_hex();
    for id in new.ids() {
        let d = eventually(Duration::from_secs(10), || async {
            let d = new
                .admin(id)
                .digest(request(DigestRequest { index: 1 }, Duration::from_secs(2)))
                .await
                .ok()?
                .into_inner();
            (d.digest == hex).then_some(d)
        })
        .await;
        assert!(d.is_some(), "node {id} of the restored cluster does not reach the archived digest {hex}");
    }
}

/// Puts `t` ten times in a row (`v1` to `v10`) and waits until the archive holds them; returns
/// each put's response.
async fn ten_versions(cluster: &Cluster) -> Vec<PutResponse> {
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let mut store = cluster.store(leader);
    let mut out = Vec::new();
    for v in 1..=10 {
        out.push(put(&mut store, "pit", "notes", "t", format!("v{v}")).await.expect("put"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = out.last().expect("ten puts").log_index;
    let archived = eventually(Duration::from_secs(10), || async {
        let s =
            cluster.admin(leader).backup_status(request(BackupStatusRequest {}, Duration::from_secs(2))).await.ok()?;
        s.into_inner().archived_index.filter(|a| *a >= last)
    })
    .await;
    assert!(archived.is_some(), "the ten versions reach the archive");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn point_in_time_restore_by_index_and_by_time_gives_exactly_that_state() {
    let s3 = S3Server::start();
    let old = Cluster::builder().archive_s3(&s3, "pit").start().await;
    let versions = ten_versions(&old).await;

    // By index: the state right after the fifth put.
    let by_index = Cluster::builder().nodes(1).cluster_id("pit-index").no_bootstrap().prepare();
    let at = versions[4].log_index.to_string();
    let (code, text) = restore_cli(&old, &by_index, &["--to-index", &at]);
    assert_eq!(code, 0, "{text}");
    by_index.launch(1).await;
    let item = get(&mut by_index.store(1), "pit", "notes", "t").await.expect("the item exists");
    assert_eq!(item.value, b"v5");
    assert_eq!(item.revision, versions[4].revision);

    // By time: every write made at or before the seventh put's time.
    let by_time = Cluster::builder().nodes(1).cluster_id("pit-time").no_bootstrap().prepare();
    let t = versions[6].updated_at.expect("updated_at");
    let when = chrono_like_rfc3339(t.seconds, t.nanos);
    let (code, text) = restore_cli(&old, &by_time, &["--to-time", &when]);
    assert_eq!(code, 0, "{text}");
    by_time.launch(1).await;
    let item = get(&mut by_time.store(1), "pit", "notes", "t").await.expect("the item exists");
    assert_eq!(item.value, b"v7", "restored to {when}");

    // A device whose cursor is from after the restore point is told to resync in full...
    let mut feed = by_index.store(1);
    let lost_cursor = versions[7].revision;
    let err = feed
        .changes(request(
            ChangesRequest { user_id: "pit".into(), since_revision: lost_cursor, ..Default::default() },
            Duration::from_secs(5),
        ))
        .await
        .expect_err("a cursor from the lost timeline is refused");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{}", err.message());
    assert!(err.message().contains("resync in full"), "{}", err.message());
    // ...and new writes never reuse a revision the old cluster handed out.
    let fresh = put(&mut by_index.store(1), "pit", "notes", "t", "after restore").await.expect("write after restore");
    assert!(fresh.revision > versions[9].revision, "revision {} moved backwards", fresh.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_refuses_a_damaged_archive_and_leaves_nothing_behind() {
    let s3 = S3Server::start();
    let old = Cluster::builder().archive_s3(&s3, "damaged").start().await;
    ten_versions(&old).await;
    let victim = old.segment_objects().await.last().expect("a segment").name.clone();
    let mut bytes = old.archive_object(&victim).await;
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    old.put_archive_object(&victim, bytes).await;

    let new = Cluster::builder().nodes(1).cluster_id("never").no_bootstrap().prepare();
    let (code, text) = restore_cli(&old, &new, &[]);
    assert_ne!(code, 0, "restoring a damaged archive fails");
    let name = victim.rsplit('/').next().expect("name").to_owned();
    assert!(text.contains(&name), "the failure names the damaged object {name}: {text}");
    assert!(!new.data_dir(1).exists(), "no half-written data directory is left behind");
}

/// The archive's last index as the live leader reports it.
async fn archived_index(cluster: &Cluster) -> u64 {
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let status = cluster.admin(leader).backup_status(request(BackupStatusRequest {}, Duration::from_secs(2))).await;
    status.expect("backup status").into_inner().archived_index.expect("something is archived")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_past_the_archives_end_fails_and_names_the_last_point() {
    let s3 = S3Server::start();
    let old = Cluster::builder().archive_s3(&s3, "past-end").start().await;
    ten_versions(&old).await;
    let last = archived_index(&old).await;
    let new = Cluster::builder().nodes(1).cluster_id("past-end-new").no_bootstrap().prepare();

    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (code, text) = restore_cli(&old, &new, &["--to-time", &future]);
    assert_eq!(code, 3, "a time past the archive's last write is not reached: {text}");
    assert!(text.contains("recovery target not reached"), "{text}");
    assert!(text.contains(&format!("the archive ends at index {last} ")), "names the last point: {text}");
    assert!(!new.data_dir(1).exists(), "nothing is left behind");

    let beyond = (last + 100).to_string();
    let (code, text) = restore_cli(&old, &new, &["--to-index", &beyond]);
    assert_eq!(code, 3, "an index past the archive's end is not reached: {text}");
    assert!(text.contains(&format!("--to-index {last}")), "names the last point: {text}");
    assert!(!new.data_dir(1).exists(), "nothing is left behind");

    // Asked for explicitly, the latest point restores, and the report says which point it is.
    let (code, text) = restore_cli(&old, &new, &["--to-time", "latest", "--output", "json"]);
    assert_eq!(code, 0, "{text}");
    let report = json_line(&text);
    assert_eq!(report["target"], "latest", "{text}");
    assert_eq!(report["index"].as_u64(), Some(last), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_and_a_drill_fail_when_the_newest_segments_are_gone() {
    let s3 = S3Server::start();
    let old = Cluster::builder().archive_s3(&s3, "truncated").start().await;
    ten_versions(&old).await;
    let last = archived_index(&old).await;
    let segments = old.segment_objects().await;
    assert!(segments.len() >= 2, "the ten versions span several segments: {segments:?}");
    let newest = segments.iter().max_by_key(|s| s.last).expect("a segment").clone();
    assert_eq!(newest.last, last);
    old.delete_archive_object(&newest.name).await;
    let leader = old.wait_for_leader(LEADER_TIMEOUT).await;

    // `head` still names the lost index: a restore to the latest point sees the gap.
    let new = Cluster::builder().nodes(1).cluster_id("truncated-new").no_bootstrap().prepare();
    let (code, text) = restore_cli(&old, &new, &[]);
    assert_ne!(code, 0, "a restore to the latest point fails: {text}");
    assert!(text.contains(&format!("head says index {last} is archived")), "{text}");
    assert!(!new.data_dir(1).exists(), "nothing is left behind");
    let (code, text) = archive_cli(&old, &["drill", "--endpoints", &old.client_addr(leader)]);
    assert_ne!(code, 0, "the drill fails: {text}");
    assert!(text.contains(&format!("head says index {last} is archived")), "{text}");
    let (code, text) = archive_cli(&old, &["backup", "verify"]);
    assert_ne!(code, 0, "verify names the loss: {text}");
    assert!(text.contains(&format!("head says index {last} is archived")), "{text}");

    // With `head` forged to match, the archive looks whole, yet the live cluster archived more.
    let head = old.open_archive().path("head").to_string();
    let reached = newest.first - 1;
    old.put_archive_object(&head, format!("{{\"archived_index\":{reached}}}").into_bytes()).await;
    let (code, text) = archive_cli(&old, &["drill", "--endpoints", &old.client_addr(leader)]);
    assert_ne!(code, 0, "the drill fails: {text}");
    assert!(
        text.contains(&format!("restores only to index {reached}, but the live cluster had archived up to {last}")),
        "{text}"
    );
}

/// RFC 3339 in UTC from a protobuf timestamp.
fn chrono_like_rfc3339(seconds: i64, nanos: i32) -> String {
    chrono::DateTime::from_timestamp(seconds, nanos as u32).expect("a valid time").to_rfc3339()
}

/// The archive in `tests/integration/fixtures/archive-digest-v1`: written before the digest had
/// formats (every digest in it is format 1), with puts, overwrites, deletes and content types.
const FORMAT_1_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/integration/fixtures/archive-digest-v1");

/// Uploads the fixture archive of cluster `keepsake-dev` under `cluster`'s root.
async fn upload_fixture(cluster: &Cluster) {
    use object_store::ObjectStoreExt;
    let archive = cluster.open_archive();
    let root = std::path::Path::new(FORMAT_1_FIXTURE).join("keepsake-dev");
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read the fixture") {
            let path = entry.expect("a fixture entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path.strip_prefix(&root).expect("under the root").to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).expect("read a fixture object");
            archive.store.put(&archive.path(&name), bytes.into()).await.expect("upload a fixture object");
        }
    }
}

/// Each node's state digest format, from its status (0: it could not be asked).
async fn digest_formats(cluster: &Cluster, ids: &[u64]) -> Vec<u32> {
    let mut formats = Vec::new();
    for id in ids {
        formats.push(cluster.get_node_status(*id).await.map_or(0, |s| s.digest_format));
    }
    formats
}

/// An archive written before digest format 2 still restores, its format 1 digests checked at
/// the snapshot and after every segment. The restored cluster moves to format 2 only once every
/// member can sum it: while node 3 is down the leader names it and waits; once it is up, every
/// node re-sums alike at one index, and a drill of the new archive, whose snapshot is format 1
/// and whose segments cross the switch, matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_archive_summed_in_digest_format_1_restores_and_moves_to_format_2() {
    let s3 = S3Server::start();
    let old = Cluster::builder().cluster_id("keepsake-dev").archive_s3(&s3, "formats").no_bootstrap().prepare();
    upload_fixture(&old).await;
    let (code, text) = verify_cli(&old);
    assert_eq!(code, 0, "the fixture verifies: {text}");

    let new = Cluster::builder().cluster_id("formats-new").archive_s3(&s3, "formats").no_bootstrap().prepare();
    let (code, text) = restore_cli(&old, &new, &["--output", "json"]);
    assert_eq!(code, 0, "a format 1 archive restores: {text}");
    let report = json_line(&text);
    // What the cluster that wrote the fixture reported (`keepsake cluster digest --index 12`).
    assert_eq!(report["index"].as_u64(), Some(12), "{text}");
    assert_eq!(report["digest"], "bb6a8e546849ea089936ae55a1508192380c222ef794880d85e77f4537ca0066", "{text}");
    assert_eq!((report["items"].as_u64(), report["revision"].as_u64()), (Some(6), Some(11)), "{text}");

    new.launch(2).await;
    let leader = new.wait_for_leader(LEADER_TIMEOUT).await;
    let mut client = new.store(leader);
    let photo = get(&mut client, "alice", "photos", "p1").await.expect("the restored photo");
    assert_eq!(photo.content_type, "application/octet-stream");
    assert!(get(&mut client, "alice", "contacts", "carol").await.is_err(), "the deleted contact stays deleted");
    let archived = |id: &str| PutRequest {
        key: Some(key("alice", "notes", id)),
        value: b"after the restore".to_vec(),
        durability: Durability::Archived as i32,
        ..Default::default()
    };
    // An ARCHIVED write waits for the new history's record.
    client.put(request(archived("n2"), Duration::from_secs(20))).await.expect("an archived put");
    let waiting = eventually(Duration::from_secs(20), || async {
        new.log_tail(leader, 200).contains("until every member can sum format 2: node 3 cannot be asked").then_some(())
    })
    .await;
    assert!(waiting.is_some(), "the leader names the member it waits for: {}", new.log_tail(leader, 40));
    let still = digest_formats(&new, &[1, 2]).await;
    assert_eq!(still, [1, 1], "no switch while a member cannot say it sums format 2");

    new.restart(3);
    let moved = eventually(Duration::from_secs(30), || async {
        (digest_formats(&new, &new.ids()).await == [2, 2, 2]).then_some(())
    })
    .await;
    assert!(moved.is_some(), "every node moves to format 2: {:?}", digest_formats(&new, &new.ids()).await);
    let put = client.put(request(archived("n3"), Duration::from_secs(20))).await.expect("an archived put");
    let digests = new.digests_at(put.into_inner().log_index, Duration::from_secs(10)).await;
    assert!(digests.iter().all(|(_, d)| d.digest == digests[0].1.digest), "every node re-summed alike: {digests:?}");

    let (code, text) = archive_cli(&new, &["drill", "--endpoints", &new.endpoints()]);
    assert_eq!(code, 0, "the drill across the switch matches: {text}");
    let (code, text) = cluster_cli(&new, &["cluster", "status"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.matches(" v2").count(), 3, "`cluster status` shows each node's format: {text}");
}
