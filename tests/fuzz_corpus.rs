//! Replays every fuzz corpus file (`fuzz/corpus/<target>/`) through the target's property, so
//! CI checks what the fuzzer found without a fuzzing tool. See README.md, "Fuzzing".

mod fuzz_checks;

use std::path::Path;

#[test]
fn every_corpus_file_keeps_its_property() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, check) in fuzz_checks::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its property", file.display());
        }
    }
}
