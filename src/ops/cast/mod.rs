//! Float conversion between F32, BF16 and F16 (F16 only as a source or for export).
//! Backward casts the gradient back to the input's dtype.

pub mod cuda;

use crate::autograd::Tape;
use crate::ops::cuda_device;
use crate::{DType, Device, Error, Result, Tensor};

/// A copy of `x` in `dtype` without recording (a plain copy when the dtype is unchanged).
pub fn forward(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let float = |d: DType| matches!(d, DType::F32 | DType::BF16 | DType::F16);
    if !float(x.dtype()) || !float(dtype) {
        if x.dtype() == dtype {
            return x.to_device(x.device());
        }
        return Err(Error::DType { op: "cast", dtype: x.dtype(), msg: "only float types convert" });
    }
    if x.dtype() == dtype {
        return x.to_device(x.device());
    }
    match x.device() {
        Device::Cpu(_) => Tensor::from_f32(x.to_f32_vec()?, x.shape().clone(), dtype, x.device()),
        Device::Cuda(_) => cuda::cast(cuda_device(x)?, x, dtype),
    }
}

/// `x` converted to `dtype`, recorded on `tape`.
pub fn cast(tape: Option<&mut Tape>, x: &Tensor, dtype: DType) -> Result<Tensor> {
    let y = forward(x, dtype)?;
    if let Some(tape) = tape {
        let src = x.dtype();
        tape.record("cast", &[x], &y, vec![], move |ctx| {
            let g = forward(ctx.grad_out(), src)?;
            ctx.add_grad(0, g)
        });
    }
    Ok(y)
}
