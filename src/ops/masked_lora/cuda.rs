//! Masked LoRA on CUDA: cuBLAS GEMMs around the workspace. The workspace's W_eff comes from
//! `cuda/masked_lora.cu` in one pass for a bitmask or 2:4 base, or from a GEMM s·B·A and
//! `cuda/sparse.cu`'s expansion for other N:M patterns. The exact adapter gradients take G =
//! dyᵀ·x a tile of columns at a time (GEMM, `cuda/sparse.cu`'s column-window mask, two
//! contractions), each tile small enough to stay in L2. Shapes as in [`super::cpu`]; all
//! slices are checked by `ops::masked_lora`.

use cudarc::driver::{CudaSlice, CudaViewMut, LaunchConfig, PushKernelArg};

use super::cpu::Dims;
use crate::device::cuda::{to_i32, CudaFloat};
use crate::device::{CudaDevice, Launch};
use crate::ops::matmul::cuda::{matmul, strided_batched};
use crate::ops::matmul::{Dims as Mm, Strided};
use crate::sparse::{Expand, SparseFormat, SparseWeight};
use crate::{Error, Result};

/// Threads of a `masked_lora_weff_bitmask_*` block (`WEFF_THREADS` in the kernel).
pub const WEFF_THREADS: u32 = 256;
/// Rows of W_eff per block (`WEFF_ROWS` in the kernel).
pub const WEFF_ROWS: usize = 4;
/// The most dynamic shared memory a launch asks for without opting in.
const DEFAULT_SHARED: usize = 48 << 10;

/// `masked_lora_weff_bitmask_*` and `masked_lora_weff_two_four_*` for `rows` rows of W_eff at
/// LoRA rank `rank`: a block per [`WEFF_ROWS`] rows, s·B of its rows in dynamic shared memory.
pub fn weff_geometry(rows: usize, rank: usize) -> Result<Launch> {
    const OP: &str = "masked_lora W_eff";
    let shared = WEFF_ROWS * rank * std::mem::size_of::<f32>();
    if shared > DEFAULT_SHARED {
        return Err(Error::invalid(format!("{OP}: rank {rank} needs {shared} bytes of shared memory")));
    }
    let blocks = to_i32(OP, rows.div_ceil(WEFF_ROWS).max(1))? as u32;
    Ok(Launch { grid: (blocks, 1, 1), block: (WEFF_THREADS, 1, 1), shared_bytes: shared as u32 })
}

/// ws ← W⊙M + s·M⊙(B·A) (ws, a slice or a view of one, holds ≥ out·in elements).
pub fn build_effective<T: CudaFloat>(
    dev: &CudaDevice,
    w: &SparseWeight,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    s: f32,
    ws: &mut CudaViewMut<'_, T>,
    d: Dims,
) -> Result<()> {
    const OP: &str = "masked_lora W_eff";
    let (rows, cols, rank) = (d.output, d.input, d.rank);
    let two_four = w.format() == SparseFormat::NM { n: 2, m: 4 };
    if w.format() != SparseFormat::Bitmask && !two_four {
        matmul(dev, b, a, ws, Mm::single(rows, cols, rank, false, false), s, 0.0)?;
        return w.expand_into_cuda(ws, Expand::AddKept);
    }
    let stride = cols.div_ceil(8);
    let (values, meta) = (w.values().read()?, w.meta().read()?);
    let (values, meta) = (values.cuda::<T>()?, meta.cuda::<u8>()?);
    let need_values = if two_four { rows * (cols / 2) } else { 0 };
    if (w.rows(), w.cols()) != (rows, cols)
        || meta.len() < rows * stride
        || values.len() < need_values
        || a.len() < rank * cols
        || b.len() < rows * rank
        || ws.len() < rows * cols
    {
        return Err(Error::invalid(format!(
            "{OP}: a {}x{} {:?} weight ({} values, {} mask or position bytes), A {}, B {}, workspace {} for \
             {rows}x{cols} rank {rank}",
            w.rows(),
            w.cols(),
            w.format(),
            values.len(),
            meta.len(),
            a.len(),
            b.len(),
            ws.len()
        )));
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let [rows_i, cols_i, stride_i, rank_i] = [rows, cols, stride, rank].map(|v| to_i32(OP, v));
    let (rows_i, cols_i, stride_i, rank_i) = (rows_i?, cols_i?, stride_i?, rank_i?);
    let geometry = LaunchConfig::from(weff_geometry(rows, rank)?);
    if two_four {
        let f = dev.function("masked_lora", &format!("masked_lora_weff_two_four_{}", T::SUFFIX))?;
        let mut l = dev.stream().launch_builder(&f);
        l.arg(values).arg(meta).arg(a).arg(b).arg(&s).arg(ws);
        l.arg(&rows_i).arg(&cols_i).arg(&stride_i).arg(&rank_i);
        // SAFETY: values hold rows·cols/2, positions rows·stride bytes, A rank·cols, B
        // rows·rank, ws ≥ rows·cols (checked above); block b writes rows 4b..4b+3 < rows of ws,
        // a thread reads the 4 (or, at a last lone group, 2) values of its positions byte.
        unsafe { l.launch(geometry) }?;
        return Ok(());
    }
    let offsets = w.row_offsets().ok_or_else(|| Error::invalid("bitmask weight without row offsets"))?.read()?;
    let offsets = offsets.cuda::<u32>()?;
    if offsets.len() < rows + 1 {
        return Err(Error::invalid(format!("{OP}: {} row offsets for {rows} rows", offsets.len())));
    }
    let f = dev.function("masked_lora", &format!("masked_lora_weff_bitmask_{}", T::SUFFIX))?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(values).arg(meta).arg(offsets).arg(a).arg(b).arg(&s).arg(ws);
    l.arg(&rows_i).arg(&cols_i).arg(&stride_i).arg(&rank_i);
    // SAFETY: mask holds rows·stride bytes, offsets rows + 1 entries, A rank·cols, B rows·rank,
    // ws ≥ rows·cols (checked above); block b writes rows 4b..4b+3 < rows of ws and reads the
    // values of a row only below its next offset (the kernel checks each slot against it);
    // the values are SparseWeight's own, offsets[rows] = values.len().
    unsafe { l.launch(geometry) }?;
    Ok(())
}

/// y = x·W_effᵀ, W_eff built in the workspace under `key` (see
/// [`crate::device::CudaDevice::with_built_workspace`]; `None`: always built, never reused).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &SparseWeight,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    s: f32,
    y: &mut CudaSlice<T>,
    d: Dims,
    key: Option<&[u64]>,
) -> Result<()> {
    dev.with_built_workspace::<T, _>(
        d.output * d.input,
        key,
        |ws| build_effective(dev, w, a, b, s, &mut ws.slice_mut(..), d),
        |ws| matmul(dev, x, ws, y, Mm::single(d.tokens, d.output, d.input, false, true), 1.0, 0.0),
    )
}

/// Bytes of G = dyᵀ·x one tile of the exact adapter gradients holds: small enough that the
/// tile stays in L2 (50 MiB on an H100, 60 on an H200) between the GEMM that writes it, the
/// mask and the two contractions that read it.
pub const ADAPTER_TILE_BYTES: usize = 8 << 20;

/// Columns of G per tile for an `out` × `inp` weight with `elem`-byte elements: a multiple
/// of 8 (a mask byte) holding about [`ADAPTER_TILE_BYTES`], all of `inp` when that fits.
pub fn adapter_tile_cols(out: usize, inp: usize, elem: usize) -> usize {
    let cols = (ADAPTER_TILE_BYTES / out.saturating_mul(elem).max(1)) / 8 * 8;
    if cols >= inp {
        inp
    } else {
        cols.max(8)
    }
}

/// dx = dy·W_eff (when `dx` is given) and the exact adapter gradients (when given), the
/// latter tile by tile: `tile` columns (a multiple of 8, or all of them) per tile, or
/// [`adapter_tile_cols`]'s when None. dx is one GEMM on W_eff built in the workspace, or
/// found there when it still holds the build `key` names (as [`forward`] left it). For
/// each tile of columns [c, c + w) of the weight: G_c = dyᵀ·x[:, c..c+w] into the
/// workspace, masked there (`SparseWeight::mask_columns_cuda`), then dB += s·G_c·A[:, c..c+w]ᵀ
/// and dA[:, c..c+w] = s·Bᵀ·G_c. With more than one tile a bf16 dB is summed in f32 and
/// rounded once, as the single GEMM rounds it.
#[allow(clippy::too_many_arguments)]
pub fn backward_exact<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &SparseWeight,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    dy: &CudaSlice<T>,
    s: f32,
    dx: Option<&mut CudaSlice<T>>,
    adapters: Option<(&mut CudaSlice<T>, &mut CudaSlice<T>)>,
    d: Dims,
    tile: Option<usize>,
    key: Option<&[u64]>,
) -> Result<()> {
    let tile = tile.unwrap_or_else(|| adapter_tile_cols(d.output, d.input, std::mem::size_of::<T>()));
    let (out, inp, rank, t) = (d.output, d.input, d.rank, d.tokens);
    if tile == 0 || (tile < inp && !tile.is_multiple_of(8)) {
        return Err(Error::invalid(format!("masked_lora backward: a tile of {tile} columns (a multiple of 8)")));
    }
    let tile = tile.min(inp);
    if let Some(dx) = dx {
        dev.with_built_workspace::<T, _>(
            out * inp,
            key,
            |ws| build_effective(dev, w, a, b, s, &mut ws.slice_mut(..), d),
            |ws| matmul(dev, dy, ws, dx, Mm::single(t, inp, out, false, false), 1.0, 0.0),
        )?;
    }
    let Some((da, db)) = adapters else { return Ok(()) };
    dev.with_workspace::<T, _>(out * tile, |ws| {
        let tiles = inp.div_ceil(tile).max(1);
        // dB summed over the tiles: in place when T is f32 or there is one tile, else in f32.
        let mut db32 =
            if tiles > 1 && T::DTYPE != crate::DType::F32 { Some(dev.alloc::<f32>(out * rank)?) } else { None };
        for j in 0..tiles {
            let (c0, width) = (j * tile, tile.min(inp - j * tile));
            // G_c [out, width] = dyᵀ [out, t] · x[:, c0..c0+width] ([t, width] of row stride inp).
            let g = Strided {
                m: out,
                n: width,
                k: t,
                trans_a: true,
                trans_b: false,
                a: (0, out, 0),
                b: (c0, inp, 0),
                c: (0, width, 0),
                batch: 1,
                alpha: 1.0,
                beta: 0.0,
            };
            strided_batched::<T, T>(dev, &g, dy, x, ws)?;
            w.mask_columns_cuda(&mut ws.slice_mut(..out * width), c0, width)?;
            // dB [out, rank] (+)= s·G_c · A[:, c0..c0+width]ᵀ (A [rank, inp] read transposed).
            let beta = if j == 0 { 0.0 } else { 1.0 };
            let contract_b = Strided {
                m: out,
                n: rank,
                k: width,
                trans_a: false,
                trans_b: true,
                a: (0, width, 0),
                b: (c0, inp, 0),
                c: (0, rank, 0),
                batch: 1,
                alpha: s,
                beta,
            };
            match db32.as_mut() {
                Some(acc) => strided_batched::<T, f32>(dev, &contract_b, ws, a, acc.slice_mut())?,
                None => strided_batched::<T, T>(dev, &contract_b, ws, a, db)?,
            }
            // dA[:, c0..c0+width] = s·Bᵀ [rank, out] · G_c (B [out, rank] read transposed).
            let contract_a = Strided {
                m: rank,
                n: width,
                k: out,
                trans_a: true,
                trans_b: false,
                a: (0, rank, 0),
                b: (0, width, 0),
                c: (c0, inp, 0),
                batch: 1,
                alpha: s,
                beta: 0.0,
            };
            strided_batched::<T, T>(dev, &contract_a, b, ws, da)?;
        }
        if let Some(acc) = db32 {
            crate::device::cast::from_f32_into(dev, acc.slice(), db, out * rank)?;
        }
        Ok(())
    })
}

/// One masked-LoRA linear of a fused group, as device slices: its base (out × in), A [rank,
/// in], B [out, rank] and scale.
#[derive(Clone, Copy)]
pub struct Part<'a, T> {
    /// The frozen compressed base.
    pub w: &'a SparseWeight,
    /// A [rank, in].
    pub a: &'a CudaSlice<T>,
    /// B [out, rank].
    pub b: &'a CudaSlice<T>,
    /// s = alpha / r.
    pub scale: f32,
    /// r.
    pub rank: usize,
}

impl<T> Part<'_, T> {
    /// The linear's dims for `tokens` tokens.
    pub fn dims(&self, tokens: usize) -> Dims {
        Dims { tokens, input: self.w.cols(), output: self.w.rows(), rank: self.rank }
    }
}

/// W_eff of every part stacked into `ws` [Σ out, in] (part p's rows after the earlier parts').
fn build_stacked<T: CudaFloat>(dev: &CudaDevice, parts: &[Part<'_, T>], ws: &mut CudaSlice<T>) -> Result<()> {
    let mut row = 0;
    for p in parts {
        let d = p.dims(0);
        let (from, to) = (row * d.input, (row + d.output) * d.input);
        build_effective(dev, p.w, p.a, p.b, p.scale, &mut ws.slice_mut(from..to), d)?;
        row += d.output;
    }
    Ok(())
}

/// y [2, t, out] = x·W_eff,pᵀ for the two parts p (the same out × in): both W_eff are built
/// into one workspace [2, out, in], then one strided-batched GEMM writes both products.
pub fn forward_pair<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    parts: [Part<'_, T>; 2],
    y: &mut CudaSlice<T>,
    tokens: usize,
) -> Result<()> {
    let d = parts[0].dims(tokens);
    let (out, inp) = (d.output, d.input);
    dev.with_workspace::<T, _>(2 * out * inp, |ws| {
        build_stacked(dev, &parts, ws)?;
        let both = Strided {
            m: tokens,
            n: out,
            k: inp,
            trans_a: false,
            trans_b: true,
            a: (0, inp, 0),
            b: (0, inp, out * inp),
            c: (0, out, tokens * out),
            batch: 2,
            alpha: 1.0,
            beta: 0.0,
        };
        strided_batched::<T, T>(dev, &both, x, ws, y)
    })
}

/// y [t, Σ out] = x·[W_eff,0; W_eff,1; …]ᵀ: every part's W_eff stacked into one workspace,
/// then one GEMM (token t's row holds part 0's outputs, then part 1's, …).
pub fn forward_stacked<T: CudaFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    parts: &[Part<'_, T>],
    y: &mut CudaSlice<T>,
    tokens: usize,
) -> Result<()> {
    let inp = parts.first().map_or(0, |p| p.w.cols());
    let rows: usize = parts.iter().map(|p| p.w.rows()).sum();
    dev.with_workspace::<T, _>(rows * inp, |ws| {
        build_stacked(dev, parts, ws)?;
        matmul(dev, x, ws, y, Mm::single(tokens, rows, inp, false, true), 1.0, 0.0)
    })
}

/// dx = Σ_p dy_p·W_eff,p over the parts (the same in, any out): each W_eff built in turn in
/// the workspace, every GEMM after the first adding to dx (no separate sums of gradients).
pub fn dx_parts<T: CudaFloat>(
    dev: &CudaDevice,
    parts: &[(Part<'_, T>, &CudaSlice<T>)],
    dx: &mut CudaSlice<T>,
    tokens: usize,
) -> Result<()> {
    let most = parts.iter().map(|(p, _)| p.w.rows() * p.w.cols()).max().unwrap_or(0);
    dev.with_workspace::<T, _>(most, |ws| {
        for (i, (p, dy)) in parts.iter().enumerate() {
            let d = p.dims(tokens);
            build_effective(dev, p.w, p.a, p.b, p.scale, &mut ws.slice_mut(..), d)?;
            let beta = if i == 0 { 0.0 } else { 1.0 };
            matmul(dev, *dy, ws, dx, Mm::single(tokens, d.input, d.output, false, false), 1.0, beta)?;
        }
        Ok(())
    })
}
