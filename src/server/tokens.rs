//! Bearer tokens: a file of named tokens, each kept only as its hash, with the role (and for a
//! gateway the tenants) it grants. The node reloads the file when it changes, so tokens are
//! added and revoked without a restart. `keepsake token create` adds one.
//!
//! Invariant: a token is never stored or logged; a file that does not load leaves the last
//! good set in force, and one that never loaded grants nothing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::tls::identity::{Identity, Role};

/// How often, at most, the file is looked at for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// What a token's hash is written as: `blake3:<64 hex digits>`.
const HASH_PREFIX: &str = "blake3:";

/// One entry of the tokens file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it: named in audit lines.
    pub name: String,
    /// `blake3:` and the hex of the token's BLAKE3 hash. Tokens are 256 random bits, so a fast
    /// hash is enough: there is nothing to guess.
    pub hash: String,
    pub role: String,
    /// For a gateway: the user-id prefixes it may reach (none: every user).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default, rename = "token")]
    tokens: Vec<TokenEntry>,
}

/// The hash a file keeps for `token`.
pub fn hash(token: &str) -> String {
    format!("{HASH_PREFIX}{}", blake3::hash(token.as_bytes()).to_hex())
}

/// A new token: `kst_` and 64 hex digits of the operating system's randomness.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    format!("kst_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The identity an entry grants.
fn identity(entry: &TokenEntry) -> Result<Identity, String> {
    let role = Role::parse(&entry.role).ok_or_else(|| format!("token {:?}: no role {:?}", entry.name, entry.role))?;
    Identity::client(role, entry.tenants.clone()).map_err(|e| format!("token {:?}: {e}", entry.name))
}

/// Reads a tokens file, checking every entry.
fn load(path: &Path) -> Result<Vec<(String, String, Identity)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: TokenFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    file.tokens
        .iter()
        .map(|entry| {
            if !entry.hash.starts_with(HASH_PREFIX) || entry.hash.len() != HASH_PREFIX.len() + 64 {
                return Err(format!("{}: token {:?}: hash is not blake3:<64 hex digits>", path.display(), entry.name));
            }
            Ok((entry.hash.clone(), entry.name.clone(), identity(entry)?))
        })
        .collect()
}

/// The tokens a node accepts, reloaded when the file changes.
pub struct Tokens {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    stamp: Option<SystemTime>,
    checked: Instant,
    /// (hash, name, identity)
    entries: Vec<(String, String, Identity)>,
}

impl Tokens {
    /// Loads the file now: a node given a tokens file that does not load does not start.
    pub fn load(path: PathBuf) -> Result<Tokens, String> {
        let stamp = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let entries = load(&path)?;
        Ok(Tokens { path, state: Mutex::new(State { stamp, checked: Instant::now(), entries }) })
    }

    /// The name and identity `token` grants, if the file holds it.
    pub fn find(&self, token: &str) -> Option<(String, Identity)> {
        let hashed = hash(token);
        let mut state = self.state.lock().expect("the token state is never poisoned");
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let stamp = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
            if stamp != state.stamp {
                state.stamp = stamp;
                match load(&self.path) {
                    Ok(entries) => {
                        tracing::info!(file = %self.path.display(), tokens = entries.len(), "reloaded the tokens file");
                        state.entries = entries;
                    }
                    Err(e) => tracing::warn!("keeping the previous tokens: {e}"),
                }
            }
        }
        // Compared as hashes: equal-length strings of a hash the caller cannot steer.
        state.entries.iter().find(|(h, _, _)| *h == hashed).map(|(_, name, identity)| (name.clone(), identity.clone()))
    }
}

/// Adds a new token for `name` with `role` (and `tenants`) to the file at `path` (created,
/// readable by its owner only, if missing); returns the token, which is written nowhere.
pub fn create(path: &Path, name: &str, role: Role, tenants: Vec<String>) -> Result<String, String> {
    let mut file: TokenFile = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokenFile::default(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if file.tokens.iter().any(|t| t.name == name) {
        return Err(format!("{}: a token named {name:?} exists; revoke it (delete its entry) first", path.display()));
    }
    let token = generate();
    let entry = TokenEntry { name: name.to_owned(), hash: hash(&token), role: role.name().to_owned(), tenants };
    identity(&entry)?;
    file.tokens.push(entry);
    let text = toml::to_string(&file).map_err(|e| e.to_string())?;
    // Written beside and renamed over: a node reading meanwhile sees the old file or the new.
    let staged = path.with_extension("new");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&staged)
            .map_err(|e| format!("{}: {e}", staged.display()))?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.sync_all())
            .map_err(|e| format!("{}: {e}", staged.display()))?;
    }
    std::fs::rename(&staged, path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_is_found_by_itself_only_and_the_file_never_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let token = create(&path, "gw", Role::Gateway, vec!["acme:".into()]).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&token), "the file holds only the hash");
        let tokens = Tokens::load(path.clone()).unwrap();
        let (name, identity) = tokens.find(&token).expect("the token is known");
        assert_eq!(name, "gw");
        assert_eq!(identity, Identity::Client { role: Role::Gateway, tenants: vec!["acme:".into()] });
        assert!(tokens.find("kst_wrong").is_none());
        assert!(create(&path, "gw", Role::Reader, vec![]).is_err(), "names are unique");
        assert!(create(&path, "op", Role::Operator, vec!["a".into()]).is_err(), "only gateways have tenants");
    }

    #[test]
    fn a_file_that_does_not_load_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, "[[token]]\nname = \"x\"\nhash = \"plain\"\nrole = \"operator\"\n").unwrap();
        assert!(Tokens::load(path.clone()).err().expect("refused").contains("blake3"));
        std::fs::write(&path, "[[token]]\nname = \"x\"\nhash = \"blake3:00\"\nrole = \"root\"\n").unwrap();
        assert!(Tokens::load(path).is_err());
    }
}
