//! Loading refuses what cannot be one sound model, by name, instead of reading it
//! (issue 22): a directory holding both a sharded and a one-file model; shards of two
//! writes; a FIFO, a directory or an oversized side file where a file is expected (never
//! a hang); NaN or infinite weights; a tokenizer with more ids than the embedding has rows;
//! a stored shape the config does not imply (the error names the tensor and the file).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use half::{bf16, f16};
use serde_json::Value;
use sparsetune::io::{GgufWriter, SafetensorsEntry, SafetensorsFile, Tokenizer};
use sparsetune::model::llama::{self, save_model, Llama, LlamaConfig, ModelSource, OutputForm, OutputSpec, Part};
use sparsetune::{DType, Device};

/// The tiny model's config with a vocabulary above the byte-level tokenizer's 258 ids.
fn config() -> LlamaConfig {
    LlamaConfig { vocab_size: 260, ..LlamaConfig::tiny() }
}

fn model(seed: u64) -> Llama {
    Llama::random(&config(), DType::F32, &Device::cpu(), seed).unwrap()
}

fn byte_level() -> Tokenizer {
    Tokenizer::byte_level().unwrap()
}

/// `m` written by our writer as a Hugging Face directory (shards of at most `max_shard`
/// bytes; one `model.safetensors` when it all fits).
fn write_dir(m: &Llama, dir: &Path, max_shard: u64) {
    let tok = byte_level();
    let spec =
        OutputSpec { config: &m.config, source: None, tokenizer: &tok, dtype: DType::F32, metadata: BTreeMap::new() };
    save_model(m, dir, OutputForm::Directory { max_shard_bytes: max_shard }, spec).unwrap();
}

fn shard_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("model-") && n.ends_with(".safetensors"))
        .collect();
    v.sort();
    v
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Runs `f` on another thread and waits at most 20 s for it: a load that blocks (on a
/// FIFO) fails the test instead of hanging it.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("{what}: still blocked after 20 s"))
}

/// The error text of opening `path` and reading its tokenizer, or "loaded".
fn open_err(path: &Path) -> String {
    let p = path.to_path_buf();
    within(&format!("opening {}", path.display()), move || {
        match ModelSource::open(&p).and_then(|s| s.tokenizer().map(|_| ())) {
            Ok(()) => "loaded".to_string(),
            Err(e) => e.to_string(),
        }
    })
}

/// Replaces `path` with a FIFO; false (the test then skips) where `mkfifo` is missing.
fn make_fifo(path: &Path) -> bool {
    let _ = std::fs::remove_file(path);
    let made = std::process::Command::new("mkfifo").arg(path).status().is_ok_and(|s| s.success());
    if !made {
        println!("skipped: mkfifo unavailable");
    }
    made
}

// ------------------------------------------------------------------ stale or foreign parts

/// Issue 22 item 4a: a directory with both an index and `model.safetensors` is ambiguous
/// (the index used to win silently).
#[test]
fn an_index_beside_a_single_file_is_refused_by_name() {
    let m = model(1);
    let dir = common::scratch("both-forms").join("model");
    write_dir(&m, &dir, 12_000);
    assert!(dir.join("model.safetensors.index.json").is_file() && shard_names(&dir).len() > 1);
    ModelSource::open(&dir).unwrap();
    // A one-file model of another write beside the shards.
    let other = model(2);
    llama::save_safetensors(&other, &dir.join("model.safetensors"), DType::F32, None, &BTreeMap::new()).unwrap();
    let e = open_err(&dir);
    assert!(
        e.contains("model.safetensors.index.json") && e.contains("and model.safetensors") && e.contains("remove"),
        "{e}"
    );
    // Named explicitly, either one is what the user asked for.
    ModelSource::open(&dir.join("model.safetensors")).unwrap();
    ModelSource::open(&dir.join("model.safetensors.index.json")).unwrap();
    common::remove_scratch(dir.parent().unwrap());
}

/// Issue 22 item 4b: an index without a write id (as transformers writes it) over shards
/// whose ids disagree, or where only some shards carry one, is refused; without ids
/// anywhere (transformers' own checkpoints) it loads.
#[test]
fn shards_of_two_writes_are_refused_even_without_an_index_id() {
    let root = common::scratch("two-writes");
    let (a, b) = (root.join("a"), root.join("b"));
    write_dir(&model(3), &a, 12_000);
    write_dir(&model(4), &b, 12_000);
    let shards = shard_names(&a);
    assert_eq!(shards, shard_names(&b));
    assert!(shards.len() > 2, "{shards:?}");
    // The index loses its id (as a transformers-written index has none).
    let index = a.join("model.safetensors.index.json");
    let mut json = read_json(&index);
    json["metadata"].as_object_mut().unwrap().remove("sparsetune.write");
    std::fs::write(&index, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    ModelSource::open(&a).unwrap();
    // One shard from the other write.
    std::fs::copy(b.join(&shards[1]), a.join(&shards[1])).unwrap();
    let e = open_err(&a);
    assert!(e.contains(&shards[0]) && e.contains(&shards[1]) && e.contains("sparsetune.write"), "{e}");
    // A fresh write whose first shard lost its id (an older write's shard, same layout).
    let c = root.join("c");
    write_dir(&model(3), &c, 12_000);
    let index = c.join("model.safetensors.index.json");
    let mut json = read_json(&index);
    json["metadata"].as_object_mut().unwrap().remove("sparsetune.write");
    std::fs::write(&index, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let st = SafetensorsFile::open(c.join(&shards[0])).unwrap();
    let blobs: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .names()
        .iter()
        .map(|n| (n.to_string(), st.info(n).unwrap().1, st.tensor_bytes(n).unwrap().to_vec()))
        .collect();
    let mut meta = st.metadata().clone();
    assert!(meta.remove("sparsetune.write").is_some());
    drop(st);
    common::write_f32_safetensors(&c.join(&shards[0]), &blobs, &meta);
    let e = open_err(&c);
    assert!(e.contains(&shards[0]) && e.contains("sparsetune.write") && e.contains("absent"), "{e}");
    // transformers' sharded checkpoint: no ids anywhere.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/bf16-sharded");
    ModelSource::open(&fixture).unwrap().load(&Device::cpu(), DType::F32).unwrap();
    common::remove_scratch(&root);
}

// ------------------------------------------------------------ FIFOs, directories, sizes

/// An HF directory with one `model.safetensors`, `config.json`, `tokenizer.json` and
/// `tokenizer_config.json`.
fn hf_dir(name: &str) -> PathBuf {
    let dir = common::scratch(name).join("model");
    let _ = std::fs::remove_dir_all(&dir);
    write_dir(&model(5), &dir, 1 << 30);
    for f in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert_eq!(open_err(&dir), "loaded");
    dir
}

/// Issue 22 item 4c: a FIFO where any file of a model is expected is refused by name,
/// never waited on.
#[cfg(unix)]
#[test]
fn a_fifo_in_place_of_any_model_file_is_refused_not_waited_on() {
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        let dir = hf_dir(&format!("fifo-{f}"));
        if !make_fifo(&dir.join(f)) {
            return;
        }
        let e = open_err(&dir);
        assert!(e.contains(f) && e.contains("is a FIFO (named pipe), not a regular file"), "{f}: {e}");
        common::remove_scratch(dir.parent().unwrap());
    }
    // A sharded directory: the index, a shard.
    for which in ["index", "shard"] {
        let dir = common::scratch(&format!("fifo-{which}")).join("model");
        write_dir(&model(6), &dir, 12_000);
        let f =
            if which == "index" { "model.safetensors.index.json".to_string() } else { shard_names(&dir)[1].clone() };
        if !make_fifo(&dir.join(&f)) {
            return;
        }
        let e = open_err(&dir);
        assert!(e.contains(&f) && e.contains("is a FIFO (named pipe), not a regular file"), "{which}: {e}");
        common::remove_scratch(dir.parent().unwrap());
    }
    // A model file named directly: GGUF or safetensors.
    let dir = common::scratch("fifo-file");
    for f in ["model.gguf", "model.safetensors"] {
        if !make_fifo(&dir.join(f)) {
            return;
        }
        let e = open_err(&dir.join(f));
        assert!(e.contains(f) && e.contains("is a FIFO (named pipe), not a regular file"), "{f}: {e}");
    }
    // The binary as well: an error, exit 1, no hang.
    let fifo = dir.join("model.gguf");
    let e = within("sparsetune eval on a FIFO", move || {
        common::sparsetune(&["eval", "--model", fifo.to_str().unwrap(), "--text", "/dev/null"])
    });
    assert!(e.0 == 1 && e.2.contains("is a FIFO") && !e.2.contains("panicked"), "{e:?}");
    common::remove_scratch(&dir);
}

/// Issue 22 item 7b: a directory where a file is expected is named as such (a shard used
/// to give "No such device (os error 19)" from mmap).
#[test]
fn a_directory_in_place_of_a_model_file_is_named_as_one() {
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        let dir = hf_dir(&format!("subdir-{f}"));
        std::fs::remove_file(dir.join(f)).unwrap();
        std::fs::create_dir(dir.join(f)).unwrap();
        let e = open_err(&dir);
        assert!(e.contains(f) && e.contains("is a directory, not a regular file"), "{f}: {e}");
        common::remove_scratch(dir.parent().unwrap());
    }
    let dir = common::scratch("subdir-shard").join("model");
    write_dir(&model(7), &dir, 12_000);
    let shard = shard_names(&dir)[0].clone();
    std::fs::remove_file(dir.join(&shard)).unwrap();
    std::fs::create_dir(dir.join(&shard)).unwrap();
    let e = open_err(&dir);
    assert!(e.contains(&shard) && e.contains("is a directory, not a regular file"), "{e}");
    assert!(!e.contains("os error 19"), "{e}");
    // The binary, given a directory named like a GGUF: the directory has no model in it.
    let (code, _, err) = common::sparsetune(&["eval", "--model", dir.join(&shard).to_str().unwrap()]);
    assert!(code == 1 && !err.contains("panicked"), "{err}");
    common::remove_scratch(dir.parent().unwrap());
}

/// Issue 22 item 4c: JSON side files are read whole, so their size is bounded first; the
/// error names the file and the bound.
#[test]
fn oversized_json_side_files_are_refused_with_their_bound() {
    let dir = hf_dir("big-config");
    let mut text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    text.push_str(&" ".repeat(17 << 20));
    std::fs::write(dir.join("config.json"), &text).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("config.json") && e.contains("16 MiB"), "{e}");
    common::remove_scratch(dir.parent().unwrap());

    let dir = common::scratch("big-index").join("model");
    write_dir(&model(8), &dir, 12_000);
    let index = dir.join("model.safetensors.index.json");
    let mut text = std::fs::read_to_string(&index).unwrap();
    text.push_str(&" ".repeat(17 << 20));
    std::fs::write(&index, &text).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("model.safetensors.index.json") && e.contains("16 MiB"), "{e}");
    common::remove_scratch(dir.parent().unwrap());
}

// ------------------------------------------------------------------ numbers that cannot be

/// The tiny model as one safetensors file in `dtype` (F32, BF16 or F16) with the byte-level
/// tokenizer and the config in its metadata, element `at` of `tensor` replaced by `bad`.
fn poisoned_file(path: &Path, dtype: DType, tensor: &str, at: usize, bad: f32) {
    let m = model(9);
    let mut meta = BTreeMap::new();
    meta.insert("sparsetune.config".to_string(), m.config.to_hf_json(DType::F32).unwrap());
    meta.insert("sparsetune.tokenizer".to_string(), byte_level().to_json_string().unwrap());
    let blobs: Vec<(String, Vec<usize>, Vec<u8>)> = m
        .named_tensors()
        .unwrap()
        .into_iter()
        .map(|(p, t)| {
            let mut v = t.to_f32_vec().unwrap();
            if p.hf_name() == tensor {
                v[at] = bad;
            }
            let bytes: Vec<u8> = match dtype {
                DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                DType::BF16 => v.iter().flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes()).collect(),
                DType::F16 => v.iter().flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes()).collect(),
                _ => unreachable!(),
            };
            (p.hf_name(), t.dims().to_vec(), bytes)
        })
        .collect();
    let entries: Vec<SafetensorsEntry<'_>> =
        blobs.iter().map(|(n, s, d)| SafetensorsEntry { name: n.clone(), dtype, shape: s.clone(), data: d }).collect();
    sparsetune::io::write_safetensors(path, &entries, &meta).unwrap();
}

/// Issue 22 item 5a: NaN or infinite weights are refused at load by tensor name, element
/// and value, in every stored float type; `eval` exits 1 naming the tensor instead of
/// printing `perplexity NaN`.
#[test]
fn non_finite_weights_are_refused_by_tensor_and_element() {
    let dir = common::scratch("nan");
    let dev = Device::cpu();
    let up = Part::Linear(1, sparsetune::model::llama::Proj::Up).hf_name();
    for (dtype, bad, shown) in
        [(DType::F32, f32::NAN, "NaN"), (DType::BF16, f32::INFINITY, "inf"), (DType::F16, f32::NEG_INFINITY, "-inf")]
    {
        let p = dir.join(format!("poisoned-{dtype}.safetensors"));
        poisoned_file(&p, dtype, &up, 29, bad);
        for load_dtype in [DType::F32, DType::BF16] {
            let e = llama::load(&p, &dev, load_dtype).unwrap_err().to_string();
            assert!(
                e.contains(&up) && e.contains("element 29") && e.contains(shown) && e.contains(p.to_str().unwrap()),
                "{dtype}: {e}"
            );
        }
        let e = ModelSource::open(&p).unwrap().load_compressed(&dev, DType::F32).unwrap_err().to_string();
        assert!(e.contains(&up), "{e}");
    }
    // A norm weight too (not only linears).
    let p = dir.join("poisoned-norm.safetensors");
    poisoned_file(&p, DType::F32, &Part::Norm.hf_name(), 0, f32::NAN);
    let e = llama::load(&p, &dev, DType::F32).unwrap_err().to_string();
    assert!(e.contains("model.norm.weight") && e.contains("element 0"), "{e}");

    // GGUF, after dequantisation.
    let m = model(10);
    let mut w = GgufWriter::new();
    common::add_gguf_llama_metadata(&mut w, &m.config);
    for (part, t) in m.named_tensors().unwrap() {
        let mut v = t.to_f32_vec().unwrap();
        if part == Part::Linear(0, sparsetune::model::llama::Proj::Down) {
            v[5] = f32::NAN;
        }
        w.add_tensor_f32(&part.gguf_name(), t.dims(), &v).unwrap();
    }
    let p = dir.join("poisoned.gguf");
    w.write(&p).unwrap();
    let e = llama::load(&p, &dev, DType::F32).unwrap_err().to_string();
    assert!(e.contains("blk.0.ffn_down.weight") && e.contains("element 5") && e.contains("NaN"), "{e}");

    // The compressed sparse-bitmask layout: a kept value.
    let good = dir.join("compressed.safetensors");
    llama::save_safetensors_as(&m, &good, DType::F32, llama::WeightLayout::SparseBitmask, None, &BTreeMap::new())
        .unwrap();
    let key = format!("{}.compressed", Part::Linear(1, sparsetune::model::llama::Proj::V).hf_name());
    let mut bytes = std::fs::read(&good).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let at = 8 + header_len + header[&key]["data_offsets"][0].as_u64().unwrap() as usize + 4 * 3;
    bytes[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let p = dir.join("compressed-inf.safetensors");
    std::fs::write(&p, &bytes).unwrap();
    for e in [
        llama::load(&p, &dev, DType::F32).unwrap_err().to_string(),
        ModelSource::open(&p).unwrap().load_compressed(&dev, DType::BF16).unwrap_err().to_string(),
    ] {
        assert!(e.contains(&key) && e.contains("element 3") && e.contains("inf"), "{e}");
    }

    // The binary: exit 1 with the tensor's name, not `perplexity NaN`.
    let p = dir.join(format!("poisoned-{}.safetensors", DType::F32));
    let text = dir.join("text.txt");
    std::fs::write(&text, "Call me Ishmael. Some years ago, never mind how long precisely. ".repeat(20)).unwrap();
    let (code, out, err) = common::sparsetune(&[
        "eval",
        "--model",
        p.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--seq-len",
        "16",
        "--windows",
        "2",
    ]);
    assert!(
        code == 1 && err.contains(&up) && !err.contains("panicked") && !out.contains("NaN"),
        "{code}\n{out}\n{err}"
    );
    common::remove_scratch(&dir);
}

/// Issue 22 item 5b: a tokenizer with more ids than the embedding has rows is refused,
/// naming both sizes and where each comes from; a smaller one (padded embeddings) is
/// fine.
#[test]
fn a_tokenizer_larger_than_the_embedding_is_refused() {
    let dir = common::scratch("big-vocab");
    let small = LlamaConfig { vocab_size: 200, ..LlamaConfig::tiny() };
    let m = Llama::random(&small, DType::F32, &Device::cpu(), 12).unwrap();
    let tok = byte_level();
    assert_eq!(tok.vocab_size(), 258);

    // The tokenizer in a file's metadata.
    let p = dir.join("small.safetensors");
    llama::save_safetensors(&m, &p, DType::F32, Some(&tok), &BTreeMap::new()).unwrap();
    let e = llama::load_tokenizer(&p).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("258") && e.contains("200") && e.contains("small.safetensors"), "{e}");
    let e = ModelSource::open(&p).unwrap().tokenizer().map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("258") && e.contains("200"), "{e}");

    // tokenizer.json and config.json in a directory.
    let d = dir.join("hf");
    let spec =
        OutputSpec { config: &m.config, source: None, tokenizer: &tok, dtype: DType::F32, metadata: BTreeMap::new() };
    save_model(&m, &d, OutputForm::Directory { max_shard_bytes: 1 << 30 }, spec).unwrap();
    let e = llama::load_tokenizer(&d).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("258") && e.contains("200") && e.contains("tokenizer.json") && e.contains("config.json"), "{e}");

    // GGUF: tokenizer.ggml.tokens beyond llama.vocab_size (token_embd rows).
    let mut w = GgufWriter::new();
    common::add_gguf_llama_metadata(&mut w, &m.config);
    // The byte-level tokenizer's 256 byte symbols by id, then BOS and EOS.
    let json: Value = serde_json::from_str(&tok.to_json_string().unwrap()).unwrap();
    let mut tokens = vec![String::new(); 256];
    for (s, id) in json["model"]["vocab"].as_object().unwrap() {
        tokens[id.as_u64().unwrap() as usize] = s.clone();
    }
    tokens.extend(["<s>".to_string(), "</s>".to_string()]);
    w.add_str("tokenizer.ggml.model", "gpt2")
        .add_str("tokenizer.ggml.pre", "gpt2")
        .add_str_array("tokenizer.ggml.tokens", &tokens)
        .add_str_array::<&str>("tokenizer.ggml.merges", &[]);
    for (part, t) in m.named_tensors().unwrap() {
        w.add_tensor_f32(&part.gguf_name(), t.dims(), &t.to_f32_vec().unwrap()).unwrap();
    }
    let p = dir.join("small.gguf");
    w.write(&p).unwrap();
    match llama::load_tokenizer(&p) {
        Ok(t) => panic!("a {}-token GGUF tokenizer over 200 rows loaded", t.vocab_size()),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("200") && e.contains("small.gguf"), "{e}");
        }
    }

    // Smaller than the embedding: accepted.
    let big = Llama::random(&config(), DType::F32, &Device::cpu(), 12).unwrap();
    let p = dir.join("padded.safetensors");
    llama::save_safetensors(&big, &p, DType::F32, Some(&tok), &BTreeMap::new()).unwrap();
    assert_eq!(llama::load_tokenizer(&p).unwrap().vocab_size(), 258);
    common::remove_scratch(&dir);
}

/// Issue 22 item 7a: a stored shape the config does not imply is an error naming the
/// tensor and the file (it used to say only "model files vs config: shape mismatch").
#[test]
fn shape_mismatches_name_the_tensor_and_the_file() {
    let dir = common::scratch("shapes");
    let m = model(13);
    // A config one row wider in the MLP than the tensors.
    let mut wide = m.config.clone();
    wide.intermediate_size += 8;
    let meta = BTreeMap::from([("sparsetune.config".to_string(), wide.to_hf_json(DType::F32).unwrap())]);
    let p = dir.join("wide.safetensors");
    common::write_f32_safetensors(&p, &common::hf_blobs(&m), &meta);
    let e = ModelSource::open(&p).unwrap_err().to_string();
    let gate = Part::Linear(0, sparsetune::model::llama::Proj::Gate).hf_name();
    assert!(
        e.contains(&gate) && e.contains("wide.safetensors") && e.contains("[40, 24]") && e.contains("[48, 24]"),
        "{e}"
    );

    // GGUF.
    let mut w = GgufWriter::new();
    common::add_gguf_llama_metadata(&mut w, &wide);
    for (part, t) in m.named_tensors().unwrap() {
        w.add_tensor_f32(&part.gguf_name(), t.dims(), &t.to_f32_vec().unwrap()).unwrap();
    }
    let p = dir.join("wide.gguf");
    w.write(&p).unwrap();
    let e = ModelSource::open(&p).unwrap_err().to_string();
    assert!(e.contains("blk.0.ffn_gate.weight") && e.contains("wide.gguf"), "{e}");
    common::remove_scratch(&dir);
}
