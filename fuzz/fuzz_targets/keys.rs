//! libFuzzer target: `keepsake_fuzz::keys` (see fuzz/src/lib.rs for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keepsake_fuzz::keys(data));
