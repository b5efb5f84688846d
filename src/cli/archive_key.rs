//! `keepsake archive-key`: the key ring that seals an encrypted archive
//! (`keepsake_archive::keys`): add a new random key to a key file, and choose which of its keys
//! seals new objects. Neither command prints a key; both rewrite the file whole (mode 600) and
//! only as a ring that loads.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use keepsake_archive::keys::{generate_entry, KeyRing, KeySource};

use super::Failure;
use crate::files::{file_stamp, replace_secret_file};

#[derive(Subcommand, Debug)]
pub enum ArchiveKeyCommand {
    /// Add a new random key to a key file (created if missing). The first key of a file seals
    /// new objects at once; a later one only once activated: copy the file to every node
    /// first, so that each can open what the others seal.
    Create(KeyArgs),
    /// Make a key of the file the one that seals new objects; the others still open what they
    /// sealed. Nodes pick the change up within a second.
    Activate(KeyArgs),
}

#[derive(Args, Debug)]
pub struct KeyArgs {
    /// The key file the nodes read (`archive.key_file`).
    #[arg(long)]
    file: PathBuf,
    /// The key's id (1 to 64 of A-Z a-z 0-9 . _ -), written into every object it seals, e.g.
    /// the month it starts: `2027-01`.
    #[arg(long)]
    id: String,
}

const HEADER: &str = "# keepsake archive keys: <id>:<base64 of 32 bytes>[:active], one per line. Keep this \
                      file secret and backed up apart from the archive: without it, the archive cannot be read.\n";

pub async fn run(cmd: ArchiveKeyCommand) -> Result<(), Failure> {
    let fail = |message: String| Failure { message, code: 1 };
    let (a, activate) = match cmd {
        ArchiveKeyCommand::Create(a) => (a, false),
        ArchiveKeyCommand::Activate(a) => (a, true),
    };
    let before = file_stamp(&a.file);
    let text = match std::fs::read_to_string(&a.file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !activate => HEADER.to_owned(),
        Err(e) => return Err(fail(format!("{}: {e}", a.file.display()))),
    };
    let source = KeySource::File(a.file.clone()).to_string();
    let ring = KeyRing::parse(&text, &source).ok();
    let text = if activate {
        let ring = ring.ok_or_else(|| fail(format!("{source} does not load: `keepsake archive-key create` first")))?;
        if ring.get(&a.id).is_none() {
            return Err(fail(format!("{source} holds no key {:?} (it holds {:?})", a.id, ring.ids())));
        }
        with_active(&text, &a.id)
    } else {
        if ring.as_ref().is_some_and(|r| r.get(&a.id).is_some()) {
            return Err(fail(format!("{source} already holds a key {:?}: choose another id", a.id)));
        }
        let holds_keys = text.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if ring.is_none() && holds_keys {
            // Adding a key as the active one would make it seal at once, on this node only.
            let why = KeyRing::parse(&text, &source).err().unwrap_or_default();
            return Err(fail(format!("{why}: mend the file before adding a key")));
        }
        let entry = generate_entry(&a.id).map_err(fail)?;
        let first = ring.is_none();
        let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
        format!("{text}{sep}{entry}{}\n", if first { ":active" } else { "" })
    };
    // Only a ring that loads is written: a node reloading it must never meet a broken file.
    let ring = KeyRing::parse(&text, &source).map_err(fail)?;
    replace_secret_file(&a.file, &text, before).map_err(fail)?;
    println!("{}: keys {:?}; {:?} seals new objects", a.file.display(), ring.ids(), ring.active().id());
    Ok(())
}

/// The ring text with `id` marked active and no other key marked, comments kept.
fn with_active(text: &str, id: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            let entries: Vec<String> = line
                .split_whitespace()
                .map(|entry| {
                    let bare = entry.strip_suffix(":active").unwrap_or(entry);
                    let named = bare.split(':').next() == Some(id);
                    if named {
                        format!("{bare}:active")
                    } else {
                        bare.to_owned()
                    }
                })
                .collect();
            out.push_str(&entries.join(" "));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activating_moves_the_mark_and_keeps_the_rest() {
        let (a, b) = (generate_entry("a").unwrap(), generate_entry("b").unwrap());
        let text = format!("# keys\n{a}:active\n{b}\n");
        let moved = with_active(&text, "b");
        assert_eq!(moved, format!("# keys\n{a}\n{b}:active\n"));
        assert_eq!(KeyRing::parse(&moved, "t").unwrap().active().id(), "b");
    }
}
