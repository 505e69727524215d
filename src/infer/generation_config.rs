//! The token ids that end a generation ([`stop_ids`]).
//!
//! For a Hugging Face model directory (or its `model.safetensors.index.json`), the first of:
//! 1. `generation_config.json`'s `eos_token_id` (what transformers' `generate` stops on);
//! 2. `config.json`'s `eos_token_id`;
//! 3. the tokenizer's EOS.
//!
//! A file that is absent, or whose `eos_token_id` is absent or `null`, passes to the next
//! source. For a GGUF or a single safetensors file, the tokenizer's EOS alone (GGUF
//! `tokenizer.ggml.eos_token_id`, or the `tokenizer_config.json` that travels with the
//! file). No source at all gives an empty list: generation then stops at its token limit
//! only.
//!
//! `eos_token_id` is a token id or a non-empty list of them (duplicates dropped, order
//! kept). The files come from strangers: each is a regular file of at most
//! [`MAX_CONFIG_BYTES`] (a FIFO or a directory in its place is refused, not skipped), and
//! any other type — a string, a float, a negative number, a nested list, an empty list — or
//! an id outside the model's vocabulary is an error naming the file and the field.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::io::regular::{read_regular_to_string, MAX_CONFIG_BYTES};
use crate::io::Tokenizer;
use crate::{Error, Result};

/// The field read.
const FIELD: &str = "eos_token_id";

/// The ids that end a generation for the model at `model_path` (see the module doc); every
/// id is below `vocab`, the model's vocabulary size.
pub fn stop_ids(model_path: &Path, tokenizer: &Tokenizer, vocab: usize) -> Result<Vec<u32>> {
    if let Some(dir) = hf_directory(model_path) {
        for file in ["generation_config.json", "config.json"] {
            if let Some(ids) = eos_ids_in(&dir.join(file), vocab)? {
                return Ok(ids);
            }
        }
    }
    match tokenizer.eos_token_id() {
        Some(id) if id as usize >= vocab => Err(Error::Config(format!(
            "the tokenizer's EOS id {id} is outside the model's vocabulary ({vocab} tokens)"
        ))),
        Some(id) => Ok(vec![id]),
        None => Ok(Vec::new()),
    }
}

/// The directory whose JSON side files describe the model: `model_path` itself, or the
/// directory of a `*.index.json`; `None` for a single model file.
fn hf_directory(model_path: &Path) -> Option<PathBuf> {
    if model_path.is_dir() {
        return Some(model_path.to_path_buf());
    }
    let index = model_path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".index.json"));
    index.then(|| model_path.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// `eos_token_id` of the JSON object in `path`: `None` when the file or the field is absent
/// (or `null`).
fn eos_ids_in(path: &Path, vocab: usize) -> Result<Option<Vec<u32>>> {
    // Anything at the path (a FIFO, a dangling link) is opened and refused by name rather
    // than passed over as absent.
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let text = read_regular_to_string(path, MAX_CONFIG_BYTES)?;
    let bad = |msg: String| Error::Config(format!("{}: {msg}", path.display()));
    let json: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let object = json.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
    let ids = match object.get(FIELD) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(bad(format!("{FIELD}: an empty list (no token would end a generation)")))
        }
        Some(Value::Array(items)) => {
            items.iter().map(|v| token_id(v, vocab)).collect::<std::result::Result<Vec<_>, _>>()
        }
        Some(v) => token_id(v, vocab).map(|id| vec![id]),
    }
    .map_err(|why| bad(format!("{FIELD}: {why}")))?;
    let mut unique = Vec::with_capacity(ids.len());
    for id in ids {
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    Ok(Some(unique))
}

/// One token id: a non-negative integer below `vocab`.
fn token_id(v: &Value, vocab: usize) -> std::result::Result<u32, String> {
    let id = v.as_u64().ok_or_else(|| format!("expected a token id or a list of token ids, found {v}"))?;
    if id >= vocab as u64 {
        return Err(format!("id {id} is outside the model's vocabulary ({vocab} tokens)"));
    }
    Ok(id as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_dir;

    /// A tokenizer whose EOS is `eos`.
    fn tokenizer(eos: Option<u32>) -> Tokenizer {
        Tokenizer::byte_level().unwrap().with_eos_token_id(eos)
    }

    /// A fresh model directory with the given side files.
    fn model_dir(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = test_dir("generation_config").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            std::fs::write(dir.join(file), text).unwrap();
        }
        dir
    }

    #[test]
    fn generation_config_first_then_config_then_tokenizer() {
        let tok = tokenizer(Some(7));
        let dir = model_dir(
            "int",
            &[("generation_config.json", r#"{"eos_token_id": 2}"#), ("config.json", r#"{"eos_token_id": 5}"#)],
        );
        assert_eq!(stop_ids(&dir, &tok, 100).unwrap(), [2]);
        let dir = model_dir("list", &[("generation_config.json", r#"{"bos_token_id": 1, "eos_token_id": [9, 3, 9]}"#)]);
        assert_eq!(stop_ids(&dir, &tok, 100).unwrap(), [9, 3]);
        // No eos_token_id (or null) in generation_config.json: config.json's.
        let dir = model_dir(
            "null",
            &[("generation_config.json", r#"{"eos_token_id": null}"#), ("config.json", r#"{"eos_token_id": [5, 6]}"#)],
        );
        assert_eq!(stop_ids(&dir, &tok, 100).unwrap(), [5, 6]);
        let dir = model_dir("config-only", &[("config.json", r#"{"eos_token_id": 5}"#)]);
        assert_eq!(stop_ids(&dir, &tok, 100).unwrap(), [5]);
        // Through the index of a sharded checkpoint, the same directory.
        assert_eq!(stop_ids(&dir.join("model.safetensors.index.json"), &tok, 100).unwrap(), [5]);
        // Neither file says: the tokenizer's EOS; no EOS at all: nothing.
        let dir = model_dir("missing", &[("config.json", r#"{"hidden_size": 8}"#)]);
        assert_eq!(stop_ids(&dir, &tok, 100).unwrap(), [7]);
        assert_eq!(stop_ids(&dir, &tokenizer(None), 100).unwrap(), Vec::<u32>::new());
        // A single model file: the tokenizer's EOS, whatever lies beside it.
        std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": 1}"#).unwrap();
        assert_eq!(stop_ids(&dir.join("model.gguf"), &tok, 100).unwrap(), [7]);
    }

    #[test]
    fn wrong_types_and_ids_are_refused_naming_file_and_field() {
        let tok = tokenizer(Some(7));
        for (text, why) in [
            (r#"{"eos_token_id": "2"}"#, "found \"2\""),
            (r#"{"eos_token_id": 2.5}"#, "found 2.5"),
            (r#"{"eos_token_id": -1}"#, "found -1"),
            (r#"{"eos_token_id": true}"#, "found true"),
            (r#"{"eos_token_id": [2, [3]]}"#, "found [3]"),
            (r#"{"eos_token_id": [2, null]}"#, "found null"),
            (r#"{"eos_token_id": []}"#, "an empty list"),
            (r#"{"eos_token_id": 100}"#, "id 100 is outside the model's vocabulary (100 tokens)"),
            (r#"{"eos_token_id": [1, 4294967296]}"#, "id 4294967296 is outside"),
        ] {
            let dir = model_dir("bad", &[("generation_config.json", text)]);
            let e = stop_ids(&dir, &tok, 100).unwrap_err().to_string();
            assert!(
                e.contains("generation_config.json") && e.contains("eos_token_id") && e.contains(why),
                "{text}: {e}"
            );
        }
        for (text, why) in [("[1, 2]", "not a JSON object"), ("{\"eos_token_id\": ", "EOF")] {
            let dir = model_dir("malformed", &[("config.json", text)]);
            let e = stop_ids(&dir, &tok, 100).unwrap_err().to_string();
            assert!(e.contains("config.json") && e.contains(why), "{text}: {e}");
        }
        // The tokenizer's EOS is checked against the vocabulary too.
        let e = stop_ids(&model_dir("empty", &[]), &tokenizer(Some(100)), 100).unwrap_err().to_string();
        assert!(e.contains("EOS id 100") && e.contains("100 tokens"), "{e}");
    }

    #[test]
    fn a_directory_in_place_of_the_file_is_refused() {
        let dir = model_dir("dir-in-place", &[("config.json", r#"{"eos_token_id": 5}"#)]);
        std::fs::create_dir_all(dir.join("generation_config.json")).unwrap();
        let e = stop_ids(&dir, &tokenizer(Some(7)), 100).unwrap_err().to_string();
        assert!(e.contains("generation_config.json") && e.contains("not a regular file"), "{e}");
    }
}
