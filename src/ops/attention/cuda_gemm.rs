//! Causal GQA attention on tensor cores: the products of [`super`]'s equations as cuBLAS
//! strided-batched GEMMs (bf16 or f32 operands, f32 accumulation) over views of the
//! [B, T, H, D] tensors, with two row kernels of `cuda/attention.cu` between them
//! (`attention_probs_*`, `attention_dscores_*`; see its header).
//!
//! The T × T matrices of one chunk of heads live at a time in two buffers: scores s (f32)
//! and probabilities p (the compute type), [heads, T, T] each. A chunk is one batch entry,
//! one member j of every GQA group (query head g·G + j for kv head g) and up to
//! [`heads_per_chunk`] consecutive kv heads g; the chunks run batch entry by batch entry,
//! kv heads in order, members j = 0 .. G − 1 innermost (so a kv head's dk, dv start at j = 0
//! and accumulate the rest). With c = 1/√D, per chunk:
//!   forward:  s = c·Q·Kᵀ → p, lse (`attention_probs_*`) → O = p·V;
//!   backward: s = c·Q·Kᵀ → p from lse → dV += pᵀ·dO; dP = dO·Vᵀ (into s) →
//!             ds = p ⊙ (dP − delta) (over p, `attention_dscores_*`) → dQ = c·ds·K,
//!             dK += c·dsᵀ·Q.
//! dk and dv are accumulated in f32 (the caller rounds them to the compute type once).
//! The causal upper triangles are multiplied as zeros: twice the minimal FLOPs, on tensor
//! cores. The workspace, [`score_bytes`], is what the memory plan counts; where not even one
//! head's T × T fits [`MAX_SCORE_BYTES`], [`super::forward`] takes the flash kernels instead.

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};

use super::cpu::Dims;
use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::ops::matmul::cuda::strided_batched;
use crate::ops::matmul::Strided;
use crate::ops::to_i32;
use crate::{Error, Result};

/// Most bytes the T × T buffers (f32 scores and the compute type's probabilities) of one
/// chunk may take: 1 GiB (LLaMA-2-7B shapes, T = 2048 in bf16: 32 heads, 768 MiB).
pub const MAX_SCORE_BYTES: usize = 1 << 30;
/// Threads per block of the row kernels: 8 warps, one row each at a time.
const ROW_THREADS: u32 = 256;
/// Most blocks of a row-kernel launch (warps then stride over the rows).
const MAX_ROW_BLOCKS: usize = 1 << 16;

/// Bytes of the two T × T buffers per head for a compute type of `elem` bytes, if they fit
/// a usize.
fn per_head_bytes(d: Dims, elem: usize) -> Option<usize> {
    d.seq.checked_mul(d.seq)?.checked_mul(4 + elem)
}

/// kv heads per chunk for a compute type of `elem` bytes: as many as fit
/// [`MAX_SCORE_BYTES`], at most Hkv; 0 when one head's do not (then the flash kernels run).
pub fn heads_per_chunk(d: Dims, elem: usize) -> usize {
    match per_head_bytes(d, elem) {
        Some(b) if b > 0 => (MAX_SCORE_BYTES / b).min(d.kv_heads),
        _ => 0,
    }
}

/// Bytes of the workspace the tensor-core path allocates (0 where it does not run).
pub fn score_bytes(d: Dims, elem: usize) -> usize {
    per_head_bytes(d, elem).unwrap_or(0) * heads_per_chunk(d, elem)
}

/// One chunk of heads whose T × T matrices live at once (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Batch entry b.
    pub batch: usize,
    /// Member j of each GQA group: the chunk's query heads are g·G + j.
    pub member: usize,
    /// First kv head g of the chunk.
    pub first_kv: usize,
    /// kv heads (= query heads) in the chunk.
    pub heads: usize,
}

/// The chunks of `d` with at most `per` kv heads each, in execution order.
pub fn chunks(d: Dims, per: usize) -> Vec<Chunk> {
    let mut out = Vec::new();
    if per == 0 {
        return out;
    }
    for batch in 0..d.batch {
        for first_kv in (0..d.kv_heads).step_by(per) {
            let heads = per.min(d.kv_heads - first_kv);
            for member in 0..d.group() {
                out.push(Chunk { batch, member, first_kv, heads });
            }
        }
    }
    out
}

impl Chunk {
    /// View of the chunk's query heads in a [B, T, Hq, D] tensor: (offset, row stride,
    /// stride from one head of the chunk to the next).
    fn q_view(&self, d: Dims) -> (usize, usize, usize) {
        let row = d.q_heads * d.head_dim;
        let head = self.first_kv * d.group() + self.member;
        (self.batch * d.seq * row + head * d.head_dim, row, d.group() * d.head_dim)
    }

    /// View of the chunk's kv heads in a [B, T, Hkv, D] tensor.
    fn kv_view(&self, d: Dims) -> (usize, usize, usize) {
        let row = d.kv_heads * d.head_dim;
        (self.batch * d.seq * row + self.first_kv * d.head_dim, row, d.head_dim)
    }

    /// View of the chunk's [heads, T, T] workspace.
    fn tt_view(&self, d: Dims) -> (usize, usize, usize) {
        (0, d.seq, d.seq * d.seq)
    }

    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        m: usize,
        n: usize,
        k: usize,
        (trans_a, a): (bool, (usize, usize, usize)),
        (trans_b, b): (bool, (usize, usize, usize)),
        c: (usize, usize, usize),
        alpha: f64,
        accumulate: bool,
    ) -> Strided {
        Strided {
            m,
            n,
            k,
            trans_a,
            trans_b,
            a,
            b,
            c,
            batch: self.heads,
            alpha: alpha as f32,
            beta: if accumulate { 1.0 } else { 0.0 },
        }
    }

    /// s = c·Q·Kᵀ: [T, T] per head, into the scores buffer.
    pub fn scores(&self, d: Dims) -> Strided {
        let (t, hd) = (d.seq, d.head_dim);
        self.product(t, t, hd, (false, self.q_view(d)), (true, self.kv_view(d)), self.tt_view(d), d.scale(), false)
    }

    /// O = p·V into o's query heads.
    pub fn output(&self, d: Dims) -> Strided {
        let (t, hd) = (d.seq, d.head_dim);
        self.product(t, hd, t, (false, self.tt_view(d)), (false, self.kv_view(d)), self.q_view(d), 1.0, false)
    }

    /// dV (+)= pᵀ·dO into dv's kv heads (accumulating from the group's second member on).
    pub fn d_values(&self, d: Dims) -> Strided {
        let (t, hd) = (d.seq, d.head_dim);
        let acc = self.member > 0;
        self.product(t, hd, t, (true, self.tt_view(d)), (false, self.q_view(d)), self.kv_view(d), 1.0, acc)
    }

    /// dP = dO·Vᵀ into the scores buffer.
    pub fn d_probs(&self, d: Dims) -> Strided {
        let (t, hd) = (d.seq, d.head_dim);
        self.product(t, t, hd, (false, self.q_view(d)), (true, self.kv_view(d)), self.tt_view(d), 1.0, false)
    }

    /// dQ = c·ds·K into dq's query heads.
    pub fn d_queries(&self, d: Dims) -> Strided {
        let (t, hd) = (d.seq, d.head_dim);
        self.product(t, hd, t, (false, self.tt_view(d)), (false, self.kv_view(d)), self.q_view(d), d.scale(), false)
    }

    /// dK (+)= c·dsᵀ·Q into dk's kv heads.
    pub fn d_keys(&self, d: Dims) -> Strided {
        let (t, hd) = (d.seq, d.head_dim);
        let acc = self.member > 0;
        self.product(t, hd, t, (true, self.tt_view(d)), (false, self.q_view(d)), self.kv_view(d), d.scale(), acc)
    }

    /// The row kernels' int arguments after their pointers: `seq, heads, at, stride`, where
    /// row (i, t)'s lse (and delta) is element at + i·stride + t of [B, Hq, T].
    pub fn row_args(&self, d: Dims) -> Result<[i32; 4]> {
        let head = self.first_kv * d.group() + self.member;
        let at = (self.batch * d.q_heads + head) * d.seq;
        let op = "attention (tensor cores)";
        Ok([to_i32(op, d.seq)?, to_i32(op, self.heads)?, to_i32(op, at)?, to_i32(op, d.group() * d.seq)?])
    }
}

/// Geometry of `attention_probs_*` and `attention_dscores_*` over `heads` × T rows: one warp
/// per row, 256 threads a block, at most 65,536 blocks (warps stride beyond).
pub fn row_geometry(d: Dims, heads: usize) -> Result<Launch> {
    let rows =
        heads.checked_mul(d.seq).ok_or_else(|| Error::invalid("attention (tensor cores): heads × T overflows"))?;
    let warps = (ROW_THREADS / 32) as usize;
    let blocks = rows.div_ceil(warps).clamp(1, MAX_ROW_BLOCKS);
    Ok(Launch { grid: (blocks as u32, 1, 1), block: (ROW_THREADS, 1, 1), shared_bytes: 0 })
}

/// Checks that `d` is one the tensor-core path takes for compute type `T` and the element
/// counts of the tensors, and gives the chunk size.
fn prepare<T>(d: Dims, lens: &[(&str, usize, usize)]) -> Result<usize> {
    for &(what, got, want) in lens {
        super::cuda::expect_len(what, got, want)?;
    }
    let per = heads_per_chunk(d, std::mem::size_of::<T>());
    if per == 0 {
        return Err(Error::invalid(format!(
            "attention (tensor cores): one head's T × T scores (T = {}) exceed {MAX_SCORE_BYTES} bytes",
            d.seq
        )));
    }
    // Row indices and lse offsets are ints in the kernels.
    to_i32("attention (tensor cores)", d.lse_len())?;
    Ok(per)
}

/// The row kernel `{name}_{suffix}` and its launch over `chunk`'s rows.
fn row_kernel<T: CudaFloat>(
    dev: &CudaDevice,
    name: &str,
    d: Dims,
    chunk: &Chunk,
) -> Result<(CudaFunction, LaunchConfig)> {
    Ok((
        dev.function("attention", &format!("{name}_{}", T::SUFFIX))?,
        LaunchConfig::from(row_geometry(d, chunk.heads)?),
    ))
}

/// s = c·Q·Kᵀ for `$chunk` (f32, into `$s`), then `attention_probs_*` over it into `$p`:
/// P and lse (`$recompute` = 0) or P from lse (1). A macro, as the lse argument is mutable in
/// the forward and shared in the backward.
macro_rules! scores_and_probs {
    ($t:ty, $dev:expr, $d:expr, $chunk:expr, $q:expr, $k:expr, $s:expr, $p:expr, $lse:expr, $recompute:expr) => {{
        strided_batched::<$t, f32>($dev, &$chunk.scores($d), $q, $k, $s.slice_mut())?;
        let [seq, heads, at, stride] = $chunk.row_args($d)?;
        let recompute: i32 = $recompute;
        let (f, cfg) = row_kernel::<$t>($dev, "attention_probs", $d, &$chunk)?;
        let mut b = $dev.stream().launch_builder(&f);
        b.arg($s.slice()).arg($p.slice_mut()).arg($lse);
        b.arg(&seq).arg(&heads).arg(&at).arg(&stride).arg(&recompute);
        // SAFETY: s and p hold per·T·T ≥ heads·T·T elements, lse B·Hq·T (checked by the
        // caller); the chunk's rows read (and unless recomputing write) lse at
        // at + i·stride + t < B·Hq·T (its heads are query heads of one batch entry); one warp
        // per row below heads·T.
        unsafe { b.launch(cfg) }?;
    }};
}

/// o and lse from q, k, v on tensor cores (see the module docs); slice lengths are checked.
pub fn forward<T: CudaFloat>(
    dev: &CudaDevice,
    q: &CudaSlice<T>,
    k: &CudaSlice<T>,
    v: &CudaSlice<T>,
    o: &mut CudaSlice<T>,
    lse: &mut CudaSlice<f32>,
    d: Dims,
) -> Result<()> {
    let lens = [
        ("q", q.len(), d.q_len()),
        ("k", k.len(), d.kv_len()),
        ("v", v.len(), d.kv_len()),
        ("o", o.len(), d.q_len()),
        ("lse", lse.len(), d.lse_len()),
    ];
    let per = prepare::<T>(d, &lens)?;
    if d.batch * d.seq == 0 {
        return Ok(());
    }
    let tt = d.seq * d.seq * per;
    let (mut s, mut p) = (dev.alloc::<f32>(tt)?, dev.alloc::<T>(tt)?);
    for chunk in chunks(d, per) {
        scores_and_probs!(T, dev, d, chunk, q, k, s, p, &mut *lse, 0i32);
        strided_batched::<T, T>(dev, &chunk.output(d), p.slice(), v, o)?;
    }
    Ok(())
}

/// The gradients on tensor cores: dq in the compute type, dk and dv in f32 (each written only
/// when given), from q, k, v, lse, do and delta = rowsum(do ⊙ o) [B, Hq, T] (needed for dq
/// and dk only); slice lengths are checked.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: CudaFloat>(
    dev: &CudaDevice,
    q: &CudaSlice<T>,
    k: &CudaSlice<T>,
    v: &CudaSlice<T>,
    lse: &CudaSlice<f32>,
    d_o: &CudaSlice<T>,
    delta: &CudaSlice<f32>,
    mut dq: Option<&mut CudaSlice<T>>,
    mut dk: Option<&mut CudaSlice<f32>>,
    mut dv: Option<&mut CudaSlice<f32>>,
    d: Dims,
) -> Result<()> {
    let mut lens = vec![
        ("q", q.len(), d.q_len()),
        ("k", k.len(), d.kv_len()),
        ("v", v.len(), d.kv_len()),
        ("lse", lse.len(), d.lse_len()),
        ("do", d_o.len(), d.q_len()),
        ("delta", delta.len(), d.lse_len()),
    ];
    if let Some(g) = &dq {
        lens.push(("dq", g.len(), d.q_len()));
    }
    for (what, g) in [("dk", &dk), ("dv", &dv)] {
        if let Some(g) = g {
            lens.push((what, g.len(), d.kv_len()));
        }
    }
    let per = prepare::<T>(d, &lens)?;
    if d.batch * d.seq == 0 || (dq.is_none() && dk.is_none() && dv.is_none()) {
        return Ok(());
    }
    let tt = d.seq * d.seq * per;
    let (mut s, mut p) = (dev.alloc::<f32>(tt)?, dev.alloc::<T>(tt)?);
    for chunk in chunks(d, per) {
        // lse is only read when recomputing (the kernel's pointer is not const).
        scores_and_probs!(T, dev, d, chunk, q, k, s, p, lse, 1i32);
        let [seq, heads, at, stride] = chunk.row_args(d)?;
        if let Some(dv) = dv.as_deref_mut() {
            strided_batched::<T, f32>(dev, &chunk.d_values(d), p.slice(), d_o, dv)?;
        }
        if dq.is_none() && dk.is_none() {
            continue;
        }
        strided_batched::<T, f32>(dev, &chunk.d_probs(d), d_o, v, s.slice_mut())?;
        let (f, cfg) = row_kernel::<T>(dev, "attention_dscores", d, &chunk)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(p.slice_mut()).arg(s.slice()).arg(delta);
        b.arg(&seq).arg(&heads).arg(&at).arg(&stride);
        // SAFETY: p and s (now dP) hold heads·T·T elements, delta B·Hq·T, indexed like lse
        // above; the kernel rewrites p's entries u ≤ t of its own rows.
        unsafe { b.launch(cfg) }?;
        if let Some(dq) = dq.as_deref_mut() {
            strided_batched::<T, T>(dev, &chunk.d_queries(d), p.slice(), k, dq)?;
        }
        if let Some(dk) = dk.as_deref_mut() {
            strided_batched::<T, f32>(dev, &chunk.d_keys(d), p.slice(), q, dk)?;
        }
    }
    Ok(())
}
