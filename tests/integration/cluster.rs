//! End-to-end tests of a 3-node cluster of real `keepsake serve` processes: replication,
//! failover without losing acknowledged writes, catch-up from the log and from a snapshot,
//! full restarts, compare-and-set, the changes feed, exports, deadlines with no quorum,
//! health, input validation and atomic batches.
//!
//! Every test is bounded in time (`within`), and every request carries a deadline.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keepsake::proto::v1::store_client::StoreClient;
use keepsake::proto::v1::{
    batch_op, BatchDelete, BatchOp, BatchPut, BatchRequest, Change, ChangesRequest, Consistency, Durability,
    ExportChunk, ExportUserRequest, GetRequest, ItemKey, PutRequest,
};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::common::*;

/// The first `n` of `items` (all of them when there are fewer): a few examples for a failure
/// message.
fn first<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    items[..items.len().min(n)].to_vec()
}

fn item_id_of(key: &Option<ItemKey>) -> String {
    key.as_ref().map(|k| k.item_id.clone()).unwrap_or_default()
}

/// Asserts a failed call with the given code and a non-empty message; returns the status.
fn expect_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, what: &str) -> Status {
    match result {
        Ok(v) => panic!("{what}: expected {code:?}, but the call succeeded with {v:?}"),
        Err(e) => {
            assert_eq!(e.code(), code, "{what}: wrong status code (message: {:?})", e.message());
            assert!(!e.message().is_empty(), "{what}: the {code:?} status carries no message");
            e
        }
    }
}

/// A whole non-following Changes stream (bounded to 10 s).
async fn changes(client: &mut StoreClient<Channel>, user: &str, since: u64) -> Vec<Change> {
    let req = ChangesRequest { user_id: user.into(), since_revision: since, follow: false, consistency: 0 };
    let mut stream = bounded(client.changes(request(req, RPC_TIMEOUT)))
        .await
        .unwrap_or_else(|e| panic!("cannot open Changes({user}, since {since}): {:?} {}", e.code(), e.message()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    for _ in 0..100_000 {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(change))) => out.push(change),
            Ok(Ok(None)) => return out,
            Ok(Err(e)) => panic!("the Changes stream failed: {:?} {}", e.code(), e.message()),
            Err(_) => panic!("a Changes stream with follow=false did not end within 10 s"),
        }
    }
    panic!("a Changes stream with follow=false sent more than 100,000 changes")
}

/// (item id, revision, deleted) of a change.
fn summary(c: &Change) -> (String, u64, bool) {
    (item_id_of(&c.key), c.revision, c.deleted)
}

/// One compare-and-set writer: `increments` times, read the counter and write it plus one with
/// `if_revision` = the revision read, retrying on FAILED_PRECONDITION. Returns the values it
/// wrote and how many preconditions failed.
async fn cas_increments(
    task: usize,
    mut client: StoreClient<Channel>,
    increments: usize,
    max_attempts: usize,
) -> Result<(Vec<u64>, usize), String> {
    let mut wrote: Vec<u64> = Vec::new();
    let mut conflicts = 0usize;
    for _ in 0..max_attempts {
        if wrote.len() == increments {
            return Ok((wrote, conflicts));
        }
        let item = match get(&mut client, "cas", "counters", "n").await {
            Ok(item) => item,
            Err(e) => return Err(format!("task {task}: Get failed: {:?} {}", e.code(), e.message())),
        };
        let text = String::from_utf8_lossy(&item.value).into_owned();
        let n: u64 = match text.parse() {
            Ok(n) => n,
            Err(_) => return Err(format!("task {task}: the counter {text:?} is not a number")),
        };
        match put_if(&mut client, "cas", "counters", "n", (n + 1).to_string(), Some(item.revision)).await {
            Ok(_) => wrote.push(n + 1),
            Err(e) if e.code() == Code::FailedPrecondition => conflicts += 1,
            Err(e) => return Err(format!("task {task}: Put failed: {:?} {}", e.code(), e.message())),
        }
    }
    if wrote.len() == increments {
        Ok((wrote, conflicts))
    } else {
        Err(format!("task {task}: only {} of {increments} increments in {max_attempts} attempts", wrote.len()))
    }
}

// -------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_every_node_are_readable_on_every_node() {
    let cluster = Cluster::start(3).await;
    within(Duration::from_secs(55), async {
        let ids = cluster.ids();
        let written = write_items(&cluster.stores(&ids), "rr", "items", 0..1000, 16).await;
        assert_eq!(written.len(), 1000, "every one of the 1,000 writes was acknowledged");
        let revisions: BTreeSet<u64> = written.iter().map(|(_, r)| r.revision).collect();
        assert_eq!(revisions.len(), 1000, "every acknowledged write got a revision of its own");
        let revision_of: HashMap<String, u64> = written.iter().map(|(id, r)| (id.clone(), r.revision)).collect();

        for &id in &ids {
            let bad = check_items(&cluster.store(id), "rr", "items", 0..1000, 16).await;
            assert!(
                bad.is_empty(),
                "node {id}: {} of 1,000 items are missing or wrong through a linearizable Get, e.g. {:?}",
                bad.len(),
                first(&bad, 5)
            );
        }

        let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
        let target = cluster.get_node_status(leader).await.expect("NodeStatus of the leader").applied_index;
        let want: Vec<(String, Vec<u8>, u64)> =
            (0..1000).map(|i| (item_id(i), value_of("rr", "items", i), revision_of[&item_id(i)])).collect();
        for &id in &ids {
            cluster.wait_for_applied(id, target, Duration::from_secs(10)).await;
            let items = list_all(&mut cluster.store(id), "rr", "items", Consistency::Stale, 500)
                .await
                .unwrap_or_else(|e| panic!("STALE List on node {id} failed: {:?} {}", e.code(), e.message()));
            let got: Vec<(String, Vec<u8>, u64)> =
                items.into_iter().map(|it| (item_id_of(&it.key), it.value, it.revision)).collect();
            assert_eq!(
                got.len(),
                1000,
                "node {id}: a STALE List (pages of 500) returned {} items, not 1,000",
                got.len()
            );
            let wrong: Vec<&str> =
                got.iter().zip(&want).filter(|(g, w)| g != w).map(|(g, _)| g.0.as_str()).take(5).collect();
            assert!(
                wrong.is_empty(),
                "node {id}: a STALE List does not return the items in id order with their values and revisions; \
                 first differences at {wrong:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_leader_loses_no_acknowledged_write() {
    const WRITERS: usize = 8;
    const MAX_ATTEMPTS_PER_WRITER: usize = 200_000;
    let cluster = Cluster::start(3).await;
    within(Duration::from_secs(55), async {
        let old_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let clients = cluster.stores(&cluster.ids());
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));

        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (clients, stop, acked) = (clients.clone(), stop.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut done: Vec<(String, Vec<u8>)> = Vec::new();
                    let mut n = 0usize;
                    for attempt in 0..MAX_ATTEMPTS_PER_WRITER {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let id = format!("w{w}-{n:06}");
                        let value = format!("writer {w} write {n}").into_bytes();
                        // Rotate over every node, the killed one included.
                        let mut client = clients[(w + attempt) % clients.len()].clone();
                        let req = PutRequest {
                            key: Some(key("failover", "log", &id)),
                            value: value.clone(),
                            content_type: String::new(),
                            if_revision: None,
                            durability: 0,
                        };
                        let result =
                            bounded_for(Duration::from_secs(3), client.put(request(req, Duration::from_secs(2)))).await;
                        match result {
                            Ok(_) => {
                                done.push((id, value));
                                n += 1;
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            // Not acknowledged: it may or may not have been applied; retry the
                            // same key with the same value.
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                    done
                })
            })
            .collect();

        tokio::time::sleep(Duration::from_secs(2)).await;
        let before_kill = acked.load(Ordering::SeqCst);
        assert!(before_kill > 0, "no write was acknowledged in the first 2 s");

        let killed_at = Instant::now();
        cluster.kill(old_leader);
        let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let failover = killed_at.elapsed();
        println!("failover: {} ms (node {old_leader} -> node {new_leader})", failover.as_millis());
        assert_ne!(new_leader, old_leader, "the killed node cannot be the new leader");
        assert!(failover < Duration::from_secs(3), "electing a new leader took {failover:?}, over 3 s");

        let at_failover = acked.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::SeqCst);
        let mut acknowledged: Vec<(String, Vec<u8>)> = Vec::new();
        for writer in writers {
            let done = tokio::time::timeout(Duration::from_secs(15), writer)
                .await
                .expect("a writer did not stop within 15 s")
                .expect("a writer task panicked");
            acknowledged.extend(done);
        }
        assert!(
            acknowledged.len() > at_failover,
            "no write was acknowledged after the new leader was elected ({at_failover} before, {} in all)",
            acknowledged.len()
        );

        let stored: HashMap<String, Vec<u8>> =
            list_all(&mut cluster.store(new_leader), "failover", "log", Consistency::Linearizable, 1000)
                .await
                .unwrap_or_else(|e| panic!("List on the new leader failed: {:?} {}", e.code(), e.message()))
                .into_iter()
                .map(|it| (item_id_of(&it.key), it.value))
                .collect();
        let lost: Vec<&str> = acknowledged
            .iter()
            .filter(|(id, value)| stored.get(id) != Some(value))
            .map(|(id, _)| id.as_str())
            .collect();
        println!("acknowledged writes: {} ({before_kill} before the kill)", acknowledged.len());
        println!("lost acknowledged writes: {}", lost.len());
        println!("failover: {} ms", failover.as_millis());
        assert!(lost.is_empty(), "{} acknowledged writes are lost or wrong, e.g. {:?}", lost.len(), first(&lost, 10));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_node_catches_up_from_log_and_from_snapshot() {
    // (a) From the log.
    {
        let cluster = Cluster::start(3).await;
        // Bounds are generous: a loaded 2-core CI machine runs several clusters at once, and
        // the test proves catching up, not its speed.
        within(Duration::from_secs(45), async {
            let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
            let follower = cluster.other(&[leader]);
            let survivor = cluster.other(&[leader, follower]);
            cluster.kill(follower);
            write_items(&cluster.stores(&[leader, survivor]), "catchup", "items", 0..200, 8).await;
            cluster.restart(follower);

            let leader_status = cluster.get_node_status(leader).await.expect("NodeStatus of the leader");
            assert_eq!(
                leader_status.purged_index, 0,
                "the leader purged nothing, so the follower must catch up from the log"
            );
            let target = leader_status.applied_index;
            cluster.wait_for_applied(follower, target, Duration::from_secs(30)).await;
            let on_leader = cluster.digest(leader, target).await;
            let on_follower = cluster.digest(follower, target).await;
            assert_eq!(
                on_follower, on_leader,
                "the restarted follower's digest at index {target} differs from the leader's"
            );
            assert_eq!(
                on_leader.item_count,
                200 + SYSTEM_ITEMS,
                "the digest counts the 200 items written and the history record"
            );
        })
        .await;
    }

    // (b) From a snapshot: the entries the follower missed are purged from the leader's log.
    let cluster = Cluster::builder().snapshot_every(100).keep_after_snapshot(0).start().await;
    within(Duration::from_secs(90), async {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let follower = cluster.other(&[leader]);
        let survivor = cluster.other(&[leader, follower]);
        cluster.kill(follower);
        // The follower's log cannot reach past the leader's.
        let follower_last = cluster.get_node_status(leader).await.expect("NodeStatus of the leader").last_log_index;
        write_items(&cluster.stores(&[leader, survivor]), "snap", "items", 0..600, 8).await;

        let built = cluster.trigger_snapshot(leader).await;
        assert!(
            built.snapshot_index > follower_last,
            "the snapshot ({}) is not past the follower's log",
            built.snapshot_index
        );
        let c = &cluster;
        let purged = eventually(Duration::from_secs(20), || async move {
            let s = c.get_node_status(leader).await.ok()?;
            (s.purged_index > follower_last).then_some(s.purged_index)
        })
        .await
        .unwrap_or_else(|| panic!("the leader did not purge its log past index {follower_last} within 20 s"));

        cluster.restart(follower);
        let target = cluster.get_node_status(leader).await.expect("NodeStatus of the leader").applied_index;
        let caught_up = cluster.wait_for_applied(follower, target, Duration::from_secs(45)).await;
        assert!(
            caught_up.snapshot_index > 0 && caught_up.snapshot_index >= purged,
            "the restarted follower should hold a snapshot covering the purged entries (purged up to {purged}), \
             but its snapshot index is {}",
            caught_up.snapshot_index
        );
        let on_leader = cluster.digest(leader, target).await;
        let on_follower = cluster.digest(follower, target).await;
        assert_eq!(
            on_follower, on_leader,
            "the follower restored from a snapshot has another digest at index {target}"
        );
        assert_eq!(
            on_leader.item_count,
            600 + SYSTEM_ITEMS,
            "the digest counts the 600 items written and the history record"
        );

        let mut client = cluster.store(follower);
        for i in [0, 299, 599] {
            let item =
                get_with(&mut client, "snap", "items", &item_id(i), Consistency::Stale).await.unwrap_or_else(|e| {
                    panic!("STALE Get of {} on the restored follower: {:?} {}", item_id(i), e.code(), e.message())
                });
            assert_eq!(
                item.value,
                value_of("snap", "items", i),
                "the restored follower has the wrong value for {}",
                item_id(i)
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_cluster_restart_keeps_every_item_and_the_digest() {
    let cluster = Cluster::start(3).await;
    within(Duration::from_secs(55), async {
        let ids = cluster.ids();
        write_items(&cluster.stores(&ids), "full", "items", 0..300, 8).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
        let target = cluster.get_node_status(leader).await.expect("NodeStatus of the leader").applied_index;
        let before = cluster.digests_at(target, Duration::from_secs(10)).await;
        for (id, d) in &before {
            assert_eq!(
                d, &before[0].1,
                "before the restart, node {id}'s digest at index {target} differs from node 1's"
            );
        }
        let recorded = before[0].1.clone();
        assert_eq!(
            recorded.item_count,
            300 + SYSTEM_ITEMS,
            "the digest counts the 300 items written and the history record"
        );

        futures::future::join_all(ids.iter().map(|&id| cluster.stop(id))).await;
        for &id in &ids {
            cluster.restart(id);
        }
        let new_leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        println!("leader after the restart: node {new_leader}");

        for &id in &ids {
            let bad = check_items(&cluster.store(id), "full", "items", 0..300, 16).await;
            assert!(
                bad.is_empty(),
                "node {id} after the restart: {} items missing or wrong, e.g. {:?}",
                bad.len(),
                first(&bad, 5)
            );
        }
        for &id in &ids {
            cluster.wait_for_applied(id, target, Duration::from_secs(10)).await;
            let at = cluster.digest(id, target).await;
            assert_eq!(at, recorded, "node {id}: the digest at index {target} changed across the restart");
            let now = cluster.digest(id, 0).await;
            assert!(now.index >= target, "node {id} reports applied index {} below {target}", now.index);
            assert_eq!(
                (now.digest.as_str(), now.revision, now.item_count),
                (recorded.digest.as_str(), recorded.revision, recorded.item_count),
                "node {id}: the current digest, revision or item count changed across the restart"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_compare_and_set_writers_lose_no_update() {
    const TASKS: usize = 16;
    const INCREMENTS: usize = 10;
    const MAX_ATTEMPTS: usize = 5_000;
    let cluster = Cluster::start(3).await;
    within(Duration::from_secs(55), async {
        let clients = cluster.stores(&cluster.ids());
        put(&mut clients[0].clone(), "cas", "counters", "n", "0").await.expect("create the counter");

        let tasks: Vec<_> = (0..TASKS)
            .map(|t| tokio::spawn(cas_increments(t, clients[t % clients.len()].clone(), INCREMENTS, MAX_ATTEMPTS)))
            .collect();

        let mut written: Vec<u64> = Vec::new();
        let mut conflicts = 0;
        let mut failures = Vec::new();
        for task in tasks {
            match task.await.expect("a compare-and-set task panicked") {
                Ok((w, c)) => {
                    written.extend(w);
                    conflicts += c;
                }
                Err(e) => failures.push(e),
            }
        }
        assert!(failures.is_empty(), "compare-and-set tasks failed: {failures:?}");
        println!("acknowledged increments: {}, precondition failures: {conflicts}", written.len());
        assert_eq!(written.len(), TASKS * INCREMENTS, "acknowledged increments");
        written.sort_unstable();
        let expected: Vec<u64> = (1..=(TASKS * INCREMENTS) as u64).collect();
        assert!(
            written == expected,
            "the acknowledged compare-and-set writes did not write exactly 1..={} once each (a duplicate means one \
             did not hold its precondition)",
            TASKS * INCREMENTS
        );
        let item = get(&mut clients[1].clone(), "cas", "counters", "n").await.expect("Get the counter");
        assert_eq!(
            String::from_utf8_lossy(&item.value),
            (TASKS * INCREMENTS).to_string(),
            "the counter does not count every acknowledged increment"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_feed_returns_every_put_and_delete_in_order_and_follows_new_ones() {
    let cluster = Cluster::start(3).await;
    within(Duration::from_secs(40), async {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let follower = cluster.other(&[leader]);
        let mut c = cluster.store(leader);
        let rev = |r: Result<u64, Status>, what: &str| {
            r.unwrap_or_else(|e| panic!("{what} failed: {:?} {}", e.code(), e.message()))
        };
        let ra = rev(put(&mut c, "u", "notes", "a", "A").await.map(|r| r.revision), "put a");
        rev(put(&mut c, "u", "notes", "b", "B").await.map(|r| r.revision), "put b");
        let rc = rev(put(&mut c, "u", "notes", "c", "C").await.map(|r| r.revision), "put c");
        let rb_deleted = rev(delete(&mut c, "u", "notes", "b").await.map(|r| r.revision), "delete b");
        let rd = rev(put(&mut c, "u", "notes", "d", "D").await.map(|r| r.revision), "put d");

        let feed = changes(&mut cluster.store(follower), "u", 0).await;
        let got: Vec<(String, u64, bool)> = feed.iter().map(summary).collect();
        let want = vec![
            ("a".to_string(), ra, false),
            ("c".to_string(), rc, false),
            ("b".to_string(), rb_deleted, true),
            ("d".to_string(), rd, false),
        ];
        assert_eq!(got, want, "Changes(since 0) must hold each item's latest write, in revision order");
        assert!(feed.windows(2).all(|w| w[0].revision < w[1].revision), "revisions are not strictly increasing");
        for change in &feed {
            let id = item_id_of(&change.key);
            match (&change.item, change.deleted) {
                (None, true) => {}
                (Some(item), false) => {
                    assert_eq!(
                        item.value,
                        id.to_uppercase().into_bytes(),
                        "the change of {id} carries the wrong value"
                    );
                    assert_eq!(item.revision, change.revision, "the change of {id} carries another revision's item");
                }
                (item, deleted) => panic!("change of {id}: deleted={deleted} but item present={}", item.is_some()),
            }
        }

        // Follow through a follower, from the last revision.
        let mut fc = cluster.store(follower);
        let follow = ChangesRequest { user_id: "u".into(), since_revision: rd, follow: true, consistency: 0 };
        let mut stream = bounded(fc.changes(follow))
            .await
            .unwrap_or_else(|e| panic!("cannot open a follow stream: {:?} {}", e.code(), e.message()));
        let re = rev(put(&mut c, "u", "notes", "e", "E").await.map(|r| r.revision), "put e");
        let ra_deleted = rev(delete(&mut c, "u", "notes", "a").await.map(|r| r.revision), "delete a");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut followed = Vec::new();
        while followed.len() < 2 {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(change))) => followed.push(change),
                Ok(Ok(None)) => panic!("the follow stream ended after {} changes", followed.len()),
                Ok(Err(e)) => panic!("the follow stream failed: {:?} {}", e.code(), e.message()),
                Err(_) => panic!("the follow stream delivered {} of 2 changes within 5 s", followed.len()),
            }
        }
        let got: Vec<(String, u64, bool)> = followed.iter().map(summary).collect();
        assert_eq!(
            got,
            vec![("e".to_string(), re, false), ("a".to_string(), ra_deleted, true)],
            "the follow stream must deliver put e, then delete a"
        );
        let e_value = followed[0].item.as_ref().map(|i| i.value.clone());
        assert_eq!(e_value, Some(b"E".to_vec()), "the followed put of e carries its item");
        assert!(ra < ra_deleted, "the delete of a has a newer revision than its put");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_user_returns_exactly_the_users_items_at_one_revision() {
    let cluster = Cluster::start(3).await;
    within(Duration::from_secs(55), async {
        let ids = cluster.ids();
        let clients = cluster.stores(&ids);
        let mut max_revision = 0;
        for (user, collection, count) in
            [("exp", "contacts", 350), ("exp", "photos", 350), ("exp2", "contacts", 50), ("ex", "contacts", 50)]
        {
            let written = write_items(&clients, user, collection, 0..count, 16).await;
            max_revision = written.iter().map(|(_, r)| r.revision).fold(max_revision, u64::max);
        }
        let mut c = clients[0].clone();
        for i in 0..5 {
            let r = delete(&mut c, "exp", "contacts", &item_id(i))
                .await
                .unwrap_or_else(|e| panic!("delete {}: {:?} {}", item_id(i), e.code(), e.message()));
            max_revision = max_revision.max(r.revision);
        }

        let mut client = cluster.store(ids[1]);
        let req = ExportUserRequest { user_id: "exp".into(), consistency: 0 };
        let mut stream = bounded(client.export_user(request(req, RPC_TIMEOUT)))
            .await
            .unwrap_or_else(|e| panic!("cannot start ExportUser: {:?} {}", e.code(), e.message()));
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut chunks: Vec<ExportChunk> = Vec::new();
        for _ in 0..10_000 {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(chunk))) => chunks.push(chunk),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => panic!("the export stream failed: {:?} {}", e.code(), e.message()),
                Err(_) => panic!("the export did not finish within 15 s"),
            }
        }
        assert!(!chunks.is_empty(), "the export sent no chunk");
        let revision = chunks[0].revision;
        let revisions: BTreeSet<u64> = chunks.iter().map(|c| c.revision).collect();
        assert_eq!(revisions.len(), 1, "the export chunks carry different revisions: {revisions:?}");
        assert!(
            revision >= max_revision,
            "the export revision {revision} is below an acknowledged write's ({max_revision})"
        );

        let mut seen: HashMap<(String, String), Vec<u8>> = HashMap::new();
        let mut max_item_revision = 0;
        for item in chunks.into_iter().flat_map(|c| c.items) {
            let key = item.key.clone().expect("an exported item has a key");
            assert_eq!(key.user_id, "exp", "the export of exp holds an item of another user: {key:?}");
            max_item_revision = max_item_revision.max(item.revision);
            let previous = seen.insert((key.collection.clone(), key.item_id.clone()), item.value);
            assert!(previous.is_none(), "the export holds {key:?} twice");
        }
        assert!(
            revision >= max_item_revision,
            "the export revision {revision} is below an exported item's revision {max_item_revision}"
        );
        let mut expected: HashMap<(String, String), Vec<u8>> = HashMap::new();
        for i in 5..350 {
            expected.insert(("contacts".into(), item_id(i)), value_of("exp", "contacts", i));
        }
        for i in 0..350 {
            expected.insert(("photos".into(), item_id(i)), value_of("exp", "photos", i));
        }
        assert_eq!(seen.len(), 695, "the export holds {} items, not exp's 695 live ones", seen.len());
        let wrong: Vec<&(String, String)> =
            expected.iter().filter(|(k, v)| seen.get(*k) != Some(*v)).map(|(k, _)| k).take(5).collect();
        assert!(wrong.is_empty(), "the export misses or misreports items, e.g. {wrong:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_fail_within_their_deadline_when_two_nodes_are_down() {
    let cluster = Cluster::start(3).await;
    within(Duration::from_secs(30), async {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let mut client = cluster.store(leader);
        put(&mut client, "deadline", "items", "x", "1").await.expect("a write while the cluster is whole");
        // The survivor is the (former) leader: it must notice it has no quorum, not hang.
        for id in cluster.ids().into_iter().filter(|&id| id != leader) {
            cluster.kill(id);
        }
        // Within its lease (raft/src/lease.rs) the leader may still answer reads, rightly: no other
        // leader can exist yet. Past the followers' lease (election_timeout_max_ms, 450 ms in
        // tests) it must not.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let get_req = GetRequest { key: Some(key("deadline", "items", "x")), consistency: 0 };
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(5), client.get(request(get_req, Duration::from_secs(1))))
            .await
            .expect("a Get with a 1 s deadline did not return within 5 s");
        let elapsed = started.elapsed();
        let err = result.expect_err("a linearizable Get cannot succeed with two of three nodes down");
        println!("Get with two nodes down: {:?} after {} ms: {}", err.code(), elapsed.as_millis(), err.message());
        assert_eq!(err.code(), Code::Unavailable, "Get with no quorum (message: {:?})", err.message());
        assert!(elapsed < Duration::from_millis(1500), "the Get took {elapsed:?}, past its 1 s deadline");

        let put_req = PutRequest {
            key: Some(key("deadline", "items", "y")),
            value: b"2".to_vec(),
            content_type: String::new(),
            if_revision: None,
            durability: 0,
        };
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(5), client.put(request(put_req, Duration::from_secs(1))))
            .await
            .expect("a Put with a 1 s deadline did not return within 5 s");
        let elapsed = started.elapsed();
        let err = result.expect_err("a Put cannot be acknowledged with two of three nodes down");
        println!("Put with two nodes down: {:?} after {} ms: {}", err.code(), elapsed.as_millis(), err.message());
        assert!(
            matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
            "Put with no quorum: expected UNAVAILABLE (or DEADLINE_EXCEEDED), got {:?}: {}",
            err.code(),
            err.message()
        );
        assert!(elapsed < Duration::from_millis(1500), "the Put took {elapsed:?}, past its 1 s deadline");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_check_answers_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let cluster = Cluster::start(3).await;
    within(Duration::from_secs(20), async {
        for id in cluster.ids() {
            let mut health = HealthClient::new(cluster.channel(id));
            for service in ["", "keepsake.v1.Store"] {
                let req = HealthCheckRequest { service: service.into() };
                let resp = bounded(health.check(request(req, RPC_TIMEOUT))).await.unwrap_or_else(|e| {
                    panic!("node {id}: health check of {service:?}: {:?} {}", e.code(), e.message())
                });
                assert_eq!(
                    resp.status,
                    ServingStatus::Serving as i32,
                    "node {id}: health of {service:?} is not SERVING"
                );
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_invalid_argument_and_never_reaches_the_log() {
    let cluster = Cluster::start(3).await;
    within(Duration::from_secs(30), async {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
        let follower = cluster.other(&[leader]);
        // Through a follower: validation must happen before anything is forwarded.
        let mut c = cluster.store(follower);
        put(&mut c, "valid", "items", "first", "ok").await.expect("a valid write");

        let put_req = |k: ItemKey, value: Vec<u8>, durability: i32| PutRequest {
            key: Some(k),
            value,
            content_type: String::new(),
            if_revision: None,
            durability,
        };
        let batch_put = |i: usize| BatchOp {
            op: Some(batch_op::Op::Put(BatchPut {
                collection: "items".into(),
                item_id: item_id(i),
                value: b"v".to_vec(),
                content_type: String::new(),
                if_revision: None,
            })),
        };

        let before = cluster.get_node_status(leader).await.expect("NodeStatus of the leader");
        let value = || b"v".to_vec();
        let mut invalid: Vec<(&str, Result<(), Status>)> = Vec::new();
        let r = bounded(c.put(request(put_req(key("", "items", "i"), value(), 0), RPC_TIMEOUT))).await;
        invalid.push(("empty user_id", r.map(drop)));
        let r = bounded(c.put(request(put_req(key("valid", "items", "a\u{0}b"), value(), 0), RPC_TIMEOUT))).await;
        invalid.push(("item_id with NUL", r.map(drop)));
        let long = "c".repeat(300);
        let r = bounded(c.put(request(put_req(key("valid", &long, "i"), value(), 0), RPC_TIMEOUT))).await;
        invalid.push(("300-byte collection", r.map(drop)));
        let big = vec![7u8; (4 << 20) + 1];
        let r = bounded(c.put(request(put_req(key("valid", "items", "big"), big, 0), RPC_TIMEOUT))).await;
        invalid.push(("value of 4 MiB + 1 byte", r.map(drop)));
        let r = bounded(c.put(request(put_req(key("valid", "items", "d9"), value(), 9), RPC_TIMEOUT))).await;
        invalid.push(("durability 9", r.map(drop)));
        let get_req = GetRequest { key: Some(key("valid", "items", "first")), consistency: 9 };
        let r = bounded(c.get(request(get_req, RPC_TIMEOUT))).await;
        invalid.push(("consistency 9", r.map(drop)));
        let empty = BatchRequest { user_id: "valid".into(), ops: vec![], durability: 0 };
        let r = bounded(c.batch(request(empty, RPC_TIMEOUT))).await;
        invalid.push(("batch with 0 ops", r.map(drop)));
        let too_many = BatchRequest { user_id: "valid".into(), ops: (0..129).map(batch_put).collect(), durability: 0 };
        let r = bounded(c.batch(request(too_many, RPC_TIMEOUT))).await;
        invalid.push(("batch with 129 ops", r.map(drop)));
        for (what, result) in invalid {
            expect_status(result, Code::InvalidArgument, what);
        }
        let after = cluster.get_node_status(leader).await.expect("NodeStatus of the leader");
        assert_eq!(
            (after.term, after.role.as_str()),
            (before.term, "leader"),
            "leadership changed during the test, so the log comparison means nothing"
        );
        assert_eq!(
            after.last_log_index, before.last_log_index,
            "refused requests reached the leader's log (last log index {} -> {})",
            before.last_log_index, after.last_log_index
        );
        // ARCHIVED is acknowledged only once its entry is in the archive.
        let archived = bounded(c.put(request(
            put_req(key("valid", "items", "archived"), b"v".to_vec(), Durability::Archived as i32),
            RPC_TIMEOUT,
        )))
        .await
        .expect("an ARCHIVED put succeeds while the archive is up");
        let backup = cluster
            .admin(leader)
            .backup_status(request(keepsake::proto::v1::BackupStatusRequest {}, RPC_TIMEOUT))
            .await
            .expect("BackupStatus")
            .into_inner();
        assert!(
            backup.archived_index.is_some_and(|a| a >= archived.log_index),
            "acknowledged ARCHIVED write at index {} but the archive holds up to {:?}",
            archived.log_index,
            backup.archived_index
        );

        let conflict = put_if(&mut c, "valid", "items", "missing", "v", Some(5)).await;
        let status = expect_status(conflict, Code::FailedPrecondition, "if_revision 5 on a missing item");
        assert!(
            status.message().contains("current revision 0"),
            "the precondition failure should name the current revision 0: {:?}",
            status.message()
        );
        let missing = delete(&mut c, "valid", "items", "missing").await;
        expect_status(missing, Code::NotFound, "delete of a missing item");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_is_atomic_across_items() {
    let cluster = Cluster::start(3).await;
    within(Duration::from_secs(30), async {
        let mut c = cluster.store(1);
        let y = put(&mut c, "batcher", "things", "y", "y0").await.expect("create y");
        let bput = |id: &str, value: &str, if_revision: Option<u64>| BatchOp {
            op: Some(batch_op::Op::Put(BatchPut {
                collection: "things".into(),
                item_id: id.into(),
                value: value.as_bytes().to_vec(),
                content_type: String::new(),
                if_revision,
            })),
        };

        let bad = BatchRequest {
            user_id: "batcher".into(),
            ops: vec![bput("x", "x1", None), bput("y", "y1", Some(0))],
            durability: 0,
        };
        let err = expect_status(
            bounded(c.batch(request(bad, RPC_TIMEOUT))).await,
            Code::FailedPrecondition,
            "a batch whose second op expects y not to exist",
        );
        assert!(err.message().contains("op 1"), "the failure should name op 1: {:?}", err.message());
        expect_status(get(&mut c, "batcher", "things", "x").await, Code::NotFound, "x after the refused batch");
        let y_now = get(&mut c, "batcher", "things", "y").await.expect("y after the refused batch");
        assert_eq!((y_now.value.as_slice(), y_now.revision), (&b"y0"[..], y.revision), "the refused batch changed y");

        let good = BatchRequest {
            user_id: "batcher".into(),
            ops: vec![
                bput("x", "x1", Some(0)),
                bput("z", "z1", None),
                BatchOp {
                    op: Some(batch_op::Op::Delete(BatchDelete {
                        collection: "things".into(),
                        item_id: "y".into(),
                        if_revision: Some(y.revision),
                    })),
                },
            ],
            durability: 0,
        };
        let done = bounded(c.batch(request(good, RPC_TIMEOUT)))
            .await
            .unwrap_or_else(|e| panic!("a valid batch failed: {:?} {}", e.code(), e.message()));
        assert_eq!(done.revisions.len(), 3, "one revision per op: {:?}", done.revisions);
        assert!(done.revisions.windows(2).all(|w| w[0] < w[1]), "revisions in op order: {:?}", done.revisions);
        assert!(done.revisions[0] > y.revision, "the batch's revisions follow y's");

        let mut other_node = cluster.store(2);
        let x = get(&mut other_node, "batcher", "things", "x").await.expect("x after the batch");
        assert_eq!((x.value.as_slice(), x.revision), (&b"x1"[..], done.revisions[0]), "x after the batch");
        let z = get(&mut other_node, "batcher", "things", "z").await.expect("z after the batch");
        assert_eq!((z.value.as_slice(), z.revision), (&b"z1"[..], done.revisions[1]), "z after the batch");
        expect_status(
            get(&mut other_node, "batcher", "things", "y").await,
            Code::NotFound,
            "y after the batch deleted it",
        );
    })
    .await;
}
