//! Writes under faults (issue 15): a `sparsetune prune` or `finetune` child killed
//! (SIGKILL) at random points of its run leaves, at its output path, the previous model or
//! the new one and never a torn file; a sharded directory left with shards of two writes
//! is refused by name; a run killed between checkpoints resumes to exactly the result of
//! an uninterrupted run (its output in the compressed layout); the next write removes what
//! killed writes left behind as soon as it starts (issue 22), and again when it completes.
//!
//! A small random LLaMA (4 layers, ~6 MB in f32) is the source; the kill delays are spread
//! evenly over the measured length of an uninterrupted run (with jitter), so kills land
//! before, during and after the writes. "Mid-write" counts the kills that left a
//! temporary file of the killed process: those are the kills the atomicity is about.

mod common;

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsetune::io::Tokenizer;
use sparsetune::model::llama::{self, Llama, LlamaConfig, ModelSource, Proj};
use sparsetune::{DType, Device};

/// Kills per output form.
const TRIALS: usize = 12;

fn config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 300,
        hidden_size: 192,
        intermediate_size: 512,
        num_hidden_layers: 4,
        num_attention_heads: 6,
        num_key_value_heads: 2,
        max_position_embeddings: 128,
        ..LlamaConfig::tiny()
    }
}

/// The source model (config and byte-level tokenizer in its metadata) and a text file for
/// calibration and training.
fn inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let m = Llama::random(&config(), DType::F32, &Device::cpu(), 5).unwrap();
    let model = dir.join("source.safetensors");
    llama::save_safetensors(&m, &model, DType::F32, Some(&Tokenizer::byte_level().unwrap()), &BTreeMap::new()).unwrap();
    let text = dir.join("text.txt");
    let words = ["the", "whale", "sea", "ship", "captain", "white", "harpoon", "deck", "wind", "night"];
    let body: Vec<&str> = (0..3000).map(|i| words[(i * 7 + i / 13) % words.len()]).collect();
    std::fs::write(&text, body.join(" ")).unwrap();
    (model, text)
}

/// A digest of every weight of the model at `path`, or the load error.
fn digest(path: &Path) -> Result<u64, String> {
    let m = ModelSource::open(path).and_then(|s| s.load(&Device::cpu(), DType::F32)).map_err(|e| e.to_string())?;
    let mut h = DefaultHasher::new();
    let mut add = |t: &sparsetune::Tensor| t.to_f32_vec().unwrap().iter().for_each(|x| x.to_bits().hash(&mut h));
    add(&m.embed);
    for layer in &m.layers {
        add(&layer.input_norm);
        for p in Proj::ALL {
            add(layer.linear(p).dense().unwrap());
        }
        add(&layer.post_norm);
    }
    add(&m.norm);
    if let Some(head) = &m.lm_head {
        add(head);
    }
    Ok(h.finish())
}

/// Every file at `path` (the file, or a directory's files), to put back before each kill.
fn snapshot(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    if path.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();
        v.sort();
        v
    } else {
        vec![(path.to_path_buf(), std::fs::read(path).unwrap())]
    }
}

fn restore(path: &Path, files: &[(PathBuf, Vec<u8>)]) {
    if path.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
        std::fs::create_dir_all(path).unwrap();
    }
    for (p, bytes) in files {
        std::fs::write(p, bytes).unwrap();
    }
}

/// Temporary files (`*.tmp-<pid>`) in the directory of `path` (or in it, for a directory).
fn temps(path: &Path) -> Vec<String> {
    let dir = if path.is_dir() { path } else { path.parent().unwrap() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.contains(".tmp-")).collect()
}

fn run_to_end(args: &[String]) -> Duration {
    let start = Instant::now();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = common::sparsetune(&refs);
    assert_eq!(code, 0, "{args:?}: {err}");
    start.elapsed()
}

/// Starts `args`, kills the child after `delay`; whether it had already exited, and
/// whether it left a temporary file of its own (a kill in the middle of a write).
fn kill_after(args: &[String], delay: Duration, out: &Path) -> (bool, bool) {
    let mut child = Command::new(common::binary())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sparsetune");
    std::thread::sleep(delay);
    let exited = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    child.wait().unwrap();
    let own = format!(".tmp-{}", child.id());
    (exited, temps(out).iter().any(|n| n.ends_with(&own)))
}

/// Kill delays over [0, 1.15·d]: evenly spread, each jittered within its slot.
fn delays(rng: &mut ChaCha8Rng, d: Duration, n: usize) -> Vec<Duration> {
    (0..n).map(|k| d.mul_f64(1.15 * (k as f64 + rng.random::<f64>()) / n as f64)).collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `sparsetune prune` of `source` with `method` to `sparsity`, calibrated on `text`, to `out`.
fn prune_args(source: &Path, text: &Path, method: &str, sparsity: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = strings(&[
        "prune",
        "--model",
        source.to_str().unwrap(),
        "--method",
        method,
        "--sparsity",
        sparsity,
        "--calib",
        text.to_str().unwrap(),
        "--calib-samples",
        "2",
        "--calib-seq-len",
        "32",
        "--out",
        out.to_str().unwrap(),
    ]);
    v.extend(strings(extra));
    v
}

#[test]
fn a_killed_prune_leaves_the_previous_model_or_the_new_one() {
    let dir = common::scratch("atomic-prune");
    let (source, text) = inputs(&dir);
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let mut mid_write_total = 0;
    println!("{:<12} {:>6} {:>5} {:>8} {:>10}", "form", "kills", "old", "new", "mid-write");
    for (form, out, extra) in [
        ("file", dir.join("out.safetensors"), vec![]),
        ("directory", dir.join("out-one"), vec![]),
        ("sharded dir", dir.join("out-dir"), vec!["--max-shard-size", "1MB"]),
    ] {
        let args = |sparsity: &str| prune_args(&source, &text, "wanda", sparsity, &out, &extra);
        run_to_end(&args("0.25"));
        let (old, old_files) = (digest(&out).unwrap(), snapshot(&out));
        let d = run_to_end(&args("0.5"));
        let new = digest(&out).unwrap();
        assert_ne!(old, new, "{form}: the two prunes must differ for the test to mean anything");
        let (mut olds, mut news, mut mid_write) = (0, 0, 0);
        for delay in delays(&mut rng, d, TRIALS) {
            restore(&out, &old_files);
            let (exited, torn_temp) = kill_after(&args("0.5"), delay, &out);
            mid_write += torn_temp as usize;
            match digest(&out) {
                Ok(h) if h == old => olds += 1,
                Ok(h) if h == new => news += 1,
                Ok(_) => panic!(
                    "{form}: killed after {delay:?}, {out:?} holds a model that is neither the old nor the new one"
                ),
                Err(e) if form == "sharded dir" && e.contains("interrupted write") => {}
                Err(e) => {
                    panic!("{form}: killed after {delay:?} (exited before: {exited}), {out:?} does not load: {e}")
                }
            }
        }
        println!("{form:<12} {TRIALS:>6} {olds:>5} {news:>8} {mid_write:>10}");
        mid_write_total += mid_write;
        // A complete write cleans up after the killed ones.
        run_to_end(&args("0.5"));
        assert_eq!(digest(&out).unwrap(), new);
        assert_eq!(temps(&out), Vec::<String>::new(), "{form}: temporary files of killed writes were left");
    }
    assert!(mid_write_total > 0, "no kill landed in the middle of a write: the delays missed the writes");
    common::remove_scratch(&dir);
}

/// The window the write ids close: shards renamed one by one, a kill between two renames.
#[test]
fn a_directory_with_shards_of_two_writes_is_refused() {
    let dir = common::scratch("atomic-mixed");
    let (source, text) = inputs(&dir);
    let prune = |sparsity: &str, out: &Path| {
        run_to_end(&prune_args(&source, &text, "magnitude", sparsity, out, &["--max-shard-size", "1MB"]))
    };
    let (a, b) = (dir.join("a"), dir.join("b"));
    prune("0.25", &a);
    prune("0.5", &b);
    let mut shards: Vec<String> = std::fs::read_dir(&a)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("model-") && n.ends_with(".safetensors"))
        .collect();
    shards.sort();
    assert!(shards.len() >= 3, "expected several shards: {shards:?}");
    // Both loads alone are fine; shard 2 of the second write in the first one's directory is not.
    digest(&a).unwrap();
    digest(&b).unwrap();
    let shard = &shards[1];
    std::fs::copy(b.join(shard), a.join(shard)).unwrap();
    let err = digest(&a).unwrap_err();
    assert!(err.contains(shard) && err.contains("interrupted write"), "{err}");
    common::remove_scratch(&dir);
}

#[test]
fn a_killed_finetune_resumes_to_the_uninterrupted_result() {
    let dir = common::scratch("atomic-finetune");
    let (source, text) = inputs(&dir);
    let pruned = dir.join("pruned.safetensors");
    run_to_end(&prune_args(&source, &text, "magnitude", "0.5", &pruned, &[]));
    let args = |k: usize| {
        strings(&[
            "finetune",
            "--model",
            pruned.to_str().unwrap(),
            "--data",
            text.to_str().unwrap(),
            "--steps",
            "8",
            "--seq-len",
            "16",
            "--rank",
            "2",
            "--init-samples",
            "0",
            "--save-every",
            "1",
            "--checkpoint-dir",
            dir.join(format!("ck-{k}")).to_str().unwrap(),
            "--out",
            dir.join(format!("out-{k}.safetensors")).to_str().unwrap(),
            "--compressed",
        ])
    };
    let d = run_to_end(&args(0));
    let want = digest(&dir.join("out-0.safetensors")).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let (mut from_checkpoint, mut mid_write) = (0, 0);
    for (k, delay) in delays(&mut rng, d, TRIALS).into_iter().enumerate() {
        let (k, out) = (k + 1, dir.join(format!("out-{}.safetensors", k + 1)));
        let (_, torn_temp) = kill_after(&args(k), delay, &dir.join(format!("ck-{k}")).join("x"));
        mid_write += torn_temp as usize;
        from_checkpoint += dir.join(format!("ck-{k}")).read_dir().is_ok_and(|mut d| d.next().is_some()) as usize;
        let mut resume = args(k);
        resume.push("--resume".into());
        run_to_end(&resume);
        assert_eq!(digest(&out).unwrap(), want, "killed after {delay:?} and resumed: a different model");
    }
    println!("{TRIALS} kills: {from_checkpoint} left a checkpoint directory, {mid_write} in the middle of a checkpoint write");
    common::remove_scratch(&dir);
}

/// Issue 22, item 7: the temporary files of killed writes (`<name>.tmp-<dead pid>`, up to
/// a shard's size) are removed when the next write of the same output starts, before its
/// first byte, not only once it completes.
#[test]
fn a_new_write_removes_what_killed_writes_left_when_it_starts() {
    use sparsetune::io::{PlannedFile, SafetensorsWriter, TensorSpec};
    use sparsetune::model::llama::{ModelWriter, OutputForm, OutputSpec};
    let dir = common::scratch("atomic-stale");
    let dead = {
        let mut child = Command::new("true").spawn().expect("run true");
        child.wait().unwrap();
        child.id()
    };
    let file = dir.join("out.safetensors");
    let stale = dir.join(format!("out.safetensors.tmp-{dead}"));
    std::fs::write(&stale, vec![7u8; 1 << 20]).unwrap();
    let spec = TensorSpec { name: "a".into(), dtype: DType::F32, shape: vec![2] };
    let plan = PlannedFile { path: file.clone(), tensors: vec![spec], metadata: BTreeMap::new(), reserve: 0 };
    let writer = SafetensorsWriter::create(vec![plan]).unwrap();
    assert!(!stale.exists(), "a killed write's temporary file outlived the start of the next write");
    drop(writer);
    // A model directory: a killed write's shard of another shard count, and its index.
    let out = dir.join("model");
    std::fs::create_dir_all(&out).unwrap();
    let left =
        [format!("model-00002-of-00003.safetensors.tmp-{dead}"), format!("model.safetensors.index.json.tmp-{dead}")];
    for name in &left {
        std::fs::write(out.join(name), b"partial").unwrap();
    }
    std::fs::write(out.join("notes.txt.tmp-1"), b"not a model file").unwrap();
    let m = Llama::random(&config(), DType::F32, &Device::cpu(), 1).unwrap();
    let tok = Tokenizer::byte_level().unwrap();
    let spec =
        OutputSpec { config: &m.config, source: None, tokenizer: &tok, dtype: DType::F32, metadata: BTreeMap::new() };
    let writer = ModelWriter::create(&out, OutputForm::Directory { max_shard_bytes: 1 << 30 }, spec).unwrap();
    for name in &left {
        assert!(!out.join(name).exists(), "{name} outlived the start of the next write");
    }
    assert!(out.join("notes.txt.tmp-1").exists(), "a file that is not a model's was removed");
    drop(writer);
    common::remove_scratch(&dir);
}
