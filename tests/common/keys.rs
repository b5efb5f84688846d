//! Archive key rings for tests: new key entries, and key files only their owner can read,
//! replaced whole (a rename) as an operator rotating keys would.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A new ring entry `<id>:<base64 key>` (add `:active` to make it the sealing key).
pub fn key_entry(id: &str) -> String {
    keepsake_archive::keys::generate_entry(id).expect("a valid key id")
}

/// Writes `ring` to `path` (mode 600), replacing what is there in one rename.
pub fn write_key_file(path: &Path, ring: &str) -> PathBuf {
    let staged = path.with_extension("new");
    std::fs::write(&staged, format!("# keepsake archive keys\n{ring}\n")).expect("write a key file");
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600)).expect("chmod the key file");
    std::fs::rename(&staged, path).expect("put the key file in place");
    path.to_path_buf()
}
