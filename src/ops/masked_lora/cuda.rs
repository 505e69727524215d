//! Masked LoRA on CUDA: cuBLAS GEMMs around the workspace, and `cuda/sparse.cu`'s expansion.
//! Shapes as in [`super::cpu`]; all slices are checked by `ops::masked_lora`.

use cudarc::driver::CudaSlice;

use super::cpu::Dims;
use crate::device::cuda::CudaFloat;
use crate::device::CudaDevice;
use crate::ops::matmul::cuda::matmul;
use crate::ops::matmul::Dims as Mm;
use crate::sparse::{Expand, SparseWeight};
use crate::Result;

/// ws ← W⊙M + s·M⊙(B·A) (ws holds ≥ out·in elements).
pub fn build_effective<T: CudaFloat>(
    dev: &CudaDevice,
    w: &SparseWeight,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    s: f32,
    ws: &mut CudaSlice<T>,
    d: Dims,
) -> Result<()> {
    matmul(dev, b, a, ws, Mm::single(d.output, d.input, d.rank, false, false), s, 0.0)?;
    w.expand_into_cuda(&mut ws.slice_mut(..), Expand::AddKept)
}

/// y = x·W_effᵀ.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &SparseWeight,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    s: f32,
    y: &mut CudaSlice<T>,
    d: Dims,
) -> Result<()> {
    dev.with_workspace::<T, _>(d.output * d.input, |ws| {
        build_effective(dev, w, a, b, s, ws, d)?;
        matmul(dev, x, ws, y, Mm::single(d.tokens, d.output, d.input, false, true), 1.0, 0.0)
    })
}

/// dx = dy·W_eff (when `dx` is given) and the exact adapter gradients (when given):
/// G = dyᵀ·x in the workspace, masked in place, dB = s·(M⊙G)·Aᵀ, dA = s·Bᵀ·(M⊙G).
#[allow(clippy::too_many_arguments)]
pub fn backward_exact<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &SparseWeight,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    dy: &CudaSlice<T>,
    s: f32,
    dx: Option<&mut CudaSlice<T>>,
    adapters: Option<(&mut CudaSlice<T>, &mut CudaSlice<T>)>,
    d: Dims,
) -> Result<()> {
    dev.with_workspace::<T, _>(d.output * d.input, |ws| {
        if let Some(dx) = dx {
            build_effective(dev, w, a, b, s, ws, d)?;
            matmul(dev, dy, ws, dx, Mm::single(d.tokens, d.input, d.output, false, false), 1.0, 0.0)?;
        }
        if let Some((da, db)) = adapters {
            matmul(dev, dy, x, ws, Mm::single(d.output, d.input, d.tokens, true, false), 1.0, 0.0)?;
            w.expand_into_cuda(&mut ws.slice_mut(..), Expand::MaskOnly)?;
            matmul(dev, ws, a, db, Mm::single(d.output, d.rank, d.input, false, true), s, 0.0)?;
            matmul(dev, b, ws, da, Mm::single(d.rank, d.input, d.output, true, false), s, 0.0)?;
        }
        Ok(())
    })
}
