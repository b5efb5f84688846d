//! Fuzzes the archive segment decoder: whatever the bytes, it returns an error or a segment
//! that re-encodes to a decodable object; it never panics.
#![no_main]

use keepsake::archive::segment::Segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(segment) = Segment::decode("fuzz", data) {
        let again = Segment::decode("fuzz", &segment.encode()).expect("a decoded segment re-encodes");
        assert_eq!(again, segment);
    }
});
