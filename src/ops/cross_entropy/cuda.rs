//! Launches `cuda/cross_entropy.cu`: one 512-thread block per row for the forward (per-row
//! lse and loss, summed on the host) and for the backward (softmax recomputed from lse).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::ops::to_i32;
use crate::Result;

const THREADS: u32 = 512;

/// Geometry of `cross_entropy_fwd_*` and `cross_entropy_bwd_*`: one 512-thread block per
/// row (at least one block).
pub fn row_geometry(rows: usize) -> Result<Launch> {
    let blocks = u32::try_from(rows.max(1)).map_err(|_| crate::Error::invalid("cross_entropy: too many rows"))?;
    Ok(Launch { grid: (blocks, 1, 1), block: (THREADS, 1, 1), shared_bytes: 0 })
}

/// Per-row logsumexp and loss (0 for ignored rows). Slices: logits `[rows·vocab]`, targets,
/// lse, loss `[rows]` (checked by the caller).
pub fn forward<T: CudaFloat>(
    dev: &CudaDevice,
    logits: &CudaSlice<T>,
    targets: &CudaSlice<u32>,
    lse: &mut CudaSlice<f32>,
    loss: &mut CudaSlice<f32>,
    rows: usize,
    vocab: usize,
) -> Result<()> {
    let f = dev.function("cross_entropy", &format!("cross_entropy_fwd_{}", T::SUFFIX))?;
    let (rows_i, vocab_i) = (to_i32("cross_entropy", rows)?, to_i32("cross_entropy", vocab)?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(logits).arg(targets).arg(lse).arg(loss).arg(&rows_i).arg(&vocab_i);
    // SAFETY: logits hold rows·vocab elements and targets, lse, loss rows each (checked in
    // ops::cross_entropy); block `row < rows` reads its row and logits[row, t] only for t < vocab.
    unsafe { b.launch(LaunchConfig::from(row_geometry(rows)?)) }?;
    Ok(())
}

/// `dlogits = grad[0]·inv_count·(softmax − onehot)`, 0 for ignored rows. Slices: logits,
/// dlogits `[rows·vocab]`, targets and lse `[rows]`, grad `[1]` (checked by the caller).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: CudaFloat>(
    dev: &CudaDevice,
    logits: &CudaSlice<T>,
    targets: &CudaSlice<u32>,
    lse: &CudaSlice<f32>,
    grad: &CudaSlice<f32>,
    inv_count: f32,
    dlogits: &mut CudaSlice<T>,
    rows: usize,
    vocab: usize,
) -> Result<()> {
    let f = dev.function("cross_entropy", &format!("cross_entropy_bwd_{}", T::SUFFIX))?;
    let (rows_i, vocab_i) = (to_i32("cross_entropy", rows)?, to_i32("cross_entropy", vocab)?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(logits).arg(targets).arg(lse).arg(grad).arg(&inv_count).arg(dlogits).arg(&rows_i).arg(&vocab_i);
    // SAFETY: logits and dlogits hold rows·vocab elements, targets and lse rows, grad one
    // (checked in ops::cross_entropy); block `row < rows` touches only its row.
    unsafe { b.launch(LaunchConfig::from(row_geometry(rows)?)) }?;
    Ok(())
}
