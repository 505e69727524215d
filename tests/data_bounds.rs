//! Data readers within bounds (issue 22, item 1): what reading and tokenizing text may
//! take is measured here by a counting global allocator (live bytes and their peak),
//! and the commands that read data are run on the inputs that used to abort them.
//!
//! - a one-line 20 MB text (the tokenizers library alone held ~3 GB for it) is tokenized
//!   in pieces within tens of MiB;
//! - a `.jsonl.gz` whose one line inflates to 1 GiB is refused by line and limit after
//!   reading 16 MiB of it, and one of many lines that inflates past `--max-data-bytes`
//!   is refused when read whole but gives calibration windows from its first lines;
//! - `eval`, `prune` and `finetune` on such a file exit 1 with the named error (they
//!   aborted with SIGABRT, exit 134);
//! - a panic caught inside the tokenizers library prints nothing before the clean error.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sparsetune::data::{calibration_windows, tokenize_files, DataLimits};
use sparsetune::io::{asset_path, Tokenizer};
use sparsetune::model::llama;
use sparsetune::DType;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts the bytes live.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            PEAK.fetch_max(LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            PEAK.fetch_max(LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            PEAK.fetch_max(LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests of this binary take turns (libtest runs them on several threads, and a
/// measurement counts every thread's allocations).
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` and returns its result with the peak of live bytes above those live before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

const MIB: usize = 1 << 20;

/// A gzip file of concatenated members (as `MultiGzDecoder` reads them): `head`, then
/// `repeat` members each inflating to `chunk` (compressed once), then `tail`. Inflates to
/// gigabytes from a file of a megabyte.
fn gzip_members(path: &Path, head: &[u8], chunk: &[u8], repeat: usize, tail: &[u8]) {
    let member = |bytes: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    };
    let body = member(chunk);
    let mut out = member(head);
    for _ in 0..repeat {
        out.extend_from_slice(&body);
    }
    out.extend(member(tail));
    std::fs::write(path, out).unwrap();
}

/// A `.jsonl.gz` whose one line inflates to `gib` GiB.
fn one_line_bomb(dir: &Path, gib: usize) -> PathBuf {
    let path = dir.join("one-line.jsonl.gz");
    gzip_members(&path, b"{\"text\": \"", &vec![b'a'; MIB], gib << 10, b"\"}\n");
    path
}

/// The default tokenizer, or a byte-level one when the assets are not there.
fn tokenizer() -> Tokenizer {
    match asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") {
        Some(p) => llama::load_tokenizer(&p).unwrap(),
        None => Tokenizer::byte_level().unwrap(),
    }
}

#[test]
fn a_long_one_line_text_is_tokenized_in_bounded_memory() {
    let _turn = turn();
    let dir = common::scratch("bounds-text");
    let words = "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money \
                 in my purse, and nothing particular to interest me on shore, I thought I would sail about. ";
    let reps = 20_000_000 / words.len();
    let text = words.repeat(reps);
    let path = dir.join("one-line.txt");
    std::fs::write(&path, &text).unwrap();
    let tok = tokenizer();
    let lim = DataLimits::default();
    let ((ids, whole), peak) =
        peak_of(|| tokenize_files(&tok, std::slice::from_ref(&path), "text", &lim, None).unwrap());
    assert!(whole);
    // The ids themselves are 4 bytes per token; the tokenizer's own share stays small.
    let own = peak.saturating_sub(ids.capacity() * 4);
    println!(
        "20 MB one line: {} tokens, peak {:.1} MiB ({:.1} MiB besides the ids)",
        ids.len(),
        peak as f64 / MIB as f64,
        own as f64 / MIB as f64
    );
    assert!(own < 96 * MIB, "tokenizing 20 MB took {own} bytes besides the ids");
    // The text repeats a sentence: the first and last repetitions tokenize as in a text
    // of two, every one between as the middle one of three.
    let n = |k: usize| tok.encode_document(&words.repeat(k)).unwrap();
    let (two, three, five) = (n(2), n(3), n(5));
    assert_eq!(ids.len(), two.len() + (reps - 2) * (three.len() - two.len()));
    assert_eq!(ids[..five.len() - 20], five[..five.len() - 20]);
    common::remove_scratch(&dir);
}

#[test]
fn a_decompression_bomb_is_refused_as_it_inflates() {
    let _turn = turn();
    let dir = common::scratch("bounds-gz");
    let tok = tokenizer();
    let lim = DataLimits::default();
    let bomb = one_line_bomb(&dir, 1);
    let (err, peak) =
        peak_of(|| tokenize_files(&tok, std::slice::from_ref(&bomb), "text", &lim, Some(16)).unwrap_err().to_string());
    assert!(
        err.contains("one-line.jsonl.gz") && err.contains("line 1") && err.contains("--max-document-bytes"),
        "{err}"
    );
    assert!(peak < 64 * MIB, "peak {peak}");

    // Many lines, 4 GiB inflated: calibration takes its windows from the first lines;
    // reading it whole stops at the file limit.
    let many = dir.join("many.jsonl.gz");
    let lines = "{\"text\": \"The whale, the sea, the ship and the crew, in many short documents.\"}\n".repeat(8000);
    gzip_members(&many, b"", lines.as_bytes(), (4 << 30) / lines.len(), b"");
    let (windows, peak) =
        peak_of(|| calibration_windows(&tok, std::slice::from_ref(&many), 4, 64, "text", &lim).unwrap());
    assert_eq!(windows.len(), 4);
    assert!(peak < 32 * MIB, "calibration peak {peak}");
    let small = DataLimits { max_data_bytes: 32 << 20, ..lim };
    let (err, peak) =
        peak_of(|| tokenize_files(&tok, std::slice::from_ref(&many), "text", &small, None).unwrap_err().to_string());
    assert!(err.contains("many.jsonl.gz") && err.contains("--max-data-bytes") && err.contains("33554432"), "{err}");
    // What may grow up to the limit is the ids of 32 MiB of text (4 bytes each, in a Vec
    // that doubles): ~30 MB with the model's BPE, 128 MiB with the byte-level fallback
    // tokenizer used when the asset is absent.
    let tokens_per_byte = tok.encode(&lines).unwrap().len() as f64 / lines.len() as f64;
    let ids = 4.0 * tokens_per_byte * small.max_data_bytes as f64;
    assert!((peak as f64) < 8.0 * MIB as f64 + 2.0 * ids, "peak {peak}, ids of the data limit {ids}");
    common::remove_scratch(&dir);
}

/// The commands that aborted on a bomb (exit 134) now stop with the named error.
#[test]
fn commands_refuse_a_bomb_by_name() {
    let _turn = turn();
    let dir = common::scratch("bounds-cli");
    let bomb = one_line_bomb(&dir, 1);
    let model = dir.join("tiny.safetensors");
    // An embedding with a row for each of the byte-level tokenizer's 258 ids.
    let config =
        sparsetune::model::llama::LlamaConfig { vocab_size: 260, ..sparsetune::model::llama::LlamaConfig::tiny() };
    let tiny = sparsetune::model::llama::Llama::random(&config, DType::F32, &sparsetune::Device::cpu(), 3).unwrap();
    llama::save_safetensors(&tiny, &model, DType::F32, Some(&Tokenizer::byte_level().unwrap()), &Default::default())
        .unwrap();
    let (m, b) = (model.to_str().unwrap(), bomb.to_str().unwrap());
    let out = dir.join("out.safetensors");
    let o = out.to_str().unwrap();
    let runs: [&[&str]; 3] = [
        &["eval", "--model", m, "--text", b, "--seq-len", "16"],
        &[
            "prune",
            "--model",
            m,
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            "--calib",
            b,
            "--calib-samples",
            "1",
            "--calib-seq-len",
            "16",
            "--out",
            o,
        ],
        &["finetune", "--model", m, "--data", b, "--steps", "1", "--seq-len", "16", "--out", o],
    ];
    for args in runs {
        let (code, _, err) = common::sparsetune(args);
        assert_eq!(code, 1, "{} exit {code}: {err}", args[0]);
        assert!(
            err.contains("one-line.jsonl.gz") && err.contains("line 1") && err.contains("--max-document-bytes"),
            "{}: {err}",
            args[0]
        );
        assert!(!err.contains("panicked") && !out.exists(), "{}: {err}", args[0]);
    }
    // Raising the limit is what the message says to do: the record is then read (and
    // refused by the next limit, the file's).
    let mut args = runs[0].to_vec();
    args.extend(["--max-document-bytes", "4GiB", "--max-data-bytes", "64MiB"]);
    let (code, _, err) = common::sparsetune(&args);
    assert!(code == 1 && err.contains("--max-data-bytes") && err.contains("67108864"), "{err}");
    common::remove_scratch(&dir);
}

/// A tokenizer whose `Strip` decoder panics inside the library on a one-space token: the
/// panic becomes an error, and nothing is printed before it.
#[test]
fn a_panic_caught_inside_the_tokenizers_library_prints_nothing() {
    let mut v: serde_json::Value =
        serde_json::from_str(&Tokenizer::byte_level().unwrap().to_json_string().unwrap()).unwrap();
    v["decoder"] = serde_json::json!({"type": "Sequence", "decoders": [
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        {"type": "Strip", "content": " ", "start": 0, "stop": 3}]});
    if std::env::var_os("SPARSETUNE_PANIC_CHILD").is_some() {
        let tok = Tokenizer::from_json_str(&v.to_string()).unwrap();
        let space = tok.encode(" ").unwrap();
        match tok.decode(&space) {
            Err(e) => println!("decode error: {e}"),
            Ok(s) => println!("decoded {s:?}"),
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_panic_caught_inside_the_tokenizers_library_prints_nothing",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SPARSETUNE_PANIC_CHILD", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("decode error: tokenizer: decoding: the tokenizers library failed"), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked") && !stdout.contains("panicked"), "{stdout}\n{stderr}");
}
