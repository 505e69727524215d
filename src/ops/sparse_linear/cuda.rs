//! Trained sparse linear on CUDA: `cuda/sparse.cu` expands W⊙M (or gathers the kept entries
//! of a gradient) in the device workspace around cuBLAS GEMMs. Shapes as in [`super::cpu`];
//! slices are checked by `ops::sparse_linear`.

use cudarc::driver::CudaSlice;

use super::cpu::Dims;
use crate::device::cuda::CudaBuffer;
use crate::device::cuda::CudaFloat;
use crate::device::CudaDevice;
use crate::ops::matmul::cuda::matmul;
use crate::ops::matmul::Dims as Mm;
use crate::sparse::{Expand, SparseWeight};
use crate::Result;

/// y = x·(W⊙M)ᵀ.
pub fn forward<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &SparseWeight,
    y: &mut CudaSlice<T>,
    d: Dims,
) -> Result<()> {
    dev.with_workspace::<T, _>(d.output * d.input, |ws| {
        w.expand_into_cuda(&mut ws.slice_mut(..), Expand::Overwrite)?;
        matmul(dev, x, ws, y, Mm::single(d.tokens, d.output, d.input, false, true), 1.0, 0.0)
    })
}

/// dx = dy·(W⊙M) when asked for, and the kept values' gradient (gathered from dyᵀ·x) when
/// `want_values`.
pub fn backward<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &SparseWeight,
    dy: &CudaSlice<T>,
    dx: Option<&mut CudaSlice<T>>,
    want_values: bool,
    d: Dims,
) -> Result<Option<CudaBuffer<T>>> {
    dev.with_workspace::<T, _>(d.output * d.input, |ws| {
        if let Some(dx) = dx {
            w.expand_into_cuda(&mut ws.slice_mut(..), Expand::Overwrite)?;
            matmul(dev, dy, ws, dx, Mm::single(d.tokens, d.input, d.output, false, false), 1.0, 0.0)?;
        }
        if !want_values {
            return Ok(None);
        }
        matmul(dev, dy, x, ws, Mm::single(d.output, d.input, d.tokens, true, false), 1.0, 0.0)?;
        Ok(Some(w.gather_cuda(&mut ws.slice_mut(..))?))
    })
}
