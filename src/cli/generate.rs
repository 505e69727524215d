//! `sparsetune generate`: a continuation of one prompt (or, with `--chat`, the model's reply
//! to it as a user message) by the inference engine: prefill, then decode steps with a KV
//! cache, greedy unless `--temperature` > 0. Text streams to stdout as it is produced;
//! `--json` prints one object instead.

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;

use super::{default_model, device_and_dtype, progress};
use crate::infer::chat::{ChatTemplate, Message};
use crate::infer::generation_config::stop_ids;
use crate::infer::sample::{Sampler, Sampling};
use crate::infer::{GenerateOptions, InferModel, SparseMode};
use crate::io::Tokenizer;
use crate::model::llama;
use crate::{Error, Result};

/// Arguments of `sparsetune generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: GGUF, safetensors, or a Hugging Face directory (default: SmolLM2-135M).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt text.
    #[arg(long)]
    prompt: String,
    /// Render the prompt as a user message with the model's chat template (from
    /// tokenizer_config.json or the GGUF metadata), ready for the assistant's reply.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new: usize,
    /// Sampling temperature; 0 (the default) is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the K most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities add up to P, in (0, 1].
    #[arg(long)]
    top_p: Option<f32>,
    /// Seed of the sampler (same seed, same tokens).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Decoder linears stored compressed: auto (those with at least 25% zeros), on, off.
    #[arg(long, default_value = "auto")]
    sparse: String,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Print one JSON object (tokens, text, speeds, the format of every linear) instead
    /// of streaming the text.
    #[arg(long)]
    json: bool,
}

/// Runs `generate`.
pub fn run(a: GenerateArgs) -> Result<()> {
    let sampling = Sampling { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
    sampling.validate()?;
    if a.max_new == 0 {
        return Err(Error::invalid("--max-new must be at least 1"));
    }
    let mode = SparseMode::parse(&a.sparse)?;
    let model_path = match a.model {
        Some(p) => p,
        None => default_model()?,
    };
    let (device, dtype) = device_and_dtype(&a.device, &a.dtype)?;
    progress::stage(&format!("loading {}", model_path.display()));
    let tokenizer = llama::load_tokenizer(&model_path)?;
    let text = if a.chat {
        let template = ChatTemplate::from_tokenizer(&tokenizer, &model_path.display().to_string())?;
        template.render(&[Message::new("user", &a.prompt)], true)?
    } else {
        a.prompt.clone()
    };
    let prompt = encode_prompt(&tokenizer, &text, a.chat)?;
    let model = InferModel::new(llama::load(&model_path, &device, dtype)?, mode)?;
    if prompt.len() >= model.context() {
        return Err(Error::invalid(format!(
            "--prompt has {} tokens, the model's context is {}: no room to generate",
            prompt.len(),
            model.context()
        )));
    }
    let stop = stop_ids(&model_path, &tokenizer, model.config.vocab_size)?;
    let mut sampler = Sampler::new(sampling)?;
    let opts = GenerateOptions { max_new: a.max_new, stop: stop.clone() };
    let mut stream = TextStream::new(&tokenizer, !a.json);
    if !a.json && !a.chat {
        print!("{}", a.prompt);
    }
    let gen = model.generate(
        std::slice::from_ref(&prompt),
        &opts,
        |_, logits| sampler.next(logits),
        |_, token| stream.push(token, &stop),
    )?;
    stream.finish()?;
    if a.json {
        let tokens = &gen.tokens[0];
        let shown: Vec<u32> = tokens.iter().copied().filter(|t| !stop.contains(t)).collect();
        let v = serde_json::json!({
            "tokens": tokens,
            "text": tokenizer.decode(&shown)?,
            "prompt_tokens": prompt.len(),
            "finish": gen.finish[0],
            "prefill_tokens_per_second": gen.prefill_tokens_per_second(),
            "decode_tokens_per_second": gen.decode_tokens_per_second(),
            "kv_cache_bytes": gen.cache_bytes,
            "weight_bytes": model.weight_bytes_per_token(),
            "device": device.label(),
            "dtype": dtype.as_str(),
            "sparse": a.sparse,
            "linears": model.choices,
        });
        println!("{v}");
    } else {
        eprintln!(
            "[{} prompt tokens: {:.1} tokens/s prefill; {} generated: {:.1} tokens/s decode]",
            prompt.len(),
            gen.prefill_tokens_per_second(),
            gen.tokens[0].len(),
            gen.decode_tokens_per_second()
        );
    }
    Ok(())
}

/// The prompt's ids: a rendered chat template already holds its special tokens (its BOS
/// among them), so it is encoded as it is; plain text gets the BOS the tokenizer's files
/// ask for (as transformers' `tokenizer(prompt)` does).
fn encode_prompt(tokenizer: &Tokenizer, text: &str, chat: bool) -> Result<Vec<u32>> {
    let mut ids: Vec<u32> = if chat { Vec::new() } else { tokenizer.document_bos().into_iter().collect() };
    ids.extend(tokenizer.encode(text)?);
    if ids.is_empty() {
        return Err(Error::invalid("--prompt gives no tokens"));
    }
    Ok(ids)
}

/// Prints generated text as it grows: the decoding of all tokens so far, from where the
/// last print ended (a token may complete a character another began), holding back a
/// trailing partial character.
struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    tokens: Vec<u32>,
    printed: usize,
    enabled: bool,
}

impl<'a> TextStream<'a> {
    fn new(tokenizer: &'a Tokenizer, enabled: bool) -> Self {
        TextStream { tokenizer, tokens: Vec::new(), printed: 0, enabled }
    }

    fn push(&mut self, token: u32, stop: &[u32]) -> Result<()> {
        if !self.enabled || stop.contains(&token) {
            return Ok(());
        }
        self.tokens.push(token);
        let text = self.tokenizer.decode(&self.tokens)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.printed || !text.is_char_boundary(self.printed) {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&text.as_bytes()[self.printed..])
            .and_then(|()| out.flush())
            .map_err(|e| Error::io("<stdout>", e))?;
        self.printed = text.len();
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if self.enabled {
            println!();
        }
        Ok(())
    }
}
