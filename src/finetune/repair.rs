//! Repair methods as strategies of one trainer ([`Repair`]). Each turns a pruned (dense,
//! zeros where pruned) model into a model with trained tensors:
//! - `masked-lora` (SP-LoRA): masked LoRA on all seven projections, fixed mask and rank,
//!   exact adapter gradients (`dB = s·(M⊙G)·Aᵀ`, `dA = s·Bᵀ·(M⊙G)`);
//! - `lors`: the same adapters with LoRS's rearranged gradients (no out × in product) and
//!   its gradient-SVD initialisation of A (see [`super::lors`]);
//! - `losa`: masked LoRA with exact gradients, the sparsity raised in stages towards the
//!   target, masks re-selected from the merged weights and per-layer ranks re-allocated
//!   at each stage (see [`super::losa`]); it starts from the dense model (or any source);
//! - `seft`: the kept weights themselves are trained, with drop-and-grow every
//!   `interval` steps (see [`super::seft`]).
//!
//! [`Repair`] owns the trainer and the method's own state, runs the method's hooks after
//! each step, and writes and reads checkpoints that include that state.

use std::path::Path;
use std::str::FromStr;

use super::adapters::{adapter_params, attach_masked_lora, LoraOptions};
use super::checkpoint;
use super::losa::{Losa, LosaOptions, LosaStage};
use super::seft::{self, Evolution, SeftOptions};
use super::trainer::{StepRecord, TrainConfig, TrainData, Trainer};
use crate::io::outputs::Provenance;
use crate::model::llama::Llama;
use crate::ops::masked_lora::AdapterGrad;
use crate::{Device, Error, Result, Tensor};

/// A repair method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairMethod {
    /// SP-LoRA masked LoRA, exact gradients.
    MaskedLora,
    /// LoRS: rearranged gradients, gradient-SVD initialisation.
    Lors,
    /// LoSA: staged sparsity with per-layer sparsity and rank.
    Losa,
    /// SEFT: trained sparse weights with drop-and-grow.
    Seft,
}

impl RepairMethod {
    /// Every method, in the order reports list them.
    pub const ALL: [RepairMethod; 4] =
        [RepairMethod::MaskedLora, RepairMethod::Lors, RepairMethod::Losa, RepairMethod::Seft];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            RepairMethod::MaskedLora => "masked-lora",
            RepairMethod::Lors => "lors",
            RepairMethod::Losa => "losa",
            RepairMethod::Seft => "seft",
        }
    }

    /// True for the methods that train adapters (and can write an adapter file).
    pub fn has_adapters(self) -> bool {
        matches!(self, RepairMethod::MaskedLora | RepairMethod::Lors | RepairMethod::Losa)
    }
}

impl FromStr for RepairMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RepairMethod::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<&str> = RepairMethod::ALL.iter().map(|m| m.name()).collect();
            Error::invalid(format!("unknown repair method '{s}' ({})", names.join(", ")))
        })
    }
}

impl std::fmt::Display for RepairMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the trained tensors are set up.
#[derive(Clone, Copy, Debug)]
pub struct RepairOptions {
    /// Adapter rank, alpha, base layout and seed (the gradient mode follows the method;
    /// SEFT uses the layout only).
    pub lora: LoraOptions,
    /// Training windows LoRS averages the dense gradient over for its initialisation (0:
    /// skip it and keep the Kaiming A, as when resuming from a checkpoint that holds A).
    pub init_samples: usize,
    /// SEFT's drop-and-grow constants.
    pub seft: SeftOptions,
    /// LoSA's stages and calibration.
    pub losa: LosaOptions,
}

impl RepairOptions {
    /// `lora` with 128 LoRS initialisation windows and SEFT's and LoSA's defaults.
    pub fn new(lora: LoraOptions) -> Self {
        RepairOptions { lora, init_samples: 128, seft: SeftOptions::default(), losa: LosaOptions::default() }
    }

    /// The adapter options with `method`'s gradient mode (rearranged for LoRS, exact
    /// otherwise).
    pub fn lora_for(&self, method: RepairMethod) -> LoraOptions {
        let grad = if method == RepairMethod::Lors { AdapterGrad::Rearranged } else { AdapterGrad::Exact };
        LoraOptions { grad, ..self.lora }
    }
}

/// The model to train and its trained tensors, for the single-stage methods (LoSA's stages
/// need [`Repair`]). LoRS reads `data` (its first `init_samples` windows, in order) to
/// initialise A.
pub fn prepare(
    pruned: &Llama,
    method: RepairMethod,
    opts: &RepairOptions,
    data: &TrainData,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Llama, Vec<(String, Tensor)>)> {
    let lora = opts.lora_for(method);
    if method == RepairMethod::Losa {
        return Err(Error::invalid("LoSA runs in stages: set it up with Repair::new"));
    }
    if method == RepairMethod::Seft {
        let model = seft::attach(pruned, lora.format)?;
        let params = seft::params(&model);
        return Ok((model, params));
    }
    let model = attach_masked_lora(pruned, lora)?;
    if method == RepairMethod::Lors && opts.init_samples > 0 {
        super::lors::init_from_gradient_svd(pruned, &model, data, opts.init_samples, lora.seed, progress)?;
    }
    let params = adapter_params(&model);
    Ok((model, params))
}

/// A repair in progress: the trainer and the method's state.
pub struct Repair {
    /// The method.
    pub method: RepairMethod,
    /// Its options.
    pub opts: RepairOptions,
    /// The trainer (model, trained tensors, optimizer, history).
    pub trainer: Trainer,
    /// SEFT's topology evolutions so far.
    pub evolutions: Vec<Evolution>,
    /// LoSA's state (its stages so far).
    pub losa: Option<Losa>,
}

impl Repair {
    /// Sets up `method` on `pruned` (see [`prepare`]; LoSA: on any source, see
    /// [`Losa::new`]) with a fresh trainer.
    pub fn new(
        pruned: &Llama,
        method: RepairMethod,
        opts: RepairOptions,
        config: TrainConfig,
        data: &TrainData,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        if method == RepairMethod::Seft && opts.seft.interval == 0 {
            return Err(Error::invalid("SEFT's evolution interval must be at least 1 step"));
        }
        if method == RepairMethod::Losa {
            config.check()?;
            let (losa, model) = Losa::new(pruned, opts.losa, opts.lora_for(method), data, config.steps)?;
            let params = adapter_params(&model);
            let trainer = Trainer::new(model, params, config)?;
            return Ok(Repair { method, opts, trainer, evolutions: Vec::new(), losa: Some(losa) });
        }
        let (model, params) = prepare(pruned, method, &opts, data, progress)?;
        Ok(Repair { method, opts, trainer: Trainer::new(model, params, config)?, evolutions: Vec::new(), losa: None })
    }

    /// The LoSA stage the next step will set up first (its re-selection takes a while).
    pub fn pending_stage(&self) -> Option<usize> {
        self.losa.as_ref().and_then(|l| l.due(self.trainer.step))
    }

    /// True when every step has run.
    pub fn done(&self) -> bool {
        self.trainer.done()
    }

    /// One optimizer step with the methods' hooks: LoSA sets up every stage due before
    /// it; SEFT evolves after every `interval` steps, except after the last.
    pub fn step(&mut self, data: &TrainData) -> Result<StepRecord> {
        if let Some(losa) = self.losa.as_mut() {
            while losa.due(self.trainer.step).is_some() {
                losa.advance(&mut self.trainer)?;
            }
        }
        let record = self.trainer.train_step(data)?;
        if self.method == RepairMethod::Seft
            && self.trainer.step.is_multiple_of(self.opts.seft.interval)
            && !self.done()
        {
            self.evolutions.push(seft::evolve(&mut self.trainer, data, &self.opts.seft)?);
        }
        Ok(record)
    }

    /// Writes a checkpoint with the method's state (SEFT: its masks and evolutions; LoSA:
    /// its masks and stages) and no provenance (see [`Repair::save_with`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_with(path, None)
    }

    /// [`Repair::save`], recording what the training was made from, which
    /// [`checkpoint::Checkpoint::check_provenance`] checks before a resume.
    pub fn save_with(&self, path: &Path, provenance: Option<&Provenance>) -> Result<()> {
        let stages: &[LosaStage] = self.losa.as_ref().map_or(&[], |l| &l.stages);
        let state = serde_json::json!({ "evolutions": self.evolutions, "losa_stages": stages });
        let moves_masks = matches!(self.method, RepairMethod::Seft | RepairMethod::Losa);
        let extra = if moves_masks { checkpoint::masks(&self.trainer.model)? } else { Vec::new() };
        checkpoint::save(path, &self.trainer, self.method.name(), provenance, state, &extra)
    }

    /// Restores a checkpoint written by [`Repair::save`] for the same method and config.
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        let ck = checkpoint::load(path)?;
        if ck.meta.method != self.method.name() {
            // Checked again by restore; here so that SEFT does not read another method's masks.
            return Err(Error::invalid(format!(
                "cannot resume from {}: it was written by method '{}', not '{}'",
                path.display(),
                ck.meta.method,
                self.method
            )));
        }
        let unreadable =
            |e: serde_json::Error| Error::invalid(format!("{}: method state unreadable: {e}", path.display()));
        if self.method == RepairMethod::Seft {
            seft::restore_masks(&mut self.trainer.model, |n| ck.extra(n, &Device::cpu()))?;
        }
        if let Some(losa) = self.losa.as_mut() {
            let stages: Vec<LosaStage> =
                serde_json::from_value(ck.meta.method_state["losa_stages"].clone()).map_err(unreadable)?;
            losa.restore(&mut self.trainer, stages, |n| ck.extra(n, &Device::cpu()))?;
        }
        ck.restore(&mut self.trainer, self.method.name())?;
        self.evolutions = serde_json::from_value(ck.meta.method_state["evolutions"].clone()).map_err(unreadable)?;
        Ok(())
    }

    /// The repaired model with every trained linear merged into a dense weight (zeros where
    /// the final mask has them).
    pub fn merged(&self) -> Result<Llama> {
        self.trainer.model.merged()
    }
}
