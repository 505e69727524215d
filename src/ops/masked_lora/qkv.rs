//! The query, key and value projections of a LLaMA attention block as masked-LoRA linears,
//! with RoPE on q and k: x [B, T, in] → q [B, T, Hq, hd] = rope(x·W_eff,qᵀ), k [B, T, Hkv, hd]
//! = rope(x·W_eff,kᵀ), v [B, T, Hkv, hd] = x·W_eff,vᵀ; token t at position pos_offset + t.
//!
//! On CUDA this is one op with three outputs. Forward: the three W_eff are stacked into one
//! workspace [(Hq + 2·Hkv)·hd, in] and multiplied by one GEMM into a temporary y [B·T,
//! (Hq + 2·Hkv)·hd]; `cuda/rope.cu` then writes q and k rotated and v copied out of it, each
//! into its own tensor (RoPE applied where Q and K are written). Nothing but x and the
//! adapters is saved. Backward: the inverse rotation of dq and dk, then dx = Σ dy_p·W_eff,p
//! as GEMMs into one buffer (no separate sums of three gradients), and each linear's adapter
//! gradients as [`super::backward`] takes them. Elsewhere (the CPU, or linears whose shapes do
//! not match the heads, or of different dtypes) it is the separate ops — three linears, the
//! reshapes and two RoPEs — recorded one by one: the reference the fused op is tested against.

use super::pair::{dx_of_parts, AdapterGuards};
use super::{backward, check, cuda, masked_lora, MaskedLora, RECOMPUTED};
use crate::autograd::{Saved, Tape};
use crate::ops::rope::{self, cpu::Positions};
use crate::ops::{cuda_device, cuda_tensor, reshape};
use crate::{with_compute_type, Error, Result, Tensor};

/// The heads of an attention block: query heads, key/value heads, and their width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Query heads Hq.
    pub q: usize,
    /// Key and value heads Hkv.
    pub kv: usize,
    /// head_dim.
    pub dim: usize,
}

/// Whether the three run as one op: on CUDA, one dtype, and each linear's rows the heads'.
fn fusable(x: &Tensor, qkv: [&MaskedLora; 3], heads: Heads) -> bool {
    let rows = [heads.q, heads.kv, heads.kv].map(|h| h * heads.dim);
    x.device().is_cuda() && qkv.iter().zip(rows).all(|(l, r)| l.base.rows() == r && l.base.dtype() == x.dtype())
}

/// `(q, k, v)` of an attention block from three projections run one by one, recorded on
/// `tape`: `project(i, tape, x)` is projection i's output [B, T, out_i] (q, k, v in turn),
/// reshaped to its heads; q and k get RoPE at positions pos_offset + t. The path of any
/// linears the fused op does not take, and its reference.
pub fn qkv_rope_separate(
    mut tape: Option<&mut Tape>,
    x: &Tensor,
    heads: Heads,
    inv_freq: &[f32],
    pos_offset: usize,
    mut project: impl FnMut(usize, Option<&mut Tape>, &Tensor) -> Result<Tensor>,
) -> Result<[Tensor; 3]> {
    let [b, t, _] = x.shape().dims_n::<3>("attention projections")?;
    let mut out = Vec::with_capacity(3);
    for (i, h) in [heads.q, heads.kv, heads.kv].into_iter().enumerate() {
        let y = project(i, tape.as_deref_mut(), x)?;
        let y = reshape(tape.as_deref_mut(), &y, [b, t, h, heads.dim])?;
        out.push(if i < 2 { rope::rope(tape.as_deref_mut(), &y, inv_freq, pos_offset)? } else { y });
    }
    out.try_into().map_err(|_| Error::invalid("three projections"))
}

/// `(q, k, v)` of an attention block (see the module docs), recorded on `tape` when x or an
/// adapter is tracked.
pub fn masked_lora_qkv_rope(
    tape: Option<&mut Tape>,
    x: &Tensor,
    qkv: [&MaskedLora; 3],
    heads: Heads,
    inv_freq: &[f32],
    pos_offset: usize,
) -> Result<[Tensor; 3]> {
    let [b, t, _] = x.shape().dims_n::<3>("masked_lora_qkv_rope")?;
    let shapes = [heads.q, heads.kv, heads.kv].map(|h| [b, t, h, heads.dim]);
    if !fusable(x, qkv, heads) {
        return qkv_rope_separate(tape, x, heads, inv_freq, pos_offset, |i, tape, x| {
            let l = qkv[i];
            masked_lora(tape, x, &l.base, &l.a, &l.b, l.scale, l.grad)
        });
    }
    for l in qkv {
        check(x, &l.base, &l.a, &l.b)?;
    }
    rope::check_sequences(x, inv_freq, heads.dim, pos_offset, t)?;
    let tokens = b * t;
    let outputs = with_compute_type!(x.dtype(), "masked_lora_qkv_rope", T => {
        let dev = cuda_device(x)?;
        let guards = AdapterGuards::new(&qkv)?;
        let parts = guards.parts::<T>()?;
        let width = (heads.q + 2 * heads.kv) * heads.dim;
        let mut y = dev.alloc::<T>(tokens * width)?;
        cuda::forward_stacked::<T>(dev, x.read()?.cuda()?, &parts, y.slice_mut(), tokens)?;
        let (mut q, mut k, mut v) = (
            dev.alloc::<T>(shapes[0].iter().product())?,
            dev.alloc::<T>(shapes[1].iter().product())?,
            dev.alloc::<T>(shapes[2].iter().product())?,
        );
        let table = dev.htod(inv_freq)?;
        rope::cuda::split_qkv::<T>(
            dev, y.slice(), table.slice(), (q.slice_mut(), heads.q), (k.slice_mut(), heads.kv),
            (v.slice_mut(), heads.kv), tokens, heads.dim, Positions::Offset { seq: t, pos_offset },
        )?;
        Ok::<_, Error>([
            cuda_tensor(q, shapes[0], x.device())?,
            cuda_tensor(k, shapes[1], x.device())?,
            cuda_tensor(v, shapes[2], x.device())?,
        ])
    })?;
    let [q, k, v] = outputs;
    if let Some(tape) = tape {
        let inputs = [x, &qkv[0].a, &qkv[0].b, &qkv[1].a, &qkv[1].b, &qkv[2].a, &qkv[2].b];
        let mut saved = vec![Saved::Keep(x.clone())];
        for l in qkv {
            saved.extend([Saved::Keep(l.a.clone()), Saved::Keep(l.b.clone())]);
        }
        saved.push(Saved::Recompute(RECOMPUTED));
        let linears = qkv.map(MaskedLora::clone);
        let inv_freq = inv_freq.to_vec();
        tape.record_multi("masked_lora_qkv_rope", &inputs, &[&q, &k, &v], saved, move |ctx| {
            let x = ctx.saved(0)?.clone();
            // Each output's gradient as [B, T, out]: q and k rotated back first.
            let mut dys = Vec::with_capacity(3);
            for (i, l) in linears.iter().enumerate() {
                let Some(g) = ctx.grad_out_at(i) else {
                    dys.push(None);
                    continue;
                };
                let g = if i < 2 { rope::backward(g, &inv_freq, pos_offset)? } else { g.clone() };
                dys.push(Some(g.reshape([b, t, l.base.rows()])?));
            }
            let with_dy: Vec<(&MaskedLora, &Tensor)> =
                linears.iter().zip(&dys).filter_map(|(l, dy)| dy.as_ref().map(|dy| (l, dy))).collect();
            let dx = if ctx.needs(0) { Some(dx_of_parts(&x, &with_dy, tokens)?) } else { None };
            let mut grads = vec![dx];
            for (i, (l, dy)) in linears.iter().zip(&dys).enumerate() {
                let want = ctx.needs(1 + 2 * i) || ctx.needs(2 + 2 * i);
                let (da, db) = match dy {
                    Some(dy) if want => {
                        let (a, b) = (ctx.saved(1 + 2 * i)?, ctx.saved(2 + 2 * i)?);
                        let (_, da, db) = backward(&x, &l.base, a, b, dy, l.scale, l.grad, false, true)?;
                        (da, db)
                    }
                    _ => (None, None),
                };
                grads.extend([da, db]);
            }
            ctx.add_grads(grads)
        });
    }
    Ok([q, k, v])
}
