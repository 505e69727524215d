//! Layering (issue 16): the kernels know no pruning method, no training and no model, and
//! the core knows no op. Read as text from the sources: every module path a file names
//! outside comments (`crate::x`, or each `x` of `crate::{x, y::z}`, across lines) must not
//! reach a layer above the file's own:
//! - `src/ops/**` may not name `prune`, `finetune` or `model`;
//! - the core (`tensor.rs`, `storage.rs`, `shape.rs`, `dtype.rs`, `device/`, `sparse/`) may
//!   not name `ops`, nor anything above it (`nn`, `prune`, `finetune`, `model`).

use std::path::{Path, PathBuf};

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The first segment of every `crate::` path in `src` (comments removed), with its line.
fn crate_modules(src: &str) -> Vec<(usize, String)> {
    let code: Vec<&str> = src.lines().map(|l| if l.trim_start().starts_with("//") { "" } else { l }).collect();
    let text = code.join("\n");
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        let line = text[..text.len() - rest.len() + at].matches('\n').count() + 1;
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Nested braces are inner paths of an item; only the items' first segments count.
            let (mut depth, mut item_start, mut end) = (0usize, true, group.len());
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = i;
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        out.push((line, ident(&group[i..])));
                        item_start = false;
                    }
                    _ => {}
                }
            }
            rest = &group[end..];
        } else {
            out.push((line, ident(after)));
            rest = after;
        }
    }
    out
}

fn violations(files: &[&str], forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    for f in files {
        rust_files(&root.join(f), &mut paths);
    }
    assert!(!paths.is_empty(), "no sources found under {}", root.display());
    let mut found = Vec::new();
    for p in paths {
        let src = std::fs::read_to_string(&p).unwrap();
        for (line, module) in crate_modules(&src) {
            if forbidden.contains(&module.as_str()) {
                found.push(format!("{}:{line}: crate::{module}", p.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    found
}

#[test]
fn the_parser_sees_single_grouped_and_multiline_paths_and_skips_comments() {
    let src = "use crate::prune::Pattern;\n// crate::model in a comment\n/// [`crate::finetune`]\n\
               use crate::{\n    device::Device,\n    ops::{cast, matmul},\n    Tensor,\n};\nlet x = crate::nn::f();";
    let got: Vec<(usize, String)> = crate_modules(src);
    let want: Vec<(usize, String)> =
        [(1, "prune"), (4, "device"), (4, "ops"), (4, "Tensor"), (9, "nn")].map(|(l, m)| (l, m.to_string())).into();
    assert_eq!(got, want);
}

#[test]
fn ops_do_not_import_pruning_training_or_the_model() {
    let found = violations(&["ops"], &["prune", "finetune", "model"]);
    assert!(found.is_empty(), "src/ops reaches above itself:\n{}", found.join("\n"));
}

#[test]
fn the_core_does_not_import_ops_or_anything_above() {
    let core = ["tensor.rs", "storage.rs", "shape.rs", "dtype.rs", "device", "sparse"];
    let found = violations(&core, &["ops", "nn", "prune", "finetune", "model"]);
    assert!(found.is_empty(), "the core reaches above itself:\n{}", found.join("\n"));
}
