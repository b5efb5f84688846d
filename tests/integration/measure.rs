//! Measurements, not assertions of speed: run by hand and read the figures it prints.
//!
//!     cargo nextest run --run-ignored only -E 'test(archive_lag_and_restore_speed)' --no-capture
//!     cargo nextest run --run-ignored only -E 'test(election_to_first_upload)' --no-capture
//!
//! A 3-node cluster archiving to the S3 test server (`KEEPSAKE_MEASURE_ARCHIVE=local` for a local
//! directory) takes a steady write load of `KEEPSAKE_MEASURE_BYTES` (default 1 GiB) of 16 KiB
//! values from 32 writers while the archive lag is sampled every 100 ms; then the archive is
//! restored twice — replaying segments only, and from an archive snapshot — and each restore's
//! speed is printed, and then that of one scrub pass over the snapshot's chunks
//! (`KEEPSAKE_MEASURE_ENCRYPTED=1`: with the archive encrypted). It asserts only that nothing
//! was lost.
//!
//! `election_to_first_upload_on_an_archive_of_a_million_objects` fills a local archive with
//! `KEEPSAKE_MEASURE_OBJECTS` (default 1,000,000) chunk objects, then kills the leader three
//! times under a steady write load and prints how long each election took and how long the new
//! leader took from its election to its first upload, next to what one listing of the whole
//! archive costs (which every election paid before the head-based end).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keepsake::proto::v1::*;

use crate::common::*;

const VALUE_BYTES: usize = 16 << 10;
const WRITERS: usize = 32;

/// A value zstd cannot shrink (xorshift64 from the item number), so archive bytes are real.
fn incompressible(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..VALUE_BYTES / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn restore(from: &Cluster, name: &str) -> serde_json::Value {
    let to = Cluster::builder().nodes(1).cluster_id(name).no_bootstrap().prepare();
    let (code, text) = restore_cli(from, &to, &["--output", "json"]);
    assert_eq!(code, 0, "restore: {text}");
    json_line(&text)
}

fn print_restore(what: &str, r: &serde_json::Value) {
    let seconds = r["seconds"].as_f64().unwrap_or(0.0).max(1e-9);
    let bytes = r["bytes"].as_f64().unwrap_or(0.0);
    let items = r["items"].as_f64().unwrap_or(0.0);
    println!(
        "restore {what}: {items} items, {:.1} MB of archive in {seconds:.1} s = {:.1} MB/s, {:.0} items/s (index {}, \
         snapshot {:?})",
        bytes / 1e6,
        bytes / 1e6 / seconds,
        items / seconds,
        r["index"],
        r["snapshot_index"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: run by hand with --run-ignored and read its output"]
async fn archive_lag_and_restore_speed() {
    let total: usize = std::env::var("KEEPSAKE_MEASURE_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 30);
    let items = total / VALUE_BYTES;
    let s3 = S3Server::start();
    let mut builder = Cluster::builder().archive_snapshots_on_demand();
    if std::env::var("KEEPSAKE_MEASURE_ARCHIVE").as_deref() != Ok("local") {
        builder = builder.archive_s3(&s3, "measure");
    }
    let keys = tempfile::tempdir().expect("a directory for the key file");
    if std::env::var("KEEPSAKE_MEASURE_ENCRYPTED").as_deref() == Ok("1") {
        println!("the archive is encrypted");
        builder = builder.archive_key_file(&write_key_file(&keys.path().join("archive.keys"), &key_entry("measure")));
    }
    let cluster = builder.start().await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut client = cluster.store(cluster.ids()[w % 3]);
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= items {
                        return;
                    }
                    let value = incompressible(i as u64);
                    let req = PutRequest { key: Some(key("m", "photos", &item_id(i))), value, ..Default::default() };
                    // Retried until acknowledged: the load must all land.
                    while bounded(client.put(request(req.clone(), RPC_TIMEOUT))).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    let mut lags = Vec::new();
    let mut admin = cluster.admin(leader);
    while next.load(Ordering::SeqCst) < items {
        if let Ok(s) = admin.backup_status(request(BackupStatusRequest {}, Duration::from_secs(2))).await {
            lags.push(s.into_inner().lag_seconds);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in writers {
        w.await.expect("writer");
    }
    let seconds = started.elapsed().as_secs_f64();
    lags.sort_by(|a, b| a.total_cmp(b));
    println!(
        "load: {items} writes of {VALUE_BYTES} B from {WRITERS} writers in {seconds:.1} s = {:.0} writes/s, {:.1} MB/s",
        items as f64 / seconds,
        (items * VALUE_BYTES) as f64 / 1e6 / seconds
    );
    println!(
        "archive lag during the load ({} samples, 100 ms apart): p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0.0)
    );
    let caught_up = eventually(Duration::from_secs(120), || async {
        let s = cluster.admin(leader).backup_status(request(BackupStatusRequest {}, RPC_TIMEOUT)).await.ok()?;
        let s = s.into_inner();
        (s.archived_index == Some(s.committed_index)).then_some(())
    })
    .await;
    assert!(caught_up.is_some(), "the archive caught up");

    let replayed = restore(&cluster, "measure-replay");
    assert_eq!(replayed["items"].as_u64(), Some(items as u64 + SYSTEM_ITEMS), "every write restored");
    print_restore("replaying segments", &replayed);
    let mut admin = cluster.admin(leader);
    admin
        .backup_snapshot(request(BackupSnapshotRequest {}, Duration::from_secs(600)))
        .await
        .expect("an archive snapshot");
    let from_snapshot = restore(&cluster, "measure-snapshot");
    assert_eq!(from_snapshot["items"].as_u64(), Some(items as u64 + SYSTEM_ITEMS), "every write restored");
    print_restore("from a snapshot", &from_snapshot);
    let started = Instant::now();
    let scrub = admin
        .backup_scrub(request(BackupScrubRequest {}, Duration::from_secs(600)))
        .await
        .expect("a scrub pass")
        .into_inner();
    let seconds = started.elapsed().as_secs_f64();
    assert!(scrub.damaged.is_empty() && scrub.repaired.is_empty(), "{scrub:?}");
    println!(
        "scrub pass: {} chunks, {} bytes in {seconds:.1} s = {:.1} MB/s",
        scrub.chunks,
        scrub.bytes,
        scrub.bytes as f64 / 1e6 / seconds
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: run by hand with --run-ignored and read its output"]
async fn election_to_first_upload_on_an_archive_of_a_million_objects() {
    use futures::TryStreamExt;
    let objects: usize =
        std::env::var("KEEPSAKE_MEASURE_OBJECTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let cluster = Cluster::builder().start().await;
    let mut leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    put(&mut cluster.store(leader), "e", "c", "first", "x").await.expect("a write");
    // Chunk objects of terms no leader reaches here: listed by anything that lists the whole
    // archive, deleted by no retention.
    let root = cluster.archive_dir().join(cluster.id()).join("snapshots").join("chunks");
    let started = Instant::now();
    for dir in 0..objects.div_ceil(1000) {
        let term = root.join(format!("{:020}", 1_000_000 + dir));
        std::fs::create_dir_all(&term).expect("a term directory");
        for k in 0..1000.min(objects - dir * 1000) {
            std::fs::write(term.join(format!("{:064x}.chunk", dir * 1000 + k)), b"x").expect("an object");
        }
    }
    println!("archive: {objects} synthetic objects written in {:.1} s", started.elapsed().as_secs_f64());
    let archive = cluster.open_archive();
    let started = Instant::now();
    let listed: Vec<object_store::ObjectMeta> =
        archive.store.list(Some(&archive.root)).try_collect().await.expect("list the archive");
    println!(
        "one listing of the whole archive: {} objects in {:.2} s (what every election paid before)",
        listed.len(),
        started.elapsed().as_secs_f64()
    );

    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (stores, writing) = (cluster.stores(&cluster.ids()), writing.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while writing.load(Ordering::SeqCst) {
                let _ = put(&mut stores[i % stores.len()].clone(), "e", "load", &item_id(i), "v").await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for round in 0..3 {
        let killed_at = Instant::now();
        cluster.kill(leader);
        let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != leader).collect();
        let new = cluster.leader_among(&others, Duration::from_secs(30)).await;
        let elected = killed_at.elapsed().as_secs_f64();
        // The node's own clock (same machine) stamps its uploads: the first one after this.
        let elected_us = keepsake_raft::clock::now_us();
        let first_upload_us = eventually(Duration::from_secs(120), || async {
            let s = cluster.admin(new).backup_status(request(BackupStatusRequest {}, RPC_TIMEOUT)).await.ok()?;
            let s = s.into_inner();
            (s.uploading && s.last_success_unix_us > elected_us).then_some(s.last_success_unix_us)
        })
        .await
        .expect("the new leader uploads");
        println!(
            "round {round}: leader {leader} killed; node {new} seen as leader after {elected:.2} s; its first upload \
             {:.3} s after that",
            (first_upload_us - elected_us) as f64 / 1e6
        );
        cluster.restart(leader);
        leader = new;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    writing.store(false, Ordering::SeqCst);
    writer.await.expect("the writer");
}
