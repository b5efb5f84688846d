//! Fuzzes the archive snapshot decoders (manifest, chunk, chunk records): whatever the bytes,
//! they return an error or a value that re-encodes to the same thing; they never panic.
#![no_main]

use keepsake::archive::snapshot::{decode_manifest, encode_manifest, records, Chunk};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_manifest("fuzz", data) {
        assert_eq!(decode_manifest("fuzz", &encode_manifest(&m)).expect("a decoded manifest re-encodes"), m);
    }
    // A chunk is checked against the hash in its name; the fuzzer cannot forge BLAKE3, so the
    // record parser is also fed the raw bytes, as a body that passed the hash check would be.
    let _ = Chunk::decode("fuzz", data, &[0; 32]);
    if let Ok(parsed) = records("fuzz", data) {
        let total: usize = parsed.iter().map(|(_, k, v)| 9 + k.len() + v.len()).sum();
        assert_eq!(total, data.len(), "the records account for every byte");
    }
});
