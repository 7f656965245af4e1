#![no_main]
//! See `p2pshare_fuzz::checks::manifest` for the input format and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| p2pshare_fuzz::checks::manifest(data));
