//! The sealed-object envelope of an encrypted archive (`docs/archive-format.md` is the reader's
//! specification): each object is encrypted whole, with AES-256-GCM under a data key of its
//! own, and that data key is sealed by a key-encryption key of the ring, named by its id.
//!
//! Layout: magic `KSENC001`, version u16 LE, the object's kind (u8), the key id's length (u8)
//! and the id; the data key's nonce (12 bytes) and the sealed data key (32 + 16-byte tag); the
//! body's nonce (12 bytes) and the sealed body (its tag last). The sealed data key
//! authenticates everything before it; the body authenticates everything before it too, so
//! neither the key id nor the kind can be changed without the tag failing.
//!
//! Invariant: `open` returns bytes only if they were sealed by a key of the ring, as an object
//! of the kind asked for, and were not changed since; everything else is an error that names
//! the object and, where the envelope names one, the key id — it never panics.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::keys::{ArchiveKey, KeyRing};

pub const MAGIC: &[u8; 8] = b"KSENC001";
const VERSION: u16 = 1;
const DATA_KEY_BYTES: usize = 32;
const TAG_BYTES: usize = 16;

/// What an object is: bound into its envelope, so one kind cannot stand in for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Segment = 1,
    Manifest = 2,
    Chunk = 3,
    Head = 4,
    Info = 5,
    Lease = 6,
    Probe = 7,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Segment,
            2 => Kind::Manifest,
            3 => Kind::Chunk,
            4 => Kind::Head,
            5 => Kind::Info,
            6 => Kind::Lease,
            7 => Kind::Probe,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Segment => "segment",
            Kind::Manifest => "snapshot manifest",
            Kind::Chunk => "snapshot chunk",
            Kind::Head => "head",
            Kind::Info => "archive info",
            Kind::Lease => "restore lease",
            Kind::Probe => "probe",
        }
    }
}

/// Why an object did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// A plaintext object where every object must be sealed.
    Plaintext,
    /// A sealed object, and the reader has no keys.
    NoKeys { key_id: String },
    /// Sealed with a key the ring does not hold.
    UnknownKey { key_id: String },
    /// The key of that id does not open the data key: another key under that id, or a forgery.
    WrongKey { key_id: String },
    /// The data key opened but the body does not authenticate: changed after it was sealed.
    NotAuthentic { key_id: String },
    /// Sealed as another kind of object.
    WrongKind,
    /// Not a whole envelope.
    Malformed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {problem}")]
pub struct OpenError {
    pub object: String,
    pub problem: String,
    pub why: Why,
}

impl OpenError {
    fn new(object: &str, why: Why, problem: String) -> OpenError {
        OpenError { object: object.to_owned(), problem, why }
    }

    /// A sealed object, met by a reader without keys.
    pub(crate) fn no_key(object: &str, bytes: &[u8]) -> OpenError {
        let key_id = header(bytes).map(|h| h.key_id.to_owned()).unwrap_or_else(|_| "?".into());
        let problem = format!(
            "it is encrypted (archive key {key_id:?}) and this reader has no archive key: give it the key ring \
             (archive.key_file, --key-file)"
        );
        OpenError::new(object, Why::NoKeys { key_id }, problem)
    }

    /// The key id the envelope names, if it names one.
    pub fn key_id(&self) -> Option<&str> {
        match &self.why {
            Why::NoKeys { key_id }
            | Why::UnknownKey { key_id }
            | Why::WrongKey { key_id }
            | Why::NotAuthentic { key_id } => Some(key_id),
            _ => None,
        }
    }
}

/// Whether `bytes` start like an envelope.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Seals `plaintext` as an object of `kind` with `key`.
pub fn seal(key: &ArchiveKey, kind: Kind, plaintext: &[u8]) -> Vec<u8> {
    let mut data_key = [0u8; DATA_KEY_BYTES];
    let (mut key_nonce, mut body_nonce) = ([0u8; NONCE_LEN], [0u8; NONCE_LEN]);
    for buf in [&mut data_key[..], &mut key_nonce[..], &mut body_nonce[..]] {
        aws_lc_rs::rand::fill(buf).expect("the operating system's random source is available");
    }
    let id = key.id().as_bytes();
    let mut out = Vec::with_capacity(plaintext.len() + id.len() + 128);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(kind as u8);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    let header_len = out.len();
    out.extend_from_slice(&key_nonce);
    let mut sealed_key = data_key.to_vec();
    key.kek()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(key_nonce),
            Aad::from(&out[..header_len]),
            &mut sealed_key,
        )
        .expect("sealing 32 bytes cannot fail");
    out.extend_from_slice(&sealed_key);
    out.extend_from_slice(&body_nonce);
    let body_key = data_key_cipher(&data_key);
    let mut body = plaintext.to_vec();
    body_key
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(body_nonce), Aad::from(&out[..]), &mut body)
        .expect("sealing an object in memory cannot fail");
    out.extend_from_slice(&body);
    out
}

fn data_key_cipher(data_key: &[u8; DATA_KEY_BYTES]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, data_key).expect("AES-256 takes a 32-byte key"))
}

/// The envelope's clear header.
struct Header<'a> {
    kind: u8,
    key_id: &'a str,
    /// Where the data key's nonce starts.
    end: usize,
}

fn header(bytes: &[u8]) -> Result<Header<'_>, String> {
    if !is_sealed(bytes) {
        return Err("not an envelope".into());
    }
    let at = |n: usize| bytes.get(n).copied().ok_or_else(|| format!("truncated at byte {n}"));
    let version = u16::from_le_bytes([at(8)?, at(9)?]);
    if version != VERSION {
        return Err(format!("envelope version {version} is not supported (this reader knows {VERSION})"));
    }
    let kind = at(10)?;
    let id_len = usize::from(at(11)?);
    let key_id = bytes.get(12..12 + id_len).ok_or("truncated in its key id")?;
    let key_id = std::str::from_utf8(key_id).map_err(|_| "its key id is not UTF-8".to_string())?;
    Ok(Header { kind, key_id, end: 12 + id_len })
}

/// Opens an envelope with the key of `ring` it names; `kind` (None: any) is the kind of object
/// expected. Returns the plaintext and the key that sealed it.
pub fn open<'r>(
    ring: &'r KeyRing,
    kind: Option<Kind>,
    object: &str,
    bytes: &[u8],
) -> Result<(Vec<u8>, &'r ArchiveKey), OpenError> {
    if !is_sealed(bytes) {
        let problem = "a plaintext object in an encrypted archive: refused (every object there is sealed with an \
                       archive key; this one could have been written by anyone who can write to the bucket)"
            .to_string();
        return Err(OpenError::new(object, Why::Plaintext, problem));
    }
    let malformed = |problem: String| OpenError::new(object, Why::Malformed, format!("a damaged envelope: {problem}"));
    let h = header(bytes).map_err(malformed)?;
    let key_id = h.key_id.to_owned();
    let key = ring.get(h.key_id).ok_or_else(|| {
        OpenError::new(
            object,
            Why::UnknownKey { key_id: key_id.clone() },
            format!(
                "sealed with archive key {key_id:?}, which this key ring does not hold (it holds {:?})",
                ring.ids()
            ),
        )
    })?;
    let sealed_key_end = h.end + NONCE_LEN + DATA_KEY_BYTES + TAG_BYTES;
    let body_at = sealed_key_end + NONCE_LEN;
    if bytes.len() < body_at + TAG_BYTES {
        return Err(malformed(format!("{} bytes are too few to hold a sealed object", bytes.len())));
    }
    let nonce = |at: usize| Nonce::try_assume_unique_for_key(&bytes[at..at + NONCE_LEN]).expect("12 bytes");
    let mut data_key = bytes[h.end + NONCE_LEN..sealed_key_end].to_vec();
    let data_key: [u8; DATA_KEY_BYTES] = key
        .kek()
        .open_in_place(nonce(h.end), Aad::from(&bytes[..h.end]), &mut data_key)
        .ok()
        .and_then(|k| <[u8; DATA_KEY_BYTES]>::try_from(&k[..]).ok())
        .ok_or_else(|| {
            OpenError::new(
                object,
                Why::WrongKey { key_id: key_id.clone() },
                format!(
                    "archive key {key_id:?} does not open it: the ring's key of that id is not the one that sealed \
                     it, or the object is forged"
                ),
            )
        })?;
    let mut body = bytes[body_at..].to_vec();
    let len = data_key_cipher(&data_key)
        .open_in_place(nonce(sealed_key_end), Aad::from(&bytes[..body_at]), &mut body)
        .map_err(|_| {
            OpenError::new(
                object,
                Why::NotAuthentic { key_id: key_id.clone() },
                format!("does not authenticate under archive key {key_id:?}: it was changed after it was sealed"),
            )
        })?
        .len();
    body.truncate(len);
    match (Kind::from_byte(h.kind), kind) {
        (Some(found), Some(expected)) if found != expected => Err(OpenError::new(
            object,
            Why::WrongKind,
            format!("sealed as a {}, not a {}: refused", found.name(), expected.name()),
        )),
        (None, _) => Err(malformed(format!("unknown object kind {}", h.kind))),
        _ => Ok((body, key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate_entry;
    use proptest::prelude::*;

    fn ring(entries: &[&str]) -> KeyRing {
        KeyRing::parse(&entries.join(" "), "test").unwrap()
    }

    #[test]
    fn an_object_round_trips_and_names_its_key() {
        let r = ring(&[&generate_entry("k1").unwrap()]);
        let sealed = seal(r.active(), Kind::Segment, b"the contacts of one user");
        assert!(!sealed.windows(8).any(|w| w == b"contacts"), "the plaintext shows through");
        let (plain, key) = open(&r, Some(Kind::Segment), "o", &sealed).unwrap();
        assert_eq!((plain.as_slice(), key.id()), (&b"the contacts of one user"[..], "k1"));
        assert_eq!(open(&r, Some(Kind::Chunk), "o", &sealed).unwrap_err().why, Why::WrongKind);
        assert!(open(&r, None, "o", &sealed).is_ok());
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        let r = ring(&[&generate_entry("k1").unwrap()]);
        let sealed = seal(r.active(), Kind::Head, b"{\"archived_index\":7}");
        for k in 0..sealed.len() * 8 {
            let mut bad = sealed.clone();
            bad[k / 8] ^= 1 << (k % 8);
            assert!(open(&r, Some(Kind::Head), "o", &bad).is_err(), "bit {k} flipped still opens");
        }
        for cut in 0..sealed.len() {
            assert!(open(&r, Some(Kind::Head), "o", &sealed[..cut]).is_err(), "cut at {cut} still opens");
        }
    }

    #[test]
    fn the_wrong_key_a_missing_key_and_plaintext_are_named() {
        let sealer = ring(&[&generate_entry("k1").unwrap()]);
        let sealed = seal(sealer.active(), Kind::Chunk, b"records");
        let same_id_other_key = ring(&[&generate_entry("k1").unwrap()]);
        let e = open(&same_id_other_key, Some(Kind::Chunk), "c", &sealed).unwrap_err();
        assert_eq!(e.why, Why::WrongKey { key_id: "k1".into() });
        assert!(e.to_string().contains("\"k1\""), "{e}");
        let other = ring(&[&generate_entry("k2").unwrap()]);
        let e = open(&other, Some(Kind::Chunk), "c", &sealed).unwrap_err();
        assert_eq!(e.key_id(), Some("k1"));
        assert!(e.to_string().contains("k2"), "names what the ring holds: {e}");
        let e = open(&sealer, Some(Kind::Chunk), "segments/x", b"KSSEG001 plaintext").unwrap_err();
        assert_eq!(e.why, Why::Plaintext);
        assert!(e.to_string().starts_with("segments/x: a plaintext object"), "{e}");
    }

    #[test]
    fn a_rotated_ring_opens_old_objects_and_seals_new_ones_with_the_new_key() {
        let (k1, k2) = (generate_entry("k1").unwrap(), generate_entry("k2").unwrap());
        let old = ring(&[&k1]);
        let sealed_old = seal(old.active(), Kind::Segment, b"old");
        let rotated = ring(&[&k1, &format!("{k2}:active")]);
        assert_eq!(open(&rotated, Some(Kind::Segment), "o", &sealed_old).unwrap().1.id(), "k1");
        let sealed_new = seal(rotated.active(), Kind::Segment, b"new");
        assert_eq!(header(&sealed_new).unwrap().key_id, "k2");
        assert_eq!(
            open(&old, Some(Kind::Segment), "o", &sealed_new).unwrap_err().why,
            Why::UnknownKey { key_id: "k2".into() }
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_open(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let r = ring(&["k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]);
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            prop_assert!(open(&r, None, "fuzz", &bytes).is_err());
            let _ = open(&r, None, "fuzz", &tail);
        }
    }
}
