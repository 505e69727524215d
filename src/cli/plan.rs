//! `sparsetune plan`: the predicted peak memory of a fine-tuning run, item by item.

use std::path::PathBuf;

use clap::Args;

use super::prune::parse_nm;
use crate::finetune::plan::{plan, shape, PlanInput};
use crate::model::llama;
use crate::{DType, Result};

/// Arguments of `sparsetune plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// A known shape: llama2-7b, llama2-13b, llama3-8b, smollm2-135m.
    #[arg(long, conflicts_with = "model", default_value = "llama2-7b")]
    shape: String,
    /// Read the shape from a model file instead.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Unstructured sparsity of the decoder linears.
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// N:M instead of unstructured, e.g. 2:4.
    #[arg(long)]
    nm: Option<String>,
    /// Adapter rank (LoSA: the final mean rank).
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Repair method: masked-lora, lors, losa, seft.
    #[arg(long, default_value = "masked-lora")]
    method: String,
    /// LoSA: calibration windows (of --seq-len tokens) per stage.
    #[arg(long, default_value_t = 128)]
    calib_samples: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Windows per micro-batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Plan without activation checkpointing.
    #[arg(long)]
    no_checkpointing: bool,
    /// Compute dtype: bf16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Plan for the CPU (f32 workspace) instead of a GPU.
    #[arg(long)]
    cpu: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `plan`.
pub fn run(a: PlanArgs) -> Result<()> {
    let config = match &a.model {
        Some(p) => llama::load_config(p)?,
        None => shape(&a.shape)?,
    };
    let nm = a.nm.as_deref().map(parse_nm).transpose()?;
    let dtype: DType = a.dtype.parse()?;
    let input = PlanInput {
        config,
        sparsity: nm.map_or(a.sparsity, |(n, m)| 1.0 - n as f64 / m as f64),
        nm,
        dtype,
        seq_len: a.seq_len,
        batch: a.batch,
        rank: a.rank,
        checkpointing: !a.no_checkpointing,
        cuda: !a.cpu,
        method: a.method.parse()?,
        calib_samples: a.calib_samples,
    };
    let p = plan(&input)?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if a.json {
        let v = serde_json::json!({
            "shape": a.model.as_ref().map_or(a.shape.clone(), |p| p.display().to_string()),
            "total_bytes": p.total_bytes,
            "method": input.method.name(),
            "total_gib": gib(p.total_bytes),
            "peak_phase": p.peak_phase,
            "items": p.items,
        });
        println!("{v}");
    } else {
        for i in &p.items {
            println!("{:<26} {:>9.3} GiB", i.name, gib(i.bytes));
        }
        println!("{:<26} {:>9.3} GiB  (peak during: {})", "total", gib(p.total_bytes), p.peak_phase);
    }
    Ok(())
}
