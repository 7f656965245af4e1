//! Shared by the fuzz targets in `fuzz_targets/`; the checks themselves live in
//! `checks.rs`, which `tests/fuzz_corpus.rs` in the main crate also compiles.

pub mod checks;
