//! Text corpora → token windows.
//!
//! A data file holds documents: a text file (any name but the ones below) is one document,
//! read whole as UTF-8; `.jsonl`, `.jsonl.gz` and `.json.gz` hold one JSON object per line
//! (the form C4 shards and most fine-tuning sets come in) and `.json` either that or one
//! array of objects, each document being the string under `field` (`--text-field`,
//! default `text`). A file's documents are joined with a blank line and tokenized as one
//! text ([`Tokenizer::encode_document`]: BOS/EOS once, as the tokenizer's files say);
//! windows are non-overlapping runs of `seq_len` tokens from its start. Errors name the
//! file, and for JSON the line (or element) and the field.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::io::Tokenizer;
use crate::{Error, Result};

/// The default JSON field holding a document's text.
pub const DEFAULT_TEXT_FIELD: &str = "text";

/// Reads a UTF-8 text file; an empty (or whitespace-only) file is an error.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::format(path, "text", format!("not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(Error::invalid(format!("{}: the text is empty", path.display())));
    }
    Ok(text)
}

/// How a file's name says it is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Text,
    JsonLines {
        gzip: bool,
    },
    /// `.json`: JSON lines, or one array of objects.
    Json,
}

fn layout(path: &Path) -> Layout {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_ascii_lowercase();
    if name.ends_with(".jsonl.gz") || name.ends_with(".json.gz") {
        Layout::JsonLines { gzip: true }
    } else if name.ends_with(".jsonl") {
        Layout::JsonLines { gzip: false }
    } else if name.ends_with(".json") {
        Layout::Json
    } else {
        Layout::Text
    }
}

/// The text under `field` of one JSON record; `at` says where the record is.
fn record_text(path: &Path, at: &str, value: serde_json::Value, field: &str) -> Result<String> {
    let bad = |msg: String| Error::format(path, "JSON data", format!("{at}: {msg}"));
    let serde_json::Value::Object(mut map) = value else { return Err(bad("not a JSON object".into())) };
    match map.remove(field) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(other) => Err(bad(format!("field '{field}' is a {}, not a string", json_kind(&other)))),
        None => {
            let keys: Vec<&String> = map.keys().take(8).collect();
            Err(bad(format!("no field '{field}' (it has {keys:?}; choose one with --text-field)")))
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// The documents of a data file, read lazily (a JSON-lines file a line at a time), each
/// non-empty; a file with none is an error.
pub fn read_documents<'a>(path: &'a Path, field: &'a str) -> Result<Box<dyn Iterator<Item = Result<String>> + 'a>> {
    let open = || std::fs::File::open(path).map_err(|e| Error::io(path, e));
    let lines = |reader: Box<dyn BufRead + 'a>| -> Box<dyn Iterator<Item = Result<String>> + 'a> {
        Box::new(reader.lines().enumerate().filter_map(move |(i, line)| {
            let line = match line {
                Ok(l) => l,
                Err(e) => return Some(Err(Error::format(path, "JSON data", format!("line {}: {e}", i + 1)))),
            };
            if line.trim().is_empty() {
                return None;
            }
            let at = format!("line {}", i + 1);
            let doc = serde_json::from_str(&line)
                .map_err(|e| Error::format(path, "JSON data", format!("{at}: {e}")))
                .and_then(|v| record_text(path, &at, v, field));
            Some(doc)
        }))
    };
    let docs: Box<dyn Iterator<Item = Result<String>> + 'a> = match layout(path) {
        Layout::Text => Box::new(std::iter::once(read_text(path))),
        Layout::JsonLines { gzip: false } => lines(Box::new(BufReader::new(open()?))),
        Layout::JsonLines { gzip: true } => lines(Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(open()?)))),
        Layout::Json => {
            let mut text = String::new();
            open()?.read_to_string(&mut text).map_err(|e| Error::format(path, "JSON data", e.to_string()))?;
            if text.trim_start().starts_with('[') {
                let items: Vec<serde_json::Value> =
                    serde_json::from_str(&text).map_err(|e| Error::format(path, "JSON data", e.to_string()))?;
                Box::new(
                    items
                        .into_iter()
                        .enumerate()
                        .map(move |(i, v)| record_text(path, &format!("element {i}"), v, field)),
                )
            } else {
                let cursor: Box<dyn BufRead + 'a> = Box::new(std::io::Cursor::new(text.into_bytes()));
                lines(cursor)
            }
        }
    };
    let mut docs = docs.filter(|d| d.as_ref().map_or(true, |t| !t.trim().is_empty())).peekable();
    if docs.peek().is_none() {
        return Err(Error::invalid(format!("{}: no documents (no non-empty '{field}' text)", path.display())));
    }
    Ok(Box::new(docs))
}

/// Tokenizes a data file: its documents joined with a blank line, as one text.
pub fn tokenize_file(tokenizer: &Tokenizer, path: &Path, field: &str) -> Result<Vec<u32>> {
    let docs = read_documents(path, field)?.collect::<Result<Vec<_>>>()?;
    let ids = tokenizer.encode_document(&docs.join("\n\n"))?;
    if ids.is_empty() {
        return Err(Error::invalid(format!("{}: the text encodes to no tokens", path.display())));
    }
    Ok(ids)
}

/// The non-overlapping windows of `seq_len` tokens from the start of `tokens` (a tail
/// shorter than `seq_len` is dropped), at most `max` of them.
pub fn windows(tokens: &[u32], seq_len: usize, max: Option<usize>) -> Vec<&[u32]> {
    if seq_len == 0 {
        return Vec::new();
    }
    tokens.chunks_exact(seq_len).take(max.unwrap_or(usize::MAX)).collect()
}

/// Windows from several token streams in order (all of the first stream's, then the
/// second's, ...), at most `max` in total. Errors when there are none, naming the
/// stream lengths.
pub fn windows_of_streams(streams: &[Vec<u32>], seq_len: usize, max: Option<usize>) -> Result<Vec<&[u32]>> {
    if seq_len < 2 {
        return Err(Error::invalid(format!("seq-len must be at least 2, got {seq_len}")));
    }
    if max == Some(0) {
        return Err(Error::invalid("the number of windows must be at least 1"));
    }
    let mut out = Vec::new();
    for s in streams {
        let room = max.map(|m| m - out.len());
        out.extend(windows(s, seq_len, room));
        if max.is_some_and(|m| out.len() >= m) {
            break;
        }
    }
    if out.is_empty() {
        let lens: Vec<String> = streams.iter().map(|s| s.len().to_string()).collect();
        return Err(Error::invalid(format!(
            "seq-len {seq_len} is larger than the text: token counts [{}]",
            lens.join(", ")
        )));
    }
    Ok(out)
}

/// Calibration windows: the documents of the files, in order, joined with a blank line,
/// tokenized ([`Tokenizer::encode_document`]), and the first `samples` non-overlapping
/// windows of `seq_len` tokens. Documents are read only until there are enough tokens (a
/// C4 shard is not read whole). Errors when the text is too short for that many.
pub fn calibration_windows(
    tokenizer: &Tokenizer,
    files: &[std::path::PathBuf],
    samples: usize,
    seq_len: usize,
    field: &str,
) -> Result<Vec<Vec<u32>>> {
    if samples == 0 || seq_len < 2 {
        return Err(Error::invalid(format!(
            "calibration needs samples ≥ 1 and seq-len ≥ 2, got {samples} and {seq_len}"
        )));
    }
    if files.is_empty() {
        return Err(Error::invalid("no calibration text files"));
    }
    let needed = samples.checked_mul(seq_len).ok_or_else(|| Error::invalid("calibration size overflows"))?;
    let mut docs: Vec<String> = Vec::new();
    let mut counted = 0usize;
    // Files are opened as their turn comes.
    let (mut pending, mut current) = (files.iter(), None::<Box<dyn Iterator<Item = Result<String>> + '_>>);
    let mut next_doc = || -> Result<Option<String>> {
        loop {
            if let Some(doc) = current.as_mut().and_then(Iterator::next) {
                return doc.map(Some);
            }
            match pending.next() {
                Some(p) => current = Some(read_documents(p, field)?),
                None => return Ok(None),
            }
        }
    };
    let ids = loop {
        // Read on until the documents' own token counts leave a window to spare (tokens
        // at the end of the joined text can still change with what follows).
        let mut exhausted = false;
        while counted < needed + seq_len {
            match next_doc()? {
                Some(doc) => {
                    counted += tokenizer.encode(&doc)?.len();
                    docs.push(doc);
                }
                None => {
                    exhausted = true;
                    break;
                }
            }
        }
        let ids = tokenizer.encode_document(&docs.join("\n\n"))?;
        if ids.len() >= needed + seq_len || exhausted {
            break ids;
        }
        counted = ids.len();
    };
    let w = windows(&ids, seq_len, Some(samples));
    if w.len() < samples {
        return Err(Error::invalid(format!(
            "the calibration text has {} tokens: {} windows of {seq_len}, {samples} requested",
            ids.len(),
            w.len()
        )));
    }
    Ok(w.into_iter().map(<[u32]>::to_vec).collect())
}

/// The State of the Union addresses in `dir` (files `<year>_<name>_<party>.txt`) with
/// year < `before`, sorted by file name.
pub fn sotu_files(dir: &Path, before: u32) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.get(..4))
                .and_then(|y| y.parse::<u32>().ok())
                .is_some_and(|y| y < before)
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::invalid(format!("no State of the Union texts before {before} in {}", dir.display())));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_non_overlapping_and_capped() {
        let t: Vec<u32> = (0..10).collect();
        assert_eq!(windows(&t, 3, None), vec![&[0, 1, 2][..], &[3, 4, 5], &[6, 7, 8]]);
        assert_eq!(windows(&t, 3, Some(2)).len(), 2);
        let streams = vec![(0..5).collect::<Vec<u32>>(), (10..17).collect()];
        let w = windows_of_streams(&streams, 3, Some(2)).unwrap();
        assert_eq!(w, vec![&[0, 1, 2][..], &[10, 11, 12]]);
        let e = windows_of_streams(&streams, 8, None).unwrap_err().to_string();
        assert!(e.contains("larger than the text") && e.contains("[5, 7]"), "{e}");
        assert!(windows_of_streams(&streams, 1, None).is_err());
    }

    /// JSON lines (plain and gzip), JSON arrays, the field chosen, and errors that name the
    /// file, the line and the field.
    #[test]
    fn json_data_files_are_read_by_field() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("sparsetune-data-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let read = |p: &Path, field: &str| read_documents(p, field).and_then(|d| d.collect::<Result<Vec<_>>>());
        let jsonl = dir.join("c4.jsonl");
        std::fs::write(
            &jsonl,
            "{\"text\": \"first doc\", \"url\": \"a\"}\n\n{\"text\": \"second\", \"body\": \"b\"}\n",
        )
        .unwrap();
        assert_eq!(read(&jsonl, "text").unwrap(), ["first doc", "second"]);
        let gz = dir.join("c4-train.00000-of-01024.json.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&std::fs::read(&jsonl).unwrap()).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(read(&gz, "text").unwrap(), ["first doc", "second"]);
        let array = dir.join("alpaca.json");
        std::fs::write(&array, r#"[{"output": "x y"}, {"output": "z"}]"#).unwrap();
        assert_eq!(read(&array, "output").unwrap(), ["x y", "z"]);
        let e = read(&jsonl, "body").unwrap_err().to_string();
        assert!(e.contains("c4.jsonl") && e.contains("line 1") && e.contains("'body'"), "{e}");
        std::fs::write(&jsonl, "{\"text\": 3}\n").unwrap();
        let e = read(&jsonl, "text").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("number"), "{e}");
        std::fs::write(&jsonl, "{\"text\": \"ok\"}\n{not json\n").unwrap();
        let e = read(&jsonl, "text").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        std::fs::write(&jsonl, "{\"text\": \"  \"}\n").unwrap();
        assert!(read(&jsonl, "text").unwrap_err().to_string().contains("no documents"));
        // Anything else is one text document.
        let txt = dir.join("notes.md");
        std::fs::write(&txt, "{\"text\": \"not parsed\"}").unwrap();
        assert_eq!(read(&txt, "text").unwrap(), ["{\"text\": \"not parsed\"}"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Reading only the documents it needs gives the windows of the whole corpus joined
    /// and tokenized at once (the State of the Union addresses, the default calibration).
    #[test]
    fn calibration_reads_what_it_needs_and_matches_the_whole_corpus() {
        use crate::io::asset_path;
        let Some(model) = asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
        let Some(first) = asset_path("sotu/1790_george_washington_n.txt") else { return };
        let tok = crate::model::llama::load_tokenizer(&model).unwrap();
        let files = sotu_files(first.parent().unwrap(), 2000).unwrap();
        let texts: Vec<String> = files.iter().map(|p| read_text(p).unwrap()).collect();
        let all = tok.encode(&texts.join("\n\n")).unwrap();
        for (samples, seq_len) in [(32, 512), (3, 100), (200, 512)] {
            let got = calibration_windows(&tok, &files, samples, seq_len, DEFAULT_TEXT_FIELD).unwrap();
            let want: Vec<Vec<u32>> = windows(&all, seq_len, Some(samples)).into_iter().map(<[u32]>::to_vec).collect();
            assert_eq!(got, want, "{samples} x {seq_len}");
        }
    }

    #[test]
    fn empty_text_is_an_error() {
        let dir = std::env::temp_dir().join(format!("sparsetune-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("empty.txt");
        std::fs::write(&p, "  \n").unwrap();
        assert!(read_text(&p).unwrap_err().to_string().contains("empty"));
        assert!(read_text(&dir.join("missing.txt")).is_err());
    }
}
