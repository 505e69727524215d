//! Hugging Face checkpoints as transformers itself writes them (fixtures made by
//! `scripts/hf_fixtures.py make` with transformers 5.24: tiny random LLaMA/Mistral models in
//! each config form, with transformers' float32 logits for fixed token ids):
//! - every accepted form gives transformers' logits within 1e-4 + 1e-4·|ref| (f32), and the
//!   tokenizer gives transformers' ids (BOS included);
//! - each RoPE form is discriminating: read as plain RoPE, the logits are far outside the
//!   tolerance, so a scaling key that was ignored would fail the test;
//! - the refused forms give an error naming the key;
//! - sharded bf16 loads from the directory and from the index, in its stored dtype;
//! - a damaged index is refused by name;
//! - greedy generation by the inference engine (KV cache, the directory's stop ids) gives
//!   the tokens of transformers' `generate(do_sample=False)` (`scripts/hf_fixtures.py
//!   generate`, float32) in every accepted form.
//!
//! And config.json files written by transformers 5.24.0 for full-size LLaMA-2-7B,
//! LLaMA-3.1-8B and Mistral-7B shapes and for a LLaMA-2-7B config rebuilt from GGUF metadata
//! (`scripts/hf_fixtures.py configs`, in `configs-5.24/`) read with transformers' own values.

mod common;

use std::path::{Path, PathBuf};

use sparsetune::io::SafetensorsFile;
use sparsetune::model::llama::{ForwardOptions, Llama, LlamaConfig, ModelSource, Part, RopeScaling};
use sparsetune::{DType, Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}

struct Reference {
    ids: Vec<u32>,
    text: String,
    logits: Vec<f32>,
}

fn reference(dir: &Path) -> Reference {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let ids = json["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let text = json["text"].as_str().unwrap().to_owned();
    let logits = SafetensorsFile::open(dir.join("logits.safetensors")).unwrap().tensor_f32("logits").unwrap();
    Reference { ids, text, logits }
}

fn logits(m: &Llama, ids: &[u32]) -> Vec<f32> {
    let x = Tensor::from_vec(ids.to_vec(), [1, ids.len()], m.device()).unwrap();
    m.forward(None, &x, ForwardOptions::default()).unwrap().to_f32_vec().unwrap()
}

/// Max |a − b| and whether every element is within atol + rtol·|ref|.
fn compare(got: &[f32], want: &[f32], atol: f32, rtol: f32) -> (f32, bool) {
    assert_eq!(got.len(), want.len());
    let mut max = 0f32;
    let mut ok = true;
    for (g, w) in got.iter().zip(want) {
        let e = (g - w).abs();
        max = max.max(e);
        ok &= e <= atol + rtol * w.abs();
    }
    (max, ok)
}

const ACCEPTED: &[&str] =
    &["llama-tf5-tied", "llama-legacy", "llama3-untied", "linear-legacy", "dynamic", "bf16-sharded", "f16", "mistral"];

#[test]
fn greedy_generation_gives_the_tokens_of_transformers_generate() {
    use sparsetune::infer::{generation_config::stop_ids, sample::argmax, GenerateOptions, InferModel, SparseMode};
    for name in ACCEPTED {
        let dir = fixtures().join(name);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("generate.json")).unwrap()).unwrap();
        let ids = |key: &str| -> Vec<u32> {
            json[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
        };
        let src = ModelSource::open(&dir).unwrap();
        let model = src.load(&Device::cpu(), DType::F32).unwrap();
        let stop = stop_ids(&dir, &src.tokenizer().unwrap(), model.config.vocab_size).unwrap();
        let engine = InferModel::new(model, SparseMode::Off).unwrap();
        let opts = GenerateOptions { max_new: json["max_new_tokens"].as_u64().unwrap() as usize, stop };
        let gen = engine.generate(&[ids("prompt_ids")], &opts, |_, l| argmax(l), |_, _| Ok(())).unwrap();
        assert_eq!(gen.tokens[0], ids("tokens"), "{name}: greedy tokens differ from transformers'");
    }
}

#[test]
fn every_accepted_form_matches_transformers() {
    let dev = Device::cpu();
    for name in ACCEPTED {
        let dir = fixtures().join(name);
        let r = reference(&dir);
        let src = ModelSource::open(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tok = src.tokenizer().unwrap();
        let ids = tok.encode_document(&r.text).unwrap();
        assert_eq!(ids[..r.ids.len()], r.ids[..], "{name}: token ids differ from transformers'");
        let m = src.load(&dev, DType::F32).unwrap();
        let (max, ok) = compare(&logits(&m, &r.ids), &r.logits, 1e-4, 1e-4);
        assert!(ok, "{name}: logits differ from transformers' by up to {max:e}");
        println!("{name}: max |logit error| {max:.2e}");
    }
}

/// The same weights read as if the RoPE keys were absent (θ 10⁴, no scaling) give logits
/// far from transformers': each fixture tests its key.
#[test]
fn rope_keys_change_the_logits() {
    let dev = Device::cpu();
    for name in ["llama-tf5-tied", "llama-legacy", "llama3-untied", "linear-legacy"] {
        let dir = fixtures().join(name);
        let r = reference(&dir);
        let m = ModelSource::open(&dir).unwrap().load(&dev, DType::F32).unwrap();
        let mut plain = m.clone();
        plain.config.rope_theta = 10000.0;
        plain.config.rope_scaling = RopeScaling::Default;
        assert_ne!(plain.config, m.config, "{name}: nothing to ignore");
        let (max, _) = compare(&logits(&plain, &r.ids), &r.logits, 1e-4, 1e-4);
        assert!(max > 1e-2, "{name}: ignoring its RoPE keys changes the logits by only {max:e}");
    }
}

#[test]
fn refused_forms_name_their_key() {
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(key) = std::fs::read_to_string(dir.join("refuse.txt")) else { continue };
        let key = key.trim();
        let e = sparsetune::model::llama::load_config(&dir).unwrap_err().to_string();
        assert!(e.contains(&format!("'{key}")) || e.contains(&format!(".{key}'")), "{}: {e}", dir.display());
        assert!(e.contains("config.json"), "{}: the error does not name the file: {e}", dir.display());
    }
}

#[test]
fn windows_beyond_mistral_sliding_window_are_refused() {
    let m = ModelSource::open(&fixtures().join("mistral")).unwrap().load(&Device::cpu(), DType::F32).unwrap();
    assert_eq!(m.config.sliding_window, Some(48));
    assert_eq!(m.config.head_dim(), 16);
    assert_ne!(m.config.head_dim() * m.config.num_attention_heads, m.config.hidden_size);
    let ids = Tensor::from_vec((0..49u32).collect::<Vec<_>>(), [1, 49], m.device()).unwrap();
    let e = m.forward(None, &ids, ForwardOptions::default()).unwrap_err().to_string();
    assert!(e.contains("sliding_window = 48"), "{e}");
    let d = ModelSource::open(&fixtures().join("dynamic")).unwrap().load(&Device::cpu(), DType::F32).unwrap();
    let ids = Tensor::from_vec((0..65u32).collect::<Vec<_>>(), [1, 65], d.device()).unwrap();
    let e = d.forward(None, &ids, ForwardOptions::default()).unwrap_err().to_string();
    assert!(e.contains("max_position_embeddings") && e.contains("dynamic"), "{e}");
}

#[test]
fn sharded_bf16_loads_in_its_stored_dtype_from_the_directory_or_the_index() {
    let dev = Device::cpu();
    let dir = fixtures().join("bf16-sharded");
    let shards = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("model-0000"))
        .count();
    assert!(shards >= 3, "{shards} shards");
    let by_dir = ModelSource::open(&dir).unwrap();
    let by_index = ModelSource::open(&dir.join("model.safetensors.index.json")).unwrap();
    assert_eq!(by_dir.stored_dtype(), DType::BF16);
    let (a, b) = (by_dir.load(&dev, DType::BF16).unwrap(), by_index.load(&dev, DType::BF16).unwrap());
    assert_eq!(a.dtype(), DType::BF16);
    for ((p, x), (_, y)) in a.named_tensors().unwrap().into_iter().zip(b.named_tensors().unwrap()) {
        assert_eq!(x.to_vec::<half::bf16>().unwrap(), y.to_vec::<half::bf16>().unwrap(), "{p:?}");
    }
    // bf16 → f32 is exact: the f32 model holds the same numbers.
    let f = by_dir.load(&dev, DType::F32).unwrap();
    let (x, y) = (a.layers[1].down.dense().unwrap(), f.layers[1].down.dense().unwrap());
    assert_eq!(x.to_f32_vec().unwrap(), y.to_f32_vec().unwrap());
    // One tensor at a time, from whichever shard holds it.
    let t = by_dir.tensor(&Part::LmHead, DType::BF16, &dev).unwrap();
    assert_eq!(t.dims(), [320, 32]);
}

/// Copies a fixture and rewrites its index with `edit`; returns the error of opening it.
fn damaged_index(name: &str, edit: impl Fn(&mut serde_json::Value)) -> String {
    let src = fixtures().join("bf16-sharded");
    let dir = common::scratch("damaged-index").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let index = dir.join("model.safetensors.index.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&index, json.to_string()).unwrap();
    let e = ModelSource::open(&dir).unwrap_err().to_string();
    assert!(e.contains("model.safetensors.index.json"), "{name}: the error does not name the index: {e}");
    e
}

#[test]
fn damaged_indexes_are_refused_by_name() {
    let moved = "model.layers.0.mlp.up_proj.weight";
    let e = damaged_index("escape", |j| j["weight_map"][moved] = "../model-00001-of-00004.safetensors".into());
    assert!(e.contains("plain file name"), "{e}");
    let e = damaged_index("wrong-shard", |j| {
        let other = if j["weight_map"][moved] == "model-00001-of-00004.safetensors" {
            "model-00002-of-00004.safetensors"
        } else {
            "model-00001-of-00004.safetensors"
        };
        j["weight_map"][moved] = other.into();
    });
    assert!(e.contains(moved), "{e}");
    let e = damaged_index("unlisted", |j| {
        j["weight_map"].as_object_mut().unwrap().remove(moved);
    });
    assert!(e.contains(moved) && e.contains("not in the weight_map"), "{e}");
    let e = damaged_index("total", |j| j["metadata"]["total_size"] = 12.into());
    assert!(e.contains("total_size"), "{e}");
    let e = damaged_index("missing-shard", |j| j["weight_map"][moved] = "model-00009-of-00009.safetensors".into());
    assert!(e.contains("model-00009-of-00009.safetensors"), "{e}");
    common::remove_scratch(&common::scratch("damaged-index"));
}

/// A tensor the model does not use (here a q_proj bias) is refused by name.
#[test]
fn unexpected_tensors_are_refused() {
    let dev = Device::cpu();
    let m = common::tiny_model(DType::F32, &dev, 2);
    let dir = common::scratch("extra-tensor");
    let mut entries = common::hf_blobs(&m);
    entries.push(("model.layers.0.self_attn.q_proj.bias".into(), vec![24], vec![0; 96]));
    common::write_f32_safetensors(&dir.join("model.safetensors"), &entries, &Default::default());
    std::fs::write(dir.join("config.json"), m.config.to_hf_json(DType::F32).unwrap()).unwrap();
    let e = ModelSource::open(&dir).unwrap_err().to_string();
    assert!(e.contains("q_proj.bias") && e.contains("refused"), "{e}");
    common::remove_scratch(&dir);
}

use sparsetune::model::llama::{save_model, OutputForm, OutputSpec};

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// Our directory of a fixture reads back to transformers' logits and ids; its config.json
/// keeps every key transformers wrote (dtype aside), and its index lists the same tensors
/// and total size as transformers' index, in shards no larger than asked.
#[test]
fn our_directory_matches_what_transformers_wrote() {
    let dev = Device::cpu();
    let fixture = fixtures().join("bf16-sharded");
    let r = reference(&fixture);
    let src = ModelSource::open(&fixture).unwrap();
    let model = src.load(&dev, DType::F32).unwrap();
    let tok = src.tokenizer().unwrap();
    let out = common::scratch("our-dir").join("bf16");
    let spec = OutputSpec {
        config: &model.config,
        source: Some(&src),
        tokenizer: &tok,
        dtype: DType::BF16,
        metadata: Default::default(),
    };
    save_model(&model, &out, OutputForm::Directory { max_shard_bytes: 25_000 }, spec).unwrap();

    let (ours, theirs) = (read_json(&out.join("config.json")), read_json(&fixture.join("config.json")));
    assert_eq!(ours, theirs, "config.json differs from transformers'");
    let (ours, theirs) = (
        read_json(&out.join("model.safetensors.index.json")),
        read_json(&fixture.join("model.safetensors.index.json")),
    );
    assert_eq!(ours["metadata"]["total_size"], theirs["metadata"]["total_size"]);
    let keys = |v: &serde_json::Value| v["weight_map"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(&theirs));
    let files: std::collections::BTreeSet<String> =
        ours["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap().to_owned()).collect();
    for f in &files {
        assert!(f.starts_with("model-") && f.contains(&format!("-of-{:05}", files.len())), "{f}");
        let held = SafetensorsFile::open(out.join(f)).unwrap().data_bytes();
        assert!(held <= 25_000 || SafetensorsFile::open(out.join(f)).unwrap().names().len() == 1, "{f}: {held} bytes");
    }
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(fixture.join(f)).unwrap(),
            "{f} not copied as is"
        );
    }

    let back = ModelSource::open(&out).unwrap();
    assert_eq!(back.stored_dtype(), DType::BF16);
    let m = back.load(&dev, DType::F32).unwrap();
    let (max, ok) = compare(&logits(&m, &r.ids), &r.logits, 1e-4, 1e-4);
    assert!(ok, "our directory's logits differ from transformers' by {max:e}");
    assert_eq!(back.tokenizer().unwrap().encode_document(&r.text).unwrap()[..r.ids.len()], r.ids[..]);
    common::remove_scratch(&out);
}

/// Without a source config (a GGUF model, say), our own config.json reads as the same
/// model as the one transformers wrote, with the same value wherever both have a key.
#[test]
fn our_config_json_agrees_with_transformers() {
    let dev = Device::cpu();
    for name in ["llama3-untied", "mistral", "linear-legacy", "llama-tf5-tied"] {
        let fixture = fixtures().join(name);
        let src = ModelSource::open(&fixture).unwrap();
        let model = src.load(&dev, DType::F32).unwrap();
        let tok = src.tokenizer().unwrap();
        let out = common::scratch("own-config").join(name);
        let spec = OutputSpec {
            config: &model.config,
            source: None,
            tokenizer: &tok,
            dtype: DType::F32,
            metadata: Default::default(),
        };
        save_model(&model, &out, OutputForm::Directory { max_shard_bytes: 1 << 30 }, spec).unwrap();
        let (ours, theirs) = (read_json(&out.join("config.json")), read_json(&fixture.join("config.json")));
        for (k, v) in ours.as_object().unwrap() {
            if let Some(t) =
                theirs.get(k).filter(|_| !matches!(k.as_str(), "torch_dtype" | "dtype" | "rope_scaling" | "rope_theta"))
            {
                assert_eq!(v, t, "{name}: key {k}");
            }
        }
        let back = ModelSource::open(&out).unwrap();
        assert_eq!(back.config(), &model.config, "{name}");
        assert!(out.join("model.safetensors").is_file() && !out.join("model.safetensors.index.json").exists());
        let r = reference(&fixture);
        let (max, ok) = compare(&logits(&back.load(&dev, DType::F32).unwrap(), &r.ids), &r.logits, 1e-4, 1e-4);
        assert!(ok, "{name}: {max:e}");
        common::remove_scratch(&out);
    }
}

/// Writing a one-file model over a sharded one removes the old index and shards (the index
/// would be read first), and a `.safetensors` path is the single-file form.
#[test]
fn a_new_model_replaces_the_old_files() {
    let dev = Device::cpu();
    // An embedding with a row for each of the fixture tokenizer's 320 ids.
    let m = Llama::random(&LlamaConfig { vocab_size: 320, ..LlamaConfig::tiny() }, DType::F32, &dev, 5).unwrap();
    let tok_src = ModelSource::open(&fixtures().join("llama-tf5-tied")).unwrap().tokenizer().unwrap();
    let dir = common::scratch("replace").join("model");
    let spec = || OutputSpec {
        config: &m.config,
        source: None,
        tokenizer: &tok_src,
        dtype: DType::F32,
        metadata: Default::default(),
    };
    save_model(&m, &dir, OutputForm::Directory { max_shard_bytes: 2_000 }, spec()).unwrap();
    let shards = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("model-"))
        .count();
    assert!(shards > 2 && dir.join("model.safetensors.index.json").is_file(), "{shards} shards");
    save_model(&m, &dir, OutputForm::Directory { max_shard_bytes: 1 << 30 }, spec()).unwrap();
    let left: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!left.iter().any(|f| f.starts_with("model-") || f.contains("index") || f.contains(".tmp-")), "{left:?}");
    let back = ModelSource::open(&dir).unwrap().load(&dev, DType::F32).unwrap();
    assert_eq!(logits(&back, &[1, 2, 3]), logits(&m, &[1, 2, 3]));
    let file = dir.with_extension("safetensors");
    assert_eq!(OutputForm::of(&file, 1), OutputForm::File);
    save_model(&m, &file, OutputForm::File, spec()).unwrap();
    let one = ModelSource::open(&file).unwrap();
    assert_eq!(one.config(), &m.config);
    assert_eq!(one.tokenizer().unwrap().encode("Call me").unwrap(), tok_src.encode("Call me").unwrap());
    common::remove_scratch(&dir);
}

/// The default model through Hugging Face form: written by our writer (f32 and bf16) and
/// read back, it gives the GGUF path's perplexity (4 windows of 256 tokens of Moby Dick).
#[test]
fn real_model_through_a_directory_keeps_its_perplexity() {
    use sparsetune::io::asset_path;
    let Some(gguf) = asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let Some(text) = asset_path("moby-dick/data.txt") else { return };
    let dev = Device::cpu();
    let src = ModelSource::open(&gguf).unwrap();
    let tok = src.tokenizer().unwrap();
    let ids = sparsetune::data::tokenize_file(&tok, &text, "text").unwrap();
    let windows = sparsetune::data::windows(&ids, 256, Some(4));
    let dir = common::scratch("real-hf");
    for dtype in [DType::F32, DType::BF16] {
        let model = src.load(&dev, dtype).unwrap();
        let out = dir.join(dtype.as_str());
        let spec = OutputSpec {
            config: &model.config,
            source: Some(&src),
            tokenizer: &tok,
            dtype,
            metadata: Default::default(),
        };
        save_model(&model, &out, OutputForm::Directory { max_shard_bytes: 100_000_000 }, spec).unwrap();
        let back_src = ModelSource::open(&out).unwrap();
        assert_eq!(back_src.stored_dtype(), dtype);
        let back_tok = back_src.tokenizer().unwrap();
        assert_eq!(sparsetune::data::tokenize_file(&back_tok, &text, "text").unwrap(), ids, "{dtype}: ids differ");
        let back = back_src.load(&dev, dtype).unwrap();
        let ppl = |m: &sparsetune::model::llama::Llama| {
            let engine = sparsetune::infer::InferModel::new(m.clone(), sparsetune::infer::SparseMode::Off).unwrap();
            sparsetune::eval::perplexity(&engine, &windows, |_, _| {}).unwrap().perplexity
        };
        let (a, b) = (ppl(&model), ppl(&back));
        println!("{dtype}: GGUF {a:.4}, directory {b:.4}");
        assert!((a - b).abs() <= 1e-3 * a, "{dtype}: perplexity {a} from GGUF, {b} from the directory");
        common::remove_scratch(&out);
    }
}

/// Each config.json of `configs-5.24/` (written by transformers 5.24.0 itself) reads to the
/// numbers transformers reads from it, as its `expected.json` gives them (transformers'
/// attribute values after loading that file), and our RoPE inverse frequencies are those of
/// transformers' rotary embedding for it. One of them is the GGUF-derived config, which
/// carries `_model_name_or_path` and `unk_token_id`.
#[test]
fn configs_written_by_transformers_5_24_read_as_transformers_reads_them() {
    let root = fixtures().join("configs-5.24");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    let names: Vec<String> = dirs.iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["llama-2-7b", "llama-2-7b-from-gguf", "llama-3.1-8b", "mistral-7b"]);
    let mut keys_seen = std::collections::BTreeSet::new();
    for (dir, name) in dirs.iter().zip(&names) {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let written: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(written["transformers_version"], "5.24.0", "{name}");
        keys_seen.extend(written.as_object().unwrap().keys().cloned());
        let c = LlamaConfig::from_hf_json(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{name}: {e}"));

        let want = read_json(&dir.join("expected.json"));
        let int = |k: &str| want[k].as_u64().unwrap_or_else(|| panic!("{name}: expected.json {k}")) as usize;
        let num = |k: &str| want[k].as_f64().unwrap_or_else(|| panic!("{name}: expected.json {k}"));
        for (key, ours, theirs) in [
            ("vocab_size", c.vocab_size, int("vocab_size")),
            ("hidden_size", c.hidden_size, int("hidden_size")),
            ("intermediate_size", c.intermediate_size, int("intermediate_size")),
            ("num_hidden_layers", c.num_hidden_layers, int("num_hidden_layers")),
            ("num_attention_heads", c.num_attention_heads, int("num_attention_heads")),
            ("num_key_value_heads", c.num_key_value_heads, int("num_key_value_heads")),
            ("head_dim", c.head_dim(), int("head_dim")),
            ("max_position_embeddings", c.max_position_embeddings, int("max_position_embeddings")),
        ] {
            assert_eq!(ours, theirs, "{name}: {key}");
        }
        assert_eq!(c.rms_norm_eps, num("rms_norm_eps"), "{name}: rms_norm_eps");
        assert_eq!(c.rope_theta, num("rope_theta"), "{name}: rope_theta");
        assert_eq!(
            c.tie_word_embeddings,
            want["tie_word_embeddings"].as_bool().unwrap(),
            "{name}: tie_word_embeddings"
        );
        assert_eq!(c.sliding_window, want["sliding_window"].as_u64().map(|w| w as usize), "{name}: sliding_window");
        let rope = match want["rope_type"].as_str().unwrap() {
            "default" => {
                for k in ["rope_factor", "rope_low_freq_factor", "rope_high_freq_factor"] {
                    assert!(want[k].is_null(), "{name}: default RoPE with {k}");
                }
                RopeScaling::Default
            }
            "linear" => RopeScaling::Linear { factor: num("rope_factor") },
            "dynamic" => RopeScaling::Dynamic { factor: num("rope_factor") },
            "llama3" => RopeScaling::Llama3 {
                factor: num("rope_factor"),
                low_freq_factor: num("rope_low_freq_factor"),
                high_freq_factor: num("rope_high_freq_factor"),
                original_max_position_embeddings: int("rope_original_max_position_embeddings"),
            },
            other => panic!("{name}: rope_type {other} in expected.json"),
        };
        assert_eq!(c.rope_scaling, rope, "{name}: RoPE scaling");
        // Our forward scales neither cos nor sin; transformers' rotary embedding must not either.
        assert_eq!(num("rope_attention_scaling"), 1.0, "{name}");
        let theirs: Vec<f64> = want["rope_inv_freq"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let ours = c.rope_inv_freq();
        assert_eq!(ours.len(), theirs.len(), "{name}: inv_freq length");
        for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
            assert!((*o as f64 - t).abs() <= 1e-6 * t.abs(), "{name}: inv_freq[{i}] ours {o:e}, transformers {t:e}");
        }
    }
    for key in ["_model_name_or_path", "unk_token_id"] {
        assert!(keys_seen.contains(key), "no fixture has {key}");
    }
}

/// transformers' LLaMA-2-7B config.json with an `rms_norm_eps` that is finite in f64 but
/// infinite in f32 (or 0 there) is refused with the file, the key and the value: the forward
/// computes with ε in f32, where 1e300 would make every activation 0.
#[test]
fn an_rms_norm_eps_that_is_no_f32_is_refused_by_name() {
    let text = std::fs::read_to_string(fixtures().join("configs-5.24/llama-2-7b/config.json")).unwrap();
    let dir = common::scratch("eps-overflow");
    for eps in ["1e300", "1e-50"] {
        let edited = text.replace("\"rms_norm_eps\": 1e-05", &format!("\"rms_norm_eps\": {eps}"));
        assert_ne!(edited, text);
        std::fs::write(dir.join("config.json"), edited).unwrap();
        let e = sparsetune::model::llama::load_config(&dir).unwrap_err().to_string();
        // The value as the JSON parser reads it (1e-50 comes out as 9.999999999999999e-51).
        let read: f64 = serde_json::from_str(eps).unwrap();
        assert!(e.contains("config.json") && e.contains(&format!("rms_norm_eps = {read:?}: must be")), "{e}");
    }
    common::remove_scratch(&dir);
}
