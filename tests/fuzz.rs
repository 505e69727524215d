//! Hostile files: a seeded, structure-aware fuzz campaign over every kind of file the tool
//! reads, on the stable toolchain (issues 15 and 22).
//!
//! Seeds are small files generated here (no downloads): a tiny LLaMA as GGUF (with a
//! byte-level tokenizer in its metadata), as one safetensors file (config and tokenizer in
//! the metadata), in the compressed sparse-bitmask layout, as a Hugging Face directory
//! (config.json, tokenizer.json, tokenizer_config.json, model.safetensors), as a sharded
//! directory with an index, a Hugging Face directory with a LLaMA-2-style tokenizer
//! (normalizer, BPE, byte fallback: `tests/fixtures/tokenizers/llama2-style.json`), a
//! masked-LoRA training checkpoint, and data files (`.txt`, `.jsonl`, `.json` array,
//! `.jsonl.gz`, `.txt.gz`). Each case mutates one file of one seed — bytes (truncation, bit flips, interesting integers at aligned
//! offsets, chunks deleted or repeated), a safetensors header as JSON (shapes, dtypes,
//! offsets, and the config/tokenizer JSON inside its metadata), a JSON file as JSON
//! (numbers set to 0, −1, 2³¹−1, 2⁶³, 2⁶⁴−1, 10⁹, 1e300; types swapped, keys dropped,
//! strings emptied or lengthened), GGUF metadata values, a data file's record as JSON,
//! a compressed file's inflated text, a gzip bomb (up to 64 MiB of one repeated byte, with
//! or without line breaks), or any file replaced by something that is not a regular file
//! (a FIFO, a directory, a link to `/dev/zero`, a dangling or looping link) — and runs what
//! a user runs on it: open, tokenizer, load, one tiny window of evaluation and a Wanda
//! prune of the model; for the checkpoint, `resume` (resealed, so that its checksum does
//! not stop the case at the door) and one step; for a data file, calibration windows,
//! evaluation streams and a whole read, under limits of 2 MiB per file and 256 KiB per
//! record ([`DATA_LIMITS`]).
//!
//! A case passes when it loads or fails with an error; it fails on a panic, on taking more
//! than [`TIMEOUT`], or on any single allocation above [`ALLOC_BOUND`] (the inputs are
//! kilobytes: nothing they say may size more; a counting global allocator measures it).
//! Failing inputs are kept under `tests/fuzz-regressions/<id>/` and replayed first by
//! every campaign (a special file is kept as a small marker file, [`SPECIAL`]). Counts per
//! class are printed, and the campaign fails if the process's peak resident memory
//! (`VmHWM`) passes [`RSS_BOUND`].
//!
//! Short campaign (the test suite): `cargo test --test fuzz` (3,000 cases).
//! Long campaign: `SPARSETUNE_FUZZ_CASES=100000 cargo test --release --test fuzz -- --nocapture`
//! (`SPARSETUNE_FUZZ_SEED` picks another sequence).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use sparsetune::data::{calibration_windows, tokenize_files, window_streams, DataLimits};
use sparsetune::finetune::{checkpoint, LoraOptions, Repair, RepairMethod, RepairOptions, TrainConfig, TrainData};
use sparsetune::io::{GgufValue, GgufWriter, Tokenizer};
use sparsetune::model::llama::{
    self, save_model, ForwardOptions, Llama, LlamaConfig, ModelSource, OutputForm, OutputSpec,
};
use sparsetune::prune::{prune_model, Method, Pattern, PruneOptions};
use sparsetune::{DType, Device, Tensor};

/// The largest single allocation a case may make.
const ALLOC_BOUND: usize = 256 << 20;
/// Refused outright (the process aborts, the input stays on disk): beyond it a hostile
/// count would take the machine down.
const HARD_CAP: usize = 8 << 30;
/// A case slower than this fails; the watchdog aborts the campaign at four times it.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most the whole campaign may hold resident at once (`VmHWM`).
const RSS_BOUND: u64 = 2 << 30;
/// What a data case may read: far below the defaults, so that a bomb meets the bound
/// within a case's time.
const DATA_LIMITS: DataLimits = DataLimits { max_data_bytes: 2 << 20, max_document_bytes: 256 << 10 };
/// A file whose bytes start with this is written as a special file instead: the rest names
/// which ([`write_case`]).
const SPECIAL: &[u8] = b"\xffsparsetune-fuzz-special:";

struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only records sizes and refuses absurd ones
// (a null return, which the caller turns into an allocation error).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        if layout.size() > HARD_CAP {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        if layout.size() > HARD_CAP {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        if new_size > HARD_CAP {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What a case runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Entry {
    /// Open the model at this file (or the directory itself: ".") and use it.
    Model,
    /// Resume a masked-LoRA run from `ck.safetensors`.
    Resume,
    /// Read the data file named by the seed's `model` (JSON field `text`).
    Data,
}

/// A seed: named files and how they are used.
#[derive(Clone)]
struct Seed {
    name: &'static str,
    files: Vec<(String, Vec<u8>)>,
    /// The file (or "." for the directory) given as `--model`.
    model: &'static str,
    entry: Entry,
}

fn config() -> LlamaConfig {
    // Vocabulary above the byte-level tokenizer's 258 ids.
    LlamaConfig { vocab_size: 260, ..LlamaConfig::tiny() }
}

fn tiny() -> Llama {
    Llama::random(&config(), DType::F32, &Device::cpu(), 11).unwrap()
}

/// The LLaMA-2-style tokenizer fixture (vocabulary of 1,456 ids).
fn llama2_tokenizer() -> &'static Tokenizer {
    static TOK: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    TOK.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers/llama2-style.json");
        Tokenizer::from_file(path).unwrap()
    })
}

/// A few kilobytes of prose with punctuation, digits, accents and emoji, as documents.
fn documents() -> Vec<String> {
    let words = [
        "Call",
        "me",
        "Ishmael.",
        "Some",
        "years",
        "ago—never",
        "mind",
        "how",
        "long",
        "precisely—having",
        "little",
        "or",
        "no",
        "money",
        "in",
        "my",
        "purse,",
        "and",
        "nothing",
        "particular",
        "to",
        "interest",
        "me",
        "on",
        "shore,",
        "I",
        "thought",
        "I",
        "would",
        "sail",
        "about",
        "a",
        "little",
        "and",
        "see",
        "the",
        "watery",
        "part",
        "of",
        "the",
        "world.",
        "café",
        "naïve",
        "1851",
        "🐋",
        "Æsir",
        "東京",
        "\t",
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    (0..24)
        .map(|_| {
            let n = rng.random_range(20..90);
            (0..n).map(|_| words[rng.random_range(0..words.len())]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).take(1 << 20).read_to_end(&mut out).ok()?;
    Some(out)
}

fn jsonl(docs: &[String]) -> Vec<u8> {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        out.push_str(&serde_json::json!({"id": i, "text": d, "meta": {"source": "fuzz"}}).to_string());
        out.push('\n');
    }
    out.into_bytes()
}

fn read_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

/// The GGUF seed: the tiny model (Q/K rows as llama.cpp stores them do not matter here)
/// with a byte-level tokenizer in its metadata; `edit` replaces one metadata value.
fn gguf(m: &Llama, edit: Option<(&str, GgufValue)>) -> Vec<u8> {
    let c = &m.config;
    let tok = Tokenizer::byte_level().unwrap();
    // The token strings by id, as the vocabulary holds them, then BOS and EOS.
    let json: Value = serde_json::from_str(&tok.to_json_string().unwrap()).unwrap();
    let mut tokens = vec![String::new(); 256];
    for (s, id) in json["model"]["vocab"].as_object().unwrap() {
        tokens[id.as_u64().unwrap() as usize] = s.clone();
    }
    tokens.extend(["<s>".to_string(), "</s>".to_string()]);
    let mut types = vec![1i32; tokens.len()];
    types[256] = 3;
    types[257] = 3;
    let mut w = GgufWriter::new();
    common::add_gguf_llama_metadata(&mut w, c);
    w.add_str("tokenizer.ggml.model", "gpt2")
        .add_str("tokenizer.ggml.pre", "gpt2")
        .add_str_array("tokenizer.ggml.tokens", &tokens)
        .add_str_array::<&str>("tokenizer.ggml.merges", &[])
        .add_i32_array("tokenizer.ggml.token_type", &types)
        .add_u32("tokenizer.ggml.bos_token_id", 256)
        .add_u32("tokenizer.ggml.eos_token_id", 257);
    if let Some((k, v)) = edit {
        w.add_metadata(k, v);
    }
    for (part, t) in m.named_tensors().unwrap() {
        w.add_tensor_f32(&part.gguf_name(), t.dims(), &t.to_f32_vec().unwrap()).unwrap();
    }
    w.to_bytes().unwrap()
}

fn seeds(dir: &Path) -> Vec<Seed> {
    std::fs::create_dir_all(dir).unwrap();
    let m = tiny();
    let tok = Tokenizer::byte_level().unwrap();
    let mut out = Vec::new();
    out.push(Seed {
        name: "gguf",
        files: vec![("model.gguf".into(), gguf(&m, None))],
        model: "model.gguf",
        entry: Entry::Model,
    });

    let file = dir.join("single.safetensors");
    llama::save_safetensors(&m, &file, DType::F32, Some(&tok), &BTreeMap::new()).unwrap();
    out.push(Seed {
        name: "safetensors",
        files: vec![("model.safetensors".into(), std::fs::read(&file).unwrap())],
        model: "model.safetensors",
        entry: Entry::Model,
    });

    let mut pruned = m.clone();
    prune_model(&mut pruned, &[], &PruneOptions::new(Method::Magnitude, Pattern::Unstructured(0.5)), &mut |_| {})
        .unwrap();
    let file = dir.join("compressed.safetensors");
    llama::save_safetensors_as(
        &pruned,
        &file,
        DType::F32,
        llama::WeightLayout::SparseBitmask,
        Some(&tok),
        &BTreeMap::new(),
    )
    .unwrap();
    out.push(Seed {
        name: "compressed",
        files: vec![("model.safetensors".into(), std::fs::read(&file).unwrap())],
        model: "model.safetensors",
        entry: Entry::Model,
    });

    for (name, max) in [("hf-dir", 1u64 << 30), ("sharded", 12_000)] {
        let d = dir.join(name);
        let spec = OutputSpec {
            config: &m.config,
            source: None,
            tokenizer: &tok,
            dtype: DType::F32,
            metadata: BTreeMap::new(),
        };
        save_model(&m, &d, OutputForm::Directory { max_shard_bytes: max }, spec).unwrap();
        out.push(Seed {
            name: if max > 1 << 20 { "hf-dir" } else { "sharded" },
            files: read_dir(&d),
            model: ".",
            entry: Entry::Model,
        });
    }

    // A directory whose tokenizer has a normalizer, merges and byte fallback, with an
    // embedding as large as its vocabulary.
    let tok2 = llama2_tokenizer();
    let m2 = Llama::random(
        &LlamaConfig { vocab_size: tok2.vocab_size(), ..LlamaConfig::tiny() },
        DType::F32,
        &Device::cpu(),
        12,
    )
    .unwrap();
    let d = dir.join("hf-tok");
    let spec =
        OutputSpec { config: &m2.config, source: None, tokenizer: tok2, dtype: DType::F32, metadata: BTreeMap::new() };
    save_model(&m2, &d, OutputForm::Directory { max_shard_bytes: 1 << 30 }, spec).unwrap();
    out.push(Seed { name: "hf-tok", files: read_dir(&d), model: ".", entry: Entry::Model });

    let docs = documents();
    let text = docs.join("\n\n").into_bytes();
    let array = serde_json::to_vec(&docs.iter().map(|d| serde_json::json!({"text": d})).collect::<Vec<_>>()).unwrap();
    for (name, file, bytes) in [
        ("data-txt", "data.txt", text.clone()),
        ("data-jsonl", "data.jsonl", jsonl(&docs)),
        ("data-json", "data.json", array),
        ("data-jsonl-gz", "data.jsonl.gz", gzip(&jsonl(&docs))),
        ("data-txt-gz", "data.txt.gz", gzip(&text)),
    ] {
        out.push(Seed { name, files: vec![(file.into(), bytes)], model: file, entry: Entry::Data });
    }

    let (mut repair, data) = repair_run();
    repair.step(&data).unwrap();
    let ck = dir.join("ck.safetensors");
    repair.save(&ck).unwrap();
    out.push(Seed {
        name: "checkpoint",
        files: vec![("ck.safetensors".into(), std::fs::read(&ck).unwrap())],
        model: ".",
        entry: Entry::Resume,
    });
    out
}

/// The run a checkpoint resumes: masked LoRA on the tiny model pruned to 50%.
fn repair_run() -> (Repair, TrainData) {
    let mut m = tiny();
    prune_model(&mut m, &[], &PruneOptions::new(Method::Magnitude, Pattern::Unstructured(0.5)), &mut |_| {}).unwrap();
    let stream: Vec<u32> = (0..400).map(|i| (i * 7 % 250) as u32).collect();
    let data = TrainData::new(&[stream], 16).unwrap();
    let mut cfg = TrainConfig::new(3);
    cfg.seq_len = 16;
    let mut opts = RepairOptions::new(LoraOptions::new(2, 4.0));
    opts.init_samples = 0;
    (Repair::new(&m, RepairMethod::MaskedLora, opts, cfg, &data, &mut |_, _| {}).unwrap(), data)
}

// ---------------------------------------------------------------- mutations

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    255,
    65535,
    (1 << 31) - 1,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    1_000_000_000,
    1 << 62,
    1 << 63,
    u64::MAX,
    u64::MAX - 7,
];

fn mutate_bytes(rng: &mut ChaCha8Rng, b: &mut Vec<u8>) -> &'static str {
    if b.is_empty() {
        b.push(rng.random());
        return "bytes/grow";
    }
    // Headers hold the counts: aim there more often than not.
    let head = b.len().min(if rng.random_bool(0.7) { 4096 } else { usize::MAX });
    match rng.random_range(0..5) {
        0 => {
            let at = rng.random_range(0..b.len());
            b.truncate(at);
            "bytes/truncate"
        }
        1 => {
            for _ in 0..rng.random_range(1..=8) {
                let at = rng.random_range(0..head);
                b[at] ^= 1 << rng.random_range(0..8);
            }
            "bytes/bitflip"
        }
        2 => {
            let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
            let width = [4usize, 8][rng.random_range(0..2)];
            if b.len() >= width {
                let at = rng.random_range(0..=(head.min(b.len()) - width.min(head))) / width * width;
                let at = at.min(b.len() - width);
                b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            "bytes/interesting"
        }
        3 => {
            let a = rng.random_range(0..b.len());
            let n = rng.random_range(1..=64.min(b.len() - a));
            b.drain(a..a + n);
            "bytes/delete"
        }
        _ => {
            let a = rng.random_range(0..b.len());
            let n = rng.random_range(1..=64.min(b.len() - a));
            let chunk = b[a..a + n].to_vec();
            let at = rng.random_range(0..=b.len());
            b.splice(at..at, chunk);
            "bytes/repeat"
        }
    }
}

fn interesting_json(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_range(0..12) {
        0 => Value::from(INTERESTING[rng.random_range(0..INTERESTING.len())]),
        1 => Value::from(-1),
        2 => Value::from(1e300),
        3 => Value::from(-0.5),
        4 => Value::Null,
        5 => Value::from(""),
        6 => Value::from("x".repeat(rng.random_range(1..5000))),
        7 => Value::from(true),
        8 => Value::Array(vec![]),
        9 => serde_json::json!({}),
        10 => Value::from(i64::MIN),
        _ => Value::from(rng.random_range(0..1000)),
    }
}

/// Every path (keys and indices) into `v`.
fn json_paths(v: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                prefix.push(Value::from(k.clone()));
                json_paths(x, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate().take(64) {
                prefix.push(Value::from(i));
                json_paths(x, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at_path<'a>(v: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = match p {
            Value::String(k) => cur.get_mut(k.as_str())?,
            Value::Number(i) => cur.get_mut(i.as_u64()? as usize)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// One structural edit of a JSON document; strings that are JSON themselves (the config
/// and tokenizer in safetensors metadata) are edited inside.
fn mutate_json(rng: &mut ChaCha8Rng, v: &mut Value) -> &'static str {
    let mut paths = Vec::new();
    json_paths(v, &mut Vec::new(), &mut paths);
    let path = paths[rng.random_range(0..paths.len())].clone();
    let Some(node) = at_path(v, &path) else { return "json/none" };
    if let Value::String(s) = node {
        if let Ok(mut inner) = serde_json::from_str::<Value>(s) {
            if inner.is_object() || inner.is_array() {
                let what = mutate_json(rng, &mut inner);
                *s = inner.to_string();
                return match what {
                    "json/replace" => "json/nested-replace",
                    "json/remove" => "json/nested-remove",
                    _ => "json/nested-other",
                };
            }
        }
    }
    match rng.random_range(0..4) {
        0 | 1 => {
            *node = interesting_json(rng);
            "json/replace"
        }
        2 => match node {
            Value::Object(m) if !m.is_empty() => {
                let k = m.keys().nth(rng.random_range(0..m.len())).cloned().unwrap();
                m.remove(&k);
                "json/remove"
            }
            Value::Array(a) if !a.is_empty() => {
                let i = rng.random_range(0..a.len());
                if rng.random_bool(0.5) {
                    a.remove(i);
                } else {
                    let x = a[i].clone();
                    a.insert(i, x);
                }
                "json/array"
            }
            _ => {
                *node = interesting_json(rng);
                "json/replace"
            }
        },
        _ => {
            if let Value::Object(m) = node {
                m.insert(format!("fuzz_{}", rng.random_range(0..100)), interesting_json(rng));
                "json/add-key"
            } else {
                *node = Value::Array(vec![node.clone()]);
                "json/wrap"
            }
        }
    }
}

/// A safetensors file with its header edited as JSON (data kept).
fn mutate_safetensors_header(rng: &mut ChaCha8Rng, b: &mut Vec<u8>) -> Option<&'static str> {
    let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
    let header: Value = serde_json::from_slice(b.get(8..8usize.checked_add(n)?)?).ok()?;
    let mut header = header;
    let what = mutate_json(rng, &mut header);
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&b[8 + n..]);
    *b = out;
    Some(what)
}

/// A special file in place of a regular one, as a marker [`write_case`] turns into it.
fn special(rng: &mut ChaCha8Rng) -> (&'static str, Vec<u8>) {
    let what = ["fifo", "dir", "dev-zero", "dangling", "loop"][rng.random_range(0..5)];
    (what, [SPECIAL, what.as_bytes()].concat())
}

/// A gzip bomb: up to 64 MiB of one byte, in one line or in lines of 1 KiB.
fn bomb(rng: &mut ChaCha8Rng) -> (&'static str, Vec<u8>) {
    let mut text = vec![b'a'; 1usize << rng.random_range(20..=26)];
    if rng.random_bool(0.5) {
        return ("gz/bomb-one-line", gzip(&text));
    }
    for i in (1023..text.len()).step_by(1024) {
        text[i] = b'\n';
    }
    ("gz/bomb-lines", gzip(&text))
}

/// One edit of a data file's contents: a JSON-lines record or a JSON array as JSON, or
/// bytes, or one long line.
fn mutate_text(rng: &mut ChaCha8Rng, name: &str, b: &mut Vec<u8>) -> &'static str {
    if rng.random_bool(0.05) {
        // One record longer than the per-record bound, or a text that never breaks.
        let n = rng.random_range(200_000..600_000);
        let chunk: Vec<u8> = b.iter().copied().filter(|&c| c != b'\n').take(64).collect();
        let mut long: Vec<u8> = chunk.iter().copied().cycle().take(n).collect();
        if name.contains(".json") {
            long = serde_json::json!({"text": String::from_utf8_lossy(&long)}).to_string().into_bytes();
        }
        b.extend_from_slice(&long);
        return "text/long-record";
    }
    if name.contains(".jsonl") && rng.random_bool(0.6) {
        let mut lines: Vec<Vec<u8>> = b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
        let i = rng.random_range(0..lines.len());
        let what = match serde_json::from_slice::<Value>(&lines[i]) {
            Ok(mut v) => {
                let what = mutate_json(rng, &mut v);
                lines[i] = v.to_string().into_bytes();
                what
            }
            Err(_) => mutate_bytes(rng, &mut lines[i]),
        };
        *b = lines.join(&b'\n');
        return what;
    }
    if name.ends_with(".json") && rng.random_bool(0.6) {
        if let Ok(mut v) = serde_json::from_slice::<Value>(b) {
            let what = mutate_json(rng, &mut v);
            *b = v.to_string().into_bytes();
            return what;
        }
    }
    mutate_bytes(rng, b)
}

/// One case of a data seed.
fn mutate_data(rng: &mut ChaCha8Rng, name: &str, b: &mut Vec<u8>) -> String {
    if !name.ends_with(".gz") {
        return format!("text/{}", mutate_text(rng, name, b).trim_start_matches("text/"));
    }
    match rng.random_range(0..10) {
        0 => {
            let (what, bytes) = bomb(rng);
            *b = bytes;
            what.into()
        }
        1..=4 => match gunzip(b) {
            Some(mut inner) => {
                let what = mutate_text(rng, name.trim_end_matches(".gz"), &mut inner);
                *b = gzip(&inner);
                format!("gz/inflated-{}", what.replace('/', "-"))
            }
            None => format!("gz/{}", mutate_bytes(rng, b).trim_start_matches("bytes/")),
        },
        _ => format!("gz/{}", mutate_bytes(rng, b).trim_start_matches("bytes/")),
    }
}

/// One case: a seed with one file mutated.
fn mutate(rng: &mut ChaCha8Rng, seed: &Seed, base: &Llama) -> (String, Vec<(String, Vec<u8>)>) {
    let mut files = seed.files.clone();
    if rng.random_bool(0.04) {
        let i = rng.random_range(0..files.len());
        let (what, marker) = special(rng);
        let name = files[i].0.clone();
        files[i].1 = marker;
        return (format!("{}:special/{what} {}", seed.name, name.rsplit('.').next().unwrap_or("")), files);
    }
    if seed.entry == Entry::Data {
        let what = mutate_data(rng, seed.model, &mut files[0].1);
        return (format!("{}:{what}", seed.name), files);
    }
    if seed.name == "gguf" && rng.random_bool(0.3) {
        // GGUF metadata: one value replaced, of any type the format has.
        let keys = [
            "llama.block_count",
            "llama.embedding_length",
            "llama.feed_forward_length",
            "llama.attention.head_count",
            "llama.attention.head_count_kv",
            "llama.vocab_size",
            "llama.context_length",
            "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon",
            "llama.rope.dimension_count",
            "llama.attention.key_length",
            "llama.rope.scaling.factor",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.pre",
            "general.architecture",
        ];
        let key = keys[rng.random_range(0..keys.len())];
        let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
        let value = match rng.random_range(0..6) {
            0 => GgufValue::U64(v),
            1 => GgufValue::U32(v as u32),
            2 => GgufValue::I64(v as i64),
            3 => GgufValue::F32(f32::from_bits(v as u32)),
            4 => GgufValue::String("x".repeat(rng.random_range(0..300))),
            _ => GgufValue::Bool(v % 2 == 1),
        };
        files[0].1 = gguf(base, Some((key, value)));
        return ("gguf/metadata".into(), files);
    }
    let i = rng.random_range(0..files.len());
    let (name, bytes) = &mut files[i];
    let kind = if name.ends_with(".json") {
        let what = match serde_json::from_slice::<Value>(bytes) {
            Ok(mut v) if rng.random_bool(0.8) => {
                let what = mutate_json(rng, &mut v);
                *bytes = v.to_string().into_bytes();
                what
            }
            _ => mutate_bytes(rng, bytes),
        };
        format!("{}/{what}", name.trim_end_matches(".json"))
    } else if name.ends_with(".safetensors") && rng.random_bool(0.6) {
        match mutate_safetensors_header(rng, bytes) {
            Some(what) => format!("header/{what}"),
            None => format!("file/{}", mutate_bytes(rng, bytes)),
        }
    } else {
        format!("file/{}", mutate_bytes(rng, bytes))
    };
    (format!("{}:{kind}", seed.name), files)
}

// ---------------------------------------------------------------- running

/// What a case did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Loaded,
    Refused,
    Panicked,
    Slow,
    OverAllocated,
}

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);
/// Panics outside a case (the harness's own assertions) are printed as usual.
static IN_CASE: AtomicBool = AtomicBool::new(false);

fn run_model(path: &Path) -> sparsetune::Result<()> {
    let cpu = Device::cpu();
    let src = ModelSource::open(path)?;
    let tok = src.tokenizer()?;
    let mut m = src.load(&cpu, DType::F32)?;
    let ids = tok.encode_document("Call me Ishmael. Some years ago")?;
    let window: Vec<u32> = ids.iter().take(8).copied().collect();
    if window.len() >= 2 {
        m.window_loss_sum(&window)?;
        let x = Tensor::from_vec(window[..window.len() - 1].to_vec(), [1, window.len() - 1], &cpu)?;
        m.forward(None, &x, ForwardOptions::default())?;
    }
    prune_model(&mut m, &[window], &PruneOptions::new(Method::Wanda, Pattern::Unstructured(0.5)), &mut |_| {})?;
    Ok(())
}

fn run_resume(dir: &Path) -> sparsetune::Result<()> {
    let path = dir.join("ck.safetensors");
    // Past the checksum, as a hostile author would be.
    if checkpoint::reseal(&path).is_err() {
        return checkpoint::load(&path).map(drop);
    }
    let (mut repair, data) = repair_run();
    repair.resume(&path)?;
    if !repair.done() {
        repair.step(&data)?;
    }
    Ok(())
}

/// What `eval`, `prune` and `finetune` do with a data file: calibration windows, evaluation
/// streams, and the whole file.
fn run_data(path: &Path) -> sparsetune::Result<()> {
    let tok = llama2_tokenizer();
    let files = [path.to_path_buf()];
    let calibration = calibration_windows(tok, &files, 2, 16, "text", &DATA_LIMITS);
    window_streams(tok, &files, "text", &DATA_LIMITS, 16, Some(4))?;
    tokenize_files(tok, &files, "text", &DATA_LIMITS, None)?;
    calibration.map(drop)
}

/// Runs one case in `dir` (its files already written).
fn run_case(dir: &Path, model: &str, entry: Entry) -> (Outcome, String, usize, Duration) {
    LARGEST.store(0, Ordering::Relaxed);
    *LAST_PANIC.lock().unwrap() = None;
    let start = Instant::now();
    IN_CASE.store(true, Ordering::Relaxed);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match entry {
        Entry::Model => run_model(&if model == "." { dir.to_path_buf() } else { dir.join(model) }),
        Entry::Resume => run_resume(dir),
        Entry::Data => run_data(&dir.join(model)),
    }));
    IN_CASE.store(false, Ordering::Relaxed);
    let (took, largest) = (start.elapsed(), LARGEST.load(Ordering::Relaxed));
    let (outcome, msg) = match result {
        Err(_) => (Outcome::Panicked, LAST_PANIC.lock().unwrap().clone().unwrap_or_default()),
        Ok(r) => {
            let msg = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
            if largest > ALLOC_BOUND {
                (Outcome::OverAllocated, format!("an allocation of {largest} bytes; {msg}"))
            } else if took > TIMEOUT {
                (Outcome::Slow, format!("{took:?}; {msg}"))
            } else if r.is_ok() {
                (Outcome::Loaded, msg)
            } else {
                (Outcome::Refused, msg)
            }
        }
    };
    (outcome, msg, largest, took)
}

/// Writes a case's files into a fresh `dir`; a [`SPECIAL`] marker becomes what it names.
fn write_case(dir: &Path, files: &[(String, Vec<u8>)]) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files {
        let path = dir.join(name);
        match bytes.strip_prefix(SPECIAL) {
            None => std::fs::write(&path, bytes).unwrap(),
            Some(b"fifo") => {
                let made = std::process::Command::new("mkfifo").arg(&path).status().is_ok_and(|s| s.success());
                assert!(made, "mkfifo {} failed", path.display());
            }
            Some(b"dir") => std::fs::create_dir(&path).unwrap(),
            Some(b"dev-zero") => std::os::unix::fs::symlink("/dev/zero", &path).unwrap(),
            Some(b"dangling") => std::os::unix::fs::symlink(dir.join("no-such-file"), &path).unwrap(),
            Some(b"loop") => std::os::unix::fs::symlink(&path, &path).unwrap(),
            Some(other) => panic!("unknown special file {}", String::from_utf8_lossy(other)),
        }
    }
}

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CaseInfo {
    class: String,
    model: String,
    entry: Entry,
    outcome: String,
    message: String,
}

#[test]
fn hostile_inputs_never_panic_hang_or_over_allocate() {
    std::panic::set_hook(Box::new(|info| {
        let loc = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if !IN_CASE.load(Ordering::Relaxed) {
            eprintln!("panicked: {payload}{loc}");
        }
        *LAST_PANIC.lock().unwrap() = Some(format!("{payload}{loc}"));
    }));
    let cases: usize = std::env::var("SPARSETUNE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let seed: u64 = std::env::var("SPARSETUNE_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let work = common::scratch("fuzz");
    let case_dir = work.join("case");
    // A case that hangs or aborts leaves its input in `case_dir`: the watchdog says where.
    let started = std::sync::Arc::new(AtomicU64::new(0));
    let done = std::sync::Arc::new(AtomicBool::new(false));
    {
        let (started, done, case_dir) = (started.clone(), done.clone(), case_dir.clone());
        let t0 = Instant::now();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            if done.load(Ordering::Relaxed) {
                return;
            }
            let since = t0.elapsed().as_secs().saturating_sub(started.load(Ordering::Relaxed));
            if since > 4 * TIMEOUT.as_secs() {
                eprintln!("fuzz: a case has run for {since} s; its input is in {}", case_dir.display());
                std::process::abort();
            }
        });
    }
    let t0 = Instant::now();
    let mark = |started: &AtomicU64| started.store(t0.elapsed().as_secs(), Ordering::Relaxed);

    // Replay the kept regressions first.
    let mut failures: Vec<String> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(regressions_dir()) {
        let mut dirs: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
        dirs.sort();
        for d in dirs {
            let info: CaseInfo = serde_json::from_str(&std::fs::read_to_string(d.join("case.json")).unwrap()).unwrap();
            let files: Vec<(String, Vec<u8>)> = read_dir(&d.join("files"));
            write_case(&case_dir, &files);
            mark(&started);
            let (outcome, msg, _, _) = run_case(&case_dir, &info.model, info.entry);
            if outcome >= Outcome::Panicked {
                failures.push(format!("regression {}: {outcome:?}: {msg}", d.display()));
            }
        }
    }

    let seeds = seeds(&work.join("seeds"));
    // Every seed is sound as generated.
    for s in &seeds {
        write_case(&case_dir, &s.files);
        let (outcome, msg, largest, _) = run_case(&case_dir, s.model, s.entry);
        assert_eq!(outcome, Outcome::Loaded, "seed {}: {msg} (largest allocation {largest})", s.name);
    }
    let base = tiny();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut counts: BTreeMap<String, [usize; 5]> = BTreeMap::new();
    let mut largest_seen = 0usize;
    let mut slowest = Duration::ZERO;
    for _ in 0..cases {
        let s = &seeds[rng.random_range(0..seeds.len())];
        let (class, files) = mutate(&mut rng, s, &base);
        write_case(&case_dir, &files);
        mark(&started);
        let (outcome, msg, largest, took) = run_case(&case_dir, s.model, s.entry);
        largest_seen = largest_seen.max(largest);
        slowest = slowest.max(took);
        let group = class.split('/').take(2).collect::<Vec<_>>().join("/");
        counts.entry(group).or_default()[outcome as usize] += 1;
        if outcome >= Outcome::Panicked {
            let id = format!(
                "{:016x}",
                files.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, (n, b)| {
                    n.bytes().chain(b.iter().copied()).fold(h, |h, x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
                })
            );
            let keep = regressions_dir().join(format!("{}-{id}", s.name));
            write_case(&keep.join("files"), &files);
            let info = CaseInfo {
                class: class.clone(),
                model: s.model.into(),
                entry: s.entry,
                outcome: format!("{outcome:?}"),
                message: msg.clone(),
            };
            std::fs::write(keep.join("case.json"), serde_json::to_string_pretty(&info).unwrap()).unwrap();
            failures.push(format!("{class}: {outcome:?}: {msg} (kept in {})", keep.display()));
        }
    }
    done.store(true, Ordering::Relaxed);
    let rss = peak_rss();
    println!(
        "{cases} cases (seed {seed}) in {:.1} s; largest allocation {largest_seen} bytes, slowest case {slowest:?}, \
         peak resident {:.1} MiB",
        t0.elapsed().as_secs_f64(),
        rss as f64 / (1u64 << 20) as f64
    );
    println!("{:<44} {:>7} {:>7} {:>7} {:>7} {:>7}", "class", "loaded", "refused", "panic", "slow", "alloc");
    let mut total = [0usize; 5];
    for (class, c) in &counts {
        println!("{class:<44} {:>7} {:>7} {:>7} {:>7} {:>7}", c[0], c[1], c[2], c[3], c[4]);
        for (t, x) in total.iter_mut().zip(c) {
            *t += x;
        }
    }
    println!("{:<44} {:>7} {:>7} {:>7} {:>7} {:>7}", "total", total[0], total[1], total[2], total[3], total[4]);
    common::remove_scratch(&work);
    assert!(failures.is_empty(), "{} failing cases:\n{}", failures.len(), failures.join("\n"));
    assert!(rss <= RSS_BOUND, "peak resident memory {rss} bytes > {RSS_BOUND}");
}
