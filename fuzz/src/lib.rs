//! The fuzz targets' properties, shared with the corpus replay test (`tests/fuzz_corpus.rs`).
#[path = "../../tests/fuzz_checks/mod.rs"]
pub mod checks;
