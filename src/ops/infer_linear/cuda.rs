//! Launches `cuda/infer_linear.cu` (its header describes the kernels): the decode path of
//! [`super::sparse`] on CUDA, y [N, rows] = x [N, cols]·(W⊙M)ᵀ for 1..=[`DECODE_MAX_TOKENS`]
//! tokens, read straight from a bitmask or N:M (M ≤ [`MAX_NM_M`]) weight.
//!
//! Blocks of 512 threads, one warp per row. x is staged per block in dynamic shared memory as
//! f32 [N, pitch]. For the bitmask kernel pitch is cols rounded up to 256, and each of the 16
//! warps also has a buffer for a 1024-column segment's values and 32 bytes
//! ([`bitmask_shared_bytes`]); for the N:M kernel pitch = cols + ⌊cols/32⌋, a padding float
//! every 32 columns against bank conflicts ([`nm_shared_bytes`]). It must fit the GPU's
//! opt-in limit per block (227 KiB on H100/H200, 163 KiB on A100; 7B shapes, cols ≤ 11008,
//! fit 4 bf16 tokens on Hopper, 3 on A100), else [`decodes`] is false and the op takes its
//! expand + GEMM path. The grid holds as many blocks as the GPU keeps resident at once (shared
//! memory and threads per SM permitting), capped by the rows; warps stride over the rows, so
//! x is staged once per resident block. Each launch's grid, block and shared bytes come from
//! [`bitmask_geometry`] or [`nm_geometry`] (tests/cuda_on_cpu runs the kernels on the CPU
//! with them).

use cudarc::driver::sys::CUdevice_attribute_enum::{
    CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
    CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
};
use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};

use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::ops::{cuda_device, cuda_tensor, expect_len, to_i32};
use crate::sparse::cpu::meta_stride;
use crate::sparse::nm::index_bits;
use crate::sparse::{check_nm, SparseFormat, SparseWeight};
use crate::{with_compute_type, Error, Result, Tensor};

/// Most tokens the decode kernels take (`IL_MAX_TOKENS` in the .cu file): beyond, the product
/// is a GEMM (prefill).
pub const DECODE_MAX_TOKENS: usize = 4;
/// Largest N:M group the N:M kernel takes: positions of at most 7 bits, so that the positions
/// of a lane's 8 bf16 values lie in 8 bytes.
pub const MAX_NM_M: usize = 128;
/// Threads per block (`IL_THREADS` in the .cu file): 16 warps, one row each at a time.
const THREADS: u32 = 512;
const WARPS: usize = THREADS as usize / 32;
/// Blocks resident per SM at most: the kernels' launch bounds (`IL_MIN_BLOCKS`) keep them at
/// ≤ 64 registers a thread, so two blocks of 512 threads fill the 64K registers of an SM.
const MAX_BLOCKS_PER_SM: usize = 2;
/// Shared memory the driver reserves per block (sm_80 and later), for the residency count.
const RESERVED_SHARED: usize = 1024;

const BITMASK_OP: &str = "infer_linear::sparse (bitmask decode)";
const NM_OP: &str = "infer_linear::sparse (N:M decode)";

/// What the decode grid depends on in the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuLimits {
    /// Streaming multiprocessors.
    pub sms: usize,
    /// Dynamic shared memory one block may opt into, in bytes.
    pub shared_per_block: usize,
    /// Shared memory of one SM, in bytes (how many blocks stay resident).
    pub shared_per_sm: usize,
}

impl GpuLimits {
    /// The limits of `dev`, as its driver reports them.
    pub fn of(dev: &CudaDevice) -> Result<Self> {
        let get = |a| -> Result<usize> {
            usize::try_from(dev.attribute(a)?).map_err(|_| Error::invalid("infer_linear: negative device attribute"))
        };
        Ok(GpuLimits {
            sms: get(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            shared_per_block: get(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
            shared_per_sm: get(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)?,
        })
    }
}

/// Sizes of one decode launch: x [tokens, cols], W [rows, cols], y [tokens, rows].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// N, 1..=[`DECODE_MAX_TOKENS`].
    pub tokens: usize,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
}

/// Bitmask columns per warp segment and per step (`IL_SEGMENT`, `IL_STEP` in the .cu file):
/// the bitmask kernel's x pitch is cols rounded up to a step.
const BITMASK_SEGMENT: usize = 1024;
const BITMASK_STEP: usize = 256;

/// Bytes of shared memory the bitmask kernel takes for x [tokens, cols] and values of
/// `value_bytes` each: x as f32 [tokens, cols rounded up to 256], and per warp a segment's
/// values with a 16-byte chunk on each side.
pub fn bitmask_shared_bytes(tokens: usize, cols: usize, value_bytes: usize) -> Option<usize> {
    let x = cols.checked_next_multiple_of(BITMASK_STEP)?.checked_mul(tokens)?.checked_mul(std::mem::size_of::<f32>())?;
    let buffer = BITMASK_SEGMENT.checked_mul(value_bytes)?.checked_add(32)?;
    x.checked_add(WARPS * buffer)
}

/// Bytes of shared memory the N:M kernel takes for x [tokens, cols]: f32 with one padding
/// float every 32 columns, 4·tokens·(cols + ⌊cols/32⌋).
pub fn nm_shared_bytes(tokens: usize, cols: usize) -> Option<usize> {
    cols.checked_add(cols / 32)?.checked_mul(tokens)?.checked_mul(std::mem::size_of::<f32>())
}

/// Geometry of either kernel, which needs `need` bytes of shared memory (None: more than a
/// usize): ⌈rows / 16⌉ blocks of 512 threads at most, fewer when the GPU cannot keep that
/// many resident (the warps then stride over the rows).
fn geometry(op: &'static str, d: Dims, need: Option<usize>, limits: GpuLimits) -> Result<Launch> {
    if !(1..=DECODE_MAX_TOKENS).contains(&d.tokens) {
        return Err(Error::invalid(format!(
            "{op}: the decode kernels take 1..={DECODE_MAX_TOKENS} tokens, got {}",
            d.tokens
        )));
    }
    if d.rows == 0 {
        return Err(Error::invalid(format!("{op}: no rows to launch for")));
    }
    let shared = need.filter(|&b| b <= limits.shared_per_block).ok_or_else(|| {
        Error::invalid(format!(
            "{op}: x [{}, {}] takes {} bytes of shared memory, a block of this GPU at most {}",
            d.tokens,
            d.cols,
            need.map_or("over usize::MAX".into(), |b| b.to_string()),
            limits.shared_per_block
        ))
    })?;
    let resident = (limits.shared_per_sm / (shared + RESERVED_SHARED)).clamp(1, MAX_BLOCKS_PER_SM);
    let blocks = d.rows.div_ceil(WARPS).min(limits.sms.max(1).saturating_mul(resident));
    // The kernels' row index (an int) runs up to rows + blocks·16 - 1; columns are ints too.
    to_i32(op, blocks.checked_mul(WARPS).and_then(|b| b.checked_add(d.rows)).unwrap_or(usize::MAX))?;
    to_i32(op, d.cols)?;
    Ok(Launch {
        grid: (to_i32(op, blocks)? as u32, 1, 1),
        block: (THREADS, 1, 1),
        shared_bytes: u32::try_from(shared)
            .map_err(|_| Error::invalid(format!("{op}: shared memory size overflows")))?,
    })
}

/// `bitmask_decode_*` with values of `value_bytes` (4 for f32, 2 for bf16): see the module
/// docs.
pub fn bitmask_geometry(d: Dims, value_bytes: usize, limits: GpuLimits) -> Result<Launch> {
    geometry(BITMASK_OP, d, bitmask_shared_bytes(d.tokens, d.cols, value_bytes), limits)
}

/// `nm_decode_*` for groups of `m` (≤ [`MAX_NM_M`]): as [`bitmask_geometry`].
pub fn nm_geometry(d: Dims, m: usize, limits: GpuLimits) -> Result<Launch> {
    if m > MAX_NM_M {
        return Err(Error::invalid(format!("{NM_OP}: groups of M ≤ {MAX_NM_M}, got {m}")));
    }
    // Bit offsets of positions within a row (< 8 bits per column) are ints.
    to_i32(NM_OP, d.cols.saturating_mul(8))?;
    geometry(NM_OP, d, nm_shared_bytes(d.tokens, d.cols), limits)
}

/// True when the decode kernels compute x [tokens, cols]·Wᵀ for a weight of `format` with
/// values of `value_bytes` on a GPU with `limits` (1..=[`DECODE_MAX_TOKENS`] tokens, N:M
/// groups ≤ [`MAX_NM_M`], the kernel's shared memory fits); [`super::sparse`] takes its
/// expand + GEMM path otherwise.
pub fn decodes(format: SparseFormat, value_bytes: usize, tokens: usize, cols: usize, limits: GpuLimits) -> bool {
    let d = Dims { tokens, rows: 1, cols };
    match format {
        SparseFormat::Bitmask => bitmask_geometry(d, value_bytes, limits).is_ok(),
        SparseFormat::NM { m, .. } => nm_geometry(d, m, limits).is_ok(),
    }
}

/// The kernel `{name}_{suffix}` with its dynamic shared memory opted into.
fn function(dev: &CudaDevice, op: &'static str, name: &str, suffix: &str, launch: Launch) -> Result<CudaFunction> {
    let f = dev.function("infer_linear", &format!("{name}_{suffix}"))?;
    f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, to_i32(op, launch.shared_bytes as usize)?)?;
    Ok(f)
}

/// y [N, rows] = x [N, cols]·(W⊙M)ᵀ from a bitmask weight: values \[nnz\], mask [rows, ⌈cols/8⌉],
/// row offsets [rows + 1]. Slice lengths are checked here.
#[allow(clippy::too_many_arguments)]
pub fn bitmask<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    values: &CudaSlice<T>,
    mask: &CudaSlice<u8>,
    offsets: &CudaSlice<u32>,
    y: &mut CudaSlice<T>,
    d: Dims,
    limits: GpuLimits,
) -> Result<()> {
    const OP: &str = BITMASK_OP;
    let stride = meta_stride(d.cols, SparseFormat::Bitmask);
    expect_len(OP, "x", x.len(), d.tokens * d.cols)?;
    expect_len(OP, "y", y.len(), d.tokens * d.rows)?;
    expect_len(OP, "mask", mask.len(), d.rows * stride)?;
    expect_len(OP, "row offsets", offsets.len(), d.rows + 1)?;
    let nnz = u32::try_from(values.len()).map_err(|_| Error::invalid(format!("{OP}: more than 2³² values")))?;
    if d.tokens == 0 || d.rows == 0 {
        return Ok(());
    }
    let launch = bitmask_geometry(d, std::mem::size_of::<T>(), limits)?;
    let f = function(dev, OP, "bitmask_decode", T::SUFFIX, launch)?;
    let (tokens_i, rows_i, cols_i, stride_i) =
        (to_i32(OP, d.tokens)?, to_i32(OP, d.rows)?, to_i32(OP, d.cols)?, to_i32(OP, stride)?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(x).arg(values).arg(mask).arg(offsets).arg(y);
    b.arg(&tokens_i).arg(&rows_i).arg(&cols_i).arg(&stride_i).arg(&nnz);
    // SAFETY: x holds N·cols, y N·rows, mask rows·stride and offsets rows + 1 elements (checked
    // above); warp r reads its mask row (words past stride are not read) and values
    // [min(offsets[r], end), end) with end = min(offsets[r + 1], nnz = values.len()) (and asks
    // for the next row's in L2), writes y[t, r] for t < N; shared memory is sized by the
    // geometry for x [N, cols] and the warps' value buffers of T.
    unsafe { b.launch(LaunchConfig::from(launch)) }?;
    Ok(())
}

/// y [N, rows] = x [N, cols]·(W⊙M)ᵀ from an N:M weight: values [rows, cols/m·n], positions
/// [rows, ⌈cols/m·n·⌈log2 m⌉ / 8⌉]. Slice lengths are checked here.
#[allow(clippy::too_many_arguments)]
pub fn nm<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    values: &CudaSlice<T>,
    positions: &CudaSlice<u8>,
    y: &mut CudaSlice<T>,
    d: Dims,
    n: usize,
    m: usize,
    limits: GpuLimits,
) -> Result<()> {
    const OP: &str = NM_OP;
    check_nm(n, m, d.cols)?;
    let (bits, per_row) = (index_bits(m), d.cols / m * n);
    let index_stride = meta_stride(d.cols, SparseFormat::NM { n, m });
    expect_len(OP, "x", x.len(), d.tokens * d.cols)?;
    expect_len(OP, "y", y.len(), d.tokens * d.rows)?;
    expect_len(OP, "values", values.len(), d.rows * per_row)?;
    expect_len(OP, "positions", positions.len(), d.rows * index_stride)?;
    if d.tokens == 0 || d.rows == 0 {
        return Ok(());
    }
    let launch = nm_geometry(d, m, limits)?;
    let f = function(dev, OP, "nm_decode", T::SUFFIX, launch)?;
    // tokens, rows, cols, index_stride, n, m, bits
    let sizes: Vec<i32> = [d.tokens, d.rows, d.cols, index_stride, n, m, bits]
        .into_iter()
        .map(|v| to_i32(OP, v))
        .collect::<Result<_>>()?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(x).arg(values).arg(positions).arg(y);
    for v in &sizes {
        b.arg(v);
    }
    // SAFETY: x holds N·cols, y N·rows, values rows·cols/m·n and positions rows·index_stride
    // elements (checked above); warp r reads values and position bytes of row r only (bytes
    // below index_stride), columns (slot / n)·m + position < cols (positions ≥ m skipped) of
    // x in shared memory, sized by the geometry, and writes y[t, r] for t < N.
    unsafe { b.launch(LaunchConfig::from(launch)) }?;
    Ok(())
}

/// y [tokens, rows] in x's dtype for x [tokens, cols] and a compressed W [rows, cols], both on
/// one GPU (checked by the op), when [`decodes`] holds.
pub fn decode(x: &Tensor, w: &SparseWeight, limits: GpuLimits) -> Result<Tensor> {
    let dev = cuda_device(x)?;
    let d = Dims { tokens: x.shape().rows(), rows: w.rows(), cols: w.cols() };
    with_compute_type!(x.dtype(), "infer_linear::sparse", T => {
        let mut y = dev.alloc::<T>(d.tokens * d.rows)?;
        {
            let (xs, values, meta) = (x.read()?, w.values().read()?, w.meta().read()?);
            let (xs, values, meta) = (xs.cuda::<T>()?, values.cuda::<T>()?, meta.cuda::<u8>()?);
            match w.format() {
                SparseFormat::Bitmask => {
                    let offsets = w.row_offsets().ok_or_else(|| Error::invalid("bitmask weight without row offsets"))?;
                    let offsets = offsets.read()?;
                    bitmask::<T>(dev, xs, values, meta, offsets.cuda::<u32>()?, y.slice_mut(), d, limits)?;
                }
                SparseFormat::NM { n, m } => nm::<T>(dev, xs, values, meta, y.slice_mut(), d, n, m, limits)?,
            }
        }
        cuda_tensor(y, [d.tokens, d.rows], x.device())
    })
}
