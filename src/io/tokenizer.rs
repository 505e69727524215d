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
//! fallback, merges applied by rank) → ids. Every `tokenizer.*` key of a GGUF file is read
//! or refused ([`GGUF_TOKENIZER_KEYS`]); an unknown pre-tokenizer name is refused (its
//! regex is not reproduced).
//!
//! From a Hugging Face directory: `tokenizer.json`, plus `tokenizer_config.json` when
//! present for `bos_token`, `eos_token`, `add_bos_token`, `add_eos_token` and
//! `chat_template`. Without `add_bos_token` the post-processor of `tokenizer.json` decides
//! (LLaMA-3's adds BOS): whether it puts BOS before, or EOS after, a probe text.
//!
//! A `tokenizer.json` comes from strangers, so it is checked before the `tokenizers` crate
//! builds it (\[`check_tokenizer_json`\]): every normalizer, pre-tokenizer, decoder and
//! post-processor must be of a known type (recursively through sequences), `Replace` and
//! `Split` need a non-empty pattern, `Precompiled` (a binary sentencepiece trie no
//! LLaMA-family tokenizer uses) is refused, the model must be BPE, WordPiece, WordLevel or
//! Unigram with its unknown token in range, and every added token needs an id and
//! non-empty content. `truncation` and `padding` are ignored (set to null): the pipeline
//! tokenizes whole documents. A panic inside the crate, should one remain, becomes an
//! error naming the file rather than crossing our API.
//!
//! [`Tokenizer::encode`] never adds BOS/EOS; [`Tokenizer::encode_document`] adds them as
//! the model's files say (once per document: a text file, or a JSON record). Special
//! tokens written in the text (e.g. `<|endoftext|>`) map to their ids. Decoding is
//! byte-level.

use std::path::Path;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use tokenizers::processors::PostProcessorWrapper;

use crate::io::gguf::{GgufFile, GgufValue};
use crate::io::PieceEncoder;
use crate::{Error, Result};

/// The growth bound of a byte-level pipeline (GGUF's, [`Tokenizer::byte_level`]): each
/// byte becomes a character of one or two bytes.
const BYTE_LEVEL_GROWTH: usize = 2;

/// llama.cpp pre-tokenizer names whose regexes are "each digit alone" followed by the
/// GPT-2 regex, i.e. `Sequence[Digits(individual), ByteLevel]`.
const DIGIT_SPLITTING_PRE: &[&str] = &["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"];

/// GGUF `token_type` values.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Every `tokenizer.*` GGUF key [`Tokenizer::from_gguf`] knows; any other is refused.
/// `(key, what is done with it)`.
pub const GGUF_TOKENIZER_KEYS: &[(&str, &str)] = &[
    ("tokenizer.ggml.model", "\"gpt2\" only"),
    ("tokenizer.ggml.pre", "the pre-tokenizer: smollm and the other digit-splitting names, gpt2, default"),
    ("tokenizer.ggml.tokens", "the vocabulary"),
    ("tokenizer.ggml.merges", "the BPE merges"),
    ("tokenizer.ggml.token_type", "control tokens become special added tokens, user-defined ones added tokens"),
    ("tokenizer.ggml.bos_token_id", "BOS"),
    ("tokenizer.ggml.eos_token_id", "EOS"),
    ("tokenizer.ggml.add_bos_token", "whether documents start with BOS"),
    ("tokenizer.ggml.add_eos_token", "whether documents end with EOS"),
    ("tokenizer.ggml.add_space_prefix", "false only"),
    ("tokenizer.ggml.unknown_token_id", "not used by byte-level BPE"),
    ("tokenizer.ggml.padding_token_id", "padding (not used)"),
    ("tokenizer.ggml.seperator_token_id", "not used"),
    ("tokenizer.ggml.cls_token_id", "not used"),
    ("tokenizer.ggml.mask_token_id", "not used"),
    ("tokenizer.ggml.eot_token_id", "generation (not used)"),
    ("tokenizer.ggml.eom_token_id", "generation (not used)"),
    ("tokenizer.chat_template", "kept for export"),
];

/// The pre-tokenizer names read: the digit-splitting ones, and those that are GPT-2's
/// regex alone.
const GPT2_PRE: &[&str] = &["gpt2", "default"];

/// How many times longer than its input the normalizer and pre-tokenizer of a tokenizer
/// may make a text, at most (see \[`check_tokenizer_json`\]): beyond it a chain of growing
/// `Replace` steps could turn a small piece of text into gigabytes.
pub const MAX_GROWTH: usize = 128;

/// Text tokenized in one call at most, after the normalizer's growth, by default
/// ([`Tokenizer::encode`]); data readers take theirs from `--max-document-bytes`.
pub const DEFAULT_MAX_PIECE_BYTES: usize = 16 << 20;

/// A byte-level BPE tokenizer plus the special ids the model uses.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    /// The pipeline without its post-processor: with no special tokens added, a
    /// post-processor only trims offsets, which [`PieceEncoder`] needs untrimmed.
    inner: tokenizers::Tokenizer,
    /// The post-processor, put back for serialising and for probing what it adds.
    post_processor: Option<PostProcessorWrapper>,
    /// Upper bound of the normalizer's and pre-tokenizer's growth (≤ [`MAX_GROWTH`]).
    growth: usize,
    /// One more than the largest id any token has (the model's vocabulary and the added
    /// tokens).
    id_bound: usize,
    eos_token_id: Option<u32>,
    bos_token_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

/// A `tokenizer_config.json` token entry: a string, or an object with `content`.
fn token_content(v: &serde_json::Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("content").and_then(serde_json::Value::as_str))
}

fn tok_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{context}: {e}"))
}

thread_local! {
    /// Set while this thread runs inside [`guarded`]: its panics are reported as errors, so
    /// the panic hook stays quiet.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a call into the `tokenizers` crate: its error, or a panic inside it, becomes an
/// error about `context`. The first call wraps the process's panic hook (once) so that a
/// panic caught here prints nothing (`thread 'main' panicked at …` before a clean error
/// would read as a crash); panics anywhere else reach the previous hook as before.
pub(crate) fn guarded<T, E: std::fmt::Display>(
    context: &str,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> Result<T> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(std::cell::Cell::get) {
                previous(info)
            }
        }));
    });
    let outer = GUARDED.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    match result {
        Ok(r) => r.map_err(|e| tok_err(context, e)),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(Error::Tokenizer(format!("{context}: the tokenizers library failed ({msg})")))
        }
    }
}

/// Component types accepted in a `tokenizer.json`, by field.
const NORMALIZERS: &[&str] = &[
    "BertNormalizer",
    "Strip",
    "StripAccents",
    "NFC",
    "NFD",
    "NFKC",
    "NFKD",
    "Sequence",
    "Lowercase",
    "Nmt",
    "Replace",
    "Prepend",
    "ByteLevel",
];
const PRE_TOKENIZERS: &[&str] = &[
    "BertPreTokenizer",
    "ByteLevel",
    "CharDelimiterSplit",
    "Metaspace",
    "Whitespace",
    "Sequence",
    "Split",
    "Punctuation",
    "WhitespaceSplit",
    "Digits",
    "UnicodeScripts",
];
const DECODERS: &[&str] = &[
    "BPEDecoder",
    "ByteLevel",
    "WordPiece",
    "Metaspace",
    "CTC",
    "Sequence",
    "Replace",
    "Fuse",
    "Strip",
    "ByteFallback",
];
const POST_PROCESSORS: &[&str] =
    &["RobertaProcessing", "BertProcessing", "ByteLevel", "TemplateProcessing", "Sequence"];

/// Checks one component (and, for a sequence, its parts) of a `tokenizer.json`.
fn check_component(field: &str, v: &serde_json::Value, allowed: &[&str], list_key: &str) -> Result<()> {
    use serde_json::Value;
    if v.is_null() {
        return Ok(());
    }
    let bad = |why: String| Error::Tokenizer(format!("tokenizer.json: {field}: {why}"));
    let kind = v.get("type").and_then(Value::as_str).ok_or_else(|| bad("no \"type\"".into()))?;
    if kind == "Precompiled" {
        return Err(bad("type Precompiled (a sentencepiece charsmap) is not supported".into()));
    }
    if !allowed.contains(&kind) {
        return Err(bad(format!("unknown type '{kind}' (known: {})", allowed.join(", "))));
    }
    let non_empty_pattern = |p: Option<&Value>| -> bool {
        p.and_then(|p| p.get("String").or_else(|| p.get("Regex")))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    match kind {
        "Sequence" => {
            let parts = v
                .get(list_key)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("Sequence without '{list_key}'")))?;
            if parts.len() > 64 {
                return Err(bad(format!("a Sequence of {} parts", parts.len())));
            }
            for (i, part) in parts.iter().enumerate() {
                check_component(&format!("{field}.{list_key}[{i}]"), part, allowed, list_key)?;
            }
        }
        "Replace" | "Split" if !non_empty_pattern(v.get("pattern")) => {
            return Err(bad(format!("{kind} needs a non-empty pattern")));
        }
        "TemplateProcessing" => {
            // Every special token the templates name must be defined, with as many ids
            // as tokens.
            let specials = v.get("special_tokens").and_then(Value::as_object);
            for part in ["single", "pair"] {
                for piece in v.get(part).and_then(Value::as_array).map_or(&[][..], Vec::as_slice) {
                    let Some(id) = piece.get("SpecialToken").map(|t| t.get("id").and_then(Value::as_str)) else {
                        continue;
                    };
                    let def = id.and_then(|id| specials.and_then(|m| m.get(id)));
                    let sound = def.is_some_and(|d| {
                        let n = |k: &str| d.get(k).and_then(Value::as_array).map(Vec::len);
                        n("ids").is_some_and(|i| i > 0) && n("ids") == n("tokens")
                    });
                    if !sound {
                        return Err(bad(format!("template {part} names special token {id:?}, which is not defined")));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The upper bound of how many times longer (in bytes) a normalizer or pre-tokenizer
/// component can make its input (a sequence multiplies its parts):
/// - `Replace` of a string pattern p by c: ⌈|c|/|p|⌉ (each match, at least |p| bytes,
///   becomes c); of a regex, which may match the empty string between characters: 1 + 2|c|;
/// - `Prepend` p: 1 + |p| (once, before at least one byte);
/// - Unicode normal forms, by the bounds of UAX #15 in UTF-8: NFC and NFD 3, NFKC and
///   NFKD 11; lower-casing 2 (e.g. U+0130 İ, 2 bytes, is 3 in lower case); `BertNormalizer`
///   12 (spaces around CJK characters ×2, accents stripped after NFD ×3, lower case ×2);
/// - byte-level 2 (each byte becomes a character of one or two bytes); `Metaspace` with
///   replacement r: 2|r| (every space becomes r, and r may be prepended);
/// - everything else splits or removes: 1.
fn growth(v: &serde_json::Value, list_key: &str) -> f64 {
    use serde_json::Value;
    let len = |key: &str| v.get(key).and_then(Value::as_str).map_or(0, str::len) as f64;
    match v.get("type").and_then(Value::as_str) {
        Some("Sequence") => v
            .get(list_key)
            .and_then(Value::as_array)
            .map_or(1.0, |parts| parts.iter().map(|p| growth(p, list_key)).product()),
        Some("Replace") => {
            let pattern = v.get("pattern");
            match pattern.and_then(|p| p.get("String")).and_then(Value::as_str) {
                Some(p) if !p.is_empty() => (len("content") / p.len() as f64).ceil().max(1.0),
                _ => 1.0 + 2.0 * len("content"),
            }
        }
        Some("Prepend") => 1.0 + len("prepend"),
        Some("NFC" | "NFD") => 3.0,
        Some("NFKC" | "NFKD") => 11.0,
        Some("Lowercase" | "ByteLevel") => 2.0,
        Some("BertNormalizer") => 12.0,
        Some("Metaspace") => 2.0 * len("replacement").max(1.0),
        _ => 1.0,
    }
}

/// What [`check_tokenizer_json`] found.
struct CheckedJson {
    /// The JSON with `truncation` and `padding` cleared.
    json: String,
    /// The pipeline's growth bound ([`growth`] of normalizer × pre-tokenizer).
    growth: usize,
    /// Every `added_tokens` entry: (index, content, id the file gives it).
    added: Vec<(usize, String, u64)>,
}

/// Checks what the pipeline uses of a `tokenizer.json` (see the module doc): the
/// components and model, the growth bound ([`MAX_GROWTH`]), ids unique in the model's
/// vocabulary, and every added token with an id and content.
fn check_tokenizer_json(json: &str) -> Result<CheckedJson> {
    use serde_json::Value;
    let mut v: Value = serde_json::from_str(json).map_err(|e| tok_err("tokenizer.json", e))?;
    let obj = v.as_object_mut().ok_or_else(|| Error::Tokenizer("tokenizer.json: not a JSON object".into()))?;
    obj.insert("truncation".into(), Value::Null);
    obj.insert("padding".into(), Value::Null);
    let null = Value::Null;
    let get = |k: &str| obj.get(k).unwrap_or(&null);
    check_component("normalizer", get("normalizer"), NORMALIZERS, "normalizers")?;
    check_component("pre_tokenizer", get("pre_tokenizer"), PRE_TOKENIZERS, "pretokenizers")?;
    check_component("decoder", get("decoder"), DECODERS, "decoders")?;
    check_component("post_processor", get("post_processor"), POST_PROCESSORS, "processors")?;
    let bad = |why: String| Error::Tokenizer(format!("tokenizer.json: {why}"));
    let (norm, pre) = (growth(get("normalizer"), "normalizers"), growth(get("pre_tokenizer"), "pretokenizers"));
    let total = norm * pre;
    if total > MAX_GROWTH as f64 {
        return Err(bad(format!(
            "the normalizer (×{norm}) and pre-tokenizer (×{pre}) can make a text up to ×{total} longer; \
             more than ×{MAX_GROWTH} is refused"
        )));
    }
    let model = get("model");
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
    match kind {
        "BPE" | "WordPiece" | "WordLevel" => {
            let vocab = model
                .get("vocab")
                .and_then(Value::as_object)
                .ok_or_else(|| bad(format!("{kind} model without a vocab")))?;
            if kind != "BPE" {
                let unk = model
                    .get("unk_token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{kind} without unk_token")))?;
                if !vocab.contains_key(unk) {
                    return Err(bad(format!("{kind} unk_token '{unk}' is not in the vocab")));
                }
            }
            // Ids must be unique: two tokens with one id decode ambiguously.
            let mut by_id: std::collections::HashMap<u64, &str> = std::collections::HashMap::new();
            for (token, id) in vocab {
                let id = id
                    .as_u64()
                    .filter(|&i| i <= u32::MAX as u64)
                    .ok_or_else(|| bad(format!("model.vocab['{token}'] = {id} is not a token id")))?;
                if let Some(other) = by_id.insert(id, token) {
                    return Err(bad(format!("model.vocab: '{other}' and '{token}' both have id {id}")));
                }
            }
        }
        "Unigram" => {
            let n = model.get("vocab").and_then(Value::as_array).map_or(0, Vec::len);
            if n == 0 {
                return Err(bad("Unigram model without a vocab".into()));
            }
            if let Some(unk) = model.get("unk_id").filter(|u| !u.is_null()) {
                if unk.as_u64().is_none_or(|u| u >= n as u64) {
                    return Err(bad(format!("Unigram unk_id {unk} is outside its {n} pieces")));
                }
            }
        }
        other => return Err(bad(format!("model type '{other}' is not supported"))),
    }
    let mut added = Vec::new();
    if let Some(list) = obj.get("added_tokens").filter(|a| !a.is_null()) {
        let list = list.as_array().ok_or_else(|| bad("added_tokens is not a list".into()))?;
        for (i, t) in list.iter().enumerate() {
            let id = t.get("id").and_then(Value::as_u64).filter(|&id| id <= u32::MAX as u64);
            let content = t.get("content").and_then(Value::as_str).filter(|c| !c.is_empty());
            let (Some(id), Some(content)) = (id, content) else {
                return Err(bad(format!("added_tokens[{i}] needs an id and non-empty content")));
            };
            added.push((i, content.to_owned(), id));
        }
    }
    let json = serde_json::to_string(&v).map_err(|e| tok_err("tokenizer.json", e))?;
    Ok(CheckedJson { json, growth: total.ceil() as usize, added })
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    ///
    /// Pre-tokenization follows `tokenizer.ggml.pre`, matching llama.cpp: "smollm" (and the
    /// other names in which llama.cpp splits every digit: starcoder, refact, command-r,
    /// codeshell, exaone, minerva) use `Sequence[Digits(individual_digits),
    /// ByteLevel(add_prefix_space=false, use_regex=true)]`; "gpt2" and "default" (whose
    /// regex keeps digit runs together), and a missing name, use `ByteLevel` alone. Any
    /// other name (llama-bpe, qwen2, deepseek, ...) is refused: its regex is not
    /// reproduced, and the ids would differ from llama.cpp's.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
        let refuse = |key: &str, v: &GgufValue, why: &str| {
            Error::Tokenizer(format!("{}: metadata key '{key}' ({}): {why}", gguf.path().display(), v.type_name()))
        };
        for (key, v) in gguf.metadata() {
            let known =
                GGUF_TOKENIZER_KEYS.iter().any(|(k, _)| k == key) || key.starts_with("tokenizer.chat_template.");
            if key.starts_with("tokenizer.") && !known {
                return Err(refuse(key, v, "unknown tokenizer key: it may change the ids, so it is refused"));
            }
        }
        let flag = |key: &str| -> Result<bool> {
            match gguf.get(key) {
                None => Ok(false),
                Some(GgufValue::Bool(b)) => Ok(*b),
                Some(v) => Err(refuse(key, v, "expected a bool")),
            }
        };
        if flag("tokenizer.ggml.add_space_prefix")? {
            return Err(Error::Tokenizer(format!(
                "{}: tokenizer.ggml.add_space_prefix = true is not implemented for byte-level BPE",
                gguf.path().display()
            )));
        }
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
        let bpe =
            guarded("building BPE from GGUF vocabulary", || BPE::builder().vocab_and_merges(vocab, merges).build())?;
        let mut inner = tokenizers::Tokenizer::new(bpe);

        let byte_level = ByteLevel::new(false, true, true);
        let pre = match gguf.get("tokenizer.ggml.pre") {
            None => "default",
            Some(v) => v.as_str().ok_or_else(|| refuse("tokenizer.ggml.pre", v, "expected a string"))?,
        };
        let pre_tokenizer: PreTokenizerWrapper = if DIGIT_SPLITTING_PRE.contains(&pre) {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else if GPT2_PRE.contains(&pre) {
            byte_level.into()
        } else {
            return Err(Error::Tokenizer(format!(
                "{}: tokenizer.ggml.pre = \"{pre}\": this pre-tokenizer's regex is not implemented \
                 (known: {}, {})",
                gguf.path().display(),
                DIGIT_SPLITTING_PRE.join(", "),
                GPT2_PRE.join(", ")
            )));
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
        let chat_template = match gguf.get("tokenizer.chat_template") {
            None => None,
            Some(v) => {
                Some(v.as_str().ok_or_else(|| refuse("tokenizer.chat_template", v, "expected a string"))?.to_owned())
            }
        };
        let mut tok = Tokenizer::assemble(inner, BYTE_LEVEL_GROWTH);
        tok.eos_token_id = special_id("tokenizer.ggml.eos_token_id")?;
        tok.bos_token_id = special_id("tokenizer.ggml.bos_token_id")?;
        tok.add_bos = flag("tokenizer.ggml.add_bos_token")?;
        tok.add_eos = flag("tokenizer.ggml.add_eos_token")?;
        tok.chat_template = chat_template;
        tok.check_flags(&gguf.path().display().to_string())?;
        Ok(tok)
    }

    /// A byte-level tokenizer without merges: ids 0–255 are the 256 byte symbols (GPT-2's
    /// byte-to-character map, in that order), 256 is `<s>` (BOS, added to documents) and
    /// 257 `</s>` (EOS). For models with random weights (benchmarks), which need some
    /// tokenizer with ids inside any vocabulary.
    pub fn byte_level() -> Result<Tokenizer> {
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort_unstable();
        let mut vocab = Vocab::with_capacity(258);
        for (i, c) in alphabet.iter().enumerate() {
            vocab.insert(c.to_string(), i as u32);
        }
        let bpe =
            BPE::builder().vocab_and_merges(vocab, Vec::new()).build().map_err(|e| tok_err("byte-level BPE", e))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        inner.with_pre_tokenizer(Some(byte_level));
        inner.with_decoder(Some(byte_level));
        inner.add_special_tokens(&[AddedToken::from("<s>", true), AddedToken::from("</s>", true)]);
        let (bos, eos) = (inner.token_to_id("<s>"), inner.token_to_id("</s>"));
        let mut tok = Tokenizer::assemble(inner, BYTE_LEVEL_GROWTH);
        (tok.bos_token_id, tok.eos_token_id, tok.add_bos) = (bos, eos, true);
        Ok(tok)
    }

    /// A tokenizer from a built pipeline whose normalizer and pre-tokenizer grow a text at
    /// most `growth` times: the post-processor is set aside (see the field), no special
    /// ids yet.
    fn assemble(mut full: tokenizers::Tokenizer, growth: usize) -> Tokenizer {
        let post_processor = full.get_post_processor().cloned();
        full.with_post_processor(None::<PostProcessorWrapper>);
        let id_bound = full.get_vocab(true).values().max().map_or(0, |&m| m as usize + 1);
        Tokenizer {
            inner: full,
            post_processor,
            growth,
            id_bound,
            eos_token_id: None,
            bos_token_id: None,
            add_bos: false,
            add_eos: false,
            chat_template: None,
        }
    }

    /// The pipeline as the `tokenizers` crate runs it (tests compare whole-text encodings).
    #[cfg(test)]
    pub(crate) fn pipeline(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The whole pipeline, post-processor included.
    fn full(&self) -> tokenizers::Tokenizer {
        let mut t = self.inner.clone();
        t.with_post_processor(self.post_processor.clone());
        t
    }

    /// Adding BOS or EOS needs that token's id.
    fn check_flags(&self, origin: &str) -> Result<()> {
        if self.add_bos && self.bos_token_id.is_none() {
            return Err(Error::Tokenizer(format!("{origin}: BOS is to be added but no BOS token is named")));
        }
        if self.add_eos && self.eos_token_id.is_none() {
            return Err(Error::Tokenizer(format!("{origin}: EOS is to be added but no EOS token is named")));
        }
        Ok(())
    }

    /// Loads a Hugging Face `tokenizer.json` alone. That file does not say which tokens
    /// begin and end a sequence, so the BOS/EOS ids are `None` and nothing is added to
    /// documents; [`Tokenizer::from_hf_files`] reads them from `tokenizer_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        Self::from_hf_files(path.as_ref(), None)
    }

    /// Loads `tokenizer.json` and, when given, its `tokenizer_config.json` (see the module
    /// doc for what is read).
    ///
    /// Both are opened as regular files only and read up to
    /// [`MAX_TOKENIZER_BYTES`](super::regular::MAX_TOKENIZER_BYTES) and
    /// [`MAX_CONFIG_BYTES`](super::regular::MAX_CONFIG_BYTES).
    pub fn from_hf_files(tokenizer_json: &Path, tokenizer_config: Option<&Path>) -> Result<Tokenizer> {
        use super::regular::{read_regular_to_string, MAX_CONFIG_BYTES, MAX_TOKENIZER_BYTES};
        let json = read_regular_to_string(tokenizer_json, MAX_TOKENIZER_BYTES)?;
        let config = tokenizer_config.map(|p| read_regular_to_string(p, MAX_CONFIG_BYTES)).transpose()?;
        let origin = tokenizer_config.unwrap_or(tokenizer_json).display().to_string();
        Self::from_json_parts(&json, config.as_deref(), &origin)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_json.display())))
    }

    /// Parses the contents of a `tokenizer.json` (see [`Tokenizer::from_file`]).
    pub fn from_json_str(json: &str) -> Result<Tokenizer> {
        Self::from_json_parts(json, None, "tokenizer.json")
    }

    /// `tokenizer.json` text and optionally `tokenizer_config.json` text; `origin` names
    /// the config in errors.
    pub fn from_json_parts(json: &str, config: Option<&str>, origin: &str) -> Result<Tokenizer> {
        let checked = check_tokenizer_json(json)?;
        let full = guarded("parsing tokenizer.json", || checked.json.parse::<tokenizers::Tokenizer>())?;
        // The crate gives an added token the id its content has, or the next free one,
        // whatever the file says: a different id is a silently different model input.
        for (i, content, id) in &checked.added {
            let got = full.token_to_id(content);
            if got != Some(*id as u32) {
                return Err(Error::Tokenizer(format!(
                    "tokenizer.json: added_tokens[{i}] '{content}' has id {id} in the file, but the \
                     tokenizer gives it {}: duplicate ids, or ids beyond the vocabulary, are not supported",
                    got.map_or("none".into(), |g| g.to_string())
                )));
            }
        }
        // Without the flags of tokenizer_config.json, what the post-processor does to a
        // probe decides whether BOS and EOS are added.
        let probe = |with: bool| -> Result<Vec<u32>> {
            Ok(guarded("probing the post-processor", || full.encode("a", with))?.get_ids().to_vec())
        };
        let (bare, with_specials) = (probe(false)?, probe(true)?);
        let mut tok = Tokenizer::assemble(full, checked.growth);
        let Some(config) = config else { return Ok(tok) };
        let cfg: serde_json::Value =
            serde_json::from_str(config).map_err(|e| Error::Tokenizer(format!("{origin}: {e}")))?;
        let bad = |key: &str, why: &str| Error::Tokenizer(format!("{origin}: key '{key}': {why}"));
        let id_of = |key: &str| -> Result<Option<u32>> {
            match cfg.get(key).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => {
                    let content = token_content(v).ok_or_else(|| bad(key, "expected a token string"))?;
                    tok.inner
                        .token_to_id(content)
                        .map(Some)
                        .ok_or_else(|| bad(key, &format!("'{content}' is not in the vocabulary")))
                }
            }
        };
        let (bos, eos) = (id_of("bos_token")?, id_of("eos_token")?);
        let flag = |key: &str| -> Result<Option<bool>> {
            match cfg.get(key).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => v.as_bool().map(Some).ok_or_else(|| bad(key, "expected true or false")),
            }
        };
        let (add_bos, add_eos) = (flag("add_bos_token")?, flag("add_eos_token")?);
        let starts = bos.is_some_and(|b| {
            with_specials.len() > bare.len() && with_specials.first() == Some(&b) && bare.first() != Some(&b)
        });
        let ends = eos.is_some_and(|e| {
            with_specials.len() > bare.len() && with_specials.last() == Some(&e) && bare.last() != Some(&e)
        });
        tok.bos_token_id = bos;
        tok.eos_token_id = eos;
        tok.add_bos = add_bos.unwrap_or(starts);
        tok.add_eos = add_eos.unwrap_or(ends);
        tok.chat_template = cfg.get("chat_template").and_then(serde_json::Value::as_str).map(str::to_owned);
        tok.check_flags(origin)?;
        Ok(tok)
    }

    /// A `tokenizer_config.json` for this tokenizer, loadable by transformers'
    /// `AutoTokenizer` (`PreTrainedTokenizerFast` over the `tokenizer.json` of
    /// [`Tokenizer::to_json_string_for_export`]) and by [`Tokenizer::from_json_parts`].
    pub fn config_json(&self, model_max_length: usize) -> serde_json::Value {
        let name = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let mut v = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": name(self.bos_token_id),
            "eos_token": name(self.eos_token_id),
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "clean_up_tokenization_spaces": false,
            "model_max_length": model_max_length,
        });
        if let Some(t) = &self.chat_template {
            v["chat_template"] = t.clone().into();
        }
        v
    }

    /// The `tokenizer.json` text for an exported directory: [`Tokenizer::to_json_string`]
    /// with a post-processor that adds BOS/EOS as [`Tokenizer::encode_document`] does, so
    /// that transformers' tokenizer produces the same ids.
    pub fn to_json_string_for_export(&self) -> Result<String> {
        use tokenizers::processors::template::TemplateProcessing;
        if !self.add_bos && !self.add_eos {
            return self.to_json_string();
        }
        let name = |id: Option<u32>| -> Result<(String, u32)> {
            let id = id.ok_or_else(|| Error::Tokenizer("a special token to add has no id".into()))?;
            let s = self.inner.id_to_token(id).ok_or_else(|| Error::Tokenizer(format!("id {id} has no token")))?;
            Ok((s, id))
        };
        let mut single = Vec::new();
        let mut specials = Vec::new();
        if self.add_bos {
            let (s, id) = name(self.bos_token_id)?;
            single.push(s.clone());
            specials.push((s, id));
        }
        single.push("$A".to_string());
        if self.add_eos {
            let (s, id) = name(self.eos_token_id)?;
            single.push(s.clone());
            if !specials.iter().any(|(t, _)| *t == s) {
                specials.push((s, id));
            }
        }
        let single = single.join(" ");
        let pair = format!("{single} {}", single.replace("$A", "$B:1"));
        let template = TemplateProcessing::builder()
            .try_single(single.as_str())
            .and_then(|b| b.try_pair(pair.as_str()))
            .map_err(|e| tok_err("building the post-processor", e))?
            .special_tokens(specials)
            .build()
            .map_err(|e| tok_err("building the post-processor", e))?;
        let mut full = self.inner.clone();
        full.with_post_processor(Some(template));
        full.to_string(false).map_err(|e| tok_err("serialising tokenizer", e))
    }

    /// The tokenizer as `tokenizer.json` text (compact), loadable with
    /// [`Tokenizer::from_json_str`] or by Hugging Face `tokenizers`.
    pub fn to_json_string(&self) -> Result<String> {
        self.full().to_string(false).map_err(|e| tok_err("serialising tokenizer", e))
    }

    /// Token ids of `text`; no BOS/EOS is added. A long text is tokenized in checked
    /// pieces ([`PieceEncoder`]), the ids exactly those of the whole text; one piece is
    /// at most [`DEFAULT_MAX_PIECE_BYTES`] after the normalizer's growth.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut enc = self.piece_encoder(DEFAULT_MAX_PIECE_BYTES);
        enc.push(text)?;
        enc.finish()
    }

    /// A [`PieceEncoder`] for long or streamed texts, taking at most `max_piece_bytes`
    /// after the normalizer's growth in one call (the input limit is that divided by the
    /// growth bound).
    pub fn piece_encoder(&self, max_piece_bytes: usize) -> PieceEncoder<'_> {
        PieceEncoder::new(&self.inner, max_piece_bytes / self.growth.max(1))
    }

    /// Token ids of one document: [`Tokenizer::encode`] with BOS before and EOS after when
    /// the tokenizer's files ask for them.
    pub fn encode_document(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.document_bos().into_iter().collect();
        ids.extend(self.encode(text)?);
        ids.extend(self.document_eos());
        Ok(ids)
    }

    /// The BOS id [`Tokenizer::encode_document`] puts before a document, if any.
    pub fn document_bos(&self) -> Option<u32> {
        self.bos_token_id.filter(|_| self.add_bos)
    }

    /// The EOS id [`Tokenizer::encode_document`] puts after a document, if any.
    pub fn document_eos(&self) -> Option<u32> {
        self.eos_token_id.filter(|_| self.add_eos)
    }

    /// Whether [`Tokenizer::encode_document`] starts with BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether [`Tokenizer::encode_document`] ends with EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// The chat template (GGUF `tokenizer.chat_template`, or `tokenizer_config.json`'s).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Text of `ids`, special tokens included. Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let size = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= size) {
            return Err(Error::Tokenizer(format!("cannot decode id {bad}: vocabulary has {size} tokens")));
        }
        guarded("decoding", || self.inner.decode(ids, false))
    }

    /// One more than the largest id a token has, added tokens included: every id
    /// [`Tokenizer::encode`] gives is below it (a model's embedding needs at least as many
    /// rows).
    pub fn vocab_size(&self) -> usize {
        self.id_bound
    }

    /// Id of a token string (e.g. `"<|im_end|>"`), if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary string of `id` (e.g. `"<|im_end|>"`), if the id has one: what chat
    /// templates see as `bos_token` and `eos_token`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// End-of-sequence id, from GGUF `tokenizer.ggml.eos_token_id`, `tokenizer_config.json`,
    /// or set by the caller.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// Beginning-of-sequence id from GGUF metadata or `tokenizer_config.json` (never added by
    /// [`Tokenizer::encode`]).
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
        // An unknown pre-tokenizer name is refused by name, not approximated.
        let e = Tokenizer::from_gguf(&toy_gguf("llama-bpe")).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.pre") && e.contains("llama-bpe"), "{e}");
        // No BOS/EOS is added unless the file says so.
        assert!(!t.adds_bos() && !t.adds_eos());
        assert_eq!(t.encode_document("ab").unwrap(), [6]);
    }

    /// `tokenizer.ggml.add_bos_token` puts BOS before every document; unknown keys and
    /// `add_space_prefix = true` are refused by name.
    #[test]
    fn gguf_flags_are_read_or_refused() {
        let base = || {
            let mut w = GgufWriter::new();
            w.add_str("tokenizer.ggml.model", "gpt2")
                .add_str_array("tokenizer.ggml.tokens", &["<s>", "a", "b", "ab"])
                .add_str_array("tokenizer.ggml.merges", &["a b"])
                .add_u32("tokenizer.ggml.bos_token_id", 0);
            w
        };
        let open = |w: &GgufWriter, name: &str| {
            let path = test_dir("tokenizer").join(name);
            w.write(&path).unwrap();
            Tokenizer::from_gguf(&GgufFile::open(&path).unwrap())
        };
        let mut w = base();
        w.add_metadata("tokenizer.ggml.add_bos_token", GgufValue::Bool(true));
        let t = open(&w, "bos.gguf").unwrap();
        assert!(t.adds_bos());
        assert_eq!(t.encode("ab").unwrap(), [3]);
        assert_eq!(t.encode_document("ab").unwrap(), [0, 3]);
        let mut w = base();
        w.add_metadata("tokenizer.ggml.add_space_prefix", GgufValue::Bool(true));
        let e = open(&w, "space.gguf").unwrap_err().to_string();
        assert!(e.contains("add_space_prefix"), "{e}");
        let mut w = base();
        w.add_u32("tokenizer.ggml.whatever", 1);
        let e = open(&w, "unknown.gguf").unwrap_err().to_string();
        assert!(e.contains("'tokenizer.ggml.whatever'"), "{e}");
        let mut w = base();
        w.add_metadata("tokenizer.ggml.add_eos_token", GgufValue::Bool(true));
        let e = open(&w, "eos.gguf").unwrap_err().to_string();
        assert!(e.contains("no EOS token"), "{e}");
    }

    #[test]
    fn byte_level_tokenizer_is_one_id_per_byte() {
        let t = Tokenizer::byte_level().unwrap();
        assert_eq!(t.vocab_size(), 258);
        let text = "Call me Ishmael. ünï 42";
        let ids = t.encode_document(text).unwrap();
        assert_eq!(ids.len(), 1 + text.len());
        assert_eq!(ids[0], 256);
        assert!(ids[1..].iter().all(|&i| i < 256));
        assert_eq!(t.decode(&ids[1..]).unwrap(), text);
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

#[cfg(test)]
mod hostile {
    use super::*;

    /// A small valid byte-level tokenizer.json to damage.
    fn base() -> serde_json::Value {
        serde_json::from_str(&Tokenizer::byte_level().unwrap().to_json_string().unwrap()).unwrap()
    }

    fn build(v: &serde_json::Value) -> Result<Tokenizer> {
        // With a tokenizer_config, so that the post-processor is probed too.
        let t = Tokenizer::from_json_parts(&v.to_string(), Some(r#"{"bos_token": "<s>"}"#), "tokenizer_config.json")?;
        t.encode("Call me Ishmael. Some years ago")?;
        t.decode(&[40, 41, 256])?;
        Ok(t)
    }

    /// The damaged tokenizers of the hostile-file campaign: each is refused with an error,
    /// or (padding, truncation) ignored, never a panic or a hang.
    #[test]
    fn damaged_tokenizer_json_is_refused_or_ignored() {
        use serde_json::json;
        let refused: Vec<(&str, serde_json::Value, &str)> = vec![
            ("normalizer", json!({"type": "Precompiled", "precompiled_charsmap": ""}), "Precompiled"),
            ("normalizer", json!({"type": "Precompiled", "precompiled_charsmap": "AAAAAAAA////"}), "Precompiled"),
            ("normalizer", json!({"type": "Replace", "pattern": {"String": ""}, "content": "x"}), "non-empty pattern"),
            (
                "normalizer",
                json!({"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"Regex": ""}, "content": ""}]}),
                "non-empty pattern",
            ),
            ("normalizer", json!({"type": "NoSuch"}), "unknown type"),
            (
                "pre_tokenizer",
                json!({"type": "Split", "pattern": {"Regex": "(("}, "behavior": "Isolated", "invert": false}),
                "Oniguruma",
            ),
            ("decoder", json!({"type": "Replace", "pattern": {"String": ""}, "content": "a"}), "non-empty pattern"),
            ("decoder", json!({"type": "Sequence", "decoders": "ByteLevel"}), "Sequence without"),
            ("decoder", json!({"type": "Metaspace", "replacement": 7}), "parsing tokenizer.json"),
            ("decoder", json!({"nonsense": 1}), "no \"type\""),
            (
                "post_processor",
                json!({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<none>", "type_id": 0}}], "pair": [], "special_tokens": {}}),
                "not defined",
            ),
        ];
        for (field, value, why) in refused {
            let mut v = base();
            v[field] = value.clone();
            match build(&v) {
                Err(e) => assert!(e.to_string().contains(why), "{field} = {value}: {e}"),
                Ok(_) => panic!("{field} = {value} was accepted"),
            }
        }
        for (field, value) in [
            ("truncation", json!({"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 4})),
            (
                "padding",
                json!({"strategy": {"Fixed": 100000000}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<s>"}),
            ),
        ] {
            let mut v = base();
            v[field] = value;
            let t = build(&v).unwrap_or_else(|e| panic!("{field}: {e}"));
            assert_eq!(t.encode("abc").unwrap().len(), 3, "{field} is not ignored");
        }
        let mut v = base();
        v["added_tokens"] = json!([{"id": 5, "content": "", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}]);
        assert!(build(&v).unwrap_err().to_string().contains("added_tokens[0]"));
        let mut v = base();
        v["model"] = json!({"type": "Unigram", "unk_id": 7, "vocab": [["a", 0.0]]});
        assert!(build(&v).unwrap_err().to_string().contains("unk_id"));
    }

    /// A chain of `Replace` steps that each grow the text (the hostile tokenizer that
    /// aborted the process) is refused at load by its growth bound; LLaMA-2's own chain
    /// (×4 for the prepended `▁`, ×3 for each space) is accepted.
    #[test]
    fn normalizers_that_grow_the_text_without_bound_are_refused() {
        use serde_json::json;
        let grow = json!({"type": "Replace", "pattern": {"String": "a"}, "content": "aaaa"});
        let mut v = base();
        v["normalizer"] = json!({"type": "Sequence", "normalizers": vec![grow; 40]});
        let e = build(&v).unwrap_err().to_string();
        assert!(e.contains("normalizer") && e.contains(&format!("×{MAX_GROWTH}")), "{e}");
        let mut v = base();
        v["normalizer"] = json!({"type": "Replace", "pattern": {"Regex": "x?"}, "content": "y".repeat(200)});
        assert!(build(&v).unwrap_err().to_string().contains("longer"));
        let mut v = base();
        v["normalizer"] = json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
        assert_eq!(build(&v).unwrap().growth, 4 * 3 * 2);
    }

    /// Two tokens with one id, and added tokens whose ids the library would silently
    /// change (a duplicate, or an id beyond the vocabulary), are refused by name; the
    /// vocabulary size covers every id a token has.
    #[test]
    fn token_ids_are_unique_and_as_the_file_says() {
        use serde_json::json;
        let mut v = base();
        v["model"]["vocab"]["zz"] = json!(5);
        let e = build(&v).unwrap_err().to_string();
        assert!(e.contains("both have id 5") && e.contains("'zz'"), "{e}");
        let added = |id: u64, content: &str| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        };
        let mut v = base();
        let mut list = v["added_tokens"].as_array().unwrap().clone();
        list.push(added(100_000, "<extra>"));
        v["added_tokens"] = json!(list);
        let e = build(&v).unwrap_err().to_string();
        assert!(e.contains("'<extra>'") && e.contains("100000") && e.contains("258"), "{e}");
        let mut v = base();
        let mut list = v["added_tokens"].as_array().unwrap().clone();
        list.push(added(256, "<other>"));
        v["added_tokens"] = json!(list);
        let e = build(&v).unwrap_err().to_string();
        assert!(e.contains("'<other>'") && e.contains("id 256"), "{e}");
        // A hole in the vocabulary moves the added tokens' ids: refused.
        let mut v = base();
        v["model"]["vocab"]["far"] = json!(1000);
        let e = build(&v).unwrap_err().to_string();
        assert!(e.contains("'<s>' has id 256") && e.contains("gives it 257"), "{e}");
        // Without added tokens it is accepted, and the size bounds the largest id, not
        // the count.
        v["added_tokens"] = json!([]);
        let t = Tokenizer::from_json_str(&v.to_string()).unwrap();
        assert_eq!(t.vocab_size(), 1001);
        assert_eq!(Tokenizer::byte_level().unwrap().vocab_size(), 258);
    }
}
