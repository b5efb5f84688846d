//! The node's archive key ring: read once at start from the source the config names (a node
//! whose encryption is configured but whose keys cannot be read does not start), and, when it
//! comes from a file, read again whenever the file changes, so that a new active key takes
//! over without a restart.
//!
//! Invariant: a ring that does not load leaves the last good one in force; an archive opened
//! without keys never gains them, nor one opened with keys loses them.

use std::time::Duration;

use keepsake_archive::keys::KeySource;
use keepsake_archive::sealing::Keys;
use tokio::sync::watch;

use crate::files::file_stamp;

/// How often the key file is looked at for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The archive's keys as `source` gives them now (None: a plaintext archive, said at every
/// start).
pub fn load(source: Option<&KeySource>) -> Result<Keys, String> {
    let Some(source) = source else {
        tracing::warn!(
            "the archive is not encrypted: whoever can read the bucket can read every user's data; set \
             archive.key_file (docs/security.md)"
        );
        return Ok(Keys::plaintext());
    };
    let ring =
        source.load().map_err(|e| format!("archive encryption is configured but its keys are unavailable: {e}"))?;
    tracing::info!(from = %source, active = ring.active().id(), keys = ?ring.ids(), "archive objects are sealed");
    Ok(Keys::sealed(ring))
}

/// For a key file, a task that keeps `keys` current with it until `stop`.
pub fn follow(source: Option<KeySource>, keys: &Keys, stop: watch::Receiver<bool>) {
    if let Some(path) = source.as_ref().and_then(KeySource::file).map(ToOwned::to_owned) {
        tokio::spawn(reread(source.expect("a key file is a source"), path, keys.clone(), stop));
    }
}

/// Re-reads the key file whenever it changes.
async fn reread(source: KeySource, path: std::path::PathBuf, keys: Keys, mut stop: watch::Receiver<bool>) {
    let mut adopted = file_stamp(&path);
    loop {
        tokio::select! {
            () = tokio::time::sleep(RELOAD_CHECK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if file_stamp(&path) == adopted {
            continue;
        }
        let (source, p) = (source.clone(), path.clone());
        let Ok((before, loaded, after)) = tokio::task::spawn_blocking(move || {
            let before = file_stamp(&p);
            let loaded = source.load();
            (before, loaded, file_stamp(&p))
        })
        .await
        else {
            continue;
        };
        // A file changed while it was read is read again next time.
        if before != after {
            continue;
        }
        adopted = after;
        match loaded.and_then(|ring| {
            let (active, ids) = (ring.active().id().to_owned(), format!("{:?}", ring.ids()));
            keys.rotate(ring).map(|()| (active, ids))
        }) {
            Ok((active, ids)) => {
                tracing::info!(file = %path.display(), active, keys = ids, "reloaded the archive keys")
            }
            Err(e) => tracing::error!("keeping the archive keys in force: the changed key file does not load: {e}"),
        }
    }
}
