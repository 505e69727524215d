//! `sparsetune prune`: prune a model a decoder layer at a time and write it (zeros where
//! pruned) as a Hugging Face directory or one safetensors file, with the pruning report in
//! the metadata (`sparsetune.prune`).
//!
//! The model is never loaded whole: each layer is read from the mapped files when its
//! turn comes (in the compute dtype), pruned, and written to the output in the output
//! dtype (the source's stored dtype unless `--dtype` says otherwise), so peak memory is
//! the embeddings, one layer, and the calibration activations (plus SparseGPT's Hessians
//! of that layer), whatever the model's size.
//!
//! Before anything is read, the output is checked ([`OutputPlan`]: not an input, its
//! directory there, nothing at the path that an earlier `prune --out` did not write unless
//! `--overwrite`). The report records what the model was made from (`provenance`: a
//! content hash of the source's weights, hashed as they are read for pruning, the
//! calibration files' hashes and the options that change the result).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;

use super::{default_asset, default_model, peak_rss_bytes, progress, DataArgs};
use crate::data::{calibration_windows, sotu_files};
use crate::io::outputs::{
    hash_data_files, role, DataFile, ModelHasher, OutputKind, OutputPlan, Provenance, META_WRITTEN_BY,
};
use crate::model::llama::hf_dir::parse_size;
use crate::model::llama::{DecoderLayer, Llama, ModelSource, ModelWriter, OutputForm, OutputSpec, Part, Proj};
use crate::prune::{
    prune_layers, prune_model, Allocation, DsnotOptions, LayerStore, Method, Pattern, PruneOptions, PruneReport,
};
use crate::{DType, Device, Error, Result};

/// Arguments of `sparsetune prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Model to prune (default: SmolLM2-135M).
    #[arg(long)]
    model: Option<PathBuf>,
    /// magnitude, wanda, sparsegpt or ria.
    #[arg(long)]
    method: String,
    /// Unstructured target sparsity in [0, 1).
    #[arg(long, conflicts_with = "nm", allow_negative_numbers = true)]
    sparsity: Option<f64>,
    /// N:M (N kept in every M consecutive inputs), e.g. 2:4.
    #[arg(long)]
    nm: Option<String>,
    /// Layer-wise sparsity: uniform, owl or atp.
    #[arg(long, default_value = "uniform")]
    allocation: String,
    /// ATP's common difference β.
    #[arg(long, default_value_t = 0.005)]
    atp_step: f64,
    /// OWL's outlier multiple M.
    #[arg(long, default_value_t = 5.0)]
    owl_m: f64,
    /// OWL's λ.
    #[arg(long, default_value_t = 0.08)]
    owl_lambda: f64,
    /// Explicit per-layer sparsities, comma-separated (overrides --allocation).
    #[arg(long, value_delimiter = ',')]
    layer_sparsity: Vec<f64>,
    /// DSnoT prune-and-grow on top of the mask.
    #[arg(long)]
    dsnot: bool,
    /// Calibration text files (default: State of the Union addresses before 2000).
    #[arg(long = "calib")]
    calib: Vec<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 32)]
    calib_samples: usize,
    /// JSON field holding each document's text in .jsonl / .json(.gz) data files.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    calib_seq_len: usize,
    #[command(flatten)]
    data: DataArgs,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute and output dtype, f32 or bf16 (default: compute in f32, write in the
    /// source's stored dtype).
    #[arg(long)]
    dtype: Option<String>,
    /// Output: a Hugging Face directory, or one file if the name ends in .safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Largest weights shard of a directory output (e.g. 5GB, 500MB, 2GiB).
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    /// Replace an existing --out that an earlier `prune --out` did not write (another
    /// model's directory, a file); never an input, never a directory holding other files.
    #[arg(long)]
    overwrite: bool,
    /// Print one JSON object (the report) on stdout.
    #[arg(long)]
    json: bool,
}

/// What a pruned model is made from: the source's [`crate::io::outputs::model_hash`] as
/// computed, the calibration files' hashes (`calib`, kept when the method reads them), and
/// the options that change the result.
#[allow(clippy::too_many_arguments)]
pub(super) fn provenance(
    model_hash: String,
    calib: &[DataFile],
    opts: &PruneOptions,
    samples: usize,
    seq_len: usize,
    text_field: &str,
    compute: DType,
    out: DType,
) -> Provenance {
    let calibrated = crate::prune::needs_calibration(opts);
    let data = if calibrated { calib.to_vec() } else { Vec::new() };
    let mut p = Provenance::new(model_hash, data)
        .arg("--method", opts.method.name())
        .arg("--sparsity/--nm", format!("{:?}", opts.pattern))
        .arg("--allocation", format!("{:?}", opts.allocation))
        .arg("--dsnot", opts.dsnot.is_some())
        .arg("compute dtype", compute.as_str())
        .arg("output dtype", out.as_str());
    if calibrated {
        p = p.arg("--calib-samples", samples).arg("--calib-seq-len", seq_len).arg("--text-field", text_field);
    }
    p
}

/// [`prune_model`] with a progress bar per decoder layer.
pub(super) fn prune_with_bar(model: &mut Llama, samples: &[Vec<u32>], opts: &PruneOptions) -> Result<PruneReport> {
    let pb = progress::bar(model.config.num_hidden_layers as u64, "prune");
    let report = prune_model(model, samples, opts, &mut |l| {
        pb.set_message(format!("layer {} at {:.3}", l.layer, l.achieved));
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    Ok(report)
}

/// Parses "N:M".
pub(crate) fn parse_nm(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::invalid(format!("--nm expects N:M such as 2:4, got '{s}'"));
    let (n, m) = s.split_once(':').ok_or_else(bad)?;
    Ok((n.trim().parse().map_err(|_| bad())?, m.trim().parse().map_err(|_| bad())?))
}

/// Runs `prune`.
pub fn run(a: PruneArgs) -> Result<()> {
    let method: Method = a.method.parse()?;
    let pattern = match (&a.nm, a.sparsity, a.layer_sparsity.is_empty()) {
        (Some(nm), _, _) => {
            let (n, m) = parse_nm(nm)?;
            Pattern::NM { n, m }
        }
        (None, Some(s), _) => Pattern::Unstructured(s),
        (None, None, false) => Pattern::Unstructured(crate::prune::allocation::mean(&a.layer_sparsity)),
        (None, None, true) => return Err(Error::invalid("give --sparsity S or --nm N:M")),
    };
    let allocation = if !a.layer_sparsity.is_empty() {
        if let Some(s) = a.sparsity {
            let mean = crate::prune::allocation::mean(&a.layer_sparsity);
            if (mean - s).abs() > 1e-6 {
                return Err(Error::invalid(format!("--layer-sparsity has mean {mean}, --sparsity says {s}")));
            }
        }
        Allocation::Explicit(a.layer_sparsity.clone())
    } else {
        match a.allocation.as_str() {
            "uniform" => Allocation::Uniform,
            "owl" => Allocation::Owl { m: a.owl_m, lambda: a.owl_lambda },
            "atp" => Allocation::Atp { beta: a.atp_step },
            other => return Err(Error::invalid(format!("unknown allocation '{other}' (uniform, owl, atp)"))),
        }
    };
    let mut opts = PruneOptions::new(method, pattern);
    opts.allocation = allocation;
    opts.dsnot = a.dsnot.then(DsnotOptions::default);

    let model_path = match a.model {
        Some(p) => p,
        None => default_model()?,
    };
    let device = Device::from_name(&a.device)?;
    let given = a.dtype.as_deref().map(str::parse::<DType>).transpose()?;
    if let Some(d) = given.filter(|d| !d.is_compute_float()) {
        return Err(Error::invalid(format!("--dtype must be f32 or bf16, not {d}")));
    }
    let form = OutputForm::of(&a.out, parse_size(&a.max_shard_size)?);
    let limits = a.data.limits()?;
    // The default calibration text is looked for only when the method reads one (magnitude
    // pruning needs no data, so it runs where the assets are not installed).
    let calib_files = if a.calib.is_empty() && crate::prune::needs_calibration(&opts) {
        sotu_files(&default_asset("sotu")?, 2000)?
    } else {
        a.calib.clone()
    };
    let kind = if form == OutputForm::File { OutputKind::File } else { OutputKind::ModelDir };
    OutputPlan::new(a.overwrite)
        .model("--model", &model_path)
        .data("--calib", &calib_files)
        .output("--out", &a.out, kind, role::PRUNE)
        .check()?;
    progress::stage(&format!("opening {}", model_path.display()));
    let source = ModelSource::open(&model_path)?;
    // Cheap checks first: the options against the model's config.
    crate::prune::check_config(source.config(), &opts)?;
    let (compute, out_dtype) = (given.unwrap_or(DType::F32), given.unwrap_or(source.stored_dtype()));
    let tokenizer = source.tokenizer()?;
    let (samples, calib_hashes) = if crate::prune::needs_calibration(&opts) {
        progress::stage("reading calibration text");
        let samples =
            calibration_windows(&tokenizer, &calib_files, a.calib_samples, a.calib_seq_len, &a.text_field, &limits)?;
        (samples, hash_data_files(&calib_files)?)
    } else {
        (Vec::new(), Vec::new())
    };

    let config = source.config().clone();
    let spec = OutputSpec {
        config: &config,
        source: Some(&source),
        tokenizer: &tokenizer,
        dtype: out_dtype,
        metadata: BTreeMap::from([(META_WRITTEN_BY.to_string(), role::PRUNE.to_string())]),
    };
    let mut writer = ModelWriter::create(&a.out, form, spec)?;
    // The embedding is written first (in file order) and kept for calibration.
    let embed = source.tensor(&Part::Embed, compute, &device)?;
    let mut hasher = ModelHasher::new();
    hasher.add(&Part::Embed, &embed)?;
    writer.put(&Part::Embed, &embed)?;
    source.release(&Part::Embed);
    let report = {
        let mut store = Streamed {
            source: &source,
            dtype: compute,
            device: &device,
            writer: &mut writer,
            hasher: &mut hasher,
            hashed: 0,
        };
        let pb = progress::bar(config.num_hidden_layers as u64, "prune");
        let r = prune_layers(&config, &embed, &mut store, &samples, &opts, &mut |l| {
            pb.set_message(format!("layer {} at {:.3}", l.layer, l.achieved));
            pb.inc(1);
        })?;
        pb.finish_and_clear();
        r
    };
    drop(embed);
    for part in [Part::Norm, Part::LmHead] {
        if part != Part::LmHead || !config.tie_word_embeddings {
            let t = source.tensor(&part, compute, &device)?;
            hasher.add(&part, &t)?;
            writer.put(&part, &t)?;
            source.release(&part);
        }
    }
    let made_from = provenance(
        hasher.hex(),
        &calib_hashes,
        &opts,
        a.calib_samples,
        a.calib_seq_len,
        &a.text_field,
        compute,
        out_dtype,
    );

    let mut record = serde_json::to_value(&report).map_err(|e| Error::invalid(e.to_string()))?;
    record["calibration_files"] =
        serde_json::json!(calib_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    record["source_model"] = serde_json::json!(model_path.display().to_string());
    record["dtype"] = serde_json::json!(out_dtype.as_str());
    record["compute_dtype"] = serde_json::json!(compute.as_str());
    record["device"] = serde_json::json!(device.label());
    record["peak_memory_bytes"] = serde_json::json!(device.memory().peak_bytes);
    record["provenance"] = serde_json::to_value(&made_from).map_err(|e| Error::invalid(e.to_string()))?;
    progress::stage(&format!("writing {}", a.out.display()));
    writer.finish(BTreeMap::from([("sparsetune.prune".to_string(), record.to_string())]))?;
    record["peak_rss_bytes"] = serde_json::json!(peak_rss_bytes());

    if a.json {
        record["out"] = serde_json::json!(a.out.display().to_string());
        println!("{record}");
    } else {
        println!(
            "method        {} ({}, {} allocation{})",
            report.method,
            report.pattern,
            report.allocation,
            if report.dsnot { ", DSnoT" } else { "" }
        );
        println!("calibration   {} × {} tokens", report.calibration_samples, report.calibration_seq_len);
        println!("sparsity      {:.4} over the decoder linears", report.overall_sparsity);
        let per_layer: Vec<String> = report.layers.iter().map(|l| format!("{:.3}", l.achieved)).collect();
        println!("per layer     {}", per_layer.join(" "));
        if let Some(st) = report.nm_storage {
            println!(
                "N:M storage   {:.1} MB compressed vs {:.1} MB dense ({:.1} MB saved, round trip bit-exact)",
                st.compressed_bytes as f64 / 1e6,
                st.dense_bytes as f64 / 1e6,
                (st.dense_bytes - st.compressed_bytes) as f64 / 1e6
            );
        }
        println!("seconds       {:.1}", report.seconds);
        if let Some(rss) = peak_rss_bytes() {
            println!("peak memory   {:.2} GiB resident", rss as f64 / (1u64 << 30) as f64);
        }
        println!("wrote         {} ({})", a.out.display(), out_dtype);
    }
    Ok(())
}

/// Layers read from the files one at a time and written out once pruned; each is hashed
/// (into the source's content hash) the first time it is read.
struct Streamed<'s, 'w> {
    source: &'s ModelSource,
    dtype: DType,
    device: &'s Device,
    writer: &'s mut ModelWriter<'w>,
    hasher: &'s mut ModelHasher,
    /// Layers hashed so far (OWL reads every layer twice, in order).
    hashed: usize,
}

impl LayerStore for Streamed<'_, '_> {
    fn layer(&mut self, l: usize) -> Result<DecoderLayer> {
        let layer = self.source.layer(l, self.dtype, self.device)?;
        if l == self.hashed {
            self.hasher.add(&Part::InputNorm(l), &layer.input_norm)?;
            for p in Proj::ALL {
                self.hasher.add(&Part::Linear(l, p), layer.linear(p).dense()?)?;
            }
            self.hasher.add(&Part::PostNorm(l), &layer.post_norm)?;
            self.hashed += 1;
        }
        Ok(layer)
    }

    fn put(&mut self, l: usize, layer: DecoderLayer) -> Result<()> {
        self.writer.put(&Part::InputNorm(l), &layer.input_norm)?;
        for p in Proj::ALL {
            self.writer.put(&Part::Linear(l, p), layer.linear(p).dense()?)?;
        }
        self.writer.put(&Part::PostNorm(l), &layer.post_norm)
    }
}
