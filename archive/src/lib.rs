//! keepsake-archive: reads and writes a Keepsake archive, the continuous backup of one cluster
//! in object storage (docs/design.md §4; the byte formats are specified in
//! docs/archive-format.md).
//!
//! `segment` and `snapshot` are the object formats, `entry` the archived form of a Raft log
//! entry, `head` the archive's claimed last index, `info` the history that owns the archive
//! root, `chain` what a reader checks every object against, `envelope`, `keys` and `sealing`
//! seal every object of an encrypted archive, `store` opens the object store an archive URL
//! names, `lease` marks an archive a restore is reading, `restore` rebuilds a node's state from
//! the archive alone and `verify` checks every object. Writing the archive from a live cluster
//! (archiver, snapshotter, retention) belongs to the node, in the `keepsake` crate.

pub mod chain;
pub mod entry;
pub mod envelope;
pub mod head;
pub mod info;
pub mod keys;
pub mod lease;
pub mod restore;
pub mod sealing;
pub mod segment;
pub mod snapshot;
pub mod store;
pub mod verify;

/// The generated messages of `proto/keepsake/archive/v1/archive.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/keepsake.archive.v1.rs"));
}

/// The largest zstd window a decoder accepts (8 MiB).
const MAX_WINDOW_LOG: u32 = 23;

/// Decompresses one zstd frame that should hold exactly `len` bytes. The buffer grows with
/// what the frame really yields: a damaged length field must not allocate gigabytes up front.
pub(crate) fn decompress_exact(frame: &[u8], len: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::with_capacity(len.min(1 << 20) as usize);
    let mut decoder = zstd::stream::read::Decoder::new(frame).map_err(|e| e.to_string())?;
    // The frame header also sets the decoder's window: our writer (level 3) uses at most 2^21;
    // refuse anything above 2^23 rather than let a damaged header allocate 2 GiB.
    decoder.window_log_max(MAX_WINDOW_LOG).map_err(|e| e.to_string())?;
    decoder.take(len.saturating_add(1)).read_to_end(&mut out).map_err(|e| e.to_string())?;
    if out.len() as u64 != len {
        return Err(format!("it holds {} bytes, the header says {len}", out.len()));
    }
    Ok(out)
}
