//! `sparsetune prune`: prune a model and write HF-named safetensors (zeros where pruned)
//! with the pruning report in the metadata (`sparsetune.prune`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;

use super::{default_asset, default_model, device_and_dtype, progress};
use crate::data::{calibration_windows, sotu_files};
use crate::model::llama::{self, Llama};
use crate::prune::{prune_model, Allocation, DsnotOptions, Method, Pattern, PruneOptions, PruneReport};
use crate::{Error, Result};

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
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    calib_seq_len: usize,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute and output dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Print one JSON object (the report) on stdout.
    #[arg(long)]
    json: bool,
}

/// Parses "N:M".
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
    let (device, dtype) = device_and_dtype(&a.device, &a.dtype)?;
    // Cheap checks first: the options against the model's config.
    crate::prune::check_config(&llama::load_config(&model_path)?, &opts)?;
    let calib_files = if a.calib.is_empty() { sotu_files(&default_asset("sotu")?, 2000)? } else { a.calib.clone() };
    let mut model = llama::load(&model_path, &device, dtype)?;
    let tokenizer = llama::load_tokenizer(&model_path)?;
    let samples = if crate::prune::needs_calibration(&opts) {
        calibration_windows(&tokenizer, &calib_files, a.calib_samples, a.calib_seq_len)?
    } else {
        Vec::new()
    };

    let report = prune_with_bar(&mut model, &samples, &opts)?;

    let mut meta = BTreeMap::new();
    let mut record = serde_json::to_value(&report).map_err(|e| Error::invalid(e.to_string()))?;
    record["calibration_files"] =
        serde_json::json!(calib_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    record["source_model"] = serde_json::json!(model_path.display().to_string());
    meta.insert("sparsetune.prune".to_string(), record.to_string());
    llama::save_safetensors(&model, &a.out, dtype, Some(&tokenizer), &meta)?;

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
        println!("wrote         {}", a.out.display());
    }
    Ok(())
}
