//! The order-independent state digest (docs/design.md §3).
//!
//! The digest is the sum, modulo 2^256, of a 256-bit hash of every item record. Adding and
//! removing a record are O(1), the order of writes does not matter, and two nodes at the same
//! applied index have equal digests exactly when their items agree.
//!
//! What a record's hash covers is the digest format (`ItemRecord::digest_hash`). Format 1 hashed
//! a live item's key, revision and value, and skipped tombstones; format 2 hashes every field of
//! every record, tombstones included. A state names its format in its history record
//! (`history.rs`), so every replica, every Raft snapshot and every restore agrees on it: states
//! whose record names none stay on format 1, and the state machine re-sums the whole state at
//! the index where a record naming another format is applied.
//!
//! Invariant: a state is summed in the format its history record names, or fails to load
//! (a format this build does not know, or a record that does not decode).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

/// Which hash of an item record the digest sums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DigestFormat {
    /// A live item's key, revision and value; tombstones add nothing.
    #[default]
    V1,
    /// Every field of every record, tombstones included.
    V2,
}

impl DigestFormat {
    /// The format a history record written by this build names.
    pub const CURRENT: DigestFormat = DigestFormat::V2;
    /// Every format, in number order.
    pub const ALL: [DigestFormat; 2] = [DigestFormat::V1, DigestFormat::V2];

    pub const fn number(self) -> u32 {
        match self {
            DigestFormat::V1 => 1,
            DigestFormat::V2 => 2,
        }
    }

    /// The format numbered `n` (0: named by no record, format 1).
    pub fn from_number(n: u32) -> Result<DigestFormat, String> {
        match n {
            0 | 1 => Ok(DigestFormat::V1),
            2 => Ok(DigestFormat::V2),
            other => Err(format!(
                "the state is summed with digest format {other}, which this build does not know: a newer \
                 Keepsake wrote it; run that version (or a later one) on this node"
            )),
        }
    }

    /// The format the history record's value names (None: no record, or a tombstone).
    pub fn named_by(record: Option<&[u8]>) -> Result<DigestFormat, String> {
        #[derive(Deserialize)]
        struct Named {
            #[serde(default)]
            digest_format: u32,
        }
        match record {
            None => Ok(DigestFormat::V1),
            Some(value) => match serde_json::from_slice::<Named>(value) {
                Ok(named) => DigestFormat::from_number(named.digest_format),
                Err(e) => Err(format!("the history record does not decode, so it names no digest format: {e}")),
            },
        }
    }
}

impl Digest {
    /// Adds an item's hash (little-endian 256-bit addition, wrapping).
    pub fn add(&mut self, hash: &[u8; 32]) {
        let mut carry = 0u16;
        for (d, h) in self.0.iter_mut().zip(hash) {
            let sum = *d as u16 + *h as u16 + carry;
            *d = sum as u8;
            carry = sum >> 8;
        }
    }

    /// Removes an item's hash (the inverse of `add`).
    pub fn sub(&mut self, hash: &[u8; 32]) {
        let mut borrow = 0i16;
        for (d, h) in self.0.iter_mut().zip(hash) {
            let diff = *d as i16 - *h as i16 - borrow;
            borrow = (diff < 0) as i16;
            *d = diff.rem_euclid(256) as u8;
        }
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().rev().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn add_then_sub_is_identity(start: [u8; 32], h: [u8; 32]) {
            let mut d = Digest(start);
            d.add(&h);
            d.sub(&h);
            prop_assert_eq!(d, Digest(start));
        }

        #[test]
        fn order_of_additions_does_not_matter(hs in proptest::collection::vec(any::<[u8; 32]>(), 1..20)) {
            let mut forward = Digest::default();
            hs.iter().for_each(|h| forward.add(h));
            let mut backward = Digest::default();
            hs.iter().rev().for_each(|h| backward.add(h));
            prop_assert_eq!(forward, backward);
        }
    }

    #[test]
    fn addition_carries_across_bytes() {
        let mut d = Digest([0xff; 32]);
        let mut one = [0u8; 32];
        one[0] = 1;
        d.add(&one);
        assert_eq!(d, Digest::default(), "2^256 - 1 + 1 wraps to 0");
        d.sub(&one);
        assert_eq!(d, Digest([0xff; 32]));
    }

    #[test]
    fn formats_are_named_by_the_history_record_and_unknown_ones_refused() {
        assert_eq!(DigestFormat::named_by(None), Ok(DigestFormat::V1));
        assert_eq!(DigestFormat::named_by(Some(br#"{"id":"ab","restores":0}"#)), Ok(DigestFormat::V1));
        assert_eq!(DigestFormat::named_by(Some(br#"{"id":"ab","digest_format":2}"#)), Ok(DigestFormat::V2));
        assert!(DigestFormat::named_by(Some(b"not json")).is_err(), "never a guess");
        let newer = DigestFormat::named_by(Some(br#"{"digest_format":3}"#)).unwrap_err();
        assert!(newer.contains("digest format 3"), "{newer}");
        for f in DigestFormat::ALL {
            assert_eq!(DigestFormat::from_number(f.number()), Ok(f));
        }
    }
}
