//! The gate and up projections of a LLaMA MLP as masked-LoRA linears, with the SwiGLU between
//! them: `m = silu(x·W_eff,gateᵀ) · (x·W_eff,upᵀ)`, x: [..., in] → m: [..., out], both
//! linears out × in with the same rank.
//!
//! On CUDA this is one op. Forward: both W_eff are built into one workspace and multiplied by
//! one strided-batched GEMM into y [2, t, out] (gate | up), and SwiGLU reads its two halves;
//! y is saved in place of the two outputs the separate ops would save. Backward: SwiGLU's
//! backward into dgate and dup, then dx = dgate·W_eff,gate + dup·W_eff,up as two GEMMs into
//! one buffer (no separate sum of two gradients), and each linear's adapter gradients as
//! [`super::backward`] takes them. Elsewhere (the CPU, or linears of different shapes, ranks
//! or dtypes) it is the separate ops, recorded one by one: the reference the fused op is
//! tested against.

use super::{backward, check, cuda, masked_lora, MaskedLora, RECOMPUTED};
use crate::autograd::{Saved, Tape};
use crate::ops::{cuda_device, cuda_tensor, linear_out_shape, swiglu};
use crate::{with_compute_type, Error, Result, Shape, Tensor};

/// Whether the pair runs as one op: on CUDA, with the same shapes, rank and dtype.
fn fusable(x: &Tensor, gate: &MaskedLora, up: &MaskedLora) -> bool {
    x.device().is_cuda()
        && (gate.base.rows(), gate.base.cols()) == (up.base.rows(), up.base.cols())
        && gate.a.dims() == up.a.dims()
        && gate.base.dtype() == up.base.dtype()
}

/// `silu(x·W_eff,gateᵀ) · (x·W_eff,upᵀ)`, recorded on `tape` when x or an adapter is tracked
/// (see the module docs).
pub fn masked_lora_swiglu(
    mut tape: Option<&mut Tape>,
    x: &Tensor,
    gate: &MaskedLora,
    up: &MaskedLora,
) -> Result<Tensor> {
    if !fusable(x, gate, up) {
        let g = masked_lora(tape.as_deref_mut(), x, &gate.base, &gate.a, &gate.b, gate.scale, gate.grad)?;
        let u = masked_lora(tape.as_deref_mut(), x, &up.base, &up.a, &up.b, up.scale, up.grad)?;
        return swiglu::swiglu(tape, &g, &u);
    }
    let d = check(x, &gate.base, &gate.a, &gate.b)?;
    check(x, &up.base, &up.a, &up.b)?;
    let out_shape = linear_out_shape(x, d.output);
    let n = d.tokens * d.output;
    let (y, m) = with_compute_type!(x.dtype(), "masked_lora_swiglu", T => {
        let dev = cuda_device(x)?;
        let guards = AdapterGuards::new(&[gate, up])?;
        let parts = guards.parts::<T>()?;
        let mut y = dev.alloc::<T>(2 * n)?;
        cuda::forward_pair::<T>(dev, x.read()?.cuda()?, [parts[0], parts[1]], y.slice_mut(), d.tokens)?;
        let mut m = dev.alloc::<T>(n)?;
        swiglu::cuda::forward::<T>(dev, &y.slice().slice(..n), &y.slice().slice(n..), m.slice_mut(), n)?;
        Ok::<_, Error>((
            cuda_tensor(y, [2, d.tokens, d.output], x.device())?,
            cuda_tensor(m, out_shape.clone(), x.device())?,
        ))
    })?;
    if let Some(tape) = tape {
        let inputs = [x, &gate.a, &gate.b, &up.a, &up.b];
        let saved = vec![
            Saved::Keep(x.clone()),
            Saved::Keep(y),
            Saved::Keep(gate.a.clone()),
            Saved::Keep(gate.b.clone()),
            Saved::Keep(up.a.clone()),
            Saved::Keep(up.b.clone()),
            Saved::Recompute(RECOMPUTED),
        ];
        let (gate, up) = (gate.clone(), up.clone());
        tape.record("masked_lora_swiglu", &inputs, &m, saved, move |ctx| {
            let (x, y) = (ctx.saved(0)?, ctx.saved(1)?);
            let (dgate, dup) = swiglu_halves_backward(y, ctx.grad_out(), &out_shape)?;
            let dx = if ctx.needs(0) { Some(dx_of_parts(x, &[(&gate, &dgate), (&up, &dup)], d.tokens)?) } else { None };
            let mut grads = vec![dx];
            for (i, (part, dy)) in [(&gate, &dgate), (&up, &dup)].into_iter().enumerate() {
                let (a, b) = (ctx.saved(2 + 2 * i)?, ctx.saved(3 + 2 * i)?);
                let want = ctx.needs(1 + 2 * i) || ctx.needs(2 + 2 * i);
                let (_, da, db) = backward(x, &part.base, a, b, dy, part.scale, part.grad, false, want)?;
                grads.extend([da, db]);
            }
            ctx.add_grads(grads)
        });
    }
    Ok(m)
}

/// (dgate, dup), each of `shape`, from y = gate | up [2, t, out] and dm.
fn swiglu_halves_backward(y: &Tensor, dm: &Tensor, shape: &Shape) -> Result<(Tensor, Tensor)> {
    let n = y.elem_count() / 2;
    if dm.elem_count() != n || dm.dtype() != y.dtype() {
        return Err(Error::ShapeMismatch {
            op: "masked_lora_swiglu backward",
            lhs: y.shape().clone(),
            rhs: dm.shape().clone(),
        });
    }
    with_compute_type!(y.dtype(), "masked_lora_swiglu", T => {
        let dev = cuda_device(y)?;
        let (mut dgate, mut dup) = (dev.alloc::<T>(n)?, dev.alloc::<T>(n)?);
        let yr = y.read()?;
        let yc = yr.cuda::<T>()?;
        swiglu::cuda::backward::<T>(
            dev, &yc.slice(..n), &yc.slice(n..), dm.read()?.cuda()?,
            Some(dgate.slice_mut()), Some(dup.slice_mut()), n,
        )?;
        Ok((cuda_tensor(dgate, shape.clone(), y.device())?, cuda_tensor(dup, shape.clone(), y.device())?))
    })
}

/// dx = Σ_p dy_p·W_eff,p (like x) over the linears that have an output gradient.
pub(super) fn dx_of_parts(x: &Tensor, parts: &[(&MaskedLora, &Tensor)], tokens: usize) -> Result<Tensor> {
    with_compute_type!(x.dtype(), "masked_lora group", T => {
        let dev = cuda_device(x)?;
        let linears: Vec<&MaskedLora> = parts.iter().map(|(l, _)| *l).collect();
        let guards = AdapterGuards::new(&linears)?;
        let dys = parts.iter().map(|(_, dy)| dy.read()).collect::<Result<Vec<_>>>()?;
        let mut with_dy = Vec::with_capacity(parts.len());
        for (p, dy) in guards.parts::<T>()?.into_iter().zip(&dys) {
            with_dy.push((p, dy.cuda::<T>()?));
        }
        let mut dx = dev.alloc::<T>(tokens * x.shape().last_dim())?;
        cuda::dx_parts::<T>(dev, &with_dy, dx.slice_mut(), tokens)?;
        cuda_tensor(dx, x.shape().clone(), x.device())
    })
}

/// The read guards of a group's adapters, held while their device slices are in use.
pub(super) struct AdapterGuards<'a> {
    linears: Vec<&'a MaskedLora>,
    guards: Vec<(StorageRead<'a>, StorageRead<'a>)>,
}

type StorageRead<'a> = std::sync::RwLockReadGuard<'a, crate::storage::Storage>;

impl<'a> AdapterGuards<'a> {
    pub(super) fn new(linears: &[&'a MaskedLora]) -> Result<Self> {
        let guards = linears.iter().map(|l| Ok((l.a.read()?, l.b.read()?))).collect::<Result<Vec<_>>>()?;
        Ok(AdapterGuards { linears: linears.to_vec(), guards })
    }

    /// Each linear as a device [`cuda::Part`].
    pub(super) fn parts<T: crate::device::cuda::CudaFloat>(&self) -> Result<Vec<cuda::Part<'_, T>>> {
        self.linears
            .iter()
            .zip(&self.guards)
            .map(|(l, (a, b))| {
                Ok(cuda::Part { w: &l.base, a: a.cuda::<T>()?, b: b.cuda::<T>()?, scale: l.scale, rank: l.a.dims()[0] })
            })
            .collect()
    }
}
