//! `keepsake restore`: rebuild a node's data directory from the archive alone, as the first
//! node of a new cluster.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use keepsake_archive::restore::{self, Plan, Target};
use keepsake_raft::Node;
use serde_json::json;

use super::backup::ArchiveArgs;
use super::client::Failure;
use super::Output;
use crate::config::parse_members;

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    source: ArchiveArgs,
    /// Restore up to and including this log index, or `latest` (the default: everything
    /// archived). An index past the archive's end fails, naming the last one it holds.
    #[arg(long, conflicts_with = "to_time")]
    to_index: Option<String>,
    /// Restore every write made at or before this time (RFC 3339, e.g. 2026-11-23T10:00:00Z),
    /// or `latest`. A time the archive cannot show it covers (no entry after it) fails, naming
    /// the archive's last write.
    #[arg(long)]
    to_time: Option<String>,
    /// The new, empty data directory of the restored node.
    #[arg(long)]
    data_dir: PathBuf,
    /// The new cluster's id (never the old one, so the old archive is never written to).
    #[arg(long)]
    new_cluster_id: String,
    /// The new cluster's voters: ID=CLIENT_ADDR/PEER_ADDR,…; start the restored node as one of them.
    #[arg(long)]
    members: String,
    /// The archive the new cluster will write to (default: the one restored from). Its root
    /// for --new-cluster-id must be empty: a restored cluster starts a history of its own.
    #[arg(long)]
    new_archive: Option<String>,
}

/// A spinner with the restore's progress and elapsed time on a terminal; hidden otherwise.
pub fn progress_bar(tty: bool) -> indicatif::ProgressBar {
    if !tty {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

pub async fn run(a: RestoreArgs) -> Result<(), Failure> {
    if a.new_cluster_id == a.source.cluster_id {
        return Err(Failure::usage(
            "--new-cluster-id must differ from --cluster-id: a restored cluster archives on its own",
        ));
    }
    let target = match (a.to_index.as_deref(), a.to_time.as_deref()) {
        (Some("latest"), _) | (None, Some("latest")) | (None, None) => Target::Latest,
        (Some(i), _) => Target::Index(
            i.parse().map_err(|_| Failure::usage(format!("--to-index {i:?} is neither a log index nor `latest`")))?,
        ),
        (None, Some(t)) => {
            let at = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
                Failure::usage(format!("--to-time {t:?} is not RFC 3339 ({e}); write e.g. 2026-11-23T10:00:00Z"))
            })?;
            Target::Time(at.timestamp_micros())
        }
    };
    let members: BTreeMap<u64, Node> = parse_members(&a.members)
        .map_err(|e| Failure::usage(e.to_string()))?
        .into_iter()
        .map(|m| (m.id, Node { client_addr: m.client_addr, peer_addr: m.peer_addr }))
        .collect();
    if members.is_empty() {
        return Err(Failure::usage("--members names no node"));
    }
    let archive = a.source.open()?;
    let target_root = a.source.open_as(a.new_archive.as_deref(), &a.new_cluster_id)?;
    let plan = Plan {
        archive,
        target,
        data_dir: a.data_dir.clone(),
        new_cluster_id: a.new_cluster_id.clone(),
        members,
        target_root: Some(target_root),
    };
    let bar = progress_bar(std::io::stderr().is_terminal());
    let r = restore::run(plan, |line| bar.set_message(line.to_owned()))
        .await
        .map_err(|e| Failure { message: format!("restore failed, nothing was written: {e}"), code: exit_code(&e) })?;
    bar.finish_and_clear();
    let mb_per_s = r.bytes as f64 / 1e6 / r.seconds.max(1e-9);
    match a.source.output {
        Output::Json => println!(
            "{}",
            json!({"target": target_name(target), "index": r.index, "snapshot_index": r.snapshot_index, "last_entry_time_us": r.last_entry_time_us, "items": r.items,
                   "revision": r.revision, "revision_floor": r.revision_floor, "segments": r.segments,
                   "bytes": r.bytes, "seconds": r.seconds, "digest": r.digest, "passed_over": r.passed_over})
        ),
        Output::Text => {
            let when =
                chrono::DateTime::from_timestamp_micros(r.last_entry_time_us).map_or(String::new(), |t| t.to_rfc3339());
            println!(
                "restored {} items up to index {} (last write at {when}; target: {})",
                r.items,
                r.index,
                target_name(target)
            );
            println!(
                "digest {} at revision {}; new writes start above revision {}",
                r.digest, r.revision, r.revision_floor
            );
            for name in &r.passed_over {
                println!("passed over snapshot {name}: run `keepsake backup verify`, then take a new snapshot");
            }
            let base = r.snapshot_index.map_or("index 0".to_string(), |i| format!("the snapshot at index {i}"));
            println!(
                "started from {base}; read {} segments, {} bytes in {:.2} s ({mb_per_s:.1} MB/s)",
                r.segments, r.bytes, r.seconds
            );
            println!(
                "start it with: keepsake serve --data-dir {} --cluster-id {} --node-id <one of --members> …, and the other \
                 members with empty data directories and no --members",
                a.data_dir.display(),
                a.new_cluster_id
            );
        }
    }
    Ok(())
}

/// Exit 3 when the archive does not reach the target (as "not found"), 1 for anything else.
pub fn exit_code(e: &restore::RestoreError) -> u8 {
    match e {
        restore::RestoreError::NotReached(_) => 3,
        _ => 1,
    }
}

/// The target as the JSON report names it: `latest`, `index N` or `time T`.
fn target_name(target: Target) -> String {
    match target {
        Target::Latest => "latest".into(),
        Target::Index(i) => format!("index {i}"),
        Target::Time(t) => {
            format!("time {}", chrono::DateTime::from_timestamp_micros(t).map_or(t.to_string(), |t| t.to_rfc3339()))
        }
    }
}
