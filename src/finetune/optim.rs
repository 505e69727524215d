//! AdamW over a list of named trained tensors, with f32 moments and, for parameters that
//! are not f32 (bf16 on the GPU), an f32 master copy that the update is applied to before
//! it is rounded into the parameter. The state can be listed and restored by name for
//! checkpoints.

use crate::ops::adamw::{self, zeros_like_f32, Hyper, Update};
use crate::{DType, Error, Result, Tensor};

/// AdamW constants (the per-step learning rate comes from the schedule).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults except weight decay 0 (PEFT LoRA recipes): β = (0.9, 0.999), ε = 1e-8.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// One parameter's optimizer state.
#[derive(Clone, Debug)]
pub struct ParamState {
    /// f32 master weights (None when the parameter is f32 itself).
    pub master: Option<Tensor>,
    /// First moment (f32).
    pub m: Tensor,
    /// Second moment (f32).
    pub v: Tensor,
}

/// AdamW state for an ordered list of parameters.
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Constants.
    pub config: AdamWConfig,
    /// Updates applied so far.
    pub step: u64,
    names: Vec<String>,
    state: Vec<ParamState>,
}

impl AdamW {
    /// Fresh state (zero moments, master copies of non-f32 parameters) for `params`.
    pub fn new(config: AdamWConfig, params: &[(String, Tensor)]) -> Result<Self> {
        let mut state = Vec::with_capacity(params.len());
        for (_, p) in params {
            let master = if p.dtype() == DType::F32 { None } else { Some(p.to_dtype(DType::F32)?) };
            state.push(ParamState { master, m: zeros_like_f32(p)?, v: zeros_like_f32(p)? });
        }
        Ok(AdamW { config, step: 0, names: params.iter().map(|(n, _)| n.clone()).collect(), state })
    }

    /// One step of every parameter, clipped by the global norm of the gradients
    /// ([`adamw::clipped_step`]): `grads[i]` (any float dtype, read as f32) is the sum over
    /// `micro` micro-batches of the gradient of `params[i]`; `max_norm` clips the norm of
    /// their mean. Returns that norm; when it is not finite nothing changes and the step is
    /// not counted. On CUDA the norm stays on the device until this returns (a few launches
    /// for the whole list, one copy to the host).
    pub fn update(
        &mut self,
        params: &[(String, Tensor)],
        grads: &[Tensor],
        lr: f32,
        micro: u32,
        max_norm: Option<f32>,
    ) -> Result<f64> {
        if params.len() != self.state.len() || grads.len() != params.len() {
            return Err(Error::invalid(format!(
                "adamw: {} parameters, {} gradients, state for {}",
                params.len(),
                grads.len(),
                self.state.len()
            )));
        }
        let c = self.config;
        let h = Hyper {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            step: self.step + 1,
            grad_scale: 1.0,
        };
        // The update reads f32 gradients (the trainer's accumulators): no rounding to bf16.
        let grads: Vec<Tensor> = grads
            .iter()
            .map(|g| if g.dtype() == DType::F32 { Ok(g.clone()) } else { g.to_dtype(DType::F32) })
            .collect::<Result<_>>()?;
        let updates: Vec<Update<'_>> = params
            .iter()
            .zip(&grads)
            .zip(&self.state)
            .map(|(((_, p), g), s)| Update { param: p, master: s.master.as_ref(), m: &s.m, v: &s.v, grad: g })
            .collect();
        let norm = adamw::clipped_step(&updates, &h, micro, max_norm)?;
        if norm.is_finite() {
            self.step += 1;
        }
        Ok(norm)
    }

    /// The state of parameter `i`, mutably (methods that re-lay out a parameter, such as
    /// SEFT's drop-and-grow, move its moments with it).
    pub fn state_mut(&mut self, i: usize) -> Option<&mut ParamState> {
        self.state.get_mut(i)
    }

    /// Every state tensor with a name: `<param>.master`, `<param>.exp_avg`, `<param>.exp_avg_sq`.
    pub fn named_state(&self) -> Vec<(String, &Tensor)> {
        let mut v = Vec::new();
        for (n, s) in self.names.iter().zip(&self.state) {
            if let Some(mst) = &s.master {
                v.push((format!("{n}.master"), mst));
            }
            v.push((format!("{n}.exp_avg"), &s.m));
            v.push((format!("{n}.exp_avg_sq"), &s.v));
        }
        v
    }

    /// Replaces the state from named tensors as [`AdamW::named_state`] lists them (shapes
    /// must match); `step` is the update count they were saved at.
    pub fn restore(&mut self, step: u64, mut get: impl FnMut(&str) -> Result<Tensor>) -> Result<()> {
        for (n, s) in self.names.iter().zip(self.state.iter_mut()) {
            let mut load = |suffix: &str, like: &Tensor| -> Result<Tensor> {
                let t = get(&format!("{n}.{suffix}"))?;
                if t.dims() != like.dims() || t.dtype() != DType::F32 {
                    return Err(Error::invalid(format!(
                        "optimizer state {n}.{suffix}: {} {}, expected F32 {}",
                        t.dtype(),
                        t.shape(),
                        like.shape()
                    )));
                }
                t.to_device(like.device())
            };
            if let Some(mst) = &s.master {
                s.master = Some(load("master", mst)?);
            }
            s.m = load("exp_avg", &s.m)?;
            s.v = load("exp_avg_sq", &s.v)?;
        }
        self.step = step;
        Ok(())
    }
}
