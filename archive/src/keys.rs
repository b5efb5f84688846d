//! Archive keys: the key ring that seals archive objects (`envelope`), and where it comes from
//! (a file, an environment variable or a command's output).
//!
//! A ring is a list of key-encryption keys, each with an id. New objects are sealed with the
//! active one; any key of the ring opens the objects sealed with it, so a new key can take over
//! while older objects stay readable (rotation). Chunk names and chunk boundaries are keyed
//! with a key derived from the sealing key, so the bucket's names leak nothing of the records.
//!
//! Invariant: the secret bytes of a key appear in no message, log line or `Debug` output; a
//! source that does not yield a whole, valid ring is an error, never an empty or partial ring.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use base64::Engine;

use crate::snapshot::Namer;

/// Bytes in a key-encryption key (AES-256).
pub const KEY_BYTES: usize = 32;
/// The longest key id.
const MAX_ID_LEN: usize = 64;
/// How long a key command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One key-encryption key.
pub struct ArchiveKey {
    id: String,
    kek: LessSafeKey,
    /// Keys the names of the chunks sealed with this key, and where they are cut.
    names: [u8; 32],
    cuts: [u8; 32],
}

impl ArchiveKey {
    fn new(id: String, secret: &[u8; KEY_BYTES]) -> ArchiveKey {
        let kek = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, secret).expect("AES-256 takes a 32-byte key"));
        let names = blake3::derive_key("keepsake archive chunk names v1", secret);
        let cuts = blake3::derive_key("keepsake archive chunk boundaries v1", secret);
        ArchiveKey { id, kek, names, cuts }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn kek(&self) -> &LessSafeKey {
        &self.kek
    }

    /// Names (and cuts) the chunks sealed with this key.
    pub fn namer(&self) -> Namer {
        Namer::Keyed { names: self.names, cuts: self.cuts }
    }
}

impl fmt::Debug for ArchiveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArchiveKey({:?})", self.id)
    }
}

/// The keys a node or a reader holds, and which one seals new objects.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<Arc<ArchiveKey>>,
    active: usize,
}

impl KeyRing {
    /// Reads a ring: entries `<id>:<base64 of 32 bytes>[:active]`, separated by white space
    /// or new lines; a line starting with `#` is a comment. With one key it is the active one;
    /// with more, exactly one says `active`. `source` names where the text came from.
    pub fn parse(text: &str, source: &str) -> Result<KeyRing, String> {
        let mut keys: Vec<Arc<ArchiveKey>> = Vec::new();
        let mut active = Vec::new();
        let entries = text.lines().filter(|l| !l.trim_start().starts_with('#')).flat_map(str::split_whitespace);
        for (n, entry) in entries.enumerate() {
            // Never quote an entry: it holds a secret.
            let bad = |why: &str| format!("{source}: key entry {}: {why}", n + 1);
            let mut parts = entry.split(':');
            let (id, secret, flag) = (parts.next().unwrap_or(""), parts.next(), parts.next());
            if parts.next().is_some() {
                return Err(bad("has more than three ':'-separated parts; write <id>:<base64 key>[:active]"));
            }
            check_id(id).map_err(|why| bad(&why))?;
            let secret = secret.ok_or_else(|| bad("has no key; write <id>:<base64 key>[:active]"))?;
            let secret = base64::engine::general_purpose::STANDARD
                .decode(secret)
                .ok()
                .and_then(|b| <[u8; KEY_BYTES]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| bad(&format!("the key of {id:?} is not the base64 of {KEY_BYTES} bytes")))?;
            match flag {
                None => {}
                Some("active") => active.push(keys.len()),
                Some(_) => return Err(bad(&format!("the third part of {id:?} can only be `active`"))),
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(bad(&format!("key id {id:?} is there twice")));
            }
            keys.push(Arc::new(ArchiveKey::new(id.to_owned(), &secret)));
        }
        let active = match (keys.len(), active.as_slice()) {
            (0, _) => return Err(format!("{source} holds no archive key")),
            (1, []) => 0,
            (_, [one]) => *one,
            (_, []) => {
                return Err(format!("{source}: with several keys, mark the one that seals new objects `:active`"))
            }
            (_, _) => return Err(format!("{source}: more than one key is marked `:active`")),
        };
        Ok(KeyRing { keys, active })
    }

    /// The key new objects are sealed with.
    pub fn active(&self) -> &ArchiveKey {
        &self.keys[self.active]
    }

    pub(crate) fn active_shared(&self) -> Arc<ArchiveKey> {
        self.keys[self.active].clone()
    }

    pub fn get(&self, id: &str) -> Option<&ArchiveKey> {
        self.keys.iter().find(|k| k.id == id).map(|k| &**k)
    }

    /// The ids, the active one first, for messages.
    pub fn ids(&self) -> Vec<&str> {
        self.keys().map(|k| k.id()).collect()
    }

    /// Every key, the active one first.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &Arc<ArchiveKey>> {
        let others = self.keys.iter().enumerate().filter(|(n, _)| *n != self.active).map(|(_, k)| k);
        std::iter::once(&self.keys[self.active]).chain(others)
    }
}

/// A key id: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        // Never quote it: a malformed entry's "id" may be its secret.
        Err(format!("a key id is 1 to {MAX_ID_LEN} of A-Z a-z 0-9 . _ -"))
    }
}

/// A new ring entry: `<id>:<base64 of 32 random bytes>`.
pub fn generate_entry(id: &str) -> Result<String, String> {
    check_id(id)?;
    let mut secret = [0u8; KEY_BYTES];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| "the random source failed".to_string())?;
    Ok(format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode(secret)))
}

/// Where a ring comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file only its owner (and group) can read; a node re-reads it when it changes.
    File(PathBuf),
    /// An environment variable's value.
    Env(String),
    /// The standard output of `sh -c <command>` (for a KMS or a secrets manager).
    Command(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "key file {}", path.display()),
            KeySource::Env(var) => write!(f, "environment variable {var}"),
            KeySource::Command(_) => f.write_str("key command"),
        }
    }
}

impl KeySource {
    /// The source the settings name: at most one of the three may be set; none: no encryption.
    pub fn from_settings(file: &str, env: &str, command: &str) -> Result<Option<KeySource>, String> {
        match (file.trim(), env.trim(), command.trim()) {
            ("", "", "") => Ok(None),
            (file, "", "") => Ok(Some(KeySource::File(file.into()))),
            ("", env, "") => Ok(Some(KeySource::Env(env.into()))),
            ("", "", command) => Ok(Some(KeySource::Command(command.into()))),
            _ => Err("name the archive key ring one way only: a key file, an environment variable or a command".into()),
        }
    }

    /// Reads the ring now. An unavailable or invalid source is an error.
    pub fn load(&self) -> Result<KeyRing, String> {
        let text = match self {
            KeySource::File(path) => read_key_file(path)?,
            // Never show the value: VarError::NotUnicode would print it.
            KeySource::Env(var) => std::env::var(var).map_err(|e| match e {
                std::env::VarError::NotPresent => format!("environment variable {var} is not set"),
                std::env::VarError::NotUnicode(_) => format!("environment variable {var} is not UTF-8 text"),
            })?,
            KeySource::Command(command) => run_key_command(command)?,
        };
        KeyRing::parse(&text, &self.to_string())
    }

    /// The file to watch for changes, if the ring comes from one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            KeySource::File(path) => Some(path),
            _ => None,
        }
    }
}

/// Reads a key file; refuses one that users other than its owner and group may read or write,
/// or that its group may write.
fn read_key_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| format!("key file {}: {e}", path.display()))?.permissions().mode();
    if mode & 0o027 != 0 {
        return Err(format!(
            "key file {} may be read or written by other users (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("key file {}: {e}", path.display()))
}

/// The most a key command may print.
const MAX_COMMAND_OUTPUT: usize = 1 << 20;
/// How long output is still taken once the command has exited (a process it left behind may
/// hold its output open).
const EXITED_GRACE: Duration = Duration::from_millis(500);

/// Runs a key command and returns its standard output. Its standard error is passed through
/// (never parsed into a message); it must exit within `COMMAND_TIMEOUT`, printing at most
/// `MAX_COMMAND_OUTPUT` bytes; output it prints more than `EXITED_GRACE` after it exited is not
/// waited for. Without a terminal (a node under a supervisor) it runs in a process group of its
/// own, killed whole if it fails or runs late, so a pipeline leaves nothing behind; at a
/// terminal it stays in the caller's group, so that it may ask for a passphrase and Ctrl-C
/// reaches it.
fn run_key_command(command: &str) -> Result<String, String> {
    use std::io::{IsTerminal, Read};
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::Instant;
    let own_group = !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal();
    let mut sh = Command::new("sh");
    sh.args(["-c", command]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    if own_group {
        sh.process_group(0);
    }
    let mut child = sh.spawn().map_err(|e| format!("key command: cannot start sh: {e}"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel::<Result<Vec<u8>, String>>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        loop {
            let chunk = match stdout.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => Ok(buf[..n].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e.to_string()),
            };
            let failed = chunk.is_err();
            if tx.send(chunk).is_err() || failed {
                return;
            }
        }
    });
    // The whole group (a pipeline's other commands too), but only while its leader is not yet
    // reaped: until then no other group can have its number.
    let stop_all = |child: &mut Child, reaped: bool| {
        if own_group && !reaped {
            let group = child.id() as libc::pid_t;
            #[allow(unsafe_code)]
            // SAFETY: a signal to the process group our unreaped child leads, so its number is
            // still ours; kill(2) touches no memory of this process.
            unsafe {
                libc::kill(-group, libc::SIGKILL)
            };
        }
        let _ = child.kill();
        let _ = child.wait();
    };
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let (mut out, mut status, mut exited_at, mut closed) = (Vec::new(), None, None, false);
    loop {
        if closed {
            std::thread::sleep(Duration::from_millis(20));
        } else {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(chunk)) => out.extend_from_slice(&chunk),
                Ok(Err(e)) => {
                    stop_all(&mut child, status.is_some());
                    return Err(format!("key command: reading its output: {e}"));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => closed = true,
            }
        }
        if out.len() > MAX_COMMAND_OUTPUT {
            stop_all(&mut child, status.is_some());
            return Err(format!("key command printed more than {MAX_COMMAND_OUTPUT} bytes"));
        }
        if status.is_none() {
            match child.try_wait() {
                Ok(exited) => {
                    status = exited;
                    exited_at = exited.map(|_| Instant::now());
                }
                Err(e) => {
                    stop_all(&mut child, false);
                    return Err(format!("key command: {e}"));
                }
            }
        }
        let grace_over = exited_at.is_some_and(|t| t.elapsed() > EXITED_GRACE);
        if status.is_some() && (closed || grace_over) {
            break;
        }
        if Instant::now() > deadline {
            stop_all(&mut child, status.is_some());
            return Err(format!("key command did not exit within {} s", COMMAND_TIMEOUT.as_secs()));
        }
    }
    let status = status.expect("the loop ends once the command has exited");
    if !status.success() {
        return Err(format!("key command failed ({status})"));
    }
    String::from_utf8(out).map_err(|_| "key command: its output is not UTF-8 text".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> String {
        generate_entry(id).unwrap()
    }

    #[test]
    fn a_ring_reads_its_entries_and_its_active_key() {
        let one = KeyRing::parse(&entry("k1"), "t").unwrap();
        assert_eq!(one.active().id(), "k1");
        let text = format!("# rotated\n{}\n{}:active {}\n", entry("k1"), entry("k2"), entry("k3"));
        let ring = KeyRing::parse(&text, "t").unwrap();
        assert_eq!(ring.ids(), ["k2", "k1", "k3"]);
        assert!(ring.get("k3").is_some() && ring.get("k4").is_none());
    }

    #[test]
    fn a_bad_ring_is_refused_without_quoting_a_secret() {
        let good = entry("k1");
        let secret = good.split(':').nth(1).unwrap().to_owned();
        let cases = [
            (String::new(), "holds no archive key"),
            (format!("{good} {}", entry("k2")), "mark the one"),
            (format!("{good}:active {}:active", entry("k2")), "more than one"),
            (format!("{good} {good}"), "there twice"),
            (format!("k1:{}", &secret[..20]), "not the base64 of 32 bytes"),
            (format!("k1:{secret}:soon"), "can only be `active`"),
            (format!("k 1:{secret}"), "no key"),
            (format!("k/1:{secret}"), "a key id is"),
            (secret.clone(), "a key id is"),
            (format!("{secret}:k1"), "a key id is"),
        ];
        for (text, expected) in cases {
            let e = KeyRing::parse(&text, "src").expect_err(&text);
            assert!(e.contains(expected), "{e}");
            assert!(!e.contains(&secret[..20]), "the secret is quoted: {e}");
        }
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("keepsake-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, entry("k1")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let source = KeySource::File(path.clone());
        assert!(source.load().unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(source.load().unwrap().active().id(), "k1");
        let missing = KeySource::File(dir.join("absent"));
        assert!(missing.load().unwrap_err().contains("absent"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_command_gives_the_ring_and_a_failing_one_is_an_error() {
        let line = entry("kms1");
        let ring = KeySource::Command(format!("printf '%s\\n' '{line}'")).load().unwrap();
        assert_eq!(ring.active().id(), "kms1");
        assert!(KeySource::Command("exit 3".into()).load().unwrap_err().contains("failed"));
        assert!(KeySource::Command("true".into()).load().unwrap_err().contains("holds no archive key"));
        // A command that leaves a process holding its output open does not hang the caller.
        let began = std::time::Instant::now();
        let e = KeySource::Command(format!("printf '%s' '{line}'; (sleep 3 2>/dev/null &)")).load();
        assert!(began.elapsed() < Duration::from_secs(2), "waited {:?}", began.elapsed());
        assert!(e.is_ok_and(|r| r.active().id() == "kms1"));
        // A pipeline that runs late is stopped whole, and said to have.
        let began = std::time::Instant::now();
        let e = KeySource::Command("sleep 40 | cat".into()).load().unwrap_err();
        assert!(e.contains("did not exit within"), "{e}");
        assert!(began.elapsed() < COMMAND_TIMEOUT + Duration::from_secs(5), "waited {:?}", began.elapsed());
        std::env::remove_var("KEEPSAKE_TEST_RING_UNSET");
        assert!(KeySource::Env("KEEPSAKE_TEST_RING_UNSET".into()).load().unwrap_err().contains("is not set"));
    }

    #[test]
    fn one_source_only() {
        assert_eq!(KeySource::from_settings("", "", "").unwrap(), None);
        assert_eq!(KeySource::from_settings("", "K", "").unwrap(), Some(KeySource::Env("K".into())));
        assert!(KeySource::from_settings("/f", "K", "").is_err());
    }
}
