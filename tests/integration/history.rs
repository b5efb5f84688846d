//! One history per archive root: a second cluster with the same id and archive refuses it
//! while the first loses nothing; a restore refuses a root that holds objects; and `verify`
//! and restore name a segment spliced in from another history, an entry skipped inside a
//! segment, and a forged `head`.

use std::time::Duration;

use keepsake::proto::v1::*;
use keepsake_archive::segment::Segment;
use keepsake_raft::HistoryId;

use crate::common::*;

const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

fn archived_put(user: &str, id: &str) -> PutRequest {
    PutRequest {
        key: Some(key(user, "c", id)),
        value: b"archived".to_vec(),
        durability: Durability::Archived as i32,
        ..Default::default()
    }
}

/// A cluster whose archive holds several segments, every write archived.
async fn archived_cluster(s3: &S3Server, prefix: &str) -> Cluster {
    let cluster = Cluster::builder().archive_s3(s3, prefix).start().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let mut store = cluster.store(leader);
    for round in 0..4 {
        for i in 0..20 {
            put(&mut store, "h", "c", &item_id(round * 20 + i), "value").await.expect("write");
        }
        tokio::time::sleep(Duration::from_millis(300)).await; // a segment per round
    }
    bounded(store.put(request(archived_put("h", "last"), Duration::from_secs(20)))).await.expect("an ARCHIVED write");
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_cluster_with_the_same_id_and_archive_refuses_and_the_first_loses_nothing() {
    let s3 = S3Server::start();
    let first = Cluster::builder().archive_s3(&s3, "shared").start().await;
    let leader = first.wait_for_leader(LEADER_TIMEOUT).await;
    let mut store = first.store(leader);
    for i in 0..10 {
        put(&mut store, "a", "c", &item_id(i), "from the first cluster").await.expect("write");
    }
    bounded(store.put(request(archived_put("a", "first"), Duration::from_secs(20)))).await.expect("archived");

    // Rendered from the same config and running at the same time, the second cluster commits
    // more entries than the first has archived, so the only check before history ids (the
    // archive is past my log) could not see it; archive-info.json names the first's history.
    let second = Cluster::builder().archive_s3(&s3, "shared").start().await;
    let leader2 = second.wait_for_leader(LEADER_TIMEOUT).await;
    let mut store2 = second.store(leader2);
    for i in 0..60 {
        put(&mut store2, "b", "c", &item_id(i), "from the second cluster").await.expect("a quorum write");
    }
    let refused = eventually(Duration::from_secs(20), || async {
        let leader = second.leader_id().await?;
        let s = second.backup_status(leader).await;
        (!s.refused.is_empty()).then_some((leader, s))
    })
    .await;
    let (leader2, status) = refused.expect("the second cluster refuses the first's archive");
    assert!(status.refused.contains("belongs to history"), "{}", status.refused);
    assert!(status.history_id.is_empty(), "a refusing leader archives as no history");

    // Every place an operator or a gateway looks says so.
    let answer = bounded(second.store(leader2).put(request(archived_put("b", "archived"), Duration::from_secs(10))))
        .await
        .expect_err("an ARCHIVED write on a refusing leader");
    assert_eq!(answer.code(), tonic::Code::ResourceExhausted, "{answer:?}");
    assert!(answer.message().contains("refused"), "{}", answer.message());
    let (code, body) = https_request(&second.http_addr(leader2), "GET", "/readyz").expect("GET /readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("refusing to archive"), "{body}");
    assert_eq!(metric(&second, leader2, "keepsake_archive_refused"), 1.0);

    // The first cluster archives on, ARCHIVED writes included, and its archive holds only its
    // own history: verify is clean and the drill matches the live state.
    for i in 0..5 {
        bounded(store.put(request(archived_put("a", &format!("after-{i}")), Duration::from_secs(20))))
            .await
            .expect("the first cluster's ARCHIVED writes go on");
    }
    let first_history = first.backup_status(leader).await.history_id;
    assert_eq!(first_history.len(), 32, "the first cluster archives as its history");
    for listed in first.segment_objects().await {
        let segment = Segment::decode(&listed.name, &first.archive_object(&listed.name).await).expect("decodes");
        assert_eq!(
            segment.header.history.map(|h| h.to_hex()).as_deref(),
            Some(first_history.as_str()),
            "{} is the first cluster's",
            listed.name
        );
    }
    let (code, text) = verify_cli(&first);
    assert_eq!(code, 0, "the first cluster's archive verifies: {text}");
    let (code, text) = archive_cli(&first, &["drill", "--endpoints", &first.client_addr(leader)]);
    assert_eq!(code, 0, "the drill matches the first cluster: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_into_a_root_that_holds_objects_is_refused() {
    let s3 = S3Server::start();
    let old = archived_cluster(&s3, "roots").await;
    // An earlier attempt at the same restore left a cluster archiving under the new id.
    let earlier = Cluster::builder().cluster_id("roots-restored").archive_s3(&s3, "roots").start().await;
    let leader = earlier.wait_for_leader(LEADER_TIMEOUT).await;
    put(&mut earlier.store(leader), "e", "c", "x", "earlier attempt").await.expect("write");
    eventually(Duration::from_secs(20), || async {
        (earlier.backup_status(leader).await.archived_index.is_some()).then_some(())
    })
    .await
    .expect("the earlier attempt archived");
    drop(earlier);

    let new = Cluster::builder().nodes(1).cluster_id("roots-restored").no_bootstrap().prepare();
    let (code, text) = restore_cli(&old, &new, &[]);
    assert_ne!(code, 0, "a restore into a root that holds objects is refused: {text}");
    assert!(text.contains("already holds objects") && text.contains("roots-restored"), "{text}");
    assert!(!new.data_dir(1).exists(), "nothing was restored");
}

/// Re-encodes a segment object as `f` changes it, under the name its range gives.
async fn rewrite_segment(cluster: &Cluster, name: &str, f: impl FnOnce(Segment) -> Segment) -> String {
    let original = Segment::decode(name, &cluster.archive_object(name).await).expect("decodes");
    let changed = f(original);
    let new_name = format!("{}/{}", cluster.open_archive().root, changed.object_name());
    cluster.delete_archive_object(name).await;
    cluster.put_archive_object(&new_name, changed.encode()).await;
    new_name
}

fn restore_latest(from: &Cluster, id: &str) -> (i32, String) {
    let new = Cluster::builder().nodes(1).cluster_id(id).no_bootstrap().prepare();
    restore_cli(from, &new, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_and_restore_name_a_segment_spliced_in_from_another_history() {
    let s3 = S3Server::start();
    let cluster = archived_cluster(&s3, "splice").await;
    let segments = cluster.segment_objects().await;
    assert!(segments.len() >= 3, "{segments:?}");
    let victim = segments[segments.len() / 2].name.clone();
    let other = HistoryId::random();
    rewrite_segment(&cluster, &victim, |s| {
        let prev = s.header.prev;
        Segment::new(&s.header.cluster_id, s.entries, s.header.digest_after).in_history(other, prev)
    })
    .await;
    let (code, text) = verify_cli(&cluster);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&other.to_hex()) && text.contains("spliced"), "verify names the splice: {text}");
    let (code, text) = restore_latest(&cluster, "splice-restored");
    assert_ne!(code, 0, "{text}");
    assert!(text.contains(&other.to_hex()) && text.contains("spliced"), "restore names the splice: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_and_restore_name_an_entry_skipped_inside_a_segment() {
    let s3 = S3Server::start();
    let cluster = archived_cluster(&s3, "skip").await;
    let segments = cluster.segment_objects().await;
    // Not the last segment: the one after it must be there to show the entry is missing.
    let victim = segments[..segments.len() - 1]
        .iter()
        .find(|s| s.last - s.first >= 3)
        .expect("a segment of several entries before the last")
        .clone();
    // Drop one entry and renumber the rest, checksums and all: the segment decodes, and the
    // gap it leaves (or the digest it no longer replays to) gives it away.
    let forged = rewrite_segment(&cluster, &victim.name, |s| {
        let (history, prev) = (s.header.history.expect("a history"), s.header.prev);
        let mut entries = s.entries;
        entries.remove(1);
        for (k, e) in entries.iter_mut().enumerate() {
            e.index = victim.first + k as u64;
        }
        Segment::new(&s.header.cluster_id, entries, s.header.digest_after).in_history(history, prev)
    })
    .await;
    let (code, text) = verify_cli(&cluster);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("entries {}-{}", victim.last, victim.last)), "verify names the gap: {text}");
    let (code, text) = restore_latest(&cluster, "skip-restored");
    assert_ne!(code, 0, "{text}");
    // Depending on what the dropped entry did, the replayed digest shows it first or the gap does.
    let forged_file = forged.rsplit('/').next().expect("a file name");
    assert!(
        text.contains(&format!("entry {}", victim.last)) || text.contains(forged_file),
        "restore names the missing entry or the forged segment: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_and_restore_name_a_forged_head() {
    let s3 = S3Server::start();
    let cluster = archived_cluster(&s3, "forged").await;
    let last = cluster.segment_objects().await.last().expect("a segment").last;
    // Another history's head (a forger who can write to the bucket, or a second cluster).
    let other = HistoryId::random();
    let head = format!("{}/head", cluster.open_archive().root);
    cluster.put_archive_object(&head, keepsake_archive::head::encode(last, other, 99)).await;
    let (code, text) = verify_cli(&cluster);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("forged or foreign head") && text.contains(&other.to_hex()), "{text}");
    let (code, text) = restore_latest(&cluster, "forged-restored");
    assert_ne!(code, 0, "{text}");
    assert!(text.contains(&other.to_hex()) && text.contains("head"), "{text}");
    // This history's head claiming more than the segments hold is named too.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_and_restore_name_a_changed_entry_by_the_link_of_the_segment_after_it() {
    let s3 = S3Server::start();
    let cluster = archived_cluster(&s3, "relink").await;
    let segments = cluster.segment_objects().await;
    assert!(segments.len() >= 3, "{segments:?}");
    let victim = segments[segments.len() / 2].clone();
    // The last entry keeps its index and its effect on the state (only its term changes), and
    // every checksum is recomputed: the digests still replay, only the next segment's link
    // to that entry shows it.
    rewrite_segment(&cluster, &victim.name, |s| {
        let (history, prev) = (s.header.history.expect("a history"), s.header.prev);
        let mut entries = s.entries;
        entries.last_mut().expect("an entry").term += 1;
        Segment::new(&s.header.cluster_id, entries, s.header.digest_after).in_history(history, prev)
    })
    .await;
    let expected = format!("continues from entry {}", victim.last);
    let (code, text) = verify_cli(&cluster);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&expected), "verify names the broken link: {text}");
    let (code, text) = restore_latest(&cluster, "relink-restored");
    assert_ne!(code, 0, "{text}");
    assert!(text.contains(&expected), "restore names the broken link: {text}");
}

/// Retention on a leader that no longer leads: frozen after it chose what to delete, and let
/// go once a newer leader has written a snapshot of the same state. The chunks it deletes are
/// ones the newer snapshot would have shared had chunks not been kept per term, so a newer
/// leader's manifest never names a chunk a deposed one may delete (bug 13's window, closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs the failpoints feature: ops/test.sh turns it on")]
async fn a_deposed_leaders_retention_deletes_nothing_a_newer_leaders_snapshot_names() {
    const STOP: &str = "retention-before-delete";
    const GRACE: Duration = Duration::from_secs(3);
    let s3 = S3Server::start();
    let cluster = Cluster::builder()
        .archive_s3(&s3, "deposed")
        .archive_snapshots_on_demand()
        .archive_option("retention", "\"1s\"")
        .archive_option("chunk_grace_seconds", &GRACE.as_secs().to_string())
        .start()
        .await;
    let clients = cluster.stores(&cluster.ids());
    write_items(&clients, "d", "base", 0..300, 8).await;
    let (code, text) = cluster_cli(&cluster, &["backup", "snapshot", "--timeout", "60s"]);
    assert_eq!(code, 0, "the base snapshot: {text}");
    write_items(&clients, "d", "more", 0..100, 8).await;

    // A leader dies with a snapshot's chunks uploaded and no manifest naming them.
    let deposed = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    cluster.kill(deposed);
    cluster.restart_crashing_at(deposed, "archive-chunks-uploaded");
    cluster.make_leader(deposed).await;
    let (code, text) = cluster_cli(&cluster, &["backup", "snapshot", "--timeout", "20s"]);
    assert_ne!(code, 0, "{text}");
    cluster.wait_for_crash(deposed, "archive-chunks-uploaded", Duration::from_secs(30)).await;
    // Past the grace, it leads again and its retention picks those chunks to delete; it is
    // frozen right there, and a newer leader takes over.
    tokio::time::sleep(GRACE + Duration::from_millis(500)).await;
    cluster.restart_stopping_at(deposed, STOP);
    cluster.make_leader(deposed).await;
    cluster.wait_for_stop(deposed, STOP, Duration::from_secs(30)).await;
    // A restore lease keeps the newer leader's own retention off those chunks meanwhile.
    let archive = cluster.open_archive();
    let lease = keepsake_archive::lease::LeaseGuard::take(&archive, "test").await.expect("a lease");
    let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != deposed).collect();
    let newer = cluster.leader_among(&others, Duration::from_secs(20)).await;
    // Asked directly: the frozen node would hold a request to its whole timeout.
    let (code, text) =
        keepsake_cli(&["backup", "snapshot", "--timeout", "60s", "--endpoints", &cluster.client_addr(newer)]);
    assert_eq!(code, 0, "the newer leader's snapshot of the same state: {text}");

    cluster.resume(deposed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    lease.release().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(leader, deposed, "leadership stayed with the newer leader");
    let (code, text) = verify_cli(&cluster);
    assert_eq!(code, 0, "every chunk the newer snapshot names is there: {text}");
    let (code, text) = archive_cli(&cluster, &["drill", "--endpoints", &cluster.client_addr(leader)]);
    assert_eq!(code, 0, "the drill matches: {text}");
}

/// One chunk, shared by every archive snapshot, has a bit flipped in the bucket: `verify`
/// names it, a restore to the latest point still gets there (passing over every snapshot and
/// replaying the segments), and a scrub rewrites the chunk from the leader's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_chunk_shared_by_every_snapshot_is_routed_around_named_and_repaired() {
    use keepsake_archive::snapshot::{chunk_name, decode_manifest, ChunkId};
    let s3 = S3Server::start();
    let cluster = Cluster::builder()
        .archive_s3(&s3, "scrub")
        .archive_snapshots_on_demand()
        .archive_option("scrub_bytes_per_second", "0")
        .start()
        .await;
    let clients = cluster.stores(&cluster.ids());
    write_items(&clients, "s", "a", 0..300, 8).await;
    let (code, text) = cluster_cli(&cluster, &["backup", "snapshot", "--timeout", "60s"]);
    assert_eq!(code, 0, "{text}");
    write_items(&clients, "s", "z", 0..50, 8).await;
    let (code, text) = cluster_cli(&cluster, &["backup", "snapshot", "--timeout", "60s"]);
    assert_eq!(code, 0, "{text}");

    let archive = cluster.open_archive();
    let snapshots = keepsake_archive::verify::list_snapshots(&archive).await.expect("list");
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let mut named: Vec<std::collections::BTreeSet<ChunkId>> = Vec::new();
    for (_, name, _) in &snapshots {
        let m = decode_manifest(name, &cluster.archive_object(name).await).expect("a manifest");
        named.push(m.chunks.iter().filter_map(ChunkId::of).collect());
    }
    // The same content in both (under one term, or copied to a new leader's): flip a bit in
    // every object holding it.
    let hashes = |set: &std::collections::BTreeSet<ChunkId>| set.iter().map(|id| id.hash).collect::<Vec<_>>();
    let shared = *hashes(&named[0]).iter().find(|h| hashes(&named[1]).contains(h)).expect("a chunk both name");
    let objects: Vec<String> = named
        .iter()
        .flatten()
        .filter(|id| id.hash == shared)
        .map(|id| format!("{}/{}", archive.root, chunk_name(id)))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for object in &objects {
        let mut bytes = cluster.archive_object(object).await;
        let at = bytes.len() / 2;
        bytes[at] ^= 0x04;
        cluster.put_archive_object(object, bytes).await;
    }
    let object = objects.last().expect("an object").clone();

    let (code, text) = verify_cli(&cluster);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&object), "verify names the chunk: {text}");

    let new = Cluster::builder().nodes(1).cluster_id("scrub-restored").no_bootstrap().prepare();
    let (code, text) = restore_cli(&cluster, &new, &["--output", "json"]);
    assert_eq!(code, 0, "the restore routes around the damaged chunk: {text}");
    let report = json_line(&text);
    assert_eq!(report["items"].as_u64(), Some(350 + SYSTEM_ITEMS), "it reaches the latest point: {text}");
    assert_eq!(report["passed_over"].as_array().map(Vec::len), Some(2), "both snapshots are passed over: {text}");

    let (code, text) = cluster_cli(&cluster, &["backup", "scrub", "--timeout", "60s"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("repaired: {object}")), "the scrub rewrites the chunk: {text}");
    let (code, text) = verify_cli(&cluster);
    assert_eq!(code, 0, "the archive verifies once scrubbed: {text}");
}

/// A gateway that writes QUORUM learns from `WatchArchived` when its writes reach object
/// storage: positions never go back, and once one covers a write's revision, the archive holds
/// that write's log index.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_archived_tells_a_gateway_when_its_quorum_writes_are_in_the_archive() {
    use futures::StreamExt;
    let s3 = S3Server::start();
    let cluster = Cluster::builder().archive_s3(&s3, "receipts").start().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.other(&[leader]);
    let mut stream = bounded(cluster.store(follower).watch_archived(request(WatchArchivedRequest {}, LONG)))
        .await
        .expect("a WatchArchived stream on a follower");
    let mut store = cluster.store(leader);
    let mut last = PutResponse::default();
    for i in 0..50 {
        last = put(&mut store, "g", "c", &item_id(i), "quorum").await.expect("a QUORUM write");
    }
    let mut seen: Vec<ArchivedPosition> = Vec::new();
    let covered = within(Duration::from_secs(20), async {
        while let Some(position) = stream.next().await {
            let position = position.expect("a position");
            seen.push(position);
            if position.revision >= last.revision {
                return position;
            }
        }
        panic!("the stream ended: {seen:?}");
    })
    .await;
    assert!(seen.windows(2).all(|w| w[0].log_index < w[1].log_index && w[0].revision <= w[1].revision), "{seen:?}");
    assert!(covered.log_index >= last.log_index, "{covered:?} covers {last:?}");
    let archived = cluster.segment_objects().await.iter().map(|s| s.last).max().unwrap_or(0);
    assert!(archived >= covered.log_index, "the archive holds index {} ({archived} listed)", covered.log_index);
}

const LONG: Duration = Duration::from_secs(60);

/// The archive is cluster state: a leader whose config names another archive archives nothing
/// there and says why; once every node names the new one, `backup adopt-archive` moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_configured_with_another_archive_refuses_until_the_cluster_adopts_it() {
    let s3 = S3Server::start();
    let cluster = Cluster::builder().archive_s3(&s3, "first-home").start().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let mut store = cluster.store(leader);
    bounded(store.put(request(archived_put("m", "before"), Duration::from_secs(20)))).await.expect("archived");
    let history = cluster.backup_status(leader).await.history_id;
    let elsewhere = cluster.open_archive().url.replace("first-home", "second-home");

    // One node's config names another archive; it is made leader.
    let odd = cluster.other(&[leader]);
    cluster.kill(odd);
    cluster.set_archive_url(odd, &elsewhere);
    cluster.restart(odd);
    cluster.make_leader(odd).await;
    let status = eventually(Duration::from_secs(20), || async {
        let s = cluster.backup_status(odd).await;
        (!s.refused.is_empty()).then_some(s)
    })
    .await
    .expect("the leader with another archive refuses");
    assert!(status.refused.contains("second-home") && status.refused.contains("first-home"), "{}", status.refused);
    let answer = bounded(cluster.store(odd).put(request(archived_put("m", "refused"), Duration::from_secs(10))))
        .await
        .expect_err("no ARCHIVED write while the leader refuses");
    assert_eq!(answer.code(), tonic::Code::ResourceExhausted, "{answer:?}");
    let second = cluster.open_archive_at(&elsewhere);
    assert!(
        keepsake_archive::info::read(&second).await.expect("read").is_none(),
        "nothing was written to the archive only one node names"
    );

    // Every node names the new archive, and the cluster adopts it.
    for id in cluster.ids().into_iter().filter(|id| *id != odd) {
        cluster.kill(id);
        cluster.set_archive_url(id, &elsewhere);
        cluster.restart(id);
    }
    let (code, text) = cluster_cli(&cluster, &["backup", "adopt-archive"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("second-home"), "{text}");
    // A refusing leader looks again every few seconds.
    let leader = eventually(Duration::from_secs(20), || async {
        let leader = cluster.leader_id().await?;
        let s = cluster.backup_status(leader).await;
        (s.refused.is_empty() && !s.history_id.is_empty()).then_some(leader)
    })
    .await
    .expect("the leader archives again");
    bounded(cluster.store(leader).put(request(archived_put("m", "after"), Duration::from_secs(30))))
        .await
        .expect("ARCHIVED writes go to the adopted archive");
    let info = keepsake_archive::info::read(&second).await.expect("read").expect("the new archive's info");
    assert_eq!(info.history_id, history, "the same history goes on in its new archive");
}

/// A segment that says it continues from an archive snapshot, with a state digest other than
/// the one that snapshot's manifest records, is named by `verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_names_a_segment_linked_to_a_snapshot_it_does_not_continue_from() {
    use keepsake_archive::segment::Link;
    let s3 = S3Server::start();
    let cluster = Cluster::builder().archive_s3(&s3, "snaplink").archive_snapshots_on_demand().start().await;
    let clients = cluster.stores(&cluster.ids());
    write_items(&clients, "l", "a", 0..100, 8).await;
    let (code, text) = cluster_cli(&cluster, &["backup", "snapshot", "--timeout", "60s", "--output", "json"]);
    assert_eq!(code, 0, "{text}");
    let at = json_line(&text)["index"].as_u64().expect("the snapshot's index");
    write_items(&clients, "l", "b", 0..100, 8).await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    bounded(cluster.store(leader).put(request(archived_put("l", "last"), Duration::from_secs(20))))
        .await
        .expect("archived");
    let (code, text) = verify_cli(&cluster);
    assert_eq!(code, 0, "{text}");

    // A copy of the entries after the snapshot, as a segment of their own that links to it by
    // a wrong digest (entries agree with the segment they came from, so only the link is off).
    let holder = cluster
        .segment_objects()
        .await
        .into_iter()
        .find(|s| s.first <= at + 1 && s.last > at + 1)
        .expect("a segment holding the entries after the snapshot");
    let original = Segment::decode(&holder.name, &cluster.archive_object(&holder.name).await).expect("decodes");
    let history = original.header.history.expect("a history");
    let entries: Vec<_> = original.entries.into_iter().filter(|e| e.index > at).collect();
    let link = Link::Snapshot { index: at, term: 1, digest: [0xab; 32] };
    let forged =
        Segment::new(&original.header.cluster_id, entries, original.header.digest_after).in_history(history, link);
    let name = format!("{}/{}", cluster.open_archive().root, forged.object_name());
    cluster.put_archive_object(&name, forged.encode()).await;
    let (code, text) = verify_cli(&cluster);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("continues from a snapshot at index {at}")), "{text}");
}
