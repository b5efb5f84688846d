//! Small files the node watches and operators' commands rewrite (certificates, tokens, archive
//! keys): how a file looks from outside, to notice a change; and replacing a secret file whole.
//!
//! Invariant: a replaced file is never seen half-written (it is staged beside the old one,
//! synced, then renamed over it), it is readable by its owner only (and keeps the owner and
//! group it had), and a file that changed since it was read is left alone.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One file as seen from outside: device, inode, size, and modification and change times.
pub type FileStamp = (u64, u64, u64, i64, i64, i64, i64);

/// How `path` looks from outside (None: it cannot be seen): any change to the file, a rename
/// over it included, changes it.
pub fn file_stamp(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
}

/// Replaces the secret file `path` with `text`, mode 600, if it still looks as it did when it
/// was read (`read_as`; None: it did not exist). A node reading it meanwhile sees the old file
/// or the new one.
pub fn replace_secret_file(path: &Path, text: &str, read_as: Option<FileStamp>) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let owner = std::fs::metadata(path).ok().map(|m| (m.uid(), m.gid()));
    let base = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut salt = [0u8; 8];
    getrandom::fill(&mut salt).map_err(|e| format!("the random source failed: {e}"))?;
    let salt: String = salt.iter().map(|b| format!("{b:02x}")).collect();
    let staged = path.with_file_name(format!(".{base}.{}.{salt}.new", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&staged)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&staged, Some(uid), Some(gid))?;
        }
        Ok(())
    };
    let written = write().map_err(|e| format!("{}: {e}", staged.display()));
    if written.is_ok() && file_stamp(path) != read_as {
        let _ = std::fs::remove_file(&staged);
        return Err(format!("{} changed while it was being rewritten: run the command again", path.display()));
    }
    if let Err(e) =
        written.and_then(|()| std::fs::rename(&staged, path).map_err(|e| format!("{}: {e}", path.display())))
    {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    Ok(())
}
