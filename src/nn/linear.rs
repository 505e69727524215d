//! A bias-free linear layer `y = x · Wᵀ`, W: [out, in], x: [..., in] → y: [..., out].

use crate::autograd::Tape;
use crate::{ops, Result, Tensor};

/// Dense linear layer.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Weight, [out, in].
    pub weight: Tensor,
}

impl Linear {
    /// Wraps a weight [out, in].
    pub fn new(weight: Tensor) -> Self {
        Linear { weight }
    }

    /// `x · Wᵀ`, recorded on `tape` when x or W is tracked.
    pub fn forward(&self, tape: Option<&mut Tape>, x: &Tensor) -> Result<Tensor> {
        ops::matmul_nt(tape, x, &self.weight)
    }

    /// (out, in).
    pub fn dims(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d.first().copied().unwrap_or(0), d.get(1).copied().unwrap_or(0))
    }
}
