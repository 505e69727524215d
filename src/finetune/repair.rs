//! Repair methods as strategies of one trainer. Each turns a pruned (dense, zeros where
//! pruned) model into a model with trained tensors:
//! - `masked-lora` (SP-LoRA): masked LoRA on all seven projections, fixed mask and rank,
//!   exact adapter gradients (`dB = s·(M⊙G)·Aᵀ`, `dA = s·Bᵀ·(M⊙G)`);
//! - `lors`: the same adapters with LoRS's rearranged gradients (no out × in product) and
//!   its gradient-SVD initialisation of A (see [`super::lors`]).

use std::str::FromStr;

use super::adapters::{adapter_params, attach_masked_lora, LoraOptions};
use super::trainer::TrainData;
use crate::model::llama::Llama;
use crate::ops::masked_lora::AdapterGrad;
use crate::{Error, Result, Tensor};

/// A repair method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairMethod {
    /// SP-LoRA masked LoRA, exact gradients.
    MaskedLora,
    /// LoRS: rearranged gradients, gradient-SVD initialisation.
    Lors,
}

impl RepairMethod {
    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            RepairMethod::MaskedLora => "masked-lora",
            RepairMethod::Lors => "lors",
        }
    }
}

impl FromStr for RepairMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "masked-lora" => Ok(RepairMethod::MaskedLora),
            "lors" => Ok(RepairMethod::Lors),
            other => Err(Error::invalid(format!("unknown repair method '{other}' (masked-lora, lors)"))),
        }
    }
}

impl std::fmt::Display for RepairMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the adapters are set up.
#[derive(Clone, Copy, Debug)]
pub struct RepairOptions {
    /// Adapter rank, alpha, base layout and seed (the gradient mode follows the method).
    pub lora: LoraOptions,
    /// Training windows LoRS averages the dense gradient over for its initialisation (0:
    /// skip it and keep the Kaiming A, as when resuming from a checkpoint that holds A).
    pub init_samples: usize,
}

/// The model to train and its trained tensors, for `method`. LoRS reads `data` (its first
/// `init_samples` windows, in order) to initialise A.
pub fn prepare(
    pruned: &Llama,
    method: RepairMethod,
    opts: &RepairOptions,
    data: &TrainData,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Llama, Vec<(String, Tensor)>)> {
    let mut lora = opts.lora;
    lora.grad = match method {
        RepairMethod::MaskedLora => AdapterGrad::Exact,
        RepairMethod::Lors => AdapterGrad::Rearranged,
    };
    let model = attach_masked_lora(pruned, lora)?;
    if method == RepairMethod::Lors && opts.init_samples > 0 {
        super::lors::init_from_gradient_svd(pruned, &model, data, opts.init_samples, lora.seed, progress)?;
    }
    let params = adapter_params(&model);
    Ok((model, params))
}
