//! Launches `cuda/elementwise.cu` (grid-stride loops over groups of 8 elements, 256 threads
//! per block, at most 2²¹ threads in the grid).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::Result;

const THREADS: u32 = 256;
/// Threads of the largest grid; inputs longer than [`GROUP`](crate::device::launch::GROUP)
/// times this take more than one grid-stride step.
pub const MAX_GRID_THREADS: usize = 1 << 21;

/// Launch geometry of every kernel of `elementwise.cu` over n elements.
pub fn geometry(n: usize) -> Result<Launch> {
    Launch::grid_groups(n, MAX_GRID_THREADS, THREADS)
}

/// `kind` is "add" or "mul": out = a ∘ b over n elements.
pub fn binary<T: CudaFloat>(
    dev: &CudaDevice,
    kind: &str,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    out: &mut CudaSlice<T>,
    n: usize,
) -> Result<()> {
    let f = dev.function("elementwise", &format!("{kind}_{}", T::SUFFIX))?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(a).arg(b).arg(out).arg(&n);
    // SAFETY: a, b, out hold n elements (checked by the caller); grid-stride loop stays below n.
    unsafe { l.launch(LaunchConfig::from(geometry(n)?)) }?;
    Ok(())
}

/// out = a · s.
pub fn scale<T: CudaFloat>(dev: &CudaDevice, a: &CudaSlice<T>, s: f32, out: &mut CudaSlice<T>, n: usize) -> Result<()> {
    let f = dev.function("elementwise", &format!("scale_{}", T::SUFFIX))?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(a).arg(&s).arg(out).arg(&n);
    // SAFETY: a, out hold n elements.
    unsafe { l.launch(LaunchConfig::from(geometry(n)?)) }?;
    Ok(())
}

/// a += b.
pub fn add_assign<T: CudaFloat>(dev: &CudaDevice, a: &mut CudaSlice<T>, b: &CudaSlice<T>, n: usize) -> Result<()> {
    let f = dev.function("elementwise", &format!("add_assign_{}", T::SUFFIX))?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(a).arg(b).arg(&n);
    // SAFETY: a, b hold n elements.
    unsafe { l.launch(LaunchConfig::from(geometry(n)?)) }?;
    Ok(())
}
