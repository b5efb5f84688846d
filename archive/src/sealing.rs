//! `Keys`, the handle an `Archive` carries so that every read and write of an object goes
//! through it: in a plaintext archive objects pass as they are, in an encrypted one each is
//! sealed with the active key of the ring (`envelope`) and opened with the key it names.
//!
//! Invariant: an archive opened with keys is never written or read in the clear, and one
//! opened without keys never accepts a sealed object as plaintext; whether an archive is
//! encrypted is fixed when it is opened, and only the ring may change (rotation).

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, RwLock};

use crate::envelope::{self, Kind, OpenError};
use crate::keys::{ArchiveKey, KeyRing};
use crate::snapshot::Namer;

/// Whether and how an archive's objects are sealed: the handle every read and write of an
/// object goes through. Plaintext, or a ring that `rotate` may replace while objects are being
/// written (each object is sealed whole with the ring of the moment).
#[derive(Clone, Default)]
pub struct Keys(Option<Arc<RwLock<Arc<KeyRing>>>>);

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ring() {
            None => f.write_str("Keys(plaintext)"),
            Some(ring) => write!(f, "Keys({:?})", ring.ids()),
        }
    }
}

/// Why one of the archive's small objects (`head`, `archive-info.json`) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store failed, or the object is malformed; retrying may help.
    #[error("{0}")]
    Store(String),
    /// The root's encryption is not this reader's: plaintext where this reader has keys, sealed
    /// where it has none, with a key it lacks, or not authentic. Retrying cannot help.
    #[error("{0}")]
    Keys(OpenError),
}

/// One key (or none, for a plaintext archive) that names chunks and seals objects.
#[derive(Clone, Debug)]
pub struct Sealer(Option<Arc<ArchiveKey>>);

impl Sealer {
    /// How the chunks this sealer seals are named and cut.
    pub fn namer(&self) -> Namer {
        self.0.as_ref().map_or(Namer::Plain, |k| k.namer())
    }

    /// The bytes to store for an object of `kind`.
    pub fn seal(&self, kind: Kind, plaintext: &[u8]) -> Vec<u8> {
        match &self.0 {
            None => plaintext.to_vec(),
            Some(key) => envelope::seal(key, kind, plaintext),
        }
    }
}

/// An object's bytes once opened, and how its chunks are named.
pub struct Opened<'a> {
    pub bytes: Cow<'a, [u8]>,
    pub namer: Namer,
    /// The key that sealed it (None: plaintext).
    pub key_id: Option<String>,
}

impl Keys {
    /// No encryption: objects are written and read in the clear, and a sealed one is refused.
    pub fn plaintext() -> Keys {
        Keys(None)
    }

    pub fn sealed(ring: KeyRing) -> Keys {
        Keys(Some(Arc::new(RwLock::new(Arc::new(ring)))))
    }

    pub fn is_sealed(&self) -> bool {
        self.0.is_some()
    }

    pub fn ring(&self) -> Option<Arc<KeyRing>> {
        self.0.as_ref().map(|r| r.read().expect("the key ring lock is never poisoned").clone())
    }

    /// Puts a new ring in force for every object sealed or opened from now on. Refused for a
    /// plaintext archive, which never turns into a sealed one in place.
    pub fn rotate(&self, ring: KeyRing) -> Result<(), String> {
        let slot = self.0.as_ref().ok_or("this archive is not encrypted: a key ring cannot be put in force")?;
        *slot.write().expect("the key ring lock is never poisoned") = Arc::new(ring);
        Ok(())
    }

    /// The active key of the moment, held: a snapshot's chunks are named and sealed with one
    /// key even if the ring rotates while they are written.
    pub fn sealer(&self) -> Sealer {
        Sealer(self.ring().map(|r| r.active_shared()))
    }

    /// A sealer for each key of the ring, the active one first (plaintext: one, plain).
    pub fn sealers(&self) -> Vec<Sealer> {
        match self.ring() {
            None => vec![Sealer(None)],
            Some(ring) => ring.keys().map(|k| Sealer(Some(k.clone()))).collect(),
        }
    }

    /// The bytes to store for an object of `kind`: sealed with the active key, or as they are.
    pub fn seal(&self, kind: Kind, plaintext: &[u8]) -> Vec<u8> {
        self.sealer().seal(kind, plaintext)
    }

    /// Opens a stored object of `kind` named `object`: it must be sealed with a key of the ring
    /// (and authenticate) when the archive is encrypted, and must not be sealed when it is not.
    pub fn open<'a>(&self, kind: Kind, object: &str, bytes: &'a [u8]) -> Result<Opened<'a>, OpenError> {
        match self.ring() {
            None if envelope::is_sealed(bytes) => Err(OpenError::no_key(object, bytes)),
            None => Ok(Opened { bytes: Cow::Borrowed(bytes), namer: Namer::Plain, key_id: None }),
            Some(ring) => {
                let (bytes, key) = envelope::open(&ring, Some(kind), object, bytes)?;
                Ok(Opened { bytes: Cow::Owned(bytes), namer: key.namer(), key_id: Some(key.id().to_owned()) })
            }
        }
    }

    /// Checks that a stored object of any kind is sealed and authenticates (verify's sweep of
    /// every object). Plaintext archives have nothing to check.
    pub fn authenticate(&self, object: &str, bytes: &[u8]) -> Result<(), OpenError> {
        match self.ring() {
            None if envelope::is_sealed(bytes) => Err(OpenError::no_key(object, bytes)),
            None => Ok(()),
            Some(ring) => envelope::open(&ring, None, object, bytes).map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Why;
    use crate::keys::generate_entry;

    #[test]
    fn plaintext_and_sealed_archives_each_refuse_the_others_objects() {
        let (k1, k2) = (generate_entry("k1").unwrap(), generate_entry("k2").unwrap());
        let sealed = Keys::sealed(KeyRing::parse(&k1, "t").unwrap());
        let plain = Keys::plaintext();
        let object = sealed.seal(Kind::Manifest, b"manifest");
        assert_eq!(
            plain.open(Kind::Manifest, "m", &object).err().map(|e| e.why),
            Some(Why::NoKeys { key_id: "k1".into() })
        );
        assert_eq!(sealed.open(Kind::Manifest, "m", b"manifest").err().map(|e| e.why), Some(Why::Plaintext));
        assert!(sealed.authenticate("m", b"manifest").is_err() && plain.authenticate("m", b"manifest").is_ok());
        assert!(plain.rotate(KeyRing::parse(&k2, "t").unwrap()).is_err(), "a plaintext archive never gains keys");
        // A sealer holds its key through a rotation: a snapshot's chunks are named and sealed
        // with one key.
        let held = sealed.sealer();
        sealed.rotate(KeyRing::parse(&format!("{k1} {k2}:active"), "t").unwrap()).unwrap();
        let chunk = held.seal(Kind::Chunk, b"records");
        let opened = sealed.open(Kind::Chunk, "c", &chunk).unwrap();
        assert_eq!((opened.key_id.as_deref(), opened.namer), (Some("k1"), held.namer()));
        assert_eq!(sealed.sealer().namer(), sealed.sealers()[0].namer());
        assert_ne!(sealed.sealer().namer(), held.namer());
    }
}
