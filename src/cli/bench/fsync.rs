//! The disk's floor for a durable write: one "fsync round" is a 4 KiB append to a file followed
//! by `fdatasync`, the same work a Raft log append does. A replicated write cannot be
//! acknowledged faster than one of these (the leader's and a follower's run in parallel).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct FsyncRound {
    pub dir: String,
    pub rounds: u32,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// Times `rounds` appends with fdatasync in a scratch file under `dir` (removed afterwards).
pub fn measure(dir: &Path, rounds: u32) -> anyhow::Result<FsyncRound> {
    let file_dir = tempfile::Builder::new().prefix("keepsake-fsync-").tempdir_in(dir)?;
    let mut file = std::fs::File::create(file_dir.path().join("probe"))?;
    let block = vec![0x5au8; 4096];
    let mut times = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        times.push(t.elapsed().as_micros() as u64);
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(FsyncRound { dir: dir.display().to_string(), rounds: times.len() as u32, p50_us: at(0.5), p99_us: at(0.99) })
}
