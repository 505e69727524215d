//! A bias-free linear layer `y = x·Wᵀ`, x: [..., in] → y: [..., out], in one of three forms:
//! a dense weight W [out, in]; a masked-LoRA linear whose frozen base W⊙M is stored
//! compressed ([`SparseWeight`]) with trained adapters A [r, in], B [out, r]:
//! `y = x·(W⊙M + s·M⊙(B·A))ᵀ` (see [`crate::ops::masked_lora`]); or a compressed sparse
//! weight whose kept values are trained themselves (SEFT, [`crate::ops::sparse_linear`]).

use crate::autograd::Tape;
pub use crate::ops::masked_lora::MaskedLora;

use crate::ops::masked_lora;
use crate::sparse::{Expand, SparseWeight};
use crate::{ops, with_compute_type, Device, Error, Result, Tensor};

/// A linear layer.
#[derive(Clone, Debug)]
pub enum Linear {
    /// Dense weight [out, in].
    Dense(Tensor),
    /// Compressed frozen base + masked LoRA adapter.
    MaskedLora(MaskedLora),
    /// Compressed weight with trained kept values (its values tensor is the parameter).
    Sparse(SparseWeight),
}

impl Linear {
    /// A dense linear with weight [out, in].
    pub fn new(weight: Tensor) -> Self {
        Linear::Dense(weight)
    }

    /// `x · W_effᵀ`, recorded on `tape` when x or a trained tensor is tracked.
    pub fn forward(&self, tape: Option<&mut Tape>, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense(w) => ops::matmul_nt(tape, x, w),
            Linear::MaskedLora(l) => masked_lora::masked_lora(tape, x, &l.base, &l.a, &l.b, l.scale, l.grad),
            Linear::Sparse(w) => ops::sparse_linear::sparse_linear(tape, x, w),
        }
    }

    /// `silu(x·gateᵀ) · (x·upᵀ)`, an MLP's gated input, recorded on `tape`: one op when both
    /// are masked-LoRA linears ([`masked_lora::masked_lora_swiglu`]), else the two linears and
    /// the SwiGLU one by one.
    pub fn swiglu_pair(tape: Option<&mut Tape>, gate: &Linear, up: &Linear, x: &Tensor) -> Result<Tensor> {
        if let (Linear::MaskedLora(g), Linear::MaskedLora(u)) = (gate, up) {
            return masked_lora::masked_lora_swiglu(tape, x, g, u);
        }
        let mut tape = tape;
        let g = gate.forward(tape.as_deref_mut(), x)?;
        let u = up.forward(tape.as_deref_mut(), x)?;
        ops::swiglu::swiglu(tape, &g, &u)
    }

    /// The query, key and value of an attention block from x [B, T, in]: q [B, T, Hq, hd] and
    /// k [B, T, Hkv, hd] with RoPE at positions pos_offset + t, v [B, T, Hkv, hd], recorded on
    /// `tape`: one op when all three are masked-LoRA linears
    /// ([`masked_lora::masked_lora_qkv_rope`]), else the linears, reshapes and RoPEs one by one.
    pub fn qkv_rope(
        tape: Option<&mut Tape>,
        qkv: [&Linear; 3],
        x: &Tensor,
        heads: masked_lora::Heads,
        inv_freq: &[f32],
        pos_offset: usize,
    ) -> Result<[Tensor; 3]> {
        if let [Linear::MaskedLora(q), Linear::MaskedLora(k), Linear::MaskedLora(v)] = qkv {
            return masked_lora::masked_lora_qkv_rope(tape, x, [q, k, v], heads, inv_freq, pos_offset);
        }
        masked_lora::qkv_rope_separate(tape, x, heads, inv_freq, pos_offset, |i, tape, x| qkv[i].forward(tape, x))
    }

    /// (out, in).
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Linear::Dense(w) => {
                let d = w.dims();
                (d.first().copied().unwrap_or(0), d.get(1).copied().unwrap_or(0))
            }
            Linear::MaskedLora(l) => (l.base.rows(), l.base.cols()),
            Linear::Sparse(w) => (w.rows(), w.cols()),
        }
    }

    /// The compressed weight: the frozen base of a masked-LoRA linear, or the trained sparse
    /// weight; None for a dense linear.
    pub fn compressed(&self) -> Option<&SparseWeight> {
        match self {
            Linear::Dense(_) => None,
            Linear::MaskedLora(l) => Some(&l.base),
            Linear::Sparse(w) => Some(w),
        }
    }

    /// The dense weight; an error for a compressed linear (merge it first).
    pub fn dense(&self) -> Result<&Tensor> {
        match self {
            Linear::Dense(w) => Ok(w),
            Linear::MaskedLora(_) | Linear::Sparse(_) => {
                Err(Error::invalid("this linear holds a compressed weight: merge it first"))
            }
        }
    }

    /// The weight this linear applies, as a new dense tensor: W itself, W⊙M, or the merged
    /// W⊙M + s·M⊙(B·A) (zero wherever M is).
    pub fn merged(&self) -> Result<Tensor> {
        let l = match self {
            Linear::Dense(w) => return Ok(w.clone()),
            Linear::Sparse(w) => return w.to_dense(),
            Linear::MaskedLora(l) => l,
        };
        let (rows, cols, rank) = (l.base.rows(), l.base.cols(), l.a.dims()[0]);
        let d = masked_lora::Dims { tokens: 0, input: cols, output: rows, rank };
        match l.base.device() {
            Device::Cpu(_) => {
                let mut out = vec![0f32; rows * cols];
                let (a, b) = (l.a.to_f32_vec()?, l.b.to_f32_vec()?);
                let mm = ops::matmul::Dims {
                    batch: 1,
                    m: rows,
                    n: cols,
                    k: rank,
                    trans_a: false,
                    trans_b: false,
                    b_batched: false,
                };
                ops::matmul::cpu::fast(&b, &a, &mut out, mm, l.scale, false);
                l.base.to_dtype(crate::DType::F32)?.expand_into_host(&mut out, Expand::AddKept)?;
                Tensor::from_f32(out, [rows, cols], l.base.dtype(), l.base.device())
            }
            Device::Cuda(dev) => with_compute_type!(l.base.dtype(), "merge", T => {
                let mut out = dev.alloc::<T>(rows * cols)?;
                masked_lora::cuda::build_effective::<T>(dev, &l.base, l.a.read()?.cuda()?, l.b.read()?.cuda()?, l.scale, &mut out.slice_mut().slice_mut(..), d)?;
                ops::cuda_tensor(out, [rows, cols], l.base.device())
            }),
        }
    }
}
