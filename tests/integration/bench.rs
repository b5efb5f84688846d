//! `keepsake bench` against real clusters: a few seconds per run, only to prove that the load
//! generator drives every workload, writes what it says it writes, reports sane figures, and
//! stops the cluster it started. The figures themselves are benchmarks, not tests
//! (docs/performance.md).

use std::time::Duration;

use keepsake::proto::v1::*;

use crate::common::*;

fn bench(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "--output", "json", "--warmup", "0s", "--duration", "2s"];
    all.extend_from_slice(args);
    let (code, out) = keepsake_cli(&all);
    assert_eq!(code, 0, "keepsake bench {args:?} failed:\n{out}");
    json_line(&out)
}

fn assert_sane(report: &serde_json::Value) {
    let ops = report["ops"].as_u64().expect("ops");
    assert!(ops > 0, "no operation completed: {report}");
    assert!(report["ops_per_second"].as_f64().expect("ops/s") > 0.0);
    let l = &report["latency"];
    let (p50, p99, max) = (l["p50_us"].as_u64().unwrap(), l["p99_us"].as_u64().unwrap(), l["max_us"].as_u64().unwrap());
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "latency percentiles out of order: {l}");
    assert!(max < 5_000_000, "an operation took longer than its deadline: {l}");
    assert_eq!(report["errors"], serde_json::json!({}), "errors: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_each_workload_and_writes_what_it_reports() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let eps = cluster.endpoints();

    // A read workload first writes every key of its (small) key space once: user 1 has exactly
    // the 7 items the preload wrote.
    let mixed = bench(&[
        "--endpoints",
        &eps,
        "--clients",
        "3",
        "--mix",
        "90/10",
        "--users",
        "2",
        "--items-per-user",
        "7",
        "--value-size",
        "1KiB",
    ]);
    assert_sane(&mixed);
    let listed = cluster
        .store(leader)
        .list(ListRequest { user_id: "u0000001".into(), collection: "bench".into(), ..Default::default() })
        .await
        .expect("list the second user's bench collection")
        .into_inner();
    assert_eq!(listed.items.len(), 7, "the preload wrote every item of user 1");
    assert!(listed.items.iter().all(|i| i.value.len() == 1024), "each value is 1 KiB");

    // After the check above: this run's keys (1,000 users × 100 items) include user 1's.
    let write = bench(&["--endpoints", &eps, "--clients", "4", "--mix", "write", "--value-size", "100"]);
    assert_sane(&write);
    assert_eq!(write["value_bytes"], 100);
    assert!(write["archive_lag"]["samples"].as_u64().unwrap_or(0) > 0, "the archive lag was sampled: {write}");

    let resync =
        bench(&["--endpoints", &eps, "--clients", "2", "--mix", "changes", "--users", "2", "--items-per-user", "7"]);
    assert_sane(&resync);

    let (code, out) = keepsake_cli(&["bench", "--endpoints", &eps, "--value-size", "1GB"]);
    assert_eq!(code, 2, "a bad size is a usage error: {out}");
    assert!(out.contains("1KiB"), "the message shows how to write a size: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_starts_its_own_tls_cluster_reports_each_node_and_stops_it() {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let cluster_dir = dir.path().join("cluster");
    // Nine ports: client base..+2, peer +100..+102, HTTP +200..+202.
    let base = free_port_block();
    let report = bench(&[
        "--start-cluster",
        "--tls",
        "--cluster-dir",
        &cluster_dir.to_string_lossy(),
        "--cluster-port",
        &base.to_string(),
        "--clients",
        "2",
        "--mix",
        "write",
    ]);
    assert_sane(&report);
    let servers = report["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 3, "one line per node: {report}");
    for s in servers {
        assert!(s["cpu_seconds"].as_f64().unwrap() > 0.0, "each node worked: {s}");
        assert!(s["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "each node's memory is read: {s}");
        let pid = s["pid"].as_u64().unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "node {pid} was stopped after the run");
    }
    let fsync = &report["fsync_round"];
    assert!(fsync["p50_us"].as_u64().unwrap() > 0, "the fsync round was measured: {report}");
    assert!(!cluster_dir.exists(), "the started cluster's directory was removed");
}

/// A base port with the nine ports a started bench cluster uses all free.
fn free_port_block() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (std::process::id() as u16 % 97) * 100 + fastrand_u16() % 80;
        let ok = [0, 1, 2, 100, 101, 102, 200, 201, 202]
            .iter()
            .all(|off| std::net::TcpListener::bind(("127.0.0.1", base + off)).is_ok());
        if ok {
            return base;
        }
    }
    panic!("no block of free ports on 127.0.0.1");
}

fn fastrand_u16() -> u16 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u16)
}
