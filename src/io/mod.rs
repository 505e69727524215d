//! File formats: GGUF models (read, dequantise to f32; a small writer for tests and
//! tools), safetensors (read and atomic write), and the tokenizer (from GGUF metadata or a
//! Hugging Face `tokenizer.json`). Also where tests find the downloaded assets:
//! `$SPARSETUNE_CACHE`, else `$HOME/.cache/sparsetune`, filled by `scripts/fetch-assets.sh`.

pub mod gguf;
pub mod outputs;
pub mod pieces;
pub mod regular;
pub mod safetensors;
pub mod tokenizer;

use std::path::PathBuf;

pub use gguf::{GgmlType, GgufFile, GgufTensorInfo, GgufValue, GgufWriter};
pub use pieces::PieceEncoder;
pub use regular::{open_regular, read_regular, read_regular_to_string};
pub use safetensors::{
    write_owned, write_safetensors, OwnedEntry, PlannedFile, SafetensorsEntry, SafetensorsFile, SafetensorsWriter,
    TensorSpec,
};

/// Writes `bytes` to `path` atomically: to `<path>.tmp-<pid>`, fsynced, then renamed over
/// `path`, so a reader sees the old file or the new one, never part of one. What killed
/// writes of `path` left beside it is removed first.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> crate::Result<()> {
    use std::io::Write;
    remove_stale_temps(path);
    let name =
        path.file_name().ok_or_else(|| crate::Error::invalid(format!("{}: path has no file name", path.display())))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(crate::Error::io(path, e));
    }
    safetensors::sync_dir_of(path);
    remove_stale_temps(path);
    Ok(())
}

/// Whether `name` is the temporary file of a write (`<name>.tmp-<pid>`) by a process that
/// no longer runs (killed mid-write). Only where `/proc` tells; elsewhere never.
pub(crate) fn is_stale_temp(name: &str) -> bool {
    let Some((_, pid)) = name.rsplit_once(".tmp-") else { return false };
    let Ok(pid) = pid.parse::<u32>() else { return false };
    let proc = std::path::Path::new("/proc");
    pid != std::process::id() && proc.join("self").exists() && !proc.join(pid.to_string()).exists()
}

/// Before and after `path` is written: removes what killed writes of the same file left
/// beside it (a 7B shard's is gigabytes). Best-effort: a file that cannot be removed stays.
pub(crate) fn remove_stale_temps(path: &std::path::Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return };
    let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let other = entry.file_name();
        let Some(other) = other.to_str() else { continue };
        if other.strip_prefix(name).is_some_and(|rest| rest.starts_with(".tmp-")) && is_stale_temp(other) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
pub use tokenizer::Tokenizer;

/// The asset cache: `$SPARSETUNE_CACHE` if set and non-empty, else
/// `$HOME/.cache/sparsetune` (`.cache/sparsetune` relative to the working directory when
/// `HOME` is unset).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SPARSETUNE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cache").join("sparsetune")
}

/// For tests: the path of asset `rel` (relative to [`cache_dir`]) if the file exists.
/// Otherwise prints `skipped: asset <path> not found (run scripts/fetch-assets.sh)` and
/// returns `None`, so the test can return early — unless `SPARSETUNE_REQUIRE_ASSETS=1`,
/// in which case it panics, so that CI with assets cannot skip silently.
pub fn asset_path(rel: &str) -> Option<PathBuf> {
    let path = cache_dir().join(rel);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("SPARSETUNE_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!("asset {} not found and SPARSETUNE_REQUIRE_ASSETS=1 (run scripts/fetch-assets.sh)", path.display());
    }
    println!("skipped: asset {} not found (run scripts/fetch-assets.sh)", path.display());
    None
}

/// A fresh-per-process scratch directory for unit tests: `<tmp>/sparsetune-<pid>/<name>`.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sparsetune-{}", std::process::id())).join(name);
    std::fs::create_dir_all(&dir).expect("create test scratch directory");
    dir
}
