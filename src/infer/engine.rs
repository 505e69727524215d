//! Prefill and decode with a KV cache, for a batch of sequences of different lengths.
//!
//! One step runs N tokens, token i of sequence `seqs[i]` at position `positions[i]`, through
//! the decoder (no tape):
//!   x = embed[ids]                                            [N, dim]
//!   per layer: h = rms_norm(x); q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ  [N, H·hd]
//!     q, k = rope at each token's position; k, v written to the cache at (seq, position)
//!     a = attention of q over its sequence's cached keys 0..=position
//!     x += a·Woᵀ; h = rms_norm(x); x += (silu(h·Wgᵀ)·(h·Wuᵀ))·Wdᵀ
//!   logits = rms_norm(x[rows])·Headᵀ for the rows asked for    [rows, vocab]
//! Prefill is one step over a prompt's tokens (positions 0..T); decode is one step over one
//! token of every unfinished sequence. The cache is [B, Hkv, capacity, hd] per layer for K
//! and for V, allocated once through the device allocator (its bytes show in
//! `Device::memory`).

use std::time::Instant;

use super::cpu_step;
use super::model::InferModel;
use crate::ops::kv_cache::CacheDims;
use crate::{ops, with_compute_type, DType, Device, Error, Result, Tensor};

/// A step's logits [rows.len(), vocab] from (cache, seqs, positions, tokens, rows).
type RunStep<'a> = dyn Fn(&KvCache, &[u32], &[u32], &[u32], &[usize]) -> Result<Vec<f32>> + 'a;

/// Keys and values of every layer for `batch` sequences of up to `capacity` positions.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    capacity: usize,
    lens: Vec<usize>,
}

impl KvCache {
    /// Positions filled in sequence `seq`.
    pub fn len(&self, seq: usize) -> usize {
        self.lens[seq]
    }

    /// Sequences this cache holds.
    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// Positions each sequence may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Counts one more position of each of `seqs` (as a step does).
    #[cfg(test)]
    pub(super) fn advance(&mut self, seqs: &[u32]) {
        for &s in seqs {
            self.lens[s as usize] += 1;
        }
    }

    /// The key and value tensors of every layer.
    pub(super) fn tensors(&self) -> (&[Tensor], &[Tensor]) {
        (&self.keys, &self.values)
    }

    /// Bytes of keys and values.
    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(Tensor::size_in_bytes).sum()
    }
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// It produced one of the stop ids (kept as its last token).
    Stop,
    /// It produced `max_new` tokens.
    Length,
    /// It reached the model's context length.
    Context,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate per sequence (at least 1).
    pub max_new: usize,
    /// Token ids that end a sequence.
    pub stop: Vec<u32>,
}

/// The outcome of [`InferModel::generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    /// The generated ids of each sequence (after its prompt).
    pub tokens: Vec<Vec<u32>>,
    /// Why each sequence stopped.
    pub finish: Vec<Finish>,
    /// Prompt tokens run through prefill, and the seconds it took.
    pub prefill_tokens: usize,
    /// Seconds of prefill (all prompts, and the first token of each).
    pub prefill_seconds: f64,
    /// Tokens produced by decode steps (all sequences), and the seconds they took.
    pub decode_tokens: usize,
    /// Seconds of decode steps.
    pub decode_seconds: f64,
    /// Bytes of the KV cache.
    pub cache_bytes: usize,
}

impl Generation {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill_seconds)
    }

    /// Generated tokens per second of decode.
    pub fn decode_tokens_per_second(&self) -> f64 {
        rate(self.decode_tokens, self.decode_seconds)
    }
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

impl InferModel {
    /// Device of the weights.
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// Dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// The most positions a sequence may have: `max_position_embeddings`, or less where the
    /// config computes fewer exactly (a sliding window, dynamic RoPE scaling).
    pub fn context(&self) -> usize {
        let c = &self.config;
        c.max_window().map_or(c.max_position_embeddings, |(w, _)| w.min(c.max_position_embeddings))
    }

    /// An empty cache for `batch` sequences of up to `capacity` positions.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        let c = &self.config;
        if batch == 0 || capacity == 0 {
            return Err(Error::invalid(format!("a KV cache of {batch} sequences × {capacity} positions")));
        }
        if capacity > self.context() {
            return Err(Error::invalid(format!(
                "a KV cache of {capacity} positions exceeds the model's context of {}",
                self.context()
            )));
        }
        // The layout is the op's ([B, Hkv, capacity, hd]).
        let shape =
            CacheDims { sequences: batch, capacity, kv_heads: c.num_key_value_heads, head_dim: c.head_dim() }.shape();
        let zeros = || Tensor::zeros(shape, self.dtype(), self.device());
        let keys = (0..self.layers.len()).map(|_| zeros()).collect::<Result<Vec<_>>>()?;
        let values = (0..self.layers.len()).map(|_| zeros()).collect::<Result<Vec<_>>>()?;
        Ok(KvCache { keys, values, capacity, lens: vec![0; batch] })
    }

    /// Runs `tokens[i]` of sequence `seqs[i]` at that sequence's next position (tokens of one
    /// sequence in order), adding them to the cache; returns the logits [rows.len(), vocab]
    /// (f32, on the host, row by row) of the tokens at indices `rows`.
    pub fn step(&self, cache: &mut KvCache, seqs: &[u32], tokens: &[u32], rows: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.with_runner(|run| self.step_on(run, cache, seqs, tokens, rows))
    }

    /// Calls `f` with the function that computes a step's logits [rows.len(), vocab] (f32
    /// values of the model's dtype) from (cache, seqs, positions, tokens, rows): on the CPU
    /// a [`cpu_step::Plan`], which holds every weight for reading until `f` returns and
    /// checks and splits them once for all of `f`'s steps; on CUDA the operations.
    fn with_runner<R>(&self, f: impl FnOnce(&RunStep<'_>) -> Result<R>) -> Result<R> {
        match self.device() {
            Device::Cpu(_) => with_compute_type!(self.dtype(), "step", T => {
                let holds = cpu_step::Holds::new(self)?;
                let plan = cpu_step::Plan::<T>::new(self, &holds)?;
                f(&|cache, seqs, positions, tokens, rows| plan.step(cache, seqs, positions, tokens, rows))
            }),
            Device::Cuda(_) => f(&|cache, seqs, positions, tokens, rows| {
                self.forward_rows(cache, seqs, positions, tokens, rows)?.to_f32_vec()
            }),
        }
    }

    /// [`InferModel::step`] through `run` (from [`InferModel::with_runner`]).
    fn step_on(
        &self,
        run: &RunStep<'_>,
        cache: &mut KvCache,
        seqs: &[u32],
        tokens: &[u32],
        rows: &[usize],
    ) -> Result<Vec<Vec<f32>>> {
        if seqs.len() != tokens.len() || tokens.is_empty() {
            return Err(Error::invalid(format!("a step of {} tokens for {} sequence slots", tokens.len(), seqs.len())));
        }
        let mut positions = Vec::with_capacity(seqs.len());
        let mut next = cache.lens.clone();
        for &s in seqs {
            let len = next
                .get_mut(s as usize)
                .ok_or_else(|| Error::invalid(format!("sequence {s} of a KV cache of {} sequences", cache.batch())))?;
            if *len >= cache.capacity {
                return Err(Error::invalid(format!("sequence {s} is full: {} positions", cache.capacity)));
            }
            positions.push(*len as u32);
            *len += 1;
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= tokens.len()) {
            return Err(Error::invalid(format!("row {r} of a step of {} tokens", tokens.len())));
        }
        let mut logits = run(cache, seqs, &positions, tokens, rows)?;
        cache.lens = next;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // The first row keeps the buffer (a decode step's only one is not copied).
        let rest = logits.split_off(self.config.vocab_size);
        let mut out = vec![logits];
        out.extend(rest.chunks_exact(self.config.vocab_size).map(<[f32]>::to_vec));
        Ok(out)
    }

    /// Sum of next-token losses over one window of tokens (predicting tokens[1..] from
    /// tokens[..n-1], one prefill step in a fresh cache) and the number of positions
    /// scored: what perplexity sums.
    pub fn window_loss_sum(&self, tokens: &[u32]) -> Result<(f64, usize)> {
        if tokens.len() < 2 {
            return Err(Error::invalid("a window needs at least two tokens"));
        }
        let t = tokens.len() - 1;
        let cache = self.new_cache(1, t)?;
        let positions: Vec<u32> = (0..t as u32).collect();
        let all: Vec<usize> = (0..t).collect();
        let logits = self.logits(&cache, &vec![0; t], &positions, &tokens[..t], &all)?;
        let targets = Tensor::from_vec(tokens[1..].to_vec(), [t], self.device())?;
        ops::cross_entropy::forward_sum(&logits, &targets)
    }

    /// The logits [rows.len(), vocab] (the model's dtype) of one step: the CPU runs it as one
    /// team of threads ([`cpu_step`]), CUDA through the operations.
    fn logits(
        &self,
        cache: &KvCache,
        seqs: &[u32],
        positions: &[u32],
        tokens: &[u32],
        rows: &[usize],
    ) -> Result<Tensor> {
        match self.device() {
            Device::Cpu(_) => {
                let logits = self.with_runner(|run| run(cache, seqs, positions, tokens, rows))?;
                Tensor::from_f32(logits, [rows.len(), self.config.vocab_size], self.dtype(), self.device())
            }
            Device::Cuda(_) => self.forward_rows(cache, seqs, positions, tokens, rows),
        }
    }

    /// The logits [rows.len(), vocab] of one step through the operations (any device, any
    /// number of tokens), keys and values written into `cache`.
    pub(super) fn forward_rows(
        &self,
        cache: &KvCache,
        seqs: &[u32],
        positions: &[u32],
        tokens: &[u32],
        rows: &[usize],
    ) -> Result<Tensor> {
        let c = &self.config;
        let (n, dim) = (tokens.len(), c.hidden_size);
        let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let eps = c.rms_norm_eps as f32;
        let inv_freq = c.rope_inv_freq();
        let device = self.device();
        let ids = Tensor::from_vec(tokens.to_vec(), [n], device)?;
        let mut x = ops::embedding::forward(&self.embed, &ids)?;
        // The MLP output of the previous layer, added to x by the next norm's fused pass.
        let mut residual: Option<Tensor> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            let [wq, wk, wv, wo, wg, wu, wd] = &layer.linears;
            let h = match residual.take() {
                Some(r) => {
                    let (sum, h) = ops::rms_norm::forward_residual(&x, &r, &layer.input_norm, eps)?;
                    x = sum;
                    h
                }
                None => ops::rms_norm::forward(&x, &layer.input_norm, eps)?,
            };
            let q = wq.forward(&h)?.reshape([n, hq, hd])?;
            let k = wk.forward(&h)?.reshape([n, hkv, hd])?;
            let v = wv.forward(&h)?.reshape([n, hkv, hd])?;
            let q = ops::rope::forward_at(&q, &inv_freq, positions)?;
            let k = ops::rope::forward_at(&k, &inv_freq, positions)?;
            ops::kv_cache::write(&cache.keys[l], &k, seqs, positions)?;
            ops::kv_cache::write(&cache.values[l], &v, seqs, positions)?;
            let a = ops::kv_cache::attention(&q, &cache.keys[l], &cache.values[l], seqs, positions)?;
            let a = wo.forward(&a.reshape([n, hq * hd])?)?;
            let (sum, h) = ops::rms_norm::forward_residual(&x, &a, &layer.post_norm, eps)?;
            x = sum;
            let m = ops::swiglu::forward(&wg.forward(&h)?, &wu.forward(&h)?)?;
            residual = Some(wd.forward(&m)?);
        }
        if let Some(r) = residual {
            x = ops::elementwise::add_forward(&x, &r)?;
        }
        debug_assert_eq!(x.dims(), [n, dim]);
        let picked = if rows.len() == n && rows.iter().enumerate().all(|(i, &r)| i == r) {
            x
        } else {
            let rows_u32: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            ops::embedding::forward(&x, &Tensor::from_vec(rows_u32, [rows.len()], device)?)?
        };
        let h = ops::rms_norm::forward(&picked, &self.norm, eps)?;
        ops::infer_linear::dense(&h, self.head())
    }

    /// Generates after each of `prompts`: prefill of each prompt (one step over its
    /// tokens), then decode steps over one token of every unfinished sequence. `pick(seq,
    /// logits)` chooses each next token (greedy or a sampler); `emit(seq, token)` sees each
    /// one as it is chosen. A sequence stops at a stop id, after `max_new` tokens, or at
    /// the model's context. On the CPU the model's weights are held for reading until it
    /// returns: `pick` and `emit` must not write them.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
        mut pick: impl FnMut(usize, &[f32]) -> Result<u32>,
        mut emit: impl FnMut(usize, u32) -> Result<()>,
    ) -> Result<Generation> {
        self.check_generation(prompts, opts)?;
        // The plan's making counts in the prefill's time.
        let started = Instant::now();
        self.with_runner(|run| {
            let setup = started.elapsed().as_secs_f64();
            let mut progress = self.start_on(run, setup, prompts, opts, &mut pick, &mut emit)?;
            self.continue_on(run, &mut progress, opts, usize::MAX, &mut pick, &mut emit)?;
            Ok(progress.finished(opts))
        })
    }

    /// Greedy generation after `prompt` by this model and by `other` in turns: both
    /// prefills, then `turn` decode steps of one, `turn` of the other, and so on until both
    /// have stopped (as [`InferModel::generate`] stops them), each model's prefill and
    /// decode timed on its own. Two models compared this way meet the same conditions of a
    /// shared machine turn by turn, where one generation after the other can run in
    /// different states of its memory's speed (`sparsetune bench decode`). On the CPU
    /// both models' weights are held for reading until it returns.
    pub fn generate_in_turns(
        &self,
        other: &InferModel,
        prompt: &[u32],
        opts: &GenerateOptions,
        turn: usize,
    ) -> Result<[Generation; 2]> {
        if turn == 0 {
            return Err(Error::invalid("a turn of 0 decode steps"));
        }
        let prompts = [prompt.to_vec()];
        self.check_generation(&prompts, opts)?;
        other.check_generation(&prompts, opts)?;
        let (mut pick, mut emit) = (|_: usize, l: &[f32]| super::sample::argmax(l), |_: usize, _: u32| Ok(()));
        let started = Instant::now();
        self.with_runner(|run| {
            let setup = started.elapsed().as_secs_f64();
            let started = Instant::now();
            other.with_runner(|other_run| {
                let other_setup = started.elapsed().as_secs_f64();
                let mut mine = self.start_on(run, setup, &prompts, opts, &mut pick, &mut emit)?;
                let mut theirs = other.start_on(other_run, other_setup, &prompts, opts, &mut pick, &mut emit)?;
                while !(mine.active.is_empty() && theirs.active.is_empty()) {
                    self.continue_on(run, &mut mine, opts, turn, &mut pick, &mut emit)?;
                    other.continue_on(other_run, &mut theirs, opts, turn, &mut pick, &mut emit)?;
                }
                Ok([mine.finished(opts), theirs.finished(opts)])
            })
        })
    }

    /// Checks the arguments of a generation.
    fn check_generation(&self, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Result<()> {
        if prompts.is_empty() {
            return Err(Error::invalid("generation needs at least one prompt"));
        }
        if opts.max_new == 0 {
            return Err(Error::invalid("--max-new must be at least 1"));
        }
        let context = self.context();
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(Error::invalid(format!("prompt {i} is empty")));
            }
            if p.len() >= context {
                return Err(Error::invalid(format!(
                    "prompt {i} has {} tokens: no room for a new one in the model's context of {context} positions",
                    p.len()
                )));
            }
        }
        Ok(())
    }

    /// The prefill of a generation (its arguments checked) through `run` (from
    /// [`InferModel::with_runner`]), its time with `setup` seconds added: a cache, each
    /// prompt's step and first token.
    fn start_on(
        &self,
        run: &RunStep<'_>,
        setup: f64,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
        pick: &mut impl FnMut(usize, &[f32]) -> Result<u32>,
        emit: &mut impl FnMut(usize, u32) -> Result<()>,
    ) -> Result<Progress> {
        let started = Instant::now();
        let context = self.context();
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let capacity = (longest + opts.max_new).min(context);
        let mut cache = self.new_cache(prompts.len(), capacity)?;
        let batch = prompts.len();
        let mut out = Generation {
            tokens: vec![Vec::new(); batch],
            finish: vec![Finish::Length; batch],
            prefill_tokens: 0,
            prefill_seconds: 0.0,
            decode_tokens: 0,
            decode_seconds: 0.0,
            cache_bytes: cache.bytes(),
        };
        let mut active = Vec::with_capacity(batch);
        for (s, prompt) in prompts.iter().enumerate() {
            let logits = self.step_on(run, &mut cache, &vec![s as u32; prompt.len()], prompt, &[prompt.len() - 1])?;
            let token = pick(s, &logits[0])?;
            emit(s, token)?;
            out.tokens[s].push(token);
            out.prefill_tokens += prompt.len();
            if finish_of(&cache, s, &out, opts).is_none() {
                active.push(s);
            }
        }
        out.prefill_seconds = setup + started.elapsed().as_secs_f64();
        Ok(Progress { cache, out, active })
    }

    /// Up to `steps` decode steps of `p` through `run` (fewer where every sequence stops);
    /// their time adds to its decode seconds.
    fn continue_on(
        &self,
        run: &RunStep<'_>,
        p: &mut Progress,
        opts: &GenerateOptions,
        steps: usize,
        pick: &mut impl FnMut(usize, &[f32]) -> Result<u32>,
        emit: &mut impl FnMut(usize, u32) -> Result<()>,
    ) -> Result<()> {
        let Progress { cache, out, active } = p;
        let started = Instant::now();
        for _ in 0..steps {
            if active.is_empty() {
                break;
            }
            let seqs: Vec<u32> = active.iter().map(|&s| s as u32).collect();
            let tokens: Vec<u32> =
                active.iter().map(|&s| *out.tokens[s].last().expect("one token per sequence")).collect();
            let all: Vec<usize> = (0..active.len()).collect();
            let logits = self.step_on(run, cache, &seqs, &tokens, &all)?;
            for (&s, row) in active.iter().zip(&logits) {
                let token = pick(s, row)?;
                emit(s, token)?;
                out.tokens[s].push(token);
                out.decode_tokens += 1;
            }
            active.retain(|&s| finish_of(cache, s, out, opts).is_none());
        }
        out.decode_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }
}

/// A generation under way: its cache, its tokens and times so far, the sequences still
/// going.
struct Progress {
    cache: KvCache,
    out: Generation,
    active: Vec<usize>,
}

impl Progress {
    /// The generation, once every sequence has stopped, with why each did.
    fn finished(mut self, opts: &GenerateOptions) -> Generation {
        for s in 0..self.out.tokens.len() {
            self.out.finish[s] = finish_of(&self.cache, s, &self.out, opts).expect("every sequence has stopped");
        }
        self.out
    }
}

/// Why sequence `s` must stop now, if it must: its last token is a stop id, it has
/// `max_new` tokens, or its next token would not fit the cache.
fn finish_of(cache: &KvCache, s: usize, out: &Generation, opts: &GenerateOptions) -> Option<Finish> {
    let tokens = &out.tokens[s];
    if tokens.last().is_some_and(|t| opts.stop.contains(t)) {
        Some(Finish::Stop)
    } else if tokens.len() >= opts.max_new {
        Some(Finish::Length)
    } else if cache.len(s) >= cache.capacity() {
        Some(Finish::Context)
    } else {
        None
    }
}
