//! Archive snapshots with real processes: `keepsake backup snapshot` uploads the state as
//! chunks, retention then deletes the segments no restore in the window needs, a restore starts
//! from the snapshot (and fails loudly for a point retention gave up), a restored cluster's own
//! archive restores again, and `keepsake drill` proves the archive equals the live state.

use std::time::Duration;

use keepsake::proto::v1::ChangesRequest;

use crate::common::*;

const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// `keepsake backup snapshot` on the cluster; returns the snapshot's index.
fn backup_snapshot(cluster: &Cluster) -> u64 {
    let (code, text) = cluster_cli(cluster, &["backup", "snapshot", "--timeout", "60s", "--output", "json"]);
    assert_eq!(code, 0, "backup snapshot: {text}");
    let v: serde_json::Value = json_line(&text);
    v["index"].as_u64().expect("the snapshot's index")
}

/// Starts `builder`'s cluster with archive snapshots on demand, writes 300 items (user `u`,
/// collection `old`) and takes an archive snapshot of them: (cluster, leader, snapshot index).
async fn snapshot_of_300_items(builder: ClusterBuilder) -> (Cluster, u64, u64) {
    let live = builder.archive_snapshots_on_demand().start().await;
    let leader = live.wait_for_leader(LEADER_TIMEOUT).await;
    write_items(&live.stores(&live.ids()), "u", "old", 0..300, 16).await;
    let first = backup_snapshot(&live);
    (live, leader, first)
}

fn segment_ranges(cluster: &Cluster) -> Vec<(u64, u64)> {
    let (code, text) = archive_cli(cluster, &["backup", "list", "--output", "json"]);
    assert_eq!(code, 0, "backup list: {text}");
    let v: serde_json::Value = json_line(&text);
    v["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| (s["first_index"].as_u64().expect("first"), s["last_index"].as_u64().expect("last")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_start_from_archive_snapshots_and_retention_deletes_only_what_no_restore_needs() {
    let s3 = S3Server::start();
    let builder = Cluster::builder().archive_s3(&s3, "snapshots").archive_option("retention", "\"2s\"");
    let (live, leader, first) = snapshot_of_300_items(builder).await;
    let clients = live.stores(&live.ids());
    let early = write_items(&clients, "u", "new", 0..10, 4).await;
    let early_index = early.iter().map(|(_, r)| r.log_index).max().expect("writes");
    write_items(&clients, "u", "new", 10..300, 16).await;
    // The first snapshot's last write falls out of the 2 s window while the second's is inside
    // it: the first becomes the base, and the segments it covers are deleted.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    write_items(&clients, "u", "late", 0..20, 4).await;
    let second = backup_snapshot(&live);
    assert!(second > first);
    let segments = segment_ranges(&live);
    assert!(segments.iter().all(|(_, last)| *last > first), "no segment at or below the base {first}: {segments:?}");
    assert!(segments.iter().any(|(first_index, _)| *first_index <= first + 1), "segments go on from the base");

    let (code, text) = archive_cli(&live, &["backup", "verify"]);
    assert_eq!(code, 0, "the archive verifies with its snapshots bridging the deleted segments: {text}");

    // A restore of the latest point starts from the newest snapshot.
    let restored = Cluster::builder().cluster_id("restored-once").archive_s3(&s3, "snapshots").no_bootstrap().prepare();
    let (code, text) = restore_cli(&live, &restored, &["--output", "json"]);
    assert_eq!(code, 0, "restore: {text}");
    let report: serde_json::Value = json_line(&text);
    assert_eq!(report["snapshot_index"].as_u64(), Some(second), "{text}");
    let first_restore_revision = report["revision"].as_u64().expect("the restored revision");

    // A point before the base is gone: the restore says so and leaves nothing behind.
    let too_old = Cluster::builder().cluster_id("too-old").no_bootstrap().prepare();
    let target = (first - 5).to_string();
    let (code, text) = restore_cli(&live, &too_old, &["--to-index", &target]);
    assert_ne!(code, 0, "a restore to a point retention gave up fails: {text}");
    assert!(text.contains("retention"), "{text}");
    assert!(!too_old.data_dir(1).exists(), "no half-written data directory");
    // A point after the base restores from the base snapshot and the segments after it.
    let in_window = Cluster::builder().cluster_id("in-window").no_bootstrap().prepare();
    let target = early_index.to_string();
    let (code, text) = restore_cli(&live, &in_window, &["--to-index", &target, "--output", "json"]);
    assert_eq!(code, 0, "restore inside the window: {text}");
    let report: serde_json::Value = json_line(&text);
    assert_eq!(report["snapshot_index"].as_u64(), Some(first), "{text}");
    assert_eq!(report["index"].as_u64(), Some(early_index), "{text}");

    // The drill proves the archive restores to the live state.
    let (code, text) = archive_cli(&live, &["drill", "--endpoints", &live.client_addr(leader)]);
    assert_eq!(code, 0, "drill: {text}");
    assert!(text.contains("ok: the archive restores to the live state"), "{text}");

    // The restored cluster serves every item, archives its own writes, and its archive (which
    // starts with a snapshot of the restored state) restores in turn.
    restored.launch(3).await;
    let r_leader = restored.wait_for_leader(LEADER_TIMEOUT).await;
    let store = restored.store(r_leader);
    assert!(check_items(&store, "u", "old", 0..300, 16).await.is_empty());
    assert!(check_items(&store, "u", "new", 0..300, 16).await.is_empty());
    let r_clients = restored.stores(&restored.ids());
    write_items(&r_clients, "u", "after", 0..50, 8).await;
    backup_snapshot(&restored);
    // The restored cluster is lost too, every node and disk.
    for id in restored.ids() {
        restored.kill(id);
        std::fs::remove_dir_all(restored.data_dir(id)).expect("lose the disk");
    }
    let twice = Cluster::builder().cluster_id("restored-twice").archive_s3(&s3, "snapshots").no_bootstrap().prepare();
    let (code, text) = restore_cli(&restored, &twice, &[]);
    assert_eq!(code, 0, "restoring a restored cluster's archive: {text}");
    twice.launch(3).await;
    let t_leader = twice.wait_for_leader(LEADER_TIMEOUT).await;
    let store = twice.store(t_leader);
    for (collection, n) in [("old", 300), ("new", 300), ("late", 20), ("after", 50)] {
        let missing = check_items(&store, "u", collection, 0..n, 16).await;
        assert!(missing.is_empty(), "{collection}: {missing:?}");
    }
    // A device cursor from writes the first restore lost is refused after the second restore
    // too; a cursor at the restored point is served.
    let mut feed = twice.store(t_leader);
    let lost = ChangesRequest { user_id: "u".into(), since_revision: first_restore_revision + 1, ..Default::default() };
    let err = feed.changes(request(lost, RPC_TIMEOUT)).await.expect_err("a cursor from the first disaster");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{}", err.message());
    let kept = ChangesRequest { user_id: "u".into(), since_revision: first_restore_revision, ..Default::default() };
    assert!(feed.changes(request(kept, RPC_TIMEOUT)).await.is_ok(), "a cursor at the restored point is fine");
}

/// Retention runs on the leader, but a deposed leader that does not know it yet (cut off from
/// its peers, not from the archive) runs it too, and may delete an old snapshot and its chunks
/// while another node is writing a snapshot that names them. That snapshot's manifest must not
/// go up naming a chunk that is gone: a restore from it would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs the failpoints feature: ops/test.sh turns it on")]
async fn a_snapshot_never_names_a_chunk_that_another_nodes_retention_deleted() {
    use futures::TryStreamExt;
    use object_store::{ObjectStore, ObjectStoreExt};
    const POINT: &str = "archive-manifest-next";
    let s3 = S3Server::start();
    let (live, leader, first) = snapshot_of_300_items(Cluster::builder().archive_s3(&s3, "gone-chunks")).await;
    write_items(&live.stores(&live.ids()), "v", "new", 0..20, 4).await;

    // The leader's next snapshot stops just before its manifest; meanwhile "another node's
    // retention" deletes the first snapshot and every chunk, most of which the new one names.
    // The other nodes are paused while that happens, so that none of them, electing itself
    // while the leader is stopped, writes a snapshot of its own in the middle of the deletion.
    live.kill(leader);
    live.restart_stopping_at(leader, POINT);
    live.make_leader(leader).await;
    let archive = live.open_archive();
    let second = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let snapshot = scope.spawn(|| backup_snapshot(&live));
            tokio::runtime::Handle::current().block_on(async {
                live.wait_for_stop(leader, POINT, Duration::from_secs(60)).await;
                let others: Vec<u64> = live.ids().into_iter().filter(|id| *id != leader).collect();
                others.iter().for_each(|id| live.pause(*id));
                let listed: Vec<_> =
                    archive.store.list(Some(&archive.path("snapshots"))).try_collect().await.expect("list");
                assert!(listed.len() > 2, "a manifest and its chunks: {listed:?}");
                for object in &listed {
                    archive.store.delete(&object.location).await.expect("delete");
                }
                others.iter().for_each(|id| live.resume(*id));
            });
            live.resume(leader);
            snapshot.join().expect("backup snapshot answers once the node goes on")
        })
    });
    assert!(second > first);
    let (code, text) = archive_cli(&live, &["backup", "verify"]);
    assert_eq!(code, 0, "every chunk the new snapshot names is in the archive: {text}");
    let restored = Cluster::builder().cluster_id("after-gone-chunks").no_bootstrap().prepare();
    let (code, text) = restore_cli(&live, &restored, &["--output", "json"]);
    assert_eq!(code, 0, "restore: {text}");
    let report: serde_json::Value = json_line(&text);
    assert_eq!(report["snapshot_index"].as_u64(), Some(second), "{text}");
}

/// A snapshot naming a chunk that is gone (deleted by a deposed leader's retention in the
/// window bug 13's check leaves, or lost) does not stop a restore: it starts from the snapshot
/// before, replays the segments past it to the head, and names the one it passed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_passes_over_a_snapshot_with_a_missing_chunk_and_starts_from_the_one_before() {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    let s3 = S3Server::start();
    let (live, _, first) = snapshot_of_300_items(Cluster::builder().archive_s3(&s3, "passed-over")).await;
    let archive = live.open_archive();
    let chunks = || async {
        let listed = archive.store.list(Some(&archive.path("snapshots/chunks")));
        listed.map_ok(|o| o.location.to_string()).try_collect::<std::collections::BTreeSet<_>>().await.expect("list")
    };
    let before = chunks().await;
    write_items(&live.stores(&live.ids()), "v", "new", 0..50, 8).await;
    let second = backup_snapshot(&live);
    let only_second: Vec<String> = chunks().await.difference(&before).cloned().collect();
    assert!(!only_second.is_empty(), "the second snapshot has chunks of its own");
    live.delete_archive_object(&only_second[0]).await;
    let (code, text) = archive_cli(&live, &["backup", "verify"]);
    assert_eq!(code, 1, "verify names the missing chunk: {text}");
    assert!(text.contains(&only_second[0]), "{text}");

    let restored = Cluster::builder().cluster_id("after-passed-over").no_bootstrap().prepare();
    let (code, text) = restore_cli(&live, &restored, &["--output", "json"]);
    assert_eq!(code, 0, "restore: {text}");
    let report: serde_json::Value = json_line(&text);
    assert_eq!(report["snapshot_index"].as_u64(), Some(first), "it starts from the whole snapshot: {text}");
    assert!(report["index"].as_u64() >= Some(second), "and replays past the broken one: {text}");
    assert_eq!(report["items"].as_u64(), Some(350 + SYSTEM_ITEMS), "{text}");
    let passed_over = report["passed_over"].as_array().expect("passed_over");
    assert_eq!(passed_over.len(), 1, "{text}");
    assert!(passed_over[0].as_str().unwrap_or("").contains(&format!("{second:020}.snap")), "{text}");
}
