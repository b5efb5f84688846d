//! Continuous backup to a real S3-compatible server over HTTP (moto, started per test): a
//! cluster archives to it, loses every node, and is restored from it alone; an object-store
//! outage stops archiving but not quorum writes until the backlog limit, and the archive then
//! catches up with no gap.

use std::time::Duration;

use keepsake::proto::v1::*;
use tonic::Code;

use crate::common::*;

const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

async fn put_durable(
    client: &mut keepsake::proto::v1::store_client::StoreClient<tonic::transport::Channel>,
    id: &str,
    durability: Durability,
    timeout: Duration,
) -> Result<PutResponse, tonic::Status> {
    let req = PutRequest {
        key: Some(key("s3user", "contacts", id)),
        value: format!("value of {id}").into_bytes(),
        durability: durability as i32,
        ..Default::default()
    };
    bounded_for(timeout + Duration::from_secs(1), client.put(request(req, timeout))).await
}

async fn backup_status(cluster: &Cluster, id: u64) -> Option<BackupStatusResponse> {
    bounded(cluster.admin(id).backup_status(request(BackupStatusRequest {}, Duration::from_secs(2)))).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_archived_to_s3_is_restored_from_it_after_every_node_is_lost() {
    let s3 = S3Server::start();
    let old = Cluster::builder().archive_s3(&s3, "prod").start().await;
    let leader = old.wait_for_leader(LEADER_TIMEOUT).await;
    let mut client = old.store(leader);
    let mut archived = Vec::new();
    for i in 0..60 {
        let id = format!("a{i}");
        put_durable(&mut client, &id, Durability::Archived, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("ARCHIVED put {id}: {:?} {}", e.code(), e.message()));
        archived.push(id);
    }
    let clients = old.stores(&old.ids());
    write_items(&clients, "s3user", "quorum", 0..200, 16).await;
    let archived_after = put_durable(&mut client, "last", Durability::Archived, Duration::from_secs(10))
        .await
        .expect("last ARCHIVED put");
    archived.push("last".into());

    // Every node and every disk is lost; only the bucket remains.
    for id in old.ids() {
        old.kill(id);
        std::fs::remove_dir_all(old.data_dir(id)).expect("lose the disk");
    }

    let (code, text) = archive_cli(&old, &["backup", "verify"]);
    assert_eq!(code, 0, "the archive in S3 verifies: {text}");

    let new = Cluster::builder().cluster_id("restored").archive_s3(&s3, "prod").no_bootstrap().prepare();
    let (code, text) = restore_cli(&old, &new, &[]);
    assert_eq!(code, 0, "restore from S3 succeeds: {text}");
    new.launch(3).await;
    let leader = new.wait_for_leader(LEADER_TIMEOUT).await;
    let mut client = new.store(leader);
    for id in &archived {
        let item = get(&mut client, "s3user", "contacts", id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged ARCHIVED write {id} lost: {:?} {}", e.code(), e.message()));
        assert_eq!(item.value, format!("value of {id}").into_bytes());
    }
    // Every QUORUM write before the last ARCHIVED one is in the archive too (index order).
    let missing = check_items(&client, "s3user", "quorum", 0..200, 16).await;
    assert!(missing.is_empty(), "writes committed before index {} are missing: {missing:?}", archived_after.log_index);

    // The new cluster archives its own writes under its own id, never into the old archive.
    let old_objects = list_segments(&old);
    let after = put_durable(&mut client, "after-restore", Durability::Archived, Duration::from_secs(10))
        .await
        .expect("an ARCHIVED write to the restored cluster");
    // In a segment, or in the snapshot the new archive starts with if that came after the write.
    let reach = archive_reach(&new);
    assert!(reach >= Some(after.log_index), "the restored cluster archives under its new id: {reach:?}");
    assert_eq!(list_segments(&old), old_objects, "the old cluster's archive is untouched");
}

/// The highest index a cluster's archive holds, in a segment or as a snapshot.
fn archive_reach(cluster: &Cluster) -> Option<u64> {
    let (code, text) = archive_cli(cluster, &["backup", "list", "--output", "json"]);
    assert_eq!(code, 0, "backup list: {text}");
    let v: serde_json::Value = json_line(&text);
    let indexes = |key: &str, field: &str| -> Vec<u64> {
        v[key].as_array().into_iter().flatten().filter_map(|o| o[field].as_u64()).collect()
    };
    indexes("segments", "last_index").into_iter().chain(indexes("snapshots", "index")).max()
}

/// `keepsake backup list` of a cluster's archive: the names of its segment objects.
fn list_segments(cluster: &Cluster) -> Vec<String> {
    let (code, text) = archive_cli(cluster, &["backup", "list"]);
    assert_eq!(code, 0, "backup list: {text}");
    text.lines().filter(|l| l.contains(".seg")).map(|l| l.split('\t').next().unwrap_or(l).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_store_outage_holds_archived_writes_then_refuses_writes_and_catches_up_with_no_gap() {
    let s3 = S3Server::start();
    let cluster = Cluster::builder().archive_s3(&s3, "outage").archive_option("max_backlog_seconds", "3").start().await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let mut client = cluster.store(leader);
    put_durable(&mut client, "before", Durability::Archived, Duration::from_secs(10)).await.expect("archived put");

    s3.pause();
    let outage = std::time::Instant::now();
    // Quorum writes go on while the archive is down and the backlog is under its limit…
    for i in 0..20 {
        put_durable(&mut client, &format!("during-{i}"), Durability::Quorum, Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("QUORUM put during the outage: {:?} {}", e.code(), e.message()));
    }
    // …an ARCHIVED write is committed but cannot be acknowledged…
    let e = put_durable(&mut client, "archived-during", Durability::Archived, Duration::from_millis(800))
        .await
        .expect_err("an ARCHIVED write cannot be acknowledged while the archive is down");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{}", e.message());
    // …and once the oldest unarchived write has waited past max_backlog_seconds, writes are
    // refused with a message that says why.
    let refused = eventually(Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            match put_durable(&mut client, "probe", Durability::Quorum, Duration::from_secs(2)).await {
                Err(e) if e.code() == Code::ResourceExhausted => Some(e),
                _ => None,
            }
        }
    })
    .await
    .expect("writes are refused once the archive is too far behind");
    assert!(refused.message().contains("archive"), "the refusal names the archive: {}", refused.message());
    let status = eventually(Duration::from_secs(15), || async {
        backup_status(&cluster, leader).await.filter(|s| !s.last_error.is_empty())
    })
    .await
    .expect("BackupStatus reports the upload error during the outage");
    assert!(status.lag_entries > 0 && status.lag_bytes > 0, "the lag is visible: {status:?}");
    // Monitoring sees it too: the metrics show the error and the lag, and the leader is not ready.
    assert_eq!(metric(&cluster, leader, "keepsake_archive_error"), 1.0);
    assert!(metric(&cluster, leader, "keepsake_archive_lag_seconds") > 3.0);
    assert!(metric(&cluster, leader, "keepsake_archive_lag_bytes") > 0.0);
    let (code, text) = https_request(&cluster.http_addr(leader), "GET", "/readyz").expect("GET /readyz");
    assert_eq!(code, 503, "the leader is not ready while it refuses writes: {text}");
    assert!(text.contains("archive"), "{text}");
    // The outage lasts 30 s; the lag keeps growing and writes stay refused all along.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed())).await;
    let late = backup_status(&cluster, leader).await.expect("BackupStatus answers during the outage");
    assert!(late.lag_seconds > status.lag_seconds && late.lag_seconds >= 25.0, "the lag grows: {late:?}");
    let e = put_durable(&mut client, "still-refused", Durability::Quorum, Duration::from_secs(2))
        .await
        .expect_err("writes stay refused while the archive is down");
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());

    s3.resume();
    let caught_up = eventually(Duration::from_secs(30), || async {
        let leader = cluster.leader_id().await?;
        let s = backup_status(&cluster, leader).await?;
        (s.archived_index == Some(s.committed_index) && s.last_error.is_empty()).then_some(s)
    })
    .await;
    assert!(caught_up.is_some(), "the archive catches up once the object store is back");
    put_durable(&mut client, "after", Durability::Archived, Duration::from_secs(10))
        .await
        .expect("writes are accepted and archived again");

    let (code, text) = archive_cli(&cluster, &["backup", "verify"]);
    assert_eq!(code, 0, "no gap and no damaged segment after the outage: {text}");
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_eq!(metric(&cluster, leader, "keepsake_archive_error"), 0.0);
    assert_eq!(metric(&cluster, leader, "keepsake_raft_is_leader"), 1.0);
    let (code, _) = https_request(&cluster.http_addr(leader), "GET", "/readyz").expect("GET /readyz");
    assert_eq!(code, 200, "ready again once the archive caught up");
}

/// Writes that never stop, for longer than `archive.max_backlog_seconds`, against an object
/// store with a real one's latency (30 ms per chunk, through the fault proxy) that still keeps
/// up: every upload sees new commits arrive while it runs, and that must not count as one
/// ever-growing wait. (It did: the lag grew with the length of the run, and after
/// max_backlog_seconds every write was refused with "the archive is behind".)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sustained_writes_are_not_paused_by_an_archive_that_keeps_up() {
    let s3 = S3Server::start();
    let slow = crate::proxy::Proxy::start("127.0.0.1:0", &s3.addr).await;
    slow.handle().set_default(crate::proxy::Mode::Delay(Duration::from_millis(30)));
    let cluster = Cluster::builder()
        .archive_s3_via(&s3, "steady", &format!("http://{}", slow.listen))
        .archive_option("max_backlog_seconds", "2")
        .start()
        .await;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let run = Duration::from_secs(7);
    let started = std::time::Instant::now();
    let mut writers = Vec::new();
    for w in 0..16 {
        let mut client = cluster.store(leader);
        writers.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0u64, Vec::new());
            while started.elapsed() < run {
                let id = format!("w{w}-{ok}");
                match put_durable(&mut client, &id, Durability::Quorum, Duration::from_secs(2)).await {
                    Ok(_) => ok += 1,
                    Err(e) => refused.push(format!("{:?} {}", e.code(), e.message())),
                }
            }
            (ok, refused)
        }));
    }
    let mut max_lag: f64 = 0.0;
    while started.elapsed() < run {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(s) = backup_status(&cluster, leader).await {
            max_lag = max_lag.max(s.lag_seconds);
        }
    }
    let mut total = 0;
    for w in writers {
        let (ok, refused) = w.await.expect("a writer panicked");
        assert!(refused.is_empty(), "writes failed while the archive kept up: {refused:?}");
        total += ok;
    }
    assert!(total > 100, "the writers kept writing: {total} writes");
    assert!(max_lag < 2.0, "the archive lag stays under the upload cycle, not the run's length: {max_lag} s");
}

/// A second cluster started with the same id and the same archive url as one that archived
/// there before (its disks lost, say, and bootstrapped again instead of restored) must not
/// upload into the first one's history, nor quietly wait until its own index passes the
/// archive's: the leader says what is wrong and archives nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_cluster_with_the_same_id_does_not_archive_into_the_first_ones_history() {
    let s3 = S3Server::start();
    let first = Cluster::builder().cluster_id("twin").archive_s3(&s3, "shared").start().await;
    let leader = first.wait_for_leader(LEADER_TIMEOUT).await;
    let clients = first.stores(&first.ids());
    write_items(&clients, "s3user", "first", 0..300, 16).await;
    let mut client = first.store(leader);
    put_durable(&mut client, "last-of-first", Durability::Archived, Duration::from_secs(10))
        .await
        .expect("ARCHIVED put on the first cluster");
    for id in first.ids() {
        first.kill(id);
    }
    let archived = list_segments(&first);

    let second = Cluster::builder().cluster_id("twin").archive_s3(&s3, "shared").start().await;
    let leader = second.wait_for_leader(LEADER_TIMEOUT).await;
    let mut client = second.store(leader);
    for i in 0..5 {
        put_durable(&mut client, &format!("second-{i}"), Durability::Quorum, Duration::from_secs(5))
            .await
            .expect("QUORUM writes go on");
    }
    let status = eventually(Duration::from_secs(15), || async {
        backup_status(&second, leader).await.filter(|s| s.last_error.contains("another cluster"))
    })
    .await
    .expect("the leader reports that the archive holds another cluster's history");
    assert!(status.last_error.contains("twin"), "the error names the cluster id: {}", status.last_error);
    let e = put_durable(&mut client, "second-archived", Durability::Archived, Duration::from_millis(1500))
        .await
        .expect_err("an ARCHIVED write cannot be acknowledged into another cluster's archive");
    assert_eq!(e.code(), Code::ResourceExhausted, "refused at once, not left to time out: {}", e.message());
    assert_eq!(list_segments(&second), archived, "nothing was uploaded into the first cluster's history");
}
