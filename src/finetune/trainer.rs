//! The training loop as a library: next-token loss over token windows, gradient
//! accumulation over micro-batches (in f32), clipping by global norm, AdamW with a warmup +
//! decay schedule, optional activation checkpointing per decoder layer, and a skipped
//! step (with a warning) when the loss or the gradient is not finite.
//!
//! The trained tensors are given by name; they are the tensors the model itself holds (A
//! and B of every adapter, or SEFT's kept values), updated in place. Which windows a step
//! sees is a function of the seed and the number of windows consumed so far, so a run
//! resumed from a checkpoint sees the same data as an uninterrupted one.

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::optim::{AdamW, AdamWConfig};
use super::schedule::{Decay, Schedule};
use crate::autograd::{Grads, Profile, Tape};
use crate::model::llama::{ForwardOptions, Llama};
use crate::{DType, Device, Error, Result, Tensor};

/// Training hyper-parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Windows per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Tokens per window (inputs; each window reads one more token as the last target).
    pub seq_len: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Floor of the cosine decay.
    pub min_lr: f32,
    /// Fraction of the steps spent warming up.
    pub warmup: f32,
    /// Shape after the warmup.
    pub decay: Decay,
    /// Clip the global gradient norm to this (None: no clipping).
    pub max_grad_norm: Option<f32>,
    /// AdamW constants.
    pub adamw: AdamWConfig,
    /// Seed of the data order.
    pub seed: u64,
    /// Recompute each decoder layer in backward instead of keeping its activations.
    pub checkpoint_layers: bool,
}

impl TrainConfig {
    /// The defaults of `sparsetune finetune`: lr 2e-4 with 10% warmup and cosine decay to
    /// 0, clipping at 1.0, batch 1, no accumulation, seq-len 512, checkpointing on.
    pub fn new(steps: usize) -> Self {
        TrainConfig {
            steps,
            batch: 1,
            grad_accum: 1,
            seq_len: 512,
            lr: 2e-4,
            min_lr: 0.0,
            warmup: 0.1,
            decay: Decay::Cosine,
            max_grad_norm: Some(1.0),
            adamw: AdamWConfig::default(),
            seed: 0,
            checkpoint_layers: true,
        }
    }

    /// Errors on values that cannot train.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.steps == 0 || self.batch == 0 || self.grad_accum == 0 {
            return bad(format!(
                "steps, batch and grad-accum must be at least 1 (got {}, {}, {})",
                self.steps, self.batch, self.grad_accum
            ));
        }
        if self.seq_len < 2 {
            return bad(format!("seq-len must be at least 2, got {}", self.seq_len));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return bad(format!("learning rates must be positive and finite (lr {}, min {})", self.lr, self.min_lr));
        }
        if !(0.0..=1.0).contains(&self.warmup) {
            return bad(format!("warmup is a fraction of the steps in [0, 1], got {}", self.warmup));
        }
        if self.max_grad_norm.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad(format!("max-grad-norm must be positive, got {:?}", self.max_grad_norm));
        }
        let a = &self.adamw;
        if !(0.0..1.0).contains(&a.beta1) || !(0.0..1.0).contains(&a.beta2) || a.eps.is_nan() || a.eps <= 0.0 {
            return bad(format!("AdamW needs betas in [0, 1) and eps > 0, got {a:?}"));
        }
        Ok(())
    }

    /// The learning-rate schedule over `steps` steps (all of them, or one stage of a
    /// method that restarts its schedule per stage).
    pub fn schedule(&self, steps: usize) -> Schedule {
        Schedule {
            peak: self.lr,
            min_lr: self.min_lr,
            warmup_steps: (self.warmup * steps as f32).round() as usize,
            total: steps,
            decay: self.decay,
        }
    }
}

/// Training text as windows of seq-len + 1 tokens, visited in a seeded random order that
/// is reshuffled every epoch.
#[derive(Clone, Debug)]
pub struct TrainData {
    windows: Vec<Vec<u32>>,
    seq_len: usize,
}

impl TrainData {
    /// The non-overlapping windows of `seq_len + 1` tokens of each stream.
    pub fn new(streams: &[Vec<u32>], seq_len: usize) -> Result<Self> {
        let w = crate::data::windows_of_streams(streams, seq_len + 1, None)?;
        Ok(TrainData { windows: w.into_iter().map(<[u32]>::to_vec).collect(), seq_len })
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// True when there are no windows (never, for a constructed value).
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The inputs (first `seq_len` tokens) of the first `n` windows in stored order (all
    /// of them when there are fewer): calibration samples drawn from the training text.
    pub fn inputs(&self, n: usize) -> Vec<Vec<u32>> {
        self.windows.iter().take(n).map(|w| w[..self.seq_len].to_vec()).collect()
    }

    /// Tokens per window read as inputs.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The order in which epoch `epoch` visits the windows.
    fn epoch_order(&self, epoch: u64, seed: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.windows.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        order
    }

    /// Inputs and targets [batch, seq_len] (u32) of samples `first..first + batch` (sample
    /// g reads window `order(g / len)[g % len]`).
    pub fn batch(&self, first: u64, batch: usize, seed: u64, device: &Device) -> Result<(Tensor, Tensor)> {
        let (t, n) = (self.seq_len, self.windows.len() as u64);
        let (mut ids, mut targets) = (Vec::with_capacity(batch * t), Vec::with_capacity(batch * t));
        // One shuffle per epoch the batch touches, not one per sample.
        let mut order: Option<(u64, Vec<usize>)> = None;
        for g in first..first + batch as u64 {
            let epoch = g / n;
            if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                order = Some((epoch, self.epoch_order(epoch, seed)));
            }
            let w = &self.windows[order.as_ref().expect("set above").1[(g % n) as usize]];
            ids.extend_from_slice(&w[..t]);
            targets.extend_from_slice(&w[1..]);
        }
        Ok((Tensor::from_vec(ids, [batch, t], device)?, Tensor::from_vec(targets, [batch, t], device)?))
    }
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    /// 1-based step number.
    pub step: usize,
    /// Mean loss over the step's micro-batches (NaN/inf when skipped for it).
    pub loss: f32,
    /// Learning rate applied.
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// True when the update was skipped (non-finite loss or gradient).
    pub skipped: bool,
    /// Tokens processed.
    pub tokens: usize,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
}

/// A model being trained, its trained tensors and the optimizer.
pub struct Trainer {
    /// The model (its trained tensors are updated in place).
    pub model: Llama,
    /// Trained tensors, by name (they share storage with the model's).
    pub params: Vec<(String, Tensor)>,
    /// Optimizer state.
    pub optimizer: AdamW,
    /// Hyper-parameters.
    pub config: TrainConfig,
    /// Steps completed.
    pub step: usize,
    /// The steps the current schedule and optimizer run span: all of them, unless a
    /// method restarts both per stage ([`Trainer::restart`], LoSA).
    pub segment: std::ops::Range<usize>,
    /// Windows consumed so far (the data position).
    pub samples_seen: u64,
    /// Every step's record.
    pub history: Vec<StepRecord>,
    /// Per-op timing of the steps (benchmarks), when set.
    pub profile: Option<Profile>,
}

impl Trainer {
    /// A trainer at step 0 with fresh optimizer state.
    pub fn new(model: Llama, params: Vec<(String, Tensor)>, config: TrainConfig) -> Result<Self> {
        config.check()?;
        if params.is_empty() {
            return Err(Error::invalid("nothing to train: no trained tensors"));
        }
        let optimizer = AdamW::new(config.adamw, &params)?;
        let segment = 0..config.steps;
        Ok(Trainer {
            model,
            params,
            optimizer,
            config,
            step: 0,
            segment,
            samples_seen: 0,
            history: Vec::new(),
            profile: None,
        })
    }

    /// Trains `params` from now on (tensors the model holds; the old ones are dropped) with
    /// a fresh optimizer, and restarts the schedule over the steps `segment` (within the
    /// run; normally starting at the current step).
    pub fn restart(&mut self, params: Vec<(String, Tensor)>, segment: std::ops::Range<usize>) -> Result<()> {
        if segment.start > segment.end || segment.end > self.config.steps || params.is_empty() {
            return Err(Error::invalid(format!(
                "cannot restart training at step {} of {} over steps {segment:?} with {} tensors",
                self.step,
                self.config.steps,
                params.len()
            )));
        }
        self.optimizer = AdamW::new(self.config.adamw, &params)?;
        self.params = params;
        self.segment = segment;
        Ok(())
    }

    /// True when every configured step has run.
    pub fn done(&self) -> bool {
        self.step >= self.config.steps
    }

    /// Runs one optimizer step over `grad_accum` micro-batches of `data`.
    pub fn train_step(&mut self, data: &TrainData) -> Result<StepRecord> {
        if data.seq_len() != self.config.seq_len {
            return Err(Error::invalid(format!(
                "training data has windows of {} tokens, the config says {}",
                data.seq_len(),
                self.config.seq_len
            )));
        }
        let start = Instant::now();
        let c = &self.config;
        let device = self.model.device().clone();
        let opts = ForwardOptions { checkpoint_layers: c.checkpoint_layers };
        let mut acc: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let (mut loss_sum, mut finite) = (0f64, true);
        for _ in 0..c.grad_accum {
            let (ids, targets) = data.batch(self.samples_seen, c.batch, c.seed, &device)?;
            self.samples_seen += c.batch as u64;
            if !finite {
                continue; // keep the data position as if the step had run
            }
            let mut tape = Tape::new();
            tape.set_profile(self.profile.clone())?;
            for (_, p) in &self.params {
                tape.watch(p);
            }
            let loss = self.model.loss(Some(&mut tape), &ids, &targets, opts)?;
            let l = loss.to_scalar_f32()?;
            loss_sum += f64::from(l);
            if !l.is_finite() {
                finite = false;
                continue;
            }
            let mut grads = Grads::new();
            tape.backward(&loss, &mut grads)?;
            let params = self.params.iter().map(|(_, p)| p);
            match &self.profile {
                Some(prof) => {
                    prof.time("gradients to f32 accumulators", || accumulate_f32(&mut acc, &mut grads, params))?
                }
                None => accumulate_f32(&mut acc, &mut grads, params)?,
            }
        }
        let micro = c.grad_accum as f64;
        let loss = (loss_sum / micro) as f32;
        let step = self.step + 1;
        let lr = c.schedule(self.segment.len()).lr(step - self.segment.start);
        let mut record = StepRecord {
            step,
            loss,
            lr,
            grad_norm: f32::NAN,
            skipped: true,
            tokens: c.grad_accum * c.batch * c.seq_len,
            seconds: 0.0,
        };
        if finite {
            let grads: Vec<Tensor> =
                acc.into_iter().map(|g| g.expect("every micro-batch fills every gradient")).collect();
            let micro = u32::try_from(c.grad_accum).map_err(|_| Error::invalid("grad-accum does not fit 32 bits"))?;
            let mut update = || self.optimizer.update(&self.params, &grads, lr, micro, c.max_grad_norm);
            let norm = match &self.profile {
                Some(prof) => prof.time("adamw::clipped_step (norm, clip, update)", update)?,
                None => update()?,
            };
            record.grad_norm = norm as f32;
            record.skipped = !norm.is_finite();
        }
        if record.skipped {
            eprintln!(
                "warning: step {step} skipped: loss {} / gradient norm {} is not finite",
                record.loss, record.grad_norm
            );
        }
        self.step = step;
        record.seconds = start.elapsed().as_secs_f64();
        self.history.push(record.clone());
        Ok(record)
    }
}

/// Adds each tensor's gradient (taken out of `grads`; zero when it has none) to its f32
/// accumulator in `acc` (moved in on the first call).
pub(crate) fn accumulate_f32<'a>(
    acc: &mut [Option<Tensor>],
    grads: &mut Grads,
    tensors: impl Iterator<Item = &'a Tensor>,
) -> Result<()> {
    for (p, a) in tensors.zip(acc.iter_mut()) {
        let g = grads.remove(p).map_or_else(|| Tensor::zeros(p.shape().clone(), DType::F32, p.device()), Ok)?;
        let g = if g.dtype() == DType::F32 { g } else { g.to_dtype(DType::F32)? };
        match a {
            None => *a = Some(g),
            Some(sum) => crate::ops::elementwise::add_assign(sum, &g)?,
        }
    }
    Ok(())
}
