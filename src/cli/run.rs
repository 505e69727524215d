//! `sparsetune run`, the main job: dense eval → prune → eval → repair (sparsity-preserving
//! fine-tuning) → merge → eval, printing a table and writing into `--out-dir`: `pruned/`
//! and `repaired/` (Hugging Face directories that transformers loads as they are; merged,
//! zeros where pruned), `report.json`, and PNG charts (`loss.png`, `perplexity.png`,
//! `layers.png`, and `rank.png` for adapter methods).
//!
//! Before anything is read, `--out-dir` is checked ([`OutputPlan`]): a directory that an
//! earlier run did not write (it has no manifest, [`RunManifest`], or holds files the
//! manifest does not list) is refused unless `--overwrite`. `--resume` reuses the pruned
//! model of an interrupted run only when it records being made from this run's inputs
//! (model, method, pattern, calibration data and options, dtypes), and the training
//! checkpoint only when it was made on that pruned model from this run's data and
//! options; otherwise it says why on stderr and redoes the stage, so that the report
//! describes what was used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;

use super::finetune::{method_config, planned_peak, train, training_provenance};
use super::prune::{parse_nm, provenance as prune_provenance, prune_with_bar};
use super::{default_asset, default_model, device_and_dtype, progress, DataArgs};
use crate::data::{calibration_windows, sotu_files, window_streams, windows_of_streams};
use crate::eval::perplexity;
use crate::finetune::{checkpoint, LoraOptions, Repair, RepairMethod, RepairOptions, TrainConfig, TrainData};
use crate::infer::sample::argmax;
use crate::infer::{GenerateOptions, InferModel, SparseMode};
use crate::io::outputs::{
    hash_data_files, model_hash, role, OutputKind, OutputPlan, Provenance, RunManifest, META_WRITTEN_BY,
};
use crate::model::llama::{self, Llama, ModelSource, OutputForm, OutputSpec, Proj, DEFAULT_MAX_SHARD_BYTES};
use crate::prune::{Method, Pattern, PruneOptions};
use crate::report::plot::{bar_chart_png, line_chart_png, Series};
use crate::sparse::SparseFormat;
use crate::{Error, Result};

/// Arguments of `sparsetune run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Dense model (default: SmolLM2-135M).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Pruning method: magnitude, wanda, sparsegpt, ria.
    #[arg(long, default_value = "wanda")]
    method: String,
    /// Unstructured sparsity.
    #[arg(long, default_value_t = 0.5, conflicts_with = "nm")]
    sparsity: f64,
    /// N:M pattern instead (e.g. 2:4).
    #[arg(long)]
    nm: Option<String>,
    /// Repair method: masked-lora, lors, losa (prunes the dense model in stages itself;
    /// the one-shot pruned model is its baseline), seft.
    #[arg(long, default_value = "masked-lora")]
    repair: String,
    /// Optimizer steps of the repair.
    #[arg(long, default_value_t = 80)]
    steps: usize,
    /// Tokens per training window.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Peak learning rate (default: 5e-4 for adapters, 5e-5 for SEFT's weights).
    #[arg(long)]
    lr: Option<f32>,
    /// Adapter rank.
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 32.0)]
    alpha: f32,
    /// Windows LoRS's initialisation averages the gradient over.
    #[arg(long, default_value_t = 16)]
    init_samples: usize,
    /// SEFT: steps between drop-and-grow rounds.
    #[arg(long, default_value_t = 60)]
    seft_interval: usize,
    /// LoSA: calibration windows (the first training windows) for each stage's re-prune,
    /// also used for its layer redundancy.
    #[arg(long, default_value_t = 16)]
    losa_calib_samples: usize,
    /// Calibration and training data: text files, or .jsonl / .json(.gz) files of
    /// documents (default: State of the Union addresses before 2000).
    #[arg(long = "data")]
    data: Vec<PathBuf>,
    /// JSON field holding each document's text in .jsonl / .json(.gz) data files.
    #[arg(long, default_value = "text")]
    text_field: String,
    #[command(flatten)]
    data_limits: DataArgs,
    /// Calibration windows for pruning.
    #[arg(long, default_value_t = 32)]
    calib_samples: usize,
    /// Evaluation text (default: Moby Dick).
    #[arg(long = "text")]
    texts: Vec<PathBuf>,
    /// Evaluation windows of 512 tokens.
    #[arg(long, default_value_t = 16)]
    eval_windows: usize,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute and output dtype (default: compute in f32 on cpu, bf16 on cuda; write in
    /// the source's stored dtype).
    #[arg(long)]
    dtype: Option<String>,
    /// Output directory.
    #[arg(long, default_value = "sparsetune-run")]
    out_dir: PathBuf,
    /// Reuse the pruned model and training checkpoint in --out-dir, where they were made
    /// from this run's inputs (otherwise they are made again).
    #[arg(long)]
    resume: bool,
    /// Replace an --out-dir that an earlier run did not write (a run's files and models
    /// only; never an input, never a directory holding other files).
    #[arg(long)]
    overwrite: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Prompt tokens and generated tokens of each stage's decode-speed measurement.
const DECODE_PROMPT: usize = 32;
const DECODE_TOKENS: usize = 64;

/// One row of the table.
#[derive(serde::Serialize)]
struct Stage {
    stage: String,
    perplexity: f64,
    sparsity: f64,
    seconds: f64,
    /// Greedy decode speed of the stage's model as `generate` runs it (pruned linears
    /// compressed), in this run's dtype and threads.
    decode_tokens_per_second: f64,
}

/// Decoder-linear weights zero in `pruned` and non-zero in `merged` (must be none for the
/// adapter methods, whose mask is fixed; SEFT moves its mask).
fn revived(pruned: &Llama, merged: &Llama) -> Result<usize> {
    let mut n = 0;
    for (a, b) in pruned.layers.iter().zip(&merged.layers) {
        for p in Proj::ALL {
            let (x, y) = (a.linear(p).dense()?.to_f32_vec()?, b.linear(p).dense()?.to_f32_vec()?);
            n += x.iter().zip(&y).filter(|(u, v)| **u == 0.0 && **v != 0.0).count();
        }
    }
    Ok(n)
}

/// The pruned model at `dir` (opened) and its `sparsetune.prune` record when it records
/// being made from `now`; otherwise None, after saying on stderr why it is made again.
fn reusable_pruned(dir: &Path, now: &Provenance) -> Option<(ModelSource, serde_json::Value)> {
    // The writer puts config.json last: with it, the directory is complete.
    if !dir.join("config.json").is_file() {
        return None;
    }
    let source = match ModelSource::open(dir) {
        Ok(source) => source,
        Err(e) => {
            eprintln!("{} cannot be reused ({e}), pruning again", dir.display());
            return None;
        }
    };
    let record: Option<serde_json::Value> = source
        .embedding_file_metadata()
        .and_then(|md| md.get("sparsetune.prune"))
        .and_then(|s| serde_json::from_str(s).ok());
    let saved: Option<Provenance> = record.as_ref().and_then(|r| serde_json::from_value(r["provenance"].clone()).ok());
    let why = match &saved {
        Some(saved) => saved.differences(now, "--model", "--data"),
        None => vec!["it does not record what it was made from".to_string()],
    };
    if why.is_empty() {
        return record.map(|r| (source, r));
    }
    eprintln!("{} was made from other inputs, pruning again:\n  {}", dir.display(), why.join("\n  "));
    None
}

/// Whether the checkpoint at `path` continues a training made from `now` with `method` and
/// `cfg`; if not, says on stderr why the training starts again.
fn reusable_checkpoint(path: &Path, now: &Provenance, method: RepairMethod, cfg: &TrainConfig) -> bool {
    let ck = match checkpoint::load(path) {
        Ok(ck) => ck,
        Err(e) => {
            eprintln!("not resuming: {e}; training from the start");
            return false;
        }
    };
    let mut why = match ck.check_provenance(now, "the base model", "--data") {
        Ok(()) => Vec::new(),
        Err(e) => vec![e.to_string()],
    };
    if ck.meta.method != method.name() {
        why.push(format!("it was written by method '{}', not '{method}'", ck.meta.method));
    }
    if &ck.meta.config != cfg {
        why.push("the training configuration differs".to_string());
    }
    if !why.is_empty() {
        eprintln!("not resuming from {}: {}; training from the start", path.display(), why.join("; "));
    }
    why.is_empty()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Runs `run`.
pub fn run(a: RunArgs) -> Result<()> {
    let start = Instant::now();
    let repair_method: RepairMethod = a.repair.parse()?;
    let prune_method: Method = a.method.parse()?;
    let pattern = match &a.nm {
        Some(nm) => {
            let (n, m) = parse_nm(nm)?;
            Pattern::NM { n, m }
        }
        None => Pattern::Unstructured(a.sparsity),
    };
    let prune_opts = PruneOptions::new(prune_method, pattern);
    let model_path = match &a.model {
        Some(p) => p.clone(),
        None => default_model()?,
    };
    let data_files = if a.data.is_empty() { sotu_files(&default_asset("sotu")?, 2000)? } else { a.data.clone() };
    let texts = if a.texts.is_empty() { vec![default_asset("moby-dick/data.txt")?] } else { a.texts.clone() };
    OutputPlan::new(a.overwrite)
        .model("--model", &model_path)
        .data("--data", &data_files)
        .data("--text", &texts)
        .output("--out-dir", &a.out_dir, OutputKind::RunDir, role::RUN)
        .check()?;
    crate::prune::check_config(&llama::load_config(&model_path)?, &prune_opts)?;
    let default_dtype = if a.device.starts_with("cuda") { "bf16" } else { "f32" };
    let (device, dtype) = device_and_dtype(&a.device, a.dtype.as_deref().unwrap_or(default_dtype))?;
    let lr = a.lr.unwrap_or(if repair_method == RepairMethod::Seft { 5e-5 } else { 5e-4 });
    if repair_method == RepairMethod::Losa && a.nm.is_some() {
        return Err(Error::invalid("LoSA allocates unstructured per-layer sparsity: use --sparsity, not --nm"));
    }
    let mut cfg = method_config(repair_method, a.steps);
    (cfg.seq_len, cfg.lr, cfg.seed) = (a.seq_len, lr, a.seed);
    cfg.check()?;
    let mut manifest = RunManifest::start(&a.out_dir)?;
    let out = |name: &str| a.out_dir.join(name);

    let tokenizer = llama::load_tokenizer(&model_path)?;
    let limits = a.data_limits.limits()?;
    let eval_streams = window_streams(&tokenizer, &texts, &a.text_field, &limits, 512, Some(a.eval_windows))?.tokens;
    let eval_windows = windows_of_streams(&eval_streams, 512, Some(a.eval_windows))?;
    // Perplexity on the engine with dense linears (prefill is compute-bound: the dense GEMM
    // is the faster route, and the weights are the same); then the decode speed of the
    // model as `generate` runs it (pruned linears compressed), DECODE_TOKENS greedy tokens
    // after the first DECODE_PROMPT of the eval text.
    let evaluate = |m: &Llama, what: &str| -> Result<(f64, f64, f64)> {
        let pb = progress::bar(eval_windows.len() as u64, &format!("eval {what}"));
        let engine = InferModel::new(m.clone(), SparseMode::Off)?;
        let r = perplexity(&engine, &eval_windows, |done, _| pb.set_position(done as u64))?;
        pb.finish_and_clear();
        drop(engine);
        let engine = InferModel::new(m.clone(), SparseMode::Auto)?;
        let prompt = eval_windows[0][..DECODE_PROMPT.min(eval_windows[0].len())].to_vec();
        let opts = GenerateOptions { max_new: DECODE_TOKENS, stop: vec![] };
        let gen = engine.generate(&[prompt], &opts, |_, l| argmax(l), |_, _| Ok(()))?;
        Ok((r.perplexity, r.seconds, gen.decode_tokens_per_second()))
    };
    let mut stages = Vec::new();

    // 1. Dense.
    progress::stage(&format!("loading {}", model_path.display()));
    let model_source = ModelSource::open(&model_path)?;
    let out_dtype = if a.dtype.is_some() { dtype } else { model_source.stored_dtype() };
    let write = |m: &Llama, dir: &std::path::Path, report: (&str, String)| -> Result<()> {
        let spec = OutputSpec {
            config: &m.config,
            source: Some(&model_source),
            tokenizer: &tokenizer,
            dtype: out_dtype,
            metadata: BTreeMap::from([
                (report.0.to_string(), report.1),
                (META_WRITTEN_BY.to_string(), role::RUN.to_string()),
            ]),
        };
        progress::stage(&format!("writing {}", dir.display()));
        llama::save_model(m, dir, OutputForm::Directory { max_shard_bytes: DEFAULT_MAX_SHARD_BYTES }, spec)
    };
    let dense = model_source.load(&device, dtype)?;
    let dense_hash = model_hash(&dense)?;
    let (ppl, secs, decode) = evaluate(&dense, "dense")?;
    stages.push(Stage {
        stage: "dense".into(),
        perplexity: ppl,
        sparsity: 0.0,
        seconds: secs,
        decode_tokens_per_second: decode,
    });

    // 2. Prune (or reuse the pruned model of an interrupted run made from the same inputs).
    let pruned_path = out("pruned");
    let t0 = Instant::now();
    // The data files are hashed once, for both stages' records.
    let data_hashes = hash_data_files(&data_files)?;
    let prune_from = prune_provenance(
        dense_hash.clone(),
        &data_hashes,
        &prune_opts,
        a.calib_samples,
        512,
        &a.text_field,
        dtype,
        out_dtype,
    );
    let reusable = if a.resume { reusable_pruned(&pruned_path, &prune_from) } else { None };
    let reused = reusable.is_some();
    let (pruned, prune_report) = match reusable {
        Some((source, record)) => {
            eprintln!("reusing {}", pruned_path.display());
            (source.load(&device, dtype)?, record)
        }
        None => {
            let mut m = dense.clone();
            let samples = if crate::prune::needs_calibration(&prune_opts) {
                calibration_windows(&tokenizer, &data_files, a.calib_samples, 512, &a.text_field, &limits)?
            } else {
                Vec::new()
            };
            let report = prune_with_bar(&mut m, &samples, &prune_opts)?;
            let mut record = serde_json::to_value(&report).map_err(|e| Error::invalid(e.to_string()))?;
            record["provenance"] = serde_json::to_value(&prune_from).map_err(|e| Error::invalid(e.to_string()))?;
            write(&m, &pruned_path, ("sparsetune.prune", record.to_string()))?;
            // Train on the model as written (and as a resumed run reads it back).
            let m = if out_dtype == dtype { m } else { llama::load(&pruned_path, &device, dtype)? };
            (m, record)
        }
    };
    // LoSA prunes the dense model itself, in stages.
    let source = if repair_method == RepairMethod::Losa {
        Some(dense)
    } else {
        drop(dense);
        None
    };
    let prune_seconds = t0.elapsed().as_secs_f64();
    let pruned_layers = pruned.layer_sparsity()?;
    let (ppl, _, decode) = evaluate(&pruned, "pruned")?;
    let label = match pattern {
        Pattern::Unstructured(s) => format!("{} {:.0}%", prune_method.name(), s * 100.0),
        nm => format!("{} {nm}", prune_method.name()),
    };
    stages.push(Stage {
        stage: format!("pruned ({label})"),
        perplexity: ppl,
        sparsity: mean(&pruned_layers),
        seconds: prune_seconds,
        decode_tokens_per_second: decode,
    });

    // 3. Repair.
    let streams = window_streams(&tokenizer, &data_files, &a.text_field, &limits, a.seq_len + 1, None)?.tokens;
    let data = TrainData::new(&streams, a.seq_len)?;
    let ck_dir = out("checkpoint");
    let ck_path = checkpoint::path_in(&ck_dir);
    let mut lora = LoraOptions::new(a.rank, a.alpha);
    lora.seed = a.seed;
    if let Pattern::NM { n, m } = pattern {
        lora.format = SparseFormat::NM { n, m };
    }
    let mut opts = RepairOptions::new(lora);
    opts.seft.interval = a.seft_interval;
    (opts.losa.target, opts.losa.calib_samples) = (Some(a.sparsity), a.losa_calib_samples);
    opts.losa.cka_samples = opts.losa.cka_samples.min(a.losa_calib_samples);
    // The checkpoint resumes only a training made on this base model from this run's data
    // and options.
    let base_hash = if source.is_some() { dense_hash } else { model_hash(&pruned)? };
    let train_from = training_provenance(base_hash, data_hashes, repair_method, &opts, &a.text_field, dtype);
    let resuming = a.resume && ck_path.exists() && reusable_checkpoint(&ck_path, &train_from, repair_method, &cfg);
    opts.init_samples = if resuming { 0 } else { a.init_samples };
    let t0 = Instant::now();
    let planned = planned_peak(source.as_ref().unwrap_or(&pruned), repair_method, &cfg, &opts)?;
    let init_pb = progress::bar(0, "init");
    let mut repair =
        Repair::new(source.as_ref().unwrap_or(&pruned), repair_method, opts, cfg, &data, &mut |done, total| {
            init_pb.set_length(total as u64);
            init_pb.set_position(done as u64);
        })?;
    init_pb.finish_and_clear();
    // Training holds only its own model: the pruned one is read back for the final check.
    drop(source);
    drop(pruned);
    device.reset_peak_memory();
    if resuming {
        repair.resume(&ck_path)?;
        eprintln!("resumed from {} at step {}", ck_path.display(), repair.trainer.step);
    }
    train(&mut repair, &data, Some((&ck_dir, 20, &train_from)), None)?;
    let peak = device.memory().peak_bytes;
    let merged = repair.merged()?;
    let repair_seconds = t0.elapsed().as_secs_f64();
    let repaired_layers = repair.trainer.model.layer_sparsity()?;
    let revived = revived(&llama::load(&pruned_path, &device, dtype)?, &merged)?;
    let run_meta = serde_json::json!({ "repair": repair_method.name() }).to_string();
    write(&merged, &out("repaired"), ("sparsetune.run", run_meta))?;
    let (ppl, _, decode) = evaluate(&merged, "repaired")?;
    stages.push(Stage {
        stage: format!("repaired ({})", repair_method.name()),
        perplexity: ppl,
        sparsity: mean(&repaired_layers),
        seconds: repair_seconds,
        decode_tokens_per_second: decode,
    });

    // 4. Report and charts.
    let h = &repair.trainer.history;
    let losses: Vec<(f64, f64)> = h.iter().map(|r| (r.step as f64, f64::from(r.loss))).collect();
    let mut files = vec![(
        "loss.png",
        line_chart_png(
            &out("loss.png"),
            &format!("Training loss ({})", repair_method.name()),
            "step",
            "loss",
            &[Series { name: repair_method.name(), points: &losses }],
            false,
        )?,
    )];
    let names: Vec<String> = stages.iter().map(|s| s.stage.clone()).collect();
    let ppls: Vec<f64> = stages.iter().map(|s| s.perplexity).collect();
    let png = bar_chart_png(
        &out("perplexity.png"),
        "Perplexity per stage",
        &names,
        "perplexity",
        &[("perplexity", &ppls)],
        false,
    )?;
    files.push(("perplexity.png", png));
    let layers: Vec<String> = (0..pruned_layers.len()).map(|l| l.to_string()).collect();
    let png = bar_chart_png(
        &out("layers.png"),
        "Sparsity per decoder layer",
        &layers,
        "sparsity",
        &[("pruned", &pruned_layers), ("repaired", &repaired_layers)],
        false,
    )?;
    files.push(("layers.png", png));
    let ranks: Option<Vec<f64>> = match repair.losa.as_ref().and_then(|l| l.stages.last()) {
        Some(last) => Some(last.ranks.iter().map(|&r| r as f64).collect()),
        None => repair_method.has_adapters().then(|| vec![a.rank as f64; layers.len()]),
    };
    if let Some(r) = &ranks {
        let png =
            bar_chart_png(&out("rank.png"), "Adapter rank per decoder layer", &layers, "rank", &[("rank", r)], false)?;
        files.push(("rank.png", png));
    }
    let report = serde_json::json!({
        "model": model_path.display().to_string(),
        "prune": {
            "method": prune_method.name(),
            "pattern": pattern.to_string(),
            "reused": reused,
            "provenance": prune_from,
            "report": prune_report,
        },
        "repair": {
            "method": repair_method.name(),
            "config": repair.trainer.config,
            "rank": repair_method.has_adapters().then_some(a.rank),
            "seft_evolutions": repair.evolutions,
            "losa_stages": repair.losa.as_ref().map(|l| &l.stages),
            "history": h,
            "peak_bytes": peak,
            "planned_peak_bytes": planned,
            "resumed": resuming,
            "provenance": train_from,
        },
        "stages": stages,
        "layer_sparsity": { "pruned": pruned_layers, "repaired": repaired_layers },
        "layer_rank": ranks,
        "revived_weights": revived,
        "device": device.label(),
        "dtype": dtype.as_str(),
        "eval": { "texts": texts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(), "windows": eval_windows.len(), "seq_len": 512 },
        "seconds": start.elapsed().as_secs_f64(),
    });
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::invalid(e.to_string()))?;
    files.push(("report.json", json.into_bytes()));
    // An earlier run's rank chart does not describe this one.
    let stale: &[&str] = if ranks.is_none() { &["rank.png"] } else { &[] };
    manifest.write_files(&a.out_dir, &files, stale)?;

    println!("{:<28} {:>11} {:>9} {:>9} {:>14}", "stage", "perplexity", "sparsity", "seconds", "decode tok/s");
    for s in &stages {
        println!(
            "{:<28} {:>11.2} {:>9.4} {:>9.1} {:>14.1}",
            s.stage, s.perplexity, s.sparsity, s.seconds, s.decode_tokens_per_second
        );
    }
    let moved = match repair_method {
        RepairMethod::Seft => " (SEFT moves the mask)",
        RepairMethod::Losa => " (LoSA selects its own masks from the dense model)",
        _ => "",
    };
    println!(
        "sparsity: {:.4} pruned, {:.4} repaired; {revived} pruned weights non-zero after repair{moved}",
        mean(&pruned_layers),
        mean(&repaired_layers)
    );
    let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
    println!(
        "repair peak memory {:.1} MiB measured, {:.1} MiB planned, on {}; total {:.0} s",
        mib(peak),
        mib(planned as usize),
        device.label(),
        start.elapsed().as_secs_f64()
    );
    println!("wrote {} (report.json, *.png, pruned and repaired models)", a.out_dir.display());
    Ok(())
}
