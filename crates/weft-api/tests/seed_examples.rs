//! Every YAML example of the mesh's seed document (kept in `examples/seed/`) analyses without
//! an error, one file at a time and all together.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

use std::path::{Path, PathBuf};

use weft_api::Level;
use weft_api::load::{Limits, Loader};

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed")
}

fn errors(paths: &[PathBuf]) -> (usize, Vec<String>) {
    let mut loader = Loader::new(Limits::default());
    for path in paths {
        loader.load_path(path);
    }
    let loaded = loader.finish();
    let resources = loaded.resources.len();
    let errors = weft_api::check(&loaded)
        .into_iter()
        .filter(|m| m.level() == Level::Error)
        .map(|m| m.to_string())
        .collect();
    (resources, errors)
}

#[test]
fn each_seed_example_analyses_clean() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(seed_dir())
        .expect("examples/seed exists")
        .map(|e| e.expect("readable entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 10, "the seed document has ten YAML examples");
    for file in files {
        let (resources, errors) = errors(std::slice::from_ref(&file));
        assert!(resources > 0, "{} loaded nothing", file.display());
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            file.display(),
            errors.join("\n")
        );
    }
}

#[test]
fn all_seed_examples_together_analyse_without_errors() {
    let (resources, errors) = errors(&[seed_dir()]);
    assert_eq!(
        resources, 11,
        "twelve documents, one of which redefines VirtualService default/reviews"
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
