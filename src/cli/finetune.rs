//! `sparsetune finetune`: repair a pruned model with sparsity-preserving fine-tuning,
//! checkpointing as it goes, and write the merged model (a Hugging Face directory or one
//! file, dense; or one compressed file) and optionally the adapters alone.
//!
//! For masked-lora and seft the pruned model is loaded compressed, a weight at a time
//! ([`ModelSource::load_compressed`]): memory holds its kept weights, never a dense copy
//! of the model. LoRS's gradient initialisation and LoSA's re-pruning read the dense
//! pruned weights, so those two load it dense. The output is merged a linear at a time
//! as it is written.
//!
//! Before anything is read, the outputs (`--out`, `--adapter-out`, `--checkpoint-dir`) are
//! checked ([`OutputPlan`]). A checkpoint records what the training was made from (a
//! content hash of the pruned model as loaded, the data files' hashes, the options that
//! change the result); `--resume` refuses one made from anything else, naming it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::{default_asset, device_and_dtype, peak_rss_bytes, progress, DataArgs};
use crate::data::{sotu_files, window_streams};
use crate::finetune::plan::{plan, PlanInput};
use crate::finetune::{
    checkpoint, export, Decay, LoraOptions, Repair, RepairMethod, RepairOptions, TrainConfig, TrainData,
};
use crate::io::outputs::{
    hash_data_files, model_hash, role, DataFile, OutputKind, OutputPlan, Provenance, META_WRITTEN_BY,
};
use crate::model::llama::hf_dir::parse_size;
use crate::model::llama::{self, Llama, ModelSource, OutputForm, OutputSpec, WeightLayout};
use crate::sparse::SparseFormat;
use crate::{DType, Error, Result};

/// Arguments of `sparsetune finetune`.
#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The pruned model (safetensors or GGUF; zeros where pruned). For losa: the model it
    /// prunes in stages (dense with --sparsity, or already pruned).
    #[arg(long)]
    model: PathBuf,
    /// masked-lora, lors, losa or seft.
    #[arg(long, default_value = "masked-lora")]
    method: String,
    /// Training data: text files, or .jsonl / .json(.gz) files of documents (default:
    /// State of the Union addresses before 2000).
    #[arg(long = "data")]
    data: Vec<PathBuf>,
    /// JSON field holding each document's text in .jsonl / .json(.gz) data files.
    #[arg(long, default_value = "text")]
    text_field: String,
    #[command(flatten)]
    data_limits: DataArgs,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Adapter rank.
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// LoRA alpha (scale = alpha / rank).
    #[arg(long, default_value_t = 32.0)]
    alpha: f32,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    lr: f32,
    /// Fraction of steps warming up [default: 0.1; LoSA: 0.3 of each stage].
    #[arg(long)]
    warmup: Option<f32>,
    /// Clip the global gradient norm, 0: off [default: 1.0; LoSA: 0.3].
    #[arg(long)]
    max_grad_norm: Option<f32>,
    /// AdamW weight decay [default: 0; LoSA: 0.001].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Windows per micro-batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Micro-batches per step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Keep every decoder layer's activations instead of recomputing them in backward.
    #[arg(long)]
    no_checkpointing: bool,
    /// Seed of the data order and the adapter initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Windows LoRS averages the gradient over for its initialisation.
    #[arg(long, default_value_t = 128)]
    init_samples: usize,
    /// SEFT: steps between drop-and-grow rounds.
    #[arg(long, default_value_t = 60)]
    seft_interval: usize,
    /// SEFT: swap fraction p₀ at step 0 (cosine-decayed to 0).
    #[arg(long, default_value_t = 0.2)]
    seft_swap: f32,
    /// LoSA: final mean sparsity (default: the model's own).
    #[arg(long)]
    sparsity: Option<f64>,
    /// LoSA: stages.
    #[arg(long, default_value_t = 5)]
    losa_stages: usize,
    /// LoSA: calibration windows (the first training windows) for the re-prune.
    #[arg(long, default_value_t = 128)]
    losa_calib_samples: usize,
    /// LoSA: of those, the windows for the layer redundancy (CKA).
    #[arg(long, default_value_t = 64)]
    losa_cka_samples: usize,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute and output dtype (default: compute in f32 on cpu, bf16 on cuda, with f32
    /// master weights; write in the source's stored dtype).
    #[arg(long)]
    dtype: Option<String>,
    /// Directory for training checkpoints.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 25)]
    save_every: usize,
    /// Resume from the checkpoint in --checkpoint-dir (if there is one).
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps in this invocation (checkpointed first); finish later
    /// with --resume.
    #[arg(long)]
    stop_after: Option<usize>,
    /// Output: the merged model, a Hugging Face directory, or one file if the name ends in
    /// .safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Largest weights shard of a directory output (e.g. 5GB, 500MB, 2GiB).
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    /// Write the decoder linears in the compressed sparse-bitmask layout (one .safetensors
    /// file).
    #[arg(long)]
    compressed: bool,
    /// Also write the adapters alone (PEFT names, with their masks).
    #[arg(long)]
    adapter_out: Option<PathBuf>,
    /// Replace an existing --out, --adapter-out or --checkpoint-dir that an earlier
    /// finetune did not write; never an input, never a directory holding other files.
    #[arg(long)]
    overwrite: bool,
    /// Print one JSON object (the report) on stdout.
    #[arg(long)]
    json: bool,
}

/// Trains `repair` to its last step with a progress bar (loss, lr, tokens/s, ETA),
/// checkpointing into `checkpoint = (dir, every, made from)` every `every` steps, at the
/// end, and when stopping after `stop_after` steps of this call. Returns false when it
/// stopped early.
pub(super) fn train(
    repair: &mut Repair,
    data: &TrainData,
    checkpoint: Option<(&std::path::Path, usize, &Provenance)>,
    stop_after: Option<usize>,
) -> Result<bool> {
    let pb = progress::bar(repair.trainer.config.steps as u64, repair.method.name());
    pb.set_position(repair.trainer.step as u64);
    let mut this_run = 0;
    while !repair.done() {
        if let Some(k) = repair.pending_stage() {
            pb.set_message(format!("LoSA stage {k}: re-selecting masks and ranks"));
        }
        let r = repair.step(data)?;
        this_run += 1;
        pb.set_message(format!("loss {:.4} lr {:.2e} {:.0} tok/s", r.loss, r.lr, r.tokens as f64 / r.seconds));
        pb.inc(1);
        let stop = stop_after == Some(this_run);
        if let Some((dir, every, made_from)) = checkpoint {
            if repair.trainer.step.is_multiple_of(every) || repair.done() || stop {
                repair.save_with(&checkpoint::path_in(dir), Some(made_from))?;
            }
        }
        if stop && !repair.done() {
            pb.finish_and_clear();
            return Ok(false);
        }
    }
    pb.finish_and_clear();
    Ok(true)
}

/// The training defaults of `method`: [`TrainConfig::new`], and for LoSA its own (30%
/// warmup and linear decay per stage, clipping at 0.3, weight decay 0.001).
pub(super) fn method_config(method: RepairMethod, steps: usize) -> TrainConfig {
    let mut cfg = TrainConfig::new(steps);
    if method == RepairMethod::Losa {
        (cfg.warmup, cfg.decay, cfg.max_grad_norm) = (0.3, Decay::Linear, Some(0.3));
        cfg.adamw.weight_decay = 0.001;
    }
    cfg
}

/// What a training run is made from: the [`model_hash`] of the model it starts from
/// (`base_hash`), the training files' hashes (`data`), and the options of `method` that change the
/// result beyond its [`TrainConfig`] (which a checkpoint compares itself).
pub(super) fn training_provenance(
    base_hash: String,
    data: Vec<DataFile>,
    method: RepairMethod,
    opts: &RepairOptions,
    text_field: &str,
    dtype: DType,
) -> Provenance {
    let mut p = Provenance::new(base_hash, data)
        .arg("--method", method.name())
        .arg("--text-field", text_field)
        .arg("compute dtype", dtype.as_str());
    if method.has_adapters() {
        p = p.arg("--rank", opts.lora.rank).arg("--alpha", opts.lora.alpha).arg("adapter seed", opts.lora.seed);
    }
    match method {
        RepairMethod::Seft => {
            p = p.arg("--seft-interval", opts.seft.interval).arg("--seft-swap", opts.seft.swap_fraction);
        }
        RepairMethod::Losa => {
            p = p
                .arg("--sparsity", opts.losa.target)
                .arg("--losa-stages", opts.losa.stages)
                .arg("--losa-calib-samples", opts.losa.calib_samples)
                .arg("--losa-cka-samples", opts.losa.cka_samples);
        }
        RepairMethod::MaskedLora | RepairMethod::Lors => {}
    }
    p
}

/// The memory plan's predicted peak for repairing `source` with `method` as configured
/// (LoSA: planned from its source's sparsity, where its base is largest).
pub(super) fn planned_peak(
    source: &Llama,
    method: RepairMethod,
    cfg: &TrainConfig,
    opts: &RepairOptions,
) -> Result<u64> {
    let input = PlanInput {
        config: source.config.clone(),
        sparsity: source.sparsity()?,
        nm: match opts.lora.format {
            SparseFormat::NM { n, m } => Some((n, m)),
            SparseFormat::Bitmask => None,
        },
        dtype: source.dtype(),
        seq_len: cfg.seq_len,
        batch: cfg.batch,
        rank: opts.lora.rank,
        checkpointing: cfg.checkpoint_layers,
        cuda: source.device().is_cuda(),
        method,
        calib_samples: opts.losa.calib_samples,
    };
    Ok(plan(&input)?.total_bytes)
}

/// Runs `finetune`.
pub fn run(a: FinetuneArgs) -> Result<()> {
    let method: RepairMethod = a.method.parse()?;
    let default_dtype = if a.device.starts_with("cuda") { "bf16" } else { "f32" };
    let (device, dtype) = device_and_dtype(&a.device, a.dtype.as_deref().unwrap_or(default_dtype))?;
    if a.resume && a.checkpoint_dir.is_none() {
        return Err(Error::invalid("--resume needs --checkpoint-dir"));
    }
    if a.stop_after.is_some() && a.checkpoint_dir.is_none() {
        return Err(Error::invalid("--stop-after needs --checkpoint-dir (to resume from)"));
    }
    if a.adapter_out.is_some() && !method.has_adapters() {
        return Err(Error::invalid(format!("--adapter-out: method {method} trains no adapters")));
    }
    if a.save_every == 0 {
        return Err(Error::invalid("--save-every must be at least 1"));
    }
    let mut cfg = method_config(method, a.steps);
    (cfg.batch, cfg.grad_accum, cfg.seq_len, cfg.lr, cfg.seed) = (a.batch, a.grad_accum, a.seq_len, a.lr, a.seed);
    cfg.warmup = a.warmup.unwrap_or(cfg.warmup);
    if let Some(c) = a.max_grad_norm {
        cfg.max_grad_norm = (c > 0.0).then_some(c);
    }
    cfg.adamw.weight_decay = a.weight_decay.unwrap_or(cfg.adamw.weight_decay);
    cfg.checkpoint_layers = !a.no_checkpointing;
    cfg.check()?;

    let form = OutputForm::of(&a.out, parse_size(&a.max_shard_size)?);
    if a.compressed && form != OutputForm::File {
        return Err(Error::invalid("--compressed writes one file: give --out NAME.safetensors"));
    }
    let files = if a.data.is_empty() { sotu_files(&default_asset("sotu")?, 2000)? } else { a.data.clone() };
    let mut outputs = OutputPlan::new(a.overwrite).model("--model", &a.model).data("--data", &files).output(
        "--out",
        &a.out,
        if form == OutputForm::File { OutputKind::File } else { OutputKind::ModelDir },
        role::FINETUNE,
    );
    if let Some(p) = &a.adapter_out {
        outputs = outputs.output("--adapter-out", p, OutputKind::File, role::ADAPTERS);
    }
    if let Some(d) = &a.checkpoint_dir {
        outputs = outputs.output("--checkpoint-dir", d, OutputKind::CheckpointDir, role::CHECKPOINT);
    }
    outputs.check()?;

    let start = Instant::now();
    progress::stage(&format!("loading {}", a.model.display()));
    let source = ModelSource::open(&a.model)?;
    let tokenizer = source.tokenizer()?;
    let out_dtype = if a.dtype.is_some() { dtype } else { source.stored_dtype() };
    device.reset_peak_memory();
    let pruned = if matches!(method, RepairMethod::MaskedLora | RepairMethod::Seft) {
        source.load_compressed(&device, dtype)?
    } else {
        source.load(&device, dtype)?
    };
    let (load_seconds, load_peak) = (start.elapsed().as_secs_f64(), device.memory().peak_bytes);
    let load_rss = peak_rss_bytes();
    progress::stage(&format!(
        "loaded in {load_seconds:.1} s, {:.1} MiB ({})",
        load_peak as f64 / (1u64 << 20) as f64,
        if matches!(method, RepairMethod::MaskedLora | RepairMethod::Seft) { "compressed" } else { "dense" }
    ));
    progress::stage("reading training data");
    let limits = a.data_limits.limits()?;
    let streams = window_streams(&tokenizer, &files, &a.text_field, &limits, a.seq_len + 1, None)?.tokens;
    let data = TrainData::new(&streams, a.seq_len)?;

    let mut lora = LoraOptions::new(a.rank, a.alpha);
    (lora.format, lora.seed) = (SparseFormat::Bitmask, a.seed);
    let resume_from = a.checkpoint_dir.as_deref().map(checkpoint::path_in).filter(|p| a.resume && p.exists());
    // A checkpoint holds the initialised adapters: no need to recompute LoRS's init.
    let mut opts = RepairOptions::new(lora);
    opts.init_samples = if resume_from.is_some() { 0 } else { a.init_samples };
    (opts.seft.interval, opts.seft.swap_fraction) = (a.seft_interval, a.seft_swap);
    (opts.losa.target, opts.losa.stages) = (a.sparsity, a.losa_stages);
    (opts.losa.calib_samples, opts.losa.cka_samples) = (a.losa_calib_samples, a.losa_cka_samples);
    let planned = planned_peak(&pruned, method, &cfg, &opts)?;
    // What the checkpoints are made from, checked against the one to resume before any
    // training work.
    let made_from = match &a.checkpoint_dir {
        Some(_) => Some(training_provenance(
            model_hash(&pruned)?,
            hash_data_files(&files)?,
            method,
            &opts,
            &a.text_field,
            dtype,
        )),
        None => None,
    };
    if let (Some(path), Some(now)) = (&resume_from, &made_from) {
        checkpoint::load(path)?.check_provenance(now, "--model", "--data")?;
    }
    let init_pb = progress::bar(0, "init");
    let mut repair = Repair::new(&pruned, method, opts, cfg, &data, &mut |done, total| {
        init_pb.set_length(total as u64);
        init_pb.set_position(done as u64);
    })?;
    init_pb.finish_and_clear();
    drop(pruned);
    device.reset_peak_memory();
    if let Some(path) = &resume_from {
        repair.resume(path)?;
        eprintln!("resumed from {} at step {}", path.display(), repair.trainer.step);
    }

    let train_start = Instant::now();
    let ckpt = a.checkpoint_dir.as_deref().zip(made_from.as_ref()).map(|(d, p)| (d, a.save_every, p));
    if !train(&mut repair, &data, ckpt, a.stop_after)? {
        eprintln!("stopped at step {} of {}; continue with --resume", repair.trainer.step, a.steps);
        return Ok(());
    }
    let train_seconds = train_start.elapsed().as_secs_f64();
    let peak = device.memory().peak_bytes;

    if let Some(p) = &a.adapter_out {
        export::save_adapters(&repair.trainer.model, p, out_dtype)?;
    }
    let trainer = &repair.trainer;
    let h = &trainer.history;
    let report = serde_json::json!({
        "method": method.name(),
        "steps": trainer.step,
        "skipped_steps": h.iter().filter(|r| r.skipped).count(),
        "first_loss": h.first().map(|r| r.loss),
        "last_loss": h.last().map(|r| r.loss),
        "losses": h.iter().map(|r| r.loss).collect::<Vec<_>>(),
        "train_seconds": train_seconds,
        "tokens_per_second": h.iter().map(|r| r.tokens).sum::<usize>() as f64 / h.iter().map(|r| r.seconds).sum::<f64>().max(1e-9),
        "peak_bytes": peak,
        "planned_peak_bytes": planned,
        "load_seconds": load_seconds,
        "load_peak_bytes": load_peak,
        "load_peak_rss_bytes": load_rss,
        "device": device.label(),
        "dtype": dtype.as_str(),
        "out_dtype": out_dtype.as_str(),
        "rank": a.rank,
        "alpha": a.alpha,
        "seft_evolutions": repair.evolutions,
        "losa_stages": repair.losa.as_ref().map(|l| &l.stages),
        "config": trainer.config,
        "train_files": files.len(),
        "train_windows": data.len(),
        "seconds": start.elapsed().as_secs_f64(),
        "out": a.out.display().to_string(),
    });
    let meta = BTreeMap::from([
        ("sparsetune.finetune".to_string(), report.to_string()),
        (META_WRITTEN_BY.to_string(), role::FINETUNE.to_string()),
    ]);
    progress::stage(&format!("writing {}", a.out.display()));
    if a.compressed {
        let merged = repair.merged()?;
        llama::save_safetensors_as(&merged, &a.out, out_dtype, WeightLayout::SparseBitmask, Some(&tokenizer), &meta)?;
    } else {
        let spec = OutputSpec {
            config: &trainer.model.config,
            source: Some(&source),
            tokenizer: &tokenizer,
            dtype: out_dtype,
            metadata: meta,
        };
        llama::save_model(&trainer.model, &a.out, form, spec)?;
    }

    if a.json {
        println!("{report}");
    } else {
        if let Some(losa) = &repair.losa {
            let last = losa.stages.last();
            println!(
                "method        losa ({} stages to sparsity {:.4}; final ranks {:?})",
                losa.stages.len(),
                losa.target,
                last.map(|s| &s.ranks)
            );
        } else if method.has_adapters() {
            println!("method        {} (rank {}, alpha {})", method.name(), a.rank, a.alpha);
        } else {
            let swapped: usize = repair.evolutions.iter().map(|e| e.swapped).sum();
            println!(
                "method        {} ({} evolutions, {swapped} weights regrown)",
                method.name(),
                repair.evolutions.len()
            );
        }
        println!("data          {} files, {} windows of {} tokens", files.len(), data.len(), a.seq_len);
        println!(
            "loss          {:.4} -> {:.4} over {} steps ({} skipped)",
            h.first().map_or(f32::NAN, |r| r.loss),
            h.last().map_or(f32::NAN, |r| r.loss),
            trainer.step,
            h.iter().filter(|r| r.skipped).count()
        );
        println!("train time    {train_seconds:.1} s");
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        println!(
            "peak memory   {:.1} MiB measured, {:.1} MiB planned ({})",
            mib(peak),
            mib(planned as usize),
            device.label()
        );
        println!("wrote         {}{}", a.out.display(), if a.compressed { " (sparse-bitmask)" } else { "" });
    }
    Ok(())
}
