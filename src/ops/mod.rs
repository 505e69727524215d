//! Differentiable ops, one folder each: `mod.rs` (API, tape recording, docs, tests),
//! `cpu.rs` (the readable reference, generic over [`Real`] so tests can run it in f64),
//! `cuda.rs` (launcher for `cuda/<op>.cu`, or cuBLAS for matmul).
//!
//! Every op takes `tape: Option<&mut Tape>`; with a tape it records its backward when an
//! input is tracked. `forward`/`backward` functions in each folder are the plain
//! (non-recording) computations, usable directly.
//!
//! Float tensors are F32 or BF16. On the CPU a BF16 input is widened to f32, computed,
//! and the result rounded back to BF16, which is what the CUDA kernels do per element.

pub mod adamw;
pub mod attention;
pub mod cast;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod infer_linear;
pub mod kv_cache;
pub mod masked_lora;
pub mod matmul;
pub mod nm_pack;
pub mod prune_select;
pub mod prune_stats;
pub mod rms_norm;
pub mod rope;
pub mod sparse_linear;
pub mod sparsegpt;
pub mod swiglu;

pub use attention::attention;
pub use cast::cast;
pub use cross_entropy::cross_entropy;
pub use elementwise::{add, mul, scale};
pub use embedding::embedding;
pub use matmul::{matmul, matmul_nt};
pub use rms_norm::{add_rms_norm, rms_norm};
pub use rope::rope;
pub use swiglu::swiglu;

use std::ops::{Add, AddAssign, Deref, Div, Mul, MulAssign, Neg, Sub, SubAssign};
use std::sync::RwLockReadGuard;

use crate::storage::Storage;
use crate::{DType, Device, Error, Result, Tensor};

/// Σ term(x_j) in f64, in eight partial sums (term j in sum j % 8) added in order at the
/// end, then the last len % 8 terms in order. Eight independent sums let the loop vectorize
/// where one sum in order is a chain of dependent additions. Inlined, so that it is compiled
/// for its caller's instruction set.
#[inline(always)]
pub(crate) fn sum_f64_by<T: Copy>(x: &[T], term: impl Fn(T) -> f64) -> f64 {
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| term(v)).sum();
    let mut partial = [0f64; 8];
    for c in chunks {
        for (p, &v) in partial.iter_mut().zip(c) {
            *p += term(v);
        }
    }
    partial.iter().sum::<f64>() + tail
}

/// The largest of `x` that is not NaN (−∞ when none is), as
/// `x.iter().copied().fold(f32::NEG_INFINITY, f32::max)` gives it, in 16 running maxima,
/// each taking a value greater than it: one `vmaxps` per 16 values (`f32::max` kept the
/// loop scalar, ~4.5 cycles a value). Inlined, as [`sum_f64_by`].
#[inline(always)]
pub(crate) fn max_f32(x: &[f32]) -> f32 {
    const LANES: usize = 16;
    let larger = |m: f32, v: f32| if v > m { v } else { m };
    let (chunks, tail) = x.as_chunks::<LANES>();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = larger(*m, v);
        }
    }
    lanes.iter().chain(tail).copied().fold(f32::NEG_INFINITY, larger)
}

/// e^x for x ≤ 0 (an attention score minus its row's maximum, or −|g| for SwiGLU's σ),
/// within 2·10⁻⁷ relative: x = n·ln 2 + r with n an integer (rounded by adding 1.5·2²³) and
/// |r| ≤ ln 2 / 2, e^r by its Taylor polynomial of degree 7, times 2ⁿ built in the exponent
/// bits. Tested in `kv_cache::tests`. Below −87 (e^x < 2⁻¹²⁵)
/// it gives 0; NaN stays NaN. No calls and no branches, so that loops over it vectorize.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let below = x < -87.0;
    let xc = if below { -87.0 } else { x };
    let rounded = xc * std::f32::consts::LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    // 2ⁿ from the integer in `rounded`'s low bits (its bits are ROUND's plus n, for
    // −126 ≤ n ≤ 0), not from `n as i32`: that saturating conversion kept the loops over
    // this function scalar.
    let scale = f32::from_bits(rounded.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if below {
        0.0
    } else {
        p * scale
    }
}

/// The float types the CPU references are written for: f32 for tensors, f64 for
/// finite-difference checks. Long sums accumulate in f64 either way.
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::fmt::Debug
    + Default
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    /// Converts from f64 (rounding for f32).
    fn from_f64(v: f64) -> Self;
    /// Widens to f64.
    fn to_f64(self) -> f64;
    /// e^self.
    fn exp(self) -> Self;
    /// sqrt(self).
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// Host view of a float tensor as f32: borrowed when it already is host f32, converted
/// otherwise (BF16 widened, device data copied back).
pub(crate) enum HostF32<'a> {
    Borrowed(RwLockReadGuard<'a, Storage>),
    Owned(Vec<f32>),
}

impl Deref for HostF32<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            // `host_f32` only builds this variant for host f32 storage.
            HostF32::Borrowed(g) => g.cpu::<f32>().unwrap_or_default(),
            HostF32::Owned(v) => v,
        }
    }
}

/// The tensor's values as f32 on the host (see [`HostF32`]).
pub(crate) fn host_f32(t: &Tensor) -> Result<HostF32<'_>> {
    if t.dtype() == DType::F32 && !t.device().is_cuda() {
        return Ok(HostF32::Borrowed(t.read()?));
    }
    Ok(HostF32::Owned(t.to_f32_vec()?))
}

/// Error unless `t` is F32 or BF16.
pub(crate) fn expect_float(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype().is_compute_float() {
        Ok(())
    } else {
        Err(Error::DType { op, dtype: t.dtype(), msg: "expected f32 or bf16" })
    }
}

/// Error unless all tensors share one device and (for floats) one dtype.
pub(crate) fn expect_same(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    let Some(first) = ts.first() else { return Ok(()) };
    for t in &ts[1..] {
        if !t.device().same(first.device()) {
            return Err(Error::DeviceMismatch { op, lhs: first.device().label(), rhs: t.device().label() });
        }
        if t.dtype() != first.dtype() {
            return Err(Error::DType { op, dtype: t.dtype(), msg: "operands must share one dtype" });
        }
    }
    Ok(())
}

/// `other` has `t`'s shape, dtype and device (an operand of the same shape, a gradient).
pub(crate) fn expect_alike(op: &'static str, t: &Tensor, other: &Tensor) -> Result<()> {
    expect_same(op, &[t, other])?;
    t.shape().expect_eq(op, other.shape())
}

/// Error unless `t` is a U32 tensor (ids, targets) on `device`.
pub(crate) fn expect_u32(op: &'static str, t: &Tensor, device: &Device) -> Result<()> {
    if t.dtype() != DType::U32 {
        return Err(Error::DType { op, dtype: t.dtype(), msg: "indices must be u32" });
    }
    if !t.device().same(device) {
        return Err(Error::DeviceMismatch { op, lhs: device.label(), rhs: t.device().label() });
    }
    Ok(())
}

/// Error unless a buffer named `what` holds at least `need` elements (launchers check
/// every slice before a kernel reads or writes it).
pub(crate) fn expect_len(op: &str, what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::invalid(format!("{op}: {what} holds {have} elements, the kernel needs {need}")));
    }
    Ok(())
}

/// Error unless `mask` is a U8 bitmask [rows, ceil(cols/8)] on `device`.
pub(crate) fn check_mask(op: &'static str, mask: &Tensor, device: &Device, rows: usize, cols: usize) -> Result<()> {
    if mask.dtype() != DType::U8 {
        return Err(Error::DType { op, dtype: mask.dtype(), msg: "masks are u8 bitmasks" });
    }
    if !mask.device().same(device) {
        return Err(Error::DeviceMismatch { op, lhs: device.label(), rhs: mask.device().label() });
    }
    let want = crate::Shape::new([rows, cols.div_ceil(8)]);
    mask.shape().expect_eq(op, &want)
}

/// The CUDA device of `t`, or an error (used by launchers).
pub(crate) fn cuda_device(t: &Tensor) -> Result<&crate::device::CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Ok(d),
        Device::Cpu(_) => Err(Error::invalid("expected a CUDA tensor")),
    }
}

/// Checks the activations x [.., in] of a linear whose sparse weight `w` is [out, in]
/// (`sparse_linear`, `masked_lora`): rank ≥ 2, last dimension `in`, and a dtype the device
/// computes in (f32 or bf16 on CUDA, f32 on the CPU).
pub(crate) fn check_sparse_input(op: &'static str, x: &Tensor, w: &crate::sparse::SparseWeight) -> Result<()> {
    if x.shape().last_dim() != w.cols() || x.shape().rank() < 2 {
        return Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: crate::Shape::new([w.rows(), w.cols()]) });
    }
    if x.device().is_cuda() {
        if !x.dtype().is_compute_float() {
            return Err(Error::DType { op, dtype: x.dtype(), msg: "expected f32 or bf16" });
        }
    } else if x.dtype() != DType::F32 {
        return Err(Error::DType { op, dtype: x.dtype(), msg: "the CPU path computes in f32" });
    }
    Ok(())
}

/// A linear's output shape: x's [.., in] with the last dimension `out`.
pub(crate) fn linear_out_shape(x: &Tensor, out: usize) -> crate::Shape {
    let mut dims = x.dims().to_vec();
    if let Some(l) = dims.last_mut() {
        *l = out;
    }
    crate::Shape::new(dims)
}

#[cfg(test)]
pub(crate) mod sparse_cases;

pub(crate) use crate::device::cuda::to_i32;
pub(crate) use crate::tensor::cuda_tensor;

/// `x` viewed with another shape (no copy), recorded so gradients follow the view.
pub fn reshape(tape: Option<&mut crate::Tape>, x: &Tensor, shape: impl Into<crate::Shape>) -> Result<Tensor> {
    let y = x.reshape(shape)?;
    if let Some(tape) = tape {
        let in_shape = x.shape().clone();
        tape.record("reshape", &[x], &y, vec![], move |ctx| {
            let g = ctx.grad_out().reshape(in_shape)?;
            ctx.add_grad(0, g)
        });
    }
    Ok(y)
}
