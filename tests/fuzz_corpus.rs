//! Replays every fuzz corpus file (`fuzz/corpus/<target>/`, minimised by `fuzz/run`) and every
//! kept regression input (`fuzz/regressions/<target>/`, never minimised away) through the
//! target's property, so CI checks them without a fuzzing tool. See README.md, "Fuzzing".

mod fuzz_checks;

use std::path::Path;

#[test]
fn every_corpus_file_keeps_its_property() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    for (target, check) in fuzz_checks::TARGETS {
        let dir = root.join("corpus").join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        if let Ok(kept) = std::fs::read_dir(root.join("regressions").join(target)) {
            files.extend(kept.map(|entry| entry.unwrap().path()));
        }
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "failing their property: {failures:#?}");
}
