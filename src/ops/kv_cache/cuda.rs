//! Launches `cuda/kv_cache.cu` (see its header): `kv_write_*` with one block per written row,
//! `kv_attention_*` with one block per (query row, query head), both 256 threads. The row
//! indices (seqs, positions: \[N\] u32) are checked here against the cache and uploaded per call
//! (a few bytes).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::check_indices;
use super::cpu::{AttentionDims, CacheDims};
use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::ops::{expect_len, to_i32};
use crate::{Error, Result};

/// Largest head dimension `kv_attention_*` takes (`KV_MAX_D` in the .cu file).
pub const MAX_HEAD_DIM: usize = 256;
/// Threads per block of both kernels (`KV_THREADS` in the .cu file).
const THREADS: u32 = 256;

/// Blocks along x for `rows` rows: the grid has exactly one block per row, so at least one row.
fn row_blocks(op: &'static str, rows: usize) -> Result<u32> {
    if rows == 0 {
        return Err(Error::invalid(format!("{op}: no rows to launch for")));
    }
    Ok(to_i32(op, rows)? as u32)
}

/// Geometry of `kv_write_*`: one block per written row.
pub fn write_geometry(rows: usize) -> Result<Launch> {
    Ok(Launch { grid: (row_blocks("kv_cache::write", rows)?, 1, 1), block: (THREADS, 1, 1), shared_bytes: 0 })
}

/// Geometry of `kv_attention_*`: grid (query rows, query heads); the heads must fit grid.y.
pub fn attention_geometry(rows: usize, q_heads: usize) -> Result<Launch> {
    let x = row_blocks("kv_cache::attention", rows)?;
    let y = u32::try_from(q_heads).ok().filter(|y| (1..=65_535).contains(y)).ok_or_else(|| {
        Error::invalid(format!("kv_cache::attention: {q_heads} query heads, the grid takes 1..=65535"))
    })?;
    Ok(Launch { grid: (x, y, 1), block: (THREADS, 1, 1), shared_bytes: 0 })
}

/// cache [B, Hkv, S, D] gets rows [N, Hkv, D] at (seqs\[n\], positions\[n\]) of every kv head.
pub fn write<T: CudaFloat>(
    dev: &CudaDevice,
    cache: &mut CudaSlice<T>,
    rows: &CudaSlice<T>,
    d: CacheDims,
    seqs: &[u32],
    positions: &[u32],
) -> Result<()> {
    const OP: &str = "kv_cache::write";
    check_indices(OP, d, seqs, positions)?;
    expect_len(OP, "cache", cache.len(), d.len())?;
    expect_len(OP, "rows", rows.len(), seqs.len() * d.row_len())?;
    if seqs.is_empty() {
        return Ok(());
    }
    let launch = write_geometry(seqs.len())?;
    let f = dev.function("kv_cache", &format!("kv_write_{}", T::SUFFIX))?;
    let (seqs_dev, positions_dev) = (dev.htod(seqs)?, dev.htod(positions)?);
    // The kernel indexes a row's Hkv·D elements with an int (offsets in the cache in size_t).
    to_i32(OP, d.row_len())?;
    let (capacity_i, kv_heads_i, dim_i) = (to_i32(OP, d.capacity)?, to_i32(OP, d.kv_heads)?, to_i32(OP, d.head_dim)?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(cache).arg(rows).arg(seqs_dev.slice()).arg(positions_dev.slice());
    b.arg(&capacity_i).arg(&kv_heads_i).arg(&dim_i);
    // SAFETY: seqs[n] < B and positions[n] < S (checked above), so block n writes D elements
    // of each of the Hkv heads of its sequence inside the cache's B·Hkv·S·D and reads row n
    // of rows' N·Hkv·D; seqs and positions hold N elements, one per block.
    unsafe { b.launch(LaunchConfig::from(launch)) }?;
    Ok(())
}

/// o [N, Hq, D] from q [N, Hq, D] and the caches [B, Hkv, S, D]; D ≤ [`MAX_HEAD_DIM`].
#[allow(clippy::too_many_arguments)]
pub fn attention<T: CudaFloat>(
    dev: &CudaDevice,
    q: &CudaSlice<T>,
    k_cache: &CudaSlice<T>,
    v_cache: &CudaSlice<T>,
    o: &mut CudaSlice<T>,
    d: AttentionDims,
    seqs: &[u32],
    positions: &[u32],
) -> Result<()> {
    const OP: &str = "kv_cache::attention";
    let c = d.cache;
    if c.head_dim == 0 || c.head_dim > MAX_HEAD_DIM {
        return Err(Error::invalid(format!(
            "{OP}: the CUDA kernel takes head_dim 1..={MAX_HEAD_DIM} (MAX_HEAD_DIM), got {}",
            c.head_dim
        )));
    }
    if c.kv_heads == 0 || !d.q_heads.is_multiple_of(c.kv_heads) {
        return Err(Error::invalid(format!(
            "{OP}: {} query heads do not group over {} kv heads",
            d.q_heads, c.kv_heads
        )));
    }
    check_indices(OP, c, seqs, positions)?;
    let q_len = seqs.len() * d.q_heads * c.head_dim;
    for (what, have, need) in [
        ("q", q.len(), q_len),
        ("o", o.len(), q_len),
        ("k_cache", k_cache.len(), c.len()),
        ("v_cache", v_cache.len(), c.len()),
    ] {
        expect_len(OP, what, have, need)?;
    }
    if seqs.is_empty() {
        return Ok(());
    }
    let launch = attention_geometry(seqs.len(), d.q_heads)?;
    let f = dev.function("kv_cache", &format!("kv_attention_{}", T::SUFFIX))?;
    let (seqs_dev, positions_dev) = (dev.htod(seqs)?, dev.htod(positions)?);
    let (q_heads_i, kv_heads_i) = (to_i32(OP, d.q_heads)?, to_i32(OP, c.kv_heads)?);
    let (capacity_i, dim_i) = (to_i32(OP, c.capacity)?, to_i32(OP, c.head_dim)?);
    let scale_log2 = (std::f64::consts::LOG2_E * d.scale()) as f32;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(q).arg(k_cache).arg(v_cache).arg(o).arg(seqs_dev.slice()).arg(positions_dev.slice());
    b.arg(&q_heads_i).arg(&kv_heads_i).arg(&capacity_i).arg(&dim_i).arg(&scale_log2);
    // SAFETY: q and o hold N·Hq·D elements, the caches B·Hkv·S·D, seqs and positions N
    // (checked above); block (n, h) reads q and writes o at row n, head h, and reads keys
    // 0..=positions[n] < S of sequence seqs[n] < B, kv head h / (Hq/Hkv) < Hkv, D ≤ 256
    // elements each (the kernel's per-lane registers and shared rows).
    unsafe { b.launch(LaunchConfig::from(launch)) }?;
    Ok(())
}
