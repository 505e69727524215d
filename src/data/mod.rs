//! Text corpora → token streams and windows, read lazily and within bounds.
//!
//! A data file holds documents: a text file (any name but the ones below) is one document,
//! UTF-8, and so is a gzip-compressed one (`.txt.gz`, any other `.gz`); `.jsonl`,
//! `.jsonl.gz` and `.json.gz` hold one JSON object per line (the form C4
//! shards and most fine-tuning sets come in) and `.json` either that or one array of
//! objects, each document being the string under `field` (`--text-field`, default
//! `text`). Documents are joined with a blank line and tokenized as one text
//! ([`Tokenizer::encode_document`]: BOS/EOS once), in exact pieces ([`PieceEncoder`]);
//! windows are non-overlapping runs of `seq_len` tokens from its start.
//!
//! Everything is read as a stream and stops as soon as the caller has the tokens it asked
//! for (calibration needs `samples × seq_len`, evaluation `windows × seq_len`), so a large
//! file costs only what is used. What a file may make the reader hold is bounded
//! ([`DataLimits`]): the bytes read from one file after decompression, and the length of
//! one JSON record (a line, an array element), both checked as the bytes arrive — a
//! decompression bomb or a 10 GB line is an error naming the file, the line and the limit,
//! never an allocation. Errors name the file, and for JSON the line (or element) and the
//! field.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::io::{PieceEncoder, Tokenizer};
use crate::{Error, Result};

/// The default JSON field holding a document's text.
pub const DEFAULT_TEXT_FIELD: &str = "text";

/// What reading data files may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataLimits {
    /// Bytes read from one file at most, after decompression (`--max-data-bytes`).
    pub max_data_bytes: u64,
    /// Longest JSON record (a line of a JSON-lines file, an element of an array), and the
    /// most text one tokenizer call takes after the normalizer's growth when a text cannot
    /// be cut into pieces (`--max-document-bytes`).
    pub max_document_bytes: usize,
}

impl Default for DataLimits {
    /// 1 GiB per file (a C4 shard inflates to about 0.8 GB), 16 MiB per record.
    fn default() -> Self {
        DataLimits { max_data_bytes: 1 << 30, max_document_bytes: 16 << 20 }
    }
}

/// Whether a reader wants more after a piece of text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    More,
    /// Stop reading: enough has been read.
    Enough,
}

/// What [`read_documents`] hands on, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A document begins.
    Document,
    /// Text of the current document (a document may come in several pieces).
    Text(&'a str),
}

/// How a file's name says it is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Text {
        gzip: bool,
    },
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
        Layout::Text { gzip: name.ends_with(".gz") }
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

/// A limit a [`Bounded`] reader ran into (carried inside an `io::Error`).
#[derive(Debug)]
struct OverLimit(String);

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OverLimit {}

/// A reader that counts the bytes it hands out and refuses to go past `max` in all, or
/// past `record_end` (set by the JSON array reader before each element).
struct Bounded<R> {
    inner: R,
    read: Rc<Cell<u64>>,
    max: u64,
    record_end: Rc<Cell<u64>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (at, record_end) = (self.read.get(), self.record_end.get());
        let stop = self.max.min(record_end);
        if at >= stop {
            // Only an error if there is something more to read.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            let msg = if record_end <= self.max {
                "one JSON record is longer than the limit of --max-document-bytes".to_string()
            } else {
                format!("more than {} bytes (--max-data-bytes) after decompression", self.max)
            };
            return Err(std::io::Error::other(OverLimit(msg)));
        }
        let room = usize::try_from(stop - at).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..room])?;
        self.read.set(at + n as u64);
        Ok(n)
    }
}

/// The error for an I/O failure while reading `path` (`at`: where), naming a limit when
/// that was the cause.
fn read_error(path: &Path, at: &str, e: std::io::Error) -> Error {
    let what = match e.get_ref().and_then(|inner| inner.downcast_ref::<OverLimit>()) {
        Some(limit) => limit.to_string(),
        None => e.to_string(),
    };
    Error::format(path, "data", format!("{at}: {what}"))
}

/// Reads a text file as UTF-8 in chunks, handing each on.
fn read_text_pieces(
    path: &Path,
    reader: &mut impl Read,
    sink: &mut dyn FnMut(Piece<'_>) -> Result<Flow>,
) -> Result<Flow> {
    let mut chunk = vec![0u8; 64 << 10];
    // Bytes of a character split by the chunk's end, carried to the next chunk.
    let (mut held, mut offset, mut any_text) = (0usize, 0u64, false);
    if sink(Piece::Document)? == Flow::Enough {
        return Ok(Flow::Enough);
    }
    loop {
        let n = reader.read(&mut chunk[held..]).map_err(|e| read_error(path, &format!("byte {offset}"), e))?;
        let end = held + n;
        if n == 0 {
            if held > 0 {
                return Err(Error::format(path, "text", "not UTF-8: the file ends inside a character"));
            }
            break;
        }
        let valid = match std::str::from_utf8(&chunk[..end]) {
            Ok(_) => end,
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(e) => {
                let at = offset + e.valid_up_to() as u64;
                return Err(Error::format(path, "text", format!("not UTF-8 at byte {at}")));
            }
        };
        let text = std::str::from_utf8(&chunk[..valid]).map_err(|e| Error::format(path, "text", e.to_string()))?;
        any_text |= !text.trim().is_empty();
        let flow = sink(Piece::Text(text)).map_err(|e| within(path, &format!("near byte {offset}"), e))?;
        if flow == Flow::Enough {
            return Ok(Flow::Enough);
        }
        offset += valid as u64;
        chunk.copy_within(valid..end, 0);
        held = end - valid;
    }
    if !any_text {
        return Err(Error::invalid(format!("{}: the text is empty", path.display())));
    }
    Ok(Flow::More)
}

/// `e` with the file and position it happened at, unless it already names the file.
fn within(path: &Path, at: &str, e: Error) -> Error {
    let shown = path.display().to_string();
    if e.to_string().contains(&shown) {
        e
    } else {
        Error::format(path, "data", format!("{at}: {e}"))
    }
}

/// Hands on one JSON record's document (skipping an empty one); `docs` counts them.
fn take_record(
    path: &Path,
    at: &str,
    value: serde_json::Value,
    field: &str,
    docs: &mut usize,
    sink: &mut dyn FnMut(Piece<'_>) -> Result<Flow>,
) -> Result<Flow> {
    let text = record_text(path, at, value, field)?;
    if text.trim().is_empty() {
        return Ok(Flow::More);
    }
    *docs += 1;
    if sink(Piece::Document)? == Flow::Enough {
        return Ok(Flow::Enough);
    }
    sink(Piece::Text(&text)).map_err(|e| within(path, at, e))
}

/// One JSON object per line, the first being line `first_line`; blank lines are
/// skipped; each line is at most `max_record` bytes.
fn read_json_lines(
    path: &Path,
    reader: &mut impl BufRead,
    first_line: usize,
    field: &str,
    max_record: usize,
    docs: &mut usize,
    sink: &mut dyn FnMut(Piece<'_>) -> Result<Flow>,
) -> Result<Flow> {
    let mut line = Vec::new();
    for number in first_line.. {
        line.clear();
        let at = format!("line {number}");
        let n = reader
            .by_ref()
            .take(max_record as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| read_error(path, &at, e))?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > max_record {
            return Err(Error::format(
                path,
                "JSON data",
                format!("{at}: longer than {max_record} bytes (--max-document-bytes)"),
            ));
        }
        let text = std::str::from_utf8(&line).map_err(|e| Error::format(path, "JSON data", format!("{at}: {e}")))?;
        if text.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(text).map_err(|e| Error::format(path, "JSON data", format!("{at}: {e}")))?;
        if take_record(path, &at, value, field, docs, sink)? == Flow::Enough {
            return Ok(Flow::Enough);
        }
    }
    Ok(Flow::More)
}

/// One JSON array of objects, read an element at a time; each element is at most
/// `max_record` bytes (the reader refuses to go further into it).
fn read_json_array<R: Read>(
    path: &Path,
    reader: Bounded<R>,
    field: &str,
    max_record: usize,
    docs: &mut usize,
    sink: &mut dyn FnMut(Piece<'_>) -> Result<Flow>,
) -> Result<Flow> {
    use serde::de::{DeserializeSeed, SeqAccess, Visitor};

    /// Visits the array, handing each element on; stops at the sink's `Enough` or error
    /// (kept in `outcome`, the deserializer told only that it stopped).
    struct Elements<'a, 's> {
        path: &'a Path,
        field: &'a str,
        docs: &'a mut usize,
        sink: &'a mut (dyn FnMut(Piece<'_>) -> Result<Flow> + 's),
        read: Rc<Cell<u64>>,
        record_end: Rc<Cell<u64>>,
        max_record: u64,
        outcome: Option<Result<Flow>>,
    }
    impl<'de> Visitor<'de> for &mut Elements<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
            for i in 0.. {
                self.record_end.set(self.read.get().saturating_add(self.max_record));
                let Some(value) = seq.next_element::<serde_json::Value>()? else { break };
                self.record_end.set(u64::MAX);
                let at = format!("element {i}");
                match take_record(self.path, &at, value, self.field, self.docs, self.sink) {
                    Ok(Flow::More) => {}
                    stop => {
                        self.outcome = Some(stop);
                        return Err(serde::de::Error::custom("stopped"));
                    }
                }
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for &mut Elements<'_, '_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    let read = reader.read.clone();
    let mut elements = Elements {
        path,
        field,
        docs,
        sink,
        read: read.clone(),
        record_end: reader.record_end.clone(),
        max_record: max_record as u64,
        outcome: None,
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let parsed = (&mut elements).deserialize(&mut de).and_then(|()| de.end());
    if let Some(outcome) = elements.outcome {
        return outcome;
    }
    parsed.map_err(|e| {
        let at = format!("byte {}", read.get());
        match e.io_error_kind() {
            Some(_) => read_error(path, &at, std::io::Error::from(e)),
            None => Error::format(path, "JSON data", format!("{at}: {e}")),
        }
    })?;
    Ok(Flow::More)
}

/// Reads the documents of a data file (see the module doc) in order, handing each on as
/// [`Piece::Document`] followed by its text in one or more [`Piece::Text`]s, until the
/// file ends or `sink` says [`Flow::Enough`] (returned then). Empty documents are skipped;
/// a file with none is an error. Reading stays within `limits`.
pub fn read_documents(
    path: &Path,
    field: &str,
    limits: &DataLimits,
    sink: &mut dyn FnMut(Piece<'_>) -> Result<Flow>,
) -> Result<Flow> {
    let file = crate::io::open_regular(path)?;
    let bounded = |inner: Box<dyn Read>| Bounded {
        inner,
        read: Rc::new(Cell::new(0)),
        max: limits.max_data_bytes,
        record_end: Rc::new(Cell::new(u64::MAX)),
    };
    let mut docs = 0usize;
    let max_record = limits.max_document_bytes;
    let raw = |gzip: bool| -> Box<dyn Read> {
        if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
        } else {
            Box::new(file)
        }
    };
    let flow = match layout(path) {
        Layout::Text { gzip } => return read_text_pieces(path, &mut bounded(raw(gzip)), sink),
        Layout::JsonLines { gzip } => {
            let mut reader = BufReader::new(bounded(raw(gzip)));
            read_json_lines(path, &mut reader, 1, field, max_record, &mut docs, sink)?
        }
        Layout::Json => {
            let mut reader = BufReader::new(bounded(raw(false)));
            // An array, or JSON lines: the first byte that is not white space says which.
            let mut first_line = 1;
            let first = loop {
                let buf = reader.fill_buf().map_err(|e| read_error(path, "byte 0", e))?;
                let blank = buf.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(buf.len());
                let first = buf.get(blank).copied();
                first_line += buf[..blank].iter().filter(|&&b| b == b'\n').count();
                let empty = buf.is_empty();
                reader.consume(blank);
                if first.is_some() || empty {
                    break first;
                }
            };
            if first == Some(b'[') {
                let inner = Bounded {
                    inner: Box::new(reader) as Box<dyn Read>,
                    read: Rc::new(Cell::new(0)),
                    max: u64::MAX,
                    record_end: Rc::new(Cell::new(u64::MAX)),
                };
                read_json_array(path, inner, field, max_record, &mut docs, sink)?
            } else {
                read_json_lines(path, &mut reader, first_line, field, max_record, &mut docs, sink)?
            }
        }
    };
    if flow == Flow::More && docs == 0 {
        return Err(Error::invalid(format!("{}: no documents (no non-empty '{field}' text)", path.display())));
    }
    Ok(flow)
}

/// Tokens of data files read in order as one text (documents joined with a blank line,
/// BOS/EOS once, as [`Tokenizer::encode_document`] puts them). With `want`, reading stops
/// as soon as that many are had (then exactly `want` are returned; a text that ends
/// sooner gives all of its tokens). Returns the tokens and whether every file was read to
/// its end.
pub fn tokenize_files(
    tokenizer: &Tokenizer,
    files: &[PathBuf],
    field: &str,
    limits: &DataLimits,
    want: Option<usize>,
) -> Result<(Vec<u32>, bool)> {
    if files.is_empty() {
        return Err(Error::invalid("no data files"));
    }
    let mut ids: Vec<u32> = tokenizer.document_bos().into_iter().collect();
    let mut enc: PieceEncoder<'_> = tokenizer.piece_encoder(limits.max_document_bytes);
    let mut documents = 0usize;
    let enough = |ids: &Vec<u32>| want.is_some_and(|w| ids.len() >= w);
    for path in files {
        if enough(&ids) {
            break;
        }
        read_documents(path, field, limits, &mut |piece| {
            match piece {
                Piece::Document => {
                    if documents > 0 {
                        enc.push("\n\n")?;
                    }
                    documents += 1;
                }
                Piece::Text(t) => enc.push(t)?,
            }
            ids.append(enc.ids());
            Ok(if enough(&ids) { Flow::Enough } else { Flow::More })
        })?;
    }
    let complete = !enough(&ids);
    if complete {
        ids.extend(enc.finish()?);
        ids.extend(tokenizer.document_eos());
    } else if let Some(w) = want {
        ids.truncate(w);
    }
    if ids.is_empty() {
        return Err(Error::invalid(format!("{}: the text encodes to no tokens", files[0].display())));
    }
    Ok((ids, complete))
}

/// Tokens of one data file read whole ([`tokenize_files`] with the default limits).
pub fn tokenize_file(tokenizer: &Tokenizer, path: &Path, field: &str) -> Result<Vec<u32>> {
    Ok(tokenize_files(tokenizer, &[path.to_path_buf()], field, &DataLimits::default(), None)?.0)
}

/// The non-overlapping windows of `seq_len` tokens from the start of `tokens` (a tail
/// shorter than `seq_len` is dropped), at most `max` of them.
pub fn windows(tokens: &[u32], seq_len: usize, max: Option<usize>) -> Vec<&[u32]> {
    if seq_len == 0 {
        return Vec::new();
    }
    tokens.chunks_exact(seq_len).take(max.unwrap_or(usize::MAX)).collect()
}

/// Checks a window request: `seq_len` ≥ 2 and, when given, at least one window.
fn check_windows(seq_len: usize, max: Option<usize>) -> Result<()> {
    if seq_len < 2 {
        return Err(Error::invalid(format!("seq-len must be at least 2, got {seq_len}")));
    }
    if max == Some(0) {
        return Err(Error::invalid("the number of windows must be at least 1"));
    }
    Ok(())
}

/// Windows from several token streams in order (all of the first stream's, then the
/// second's, ...), at most `max` in total. Errors when there are none, naming the
/// stream lengths.
pub fn windows_of_streams(streams: &[Vec<u32>], seq_len: usize, max: Option<usize>) -> Result<Vec<&[u32]>> {
    check_windows(seq_len, max)?;
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

/// Token streams of data files, one per file, for windows.
#[derive(Clone, Debug, Default)]
pub struct Streams {
    /// Each file's tokens (as far as it was read).
    pub tokens: Vec<Vec<u32>>,
    /// Whether each file was read to its end.
    pub read_whole: Vec<bool>,
}

/// The token streams of texts for windows of `seq_len` tokens, one per file (each
/// tokenized as its own text), read only as far as `max_windows` windows need: files
/// after the last one needed are not opened. Without `max_windows`, every file whole.
pub fn window_streams(
    tokenizer: &Tokenizer,
    files: &[PathBuf],
    field: &str,
    limits: &DataLimits,
    seq_len: usize,
    max_windows: Option<usize>,
) -> Result<Streams> {
    check_windows(seq_len, max_windows)?;
    let mut out = Streams::default();
    let mut have = 0usize;
    for path in files {
        let want = match max_windows {
            Some(m) if have >= m => break,
            Some(m) => Some((m - have).checked_mul(seq_len).ok_or_else(|| Error::invalid("window count overflows"))?),
            None => None,
        };
        let (ids, complete) = tokenize_files(tokenizer, std::slice::from_ref(path), field, limits, want)?;
        have += ids.len() / seq_len;
        out.tokens.push(ids);
        out.read_whole.push(complete);
    }
    Ok(out)
}

/// Calibration windows: the documents of the files, in order, joined with a blank line,
/// tokenized ([`Tokenizer::encode_document`]), and the first `samples` non-overlapping
/// windows of `seq_len` tokens. Reading stops once they are had (a C4 shard is not read
/// whole). Errors when the text is too short for that many.
pub fn calibration_windows(
    tokenizer: &Tokenizer,
    files: &[PathBuf],
    samples: usize,
    seq_len: usize,
    field: &str,
    limits: &DataLimits,
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
    let (ids, _) = tokenize_files(tokenizer, files, field, limits, Some(needed))?;
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
pub fn sotu_files(dir: &Path, before: u32) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
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
    use crate::io::{asset_path, test_dir};
    use std::io::Write;

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

    /// Every document of a file with its pieces joined, as the reader hands them on.
    fn read(p: &Path, field: &str, limits: &DataLimits) -> Result<Vec<String>> {
        let mut docs: Vec<String> = Vec::new();
        read_documents(p, field, limits, &mut |piece| {
            match piece {
                Piece::Document => docs.push(String::new()),
                Piece::Text(t) => docs.last_mut().expect("text after a document").push_str(t),
            }
            Ok(Flow::More)
        })?;
        Ok(docs)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// A compressed text file is one document of its inflated text, like the plain file;
    /// a `.gz` that is not gzip is an error naming the file, not text.
    #[test]
    fn gzip_text_files_are_inflated() {
        let dir = test_dir("data-txt-gz");
        let lim = DataLimits::default();
        let text = "Call me Ishmael.\n\nSome years ago — never mind how long precisely — 🐋\n".repeat(3000);
        let (plain, packed) = (dir.join("a.txt"), dir.join("a.txt.gz"));
        std::fs::write(&plain, &text).unwrap();
        std::fs::write(&packed, gzip(text.as_bytes())).unwrap();
        assert_eq!(read(&packed, "text", &lim).unwrap(), vec![text.clone()]);
        assert_eq!(read(&packed, "text", &lim).unwrap(), read(&plain, "text", &lim).unwrap());
        let fake = dir.join("b.txt.gz");
        std::fs::write(&fake, &text).unwrap();
        let e = read(&fake, "text", &lim).unwrap_err().to_string();
        assert!(e.contains("b.txt.gz"), "{e}");
    }

    /// JSON lines (plain and gzip), JSON arrays, the field chosen, and errors that name the
    /// file, the line and the field.
    #[test]
    fn json_data_files_are_read_by_field() {
        let dir = test_dir("data-json");
        let lim = DataLimits::default();
        let jsonl = dir.join("c4.jsonl");
        std::fs::write(
            &jsonl,
            "{\"text\": \"first doc\", \"url\": \"a\"}\n\n{\"text\": \"second\", \"body\": \"b\"}\n",
        )
        .unwrap();
        assert_eq!(read(&jsonl, "text", &lim).unwrap(), ["first doc", "second"]);
        let gz = dir.join("c4-train.00000-of-01024.json.gz");
        std::fs::write(&gz, gzip(&std::fs::read(&jsonl).unwrap())).unwrap();
        assert_eq!(read(&gz, "text", &lim).unwrap(), ["first doc", "second"]);
        let array = dir.join("alpaca.json");
        std::fs::write(&array, "\n  [{\"output\": \"x y\"}, {\"output\": \"z\"}, {\"output\": \" \"}]").unwrap();
        assert_eq!(read(&array, "output", &lim).unwrap(), ["x y", "z"]);
        std::fs::write(&array, "[{\"output\": \"x y\"}, {\"other\": 1}]").unwrap();
        let e = read(&array, "output", &lim).unwrap_err().to_string();
        assert!(e.contains("alpaca.json") && e.contains("element 1") && e.contains("'output'"), "{e}");
        std::fs::write(&array, "[{\"output\": \"x\"}] trailing").unwrap();
        assert!(read(&array, "output", &lim).is_err());
        let lines_json = dir.join("lines.json");
        std::fs::write(&lines_json, "\n\n{\"text\": \"a\"}\n{\"text\": 5}\n").unwrap();
        let e = read(&lines_json, "text", &lim).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("number"), "{e}");
        let e = read(&jsonl, "body", &lim).unwrap_err().to_string();
        assert!(e.contains("c4.jsonl") && e.contains("line 1") && e.contains("'body'"), "{e}");
        std::fs::write(&jsonl, "{\"text\": 3}\n").unwrap();
        let e = read(&jsonl, "text", &lim).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("number"), "{e}");
        std::fs::write(&jsonl, "{\"text\": \"ok\"}\n{not json\n").unwrap();
        let e = read(&jsonl, "text", &lim).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        std::fs::write(&jsonl, "{\"text\": \"  \"}\n").unwrap();
        assert!(read(&jsonl, "text", &lim).unwrap_err().to_string().contains("no documents"));
        std::fs::write(&gz, b"not gzip at all").unwrap();
        let e = read(&gz, "text", &lim).unwrap_err().to_string();
        assert!(e.contains("json.gz") && e.contains("line 1"), "{e}");
        // Anything else is one text document, read in pieces.
        let txt = dir.join("notes.md");
        std::fs::write(&txt, "{\"text\": \"not parsed\"}").unwrap();
        assert_eq!(read(&txt, "text", &lim).unwrap(), ["{\"text\": \"not parsed\"}"]);
        let long: String = (0..40_000).map(|i| ["ü", "鯨", "a ", "🦀"][i % 4]).collect();
        std::fs::write(&txt, &long).unwrap();
        assert_eq!(read(&txt, "text", &lim).unwrap(), [long]);
        std::fs::write(&txt, b"ok \xff\xfe").unwrap();
        assert!(read(&txt, "text", &lim).unwrap_err().to_string().contains("not UTF-8 at byte 3"));
        std::fs::write(&txt, "  \n").unwrap();
        assert!(read(&txt, "text", &lim).unwrap_err().to_string().contains("empty"));
        assert!(read(&dir.join("missing.txt"), "text", &lim).is_err());
        let e = read(&dir, "text", &lim).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    /// The limits stop a decompression bomb, an over-long line or array element, and a
    /// file larger than allowed, naming the file, where, and the flag that raises it.
    #[test]
    fn limits_are_checked_as_the_bytes_arrive() {
        let dir = test_dir("data-limits");
        let lim = DataLimits { max_data_bytes: 1 << 20, max_document_bytes: 64 << 10 };
        // One line that inflates to 4 MiB (the old reader took it whole).
        let bomb = dir.join("bomb.jsonl.gz");
        let line = format!("{{\"text\": \"{}\"}}\n", "a".repeat(4 << 20));
        std::fs::write(&bomb, gzip(line.as_bytes())).unwrap();
        let e = read(&bomb, "text", &lim).unwrap_err().to_string();
        assert!(e.contains("bomb.jsonl.gz") && e.contains("line 1") && e.contains("--max-document-bytes"), "{e}");
        // Many short lines: the file limit.
        let many = dir.join("many.jsonl.gz");
        let lines = "{\"text\": \"a short document\"}\n".repeat(100_000);
        std::fs::write(&many, gzip(lines.as_bytes())).unwrap();
        let e = read(&many, "text", &lim).unwrap_err().to_string();
        assert!(e.contains("many.jsonl.gz") && e.contains("--max-data-bytes") && e.contains("1048576"), "{e}");
        let raised = DataLimits { max_data_bytes: 8 << 20, ..lim };
        assert_eq!(read(&many, "text", &raised).unwrap().len(), 100_000);
        // A long array element.
        let array = dir.join("long.json");
        std::fs::write(&array, format!("[{{\"text\": \"x\"}}, {{\"text\": \"{}\"}}]", "b".repeat(100_000))).unwrap();
        let e = read(&array, "text", &lim).unwrap_err().to_string();
        assert!(e.contains("long.json") && e.contains("--max-document-bytes"), "{e}");
        // A text file larger than the file limit.
        let txt = dir.join("big.txt");
        std::fs::write(&txt, "word ".repeat(300_000)).unwrap();
        let e = read(&txt, "text", &lim).unwrap_err().to_string();
        assert!(e.contains("big.txt") && e.contains("--max-data-bytes"), "{e}");
    }

    /// Reading only what it needs gives the windows of the whole corpus joined and
    /// tokenized at once (the State of the Union addresses, the default calibration), and
    /// evaluation streams stop at the windows asked for.
    #[test]
    fn calibration_and_evaluation_read_what_they_need() {
        let Some(model) = asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
        let Some(first) = asset_path("sotu/1790_george_washington_n.txt") else { return };
        let tok = crate::model::llama::load_tokenizer(&model).unwrap();
        let files = sotu_files(first.parent().unwrap(), 2000).unwrap();
        let texts: Vec<String> = files.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
        let all = tok.encode_document(&texts.join("\n\n")).unwrap();
        let lim = DataLimits::default();
        for (samples, seq_len) in [(32, 512), (3, 100), (200, 512)] {
            let got = calibration_windows(&tok, &files, samples, seq_len, DEFAULT_TEXT_FIELD, &lim).unwrap();
            let want: Vec<Vec<u32>> = windows(&all, seq_len, Some(samples)).into_iter().map(<[u32]>::to_vec).collect();
            assert_eq!(got, want, "{samples} x {seq_len}");
        }
        // Evaluation: a short text is read whole; a long one only as far as the windows
        // need (the ids are its first ones); a file after the last one needed is never
        // opened.
        let Some(moby) = asset_path("moby-dick/data.txt") else { return };
        let first_len = tok.encode_document(&texts[0]).unwrap().len();
        let missing = first.parent().unwrap().join("no-such-file.txt");
        let read = |files: &[PathBuf], n| window_streams(&tok, files, "text", &lim, 100, n);
        let s = read(&[files[0].clone(), moby.clone(), missing.clone()], Some(first_len / 100 + 2)).unwrap();
        assert_eq!(s.read_whole, [true, false]);
        assert_eq!((s.tokens[0].len(), s.tokens[1].len()), (first_len, 200));
        let whole = tok.encode_document(&std::fs::read_to_string(&moby).unwrap()).unwrap();
        assert_eq!(s.tokens[1], whole[..200]);
        assert!(read(&[files[0].clone(), missing], None).is_err());
    }
}
