//! Text ⇄ token ids, wrapping the `tokenizers` crate.
//!
//! Built either from a Hugging Face `tokenizer.json` or from GGUF metadata:
//! ```text
//! tokenizer.ggml.model       "gpt2" (byte-level BPE; the only model read)
//! tokenizer.ggml.tokens      [string; vocab]     id = index
//! tokenizer.ggml.merges      ["a b"; n_merges]   rank = index
//! tokenizer.ggml.token_type  [i32; vocab]        3 = control → special added token,
//!                                                4 = user-defined → added token
//! tokenizer.ggml.pre         pre-tokenizer name ("smollm", "gpt2", ...)
//! tokenizer.ggml.{eos,bos}_token_id  (optional)
//! ```
//! The pipeline is: no normaliser → pre-tokenizer → BPE (no unknown token, no byte
//! fallback, merges applied by rank) → ids. Encoding never adds BOS/EOS; special tokens
//! written in the text (e.g. `<|endoftext|>`) map to their ids. Decoding is byte-level.

use std::path::Path;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use crate::io::gguf::{GgufFile, GgufValue};
use crate::{Error, Result};

/// llama.cpp pre-tokenizer names whose regexes are "each digit alone" followed by the
/// GPT-2 regex, i.e. `Sequence[Digits(individual), ByteLevel]`.
const DIGIT_SPLITTING_PRE: &[&str] = &["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"];

/// GGUF `token_type` values.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A byte-level BPE tokenizer plus the special ids the model uses.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_token_id: Option<u32>,
    bos_token_id: Option<u32>,
}

fn tok_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{context}: {e}"))
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    ///
    /// Pre-tokenization follows `tokenizer.ggml.pre`, matching llama.cpp: "smollm" (and the
    /// other names in which llama.cpp splits every digit: starcoder, refact, command-r,
    /// codeshell, exaone, minerva) use `Sequence[Digits(individual_digits),
    /// ByteLevel(add_prefix_space=false, use_regex=true)]`; everything else, including
    /// "gpt2" (whose regex keeps digit runs together) and unknown or missing names, uses
    /// `ByteLevel` alone. For unknown names that is an approximation: their own regexes
    /// (llama3, qwen2, deepseek, ...) are not reproduced, so ids may differ from
    /// llama.cpp's on some texts.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "{}: tokenizer model '{model}' is not supported (only \"gpt2\" byte-level BPE)",
                gguf.path().display()
            )));
        }
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        if u32::try_from(tokens.len()).is_err() {
            return Err(Error::Tokenizer(format!("{} tokens do not fit u32 ids", tokens.len())));
        }
        let mut vocab = Vocab::with_capacity(tokens.len());
        for (id, token) in tokens.iter().enumerate() {
            // A duplicated string keeps its first id, like a JSON vocabulary would.
            vocab.entry(token.clone()).or_insert(id as u32);
        }
        let merges = gguf
            .get_str_array("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_owned(), b.to_owned())),
                None => Err(Error::Tokenizer(format!("merge '{m}' is not two tokens separated by a space"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tok_err("building BPE from GGUF vocabulary", e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);

        let byte_level = ByteLevel::new(false, true, true);
        let pre = gguf.get("tokenizer.ggml.pre").and_then(GgufValue::as_str).unwrap_or("");
        let pre_tokenizer: PreTokenizerWrapper = if DIGIT_SPLITTING_PRE.contains(&pre) {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else {
            byte_level.into()
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        // The post-processor only fixes offsets (ids are untouched); kept to match the
        // Hugging Face tokenizer.json of these models.
        inner.with_post_processor(Some(byte_level));
        inner.with_decoder(Some(byte_level));

        if let Some(types) = gguf.get("tokenizer.ggml.token_type") {
            let types =
                types.as_array().ok_or_else(|| Error::Tokenizer("tokenizer.ggml.token_type is not an array".into()))?;
            if types.len() != tokens.len() {
                return Err(Error::Tokenizer(format!(
                    "tokenizer.ggml.token_type has {} entries for {} tokens",
                    types.len(),
                    tokens.len()
                )));
            }
            let added = |wanted: i64, special: bool| -> Vec<AddedToken> {
                tokens
                    .iter()
                    .zip(types)
                    .filter(|(_, t)| t.as_i64() == Some(wanted))
                    .map(|(s, _)| AddedToken::from(s.clone(), special))
                    .collect()
            };
            inner.add_special_tokens(&added(TOKEN_TYPE_CONTROL, true));
            inner.add_tokens(&added(TOKEN_TYPE_USER_DEFINED, false));
        }

        let special_id = |key: &str| -> Result<Option<u32>> {
            match gguf.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64().and_then(|id| u32::try_from(id).ok()) {
                    Some(id) if (id as usize) < tokens.len() => Ok(Some(id)),
                    _ => Err(Error::Tokenizer(format!(
                        "{key} ({} {}) is not a token id below {}",
                        v.type_name(),
                        v.as_i64().map_or(String::new(), |i| i.to_string()),
                        tokens.len()
                    ))),
                },
            }
        };
        Ok(Tokenizer {
            inner,
            eos_token_id: special_id("tokenizer.ggml.eos_token_id")?,
            bos_token_id: special_id("tokenizer.ggml.bos_token_id")?,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`. That file does not say which token ends a
    /// sequence, so [`Tokenizer::eos_token_id`] is `None` until set with
    /// [`Tokenizer::with_eos_token_id`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&json).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Parses the contents of a `tokenizer.json` (see [`Tokenizer::from_file`]).
    pub fn from_json_str(json: &str) -> Result<Tokenizer> {
        let inner = json.parse::<tokenizers::Tokenizer>().map_err(|e| tok_err("parsing tokenizer.json", e))?;
        Ok(Tokenizer { inner, eos_token_id: None, bos_token_id: None })
    }

    /// The tokenizer as `tokenizer.json` text (compact), loadable with
    /// [`Tokenizer::from_json_str`] or by Hugging Face `tokenizers`.
    pub fn to_json_string(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| tok_err("serialising tokenizer", e))
    }

    /// Token ids of `text`; no BOS/EOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| tok_err("encoding", e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included. Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let size = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= size) {
            return Err(Error::Tokenizer(format!("cannot decode id {bad}: vocabulary has {size} tokens")));
        }
        self.inner.decode(ids, false).map_err(|e| tok_err("decoding", e))
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token string (e.g. `"<|im_end|>"`), if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// End-of-sequence id, from GGUF `tokenizer.ggml.eos_token_id` or set by the caller.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// Beginning-of-sequence id from GGUF metadata (never added by [`Tokenizer::encode`]).
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// The same tokenizer with its end-of-sequence id replaced.
    pub fn with_eos_token_id(mut self, eos_token_id: Option<u32>) -> Tokenizer {
        self.eos_token_id = eos_token_id;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::GgufWriter;
    use crate::io::{asset_path, test_dir};

    const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

    fn real() -> Option<Tokenizer> {
        let path = asset_path(MODEL)?;
        Some(Tokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap())
    }

    /// A toy byte-level vocabulary with only the symbols the test texts use (a real one
    /// has all 256 byte symbols).
    fn toy_gguf(pre: &str) -> GgufFile {
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into()];
        tokens.extend(["a", "b", "Ġ", "1", "2", "ab", "Ġab", "12"].map(String::from));
        let mut types = vec![1i32; tokens.len()];
        types[0] = 3;
        let mut w = GgufWriter::new();
        w.add_str("tokenizer.ggml.model", "gpt2")
            .add_str("tokenizer.ggml.pre", pre)
            .add_str_array("tokenizer.ggml.tokens", &tokens)
            .add_str_array("tokenizer.ggml.merges", &["a b", "Ġ ab", "1 2"])
            .add_i32_array("tokenizer.ggml.token_type", &types)
            .add_u32("tokenizer.ggml.eos_token_id", 0);
        let path = test_dir("tokenizer").join(format!("toy-{pre}.gguf"));
        w.write(&path).unwrap();
        GgufFile::open(&path).unwrap()
    }

    #[test]
    fn toy_vocabulary_from_gguf() {
        let t = Tokenizer::from_gguf(&toy_gguf("smollm")).unwrap();
        assert_eq!(t.vocab_size(), 9);
        assert_eq!(t.eos_token_id(), Some(0));
        assert_eq!(t.bos_token_id(), None);
        assert_eq!(t.token_to_id("Ġab"), Some(7));
        assert_eq!(t.encode("ab ab").unwrap(), [6, 7]);
        // Digits are split one per token, so the "1 2" merge never applies ...
        assert_eq!(t.encode("ab<|endoftext|>12").unwrap(), [6, 0, 4, 5]);
        assert_eq!(t.decode(&[6, 7, 0, 4, 5]).unwrap(), "ab ab<|endoftext|>12");
        assert!(t.decode(&[9]).is_err());
        // ... while GPT-2's regex keeps the run "12" together.
        let g = Tokenizer::from_gguf(&toy_gguf("gpt2")).unwrap();
        assert_eq!(g.encode("ab<|endoftext|>12").unwrap(), [6, 0, 8]);
        // Unknown pre-tokenizer names fall back to ByteLevel alone.
        let u = Tokenizer::from_gguf(&toy_gguf("no-such-pre")).unwrap();
        assert_eq!(u.encode("12").unwrap(), [8]);
    }

    #[test]
    fn gguf_without_tokenizer_or_with_other_model_is_an_error() {
        let path = test_dir("tokenizer").join("no_tokenizer.gguf");
        GgufWriter::new().write(&path).unwrap();
        let err = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap_err();
        assert!(err.to_string().contains("tokenizer.ggml.model"), "{err}");
        let mut w = GgufWriter::new();
        w.add_str("tokenizer.ggml.model", "llama");
        w.write(&path).unwrap();
        let err = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap_err();
        assert!(err.to_string().contains("'llama'"), "{err}");
        assert!(Tokenizer::from_json_str("{not json").is_err());
    }

    #[test]
    fn real_tokenizer_matches_reference() {
        let Some(t) = real() else { return };
        let Some(obama) = asset_path("sotu/2009_barack_obama_d.txt") else {
            return;
        };
        let text = std::fs::read_to_string(obama).unwrap();
        assert_eq!(t.vocab_size(), 49152);
        assert_eq!(t.eos_token_id(), Some(2));
        assert_eq!(t.bos_token_id(), Some(1));
        assert_eq!(t.token_to_id("<|im_start|>"), Some(1));
        let ids = t.encode(&text).unwrap();
        assert_eq!(ids[..10], [24405, 332, 32436, 28, 4994, 30, 20605, 4267, 28, 16647]);
        assert_eq!(ids.len(), 7056);
        assert_eq!(t.decode(&ids).unwrap(), text);
        assert_eq!(t.encode("<|endoftext|>").unwrap(), [0]);
        assert_eq!(t.encode("<|im_start|>user").unwrap()[0], 1);
        let year = t.encode("2009").unwrap();
        assert_eq!(year.len(), 4, "{year:?}");
        assert_eq!(t.decode(&year).unwrap(), "2009");

        let json = t.to_json_string().unwrap();
        let back = Tokenizer::from_json_str(&json).unwrap();
        assert_eq!(back.encode(&text).unwrap(), ids);
        assert_eq!(back.encode("<|endoftext|>").unwrap(), [0]);
        let path = test_dir("tokenizer").join("tokenizer.json");
        std::fs::write(&path, &json).unwrap();
        let from_file = Tokenizer::from_file(&path).unwrap();
        let start: String = text.chars().take(500).collect();
        assert_eq!(from_file.encode(&start).unwrap(), t.encode(&start).unwrap());
        assert_eq!(from_file.eos_token_id(), None);
        assert_eq!(from_file.with_eos_token_id(Some(2)).eos_token_id(), Some(2));
    }
}
