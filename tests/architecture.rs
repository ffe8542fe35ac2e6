//! ARCHITECTURE.md names every module under `src/`: a module added without
//! a word there fails this test, so the page stays true.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A module is named when one line of the page gives its path under
/// `src/` (`source/modbus/plan.rs`), or names its folder (`buffer/`) and
/// the file (`` `outbox.rs` ``) together; a folder's `mod.rs` is named by
/// the folder.
fn named(page: &str, rel: &str) -> bool {
    let (folder, file) = match rel.rsplit_once('/') {
        Some((d, f)) => (Some(format!("{d}/")), f),
        None => (None, rel),
    };
    page.lines().any(|line| {
        line.contains(&format!("`{rel}`"))
            || match &folder {
                Some(d) => {
                    line.contains(&format!("`{d}"))
                        && (file == "mod.rs" || line.contains(&format!("`{file}`")))
                }
                None => line.contains(&format!("`{file}`")),
            }
    })
}

#[test]
fn architecture_names_every_module_under_src() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(root.join("src")).ok()?.to_str()?.to_string();
            (!named(&page, &rel)).then_some(rel)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name these modules under src/: {missing:?}"
    );
}

#[test]
fn the_rule_tells_a_named_module_from_an_unnamed_one() {
    let page = "* `buffer/`: the outbox. `outbox.rs`: the SQL.\n* `plant/mod.rs`: the model.";
    assert!(named(page, "buffer/outbox.rs"));
    assert!(named(page, "buffer/mod.rs"));
    assert!(named(page, "plant/mod.rs"));
    assert!(!named(page, "buffer/window.rs"));
    assert!(!named(page, "metrics.rs"));
}
