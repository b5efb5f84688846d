//! Crash points: a real process SIGKILLs itself (`KEEPSAKE_CRASH_AT`, raft/src/crash.rs) in the
//! middle of a snapshot install, an archive upload, a restore and a membership change — and
//! even while recovering from the first crash. Each recovers on restart with nothing lost
//! (every acknowledged write reads back) and nothing half-applied (every node has the same
//! digest at the same index, the archive verifies, a restore equals what was archived).

use std::time::Duration;

use keepsake::proto::v1::*;
use tonic::transport::Channel;

use crate::common::*;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const CRASH_TIMEOUT: Duration = Duration::from_secs(60);

/// Puts items `ids` of (user, collection) through `clients`, retrying each until it is
/// acknowledged (a crash may fail some attempts; puts of the same value are idempotent).
async fn write_acked(
    clients: &[keepsake::proto::v1::store_client::StoreClient<Channel>],
    collection: &str,
    ids: std::ops::Range<usize>,
) {
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    for i in ids {
        // Each attempt goes to the next node: the one a crash took down may stay down.
        let acked = eventually(Duration::from_secs(60), || async {
            let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut client = clients[n % clients.len()].clone();
            put(&mut client, "u", collection, &item_id(i), value_of("u", collection, i)).await.ok()
        })
        .await;
        assert!(acked.is_some(), "put u/{collection}/{} was not acknowledged within 60 s", item_id(i));
    }
}

/// Every node reaches the leader's applied index and has its digest there.
async fn same_state_everywhere(cluster: &Cluster) -> DigestResponse {
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    // A write moves the applied index past whatever a crashed node had half done.
    put(&mut cluster.store(leader), "u", "marker", "after-recovery", "x").await.expect("a write after recovery");
    let target = cluster.get_node_status(leader).await.expect("the leader's status").applied_index;
    let on_leader = cluster.digest(leader, target).await;
    for id in cluster.ids() {
        cluster.wait_for_applied(id, target, Duration::from_secs(60)).await;
        assert_eq!(cluster.digest(id, target).await, on_leader, "node {id} differs from the leader at index {target}");
    }
    on_leader
}

fn files_named(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_named(&path, name));
        } else if entry.file_name() == name {
            found.push(path);
        }
    }
    found
}

/// A killed follower, and a leader that has since taken 600 items, snapshotted and purged the
/// entries the follower lacks: restarted, the follower must install a snapshot.
struct Behind {
    leader: u64,
    follower: u64,
    survivor: u64,
    /// The leader's purged index.
    purged: u64,
}

async fn follower_behind_a_purge() -> (Cluster, Behind) {
    let cluster = Cluster::builder().snapshot_every(100).keep_after_snapshot(0).start().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.other(&[leader]);
    let survivor = cluster.other(&[leader, follower]);
    cluster.kill(follower);
    let follower_last = cluster.get_node_status(leader).await.expect("the leader's status").last_log_index;
    write_items(&cluster.stores(&[leader, survivor]), "u", "items", 0..600, 8).await;
    assert!(cluster.trigger_snapshot(leader).await.snapshot_index > follower_last);
    let c = &cluster;
    let purged = eventually(Duration::from_secs(30), || async move {
        let s = c.get_node_status(leader).await.ok()?;
        (s.purged_index > follower_last).then_some(s.purged_index)
    })
    .await
    .expect("the leader purges the entries the follower misses: it must send a snapshot");
    (cluster, Behind { leader, follower, survivor, purged })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs the failpoints feature: ops/test.sh turns it on")]
async fn a_snapshot_install_killed_midway_is_redone_on_restart() {
    let (cluster, Behind { leader, follower, survivor, purged }) = follower_behind_a_purge().await;

    // 1. Killed with the snapshot's items loaded but nothing yet saying which state they are.
    cluster.restart_crashing_at(follower, "state-loaded");
    cluster.wait_for_crash(follower, "state-loaded", CRASH_TIMEOUT).await;
    // 2. Killed again while redoing that install on start, after the state was written and
    //    before the snapshot file was published as the node's current snapshot.
    cluster.restart_crashing_at(follower, "snapshot-install-before-publish");
    cluster.wait_for_crash(follower, "snapshot-install-before-publish", CRASH_TIMEOUT).await;
    assert!(
        cluster.log_tail(follower, 40).contains("finishing a snapshot install that a crash interrupted"),
        "the second start redid the interrupted install"
    );
    // 3. A plain restart publishes it and catches up.
    cluster.restart(follower);
    let target = cluster.get_node_status(leader).await.expect("the leader's status").applied_index;
    let status = cluster.wait_for_applied(follower, target, Duration::from_secs(60)).await;
    assert!(status.snapshot_index >= purged, "the follower holds the snapshot ({} < {purged})", status.snapshot_index);
    let left = files_named(&cluster.data_dir(follower), "installing.snap");
    assert!(left.is_empty(), "the installed snapshot was never published as the current one: {left:?}");
    assert!(cluster.log_tail(follower, 80).contains("publishing a snapshot whose install a crash interrupted"));
    same_state_everywhere(&cluster).await;
    // The recovered follower serves as part of a quorum: with the old leader gone, every
    // acknowledged item is still there.
    cluster.kill(leader);
    let clients = cluster.stores(&[follower, survivor]);
    write_acked(&clients, "after", 0..20).await;
    let store = cluster.store(cluster.wait_for_leader(LEADER_TIMEOUT).await);
    let missing = check_items(&store, "u", "items", 0..600, 16).await;
    assert!(missing.is_empty(), "lost after the crashed install: {missing:?}");
    assert!(check_items(&store, "u", "after", 0..20, 8).await.is_empty());
}

/// openraft 0.9 purges a follower's log up to a received snapshot as soon as it hands the
/// snapshot to the state machine. Killed before the install was durable, the follower came back
/// with its log purged past its state and could not start again; the purge now waits for the
/// install's marker (`raft/src/store/install.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs the failpoints feature: ops/test.sh turns it on")]
async fn a_snapshot_install_killed_before_it_is_durable_leaves_a_node_that_starts_again() {
    let (cluster, Behind { leader, follower, purged, .. }) = follower_behind_a_purge().await;

    cluster.restart_crashing_at(follower, "snapshot-install-before-marker");
    cluster.wait_for_crash(follower, "snapshot-install-before-marker", CRASH_TIMEOUT).await;
    cluster.restart(follower);
    let target = cluster.get_node_status(leader).await.expect("the leader's status").applied_index;
    let status = cluster.wait_for_applied(follower, target, Duration::from_secs(60)).await;
    assert!(status.snapshot_index >= purged, "the follower holds the snapshot ({} < {purged})", status.snapshot_index);
    same_state_everywhere(&cluster).await;
    let store = cluster.store(follower);
    assert!(check_items(&store, "u", "items", 0..600, 16).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs the failpoints feature: ops/test.sh turns it on")]
async fn an_archive_upload_killed_midway_loses_nothing() {
    let s3 = S3Server::start();
    // Archive snapshots only when asked for, so that the crash comes from the one asked for.
    let cluster = Cluster::builder().archive_s3(&s3, "crash").archive_snapshots_on_demand().start().await;
    let clients = cluster.stores(&cluster.ids());
    write_acked(&clients, "before", 0..50).await;
    let uploader = cluster.other(&[cluster.wait_for_leader(LEADER_TIMEOUT).await]);

    // The leader dies right after a segment's upload returned, before it recorded it anywhere.
    cluster.kill(uploader);
    cluster.restart_crashing_at(uploader, "segment-uploaded:2");
    cluster.make_leader(uploader).await;
    let writing = {
        let clients = clients.clone();
        tokio::spawn(async move { write_acked(&clients, "during", 0..200).await })
    };
    cluster.wait_for_crash(uploader, "segment-uploaded", CRASH_TIMEOUT).await;
    writing.await.expect("the writer");

    // The next leader dies with a snapshot's chunks uploaded and its manifest not.
    cluster.restart_crashing_at(uploader, "archive-chunks-uploaded");
    cluster.make_leader(uploader).await;
    let (code, text) = cluster_cli(&cluster, &["backup", "snapshot", "--timeout", "20s"]);
    assert_ne!(code, 0, "the snapshot whose leader died is not reported as taken: {text}");
    cluster.wait_for_crash(uploader, "archive-chunks-uploaded", CRASH_TIMEOUT).await;
    cluster.restart(uploader);
    write_acked(&clients, "after", 0..50).await;
    let (code, text) = cluster_cli(&cluster, &["backup", "snapshot", "--timeout", "60s"]);
    assert_eq!(code, 0, "a snapshot after recovery: {text}");

    let digest = same_state_everywhere(&cluster).await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let store = cluster.store(leader);
    for (collection, n) in [("before", 50), ("during", 200), ("after", 50)] {
        let missing = check_items(&store, "u", collection, 0..n, 16).await;
        assert!(missing.is_empty(), "{collection}: lost {missing:?}");
    }
    let (code, text) = archive_cli(&cluster, &["backup", "verify"]);
    assert_eq!(code, 0, "the archive verifies after both crashes: {text}");
    let (code, text) = archive_cli(&cluster, &["drill", "--endpoints", &cluster.client_addr(leader)]);
    assert_eq!(code, 0, "the drill restores the live state (digest {}): {text}", digest.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs the failpoints feature: ops/test.sh turns it on")]
async fn a_restore_killed_midway_leaves_no_data_dir_and_runs_again() {
    let old = Cluster::builder().archive_snapshots_on_demand().start().await;
    let clients = old.stores(&old.ids());
    write_items(&clients, "u", "base", 0..200, 8).await;
    let (code, text) = cluster_cli(&old, &["backup", "snapshot", "--timeout", "60s"]);
    assert_eq!(code, 0, "backup snapshot: {text}");
    for round in 0..3 {
        write_items(&clients, "u", &format!("round{round}"), 0..50, 8).await;
        tokio::time::sleep(Duration::from_millis(300)).await; // a segment per round
    }
    // The last write waits for the archive: everything before it is archived too.
    let last = PutRequest {
        key: Some(key("u", "marker", "last")),
        value: b"x".to_vec(),
        durability: Durability::Archived as i32,
        ..Default::default()
    };
    bounded(old.store(1).put(request(last, Duration::from_secs(20)))).await.expect("an ARCHIVED write");

    let new = Cluster::builder().cluster_id("crash-restored").no_bootstrap().prepare();
    let dir = new.data_dir(1);
    let partial = std::path::PathBuf::from(format!("{}.partial", dir.display()));
    let args = restore_args(&old, &new, &["--output", "json"]);
    for point in ["state-loaded", "restore-segment-applied:2", "restore-before-publish"] {
        let (status, text) = keepsake_cli_crashing_at(&args, Some(point));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "restore was not killed at {point}: {text}");
        let name = point.split(':').next().expect("a name");
        assert!(text.contains(&format!("crash point {name}")), "{text}");
        let empty = std::fs::read_dir(&dir).map(|mut d| d.next().is_none()).unwrap_or(true);
        assert!(empty, "a restore killed at {point} left a data directory behind");
        assert!(partial.exists(), "the killed restore's work stays in {} until the next one", partial.display());
    }
    let (code, text) = keepsake_cli(&args);
    assert_eq!(code, 0, "the restore run again succeeds: {text}");
    let report = json_line(&text);
    assert!(!partial.exists(), "the finished restore removed its partial directory");
    assert_eq!(std::fs::read_to_string(dir.join("cluster_id")).expect("cluster_id").trim(), "crash-restored");
    let index = report["index"].as_u64().expect("the restored index");
    let archived = old.digest(1, index).await;
    assert_eq!(report["digest"].as_str(), Some(archived.digest.as_str()), "the restore equals the archived state");

    new.launch(3).await;
    let store = new.store(new.wait_for_leader(LEADER_TIMEOUT).await);
    for (collection, n) in [("base", 200), ("round0", 50), ("round1", 50), ("round2", 50)] {
        let missing = check_items(&store, "u", collection, 0..n, 16).await;
        assert!(missing.is_empty(), "{collection}: lost {missing:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs the failpoints feature: ops/test.sh turns it on")]
async fn a_membership_change_killed_midway_completes_when_run_again() {
    let cluster = Cluster::builder().spares(1).start().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let clients = cluster.stores(&[1, 2, 3]);
    write_acked(&clients, "before", 0..100).await;
    cluster.restart(4);
    let add = AddLearnerRequest { node_id: 4, client_addr: cluster.client_addr(4), peer_addr: cluster.peer_addr(4) };
    bounded_for(Duration::from_secs(20), cluster.admin(leader).add_learner(request(add, Duration::from_secs(20))))
        .await
        .expect("add node 4 as a learner");

    // Replace a follower by node 4; the leader dies once the joint configuration is committed.
    let changer = cluster.other(&[leader, 4]);
    let replaced = cluster.other(&[changer, 4]);
    cluster.kill(changer);
    cluster.restart_crashing_at(changer, "joint-membership-applied");
    cluster.make_leader(changer).await;
    let voters: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != replaced).collect();
    let change = ChangeMembershipRequest { voters: voters.clone() };
    let answer = cluster.admin(changer).change_membership(request(change.clone(), Duration::from_secs(20))).await;
    assert!(answer.is_err(), "the leader died before it could answer: {answer:?}");
    cluster.wait_for_crash(changer, "joint-membership-applied", CRASH_TIMEOUT).await;

    // The others go on (a quorum of both configurations is alive); then the crashed node comes
    // back, and the operator runs the same change again.
    let alive: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != changer).collect();
    write_acked(&cluster.stores(&alive), "during", 0..50).await;
    cluster.restart(changer);
    let done = eventually(Duration::from_secs(60), || async {
        let leader = cluster.leader_id().await?;
        cluster.admin(leader).change_membership(request(change.clone(), Duration::from_secs(20))).await.ok()
    })
    .await
    .expect("the change, run again, completes")
    .into_inner();
    let mut now: Vec<u64> = done.members.iter().filter(|m| m.voter).map(|m| m.node_id).collect();
    now.sort_unstable();
    assert_eq!(now, voters, "the voters are exactly the ones asked for: {done:?}");

    same_state_everywhere(&cluster).await;
    let store = cluster.store(cluster.wait_for_leader(LEADER_TIMEOUT).await);
    for (collection, n) in [("before", 100), ("during", 50)] {
        let missing = check_items(&store, "u", collection, 0..n, 16).await;
        assert!(missing.is_empty(), "{collection}: lost {missing:?}");
    }
    // The new configuration commits without the replaced node.
    cluster.kill(replaced);
    write_acked(&cluster.stores(&voters), "after", 0..20).await;
}
