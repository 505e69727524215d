//! Masked LoRA linear: `y = x·(W⊙M)ᵀ + s·x·(M⊙(B·A))ᵀ` with W⊙M a frozen [`SparseWeight`]
//! (out × in), A [r, in] and B [out, r] trained, s = alpha / r. x: [..., in] → y: [..., out].
//! The merged weight W⊙M + s·M⊙(B·A) is zero wherever M is: sparse by construction.
//!
//! Forward ("masked LoRA fused matmul"): W_eff is built in the device's reusable workspace
//! (GEMM s·B·A, then one expansion pass adding W's kept values and zeroing the rest), then
//! one dense GEMM. Backward ("sparse recompute backward", [`Saved::Recompute`]): W_eff is
//! rebuilt in the workspace for dx = dy·W_eff, unless the workspace still holds the one the
//! forward built from the same unchanged tensors (a layer's last linear under
//! checkpointing); the exact adapter gradients reuse the same
//! workspace for G = dyᵀ·x, masked in place and contracted at once into dB = s·(M⊙G)·Aᵀ and
//! dA = s·Bᵀ·(M⊙G) (on CUDA a tile of columns of G at a time, sized to stay in L2); the
//! rearranged (LoRS) ones need no out × in product. The op saves x, A and B; nothing of size
//! out × in survives it. `cpu.rs` is the dense reference; on the
//! CPU the real path uses the gemm crate (f32), on CUDA cuBLAS (f32 or bf16).

pub mod cpu;
pub mod cuda;
mod pair;
mod qkv;

pub use cpu::{AdapterGrad, Dims};
pub use pair::masked_lora_swiglu;
pub use qkv::{masked_lora_qkv_rope, qkv_rope_separate, Heads};

use crate::autograd::{Saved, Tape};
use crate::ops::matmul::{self, cpu::fast, Dims as Mm};
use crate::ops::{check_sparse_input, cuda_device, cuda_tensor, expect_same, host_f32, linear_out_shape};
use crate::sparse::{Expand, SparseWeight};
use crate::{with_compute_type, DType, Device, Error, Result, Tensor};

/// The adapter side of a masked-LoRA linear.
#[derive(Clone, Debug)]
pub struct MaskedLora {
    /// Frozen compressed base W⊙M, [out, in].
    pub base: SparseWeight,
    /// Down projection A, [r, in].
    pub a: Tensor,
    /// Up projection B, [out, r].
    pub b: Tensor,
    /// s = alpha / r (or the method's own scale).
    pub scale: f32,
    /// How the adapter gradients are computed.
    pub grad: AdapterGrad,
}

/// What the op saves instead of the masked weight.
pub const RECOMPUTED: &str = "masked weight W⊙M + s·M⊙(BA)";

pub(super) fn check(x: &Tensor, w: &SparseWeight, a: &Tensor, b: &Tensor) -> Result<Dims> {
    expect_same("masked_lora", &[x, a, b])?;
    if w.dtype() != x.dtype() || !w.device().same(x.device()) {
        return Err(Error::invalid(format!(
            "masked_lora: base weight is {} on {}, activations {} on {}",
            w.dtype(),
            w.device().label(),
            x.dtype(),
            x.device().label()
        )));
    }
    let (out, inp) = (w.rows(), w.cols());
    let [r, a_in] = a.shape().dims_n::<2>("masked_lora A")?;
    let [b_out, b_r] = b.shape().dims_n::<2>("masked_lora B")?;
    check_sparse_input("masked_lora", x, w)?;
    if a_in != inp || b_out != out || b_r != r || r == 0 {
        return Err(Error::ShapeMismatch {
            op: "masked_lora (A vs B)",
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
        });
    }
    Ok(Dims { tokens: x.shape().rows(), input: inp, output: out, rank: r })
}

/// What W_eff built from these inputs is keyed by in the device workspace
/// ([`crate::device::workspace::Workspace::with_built`]): the stamps of the base's tensors and
/// of A and B (new whenever any of them is written), the scale and the sizes. A backward that
/// finds its forward's W_eff still in the workspace (the layer's last linear, recomputed just
/// before its backward under checkpointing) multiplies by it without rebuilding it.
fn weff_key(w: &SparseWeight, a: &Tensor, b: &Tensor, scale: f32) -> Vec<u64> {
    let offsets = w.row_offsets().map_or(0, Tensor::stamp);
    let sizes = [w.rows(), w.cols(), a.dims()[0]].map(|n| n as u64);
    [w.values().stamp(), w.meta().stamp(), offsets, a.stamp(), b.stamp(), u64::from(scale.to_bits())]
        .into_iter()
        .chain(sizes)
        .collect()
}

/// ws ← W⊙M + s·M⊙(B·A) on the host.
fn build_effective_host(w: &SparseWeight, a: &[f32], b: &[f32], s: f32, ws: &mut [f32], d: Dims) -> Result<()> {
    fast(b, a, ws, Mm::single(d.output, d.input, d.rank, false, false), s, false);
    w.expand_into_host(ws, Expand::AddKept)
}

/// y = x·W_effᵀ without recording.
pub fn forward(x: &Tensor, w: &SparseWeight, a: &Tensor, b: &Tensor, scale: f32) -> Result<Tensor> {
    let d = check(x, w, a, b)?;
    let shape = linear_out_shape(x, d.output);
    let key = weff_key(w, a, b, scale);
    match x.device() {
        Device::Cpu(dev) => {
            let (xh, ah, bh) = (host_f32(x)?, host_f32(a)?, host_f32(b)?);
            let mut y = vec![0f32; d.tokens * d.output];
            dev.with_built_workspace::<f32, _>(
                d.output * d.input,
                Some(&key),
                |ws| build_effective_host(w, &ah, &bh, scale, ws, d),
                |ws| {
                    fast(&xh, ws, &mut y, Mm::single(d.tokens, d.output, d.input, false, true), 1.0, false);
                    Ok(())
                },
            )?;
            Tensor::from_f32(y, shape, DType::F32, x.device())
        }
        Device::Cuda(_) => with_compute_type!(x.dtype(), "masked_lora", T => {
            let dev = cuda_device(x)?;
            let mut y = dev.alloc::<T>(d.tokens * d.output)?;
            let (ar, br) = (a.read()?, b.read()?);
            cuda::forward::<T>(dev, x.read()?.cuda()?, w, ar.cuda()?, br.cuda()?, scale, y.slice_mut(), d, Some(&key))?;
            cuda_tensor(y, shape, x.device())
        }),
    }
}

/// Gradients `(dx, dA, dB)`, each only when asked for.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &Tensor,
    w: &SparseWeight,
    a: &Tensor,
    b: &Tensor,
    dy: &Tensor,
    scale: f32,
    mode: AdapterGrad,
    want_dx: bool,
    want_adapters: bool,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let d = check(x, w, a, b)?;
    expect_same("masked_lora backward", &[x, dy])?;
    linear_out_shape(x, d.output).expect_eq("masked_lora backward (dy)", dy.shape())?;
    let exact_adapters = want_adapters && mode == AdapterGrad::Exact;
    let key = weff_key(w, a, b, scale);
    let (dx, mut da, mut db) = match x.device() {
        Device::Cpu(dev) => {
            let (xh, ah, bh, dyh) = (host_f32(x)?, host_f32(a)?, host_f32(b)?, host_f32(dy)?);
            let mut dx = want_dx.then(|| vec![0f32; d.tokens * d.input]);
            let mut adapters = exact_adapters.then(|| (vec![0f32; d.rank * d.input], vec![0f32; d.output * d.rank]));
            if let Some(dx) = dx.as_mut() {
                dev.with_built_workspace::<f32, _>(
                    d.output * d.input,
                    Some(&key),
                    |ws| build_effective_host(w, &ah, &bh, scale, ws, d),
                    |ws| {
                        fast(&dyh, ws, dx, Mm::single(d.tokens, d.input, d.output, false, false), 1.0, false);
                        Ok(())
                    },
                )?;
            }
            if let Some((da, db)) = adapters.as_mut() {
                dev.with_workspace::<f32, _>(d.output * d.input, |ws| {
                    fast(&dyh, &xh, ws, Mm::single(d.output, d.input, d.tokens, true, false), 1.0, false);
                    w.expand_into_host(ws, Expand::MaskOnly)?;
                    fast(ws, &ah, db, Mm::single(d.output, d.rank, d.input, false, true), scale, false);
                    fast(&bh, ws, da, Mm::single(d.rank, d.input, d.output, true, false), scale, false);
                    Ok(())
                })?;
            }
            let dev_t = x.device();
            let dx = dx.map(|v| Tensor::from_f32(v, x.shape().clone(), DType::F32, dev_t)).transpose()?;
            let (da, db) = match adapters {
                Some((da, db)) => (
                    Some(Tensor::from_f32(da, a.shape().clone(), DType::F32, dev_t)?),
                    Some(Tensor::from_f32(db, b.shape().clone(), DType::F32, dev_t)?),
                ),
                None => (None, None),
            };
            (dx, da, db)
        }
        Device::Cuda(_) => with_compute_type!(x.dtype(), "masked_lora", T => {
            let dev = cuda_device(x)?;
            let mut dx = if want_dx { Some(dev.alloc::<T>(d.tokens * d.input)?) } else { None };
            let mut adapters = if exact_adapters {
                Some((dev.alloc::<T>(d.rank * d.input)?, dev.alloc::<T>(d.output * d.rank)?))
            } else {
                None
            };
            if dx.is_some() || adapters.is_some() {
                cuda::backward_exact::<T>(
                    dev, x.read()?.cuda()?, w, a.read()?.cuda()?, b.read()?.cuda()?, dy.read()?.cuda()?, scale,
                    dx.as_mut().map(|b| b.slice_mut()),
                    adapters.as_mut().map(|(da, db)| (da.slice_mut(), db.slice_mut())),
                    d,
                    None,
                    Some(&key),
                )?;
            }
            let dx = dx.map(|b| cuda_tensor(b, x.shape().clone(), x.device())).transpose()?;
            let (da, db) = match adapters {
                Some((da, db)) => (Some(cuda_tensor(da, a.shape().clone(), x.device())?), Some(cuda_tensor(db, b.shape().clone(), x.device())?)),
                None => (None, None),
            };
            Ok::<_, Error>((dx, da, db))
        })?,
    };
    if want_adapters && mode == AdapterGrad::Rearranged {
        // dB = s·dyᵀ·(x·Aᵀ), dA = s·(dy·B)ᵀ·x: [t, r] intermediates only.
        let x2 = x.reshape([d.tokens, d.input])?;
        let dy2 = dy.reshape([d.tokens, d.output])?;
        let xa = matmul::forward(&x2, a, false, true)?;
        db = Some(crate::ops::elementwise::scale_forward(&matmul::forward(&dy2, &xa, true, false)?, scale)?);
        let dyb = matmul::forward(&dy2, b, false, false)?;
        da = Some(crate::ops::elementwise::scale_forward(&matmul::forward(&dyb, &x2, true, false)?, scale)?);
    }
    Ok((dx, da, db))
}

/// The masked-LoRA linear, recorded on `tape` when x, A or B is tracked. Saves x, A and B;
/// the masked weight is recomputed in backward.
pub fn masked_lora(
    tape: Option<&mut Tape>,
    x: &Tensor,
    w: &SparseWeight,
    a: &Tensor,
    b: &Tensor,
    scale: f32,
    mode: AdapterGrad,
) -> Result<Tensor> {
    let y = forward(x, w, a, b, scale)?;
    if let Some(tape) = tape {
        let w = w.clone();
        let saved =
            vec![Saved::Keep(x.clone()), Saved::Keep(a.clone()), Saved::Keep(b.clone()), Saved::Recompute(RECOMPUTED)];
        tape.record("masked_lora", &[x, a, b], &y, saved, move |ctx| {
            let want_adapters = ctx.needs(1) || ctx.needs(2);
            let (dx, da, db) = backward(
                ctx.saved(0)?,
                &w,
                ctx.saved(1)?,
                ctx.saved(2)?,
                ctx.grad_out(),
                scale,
                mode,
                ctx.needs(0),
                want_adapters,
            )?;
            ctx.add_grads([dx, da, db])
        });
    }
    Ok(y)
}

#[cfg(test)]
mod tests;
