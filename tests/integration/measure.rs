//! Measurements, not assertions of speed: run by hand and read the figures it prints.
//!
//!     cargo nextest run --run-ignored only -E 'test(archive_lag_and_restore_speed)' --no-capture
//!
//! A 3-node cluster archiving to the S3 test server (`KEEPSAKE_MEASURE_ARCHIVE=local` for a local
//! directory) takes a steady write load of `KEEPSAKE_MEASURE_BYTES` (default 1 GiB) of 16 KiB
//! values from 32 writers while the archive lag is sampled every 100 ms; then the archive is
//! restored twice — replaying segments only, and from an archive snapshot — and each restore's
//! speed is printed. It asserts only that nothing was lost.

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
    assert_eq!(replayed["items"].as_u64(), Some(items as u64), "every write restored");
    print_restore("replaying segments", &replayed);
    let mut admin = cluster.admin(leader);
    admin
        .backup_snapshot(request(BackupSnapshotRequest {}, Duration::from_secs(600)))
        .await
        .expect("an archive snapshot");
    let from_snapshot = restore(&cluster, "measure-snapshot");
    assert_eq!(from_snapshot["items"].as_u64(), Some(items as u64), "every write restored");
    print_restore("from a snapshot", &from_snapshot);
}
