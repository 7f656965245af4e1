//! Replays the committed fuzz seed corpus (`fuzz/corpus/<target>/*`) through the same
//! checks the cargo-fuzz targets run (`fuzz/src/checks.rs`), on stable, as a plain
//! `cargo test`. A crash the fuzzer finds is fixed, then its input is added to the
//! target's corpus directory so it stays fixed.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
}

/// The corpus files of one target, sorted, hidden files (editor droppings) skipped.
fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_root().join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "fuzz target `{target}` has no corpus {}: {e}",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read corpus dir").path())
        .filter(|p| p.is_file())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

/// Runs every corpus file of `target` through `check`; returns the failures.
fn replay(target: &str, check: checks::Check) -> Vec<String> {
    let files = corpus_files(target);
    assert!(!files.is_empty(), "corpus of `{target}` is empty");
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read corpus file");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            failed.push(format!("{}: {why}\n    input: {data:02x?}", path.display()));
        }
    }
    failed
}

/// Every corpus file of every target in `checks::TARGETS` passes its target's checks.
#[test]
fn every_corpus_input_passes_its_target_checks() {
    let failed: Vec<String> = checks::TARGETS
        .iter()
        .flat_map(|&(target, check)| replay(target, check))
        .collect();
    assert!(
        failed.is_empty(),
        "{} corpus inputs fail:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// Every corpus directory and fuzz target belongs to an entry of `checks::TARGETS`, so
/// a new target's corpus cannot be left out of this replay.
#[test]
fn every_corpus_dir_and_fuzz_target_is_listed() {
    let targets: Vec<&str> = checks::TARGETS.iter().map(|(name, _)| *name).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (dir, ext) in [("corpus", None), ("fuzz_targets", Some(".rs"))] {
        for entry in std::fs::read_dir(root.join(dir)).expect(dir) {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let stem = ext.map_or(name.as_str(), |e| name.trim_end_matches(e));
            assert!(
                targets.contains(&stem),
                "fuzz/{dir}/{name} has no entry in TARGETS (fuzz/src/checks.rs)"
            );
        }
    }
}
