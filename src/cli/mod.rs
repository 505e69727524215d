//! The `sparsetune` command line. Results go to stdout (a table, or one JSON object with
//! `--json`); progress bars and warnings go to stderr.

mod bench;
mod bench_decode;
mod eval;
mod finetune;
mod generate;
mod plan;
mod progress;
mod prune;
mod run;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::data::DataLimits;
use crate::model::llama::hf_dir::parse_size;
use crate::{DType, Device, Error, Result};

/// Prune LLaMA-family models and repair them with sparsity-preserving fine-tuning.
#[derive(Parser, Debug)]
#[command(name = "sparsetune", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Perplexity of a model over text files, in non-overlapping windows.
    Eval(eval::EvalArgs),
    /// Continue a prompt (or answer it with --chat) with a KV cache, greedy or sampled,
    /// on the model as stored (pruned linears run compressed).
    Generate(generate::GenerateArgs),
    /// Prune a model (magnitude, Wanda, SparseGPT, RIA; unstructured or N:M).
    Prune(prune::PruneArgs),
    /// The main job: dense eval → prune → eval → repair → merge → eval, with a report.
    Run(run::RunArgs),
    /// Repair a pruned model by sparsity-preserving fine-tuning (masked LoRA, LoRS, SEFT).
    Finetune(finetune::FinetuneArgs),
    /// Predicted peak memory of a fine-tuning run, item by item.
    Plan(plan::PlanArgs),
    /// Time single kernels at chosen sizes (median of repetitions, JSON lines).
    Bench(bench::BenchArgs),
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Eval(a) => eval::run_eval(a),
        Command::Generate(a) => generate::run(a),
        Command::Prune(a) => prune::run(a),
        Command::Run(a) => run::run(a),
        Command::Finetune(a) => finetune::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Where the default assets live (see scripts/fetch-assets.sh).
fn default_asset(rel: &str) -> Result<PathBuf> {
    let p = crate::io::cache_dir().join(rel);
    if p.exists() {
        Ok(p)
    } else {
        Err(Error::invalid(format!(
            "default asset {} not found: run scripts/fetch-assets.sh (or pass a path)",
            p.display()
        )))
    }
}

/// The default model: SmolLM2-135M-Instruct (GGUF, Q4_1).
pub(crate) fn default_model() -> Result<PathBuf> {
    default_asset("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The process's peak resident memory (`VmHWM` of /proc/self/status), where the platform
/// reports it.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The bounds on reading data files, shared by the commands that read text.
#[derive(Args, Debug, Clone)]
pub(crate) struct DataArgs {
    /// Bytes read from one data file at most, after decompression (e.g. 1GiB, 500MB);
    /// reading stops earlier once the tokens needed are had.
    #[arg(long, default_value = "1GiB")]
    max_data_bytes: String,
    /// Longest JSON record (a line of a .jsonl file, an element of a .json array), and the
    /// most text one tokenizer call may take when a text cannot be cut into pieces.
    #[arg(long, default_value = "16MiB")]
    max_document_bytes: String,
}

impl DataArgs {
    /// The limits the flags give.
    pub(crate) fn limits(&self) -> Result<DataLimits> {
        let document = parse_size(&self.max_document_bytes)?;
        Ok(DataLimits {
            max_data_bytes: parse_size(&self.max_data_bytes)?,
            max_document_bytes: usize::try_from(document)
                .map_err(|_| Error::invalid(format!("--max-document-bytes {document} is too large")))?,
        })
    }
}

/// Parses `--device` and `--dtype`.
pub(crate) fn device_and_dtype(device: &str, dtype: &str) -> Result<(Device, DType)> {
    let dtype: DType = dtype.parse()?;
    if !dtype.is_compute_float() {
        return Err(Error::invalid(format!("--dtype must be f32 or bf16, not {dtype}")));
    }
    Ok((Device::from_name(device)?, dtype))
}
