//! Outputs never overwrite what they did not write (issue 22): for every writing flag an
//! existing foreign file or directory is refused before any work and left byte-identical
//! unless `--overwrite`, and replaced with it; an output that is an input is refused even
//! with `--overwrite`; two outputs at one path are refused; our own earlier output is
//! replaced without `--overwrite`; `prune --out DIR --overwrite` over another model leaves
//! exactly the new one; a file output whose directory is missing fails before loading.
//! And resumes trust nothing they find (item 3): `run --resume` redoes a pruned model made
//! with another method or sparsity (its report labels what was used), `finetune --resume`
//! refuses a checkpoint made on another base model or other data, naming it.
//!
//! Everything runs the binary on a tiny random LLaMA (2 layers, 32 wide, byte-level
//! tokenizer) and a small text file.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sparsetune::io::outputs::{role, OutputKind, OutputPlan};
use sparsetune::io::Tokenizer;
use sparsetune::model::llama::{self, save_model, Llama, LlamaConfig, ModelSource, OutputForm, OutputSpec, Proj};
use sparsetune::{DType, Device};

fn config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 300,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 1024,
        ..LlamaConfig::tiny()
    }
}

/// A tiny model (one file, config and tokenizer in its metadata) and a text file.
fn inputs(dir: &Path, seed: u64) -> (PathBuf, PathBuf) {
    let m = Llama::random(&config(), DType::F32, &Device::cpu(), seed).unwrap();
    let model = dir.join(format!("source-{seed}.safetensors"));
    llama::save_safetensors(&m, &model, DType::F32, Some(&Tokenizer::byte_level().unwrap()), &BTreeMap::new()).unwrap();
    let text = dir.join("text.txt");
    let words = ["the", "whale", "sea", "ship", "captain", "white", "harpoon", "deck", "wind", "night"];
    let body: Vec<&str> = (0..1200).map(|i| words[(i * 7 + i / 13) % words.len()]).collect();
    std::fs::write(&text, body.join(" ")).unwrap();
    (model, text)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn refs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

fn ok(args: &[&str]) -> String {
    let (code, _, err) = common::sparsetune(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    err
}

/// Runs a command that must be refused; its stderr names every one of `want`.
fn refused(args: &[&str], want: &[&str]) -> String {
    let (code, _, err) = common::sparsetune(args);
    assert_eq!(code, 1, "{args:?} was not refused: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: no '{w}' in the error:\n{err}");
    }
    err
}

/// Every file under `path` with its bytes (recursively), to compare before and after.
fn snapshot(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            v.extend(snapshot(&e.unwrap().path()));
        }
    } else if path.exists() {
        v.push((path.to_path_buf(), std::fs::read(path).unwrap()));
    }
    v.sort();
    v
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Every weight of the model at `path`, as f32 bits.
fn weights(path: &Path) -> Vec<u32> {
    let m = ModelSource::open(path).unwrap().load(&Device::cpu(), DType::F32).unwrap();
    let mut v: Vec<u32> = m.embed.to_f32_vec().unwrap().iter().map(|x| x.to_bits()).collect();
    for layer in &m.layers {
        for p in Proj::ALL {
            v.extend(layer.linear(p).dense().unwrap().to_f32_vec().unwrap().iter().map(|x| x.to_bits()));
        }
    }
    v
}

/// Another model's Hugging Face directory: shards and an index (written without a
/// sparsetune owner), a `special_tokens_map.json` and a `generation_config.json`.
fn foreign_model_dir(dir: &Path) {
    let m = Llama::random(&config(), DType::F32, &Device::cpu(), 99).unwrap();
    let tok = Tokenizer::byte_level().unwrap();
    let spec =
        OutputSpec { config: &m.config, source: None, tokenizer: &tok, dtype: DType::F32, metadata: BTreeMap::new() };
    save_model(&m, dir, OutputForm::Directory { max_shard_bytes: 20_000 }, spec).unwrap();
    std::fs::write(dir.join("special_tokens_map.json"), r#"{"bos_token": "<old>"}"#).unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"old": true}"#).unwrap();
    assert!(names(dir).iter().filter(|n| n.starts_with("model-")).count() > 1, "{:?}", names(dir));
}

const PRUNE: &[&str] = &["--method", "magnitude", "--sparsity", "0.5"];

fn prune_args<'a>(model: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["prune", "--model", model, "--out", out];
    v.extend_from_slice(PRUNE);
    v.extend_from_slice(extra);
    v
}

#[test]
fn eval_logits_out_replaces_only_its_own_file() {
    let dir = common::scratch("outputs-eval");
    let (model, text) = inputs(&dir, 1);
    let args = |out: &Path, extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["eval", "--model", s(&model), "--text", s(&text), "--seq-len", "16", "--windows", "1"]
                .iter()
                .map(|x| x.to_string())
                .collect();
        v.extend(["--logits-out".to_string(), s(out).to_string()]);
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    // The evaluated model itself: refused, even with --overwrite, and left as it was.
    let before = snapshot(&model);
    for extra in [&[][..], &["--overwrite"][..]] {
        let a = args(&model, extra);
        refused(&refs(&a), &["--logits-out", s(&model), "is the input --model"]);
    }
    assert_eq!(snapshot(&model), before);
    // The text too.
    refused(&refs(&args(&text, &["--overwrite"])), &["--logits-out", "is the input --text"]);
    // A user's file: refused without --overwrite (untouched), replaced with it.
    let notes = dir.join("notes.safetensors");
    std::fs::write(&notes, b"my notes").unwrap();
    refused(&refs(&args(&notes, &[])), &["--logits-out", s(&notes), "not written by sparsetune", "--overwrite"]);
    assert_eq!(std::fs::read(&notes).unwrap(), b"my notes");
    ok(&refs(&args(&notes, &["--overwrite"])));
    let st = sparsetune::io::SafetensorsFile::open(&notes).unwrap();
    assert!(st.info("logits").is_some());
    // Now its own: replaced without --overwrite.
    ok(&refs(&args(&notes, &[])));
    // A model file that prune wrote is not eval's to replace.
    let pruned = dir.join("pruned.safetensors");
    ok(&prune_args(s(&model), s(&pruned), &[]));
    refused(&refs(&args(&pruned, &[])), &["written by sparsetune as `prune --out`"]);
    // A missing directory fails before the model is loaded.
    let missing = dir.join("no-such-dir").join("logits.safetensors");
    let err = refused(&refs(&args(&missing, &[])), &["--logits-out", "does not exist"]);
    assert!(!err.contains("loading"), "{err}");
    common::remove_scratch(&dir);
}

#[test]
fn prune_out_file_refuses_inputs_and_foreign_files() {
    let dir = common::scratch("outputs-prune-file");
    let (model, text) = inputs(&dir, 2);
    let before = snapshot(&model);
    for extra in [&[][..], &["--overwrite"][..]] {
        refused(&prune_args(s(&model), s(&model), extra), &["--out", "is the input --model"]);
    }
    assert_eq!(snapshot(&model), before);
    let calib = ["--calib", s(&text), "--calib-samples", "2", "--calib-seq-len", "16"];
    let wanda = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["prune", "--model", s(&model), "--method", "wanda", "--sparsity", "0.5", "--out", s(out)]
                .iter()
                .map(|x| x.to_string())
                .collect();
        v.extend(calib.iter().chain(extra).map(|x| x.to_string()));
        v
    };
    refused(&refs(&wanda(&text, &["--overwrite"])), &["--out", "is the input --calib"]);
    // A foreign file: refused before any work, untouched; replaced with --overwrite.
    let out = dir.join("out.safetensors");
    std::fs::write(&out, b"not a model").unwrap();
    let err = refused(&refs(&wanda(&out, &[])), &["--out", s(&out), "not written by sparsetune", "--overwrite"]);
    assert!(!err.contains("opening"), "work started before the refusal: {err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"not a model");
    ok(&refs(&wanda(&out, &["--overwrite"])));
    // Its own earlier output: replaced without a word.
    ok(&refs(&wanda(&out, &[])));
    // A missing directory fails before the model is opened.
    let missing = dir.join("nowhere").join("out.safetensors");
    let err = refused(&refs(&wanda(&missing, &[])), &["--out", "does not exist"]);
    assert!(!err.contains("opening"), "{err}");
    // A directory where the file goes: refused even with --overwrite.
    let a_dir = dir.join("a-dir.safetensors");
    std::fs::create_dir_all(&a_dir).unwrap();
    refused(&refs(&wanda(&a_dir, &["--overwrite"])), &["--out", "is a directory"]);
    common::remove_scratch(&dir);
}

#[test]
fn prune_out_dir_replaces_another_model_only_with_overwrite() {
    let dir = common::scratch("outputs-prune-dir");
    let (model, _) = inputs(&dir, 3);
    // The new source: a Hugging Face directory with its own generation config and
    // special tokens map, which the output must carry (and nothing of the old model's).
    let src = dir.join("src");
    let m = ModelSource::open(&model).unwrap().load(&Device::cpu(), DType::F32).unwrap();
    let tok = Tokenizer::byte_level().unwrap();
    let spec =
        OutputSpec { config: &m.config, source: None, tokenizer: &tok, dtype: DType::F32, metadata: BTreeMap::new() };
    save_model(&m, &src, OutputForm::Directory { max_shard_bytes: 1 << 30 }, spec).unwrap();
    std::fs::write(src.join("generation_config.json"), r#"{"new": true}"#).unwrap();
    std::fs::write(src.join("special_tokens_map.json"), r#"{"bos_token": "<s>"}"#).unwrap();

    let out = dir.join("out");
    foreign_model_dir(&out);
    let before = snapshot(&out);
    let err = refused(
        &prune_args(s(&src), s(&out), &[]),
        &["--out", s(&out), "was not written by sparsetune", "--overwrite"],
    );
    assert!(!err.contains("opening"), "{err}");
    assert_eq!(snapshot(&out), before, "a refused prune changed the directory");
    ok(&prune_args(s(&src), s(&out), &["--overwrite"]));
    let want = ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json"];
    let mut want: Vec<String> = want.iter().map(|n| n.to_string()).collect();
    want.extend(["tokenizer.json".to_string(), "tokenizer_config.json".to_string()]);
    want.sort();
    assert_eq!(names(&out), want, "exactly the new model");
    for f in ["generation_config.json", "special_tokens_map.json"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(src.join(f)).unwrap(), "{f}");
    }
    let fresh = dir.join("fresh");
    ok(&prune_args(s(&src), s(&fresh), &[]));
    assert_eq!(weights(&out), weights(&fresh));

    // Its own earlier output: replaced without --overwrite, sharded and back, no leftovers.
    ok(&prune_args(s(&src), s(&out), &["--max-shard-size", "20KB"]));
    assert!(names(&out).iter().filter(|n| n.starts_with("model-")).count() > 1);
    ok(&prune_args(s(&src), s(&out), &[]));
    assert_eq!(names(&out), want);
    assert_eq!(weights(&out), weights(&fresh));
    // The source directory, or one holding it, is an input.
    for target in [&src, &dir] {
        refused(&prune_args(s(&src), s(target), &["--overwrite"]), &["--out", "the input --model"]);
    }
    // A side file edited since, or a user's notes, make the directory foreign; notes are
    // never deleted, not even with --overwrite.
    std::fs::write(out.join("tokenizer_config.json"), "{}").unwrap();
    refused(&prune_args(s(&src), s(&out), &[]), &["tokenizer_config.json was changed", "--overwrite"]);
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    refused(&prune_args(s(&src), s(&out), &["--overwrite"]), &["notes.txt, which is not part of a model"]);
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
    // Another command's model is not prune's to replace.
    let tuned = dir.join("tuned");
    ok(&prune_args(s(&model), s(&tuned), &[]));
    let pruned_file = dir.join("pruned.safetensors");
    ok(&prune_args(s(&model), s(&pruned_file), &[]));
    let (code, _, err) = common::sparsetune(&[
        "finetune",
        "--model",
        s(&pruned_file),
        "--data",
        s(&dir.join("text.txt")),
        "--steps",
        "1",
        "--seq-len",
        "16",
        "--rank",
        "2",
        "--out",
        s(&tuned),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("written by sparsetune as `prune --out`"), "{err}");
    common::remove_scratch(&dir);
}

/// Shared set-up of the finetune cases: a pruned model file and the text.
fn pruned_input(dir: &Path, seed: u64, sparsity: &str) -> (PathBuf, PathBuf) {
    let (model, text) = inputs(dir, seed);
    let pruned = dir.join(format!("pruned-{seed}-{sparsity}.safetensors"));
    ok(&["prune", "--model", s(&model), "--method", "magnitude", "--sparsity", sparsity, "--out", s(&pruned)]);
    (pruned, text)
}

fn finetune_args(model: &Path, text: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "finetune",
        "--model",
        s(model),
        "--data",
        s(text),
        "--steps",
        "2",
        "--seq-len",
        "16",
        "--rank",
        "2",
        "--init-samples",
        "0",
        "--save-every",
        "1",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

#[test]
fn finetune_outputs_are_checked_flag_by_flag() {
    let dir = common::scratch("outputs-finetune");
    let (pruned, text) = pruned_input(&dir, 4, "0.5");
    let run = |extra: &[&str]| finetune_args(&pruned, &text, extra);
    let (out, adapters, ck) = (dir.join("out.safetensors"), dir.join("adapters.safetensors"), dir.join("ck"));
    let before = snapshot(&pruned);
    // Inputs, even with --overwrite.
    for (flag, path) in [("--out", &pruned), ("--adapter-out", &pruned), ("--out", &text)] {
        let mut extra = vec!["--overwrite", flag, s(path)];
        if flag != "--out" {
            extra.extend(["--out", s(&out)]);
        }
        refused(&refs(&run(&extra)), &[flag, "the input"]);
    }
    assert_eq!(snapshot(&pruned), before);
    // Two outputs at one path, or one inside the other's directory.
    refused(&refs(&run(&["--out", s(&out), "--adapter-out", s(&out)])), &["--adapter-out", "--out is the same path"]);
    let out_dir = dir.join("out-dir");
    refused(
        &refs(&run(&["--out", s(&out_dir), "--checkpoint-dir", s(&out_dir)])),
        &["--checkpoint-dir", "--out is the same path"],
    );
    refused(
        &refs(&run(&["--out", s(&out_dir), "--adapter-out", s(&out_dir.join("a.safetensors"))])),
        &["--adapter-out", "is inside the directory of --out"],
    );
    // Each flag over a foreign file or directory: refused and untouched, then replaced
    // with --overwrite.
    std::fs::write(&out, b"user file").unwrap();
    std::fs::write(&adapters, b"user adapters").unwrap();
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("checkpoint.safetensors"), b"user checkpoint").unwrap();
    foreign_model_dir(&out_dir);
    let outputs = ["--out", s(&out), "--adapter-out", s(&adapters), "--checkpoint-dir", s(&ck)];
    let all = [&out, &adapters, &ck, &out_dir].map(|p| snapshot(p));
    let foreign_checks = [
        ("--out", run(&["--out", s(&out)])),
        ("--adapter-out", run(&["--out", s(&dir.join("o1.safetensors")), "--adapter-out", s(&adapters)])),
        ("--checkpoint-dir", run(&["--out", s(&dir.join("o2.safetensors")), "--checkpoint-dir", s(&ck)])),
        ("--out", run(&["--out", s(&out_dir)])),
    ];
    for (flag, args) in foreign_checks {
        let err = refused(&refs(&args), &[flag, "--overwrite"]);
        assert!(!err.contains("loading"), "{err}");
    }
    assert_eq!([&out, &adapters, &ck, &out_dir].map(|p| snapshot(p)), all, "a refused finetune changed its outputs");
    ok(&refs(&run(&[&outputs[..], &["--overwrite"]].concat())));
    ok(&refs(&run(&["--out", s(&out_dir), "--overwrite"])));
    assert!(out_dir.join("model.safetensors").is_file() && !out_dir.join("special_tokens_map.json").exists());
    // Its own outputs: replaced (and resumed from) without --overwrite.
    ok(&refs(&run(&outputs)));
    ok(&refs(&run(&[&outputs[..], &["--resume"]].concat())));
    ok(&refs(&run(&["--out", s(&out_dir)])));
    // A checkpoint directory holding anything else is refused even with --overwrite.
    std::fs::write(ck.join("notes.txt"), "mine").unwrap();
    refused(&refs(&run(&[&outputs[..], &["--overwrite"]].concat())), &["notes.txt, which is not part of a checkpoint"]);
    common::remove_scratch(&dir);
}

#[test]
fn finetune_resume_refuses_another_base_model_or_other_data() {
    let dir = common::scratch("outputs-resume");
    let (pruned, text) = pruned_input(&dir, 5, "0.5");
    let (other, _) = pruned_input(&dir, 5, "0.3");
    let ck = dir.join("ck");
    let out = dir.join("out.safetensors");
    let base = ["--out", s(&out), "--checkpoint-dir", s(&ck)];
    ok(&refs(&finetune_args(&pruned, &text, &[&base[..], &["--stop-after", "1"]].concat())));
    let resume = [&base[..], &["--resume"]].concat();
    refused(&refs(&finetune_args(&other, &text, &resume)), &["cannot resume", "--model: another model"]);
    let text2 = dir.join("text2.txt");
    std::fs::write(&text2, std::fs::read_to_string(&text).unwrap().replace("whale", "squid")).unwrap();
    refused(&refs(&finetune_args(&pruned, &text2, &resume)), &["cannot resume", "--data: other data", "text2.txt"]);
    let mut rank3 = finetune_args(&pruned, &text, &resume);
    let at = rank3.iter().position(|a| a == "--rank").unwrap();
    rank3[at + 1] = "3".into();
    refused(&refs(&rank3), &["cannot resume", "--rank: 2 then, 3 now"]);
    // The same inputs resume.
    let err = ok(&refs(&finetune_args(&pruned, &text, &resume)));
    assert!(err.contains("resumed from") && err.contains("at step 1"), "{err}");
    common::remove_scratch(&dir);
}

fn run_args<'a>(model: &'a str, text: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "run",
        "--model",
        model,
        "--data",
        text,
        "--text",
        text,
        "--steps",
        "2",
        "--seq-len",
        "16",
        "--calib-samples",
        "2",
        "--eval-windows",
        "1",
        "--rank",
        "2",
        "--out-dir",
        out,
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn run_out_dir_is_ours_or_refused() {
    let dir = common::scratch("outputs-run");
    let (model, text) = inputs(&dir, 6);
    let out = dir.join("run");
    let mag = ["--method", "magnitude"];
    // A directory of someone else's: refused, untouched; with --overwrite, replaced.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report.json"), "{\"mine\": true}").unwrap();
    let before = snapshot(&out);
    let err =
        refused(&run_args(s(&model), s(&text), s(&out), &mag), &["--out-dir", "sparsetune-run.json", "--overwrite"]);
    assert!(!err.contains("loading"), "{err}");
    assert_eq!(snapshot(&out), before);
    ok(&run_args(s(&model), s(&text), s(&out), &[&mag[..], &["--overwrite"]].concat()));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["prune"]["method"], "magnitude");
    // Its own: again without --overwrite.
    ok(&run_args(s(&model), s(&text), s(&out), &mag));
    // An input inside it, or it holding the input.
    refused(
        &run_args(s(&out.join("pruned")), s(&text), s(&out), &["--overwrite"]),
        &["--out-dir", "contains the input --model"],
    );
    refused(&run_args(s(&model), s(&text), s(&dir), &["--overwrite"]), &["--out-dir", "contains the input"]);
    // An edited report, or a file run does not write, makes it foreign.
    let notes = out.join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    refused(
        &run_args(s(&model), s(&text), s(&out), &[&mag[..], &["--overwrite"]].concat()),
        &["notes.txt, which is not part of a run"],
    );
    std::fs::remove_file(&notes).unwrap();
    std::fs::write(out.join("report.json"), "{}").unwrap();
    refused(&run_args(s(&model), s(&text), s(&out), &mag), &["report.json was changed"]);
    common::remove_scratch(&dir);
}

#[test]
fn run_resume_redoes_a_pruned_model_made_otherwise() {
    let dir = common::scratch("outputs-run-resume");
    let (model, text) = inputs(&dir, 7);
    let out = dir.join("run");
    ok(&run_args(s(&model), s(&text), s(&out), &["--method", "magnitude", "--sparsity", "0.3"]));
    // Resumed with another method and sparsity: pruned again, labelled as used.
    let args = run_args(s(&model), s(&text), s(&out), &["--method", "wanda", "--sparsity", "0.5", "--resume"]);
    let (code, stdout, err) = common::sparsetune(&args);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("reusing") && err.contains("pruning again"), "{err}");
    assert!(err.contains("--method: \"magnitude\" then, \"wanda\" now"), "{err}");
    assert!(err.contains("not resuming"), "the old checkpoint was made on the old pruned model: {err}");
    assert!(stdout.contains("pruned (wanda 50%)"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["prune"]["provenance"]["args"]["--method"], "wanda");
    assert_eq!(report["prune"]["reused"], false);
    assert!((report["stages"][1]["sparsity"].as_f64().unwrap() - 0.5).abs() < 0.05, "{}", report["stages"][1]);
    let pruned = ModelSource::open(&out.join("pruned")).unwrap();
    let md = pruned.embedding_file_metadata().unwrap();
    let record: serde_json::Value = serde_json::from_str(&md["sparsetune.prune"]).unwrap();
    assert_eq!(record["method"], "wanda");
    // Resumed with the same inputs: both stages reused.
    let err = ok(&args);
    assert!(err.contains("reusing") && err.contains("resumed from"), "{err}");
    // Other data: pruned and trained again.
    let text2 = dir.join("text2.txt");
    std::fs::write(&text2, std::fs::read_to_string(&text).unwrap().replace("ship", "boat")).unwrap();
    let args2 = run_args(s(&model), s(&text2), s(&out), &["--method", "wanda", "--sparsity", "0.5", "--resume"]);
    let err = ok(&args2);
    assert!(err.contains("pruning again") && err.contains("--data: other data"), "{err}");
    common::remove_scratch(&dir);
}

#[test]
fn bench_make_model_out_is_checked() {
    let dir = common::scratch("outputs-make-model");
    let out = dir.join("model");
    foreign_model_dir(&out);
    let before = snapshot(&out);
    let args = ["bench", "make-model", "--shape", "smollm2-135m", "--out", s(&out)];
    refused(&args, &["--out", "was not written by sparsetune", "--overwrite"]);
    assert_eq!(snapshot(&out), before);
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    refused(&[&args[..], &["--overwrite"]].concat(), &["notes.txt, which is not part of a model"]);
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    ok(&[&args[..], &["--overwrite"]].concat());
    assert!(!out.join("special_tokens_map.json").exists() && !names(&out).iter().any(|n| n.starts_with("model-")));
    // Now its own; a prune output is not.
    OutputPlan::new(false).output("--out", &out, OutputKind::ModelDir, role::MAKE_MODEL).check().unwrap();
    let e = OutputPlan::new(false).output("--out", &out, OutputKind::ModelDir, role::PRUNE).check().unwrap_err();
    assert!(e.to_string().contains("written by sparsetune as `bench make-model --out`"), "{e}");
    common::remove_scratch(&dir);
}

/// Magnitude pruning reads no calibration text, so it runs where the default text is not
/// installed (an empty cache); Wanda, which needs one, names the missing asset.
#[test]
fn magnitude_pruning_needs_no_calibration_asset() {
    let dir = common::scratch("outputs-no-assets");
    let (model, _) = inputs(&dir, 9);
    let empty = dir.join("empty-cache");
    std::fs::create_dir_all(&empty).unwrap();
    let run = |method: &str, out: &Path| {
        std::process::Command::new(common::binary())
            .args(["prune", "--model", s(&model), "--method", method, "--sparsity", "0.5", "--out", s(out)])
            .env("SPARSETUNE_CACHE", &empty)
            .output()
            .unwrap()
    };
    let out = run("magnitude", &dir.join("magnitude.safetensors"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("magnitude.safetensors").exists());
    let out = run("wanda", &dir.join("wanda.safetensors"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("default asset") && err.contains("sotu"), "{err}");
    assert!(!dir.join("wanda.safetensors").exists());
}
