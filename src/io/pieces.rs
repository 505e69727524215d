//! Exact tokenization of a long text in bounded pieces: [`PieceEncoder`].
//!
//! The `tokenizers` crate holds about a hundred bytes per byte of its input while it
//! encodes (alignments per byte, pre-token splits, BPE symbols), so a 20 MB document would
//! take gigabytes. A text is therefore tokenized a piece at a time (≤ `span` bytes
//! committed per call), and every cut is checked so that the ids are exactly those of the
//! whole text tokenized at once:
//!
//! ```text
//! text     …───────────────┬────────────────────────┬─────────────┬──────…
//!                         c0 (committed)           cand          c0+span+M
//! window A        [c0−K ─────────────────────────────────────────────]   encoded once
//! window B                             [cand−K ────────── cand+M]         encoded once
//! ```
//! Window A's tokens that start in `[c0, cand)` are emitted when a fresh window B, started
//! `K` bytes before the candidate cut `cand`, (1) has a token starting exactly at `cand`
//! and (2) gives the same tokens (ids and offsets) as A over `[cand, cand + M/2)`. The next
//! window A then starts where B did, so each token is emitted once, computed with at least
//! `K` bytes of left and `M/2` of right context. Every window is checked to start a token
//! at its committed position. The first window starts at the true start of the text, so
//! what the tokenizer does there (SentencePiece's prepended `▁`, a prefix space) happens
//! once, as for the whole text.
//!
//! The assumption, stated: a token depends on at most `min(K, M/2)` = 1 KiB of text on
//! either side (pre-tokenizer regexes look a character ahead; BPE works inside a
//! pre-token). A tokenizer for which no checked cut is found (a pre-token longer than the
//! window, a normalizer that acts on the whole text) is given larger pieces, up to
//! `max_piece_bytes` in one call, and beyond that refused by name — never cut unchecked.

use crate::{Error, Result};

/// Bytes committed per tokenizer call (the piece size), when cuts check out.
pub const PIECE_BYTES: usize = 64 << 10;
/// Left context `K` of each window.
const CONTEXT: usize = 2 << 10;
/// Right margin `M` of each window; tokens are compared over its first half.
const MARGIN: usize = 2 << 10;
/// Candidate cuts tried per window before the piece is enlarged.
const CANDIDATES: usize = 3;

/// The largest `i ≤ at` that is a char boundary of `s`.
fn floor_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One token of a window: id and absolute byte range in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tok {
    id: u32,
    start: usize,
    end: usize,
}

/// Index of the first token starting at or after `at`, if a token starts exactly there
/// and the one before ends by then (a multi-byte character split into byte tokens gives
/// tokens with equal offsets: no boundary inside it).
fn boundary_at(toks: &[Tok], at: usize) -> Option<usize> {
    let i = toks.partition_point(|t| t.start < at);
    let clean = i == 0 || toks[i - 1].end <= at;
    (i < toks.len() && toks[i].start == at && clean).then_some(i)
}

/// Tokenizes a stream of text in bounded pieces, exactly as the whole text at once (see
/// the module doc). Feed it with [`PieceEncoder::push`]; ids become available in
/// [`PieceEncoder::ids`] as their cuts are checked (a caller that needs only a prefix can
/// stop there: those ids are final); [`PieceEncoder::finish`] encodes the rest. No special
/// tokens are added.
pub struct PieceEncoder<'t> {
    /// Encodes without a post-processor (which may only trim offsets when no special
    /// tokens are added).
    tok: &'t tokenizers::Tokenizer,
    /// The most input bytes one call may take.
    max_piece_bytes: usize,
    /// Text not yet tokenized from `committed` on, with up to `CONTEXT` bytes before it.
    buf: String,
    committed: usize,
    /// Bytes dropped from the front of `buf` so far.
    dropped: u64,
    /// Current piece size: `sizes.piece`, doubled while no cut checks out.
    span: usize,
    sizes: Sizes,
    ids: Vec<u32>,
}

/// Piece size, left context `K` and right margin `M` (tests use small ones to cut often).
#[derive(Clone, Copy, Debug)]
struct Sizes {
    piece: usize,
    context: usize,
    margin: usize,
}

const SIZES: Sizes = Sizes { piece: PIECE_BYTES, context: CONTEXT, margin: MARGIN };

impl<'t> PieceEncoder<'t> {
    /// An encoder over `tok` (which must have no post-processor) taking at most
    /// `max_piece_bytes` of input in one call.
    pub(crate) fn new(tok: &'t tokenizers::Tokenizer, max_piece_bytes: usize) -> Self {
        Self::with_sizes(tok, max_piece_bytes, SIZES)
    }

    fn with_sizes(tok: &'t tokenizers::Tokenizer, max_piece_bytes: usize, sizes: Sizes) -> Self {
        PieceEncoder {
            tok,
            max_piece_bytes: max_piece_bytes.max(sizes.piece + sizes.context + sizes.margin),
            buf: String::new(),
            committed: 0,
            dropped: 0,
            span: sizes.piece,
            sizes,
            ids: Vec::new(),
        }
    }

    /// The ids emitted so far (final: the whole text's first ids). The caller may take them
    /// (`std::mem::take`) as they come.
    pub fn ids(&mut self) -> &mut Vec<u32> {
        &mut self.ids
    }

    /// Appends text, tokenizing every piece whose cut checks out.
    pub fn push(&mut self, mut text: &str) -> Result<()> {
        while !text.is_empty() {
            // Never hold more than one window's text beyond what is needed.
            let room = (self.committed + self.span + self.sizes.margin).saturating_sub(self.buf.len()).max(4);
            let take = floor_boundary(text, room);
            self.buf.push_str(&text[..take]);
            text = &text[take..];
            while self.buf.len() - self.committed >= self.span + self.sizes.margin {
                self.cut()?;
            }
        }
        Ok(())
    }

    /// Tokenizes what is left and returns every id.
    pub fn finish(mut self) -> Result<Vec<u32>> {
        if self.buf.len() > self.committed {
            let ws = self.window_start();
            let toks = self.encode(ws, self.buf.len())?;
            let first = self.first_token(&toks)?;
            self.ids.extend(toks[first..].iter().map(|t| t.id));
        }
        Ok(self.ids)
    }

    /// Where the window for the committed position starts: the true start of the text, or
    /// `CONTEXT` bytes before the committed position.
    fn window_start(&self) -> usize {
        if self.committed == 0 {
            0
        } else {
            floor_boundary(&self.buf, self.committed.saturating_sub(self.sizes.context))
        }
    }

    /// `buf[start..end]` encoded, offsets made absolute.
    fn encode(&self, start: usize, end: usize) -> Result<Vec<Tok>> {
        let len = end - start;
        if len > self.max_piece_bytes {
            return Err(self.unsplittable(len));
        }
        let text = &self.buf[start..end];
        let enc = super::tokenizer::guarded("encoding", || self.tok.encode(text, false))?;
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_offsets())
            .map(|(&id, &(s, e))| Tok { id, start: start + s, end: start + e })
            .collect())
    }

    /// The index of the first token at the committed position (which must start one).
    fn first_token(&self, toks: &[Tok]) -> Result<usize> {
        if self.committed == 0 {
            return Ok(0);
        }
        boundary_at(toks, self.committed).ok_or_else(|| {
            Error::Tokenizer(format!(
                "at byte {} of the text: the tokens there depend on text more than {} bytes away, so it \
                 cannot be tokenized in pieces exactly",
                self.dropped + self.committed as u64,
                self.sizes.margin / 2
            ))
        })
    }

    fn unsplittable(&self, len: usize) -> Error {
        Error::Tokenizer(format!(
            "the text from byte {} on runs {len} bytes without a point where this tokenizer's output \
             can be cut exactly, more than the {} bytes one tokenizer call may take (raise \
             --max-document-bytes)",
            self.dropped + self.committed as u64,
            self.max_piece_bytes
        ))
    }

    /// Emits the tokens of one checked piece, or enlarges the piece when no cut checks out.
    fn cut(&mut self) -> Result<()> {
        let c0 = self.committed;
        let ws = self.window_start();
        let Sizes { context, margin, .. } = self.sizes;
        let we = floor_boundary(&self.buf, c0 + self.span + margin);
        let a = self.encode(ws, we)?;
        let first = self.first_token(&a)?;
        let candidates: Vec<usize> = (first + 1..a.len())
            .filter(|&i| a[i].start <= c0 + self.span && a[i - 1].end <= a[i].start)
            .rev()
            .take(CANDIDATES)
            .collect();
        for i in candidates {
            let cand = a[i].start;
            let bs = floor_boundary(&self.buf, cand - context.min(cand));
            let b = self.encode(bs, floor_boundary(&self.buf, cand + margin))?;
            let Some(j) = boundary_at(&b, cand) else { continue };
            let near = |t: &&Tok| t.end <= cand + margin / 2;
            let from_a: Vec<Tok> = a[i..].iter().take_while(near).copied().collect();
            let from_b: Vec<Tok> = b[j..].iter().take_while(near).copied().collect();
            if from_a.is_empty() || from_a != from_b {
                continue;
            }
            self.ids.extend(a[first..i].iter().map(|t| t.id));
            self.buf.drain(..bs);
            self.dropped += bs as u64;
            self.committed = cand - bs;
            self.span = self.sizes.piece;
            return Ok(());
        }
        // The next attempt takes a larger piece (refused by `encode` beyond the limit).
        self.span *= 2;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{asset_path, Tokenizer};
    use rand::{Rng, SeedableRng};

    /// The regex of LLaMA-3's pre-tokenizer (its `Split`, followed by a byte-level step).
    const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers").join(name);
        std::fs::read_to_string(path).unwrap()
    }

    /// The tokenizers of the test, by pipeline shape: SmolLM's (digits, byte-level; from
    /// the default model), LLaMA-3's (regex split, byte-level, SmolLM's vocabulary),
    /// LLaMA-2's (SentencePiece-style normalizer acting on the start of the text, no
    /// pre-tokenizer, byte fallback) and its newer Metaspace form.
    fn tokenizers() -> Vec<(&'static str, Tokenizer)> {
        let mut out = Vec::new();
        let llama2: serde_json::Value = serde_json::from_str(&fixture("llama2-style.json")).unwrap();
        out.push(("llama2", Tokenizer::from_json_str(&llama2.to_string()).unwrap()));
        let mut meta = llama2.clone();
        meta["normalizer"] = serde_json::Value::Null;
        meta["pre_tokenizer"] =
            serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false});
        out.push(("metaspace", Tokenizer::from_json_str(&meta.to_string()).unwrap()));
        if let Some(model) = asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") {
            let smol = crate::model::llama::load_tokenizer(&model).unwrap();
            let mut v: serde_json::Value = serde_json::from_str(&smol.to_json_string().unwrap()).unwrap();
            v["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
            out.push(("llama3", Tokenizer::from_json_str(&v.to_string()).unwrap()));
            out.push(("smollm", smol));
        }
        out
    }

    /// Text that is hard to cut: prose, runs of letters, digits, spaces and newlines
    /// longer than the windows, multi-byte characters, CRLF, punctuation runs and special
    /// tokens written in the text.
    fn hostile_text(prose: &str, len: usize, seed: u64) -> String {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let words: Vec<&str> = prose.split_inclusive(' ').collect();
        let mut t = String::new();
        while t.len() < len {
            match rng.random_range(0..12) {
                0 => t.extend((0..rng.random_range(100..6000)).map(|_| ['t', 'h', 'e', 'a'][rng.random_range(0..4)])),
                1 => t.extend((0..rng.random_range(10..3000)).map(|_| [' ', '\n', '\t', ' '][rng.random_range(0..4)])),
                2 => t.extend((0..rng.random_range(5..4000)).map(|_| char::from(b'0' + rng.random_range(0..10)))),
                3 => t.push_str(&"🦀鯨ünï".repeat(rng.random_range(1..400))),
                4 => t.push_str(&"line\r\n".repeat(rng.random_range(1..50))),
                5 => t.push_str(&".!?".repeat(rng.random_range(1..300))),
                6 => t.push_str(["<|endoftext|>", "<s>", "</s>", "<|im_start|>"][rng.random_range(0..4)]),
                _ => {
                    let at = rng.random_range(0..words.len());
                    let n = rng.random_range(1..400).min(words.len() - at);
                    t.extend(words[at..at + n].iter().copied());
                }
            }
        }
        t
    }

    fn first_difference(a: &[u32], b: &[u32]) -> String {
        let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
        format!(
            "lengths {} vs {}, first difference at {i}: {:?} vs {:?}",
            a.len(),
            b.len(),
            a.get(i..i + 5),
            b.get(i..i + 5)
        )
    }

    /// Pushed in chunks of `chunk` bytes, the pieces give exactly the whole text's ids;
    /// returns how many pushes emitted ids before the end (cuts that checked out).
    fn check_exact(name: &str, tok: &Tokenizer, text: &str, sizes: Sizes, chunk: usize) -> usize {
        let whole = tok.pipeline().encode(text, false).unwrap().get_ids().to_vec();
        let mut enc = PieceEncoder::with_sizes(tok.pipeline(), usize::MAX, sizes);
        let (mut rest, mut emitting_pushes, mut last) = (text, 0, 0);
        while !rest.is_empty() {
            let n = floor_boundary(rest, chunk).max(rest.chars().next().unwrap().len_utf8());
            enc.push(&rest[..n]).unwrap();
            rest = &rest[n..];
            if enc.ids().len() > last {
                emitting_pushes += 1;
                last = enc.ids().len();
            }
        }
        let pieces = enc.finish().unwrap();
        assert!(pieces == whole, "{name} {sizes:?}: {}", first_difference(&pieces, &whole));
        emitting_pushes
    }

    /// The ids of a text tokenized in pieces are exactly those of the whole text, for
    /// every pipeline shape, on real prose and on text built to be hard to cut, with the
    /// production window sizes and with small ones that cut every few hundred bytes.
    #[test]
    fn pieces_give_the_ids_of_the_whole_text() {
        let prose = match asset_path("moby-dick/data.txt") {
            Some(p) => std::fs::read_to_string(p).unwrap(),
            None => fixture("llama2-style.json").replace(['{', '}', '"', ':', ','], " "),
        };
        let small = Sizes { piece: 700, context: 160, margin: 160 };
        for (name, tok) in tokenizers() {
            if name == "llama2" {
                // The hazard the pieces avoid: cut at a space and tokenized afresh, the
                // second half starts with an extra `▁` (llama2's normalizer prepends one to
                // every text it is given).
                let at = prose[..20_000].rfind(' ').unwrap();
                let mut naive = tok.pipeline().encode(&prose[..at], false).unwrap().get_ids().to_vec();
                naive.extend(tok.pipeline().encode(&prose[at..20_000], false).unwrap().get_ids());
                assert_ne!(naive, tok.pipeline().encode(&prose[..20_000], false).unwrap().get_ids(), "{name}");
            }
            let moby: String = prose.chars().take(if name == "smollm" { usize::MAX } else { 300_000 }).collect();
            let cuts = check_exact(name, &tok, &moby, SIZES, 10_000);
            assert!(cuts >= moby.len() / (2 * PIECE_BYTES), "{name}: only {cuts} pieces emitted early");
            for seed in 0..2 {
                let text = hostile_text(&prose, 80_000, seed);
                check_exact(name, &tok, &text, SIZES, 7_000);
                let cuts = check_exact(name, &tok, &text, small, 333);
                assert!(cuts > 20, "{name}: small pieces cut only {cuts} times");
            }
        }
    }

    /// A normalizer whose one match spans more than a piece may take leaves no point to
    /// cut: refused, naming the limit, instead of cut unchecked.
    #[test]
    fn a_text_that_cannot_be_cut_is_refused() {
        let mut v: serde_json::Value = serde_json::from_str(&fixture("llama2-style.json")).unwrap();
        v["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [
            {"type": "Replace", "pattern": {"Regex": "a[^b]*b"}, "content": "x"},
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
        let tok = Tokenizer::from_json_str(&v.to_string()).unwrap();
        let long = format!("a{}b and more text", "c".repeat(200_000));
        let mut enc =
            PieceEncoder::with_sizes(tok.pipeline(), 50_000, Sizes { piece: 4096, context: 512, margin: 512 });
        let e = enc.push(&long).and_then(|_| enc.finish()).unwrap_err().to_string();
        assert!(e.contains("--max-document-bytes") && e.contains("50000"), "{e}");
        // Within the limit it is one piece, exact.
        let short = format!("a{}b and more", "c".repeat(20_000));
        let mut enc =
            PieceEncoder::with_sizes(tok.pipeline(), 50_000, Sizes { piece: 4096, context: 512, margin: 512 });
        enc.push(&short).unwrap();
        assert_eq!(enc.finish().unwrap(), tok.pipeline().encode(short.as_str(), false).unwrap().get_ids());
    }
}
