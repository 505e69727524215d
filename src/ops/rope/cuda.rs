//! Launches `cuda/rope.cu`: one 128-thread block per token, cos/sin of the token's
//! position cached in dynamic shared memory ([2, head_dim/2] f32). Positions are counted by
//! the kernel (pos_offset + t, training) or uploaded, one per token (generation).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::cpu::{Positions, RopeDims};
use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::ops::{expect_len, to_i32};
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

/// y = R·x (or Rᵀ·x when `inverse`) for x, y [tokens, heads, head_dim] and inv_freq
/// [head_dim/2]; `Positions::Each` is uploaded for the kernel (one u32 per token), `Offset`
/// passes a null pointer and the kernel counts positions itself.
pub fn rotate<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    inv_freq: &CudaSlice<f32>,
    y: &mut CudaSlice<T>,
    d: RopeDims,
    positions: Positions<'_>,
    inverse: bool,
) -> Result<()> {
    const OP: &str = "rope";
    let n = d.tokens * d.heads * d.head_dim;
    expect_len(OP, "x", x.len(), n)?;
    expect_len(OP, "y", y.len(), n)?;
    expect_len(OP, "inv_freq", inv_freq.len(), d.head_dim / 2)?;
    if d.tokens == 0 {
        return Ok(());
    }
    let launch = geometry(d.tokens, d.head_dim)?;
    let f = dev.function("rope", &format!("rope_{}", T::SUFFIX))?;
    let (tokens_i, heads_i, dim_i) = (to_i32(OP, d.tokens)?, to_i32(OP, d.heads)?, to_i32(OP, d.head_dim)?);
    // The caller checked that every position is below 2^24 (exact in f32).
    let (seq, pos_offset, uploaded) = match positions {
        Positions::Offset { seq, pos_offset } => (seq, pos_offset, None),
        Positions::Each(p) => {
            expect_len(OP, "positions", p.len(), d.tokens)?;
            (1, 0, Some(dev.htod(p)?))
        }
    };
    let (seq_i, offset_i) = (to_i32(OP, seq)?, to_i32(OP, pos_offset)?);
    let sign: f32 = if inverse { -1.0 } else { 1.0 };
    let null: u64 = 0;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(x).arg(inv_freq).arg(y).arg(&tokens_i).arg(&seq_i).arg(&heads_i).arg(&dim_i).arg(&offset_i);
    match &uploaded {
        Some(p) => b.arg(p.slice()),
        None => b.arg(&null),
    };
    b.arg(&sign);
    // SAFETY: x and y hold tokens·heads·head_dim elements, inv_freq head_dim/2 and the
    // uploaded positions (if any) tokens (checked above); block `token < tokens` touches only
    // its token's heads and position; shared memory is sized 2·(head_dim/2) floats, checked
    // against the limit by `geometry`.
    unsafe { b.launch(LaunchConfig::from(launch)) }?;
    Ok(())
}
