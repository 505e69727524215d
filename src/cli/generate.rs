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
use crate::infer::{Finish, GenerateOptions, InferModel, SparseMode};
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
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Sample only among the K most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities add up to P, in (0, 1].
    #[arg(long, allow_negative_numbers = true)]
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
    let mut stream = TextStream::new(&tokenizer, &prompt, !a.json);
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
            "[{} prompt tokens: {:.1} tokens/s prefill; {} generated: {:.1} tokens/s decode; {}]",
            prompt.len(),
            gen.prefill_tokens_per_second(),
            gen.tokens[0].len(),
            gen.decode_tokens_per_second(),
            finish_text(gen.finish[0], a.max_new, model.context())
        );
    }
    Ok(())
}

/// Why generation stopped, for the summary line.
fn finish_text(finish: Finish, max_new: usize, context: usize) -> String {
    match finish {
        Finish::Stop => "stopped at an end-of-sequence id".to_string(),
        Finish::Length => format!("stopped after --max-new {max_new}"),
        Finish::Context => format!("stopped: the model's context of {context} positions is full"),
    }
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

/// Prompt tokens a [`TextStream`] decodes before the generated ones: a tokenizer that
/// strips the first token's leading space (SentencePiece style) then prints the space a
/// continuation starts with, as in the decoding of prompt and continuation together.
const STREAM_CONTEXT_TOKENS: usize = 5;

/// Prints generated text as it grows. Each new token's text is the decoding of a short
/// window of tokens (those of the last piece printed and the ones since) less the decoding
/// of the same window without the new ones, so a step decodes a few tokens, not all of
/// them, and a token that completes a character another began prints the whole
/// character; a trailing partial character is held back until it completes (or the
/// stream ends).
struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    /// The window: tokens of the last piece printed (or the prompt's last few), then the
    /// tokens not yet printed.
    tokens: Vec<u32>,
    /// Where the tokens not yet printed start in `tokens`.
    read: usize,
    enabled: bool,
}

impl<'a> TextStream<'a> {
    /// A stream continuing `prompt` (its last few tokens give the first pieces context);
    /// nothing is printed unless `enabled`.
    fn new(tokenizer: &'a Tokenizer, prompt: &[u32], enabled: bool) -> Self {
        let tokens = prompt[prompt.len().saturating_sub(STREAM_CONTEXT_TOKENS)..].to_vec();
        TextStream { tokenizer, read: tokens.len(), tokens, enabled }
    }

    /// The text `token` completes, if any: the window's decoding past the decoding of the
    /// tokens already printed in it. None while the text ends in a partial character.
    fn piece(&mut self, token: u32) -> Result<Option<String>> {
        self.tokens.push(token);
        let new = self.unprinted()?;
        if new.is_empty() || new.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        self.tokens.drain(..self.read);
        self.read = self.tokens.len();
        Ok(Some(new))
    }

    /// The text held back at the end (a partial character, printed as the tokenizer
    /// decodes it), if any.
    fn rest(&mut self) -> Result<Option<String>> {
        if self.read == self.tokens.len() {
            return Ok(None);
        }
        let rest = self.unprinted()?;
        self.read = self.tokens.len();
        Ok(Some(rest).filter(|r| !r.is_empty()))
    }

    /// The window's decoding past the decoding of its printed tokens ([`unprinted_from`]).
    fn unprinted(&self) -> Result<String> {
        let (printed, now) = (self.tokenizer.decode(&self.tokens[..self.read])?, self.tokenizer.decode(&self.tokens)?);
        Ok(now[unprinted_from(&printed, &now)..].to_string())
    }

    /// Prints `token`'s text (stop ids print nothing).
    fn push(&mut self, token: u32, stop: &[u32]) -> Result<()> {
        if !self.enabled || stop.contains(&token) {
            return Ok(());
        }
        match self.piece(token)? {
            Some(text) => print_now(&text),
            None => Ok(()),
        }
    }

    /// Prints what was held back and ends the line.
    fn finish(&mut self) -> Result<()> {
        if self.enabled {
            if let Some(text) = self.rest()? {
                print_now(&text)?;
            }
            println!();
        }
        Ok(())
    }
}

/// Where the text not yet printed starts in `now`, a window's decoding whose first tokens
/// decoded to `printed`: after `printed` where `now` begins with it. Otherwise a byte run
/// became invalid UTF-8 with the new tokens (a byte-fallback tokenizer then decodes each of
/// its bytes as U+FFFD, the printed ones too): what was printed stays, and the text goes
/// on from the first character boundary at or past the printed length, so that the
/// stream never stalls.
fn unprinted_from(printed: &str, now: &str) -> usize {
    if now.starts_with(printed) {
        return printed.len();
    }
    (printed.len()..now.len()).find(|&i| now.is_char_boundary(i)).unwrap_or(now.len())
}

/// Writes `text` to stdout and flushes it.
fn print_now(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|e| Error::io("<stdout>", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer of the test fixtures: SentencePiece style with byte fallback, or byte-level
    /// BPE (GPT-2 style).
    fn fixture(path: &str) -> Tokenizer {
        Tokenizer::from_file(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
    }

    /// The streamed pieces of `generated` after `prompt`, with what `finish` prints.
    fn streamed(tokenizer: &Tokenizer, prompt: &[u32], generated: &[u32]) -> String {
        let mut stream = TextStream::new(tokenizer, prompt, true);
        let mut text = String::new();
        for &t in generated {
            text.extend(stream.piece(t).unwrap());
            assert!(stream.tokens.len() <= STREAM_CONTEXT_TOKENS + generated.len(), "the window grew");
        }
        text.extend(stream.rest().unwrap());
        text
    }

    /// The pieces joined are the decoding of prompt and continuation together less the
    /// prompt's decoding, for text with characters of 1 to 4 bytes (split across byte
    /// tokens by the byte-fallback tokenizer) and for random ids, in both fixture styles.
    #[test]
    fn stream_pieces_join_into_the_full_decoding() {
        for path in ["tests/fixtures/tokenizers/llama2-style.json", "tests/fixtures/hf/llama3-untied/tokenizer.json"] {
            let tok = fixture(path);
            let prompt = tok.encode("Call me Ishmael. Some years ago").unwrap();
            let mut cases = vec![];
            for text in [" never mind how long", " naïve café, 日本語 and 🙂🙂!", "🙂", " a\nb  c"] {
                cases.push(tok.encode(text).unwrap());
            }
            // Random ids, less those of lone bytes that are no character (a run of them can
            // make bytes printed before it invalid: checked below).
            let mut x = 7u64;
            let mut random = vec![];
            while random.len() < 200 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let id = ((x >> 33) % tok.vocab_size() as u64) as u32;
                if !tok.decode(&[id]).unwrap().contains('\u{FFFD}') {
                    random.push(id);
                }
            }
            cases.push(random);
            for generated in cases {
                let whole = tok.decode(&[&prompt[..], &generated[..]].concat()).unwrap();
                let head = tok.decode(&prompt).unwrap();
                let want = whole.strip_prefix(head.as_str()).unwrap_or_else(|| panic!("{path}: {whole:?}"));
                assert_eq!(streamed(&tok, &prompt, &generated), want, "{path}: ids {generated:?}");
            }
        }
    }

    /// A lone lead byte between byte tokens (byte fallback) turns the run invalid, its bytes
    /// printed before it included: the stream goes on and prints every character after.
    #[test]
    fn an_invalid_byte_run_does_not_stall_the_stream() {
        let tok = fixture("tests/fixtures/tokenizers/llama2-style.json");
        let byte = |b: u8| tok.token_to_id(&format!("<0x{b:02X}>")).unwrap();
        let tail = tok.encode(" the whale").unwrap();
        let generated = [&[byte(b'7'), byte(0xC2), byte(b't')][..], &tail].concat();
        let whole = tok.decode(&generated).unwrap();
        assert!(whole.starts_with("\u{FFFD}"), "the fixture decodes the run {whole:?}");
        let text = streamed(&tok, &[], &generated);
        assert!(text.ends_with(" the whale") && text.chars().count() == whole.chars().count(), "{text:?} / {whole:?}");
    }
}
