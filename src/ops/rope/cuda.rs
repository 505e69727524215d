//! Launches `cuda/rope.cu`: one 128-thread block per token, cos/sin of the token's
//! position cached in dynamic shared memory ([2, head_dim/2] f32).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::cpu::RopeDims;
use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::ops::to_i32;
use crate::{Error, Result};

const THREADS: u32 = 128;
/// Dynamic shared memory available to a block without opting in to more.
pub const MAX_SHARED_BYTES: usize = 48 * 1024;

/// Geometry of `rope_*`: one block per token (at least one block), shared memory for the
/// token's cos and sin ([2, head_dim/2] f32); Err when that exceeds [`MAX_SHARED_BYTES`].
pub fn geometry(tokens: usize, head_dim: usize) -> Result<Launch> {
    let shared_bytes = head_dim * std::mem::size_of::<f32>();
    if shared_bytes > MAX_SHARED_BYTES {
        return Err(Error::invalid(format!("rope: head_dim {head_dim} needs more shared memory than a block has")));
    }
    let blocks = to_i32("rope", tokens)?.max(1) as u32;
    Ok(Launch { grid: (blocks, 1, 1), block: (THREADS, 1, 1), shared_bytes: shared_bytes as u32 })
}

/// y = R·x (or Rᵀ·x when `inverse`). Slices: x, y [batch·seq·heads·head_dim],
/// inv_freq [head_dim/2] (checked by the caller); `tokens` = batch·seq.
pub fn rotate<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    inv_freq: &CudaSlice<f32>,
    y: &mut CudaSlice<T>,
    tokens: usize,
    d: RopeDims,
    inverse: bool,
) -> Result<()> {
    let launch = geometry(tokens, d.head_dim)?;
    let f = dev.function("rope", &format!("rope_{}", T::SUFFIX))?;
    let tokens_i = to_i32("rope", tokens)?;
    let (seq_i, heads_i, dim_i) = (to_i32("rope", d.seq)?, to_i32("rope", d.heads)?, to_i32("rope", d.head_dim)?);
    // The caller checked that pos_offset + seq fits (positions stay exact in f32).
    let offset_i = to_i32("rope", d.pos_offset)?;
    let sign: f32 = if inverse { -1.0 } else { 1.0 };
    let mut b = dev.stream().launch_builder(&f);
    b.arg(x).arg(inv_freq).arg(y).arg(&tokens_i).arg(&seq_i).arg(&heads_i).arg(&dim_i).arg(&offset_i).arg(&sign);
    // SAFETY: x and y hold tokens·heads·head_dim elements and inv_freq head_dim/2 (checked in
    // ops::rope); block `token < tokens` touches only its token's heads; shared memory is
    // sized 2·(head_dim/2) floats, checked against the limit by `geometry`.
    unsafe { b.launch(LaunchConfig::from(launch)) }?;
    Ok(())
}
