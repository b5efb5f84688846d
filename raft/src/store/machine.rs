//! The state machine: applies committed entries to the items, builds and installs snapshots.
//!
//! Invariant: the applied log id, membership, digest and revision counter are written in the
//! same batch as the state changes they describe. A snapshot install is redone from its file on
//! the next start if a crash interrupts it, so state is never left half installed; a received
//! file that a crash left unverified is removed, one that a crash left unpublished is published.
//! The log store learns when an install is durable (its marker written), since only then may
//! it purge the entries the snapshot replaces.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{OptionalSend, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{WriteBatch, DB};
use tokio::sync::watch;

use super::apply::{put_meta, Applier, KEY_DIGEST_FORMAT, KEY_META};
use super::db::{self, cf, CF_DIGESTS, CF_ITEMS, CF_META};
use super::error::{blocking, read_snapshot, to_raft, write_snapshot, StoreError};
use super::install::Installs;
use super::loader::StateLoader;
use super::reader::StateReader;
use super::records::{DigestPoint, FormatMark, ItemRecord, MachineMeta};
use super::snapshot::{self, SnapshotHeader};
use crate::command::CommandResult;
use crate::digest::DigestFormat;
use crate::keys::HISTORY_RECORD_KEY;
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// An apply call of at most this many item operations runs inline (see `blocking`).
const INLINE_APPLY_OPS: usize = 256;

/// Present in `meta` while a snapshot install is under way.
const KEY_INSTALLING: &[u8] = b"installing";
pub(crate) const CURRENT: &str = "current.snap";
const INCOMING: &str = "incoming.snap";
const INSTALLING: &str = "installing.snap";

pub struct StateMachine {
    db: Arc<DB>,
    dir: PathBuf,
    meta: MachineMeta,
    /// The format `meta.digest` is in: the one the state's history record names.
    format: DigestFormat,
    applied: watch::Sender<DigestPoint>,
    /// Tells the log store when an install is durable (see `install.rs`).
    installs: Installs,
}

impl StateMachine {
    pub(crate) fn open(db: Arc<DB>, dir: PathBuf, installs: Installs) -> Result<Self, StoreError> {
        if db::get::<bool>(&db, CF_META, KEY_INSTALLING)?.is_some() {
            tracing::warn!("finishing a snapshot install that a crash interrupted");
            finish_install(&db, &dir)?;
        }
        let meta: MachineMeta = db::get(&db, CF_META, KEY_META)?.unwrap_or_default();
        let format = settled_format(&db, &meta)?;
        settle_installing(&dir, &meta)?;
        remove_leftovers(&dir)?;
        let (applied, _) = watch::channel(meta.point());
        Ok(StateMachine { db, dir, meta, format, applied, installs })
    }

    /// Restore only: makes the replayed state the first state of a new cluster — applied at
    /// `at` with `membership`, revisions continuing above `resync.floor` — and builds the Raft
    /// snapshot new members will receive. The log store must be sealed at the same log id.
    pub async fn seal_restored(
        &mut self,
        at: LogId,
        membership: openraft::Membership<crate::NodeId, crate::Node>,
        resync: super::ResyncRange,
    ) -> Result<(), StoreError> {
        let mut meta = self.meta.clone();
        meta.applied = Some(at);
        meta.membership = StoredMembership::new(Some(at), membership);
        meta.revision = meta.revision.max(resync.floor);
        meta.resync.push(resync);
        let (db, format) = (self.db.clone(), self.format);
        let sealed = meta.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf(&db, CF_DIGESTS), [].as_slice(), [0xffu8; 9].as_slice());
            let point = sealed.point();
            batch.put_cf(cf(&db, CF_DIGESTS), crate::keys::index_key(point.index), db::encode(&point));
            put_meta(&mut batch, &db, &sealed, format);
            db::write_synced(&db, batch, "seal restored state")
        })
        .await?;
        self.meta = meta;
        self.applied.send_replace(self.meta.point());
        let mut builder = self.get_snapshot_builder().await;
        builder.build_snapshot().await.map_err(|e| StoreError::Corrupt(format!("cannot build the snapshot: {e}")))?;
        Ok(())
    }

    /// Restore only: starts loading a whole state (an archive snapshot's records) into this
    /// machine, replacing its items and changes; `load_archived` finishes it.
    pub fn loader(&self) -> StateLoader {
        StateLoader::new(self.db.clone())
    }

    /// Restore only: checks what `loader` loaded against `expected` (digest and live items)
    /// and records it as the state applied at `expected.applied`.
    pub async fn load_archived(&mut self, loader: StateLoader, expected: MachineMeta) -> Result<(), StoreError> {
        let db = self.db.clone();
        let meta = expected.clone();
        self.format = blocking(move || {
            let format = loader.finish(meta.digest, meta.items, "archive snapshot")?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf(&db, CF_DIGESTS), [].as_slice(), [0xffu8; 9].as_slice());
            let point = meta.point();
            batch.put_cf(cf(&db, CF_DIGESTS), crate::keys::index_key(point.index), db::encode(&point));
            put_meta(&mut batch, &db, &meta, format);
            db::write_synced(&db, batch, "load archived state")?;
            Ok(format)
        })
        .await?;
        self.meta = expected;
        self.applied.send_replace(self.meta.point());
        Ok(())
    }

    /// The read side, sharing this machine's database and apply notifications.
    pub fn reader(&self) -> StateReader {
        StateReader::new(self.db.clone(), self.applied.subscribe())
    }

    /// Installs a received snapshot: its bytes become `installing.snap`, fsynced and verified;
    /// the install marker makes it durable (a restart finishes it), and only then may the log it
    /// replaces be purged (`install.rs`).
    async fn install(&mut self, meta: &SnapshotMeta, snapshot: tokio::fs::File) -> Result<(), StoreError> {
        let installing = self.path(INSTALLING);
        copy_to(snapshot, &installing).await?;
        let _ = tokio::fs::remove_file(self.path(INCOMING)).await;
        let (db, dir, expected) = (self.db.clone(), self.dir.clone(), meta.last_log_id);
        blocking(move || {
            let header = snapshot::verify(&installing)?;
            if header.meta.last_log_id != expected {
                return Err(StoreError::Corrupt(format!(
                    "received snapshot is at {:?}, openraft expected {expected:?}",
                    header.meta.last_log_id
                )));
            }
            sync_dir(&dir)?;
            crate::crash::point("snapshot-install-before-marker");
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(&db, CF_META), KEY_INSTALLING, db::encode(&true));
            db::write_synced(&db, batch, "mark snapshot install")
        })
        .await?;
        self.installs.durable(meta.last_log_id.map_or(0, |l| l.index));
        let (db, dir) = (self.db.clone(), self.dir.clone());
        (self.meta, self.format) = blocking(move || finish_install(&db, &dir)).await?;
        self.applied.send_replace(self.meta.point());
        Ok(())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Loads `installing.snap` into the database and publishes it as the current snapshot.
fn finish_install(db: &Arc<DB>, dir: &Path) -> Result<(MachineMeta, DigestFormat), StoreError> {
    let installing = dir.join(INSTALLING);
    let (header, format) = snapshot::load(db, &installing)?;
    let mut machine = header.machine.clone();
    machine.applied = header.meta.last_log_id;
    machine.membership = header.meta.last_membership.clone();
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cf(db, CF_DIGESTS), [].as_slice(), [0xffu8; 9].as_slice());
    let point = machine.point();
    batch.put_cf(cf(db, CF_DIGESTS), crate::keys::index_key(point.index), db::encode(&point));
    put_meta(&mut batch, db, &machine, format);
    batch.delete_cf(cf(db, CF_META), KEY_INSTALLING);
    db::write_synced(db, batch, "finish snapshot install")?;
    crate::crash::point("snapshot-install-before-publish");
    publish_installing(dir)?;
    Ok((machine, format))
}

/// The digest format the state is summed in, which must be the one its history record names.
/// Only a build from before formats can leave them apart: one that ran the node after this
/// build summed it in format 2 (a downgrade: it added format 1 hashes to a format 2 sum), or
/// one that applied the record moving the cluster on (a member added on an old build). Its
/// digests since then cannot be trusted, nor can the ones it archived, and no re-sum mends
/// those: the node refuses to start, saying how to rebuild it.
fn settled_format(db: &DB, meta: &MachineMeta) -> Result<DigestFormat, StoreError> {
    let corrupt = StoreError::Corrupt;
    let mark: Option<FormatMark> = db::get(db, CF_META, KEY_DIGEST_FORMAT)?;
    let summed = DigestFormat::from_number(mark.map_or(0, |m| m.format)).map_err(corrupt)?;
    // A mark behind the meta (or none): a build from before formats wrote the meta last.
    let older_build = mark.is_none_or(|m| m.applied != meta.applied);
    let record = db::get::<ItemRecord>(db, CF_ITEMS, HISTORY_RECORD_KEY)?;
    let named =
        DigestFormat::named_by(record.as_ref().filter(|r| !r.deleted).map(|r| r.value.as_slice())).map_err(corrupt)?;
    if named == summed && !(older_build && summed != DigestFormat::V1) {
        return Ok(named);
    }
    Err(StoreError::Corrupt(format!(
        "this node's state digest cannot be trusted: it was last summed in format {}, its history record \
         names format {}, and a Keepsake build from before digest formats ran this node after its state moved \
         to format 2. Remove the node from the cluster, delete its data directory and add it again (it \
         receives a Raft snapshot)",
        summed.number(),
        named.number(),
    )))
}

/// Makes `installing.snap` the current snapshot, durably.
fn publish_installing(dir: &Path) -> Result<(), StoreError> {
    let installing = dir.join(INSTALLING);
    std::fs::rename(&installing, dir.join(CURRENT)).map_err(|e| StoreError::io(&installing, e))?;
    sync_dir(dir)
}

/// An `installing.snap` with no install marker is either a received file a crash interrupted
/// before it was checked (removed), or one whose install finished but was not yet published as
/// the current snapshot (published: it is exactly the state `meta` describes).
fn settle_installing(dir: &Path, meta: &MachineMeta) -> Result<(), StoreError> {
    let installing = dir.join(INSTALLING);
    if !installing.exists() {
        return Ok(());
    }
    match snapshot::verify(&installing) {
        Ok(h) if h.meta.last_log_id == meta.applied && h.machine.digest == meta.digest => {
            tracing::warn!("publishing a snapshot whose install a crash interrupted after it was loaded");
            publish_installing(dir)
        }
        _ => {
            tracing::warn!("removing a received snapshot that a crash left unchecked");
            std::fs::remove_file(&installing).map_err(|e| StoreError::io(&installing, e))?;
            sync_dir(dir)
        }
    }
}

/// Removes what a crash can leave behind while a snapshot was being built or received.
fn remove_leftovers(dir: &Path) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let removed = if name.starts_with("checkpoint-") {
            std::fs::remove_dir_all(&path)
        } else if name.starts_with("building-") || name == INCOMING {
            std::fs::remove_file(&path)
        } else {
            continue;
        };
        removed.map_err(|e| StoreError::io(&path, e))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
}

/// Copies a snapshot's bytes from its start into `path` and fsyncs them.
async fn copy_to(mut from: tokio::fs::File, path: &Path) -> Result<(), StoreError> {
    use tokio::io::AsyncSeekExt;
    let io = |e| StoreError::io(path, e);
    from.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
    let mut to = tokio::fs::File::create(path).await.map_err(io)?;
    tokio::io::copy(&mut from, &mut to).await.map_err(io)?;
    to.sync_all().await.map_err(io)
}

async fn open_snapshot(path: PathBuf, meta: SnapshotMeta) -> Result<Snapshot, StoreError> {
    let file = tokio::fs::File::open(&path).await.map_err(|e| StoreError::io(&path, e))?;
    Ok(Snapshot { meta, snapshot: Box::new(file) })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.meta.applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let (db, meta, format) = (self.db.clone(), self.meta.clone(), self.format);
        let ops: usize = entries.iter().map(super::apply::op_count).fold(0, usize::saturating_add);
        let apply = move || {
            let mut applier = Applier::new(&db, meta, format);
            let results = entries.iter().map(|e| applier.apply(e)).collect::<Result<Vec<_>, _>>()?;
            Ok((results, applier.commit()?))
        };
        // A few point reads and one unsynced batch run inline; a long catch-up goes to the
        // blocking pool (see `blocking`).
        let applied = if ops <= INLINE_APPLY_OPS { apply() } else { blocking(apply).await };
        let (results, (meta, format)) = applied.map_err(|e| {
            // Fatal to openraft, so an install waiting behind this apply never comes.
            self.installs.failed();
            to_raft(StorageIOError::write_state_machine)(e)
        })?;
        (self.meta, self.format) = (meta, format);
        self.applied.send_replace(self.meta.point());
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Taken now, while no apply runs: the snapshot is exactly the state at `meta.applied`.
        let (db, dir) = (self.db.clone(), self.dir.clone());
        let id = format!(
            "{}-{}-{}",
            self.meta.applied.map_or(0, |l| l.leader_id.term),
            self.meta.applied.map_or(0, |l| l.index),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros())
        );
        let checkpoint = dir.join(format!("checkpoint-{id}"));
        let path = checkpoint.clone();
        let made = blocking(move || {
            let cp = rocksdb::checkpoint::Checkpoint::new(&db).map_err(|e| StoreError::rocks("checkpoint", e))?;
            cp.create_checkpoint(&path).map_err(|e| StoreError::rocks("create checkpoint", e))
        })
        .await;
        SnapshotBuilder { checkpoint: made.map(|()| checkpoint), dir, id, machine: self.meta.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        self.installs.receiving();
        let path = self.path(INCOMING);
        // A new file, never the old one truncated: openraft hands a finished stream's file to
        // install_snapshot only after it lets go of the stream, so the next leader's first chunk
        // may come in between, and the finished file must keep its bytes until it is installed.
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                self.installs.failed();
                return Err(to_raft(write_snapshot)(StoreError::io(&path, e)));
            }
            _ => {}
        }
        // Read and write: install_snapshot reads back what the chunks wrote.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| {
            self.installs.failed();
            to_raft(write_snapshot)(StoreError::io(&path, e))
        })?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let installed = self.install(meta, *snapshot).await;
        if installed.is_err() {
            self.installs.failed();
        }
        installed.map_err(to_raft(write_snapshot))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let path = self.path(CURRENT);
        if !path.exists() {
            return Ok(None);
        }
        let read = to_raft(read_snapshot);
        let p = path.clone();
        let header = blocking(move || snapshot::read_header(&p)).await.map_err(&read)?;
        open_snapshot(path, header.meta).await.map(Some).map_err(read)
    }
}

/// Builds a snapshot from the checkpoint taken when it was created.
pub struct SnapshotBuilder {
    checkpoint: Result<PathBuf, StoreError>,
    dir: PathBuf,
    id: String,
    machine: MachineMeta,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let fail = to_raft(write_snapshot);
        let checkpoint = match &self.checkpoint {
            Ok(p) => p.clone(),
            Err(e) => return Err(fail(StoreError::Corrupt(format!("no checkpoint for the snapshot: {e}")))),
        };
        let meta = SnapshotMeta {
            last_log_id: self.machine.applied,
            last_membership: self.machine.membership.clone(),
            snapshot_id: self.id.clone(),
        };
        let header = SnapshotHeader { meta: meta.clone(), machine: self.machine.clone() };
        let (dir, id) = (self.dir.clone(), self.id.clone());
        let path = blocking(move || {
            let result = write_from_checkpoint(&checkpoint, &dir, &id, &header);
            let _ = std::fs::remove_dir_all(&checkpoint);
            result
        })
        .await
        .map_err(&fail)?;
        open_snapshot(path, meta).await.map_err(fail)
    }
}

fn write_from_checkpoint(
    checkpoint: &Path,
    dir: &Path,
    id: &str,
    header: &SnapshotHeader,
) -> Result<PathBuf, StoreError> {
    let names = DB::list_cf(&rocksdb::Options::default(), checkpoint)
        .map_err(|e| StoreError::rocks("list checkpoint column families", e))?;
    let view = DB::open_cf_for_read_only(&rocksdb::Options::default(), checkpoint, names, false)
        .map_err(|e| StoreError::rocks("open checkpoint", e))?;
    let building = dir.join(format!("building-{id}.snap"));
    snapshot::write(&view, header, &building)?;
    let current = dir.join(CURRENT);
    std::fs::rename(&building, &current).map_err(|e| StoreError::io(&building, e))?;
    sync_dir(dir)?;
    Ok(current)
}
