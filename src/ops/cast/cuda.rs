//! Launches `cuda/cast.cu`'s f64 kernels for the pruning ops: widen f32/bf16 to f64,
//! narrow f64 to f32/bf16, scale f64 in place. (Its float ↔ float pair kernels serve
//! `Tensor::to_dtype` from the core, `crate::device::cast`, which also owns the geometry of
//! every kernel of the file: [`geometry`].)

use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

pub use crate::device::cast::{geometry, MAX_GRID_THREADS};
use crate::device::CudaDevice;
use crate::ops::cuda_tensor;
use crate::storage::Element;
use crate::{DType, Error, Result, Tensor};

/// Widens the first `n` elements of a float device view (f32 or bf16) into `out` as f64.
pub fn widen_to_f64<T: crate::device::cuda::CudaFloat>(
    dev: &CudaDevice,
    x: &cudarc::driver::CudaView<'_, T>,
    out: &mut cudarc::driver::CudaSlice<f64>,
    n: usize,
) -> Result<()> {
    if x.len() < n || out.len() < n {
        return Err(Error::invalid(format!("widen_to_f64: {n} elements from {} into {}", x.len(), out.len())));
    }
    let f = dev.function("cast", &format!("cast_{}_f64", T::SUFFIX))?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(x).arg(out).arg(&n);
    // SAFETY: x and out hold at least n elements (checked above).
    unsafe { l.launch(LaunchConfig::from(geometry(n)?)) }?;
    Ok(())
}

/// A float tensor (f32 or bf16) as a new f64 device buffer.
pub fn to_f64(dev: &CudaDevice, x: &Tensor) -> Result<crate::device::CudaBuffer<f64>> {
    let n = x.elem_count();
    let mut out = dev.alloc::<f64>(n)?;
    let s = x.read()?;
    match x.dtype() {
        DType::F32 => widen_to_f64::<f32>(dev, &s.cuda::<f32>()?.slice(..), out.slice_mut(), n)?,
        DType::BF16 => widen_to_f64::<bf16>(dev, &s.cuda::<bf16>()?.slice(..), out.slice_mut(), n)?,
        other => return Err(Error::DType { op: "to_f64", dtype: other, msg: "expected f32 or bf16" }),
    }
    Ok(out)
}

/// An f64 device buffer as a new tensor of `dtype` (f32, or bf16 rounded through f32).
pub fn from_f64(
    dev: &CudaDevice,
    x: &cudarc::driver::CudaSlice<f64>,
    shape: crate::Shape,
    dtype: DType,
    device: &crate::Device,
) -> Result<Tensor> {
    let n = shape.elem_count();
    if x.len() < n {
        return Err(Error::invalid(format!("from_f64: {} elements for shape {shape}", x.len())));
    }
    fn launch<D: Element>(
        dev: &CudaDevice,
        name: &str,
        x: &cudarc::driver::CudaSlice<f64>,
        shape: crate::Shape,
        device: &crate::Device,
    ) -> Result<Tensor> {
        let n = shape.elem_count();
        let mut out = dev.alloc::<D>(n)?;
        let f = dev.function("cast", name)?;
        let mut l = dev.stream().launch_builder(&f);
        l.arg(x).arg(out.slice_mut()).arg(&n);
        // SAFETY: x holds at least n elements (checked by the caller), out exactly n.
        unsafe { l.launch(LaunchConfig::from(geometry(n)?)) }?;
        cuda_tensor(out, shape, device)
    }
    match dtype {
        DType::F32 => launch::<f32>(dev, "cast_f64_f32", x, shape, device),
        DType::BF16 => launch::<bf16>(dev, "cast_f64_bf16", x, shape, device),
        other => Err(Error::DType { op: "from_f64", dtype: other, msg: "expected f32 or bf16" }),
    }
}

/// x ← s·x for the first `n` elements of an f64 buffer.
pub fn scale_f64(dev: &CudaDevice, x: &mut cudarc::driver::CudaSlice<f64>, s: f64, n: usize) -> Result<()> {
    if x.len() < n {
        return Err(Error::invalid(format!("scale_f64: {n} elements of {}", x.len())));
    }
    let f = dev.function("cast", "scale_f64")?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(x).arg(&s).arg(&n);
    // SAFETY: x holds at least n elements (checked above).
    unsafe { l.launch(LaunchConfig::from(geometry(n)?)) }?;
    Ok(())
}
