//! Key encoding for every column family, in one place.
//!
//! Ids never contain control characters (the server rejects them before they reach the log),
//! so 0x00 separates the parts and byte order equals the order of the (user, collection, item)
//! tuple: a user's items, and a user's changes, are each one contiguous range.

const SEP: u8 = 0;

/// The reserved user that holds the cluster's own records. No client can name it (client ids
/// are printable; this one starts with a control character).
pub const SYSTEM_USER: &str = "\u{1}keepsake";
/// The history record's collection and item (`history.rs`).
pub const HISTORY_COLLECTION: &str = "history";
pub const HISTORY_ITEM: &str = "id";
/// The history record's `items` key: the state machine reads the digest format from it.
pub const HISTORY_RECORD_KEY: &[u8] = b"\x01keepsake\x00history\x00id";

/// `items` CF: user 0x00 collection 0x00 item_id.
pub fn item_key(user_id: &str, collection: &str, item_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_id.len() + collection.len() + item_id.len() + 2);
    k.extend_from_slice(user_id.as_bytes());
    k.push(SEP);
    k.extend_from_slice(collection.as_bytes());
    k.push(SEP);
    k.extend_from_slice(item_id.as_bytes());
    k
}

/// The prefix of every item of one collection.
pub fn collection_prefix(user_id: &str, collection: &str) -> Vec<u8> {
    item_key(user_id, collection, "")
}

/// The prefix of every item, or every change, of one user.
pub fn user_prefix(user_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_id.len() + 1);
    k.extend_from_slice(user_id.as_bytes());
    k.push(SEP);
    k
}

/// Splits an `items` key back into (user, collection, item_id).
pub fn decode_item_key(key: &[u8]) -> Option<(String, String, String)> {
    let mut parts = key.splitn(3, |b| *b == SEP);
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let collection = std::str::from_utf8(parts.next()?).ok()?;
    let item = std::str::from_utf8(parts.next()?).ok()?;
    Some((user.to_owned(), collection.to_owned(), item.to_owned()))
}

/// `changes` CF: user 0x00 revision (u64 big-endian), so a user's changes sort by revision.
pub fn change_key(user_id: &str, revision: u64) -> Vec<u8> {
    let mut k = user_prefix(user_id);
    k.extend_from_slice(&revision.to_be_bytes());
    k
}

/// The revision at the end of a `changes` key.
pub fn decode_change_revision(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// `log` and `digests` CFs: the index, big-endian, so entries sort by index.
pub fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn decode_index_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// The smallest key greater than every key starting with `prefix` (for range ends); `None`
/// when there is none (the prefix is empty or all 0xFF, so the range runs to the end).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The end of the range of a user's or a collection's keys. Those prefixes end with the 0x00
/// separator, so the range always has an end.
pub fn separated_prefix_end(prefix: &[u8]) -> Vec<u8> {
    debug_assert_eq!(prefix.last(), Some(&SEP));
    prefix_end(prefix).expect("a prefix ending with the 0x00 separator has an end")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = String> {
        // Any string the server accepts: no control characters.
        "[^\\x00-\\x1f\\x7f]{0,12}"
    }

    proptest! {
        #[test]
        fn item_keys_round_trip(u in id(), c in id(), i in id()) {
            let k = item_key(&u, &c, &i);
            prop_assert_eq!(decode_item_key(&k), Some((u, c, i)));
        }

        #[test]
        fn item_key_order_is_tuple_order(a in (id(), id(), id()), b in (id(), id(), id())) {
            let ka = item_key(&a.0, &a.1, &a.2);
            let kb = item_key(&b.0, &b.1, &b.2);
            let ta = (a.0.as_bytes(), a.1.as_bytes(), a.2.as_bytes());
            let tb = (b.0.as_bytes(), b.1.as_bytes(), b.2.as_bytes());
            prop_assert_eq!(ka.cmp(&kb), ta.cmp(&tb));
        }

        #[test]
        fn change_keys_sort_by_revision_within_a_user(u in id(), r1: u64, r2: u64) {
            let (k1, k2) = (change_key(&u, r1), change_key(&u, r2));
            prop_assert_eq!(k1.cmp(&k2), r1.cmp(&r2));
            prop_assert_eq!(decode_change_revision(&k1), Some(r1));
            prop_assert!(k1.starts_with(&user_prefix(&u)));
        }

        #[test]
        fn prefix_end_bounds_every_key_with_the_prefix(p in proptest::collection::vec(any::<u8>(), 0..8), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut k = p.clone();
            k.extend_from_slice(&tail);
            match prefix_end(&p) {
                Some(end) => prop_assert!(k < end),
                // Only a prefix with no byte below 0xFF has no end.
                None => prop_assert!(p.iter().all(|b| *b == u8::MAX)),
            }
        }
    }

    #[test]
    fn prefix_end_of_all_ff_is_unbounded() {
        assert_eq!(prefix_end(&[]), None);
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_end(&[0x01, 0xFF]), Some(vec![0x02]));
        assert_eq!(separated_prefix_end(&user_prefix("u")), b"u\x01".to_vec());
    }

    #[test]
    fn one_users_items_do_not_mix_with_a_longer_user_id() {
        let prefix = user_prefix("u");
        assert!(!item_key("u1", "c", "i").starts_with(&prefix));
        assert!(item_key("u", "c", "i").starts_with(&prefix));
    }

    #[test]
    fn the_history_record_key_is_the_items_key_of_the_history_record() {
        assert_eq!(HISTORY_RECORD_KEY, item_key(SYSTEM_USER, HISTORY_COLLECTION, HISTORY_ITEM));
    }

    #[test]
    fn index_keys_round_trip_and_sort() {
        assert_eq!(decode_index_key(&index_key(42)), Some(42));
        assert!(index_key(9) < index_key(10));
    }
}
