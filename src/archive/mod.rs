//! Continuous backup: committed log entries streamed to object storage as segments
//! (DESIGN.md §4).
//!
//! `segment` and `snapshot` are the object formats, `entry` the archived form of a log entry,
//! `store` opens the object store an archive URL names, `archiver` is the leader's upload loop
//! that keeps the archive gap-free and holds the purge gate, `snapshotter` uploads archive
//! snapshots and `retention` deletes what no restore in the window needs. `restore` and
//! `verify` read an archive from the object store alone.

pub mod archiver;
pub mod entry;
pub mod restore;
pub mod retention;
pub mod segment;
pub mod snapshot;
pub mod snapshotter;
pub mod store;
pub mod verify;

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
