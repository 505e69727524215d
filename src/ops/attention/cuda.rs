//! Launches `cuda/attention.cu` (see its header for the tiling). q, o, do, dq: [B, T, Hq, D];
//! k, v, dk, dv: [B, T, Hkv, D]; lse, delta: [B, Hq, T] f32. Kernels come in two widths,
//! D ≤ 64 and D ≤ 128; tiles are 32 rows, 128 threads per block, in dynamic shared memory
//! (3 tiles for the forward, 4 for the backward: at most 64 KiB). Backward: delta = rowsum(do·o),
//! then dq (one block per query tile) and dk, dv (one block per key tile of a kv head), both
//! recomputing p from lse; no atomics, so results are deterministic. Each launch's grid, block
//! and shared bytes come from [`forward_geometry`], [`delta_geometry`], [`dq_geometry`] and
//! [`dkdv_geometry`], its scalar arguments from [`plan`] (tests/cuda_on_cpu runs the kernels
//! on the CPU with both).

use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};

use super::cpu::Dims;
use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::ops::to_i32;
use crate::{Error, Result};

/// Largest head dimension the kernels take.
pub const MAX_HEAD_DIM: usize = 128;
/// Rows per tile (`TILE` in the .cu file).
const TILE: usize = 32;
/// Threads per block of the tiled kernels (`THREADS` in the .cu file).
const THREADS: u32 = 128;
/// Threads per block of the delta kernel (one warp per row).
const DELTA_THREADS: u32 = 256;

/// Kernel variant and the scalar arguments every tiled kernel takes after its pointers, as
/// the launchers pass them: `seq, q_heads, kv_heads, head_dim, scale_log2` (forward), then
/// `scale` (backward).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// 64 or 128: the kernels' padded head dimension (`DMAX`, the `_d{width}_` in their names).
    pub width: usize,
    /// T.
    pub seq: i32,
    /// Hq.
    pub q_heads: i32,
    /// Hkv.
    pub kv_heads: i32,
    /// D.
    pub head_dim: i32,
    /// log2(e) / sqrt(D): scores in base-2 units.
    pub scale_log2: f32,
    /// 1 / sqrt(D).
    pub scale: f32,
}

/// The kernel width for head dimension `head_dim` (1..=[`MAX_HEAD_DIM`]): 64 or 128.
pub fn kernel_width(head_dim: usize) -> usize {
    if head_dim <= 64 {
        64
    } else {
        128
    }
}

/// Checks `d` against the kernels' limits and gives the kernel width and scalar arguments.
pub fn plan(d: Dims) -> Result<Plan> {
    if d.head_dim == 0 || d.head_dim > MAX_HEAD_DIM {
        return Err(Error::invalid(format!(
            "attention: CUDA kernels take head_dim 1..={MAX_HEAD_DIM}, got {}",
            d.head_dim
        )));
    }
    if d.kv_heads == 0 || !d.q_heads.is_multiple_of(d.kv_heads) {
        return Err(Error::invalid(format!(
            "attention: {} query heads do not group over {} kv heads",
            d.q_heads, d.kv_heads
        )));
    }
    // Row indices are i32 in the kernels and may run one tile past T; element offsets are size_t.
    to_i32("attention", d.seq + TILE)?;
    Ok(Plan {
        width: kernel_width(d.head_dim),
        seq: to_i32("attention", d.seq)?,
        q_heads: to_i32("attention", d.q_heads)?,
        kv_heads: to_i32("attention", d.kv_heads)?,
        head_dim: to_i32("attention", d.head_dim)?,
        scale_log2: (std::f64::consts::LOG2_E * d.scale()) as f32,
        scale: d.scale() as f32,
    })
}

/// Geometry of a tiled kernel of `width` with `tiles` shared-memory tiles of 32 × width f32:
/// grid (⌈seq / 32⌉ tiles along T, `heads` = batch · heads), 128 threads. The `…_geometry`
/// functions below take dims that [`plan`] accepts (head_dim 1..=[`MAX_HEAD_DIM`]).
fn tiled_geometry(width: usize, tiles: usize, seq: usize, heads: usize) -> Result<Launch> {
    let smem = tiles
        .checked_mul(TILE * width * std::mem::size_of::<f32>())
        .and_then(|b| u32::try_from(b).ok())
        .ok_or_else(|| Error::invalid("attention: shared memory size overflows"))?;
    let x =
        u32::try_from(seq.div_ceil(TILE)).map_err(|_| Error::invalid("attention: sequence too long for one grid"))?;
    let y = u32::try_from(heads)
        .ok()
        .filter(|&y| y <= 65_535)
        .ok_or_else(|| Error::invalid(format!("attention: batch × heads = {heads} exceeds the grid limit 65535")))?;
    Ok(Launch { grid: (x, y, 1), block: (THREADS, 1, 1), shared_bytes: smem })
}

/// `attention_fwd_d{width}_*`: one block per (query tile, b · Hq + h), 3 tiles of shared memory.
pub fn forward_geometry(d: Dims) -> Result<Launch> {
    tiled_geometry(kernel_width(d.head_dim), 3, d.seq, mul("batch × q heads", d.batch, d.q_heads)?)
}

/// `attention_bwd_dq_d{width}_*`: one block per (query tile, b · Hq + h), 4 tiles.
pub fn dq_geometry(d: Dims) -> Result<Launch> {
    tiled_geometry(kernel_width(d.head_dim), 4, d.seq, mul("batch × q heads", d.batch, d.q_heads)?)
}

/// `attention_bwd_dkdv_d{width}_*`: one block per (key tile, b · Hkv + g), 4 tiles.
pub fn dkdv_geometry(d: Dims) -> Result<Launch> {
    tiled_geometry(kernel_width(d.head_dim), 4, d.seq, mul("batch × kv heads", d.batch, d.kv_heads)?)
}

/// `attention_bwd_delta_*`: one warp per (b, t, h) row, 256 threads per block.
pub fn delta_geometry(d: Dims) -> Result<Launch> {
    let rows = mul("batch × seq", d.batch, d.seq).and_then(|bt| mul("batch × seq × q heads", bt, d.q_heads))?;
    Launch::grid_1d(mul("threads", rows, 32)?, DELTA_THREADS)
}

fn mul(what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| Error::invalid(format!("attention: {what} overflows")))
}

/// A tiled kernel `{name}_d{width}_{suffix}` with shared memory opted into for `geometry`.
fn tiled(
    dev: &CudaDevice,
    name: &str,
    suffix: &str,
    p: &Plan,
    geometry: Launch,
) -> Result<(CudaFunction, LaunchConfig)> {
    let f = dev.function("attention", &format!("{name}_d{}_{suffix}", p.width))?;
    let smem_i = to_i32("attention", geometry.shared_bytes as usize)?;
    f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem_i)?;
    Ok((f, LaunchConfig::from(geometry)))
}

/// Error unless a slice holds exactly the elements its tensor has (also the tensor-core path's).
pub(super) fn expect_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::invalid(format!("attention: {what} holds {got} elements, expected {want}")))
    }
}

/// o and lse from q, k, v (slice lengths are checked against `d`).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: CudaFloat>(
    dev: &CudaDevice,
    q: &CudaSlice<T>,
    k: &CudaSlice<T>,
    v: &CudaSlice<T>,
    o: &mut CudaSlice<T>,
    lse: &mut CudaSlice<f32>,
    d: Dims,
) -> Result<()> {
    let p = plan(d)?;
    for (what, got, want) in [
        ("q", q.len(), d.q_len()),
        ("k", k.len(), d.kv_len()),
        ("v", v.len(), d.kv_len()),
        ("o", o.len(), d.q_len()),
        ("lse", lse.len(), d.lse_len()),
    ] {
        expect_len(what, got, want)?;
    }
    if d.batch * d.seq == 0 {
        return Ok(());
    }
    let (f, cfg) = tiled(dev, "attention_fwd", T::SUFFIX, &p, forward_geometry(d)?)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(q).arg(k).arg(v).arg(o).arg(lse);
    b.arg(&p.seq).arg(&p.q_heads).arg(&p.kv_heads).arg(&p.head_dim).arg(&p.scale_log2);
    // SAFETY: q, o hold B·T·Hq·D, k, v B·T·Hkv·D and lse B·Hq·T elements (checked above);
    // blocks read rows < T and columns < D of their head only, and shared memory is sized
    // for the kernel's 3 tiles of 32 × width f32.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// delta = rowsum(do ⊙ o) [B, Hq, T] f32 (`attention_bwd_delta_*`); slice lengths are
/// checked against `d`.
pub fn delta<T: CudaFloat>(
    dev: &CudaDevice,
    o: &CudaSlice<T>,
    d_o: &CudaSlice<T>,
    delta: &mut CudaSlice<f32>,
    d: Dims,
) -> Result<()> {
    for (what, got, want) in
        [("o", o.len(), d.q_len()), ("do", d_o.len(), d.q_len()), ("delta", delta.len(), d.lse_len())]
    {
        expect_len(what, got, want)?;
    }
    if d.lse_len() == 0 {
        return Ok(());
    }
    let f = dev.function("attention", &format!("attention_bwd_delta_{}", T::SUFFIX))?;
    let (batch, seq) = (to_i32("attention", d.batch)?, to_i32("attention", d.seq)?);
    let (q_heads, head_dim) = (to_i32("attention", d.q_heads)?, to_i32("attention", d.head_dim)?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(o).arg(d_o).arg(delta).arg(&batch).arg(&seq).arg(&q_heads).arg(&head_dim);
    // SAFETY: o, do hold B·T·Hq·D and delta B·Hq·T elements (checked); one warp per (b, t, h)
    // row, and warps past the B·T·Hq rows return before touching memory.
    unsafe { b.launch(LaunchConfig::from(delta_geometry(d)?)) }?;
    Ok(())
}

/// dq, dk, dv (each written only when given) from q, k, v, o, lse and do; slice lengths are
/// checked against `d`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: CudaFloat>(
    dev: &CudaDevice,
    q: &CudaSlice<T>,
    k: &CudaSlice<T>,
    v: &CudaSlice<T>,
    o: &CudaSlice<T>,
    lse: &CudaSlice<f32>,
    d_o: &CudaSlice<T>,
    dq: Option<&mut CudaSlice<T>>,
    dk: Option<&mut CudaSlice<T>>,
    dv: Option<&mut CudaSlice<T>>,
    d: Dims,
) -> Result<()> {
    let p = plan(d)?;
    let lens = [
        ("q", q.len(), d.q_len()),
        ("k", k.len(), d.kv_len()),
        ("v", v.len(), d.kv_len()),
        ("o", o.len(), d.q_len()),
        ("lse", lse.len(), d.lse_len()),
        ("do", d_o.len(), d.q_len()),
    ];
    for (what, got, want) in lens {
        expect_len(what, got, want)?;
    }
    for (what, grad, want) in [("dq", &dq, d.q_len()), ("dk", &dk, d.kv_len()), ("dv", &dv, d.kv_len())] {
        if let Some(g) = grad {
            expect_len(what, g.len(), want)?;
        }
    }
    if d.batch * d.seq == 0 || (dq.is_none() && dk.is_none() && dv.is_none()) {
        return Ok(());
    }

    let mut delta = dev.alloc::<f32>(d.lse_len())?;
    self::delta(dev, o, d_o, delta.slice_mut(), d)?;

    if let Some(dq) = dq {
        let (f, cfg) = tiled(dev, "attention_bwd_dq", T::SUFFIX, &p, dq_geometry(d)?)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(q).arg(k).arg(v).arg(d_o).arg(lse).arg(delta.slice()).arg(dq);
        b.arg(&p.seq).arg(&p.q_heads).arg(&p.kv_heads).arg(&p.head_dim).arg(&p.scale_log2).arg(&p.scale);
        // SAFETY: q, do, dq hold B·T·Hq·D, k, v B·T·Hkv·D, lse and delta B·Hq·T elements
        // (checked above); each block writes rows < T, columns < D of its own query tile and
        // head; shared memory is sized for 4 tiles.
        unsafe { b.launch(cfg) }?;
    }
    if dk.is_some() || dv.is_some() {
        let (f, cfg) = tiled(dev, "attention_bwd_dkdv", T::SUFFIX, &p, dkdv_geometry(d)?)?;
        // A null pointer tells the kernel not to write that gradient.
        let null: u64 = 0;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(q).arg(k).arg(v).arg(d_o).arg(lse).arg(delta.slice());
        match dk {
            Some(dk) => b.arg(dk),
            None => b.arg(&null),
        };
        match dv {
            Some(dv) => b.arg(dv),
            None => b.arg(&null),
        };
        b.arg(&p.seq).arg(&p.q_heads).arg(&p.kv_heads).arg(&p.head_dim).arg(&p.scale_log2).arg(&p.scale);
        // SAFETY: q, do hold B·T·Hq·D, k, v, dk, dv B·T·Hkv·D, lse and delta B·Hq·T elements
        // (checked above); each block writes keys < T, columns < D of its own key tile and kv
        // head; shared memory is sized for 4 tiles.
        unsafe { b.launch(cfg) }?;
    }
    Ok(())
}
