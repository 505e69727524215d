//! Float conversion of a CUDA tensor, for [`crate::Tensor::to_dtype`]: launches
//! `cuda/cast.cu`'s kernel for the (source, destination) pair of F32, BF16 and F16; each
//! converts n elements, x [n] → y [n], rounding to nearest even. (The same `.cu` file's
//! f64 kernels are launched by `crate::ops::cast::cuda` for the pruning ops, with
//! [`geometry`], which sizes every launch of the file.)

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::storage::Element;
use crate::tensor::cuda_tensor;
use crate::{DType, Error, Result, Tensor};

/// Threads per block of every kernel of `cast.cu` (grid-stride loops).
const THREADS: u32 = 256;
/// Threads of the largest grid; longer inputs take more than one grid-stride step.
pub const MAX_GRID_THREADS: usize = 1 << 24;

/// Launch geometry of every kernel of `cast.cu` over n elements.
pub fn geometry(n: usize) -> Result<Launch> {
    Launch::grid_1d(n.min(MAX_GRID_THREADS), THREADS)
}

fn launch<S: Element, D: Element>(dev: &CudaDevice, name: &str, x: &Tensor) -> Result<Tensor> {
    let n = x.elem_count();
    let mut out = dev.alloc::<D>(n)?;
    convert(dev, name, x.read()?.cuda::<S>()?, out.slice_mut(), n)?;
    cuda_tensor(out, x.shape().clone(), x.device())
}

/// y[..n] = x[..n] converted by `cast.cu`'s kernel `name` (S → D).
fn convert<S: Element, D: Element>(
    dev: &CudaDevice,
    name: &str,
    x: &CudaSlice<S>,
    y: &mut CudaSlice<D>,
    n: usize,
) -> Result<()> {
    if x.len() < n || y.len() < n {
        return Err(Error::invalid(format!("cast: {n} elements from {} into {}", x.len(), y.len())));
    }
    let f = dev.function("cast", name)?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(x).arg(y).arg(&n);
    // SAFETY: source and destination hold ≥ n elements each (checked above).
    unsafe { l.launch(LaunchConfig::from(geometry(n)?)) }?;
    Ok(())
}

/// y[..n] = x[..n] rounded from f32 to `T` (bf16; for f32 a copy would be asked for, which
/// has no kernel and is refused).
pub(crate) fn from_f32_into<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<T>,
    n: usize,
) -> Result<()> {
    convert(dev, &format!("cast_f32_{}", T::SUFFIX), x, y, n)
}

/// Converts a CUDA float tensor to `dtype` (which differs from its own).
pub(crate) fn cast(dev: &CudaDevice, x: &Tensor, dtype: DType) -> Result<Tensor> {
    match (x.dtype(), dtype) {
        (DType::F32, DType::BF16) => launch::<f32, bf16>(dev, "cast_f32_bf16", x),
        (DType::BF16, DType::F32) => launch::<bf16, f32>(dev, "cast_bf16_f32", x),
        (DType::F16, DType::F32) => launch::<f16, f32>(dev, "cast_f16_f32", x),
        (DType::F16, DType::BF16) => launch::<f16, bf16>(dev, "cast_f16_bf16", x),
        (DType::F32, DType::F16) => launch::<f32, f16>(dev, "cast_f32_f16", x),
        (DType::BF16, DType::F16) => launch::<bf16, f16>(dev, "cast_bf16_f16", x),
        (s, _) => Err(Error::DType { op: "cast", dtype: s, msg: "no CUDA conversion for this pair" }),
    }
}
