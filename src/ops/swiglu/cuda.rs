//! Launches `cuda/swiglu.cu`: grid-stride elementwise kernels over groups of 8 elements, 256
//! threads per block.

use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};

use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::Result;

const THREADS: u32 = 256;
/// Threads of the largest grid: grid-stride loops cover any n (a step is
/// [`GROUP`](crate::device::launch::GROUP) times this many elements); more blocks only add
/// scheduling overhead.
pub const MAX_GRID_THREADS: usize = 1 << 21;

/// Geometry of both kernels of `swiglu.cu` over n elements.
pub fn geometry(n: usize) -> Result<Launch> {
    Launch::grid_groups(n, MAX_GRID_THREADS, THREADS)
}

/// h = silu(gate) · up. Slices: gate, up (views: they may be two halves of one buffer), h
/// `[n]` (checked by the caller).
pub fn forward<T: CudaFloat>(
    dev: &CudaDevice,
    gate: &CudaView<'_, T>,
    up: &CudaView<'_, T>,
    h: &mut CudaSlice<T>,
    n: usize,
) -> Result<()> {
    let f = dev.function("swiglu", &format!("swiglu_fwd_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(gate).arg(up).arg(h).arg(&n);
    // SAFETY: gate, up and h hold n elements (checked in ops::swiglu); the grid-stride loop
    // stays below n.
    unsafe { b.launch(LaunchConfig::from(geometry(n)?)) }?;
    Ok(())
}

/// dgate and/or dup (whichever is given). Slices: all `[n]` (checked by the caller).
pub fn backward<T: CudaFloat>(
    dev: &CudaDevice,
    gate: &CudaView<'_, T>,
    up: &CudaView<'_, T>,
    dh: &CudaSlice<T>,
    dgate: Option<&mut CudaSlice<T>>,
    dup: Option<&mut CudaSlice<T>>,
    n: usize,
) -> Result<()> {
    let f = dev.function("swiglu", &format!("swiglu_bwd_{}", T::SUFFIX))?;
    // A null pointer tells the kernel to skip that output.
    let null: u64 = 0;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(gate).arg(up).arg(dh);
    match dgate {
        Some(d) => b.arg(d),
        None => b.arg(&null),
    };
    match dup {
        Some(d) => b.arg(d),
        None => b.arg(&null),
    };
    b.arg(&n);
    // SAFETY: gate, up, dh and the given outputs hold n elements (checked in ops::swiglu);
    // the grid-stride loop stays below n and never touches a null output.
    unsafe { b.launch(LaunchConfig::from(geometry(n)?)) }?;
    Ok(())
}
