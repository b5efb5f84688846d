//! Raft snapshot files: the full state machine at one applied index, as one checksummed file.
//!
//! Layout: magic `KSSNAP01`, a u32 header length and the postcard header (openraft's snapshot
//! meta and the machine meta), then records `tag u8 | key len u32 | key | value len u32 |
//! value` (tag 1: items, 2: changes), an end tag 0, and the CRC32C of everything before it.
//! Installing verifies the checksum first and the recomputed digest last, so a damaged file is
//! never mistaken for state.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write as _};
use std::path::Path;

use std::sync::Arc;

use rocksdb::{IteratorMode, DB};
use serde::{Deserialize, Serialize};

use super::db::{self, cf, CF_CHANGES, CF_ITEMS};
use super::error::StoreError;
use super::loader::{StateLoader, TAG_CHANGE, TAG_ITEM};
use super::records::MachineMeta;
use crate::digest::DigestFormat;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"KSSNAP01";
const TAG_END: u8 = 0;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub meta: SnapshotMeta,
    pub machine: MachineMeta,
}

/// A writer that checksums everything it writes.
struct Checksummed<W> {
    inner: W,
    crc: u32,
}

impl<W: std::io::Write> Checksummed<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.inner.write_all(bytes)
    }

    fn record(&mut self, tag: u8, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        self.put(&[tag])?;
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(value)
    }
}

/// Writes the state of `source` (a consistent view: a checkpoint) to `path` and fsyncs it.
pub fn write(source: &DB, header: &SnapshotHeader, path: &Path) -> Result<(), StoreError> {
    let io = |e| StoreError::io(path, e);
    let file = File::create(path).map_err(io)?;
    let mut out = Checksummed { inner: BufWriter::with_capacity(1 << 20, file), crc: 0 };
    let head = db::encode(header);
    out.put(MAGIC).map_err(io)?;
    out.put(&(head.len() as u32).to_le_bytes()).map_err(io)?;
    out.put(&head).map_err(io)?;
    for (tag, name) in [(TAG_ITEM, CF_ITEMS), (TAG_CHANGE, CF_CHANGES)] {
        for item in source.iterator_cf(cf(source, name), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| StoreError::rocks(format!("read {name} for a snapshot"), e))?;
            out.record(tag, &k, &v).map_err(io)?;
        }
    }
    out.put(&[TAG_END]).map_err(io)?;
    let crc = out.crc;
    out.inner.write_all(&crc.to_le_bytes()).map_err(io)?;
    let file = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}

/// One record: (tag, key, value).
type Record = (u8, Vec<u8>, Vec<u8>);

/// Reads records from a snapshot file, checking structure as it goes.
struct Records<R> {
    inner: R,
    crc: u32,
    offset: u64,
    path: String,
}

impl<R: Read> Records<R> {
    /// The next `n` bytes. `n` comes from the file, so the buffer grows with what is really
    /// there: a damaged length field must not allocate gigabytes before the read fails.
    fn take(&mut self, n: usize) -> Result<Vec<u8>, StoreError> {
        let mut buf = Vec::with_capacity(n.min(64 << 10));
        let read = (&mut self.inner).take(n as u64).read_to_end(&mut buf);
        if let Err(e) = read {
            return Err(StoreError::Corrupt(format!(
                "snapshot {}: unreadable at offset {}: {e}",
                self.path, self.offset
            )));
        }
        if buf.len() < n {
            return Err(StoreError::Corrupt(format!(
                "snapshot {}: truncated at offset {}: {n} bytes wanted, {} there",
                self.path,
                self.offset,
                buf.len()
            )));
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf);
        self.offset += n as u64;
        Ok(buf)
    }

    fn len(&mut self) -> Result<usize, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("took 4 bytes")) as usize)
    }

    fn header(&mut self) -> Result<SnapshotHeader, StoreError> {
        if self.take(MAGIC.len())? != MAGIC {
            return Err(StoreError::Corrupt(format!("snapshot {}: not a Keepsake snapshot (bad magic)", self.path)));
        }
        let n = self.len()?;
        db::decode(&self.take(n)?, "snapshot header")
    }

    /// The next (tag, key, value), or None at the end tag.
    fn next(&mut self) -> Result<Option<Record>, StoreError> {
        let tag = self.take(1)?[0];
        match tag {
            TAG_END => Ok(None),
            TAG_ITEM | TAG_CHANGE => {
                let k = self.len()?;
                let key = self.take(k)?;
                let v = self.len()?;
                Ok(Some((tag, key, self.take(v)?)))
            }
            other => Err(StoreError::Corrupt(format!(
                "snapshot {}: unknown record tag {other} at offset {}",
                self.path,
                self.offset - 1
            ))),
        }
    }

    fn finish(mut self) -> Result<(), StoreError> {
        let computed = self.crc;
        let stored = u32::from_le_bytes(self.take(4)?.try_into().expect("took 4 bytes"));
        if stored != computed {
            return Err(StoreError::Corrupt(format!(
                "snapshot {}: checksum mismatch (stored {stored:08x}, computed {computed:08x})",
                self.path
            )));
        }
        Ok(())
    }
}

fn open_records(path: &Path) -> Result<Records<BufReader<File>>, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    Ok(records_of(file, path))
}

fn records_of(file: File, path: &Path) -> Records<BufReader<File>> {
    Records { inner: BufReader::with_capacity(1 << 20, file), crc: 0, offset: 0, path: path.display().to_string() }
}

/// Reads only the header (what `get_current_snapshot` needs).
pub fn read_header(path: &Path) -> Result<SnapshotHeader, StoreError> {
    open_records(path)?.header()
}

/// Checks the whole file's structure and checksum without touching the database.
pub fn verify(path: &Path) -> Result<SnapshotHeader, StoreError> {
    Ok(check(open_records(path)?)?.0)
}

/// Checks a snapshot's structure and checksum as it streams from `source` (named `name` in
/// errors); returns its header and how many records it holds.
pub fn verify_stream(source: impl Read, name: &str) -> Result<(SnapshotHeader, u64), StoreError> {
    check(Records { inner: source, crc: 0, offset: 0, path: name.to_owned() })
}

/// Reads every record, checking structure and checksum: the header and the record count.
fn check<R: Read>(mut records: Records<R>) -> Result<(SnapshotHeader, u64), StoreError> {
    let header = records.header()?;
    let mut count = 0;
    while records.next()?.is_some() {
        count += 1;
    }
    records.finish()?;
    Ok((header, count))
}

/// Calls `each` with every record of a snapshot file, in order, once the whole file's
/// structure and checksum have checked out; returns the header.
pub fn read_records(
    path: &Path,
    mut each: impl FnMut(u8, &[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<SnapshotHeader, StoreError> {
    // One open file for both passes: the path may be renamed over (a newer snapshot) meanwhile,
    // and the records must be the ones the checked header describes.
    use std::io::Seek;
    let io = |e| StoreError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    let (header, _) = check(records_of(file.try_clone().map_err(io)?, path))?;
    file.rewind().map_err(io)?;
    let mut records = records_of(file, path);
    records.header()?;
    while let Some((tag, key, value)) = records.next()? {
        each(tag, &key, &value)?;
    }
    Ok(header)
}

/// Replaces the items and changes in `db` with the snapshot's, and checks the digest of what it
/// loaded against the header's. Returns the header and the state's digest format; the caller
/// writes the machine meta.
pub fn load(db: &Arc<DB>, path: &Path) -> Result<(SnapshotHeader, DigestFormat), StoreError> {
    let what = format!("snapshot {}", path.display());
    let mut loader = StateLoader::new(db.clone());
    let header = read_records(path, |tag, key, value| loader.record(tag, key, value, &what))?;
    let format = loader.finish(header.machine.digest, header.machine.items, &what)?;
    Ok((header, format))
}
