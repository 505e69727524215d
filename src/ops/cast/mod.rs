//! Float conversion between F32, BF16 and F16 (F16 only as a source or for export),
//! recorded on the tape: forward is [`Tensor::to_dtype`] (the core's conversion), backward
//! casts the gradient back to the input's dtype. `cuda` holds the f64 conversions the
//! pruning ops use.

pub mod cuda;

use crate::autograd::Tape;
use crate::{DType, Result, Tensor};

/// `x` converted to `dtype`, recorded on `tape`.
pub fn cast(tape: Option<&mut Tape>, x: &Tensor, dtype: DType) -> Result<Tensor> {
    let y = x.to_dtype(dtype)?;
    if let Some(tape) = tape {
        let src = x.dtype();
        tape.record("cast", &[x], &y, vec![], move |ctx| {
            let g = ctx.grad_out().to_dtype(src)?;
            ctx.add_grad(0, g)
        });
    }
    Ok(y)
}
