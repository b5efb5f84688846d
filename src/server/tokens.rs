//! Bearer tokens: a file of named tokens, each kept only as its hash, with the role (and for a
//! gateway the tenants) it grants. The node reloads the file when it changes, so tokens are
//! added and revoked without a restart. `keepsake token create` adds one.
//!
//! Invariant: a token is never stored or logged; a file that does not load (or that others may
//! write) leaves the last good set in force, and one that never loaded grants nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::files::{file_stamp, replace_secret_file};
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

/// A toml error without the text it quotes: a line of the file may hold a hash, or a token
/// pasted by mistake, which must not reach a log.
fn toml_error(path: &Path, e: &toml::de::Error) -> String {
    let at = e.span().map_or(String::new(), |s| format!(" (at byte {})", s.start));
    format!("{}: {}{at}", path.display(), e.message())
}

/// Reads a tokens file, checking every entry; refuses a file others may write, since anyone who
/// can write it can add an operator's token.
fn load(path: &Path) -> Result<Vec<(String, String, Identity)>, String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(format!("{} is writable by other users (mode {:o}): chmod 600 it", path.display(), mode & 0o777));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: TokenFile = toml::from_str(&text).map_err(|e| toml_error(path, &e))?;
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

/// (hash, name, identity) of each token.
type Entries = Arc<Vec<(String, String, Identity)>>;

/// The tokens a node accepts. `watch` keeps them current, off the request path.
pub struct Tokens {
    path: PathBuf,
    entries: RwLock<Entries>,
}

impl Tokens {
    /// Loads the file now: a node given a tokens file that does not load does not start.
    pub fn load(path: PathBuf) -> Result<Tokens, String> {
        let entries = Arc::new(load(&path)?);
        Ok(Tokens { path, entries: RwLock::new(entries) })
    }

    /// The name and identity `token` grants, if the file holds it.
    pub fn find(&self, token: &str) -> Option<(String, Identity)> {
        let hashed = hash(token);
        let entries = self.entries.read().expect("the tokens are never poisoned").clone();
        // Compared as hashes: a caller cannot steer a hash, so timing tells nothing.
        entries.iter().find(|(h, _, _)| *h == hashed).map(|(_, name, identity)| (name.clone(), identity.clone()))
    }

    /// Looks at the file every second until `stop`, adopting it when it changed and loads; a
    /// file that does not load keeps the last good tokens, is said once, and retried.
    pub fn watch(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let tokens = self.clone();
        tokio::spawn(async move {
            let path = tokens.path.clone();
            let mut adopted = file_stamp(&path);
            let mut said = String::new();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(RELOAD_CHECK) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let p = path.clone();
                let Ok((now, loaded)) = tokio::task::spawn_blocking(move || {
                    let before = file_stamp(&p);
                    let loaded = load(&p);
                    // Read again after: a file changed while it was read is read next time.
                    (if file_stamp(&p) == before { before } else { None }, loaded)
                })
                .await
                else {
                    continue;
                };
                if now.is_some() && now == adopted {
                    continue;
                }
                match loaded {
                    Ok(entries) if now.is_some() => {
                        tracing::info!(file = %path.display(), tokens = entries.len(), "reloaded the tokens file");
                        *tokens.entries.write().expect("the tokens are never poisoned") = Arc::new(entries);
                        adopted = now;
                        said.clear();
                    }
                    Ok(_) => {}
                    Err(e) if e != said => {
                        tracing::warn!("keeping the previous tokens, and retrying every second: {e}");
                        said = e;
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

/// Adds a new token for `name` with `role` (and `tenants`) to the file at `path` (created,
/// readable by its owner only, if missing); returns the token, which is written nowhere. The
/// file keeps its owner, and is replaced only if nobody changed it meanwhile.
pub fn create(path: &Path, name: &str, role: Role, tenants: Vec<String>) -> Result<String, String> {
    let before = file_stamp(path);
    let mut file: TokenFile = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| toml_error(path, &e))?,
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
    replace_secret_file(path, &text, before)?;
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
    fn a_file_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        create(&path, "gw", Role::Gateway, vec![]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(Tokens::load(path).err().expect("refused").contains("writable by other users"));
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
