//! `sparsetune eval`: perplexity of a model over text files.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::{default_asset, default_model, device_and_dtype, progress, DataArgs};
use crate::data::{window_streams, windows_of_streams};
use crate::eval::perplexity;
use crate::infer::{InferModel, SparseMode};
use crate::io::outputs::{new_write_id, role, write_stamp, OutputKind, OutputPlan};
use crate::model::llama;
use crate::Result;

/// Arguments of `sparsetune eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model: GGUF, safetensors, or a directory with model.safetensors (default: SmolLM2-135M).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Text files, each tokenized whole, or .jsonl / .json(.gz) files of documents
    /// (default: Moby Dick).
    #[arg(long = "text")]
    texts: Vec<PathBuf>,
    /// JSON field holding each document's text in .jsonl / .json(.gz) data files.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Evaluate only the first K windows (default: all); the texts are read only as far
    /// as they need.
    #[arg(long)]
    windows: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
    /// Decoder linears stored compressed and run by the sparse kernels: auto (those with
    /// at least 25% zeros), on, off.
    #[arg(long, default_value = "auto")]
    sparse: String,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Also write the first window's token ids (`ids`, U32 [T]) and logits (`logits`, F32
    /// [T, vocab]) to this safetensors file, e.g. for `scripts/hf_fixtures.py check`
    /// (its directory must exist; an existing file is replaced only if an earlier
    /// `eval --logits-out` wrote it, or with --overwrite).
    #[arg(long)]
    logits_out: Option<PathBuf>,
    /// Replace an existing --logits-out file that an earlier `eval --logits-out` did not
    /// write (never an input).
    #[arg(long)]
    overwrite: bool,
}

/// Runs `eval`.
pub fn run_eval(a: EvalArgs) -> Result<()> {
    let model_path = match a.model {
        Some(p) => p,
        None => default_model()?,
    };
    let texts = if a.texts.is_empty() { vec![default_asset("moby-dick/data.txt")?] } else { a.texts };
    let (device, dtype) = device_and_dtype(&a.device, &a.dtype)?;
    if let Some(path) = &a.logits_out {
        OutputPlan::new(a.overwrite)
            .model("--model", &model_path)
            .data("--text", &texts)
            .output("--logits-out", path, OutputKind::File, role::LOGITS)
            .check()?;
    }
    let t0 = Instant::now();
    progress::stage(&format!("loading {}", model_path.display()));
    let tokenizer = llama::load_tokenizer(&model_path)?;
    let model = llama::load(&model_path, &device, dtype)?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let limits = a.data.limits()?;
    progress::stage("reading text");
    let read = window_streams(&tokenizer, &texts, &a.text_field, &limits, a.seq_len, a.windows)?;
    let (streams, whole) = (read.tokens, read.read_whole);
    let windows = windows_of_streams(&streams, a.seq_len, a.windows)?;
    if let Some(path) = &a.logits_out {
        let first = windows[0];
        let ids = crate::Tensor::from_vec(first.to_vec(), [1, first.len()], &device)?;
        let logits = model.forward(None, &ids, crate::model::llama::ForwardOptions::default())?;
        let logits = logits.to_dtype(crate::DType::F32)?.reshape([first.len(), model.config.vocab_size])?;
        let entries = [
            crate::io::OwnedEntry::u32s("ids", vec![first.len()], first),
            crate::io::OwnedEntry::of("logits", &logits)?,
        ];
        crate::io::write_owned(path, &entries, &write_stamp(&new_write_id(), role::LOGITS))?;
    }
    let engine = InferModel::new(model, SparseMode::parse(&a.sparse)?)?;
    let pb = progress::bar(windows.len() as u64, "eval");
    let report = perplexity(&engine, &windows, |done, _| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    if a.json {
        let v = serde_json::json!({
            "perplexity": report.perplexity,
            "mean_loss": report.mean_loss,
            "tokens_scored": report.tokens_scored,
            "windows": report.windows,
            "seconds": report.seconds,
            "tokens_per_second": report.tokens_per_second,
            "load_seconds": load_seconds,
            "model": model_path.display().to_string(),
            "texts": texts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "text_tokens": streams.iter().map(Vec::len).collect::<Vec<_>>(),
            "text_read_whole": whole,
            "seq_len": a.seq_len,
            "device": device.label(),
            "dtype": dtype.as_str(),
            "sparse": a.sparse,
            "linears": engine.choices,
        });
        println!("{v}");
    } else {
        println!("model             {}", model_path.display());
        println!("device / dtype    {} / {}", device.label(), dtype);
        println!("text tokens       {:?}", streams.iter().map(Vec::len).collect::<Vec<_>>());
        println!("windows × seq-len {} × {}", report.windows, a.seq_len);
        println!("tokens scored     {}", report.tokens_scored);
        println!("mean loss         {:.4}", report.mean_loss);
        println!("perplexity        {:.3}", report.perplexity);
        println!(
            "seconds           {:.2} ({:.0} tokens/s; load {:.2} s)",
            report.seconds, report.tokens_per_second, load_seconds
        );
    }
    Ok(())
}
