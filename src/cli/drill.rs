//! `keepsake drill`: the rehearsed restore. Restores the archive's latest point into a scratch
//! directory, asks the live cluster for its digest at the same index, and reports whether they
//! match, the measured RPO (from the archive's last write) and RTO (the restore's time).
//!
//! Exit 0 only when the restored state is the live state and the restore reached at least the
//! index the live cluster said was archived before the restore began: an archive that lost its
//! newest segments fails the drill even though its older state still matches.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use keepsake_archive::restore::{self, Plan, Target};
use keepsake_raft::Node;
use serde_json::json;

use super::backup::ArchiveArgs;
use super::client::{request, with_failover, Failure};
use super::{ClientOpts, Output};
use crate::proto::v1::admin_client::AdminClient;
use crate::proto::v1::DigestRequest;

#[derive(Args)]
pub struct DrillArgs {
    #[command(flatten)]
    source: ArchiveArgs,
    /// The live cluster's nodes, to compare with (comma-separated host:port).
    #[arg(
        long,
        env = "KEEPSAKE_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    endpoints: Vec<String>,
    /// Deadline of each request to the live cluster.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
    timeout: std::time::Duration,
    /// Where to restore (default: a fresh temporary directory); removed afterwards.
    #[arg(long)]
    scratch_dir: Option<PathBuf>,
    #[command(flatten)]
    tls: super::client::TlsOpts,
}

pub async fn run(a: DrillArgs) -> Result<(), Failure> {
    let archive = a.source.open()?;
    let live =
        ClientOpts { endpoints: a.endpoints.clone(), timeout: a.timeout, output: a.source.output, tls: a.tls.clone() };
    // Asked before the restore lists the archive: the restore must reach at least this far.
    let before = super::backup::status(&live).await?;
    let asked_at_us = keepsake_raft::clock::now_us();
    let scratch = tempfile::Builder::new()
        .prefix("keepsake-drill-")
        .tempdir_in(a.scratch_dir.clone().unwrap_or_else(std::env::temp_dir))
        .map_err(|e| Failure { message: format!("cannot create a scratch directory: {e}"), code: 1 })?;
    // The drill's node is never started: any address will do.
    let members: BTreeMap<u64, Node> =
        [(1, Node { client_addr: "127.0.0.1:0".into(), peer_addr: "127.0.0.1:0".into() })].into();
    let plan = Plan {
        target_root: None,
        archive,
        target: Target::Latest,
        data_dir: scratch.path().join("data"),
        new_cluster_id: format!("{}-drill", a.source.cluster_id),
        members,
    };
    let tty = std::io::stderr().is_terminal();
    let bar = super::restore::progress_bar(tty);
    let r = restore::run(plan, |line| bar.set_message(line.to_owned())).await.map_err(|e| Failure {
        message: format!("drill failed: the restore did not complete: {e}"),
        code: super::restore::exit_code(&e),
    })?;
    bar.finish_and_clear();
    if let Some(archived) = before.archived_index.filter(|a| r.index < *a) {
        return Err(Failure {
            message: format!(
                "drill failed: the archive restores only to index {}, but the live cluster had archived up to {archived} \
                 before the drill began: archived entries are missing (`keepsake backup verify` names what is gone)",
                r.index
            ),
            code: 1,
        });
    }

    let live_digest = with_failover(&live, |ch| {
        let opts = live.clone();
        async move { AdminClient::new(ch).digest(request(&opts, DigestRequest { index: r.index })).await }
    })
    .await?
    .into_inner();
    // What losing every node would have lost when the drill began: nothing if the archive held
    // every committed entry, else every write since the archive's last one.
    let rpo_seconds = match before.lag_entries {
        0 => 0.0,
        _ if r.last_entry_time_us == 0 => before.lag_seconds,
        _ => (asked_at_us - r.last_entry_time_us).max(0) as f64 / 1e6,
    };
    let live = live_digest;
    let matches = live.digest == r.digest;
    match a.source.output {
        Output::Json => println!(
            "{}",
            json!({"index": r.index, "restored_digest": r.digest, "live_digest": live.digest, "match": matches,
                   "items": r.items, "snapshot_index": r.snapshot_index, "segments": r.segments, "bytes": r.bytes,
                   "rto_seconds": r.seconds, "rpo_seconds": rpo_seconds, "rpo_entries": before.lag_entries,
                   "archive_last_write_us": r.last_entry_time_us,
                   "passed_over": r.passed_over})
        ),
        Output::Text => {
            for name in &r.passed_over {
                println!(
                    "warning: passed over snapshot {name}: run `keepsake backup verify`, then take a new snapshot"
                );
            }
            let base = r.snapshot_index.map_or("index 0".to_string(), |i| format!("the snapshot at {i}"));
            println!("restored {} items at index {} from {base} and {} segments", r.items, r.index, r.segments);
            println!("restored digest {}", r.digest);
            println!("live digest     {} (at index {})", live.digest, live.index);
            println!("RTO (restore time): {:.2} s for {} bytes", r.seconds, r.bytes);
            println!("RPO: {rpo_seconds:.3} s, {} entries not archived when the drill began", before.lag_entries);
            if let Some(t) =
                chrono::DateTime::from_timestamp_micros(r.last_entry_time_us).filter(|_| r.last_entry_time_us > 0)
            {
                println!("the archive's last write: {}", t.to_rfc3339());
            }
            println!("{}", if matches { "ok: the archive restores to the live state" } else { "MISMATCH" });
        }
    }
    if matches {
        Ok(())
    } else {
        Err(Failure {
            message: format!(
                "the restored state's digest at index {} differs from the live cluster's: the archive does not \
                 hold what the cluster holds",
                r.index
            ),
            code: 1,
        })
    }
}
