//! The order-independent state digest (docs/design.md §3).
//!
//! The digest is the sum, modulo 2^256, of a 256-bit hash of every live item (its key, revision
//! and value hash). Adding and removing an item are O(1), the order of writes does not matter,
//! and two nodes at the same applied index have equal digests exactly when their items agree.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The hash of one live item: what it adds to the digest.
    pub fn item_hash(key: &[u8], revision: u64, value: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key);
        h.update(&revision.to_le_bytes());
        h.update(blake3::hash(value).as_bytes());
        *h.finalize().as_bytes()
    }

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
    fn item_hash_depends_on_key_revision_and_value() {
        let base = Digest::item_hash(b"k", 1, b"v");
        assert_ne!(base, Digest::item_hash(b"k2", 1, b"v"));
        assert_ne!(base, Digest::item_hash(b"k", 2, b"v"));
        assert_ne!(base, Digest::item_hash(b"k", 1, b"w"));
    }
}
