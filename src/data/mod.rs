//! Text corpora → token windows. A file is read whole (UTF-8) and tokenized whole;
//! windows are non-overlapping runs of `seq_len` tokens from its start.

use std::path::Path;

use crate::io::Tokenizer;
use crate::{Error, Result};

/// Reads a UTF-8 text file; an empty (or whitespace-only) file is an error.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::format(path, "text", format!("not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(Error::invalid(format!("{}: the text is empty", path.display())));
    }
    Ok(text)
}

/// Tokenizes a text file whole.
pub fn tokenize_file(tokenizer: &Tokenizer, path: &Path) -> Result<Vec<u32>> {
    let ids = tokenizer.encode(&read_text(path)?)?;
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

/// Calibration windows: the files' texts in the given order joined with a blank line,
/// tokenized, and the first `samples` non-overlapping windows of `seq_len` tokens. Errors
/// when the text is too short for that many.
pub fn calibration_windows(
    tokenizer: &Tokenizer,
    files: &[std::path::PathBuf],
    samples: usize,
    seq_len: usize,
) -> Result<Vec<Vec<u32>>> {
    if samples == 0 || seq_len < 2 {
        return Err(Error::invalid(format!(
            "calibration needs samples ≥ 1 and seq-len ≥ 2, got {samples} and {seq_len}"
        )));
    }
    if files.is_empty() {
        return Err(Error::invalid("no calibration text files"));
    }
    let texts = files.iter().map(|p| read_text(p)).collect::<Result<Vec<_>>>()?;
    let ids = tokenizer.encode(&texts.join("\n\n"))?;
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
