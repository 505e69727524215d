//! Launches `cuda/adamw.cu`: the AdamW update (one thread per value, grid-stride) and the
//! sum of squares used for gradient clipping (f64 atomics, one per block).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::Hyper;
use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::{DType, Error, Result};

const THREADS: u32 = 256;
/// Threads of the largest `adamw_*` grid; more values take more than one grid-stride step.
pub const MAX_STEP_THREADS: usize = 1 << 24;
/// Threads of the largest `sum_squares_*` grid (each block adds one atomic).
pub const MAX_SUM_THREADS: usize = 1 << 20;

/// Geometry of `adamw_*` and `adamw_f32_inplace` over n values.
pub fn step_geometry(n: usize) -> Result<Launch> {
    Launch::grid_1d(n.min(MAX_STEP_THREADS), THREADS)
}

/// Geometry of `sum_squares_*` over n values.
pub fn sum_squares_geometry(n: usize) -> Result<Launch> {
    Launch::grid_1d(n.clamp(1, MAX_SUM_THREADS), THREADS)
}

/// Updates n values: `param` (T) and `master` (f32; `None` when `param` is f32 and is its
/// own master), `m`, `v` (f32), from `grad` (f32).
#[allow(clippy::too_many_arguments)]
pub fn adamw<T: CudaFloat>(
    dev: &CudaDevice,
    param: &mut CudaSlice<T>,
    master: Option<&mut CudaSlice<f32>>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    grad: &CudaSlice<f32>,
    n: usize,
    h: &Hyper,
) -> Result<()> {
    let (bc1, sqrt_bc2) = h.bias_corrections();
    let f = match master {
        Some(_) => dev.function("adamw", &format!("adamw_{}", T::SUFFIX))?,
        None if T::DTYPE == DType::F32 => dev.function("adamw", "adamw_f32_inplace")?,
        None => return Err(Error::invalid("adamw: a bf16 parameter needs an f32 master copy")),
    };
    let mut l = dev.stream().launch_builder(&f);
    l.arg(param);
    if let Some(mst) = master {
        l.arg(mst);
    }
    l.arg(m).arg(v).arg(grad).arg(&n);
    l.arg(&h.lr).arg(&h.beta1).arg(&h.beta2).arg(&h.eps).arg(&h.weight_decay);
    l.arg(&bc1).arg(&sqrt_bc2).arg(&h.grad_scale);
    // SAFETY: every buffer holds n elements (checked by the caller); the loop stays below n.
    unsafe { l.launch(LaunchConfig::from(step_geometry(n)?)) }?;
    Ok(())
}

/// Σ x² over n elements of `x`, in f64.
pub fn sum_squares<T: CudaFloat>(dev: &CudaDevice, x: &CudaSlice<T>, n: usize) -> Result<f64> {
    let f = dev.function("adamw", &format!("sum_squares_{}", T::SUFFIX))?;
    let mut out = dev.alloc_zeros::<f64>(1)?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(x).arg(&n).arg(out.slice_mut());
    // SAFETY: x holds n elements; out holds one.
    unsafe { l.launch(LaunchConfig::from(sum_squares_geometry(n)?)) }?;
    Ok(dev.dtoh(out.slice())?[0])
}
