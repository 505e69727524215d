//! Launches `cuda/rope.cu`: one 128-thread block per token, cos/sin of the token's
//! position cached in dynamic shared memory ([2, head_dim/2] f32). Positions are counted by
//! the kernel (pos_offset + t, training) or uploaded, one per token (generation). The same
//! kernel splits the fused q|k|v product into rotated q, rotated k and v ([`split_qkv`]).

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
    rows(
        dev,
        x,
        d.heads * d.head_dim,
        inv_freq,
        [Some((y, d.heads)), None, None],
        d.tokens,
        d.head_dim,
        positions,
        inverse,
    )
}

/// The fused q|k|v projection's product x [tokens, (hq + 2·hkv)·head_dim] split per token:
/// q [tokens, hq, head_dim] and k [tokens, hkv, head_dim] rotated, v [tokens, hkv, head_dim]
/// copied (forward rotation, training positions `positions`).
#[allow(clippy::too_many_arguments)]
pub fn split_qkv<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    inv_freq: &CudaSlice<f32>,
    q: (&mut CudaSlice<T>, usize),
    k: (&mut CudaSlice<T>, usize),
    v: (&mut CudaSlice<T>, usize),
    tokens: usize,
    head_dim: usize,
    positions: Positions<'_>,
) -> Result<()> {
    let ld = (q.1 + k.1 + v.1) * head_dim;
    rows(dev, x, ld, inv_freq, [Some(q), Some(k), Some(v)], tokens, head_dim, positions, false)
}

/// `rope_*` over rows of `ld` elements: segments 0 and 1 rotated, segment 2 copied (see the
/// kernel); each segment is (output, heads), the output [tokens, heads, head_dim].
#[allow(clippy::too_many_arguments)]
fn rows<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    ld: usize,
    inv_freq: &CudaSlice<f32>,
    segments: [Option<(&mut CudaSlice<T>, usize)>; 3],
    tokens: usize,
    head_dim: usize,
    positions: Positions<'_>,
    inverse: bool,
) -> Result<()> {
    const OP: &str = "rope";
    let heads_total: usize = segments.iter().flatten().map(|(_, h)| h).sum();
    if heads_total * head_dim > ld {
        return Err(Error::invalid(format!("{OP}: {heads_total} heads of {head_dim} in rows of {ld}")));
    }
    expect_len(OP, "x", x.len(), tokens * ld)?;
    for (y, heads) in segments.iter().flatten() {
        expect_len(OP, "y", y.len(), tokens * heads * head_dim)?;
    }
    expect_len(OP, "inv_freq", inv_freq.len(), head_dim / 2)?;
    if tokens == 0 {
        return Ok(());
    }
    let launch = geometry(tokens, head_dim)?;
    let f = dev.function("rope", &format!("rope_{}", T::SUFFIX))?;
    let (tokens_i, ld_i, dim_i) = (to_i32(OP, tokens)?, to_i32(OP, ld)?, to_i32(OP, head_dim)?);
    // The caller checked that every position is below 2^24 (exact in f32).
    let (seq, pos_offset, uploaded) = match positions {
        Positions::Offset { seq, pos_offset } => (seq, pos_offset, None),
        Positions::Each(p) => {
            expect_len(OP, "positions", p.len(), tokens)?;
            (1, 0, Some(dev.htod(p)?))
        }
    };
    let (seq_i, offset_i) = (to_i32(OP, seq)?, to_i32(OP, pos_offset)?);
    let sign: f32 = if inverse { -1.0 } else { 1.0 };
    let null: u64 = 0;
    let mut heads_i = [0i32; 3];
    for (h, segment) in heads_i.iter_mut().zip(&segments) {
        *h = to_i32(OP, segment.as_ref().map_or(0, |s| s.1))?;
    }
    let mut b = dev.stream().launch_builder(&f);
    b.arg(x).arg(&ld_i).arg(inv_freq);
    for (segment, heads) in segments.into_iter().zip(&heads_i) {
        match segment {
            Some((y, _)) => b.arg(y),
            // A null output with 0 heads: the segment is skipped.
            None => b.arg(&null),
        };
        b.arg(heads);
    }
    b.arg(&tokens_i).arg(&seq_i).arg(&dim_i).arg(&offset_i);
    match &uploaded {
        Some(p) => b.arg(p.slice()),
        None => b.arg(&null),
    };
    b.arg(&sign);
    // SAFETY: x holds tokens·ld elements, each output tokens·heads·head_dim, inv_freq
    // head_dim/2 and the uploaded positions (if any) tokens (checked above), and the
    // segments' heads fit in a row of ld; block `token < tokens` touches only its token's row,
    // outputs and position; shared memory is sized 2·(head_dim/2) floats, checked against the
    // limit by `geometry`.
    unsafe { b.launch(LaunchConfig::from(launch)) }?;
    Ok(())
}
