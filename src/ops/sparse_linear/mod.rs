//! Trained sparse linear (SEFT): `y = x·(W⊙M)ᵀ` with W⊙M a [`SparseWeight`] [out, in] whose
//! kept values are the trained tensor and whose mask M is fixed within a step.
//! x: [..., in] → y: [..., out]; the values' gradient has the values' shape (\[nnz\], or
//! [out, in/m·n] for N:M), so gradients and optimizer state exist only for kept weights.
//!
//! Forward: W⊙M expanded into the device's reusable workspace, then one dense GEMM.
//! Backward (recompute, [`Saved::Recompute`]): W⊙M re-expanded for dx = dy·(W⊙M); the
//! workspace then takes G = dyᵀ·x, whose kept entries are gathered into the values'
//! gradient. The op saves x only; nothing of size out × in survives it. `cpu.rs` is the
//! dense reference; the CPU path uses the gemm crate (f32), CUDA cuBLAS (f32 or bf16).

pub mod cpu;
pub mod cuda;

pub use cpu::Dims;

use crate::autograd::{Saved, Tape};
use crate::ops::matmul::{cpu::fast, Dims as Mm};
use crate::ops::{check_sparse_input, cuda_device, cuda_tensor, expect_same, host_f32, linear_out_shape};
use crate::sparse::{Expand, SparseWeight};
use crate::{with_compute_type, DType, Device, Result, Tensor};

/// What the op saves instead of the dense weight.
pub const RECOMPUTED: &str = "sparse weight W⊙M";

fn check(x: &Tensor, w: &SparseWeight) -> Result<Dims> {
    expect_same("sparse_linear", &[x, w.values()])?;
    check_sparse_input("sparse_linear", x, w)?;
    Ok(Dims { tokens: x.shape().rows(), input: w.cols(), output: w.rows() })
}

/// y = x·(W⊙M)ᵀ without recording.
pub fn forward(x: &Tensor, w: &SparseWeight) -> Result<Tensor> {
    let d = check(x, w)?;
    let shape = linear_out_shape(x, d.output);
    match x.device() {
        Device::Cpu(dev) => {
            let xh = host_f32(x)?;
            let mut y = vec![0f32; d.tokens * d.output];
            dev.with_workspace::<f32, _>(d.output * d.input, |ws| {
                w.expand_into_host(ws, Expand::Overwrite)?;
                fast(&xh, ws, &mut y, Mm::single(d.tokens, d.output, d.input, false, true), 1.0, false);
                Ok(())
            })?;
            Tensor::from_f32(y, shape, DType::F32, x.device())
        }
        Device::Cuda(_) => with_compute_type!(x.dtype(), "sparse_linear", T => {
            let dev = cuda_device(x)?;
            let mut y = dev.alloc::<T>(d.tokens * d.output)?;
            cuda::forward::<T>(dev, x.read()?.cuda()?, w, y.slice_mut(), d)?;
            cuda_tensor(y, shape, x.device())
        }),
    }
}

/// `(dx, d values)`, each only when asked for.
pub fn backward(
    x: &Tensor,
    w: &SparseWeight,
    dy: &Tensor,
    want_dx: bool,
    want_values: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let d = check(x, w)?;
    expect_same("sparse_linear backward", &[x, dy])?;
    linear_out_shape(x, d.output).expect_eq("sparse_linear backward (dy)", dy.shape())?;
    let values_shape = w.values().shape().clone();
    match x.device() {
        Device::Cpu(dev) => {
            let (xh, dyh) = (host_f32(x)?, host_f32(dy)?);
            let mut dx = want_dx.then(|| vec![0f32; d.tokens * d.input]);
            let mut dv = None;
            if dx.is_some() || want_values {
                dev.with_workspace::<f32, _>(d.output * d.input, |ws| {
                    if let Some(dx) = dx.as_mut() {
                        w.expand_into_host(ws, Expand::Overwrite)?;
                        fast(&dyh, ws, dx, Mm::single(d.tokens, d.input, d.output, false, false), 1.0, false);
                    }
                    if want_values {
                        fast(&dyh, &xh, ws, Mm::single(d.output, d.input, d.tokens, true, false), 1.0, false);
                        dv = Some(w.gather_host(ws)?);
                    }
                    Ok(())
                })?;
            }
            let dev_t = x.device();
            Ok((
                dx.map(|v| Tensor::from_f32(v, x.shape().clone(), DType::F32, dev_t)).transpose()?,
                dv.map(|v| Tensor::from_f32(v, values_shape, DType::F32, dev_t)).transpose()?,
            ))
        }
        Device::Cuda(_) => with_compute_type!(x.dtype(), "sparse_linear", T => {
            let dev = cuda_device(x)?;
            let mut dx = if want_dx { Some(dev.alloc::<T>(d.tokens * d.input)?) } else { None };
            let dv = cuda::backward::<T>(dev, x.read()?.cuda()?, w, dy.read()?.cuda()?, dx.as_mut().map(|b| b.slice_mut()), want_values, d)?;
            Ok((
                dx.map(|b| cuda_tensor(b, x.shape().clone(), x.device())).transpose()?,
                dv.map(|b| cuda_tensor(b, values_shape, x.device())).transpose()?,
            ))
        }),
    }
}

/// The sparse linear, recorded on `tape` when x or the weight's values are tracked. Saves x;
/// W⊙M is recomputed in backward.
pub fn sparse_linear(tape: Option<&mut Tape>, x: &Tensor, w: &SparseWeight) -> Result<Tensor> {
    let y = forward(x, w)?;
    if let Some(tape) = tape {
        let saved = vec![Saved::Keep(x.clone()), Saved::Recompute(RECOMPUTED)];
        let weight = w.clone();
        tape.record("sparse_linear", &[x, w.values()], &y, saved, move |ctx| {
            let (dx, dv) = backward(ctx.saved(0)?, &weight, ctx.grad_out(), ctx.needs(0), ctx.needs(1))?;
            ctx.add_grads([dx, dv])
        });
    }
    Ok(y)
}

#[cfg(test)]
mod tests;
