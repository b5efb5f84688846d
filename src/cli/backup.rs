//! Backup commands for SREs: how far behind the archive is.

use clap::{Args, Subcommand};
use keepsake_archive::keys::KeySource;
use keepsake_archive::sealing::Keys;
use keepsake_archive::store::{Archive, Connection};
use serde_json::json;

use super::client::{request, with_failover, Failure};
use super::{ClientOpts, Output};
use crate::proto::v1::admin_client::AdminClient;
use crate::proto::v1::{BackupAdoptArchiveRequest, BackupScrubRequest, BackupSnapshotRequest, BackupStatusRequest};

#[derive(Subcommand)]
pub enum BackupCommand {
    /// The archive's last index, the lag behind the committed log, and the last error.
    Status(StatusArgs),
    /// Take an archive snapshot now (on the leader); give it a --timeout long enough to upload.
    Snapshot(StatusArgs),
    /// Re-read every archive chunk now (on the leader), rewrite damaged ones from its state;
    /// exit 1 if one could not be rebuilt.
    Scrub(StatusArgs),
    /// Make the leader's configured archive the cluster's: moves the archive on purpose, once
    /// every node's config names the new one.
    AdoptArchive(StatusArgs),
    /// The archive's snapshots and segments, from the object store.
    List(ArchiveArgs),
    /// Check every segment's checksums, the index continuity and overlaps; exit 1 on a fault.
    Verify(ArchiveArgs),
}

/// Where an archive is, for commands that read the object store directly.
#[derive(Args)]
pub struct ArchiveArgs {
    /// s3://bucket/prefix, file:///path or a directory.
    #[arg(long, env = "KEEPSAKE_ARCHIVE")]
    pub archive: String,
    /// The cluster whose archive to read.
    #[arg(long)]
    pub cluster_id: String,
    /// S3 endpoint of an S3-compatible server.
    #[arg(long, env = "KEEPSAKE_ARCHIVE_ENDPOINT", default_value = "")]
    pub endpoint: String,
    #[arg(long, env = "AWS_REGION", default_value = "")]
    pub region: String,
    /// An encrypted archive's key ring, from this file…
    #[arg(long, env = "KEEPSAKE_ARCHIVE_KEY_FILE", default_value = "")]
    pub key_file: String,
    /// …from this environment variable…
    #[arg(long, default_value = "")]
    pub key_env: String,
    /// …or from what this command prints (as archive.key_command).
    #[arg(long, env = "KEEPSAKE_ARCHIVE_KEY_COMMAND", hide_env_values = true, default_value = "")]
    pub key_command: String,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl ArchiveArgs {
    pub fn open(&self) -> Result<Archive, Failure> {
        self.open_as(None, &self.cluster_id)
    }

    /// The root of `cluster_id` in `url` (default: this archive), reached the same way.
    pub fn open_as(&self, url: Option<&str>, cluster_id: &str) -> Result<Archive, Failure> {
        let connection =
            Connection { endpoint: self.endpoint.clone(), region: self.region.clone(), ..Connection::default() };
        let archive = Archive::open(url.unwrap_or(&self.archive), &connection, cluster_id)
            .map_err(|e| Failure::usage(e.to_string()))?;
        let source =
            KeySource::from_settings(&self.key_file, &self.key_env, &self.key_command).map_err(Failure::usage)?;
        let keys = match source {
            None => Keys::plaintext(),
            Some(source) => Keys::sealed(source.load().map_err(Failure::usage)?),
        };
        Ok(archive.with_keys(keys))
    }
}

fn store_failure(e: object_store::Error) -> Failure {
    Failure { message: format!("cannot read the archive: {e}"), code: 5 }
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    opts: ClientOpts,
}

pub async fn run(cmd: BackupCommand) -> Result<(), Failure> {
    match cmd {
        BackupCommand::List(a) => return list(a).await,
        BackupCommand::Verify(a) => return verify(a).await,
        BackupCommand::Snapshot(a) => return snapshot(a).await,
        BackupCommand::Scrub(a) => return scrub(a).await,
        BackupCommand::AdoptArchive(a) => {
            let r =
                with_failover(&a.opts, |ch| {
                    let opts = a.opts.clone();
                    async move {
                        AdminClient::new(ch).backup_adopt_archive(request(&opts, BackupAdoptArchiveRequest {})).await
                    }
                })
                .await?
                .into_inner();
            match a.opts.output {
                Output::Json => println!("{}", json!({"previous": r.previous, "archive": r.archive})),
                Output::Text if r.previous == r.archive => println!("the cluster already archives to {}", r.archive),
                Output::Text => println!("the cluster now archives to {} (was {:?})", r.archive, r.previous),
            }
        }
        BackupCommand::Status(a) => {
            let s = status(&a.opts).await?;
            match a.opts.output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "node_id": s.node_id, "archive_url": s.archive_url, "archived_index": s.archived_index,
                        "committed_index": s.committed_index, "lag_entries": s.lag_entries,
                        "lag_seconds": s.lag_seconds, "last_error": s.last_error,
                        "last_success_unix_us": s.last_success_unix_us, "segments_uploaded": s.segments_uploaded,
                        "bytes_uploaded": s.bytes_uploaded, "uploading": s.uploading, "lag_bytes": s.lag_bytes,
                        "newest_snapshot_index": s.newest_snapshot_index, "newest_snapshot_unix_us": s.newest_snapshot_unix_us,
                        "local_directory": s.local_directory, "refused": s.refused, "history_id": s.history_id,
                        "scrubbed_chunks": s.scrubbed_chunks, "scrubbed_bytes": s.scrubbed_bytes,
                        "repaired_chunks": s.repaired_chunks, "damaged_chunks": s.damaged_chunks,
                    })
                ),
                Output::Text => {
                    println!("archive:        {}", s.archive_url);
                    if !s.history_id.is_empty() {
                        println!("history:        {}", s.history_id);
                    }
                    if !s.refused.is_empty() {
                        println!("REFUSED:        {}", s.refused);
                    }
                    if s.local_directory {
                        println!(
                            "                a directory on the node's machine: ARCHIVED writes are not off this box \
                             unless it is a mount of other storage"
                        );
                    }
                    let archived = s.archived_index.map_or("nothing yet".to_string(), |i| i.to_string());
                    println!("archived index: {archived} (committed {})", s.committed_index);
                    println!(
                        "lag:            {} entries, {} bytes, {:.3} s",
                        s.lag_entries, s.lag_bytes, s.lag_seconds
                    );
                    println!(
                        "uploaded:       {} segments, {} bytes (by node {})",
                        s.segments_uploaded, s.bytes_uploaded, s.node_id
                    );
                    match s.newest_snapshot_index {
                        Some(i) => {
                            let when = chrono::DateTime::from_timestamp_micros(s.newest_snapshot_unix_us)
                                .map_or(String::new(), |t| t.to_rfc3339());
                            println!("newest snapshot: index {i}, written {when}");
                        }
                        None => println!("newest snapshot: none yet"),
                    }
                    println!(
                        "scrubbed:       {} chunks, {} bytes; {} repaired",
                        s.scrubbed_chunks, s.scrubbed_bytes, s.repaired_chunks
                    );
                    for name in &s.damaged_chunks {
                        println!("DAMAGED chunk:  {name}");
                    }
                    if !s.last_error.is_empty() {
                        println!("last error:     {}", s.last_error);
                    }
                }
            }
        }
    }
    Ok(())
}

async fn list(a: ArchiveArgs) -> Result<(), Failure> {
    let archive = a.open()?;
    let segments = keepsake_archive::verify::list(&archive).await.map_err(store_failure)?;
    let snapshots = keepsake_archive::verify::list_snapshots(&archive).await.map_err(store_failure)?;
    match a.output {
        Output::Json => println!(
            "{}",
            json!({
                "snapshots": snapshots.iter().map(|(index, name, bytes)| json!({"object": name, "index": index, "bytes": bytes})).collect::<Vec<_>>(),
                "segments": segments.iter().map(|s| json!({"object": s.name, "first_index": s.first, "last_index": s.last, "bytes": s.bytes})).collect::<Vec<_>>(),
            })
        ),
        Output::Text => {
            for (index, name, bytes) in &snapshots {
                println!("{name}\tsnapshot at {index}\t{bytes} bytes (manifest)");
            }
            for s in &segments {
                println!("{}\t{}-{}\t{} bytes", s.name, s.first, s.last, s.bytes);
            }
            println!("{} snapshots, {} segments", snapshots.len(), segments.len());
        }
    }
    Ok(())
}

async fn verify(a: ArchiveArgs) -> Result<(), Failure> {
    let archive = a.open()?;
    let r = keepsake_archive::verify::verify(&archive, &a.cluster_id).await.map_err(store_failure)?;
    match a.output {
        Output::Json => println!(
            "{}",
            json!({"segments": r.segments, "snapshots": r.snapshots, "chunks": r.chunks, "bytes": r.bytes, "first_index": r.first_index,
                   "last_index": r.last_index, "last_write_unix_us": r.last_write_us, "history_id": r.history,
                   "problems": r.problems})
        ),
        Output::Text => {
            println!("archive {} of cluster {}", archive.url, a.cluster_id);
            if !r.history.is_empty() {
                println!("history: {}", r.history);
            }
            println!("segments: {}, snapshots: {} ({} chunks), {} bytes", r.segments, r.snapshots, r.chunks, r.bytes);
            match (r.first_index, r.last_index) {
                (Some(f), Some(l)) => {
                    let when = chrono::DateTime::from_timestamp_micros(r.last_write_us)
                        .filter(|_| r.last_write_us > 0)
                        .map_or("no write yet".to_owned(), |t| format!("last write at {}", t.to_rfc3339()));
                    println!("entries: {f}-{l} ({when})");
                }
                _ => println!("entries: none"),
            }
            for p in &r.problems {
                println!("FAULT: {p}");
            }
            if r.problems.is_empty() {
                println!("ok: every segment checks out and the entries are continuous");
            }
        }
    }
    if r.problems.is_empty() {
        Ok(())
    } else {
        Err(Failure { message: format!("the archive has {} fault(s); see above", r.problems.len()), code: 1 })
    }
}

async fn snapshot(a: StatusArgs) -> Result<(), Failure> {
    let r = with_failover(&a.opts, |ch| {
        let opts = a.opts.clone();
        async move { AdminClient::new(ch).backup_snapshot(request(&opts, BackupSnapshotRequest {})).await }
    })
    .await?
    .into_inner();
    match a.opts.output {
        Output::Json => println!(
            "{}",
            json!({"index": r.index, "chunks": r.chunks, "new_chunks": r.new_chunks, "new_bytes": r.new_bytes})
        ),
        Output::Text => println!(
            "archived a snapshot at index {}: {} chunks, {} new ({} bytes uploaded)",
            r.index, r.chunks, r.new_chunks, r.new_bytes
        ),
    }
    Ok(())
}

async fn scrub(a: StatusArgs) -> Result<(), Failure> {
    let r = with_failover(&a.opts, |ch| {
        let opts = a.opts.clone();
        async move { AdminClient::new(ch).backup_scrub(request(&opts, BackupScrubRequest {})).await }
    })
    .await?
    .into_inner();
    match a.opts.output {
        Output::Json => {
            println!("{}", json!({"chunks": r.chunks, "bytes": r.bytes, "repaired": r.repaired, "damaged": r.damaged}))
        }
        Output::Text => {
            println!("scrubbed {} chunks, {} bytes", r.chunks, r.bytes);
            for name in &r.repaired {
                println!("repaired: {name}");
            }
            for name in &r.damaged {
                println!("DAMAGED:  {name} (this node's state no longer holds it)");
            }
        }
    }
    if r.damaged.is_empty() {
        Ok(())
    } else {
        Err(Failure { message: format!("{} chunk(s) are damaged and could not be rebuilt", r.damaged.len()), code: 1 })
    }
}

/// The cluster's archive status, from its leader (a follower passes the request on).
pub async fn status(opts: &ClientOpts) -> Result<crate::proto::v1::BackupStatusResponse, Failure> {
    let status = with_failover(opts, |ch| {
        let opts = opts.clone();
        async move { AdminClient::new(ch).backup_status(request(&opts, BackupStatusRequest {})).await }
    })
    .await?;
    Ok(status.into_inner())
}
