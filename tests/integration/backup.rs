//! Continuous backup against real `keepsake serve` processes and the S3 test server:
//! the archive holds every committed entry with no gap across leader changes, its digests
//! match the live state, the purge gate holds the log while the archive is down, and a second
//! cluster pointed at the same archive writes and deletes nothing there.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keepsake::proto::v1::*;
use keepsake_archive::proto::archived_entry::Payload;
use keepsake_archive::segment::Segment;

use crate::common::*;

const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Every segment in the archive, decoded, keyed by (first, last).
async fn read_segments(cluster: &Cluster) -> BTreeMap<(u64, u64), Segment> {
    let mut out = BTreeMap::new();
    for s in cluster.segment_objects().await {
        let bytes = cluster.archive_object(&s.name).await;
        out.insert((s.first, s.last), Segment::decode(&s.name, &bytes).unwrap_or_else(|e| panic!("{e}")));
    }
    out
}

/// Waits until the archive reaches the leader's committed index.
async fn wait_archived(cluster: &Cluster, limit: Duration) -> BackupStatusResponse {
    let found = eventually(limit, || async {
        let leader = cluster.leader_id().await?;
        let s = cluster.backup_status(leader).await;
        (s.archived_index == Some(s.committed_index) && s.committed_index > 0).then_some(s)
    })
    .await;
    found.expect("the archive caught up with the committed log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_has_no_gap_across_a_leader_kill_and_its_digests_match() {
    let s3 = S3Server::start();
    let cluster = Cluster::builder().archive_s3(&s3, "backup").start().await;
    let first_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let clients = cluster.stores(&cluster.ids());
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("w{w}-{i}");
                    let mut c = clients[i % clients.len()].clone();
                    if bounded(c.put(request(
                        PutRequest {
                            key: Some(key("arch", "c", &id)),
                            value: id.clone().into_bytes(),
                            ..Default::default()
                        },
                        Duration::from_secs(2),
                    )))
                    .await
                    .is_ok()
                    {
                        acked.lock().expect("lock").insert(id);
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.kill(first_leader);
    let new_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(new_leader, first_leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer task");
    }
    let status = wait_archived(&cluster, Duration::from_secs(15)).await;
    let head = status.archived_index.expect("something is archived");

    let segments = read_segments(&cluster).await;
    let mut entries = BTreeMap::new();
    for seg in segments.values() {
        assert_eq!(seg.header.cluster_id, "keepsake-test");
        for e in &seg.entries {
            if let Some(previous) = entries.insert(e.index, e.clone()) {
                assert_eq!(&previous, e, "overlapping segments disagree at index {}", e.index);
            }
        }
    }
    let indices: Vec<u64> = entries.keys().copied().collect();
    assert_eq!(indices.first(), Some(&0), "the archive starts at the first log index");
    assert_eq!(indices.last(), Some(&head));
    assert_eq!(indices.len() as u64, head + 1, "no index is missing between 0 and {head}");

    let mut archived_ids = HashSet::new();
    for e in entries.values() {
        if let Some(Payload::Writes(w)) = &e.payload {
            archived_ids.extend(w.writes.iter().flat_map(|w| w.ops.iter().map(|op| op.item_id.clone())));
        }
    }
    let acked = acked.lock().expect("lock").clone();
    let missing = acked.iter().filter(|id| !archived_ids.contains(*id)).count();
    println!(
        "segments: {}, archived entries: {}, acknowledged writes: {}, missing from the archive: {missing}",
        segments.len(),
        entries.len(),
        acked.len()
    );
    assert!(acked.len() > 100, "the writers made progress");
    assert_eq!(missing, 0, "every acknowledged write is in the archive");

    // Each segment's digest is the live state's digest at its last index.
    for seg in segments.values().rev().take(5) {
        let d = cluster.digest(new_leader, seg.header.last_index).await;
        let hex = keepsake_raft::Digest(seg.header.digest_after).to_hex();
        assert_eq!(d.digest, hex, "segment ending at {} has another digest than the state", seg.header.last_index);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_gate_holds_the_log_while_the_archive_cannot_be_written() {
    let s3 = S3Server::start();
    let cluster = Cluster::builder().archive_s3(&s3, "gate").snapshot_every(50).keep_after_snapshot(0).start().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let before = wait_archived(&cluster, Duration::from_secs(10)).await.archived_index.expect("archived");

    // The object store stops answering.
    s3.pause();

    let mut store = cluster.store(leader);
    for i in 0..300 {
        put(&mut store, "gate", "c", &item_id(i), "v").await.expect("QUORUM writes go on while the archive is down");
    }
    cluster.trigger_snapshot(leader).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stuck = eventually(Duration::from_secs(15), || async {
        Some(cluster.backup_status(leader).await).filter(|s| !s.last_error.is_empty())
    })
    .await
    .expect("the status reports the failing upload");
    assert_eq!(stuck.archived_index, Some(before), "nothing new could be archived");
    assert!(stuck.lag_entries >= 300, "the lag is visible: {} entries", stuck.lag_entries);
    for id in cluster.ids() {
        let s = cluster.get_node_status(id).await.expect("status");
        assert!(
            s.purged_index <= before,
            "node {id} purged its log up to {} although the archive holds only up to {before}",
            s.purged_index
        );
    }

    // The object store is back: the archive catches up, and then the log may be purged.
    s3.resume();
    let caught_up = wait_archived(&cluster, Duration::from_secs(20)).await;
    assert!(caught_up.last_error.is_empty(), "the error clears after a successful upload");
    cluster.trigger_snapshot(leader).await;
    let purged = eventually(Duration::from_secs(10), || async {
        let s = cluster.get_node_status(leader).await.ok()?;
        (s.purged_index > before).then_some(s.purged_index)
    })
    .await;
    assert!(purged.is_some(), "once archived, the log is purged behind the snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_names_a_damaged_or_missing_segment() {
    let s3 = S3Server::start();
    let cluster = Cluster::builder().archive_s3(&s3, "verify").start().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let mut store = cluster.store(leader);
    for round in 0..4 {
        for i in 0..30 {
            put(&mut store, "v", "c", &item_id(round * 30 + i), "value").await.expect("write");
        }
        // Let a segment be cut between rounds, so there are several.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_archived(&cluster, Duration::from_secs(10)).await;
    let (code, text) = verify_cli(&cluster);
    assert_eq!(code, 0, "a healthy archive verifies: {text}");
    assert!(text.contains("ok: every segment checks out"), "{text}");

    let files = cluster.segment_objects().await;
    assert!(files.len() >= 3, "several segments were cut: {files:?}");
    let victim = files[files.len() / 2].name.clone();
    let name = victim.rsplit('/').next().expect("a file name").to_owned();
    let original = cluster.archive_object(&victim).await;

    let mut flipped = original.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x10;
    cluster.put_archive_object(&victim, flipped).await;
    let (code, text) = verify_cli(&cluster);
    assert_eq!(code, 1, "a damaged segment fails verify: {text}");
    assert!(text.contains(&name) && text.contains("checksum mismatch"), "the fault names {name}: {text}");

    cluster.delete_archive_object(&victim).await;
    let (code, text) = verify_cli(&cluster);
    assert_eq!(code, 1, "a missing segment fails verify: {text}");
    assert!(text.contains("gap: no segment holds entries"), "the gap is named: {text}");
}

/// Every object under the cluster's archive root, with its size, sorted.
async fn archive_listing(cluster: &Cluster) -> Vec<(String, u64)> {
    use futures::TryStreamExt;
    let archive = cluster.open_archive();
    let objects: Vec<object_store::ObjectMeta> =
        archive.store.list(Some(&archive.root)).try_collect().await.expect("list the archive");
    let mut out: Vec<(String, u64)> = objects.into_iter().map(|o| (o.location.to_string(), o.size)).collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_cluster_on_the_same_archive_uploads_and_deletes_nothing() {
    let s3 = S3Server::start();
    let first = Cluster::builder().archive_s3(&s3, "shared").archive_snapshots_on_demand().start().await;
    let leader = first.wait_for_leader(LEADER_TIMEOUT).await;
    let mut store = first.store(leader);
    for i in 0..40 {
        put(&mut store, "a", "c", &item_id(i), "from the first cluster").await.expect("write");
    }
    wait_archived(&first, Duration::from_secs(10)).await;
    let (code, text) = cluster_cli(&first, &["backup", "snapshot", "--timeout", "60s"]);
    assert_eq!(code, 0, "the first cluster snapshots its archive: {text}");
    let before = archive_listing(&first).await;
    drop(first);

    // Same cluster id, same archive url: the second cluster's archiver finds another history.
    let second = Cluster::builder().archive_s3(&s3, "shared").archive_snapshots_on_demand().start().await;
    let leader = second.wait_for_leader(LEADER_TIMEOUT).await;
    let mut store = second.store(leader);
    for i in 0..5 {
        put(&mut store, "b", "c", &item_id(i), "from the second cluster").await.expect("a quorum write");
    }
    let refused = eventually(Duration::from_secs(15), || async {
        let leader = second.leader_id().await?;
        let s = second.backup_status(leader).await;
        s.last_error.contains("another cluster").then_some(s)
    })
    .await;
    assert!(refused.is_some(), "the second cluster refuses the archive");
    let (code, text) = cluster_cli(&second, &["backup", "snapshot", "--timeout", "30s"]);
    assert_ne!(code, 0, "no snapshot goes into another cluster's archive: {text}");
    assert!(text.contains("not confirmed as this cluster's"), "{text}");
    // Scheduled work (retention, snapshots) runs every second on the leader: give it a few.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(archive_listing(&second).await, before, "the first cluster's archive is untouched");
    let (code, text) = verify_cli(&second);
    assert_eq!(code, 0, "the first cluster's archive still verifies: {text}");
}
