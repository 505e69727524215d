//! Causal self-attention with grouped key/value heads (GQA), softmax in f32 (f64 on the CPU).
//! q: [B, T, Hq, D]; k, v: [B, T, Hkv, D] with Hkv dividing Hq; o: [B, T, Hq, D];
//! lse: [B, Hq, T] f32. Query head h reads kv head h / (Hq / Hkv) (Hugging Face `repeat_kv`
//! order); c = 1/sqrt(D); query t sees keys t' ≤ t:
//!   s_tt' = c · q_t·k_t',  lse_t = log Σ_t' e^{s_tt'},  p_tt' = e^{s_tt' − lse_t},
//!   o_t = Σ_t' p_tt' · v_t'
//! Backward, with D_t = do_t·o_t and ds_tt' = p_tt' · (do_t·v_t' − D_t):
//!   dq_t = c · Σ_t' ds_tt' · k_t',  dk_t' = c · Σ_{t, group heads} ds_tt' · q_t,
//!   dv_t' = Σ_{t, group heads} p_tt' · do_t
//! Nothing of size T × T is kept between forward and backward: backward recomputes p from
//! lse. On CUDA two implementations ([`CudaKernels`]): by default the products run on tensor
//! cores as cuBLAS GEMMs with one chunk of heads' T × T matrices in a transient workspace
//! ([`cuda_gemm`], any D); where one head's T × T does not fit
//! [`cuda_gemm::MAX_SCORE_BYTES`], the tiled flash kernels ([`cuda`], D ≤
//! [`cuda::MAX_HEAD_DIM`]). The CPU takes any D.

pub mod cpu;
pub mod cpu_fast;
pub mod cuda;
pub mod cuda_gemm;

/// Which CUDA implementation computes attention (the CPU has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaKernels {
    /// Tensor cores where a head's T × T buffers fit [`cuda_gemm::MAX_SCORE_BYTES`], else flash.
    Auto,
    /// cuBLAS GEMMs with the row kernels between them ([`cuda_gemm`]).
    TensorCores,
    /// The tiled flash kernels ([`cuda`]; head_dim ≤ [`cuda::MAX_HEAD_DIM`]).
    Flash,
}

impl CudaKernels {
    /// Whether `d` in a compute type of `elem` bytes runs on tensor cores.
    fn tensor_cores(self, d: Dims, elem: usize) -> bool {
        match self {
            CudaKernels::Auto => cuda_gemm::heads_per_chunk(d, elem) > 0,
            CudaKernels::TensorCores => true,
            CudaKernels::Flash => false,
        }
    }
}

pub use cpu::Dims;

use crate::autograd::{Saved, Tape};
use crate::ops::{cuda_device, cuda_tensor, expect_float, expect_same, host_f32};
use crate::{with_compute_type, DType, Device, Error, Result, Shape, Tensor};

fn check(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    expect_float("attention", q)?;
    expect_same("attention", &[q, k, v])?;
    let [batch, seq, q_heads, head_dim] = q.shape().dims_n::<4>("attention")?;
    let [kb, kt, kv_heads, kd] = k.shape().dims_n::<4>("attention")?;
    k.shape().expect_eq("attention (k vs v)", v.shape())?;
    if (kb, kt, kd) != (batch, seq, head_dim) {
        return Err(Error::ShapeMismatch { op: "attention (q vs k)", lhs: q.shape().clone(), rhs: k.shape().clone() });
    }
    if head_dim == 0 {
        return Err(Error::BadShape { op: "attention", shape: q.shape().clone(), msg: "head dimension is 0".into() });
    }
    if kv_heads == 0 || q_heads % kv_heads != 0 {
        return Err(Error::invalid(format!(
            "attention: q {} has {q_heads} heads, not a positive multiple of the {kv_heads} kv heads of k {}",
            q.shape(),
            k.shape()
        )));
    }
    Ok(Dims { batch, seq, q_heads, kv_heads, head_dim })
}

fn lse_shape(d: Dims) -> Shape {
    Shape::new([d.batch, d.q_heads, d.seq])
}

/// Forward without recording: `(o, lse)`, o like q in q's dtype, lse [B, Hq, T] in F32.
pub fn forward(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
    forward_with(q, k, v, CudaKernels::Auto)
}

/// [`forward`] with the CUDA implementation chosen by the caller.
pub fn forward_with(q: &Tensor, k: &Tensor, v: &Tensor, kernels: CudaKernels) -> Result<(Tensor, Tensor)> {
    let d = check(q, k, v)?;
    match q.device() {
        Device::Cpu(_) => {
            let mut o = vec![0f32; d.q_len()];
            let mut lse = vec![0f32; d.lse_len()];
            cpu_fast::forward(&host_f32(q)?, &host_f32(k)?, &host_f32(v)?, d, &mut o, &mut lse);
            Ok((
                Tensor::from_f32(o, q.shape().clone(), q.dtype(), q.device())?,
                Tensor::from_f32(lse, lse_shape(d), DType::F32, q.device())?,
            ))
        }
        Device::Cuda(_) => with_compute_type!(q.dtype(), "attention", T => {
            let dev = cuda_device(q)?;
            let mut o = dev.alloc::<T>(d.q_len())?;
            let mut lse = dev.alloc::<f32>(d.lse_len())?;
            let (qs, ks, vs) = (q.read()?, k.read()?, v.read()?);
            let (qs, ks, vs) = (qs.cuda()?, ks.cuda()?, vs.cuda()?);
            if kernels.tensor_cores(d, std::mem::size_of::<T>()) {
                cuda_gemm::forward::<T>(dev, qs, ks, vs, o.slice_mut(), lse.slice_mut(), d)?;
            } else {
                cuda::forward::<T>(dev, qs, ks, vs, o.slice_mut(), lse.slice_mut(), d)?;
            }
            Ok((cuda_tensor(o, q.shape().clone(), q.device())?, cuda_tensor(lse, lse_shape(d), q.device())?))
        }),
    }
}

/// Gradients `(dq, dk, dv)` given the forward's `o` and `lse` and the output gradient
/// `d_o` (like q), each computed only when asked for.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    d_o: &Tensor,
    want_dq: bool,
    want_dk: bool,
    want_dv: bool,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    backward_with(q, k, v, o, lse, d_o, [want_dq, want_dk, want_dv], CudaKernels::Auto)
}

/// [`backward`] with the gradients asked for as `[dq, dk, dv]` and the CUDA implementation
/// chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn backward_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    d_o: &Tensor,
    [want_dq, want_dk, want_dv]: [bool; 3],
    kernels: CudaKernels,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let d = check(q, k, v)?;
    expect_same("attention backward", &[q, o, d_o])?;
    q.shape().expect_eq("attention backward (q vs o)", o.shape())?;
    q.shape().expect_eq("attention backward (q vs do)", d_o.shape())?;
    if lse.dtype() != DType::F32 {
        return Err(Error::DType { op: "attention backward", dtype: lse.dtype(), msg: "lse must be f32" });
    }
    if !lse.device().same(q.device()) {
        return Err(Error::DeviceMismatch {
            op: "attention backward",
            lhs: q.device().label(),
            rhs: lse.device().label(),
        });
    }
    lse_shape(d).expect_eq("attention backward (lse)", lse.shape())?;
    match q.device() {
        Device::Cpu(_) => {
            let mut dq = want_dq.then(|| vec![0f32; d.q_len()]);
            let mut dk = want_dk.then(|| vec![0f32; d.kv_len()]);
            let mut dv = want_dv.then(|| vec![0f32; d.kv_len()]);
            cpu_fast::backward(
                &host_f32(q)?,
                &host_f32(k)?,
                &host_f32(v)?,
                &host_f32(o)?,
                &host_f32(lse)?,
                &host_f32(d_o)?,
                d,
                dq.as_deref_mut(),
                dk.as_deref_mut(),
                dv.as_deref_mut(),
            );
            let wrap = |g: Option<Vec<f32>>, like: &Tensor| {
                g.map(|g| Tensor::from_f32(g, like.shape().clone(), like.dtype(), like.device())).transpose()
            };
            Ok((wrap(dq, q)?, wrap(dk, k)?, wrap(dv, v)?))
        }
        Device::Cuda(_) if kernels.tensor_cores(d, q.dtype().size_in_bytes()) => {
            with_compute_type!(q.dtype(), "attention", T => {
                let dev = cuda_device(q)?;
                let (qs, ks, vs, os, ls, dos) = (q.read()?, k.read()?, v.read()?, o.read()?, lse.read()?, d_o.read()?);
                let (qs, ks, vs, ls, dos) = (qs.cuda::<T>()?, ks.cuda::<T>()?, vs.cuda::<T>()?, ls.cuda()?, dos.cuda::<T>()?);
                let mut delta = dev.alloc::<f32>(d.lse_len())?;
                cuda::delta::<T>(dev, os.cuda()?, dos, delta.slice_mut(), d)?;
                let mut dq = if want_dq { Some(dev.alloc::<T>(d.q_len())?) } else { None };
                // dk and dv are sums over a GQA group: accumulated in f32, rounded once.
                let mut dk = if want_dk { Some(dev.alloc::<f32>(d.kv_len())?) } else { None };
                let mut dv = if want_dv { Some(dev.alloc::<f32>(d.kv_len())?) } else { None };
                cuda_gemm::backward::<T>(
                    dev, qs, ks, vs, ls, dos, delta.slice(),
                    dq.as_mut().map(|b| b.slice_mut()), dk.as_mut().map(|b| b.slice_mut()), dv.as_mut().map(|b| b.slice_mut()),
                    d,
                )?;
                let kv = |b: Option<_>| -> Result<Option<Tensor>> {
                    b.map(|b| cuda_tensor(b, k.shape().clone(), k.device())?.to_dtype(k.dtype())).transpose()
                };
                Ok((dq.map(|b| cuda_tensor(b, q.shape().clone(), q.device())).transpose()?, kv(dk)?, kv(dv)?))
            })
        }
        Device::Cuda(_) => with_compute_type!(q.dtype(), "attention", T => {
            let dev = cuda_device(q)?;
            let mut dq = if want_dq { Some(dev.alloc::<T>(d.q_len())?) } else { None };
            let mut dk = if want_dk { Some(dev.alloc::<T>(d.kv_len())?) } else { None };
            let mut dv = if want_dv { Some(dev.alloc::<T>(d.kv_len())?) } else { None };
            cuda::backward::<T>(
                dev, q.read()?.cuda()?, k.read()?.cuda()?, v.read()?.cuda()?, o.read()?.cuda()?, lse.read()?.cuda()?,
                d_o.read()?.cuda()?,
                dq.as_mut().map(|b| b.slice_mut()), dk.as_mut().map(|b| b.slice_mut()), dv.as_mut().map(|b| b.slice_mut()),
                d,
            )?;
            Ok((
                dq.map(|b| cuda_tensor(b, q.shape().clone(), q.device())).transpose()?,
                dk.map(|b| cuda_tensor(b, k.shape().clone(), k.device())).transpose()?,
                dv.map(|b| cuda_tensor(b, v.shape().clone(), v.device())).transpose()?,
            ))
        }),
    }
}

/// Causal GQA attention, recorded on `tape` when q, k or v is tracked; saves q, k, v, o and
/// lse (the T × T probabilities are recomputed in backward, never kept).
pub fn attention(tape: Option<&mut Tape>, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (o, lse) = forward(q, k, v)?;
    if let Some(tape) = tape {
        let saved = vec![
            Saved::Keep(q.clone()),
            Saved::Keep(k.clone()),
            Saved::Keep(v.clone()),
            Saved::Keep(o.clone()),
            Saved::Keep(lse),
        ];
        tape.record("attention", &[q, k, v], &o, saved, move |ctx| {
            let (dq, dk, dv) = backward(
                ctx.saved(0)?,
                ctx.saved(1)?,
                ctx.saved(2)?,
                ctx.saved(3)?,
                ctx.saved(4)?,
                ctx.grad_out(),
                ctx.needs(0),
                ctx.needs(1),
                ctx.needs(2),
            )?;
            ctx.add_grads([dq, dk, dv])
        });
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f64, finite_diff, random_f32, random_f64};
    use crate::{device::cuda_for_tests, Grads};

    fn dims(batch: usize, seq: usize, q_heads: usize, kv_heads: usize, head_dim: usize) -> Dims {
        Dims { batch, seq, q_heads, kv_heads, head_dim }
    }

    fn tensor(data: Vec<f32>, shape: [usize; 4], dtype: DType, dev: &Device) -> Tensor {
        Tensor::from_f32(data, shape, dtype, dev).unwrap()
    }

    #[test]
    fn backward_matches_finite_differences() {
        let d = dims(2, 5, 4, 2, 3);
        let q = random_f64(d.q_len(), 1.5, 1);
        let k = random_f64(d.kv_len(), 1.5, 2);
        let v = random_f64(d.kv_len(), 1.0, 3);
        let d_o = random_f64(d.q_len(), 1.0, 4);
        let fwd = |q: &[f64], k: &[f64], v: &[f64]| {
            let mut o = vec![0.0; d.q_len()];
            let mut lse = vec![0.0; d.lse_len()];
            cpu::forward(q, k, v, d, &mut o, &mut lse);
            (o, lse)
        };
        let (o, lse) = fwd(&q, &k, &v);
        let mut dq = vec![0.0; d.q_len()];
        let mut dk = vec![0.0; d.kv_len()];
        let mut dv = vec![0.0; d.kv_len()];
        cpu::backward(&q, &k, &v, &o, &lse, &d_o, d, Some(&mut dq), Some(&mut dk), Some(&mut dv));
        let fd_q = finite_diff(|q| fwd(q, &k, &v).0, &q, &d_o, 1e-6);
        let fd_k = finite_diff(|k| fwd(&q, k, &v).0, &k, &d_o, 1e-6);
        let fd_v = finite_diff(|v| fwd(&q, &k, v).0, &v, &d_o, 1e-6);
        assert_close_f64("attention dq", &dq, &fd_q, 1e-8, 1e-6);
        assert_close_f64("attention dk", &dk, &fd_k, 1e-8, 1e-6);
        assert_close_f64("attention dv", &dv, &fd_v, 1e-8, 1e-6);
        // lse is log Σ e^s: check it against its definition for the last row of one head.
        let (b, h, t) = (1, 3, d.seq - 1);
        let g = h / d.group();
        let qt = &q[((b * d.seq + t) * d.q_heads + h) * 3..][..3];
        let sum: f64 = (0..=t)
            .map(|u| {
                let ku = &k[((b * d.seq + u) * d.kv_heads + g) * 3..][..3];
                (d.scale() * qt.iter().zip(ku).map(|(x, y)| x * y).sum::<f64>()).exp()
            })
            .sum();
        assert!((lse[(b * d.q_heads + h) * d.seq + t] - sum.ln()).abs() < 1e-12);
    }

    /// T = 2, one head, D = 4 (c = 1/2), chosen so that the probabilities are round:
    /// s_00 = 1; s_10 = 0, s_11 = ln 3, so row 1 weighs v_0, v_1 by 1/4, 3/4.
    #[test]
    fn hand_worked_two_positions() {
        let dev = Device::cpu();
        let ln3 = 3f32.ln();
        let q = tensor(vec![0., 0., 2., 0., 2., 2. * ln3, 0., 0.], [1, 2, 1, 4], DType::F32, &dev);
        let k = tensor(vec![0., 0., 1., 0., 0., 1., 0., 0.], [1, 2, 1, 4], DType::F32, &dev);
        let v = tensor(vec![4., 0., -4., 8., 0., 4., 8., -4.], [1, 2, 1, 4], DType::F32, &dev);
        let (o, lse) = forward(&q, &k, &v).unwrap();
        assert_eq!(lse.dims(), [1, 1, 2]);
        assert_close("o", &o.to_f32_vec().unwrap(), &[4., 0., -4., 8., 1., 3., 5., -1.], 1e-6, 1e-6);
        assert_close("lse", &lse.to_f32_vec().unwrap(), &[1., 4f32.ln()], 1e-6, 1e-6);
    }

    /// GQA must equal plain multi-head attention on k, v repeated in `repeat_kv` order
    /// (kv head g serves query heads g·G .. g·G + G − 1), with dk, dv summed over each group.
    #[test]
    fn gqa_matches_repeated_kv_heads() {
        let dev = Device::cpu();
        let d = dims(2, 6, 6, 2, 5);
        let group = d.group();
        let q = tensor(random_f32(d.q_len(), 1.0, 5), [2, 6, 6, 5], DType::F32, &dev);
        let k_data = random_f32(d.kv_len(), 1.0, 6);
        let v_data = random_f32(d.kv_len(), 1.0, 7);
        let repeat = |x: &[f32]| -> Vec<f32> {
            x.chunks_exact(d.head_dim).flat_map(|row| std::iter::repeat_n(row, group)).flatten().copied().collect()
        };
        let (k, v) = (
            tensor(k_data.clone(), [2, 6, 2, 5], DType::F32, &dev),
            tensor(v_data.clone(), [2, 6, 2, 5], DType::F32, &dev),
        );
        let (k_rep, v_rep) = (
            tensor(repeat(&k_data), [2, 6, 6, 5], DType::F32, &dev),
            tensor(repeat(&v_data), [2, 6, 6, 5], DType::F32, &dev),
        );
        let (o, lse) = forward(&q, &k, &v).unwrap();
        let (o_rep, lse_rep) = forward(&q, &k_rep, &v_rep).unwrap();
        assert_eq!(o.to_f32_vec().unwrap(), o_rep.to_f32_vec().unwrap());
        assert_eq!(lse.to_f32_vec().unwrap(), lse_rep.to_f32_vec().unwrap());

        let d_o = tensor(random_f32(d.q_len(), 1.0, 8), [2, 6, 6, 5], DType::F32, &dev);
        let (dq, dk, dv) = backward(&q, &k, &v, &o, &lse, &d_o, true, true, true).unwrap();
        let (dq_rep, dk_rep, dv_rep) = backward(&q, &k_rep, &v_rep, &o, &lse, &d_o, true, true, true).unwrap();
        assert_close("dq", &dq.unwrap().to_f32_vec().unwrap(), &dq_rep.unwrap().to_f32_vec().unwrap(), 1e-6, 1e-6);
        let group_sum = |x: Tensor| -> Vec<f32> {
            let x = x.to_f32_vec().unwrap();
            x.chunks_exact(group * d.head_dim)
                .flat_map(|heads| {
                    (0..d.head_dim).map(move |j| (0..group).map(|i| heads[i * d.head_dim + j]).sum::<f32>())
                })
                .collect()
        };
        assert_close("dk", &dk.unwrap().to_f32_vec().unwrap(), &group_sum(dk_rep.unwrap()), 1e-6, 1e-5);
        assert_close("dv", &dv.unwrap().to_f32_vec().unwrap(), &group_sum(dv_rep.unwrap()), 1e-6, 1e-5);
    }

    #[test]
    fn tape_records_and_routes_gradients() {
        let dev = Device::cpu();
        let d = dims(1, 4, 2, 1, 3);
        let q = tensor(random_f32(d.q_len(), 1.0, 9), [1, 4, 2, 3], DType::F32, &dev);
        let k = tensor(random_f32(d.kv_len(), 1.0, 10), [1, 4, 1, 3], DType::F32, &dev);
        let v = tensor(random_f32(d.kv_len(), 1.0, 11), [1, 4, 1, 3], DType::F32, &dev);
        let mut tape = Tape::new();
        tape.watch(&q);
        tape.watch(&v);
        let o = attention(Some(&mut tape), &q, &k, &v).unwrap();
        let report = tape.saved_report();
        assert_eq!(report.len(), 1);
        let kept: Vec<Shape> = report[0].kept.iter().map(|(s, _)| s.clone()).collect();
        let shapes = [q.shape(), k.shape(), v.shape(), q.shape(), &Shape::new([1, 2, 4])];
        assert_eq!(kept.iter().collect::<Vec<_>>(), shapes, "saves q, k, v, o and lse");

        let d_o = tensor(random_f32(d.q_len(), 1.0, 12), [1, 4, 2, 3], DType::F32, &dev);
        let mut grads = Grads::new();
        tape.backward_from(&o, d_o.clone(), &mut grads).unwrap();
        let (o_ref, lse) = forward(&q, &k, &v).unwrap();
        let (dq, _, dv) = backward(&q, &k, &v, &o_ref, &lse, &d_o, true, false, true).unwrap();
        assert_eq!(grads.get(&q).unwrap().to_f32_vec().unwrap(), dq.unwrap().to_f32_vec().unwrap());
        assert_eq!(grads.get(&v).unwrap().to_f32_vec().unwrap(), dv.unwrap().to_f32_vec().unwrap());
        assert!(grads.get(&k).is_none(), "k is not watched, so it gets no gradient");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::cpu();
        let z = |shape: &[usize], dtype| Tensor::zeros(shape, dtype, &dev).unwrap();
        let f = DType::F32;
        let err = |q: &Tensor, k: &Tensor, v: &Tensor| forward(q, k, v).unwrap_err().to_string();
        let q = z(&[2, 5, 4, 3], f);
        let kv = z(&[2, 5, 2, 3], f);
        // Wrong rank.
        let e = err(&z(&[10, 4, 3], f), &kv, &kv);
        assert!(e.contains("[10, 4, 3]") && e.contains("rank 4"), "{e}");
        // T, B or D differ between q and k.
        for k in [z(&[2, 6, 2, 3], f), z(&[1, 5, 2, 3], f), z(&[2, 5, 2, 4], f)] {
            let e = err(&q, &k, &k);
            assert!(e.contains("[2, 5, 4, 3]") && e.contains(&k.shape().to_string()), "{e}");
        }
        // k and v differ.
        let e = err(&q, &kv, &z(&[2, 5, 1, 3], f));
        assert!(e.contains("[2, 5, 2, 3]") && e.contains("[2, 5, 1, 3]"), "{e}");
        // Hq not a multiple of Hkv, and no kv heads at all.
        let k3 = z(&[2, 5, 3, 3], f);
        let e = err(&q, &k3, &k3);
        assert!(e.contains("4 heads") && e.contains("3 kv heads"), "{e}");
        let k0 = z(&[2, 5, 0, 3], f);
        assert!(forward(&q, &k0, &k0).is_err());
        // D = 0.
        let (q0, kv0) = (z(&[2, 5, 4, 0], f), z(&[2, 5, 2, 0], f));
        assert!(err(&q0, &kv0, &kv0).contains("head dimension is 0"));
        // dtypes: mixed, or not a float.
        assert!(err(&q, &z(&[2, 5, 2, 3], DType::BF16), &kv).contains("dtype"));
        let (qu, kvu) = (z(&[2, 5, 4, 3], DType::U32), z(&[2, 5, 2, 3], DType::U32));
        assert!(err(&qu, &kvu, &kvu).contains("dtype"));
        // Backward: lse of the wrong dtype or shape, do of the wrong shape.
        let (o, lse) = forward(&q, &kv, &kv).unwrap();
        let e = backward(&q, &kv, &kv, &o, &o, &q, true, true, true).unwrap_err().to_string();
        assert!(e.contains("[2, 4, 5]") && e.contains("[2, 5, 4, 3]"), "{e}");
        let lse_bf16 = z(&[2, 4, 5], DType::BF16);
        assert!(backward(&q, &kv, &kv, &o, &lse_bf16, &q, true, true, true)
            .unwrap_err()
            .to_string()
            .contains("lse must be f32"));
        let e = backward(&q, &kv, &kv, &o, &lse, &kv, true, true, true).unwrap_err().to_string();
        assert!(e.contains("[2, 5, 4, 3]") && e.contains("[2, 5, 2, 3]"), "{e}");
    }

    /// CUDA against the CPU reference. Backward runs on the CPU's o and lse, so each
    /// comparison checks one kernel set.
    #[test]
    fn cuda_matches_cpu() {
        let Some(gpu) = cuda_for_tests("attention::cuda_matches_cpu") else { return };
        let cpu = Device::cpu();
        // (B, T, Hq, Hkv, D): every T in {1, 7, 33, 129, 300}, D in {3, 64, 100, 128},
        // Hq/Hkv in {1/1, 4/2, 9/3}, B in {1, 2}; 600 crosses many tiles.
        let cases = [
            (1, 1, 1, 1, 3),
            (2, 7, 4, 2, 64),
            (1, 33, 9, 3, 100),
            (2, 129, 4, 2, 128),
            (1, 300, 9, 3, 64),
            (2, 300, 1, 1, 128),
            (1, 129, 9, 3, 3),
            (2, 33, 1, 1, 128),
            (1, 7, 9, 3, 100),
            (1, 600, 4, 2, 64),
        ];
        let combos = [CudaKernels::TensorCores, CudaKernels::Flash]
            .into_iter()
            .flat_map(|kernels| [(DType::F32, 1e-5, 1e-4), (DType::BF16, 2e-2, 2e-2)].map(|t| (kernels, t)));
        for (kernels, (dtype, atol, rtol)) in combos {
            let forward = |q: &Tensor, k: &Tensor, v: &Tensor| forward_with(q, k, v, kernels);
            let backward = |q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, d_o: &Tensor, dq, dk, dv| {
                backward_with(q, k, v, o, lse, d_o, [dq, dk, dv], kernels)
            };
            for (i, &(b, t, hq, hkv, hd)) in cases.iter().enumerate() {
                let d = dims(b, t, hq, hkv, hd);
                let seed = 100 + 10 * i as u64;
                let q = tensor(random_f32(d.q_len(), 2.0, seed), [b, t, hq, hd], dtype, &cpu);
                let k = tensor(random_f32(d.kv_len(), 2.0, seed + 1), [b, t, hkv, hd], dtype, &cpu);
                let v = tensor(random_f32(d.kv_len(), 1.0, seed + 2), [b, t, hkv, hd], dtype, &cpu);
                let d_o = tensor(random_f32(d.q_len(), 1.0, seed + 3), [b, t, hq, hd], dtype, &cpu);
                let up = |x: &Tensor| x.to_device(&gpu).unwrap();
                let what = format!("attention {kernels:?} {dtype} B={b} T={t} Hq={hq} Hkv={hkv} D={hd}");
                let host = |x: &Tensor| x.to_f32_vec().unwrap();

                let (o, lse) = super::forward(&q, &k, &v).unwrap();
                let (og, lseg) = forward(&up(&q), &up(&k), &up(&v)).unwrap();
                assert_eq!(
                    (og.dims(), og.dtype(), lseg.dims(), lseg.dtype()),
                    (o.dims(), dtype, lse.dims(), DType::F32)
                );
                assert_close(&format!("{what} o"), &host(&og), &host(&o), atol, rtol);
                // lse is f32 whatever the dtype, computed from the same (rounded) inputs.
                assert_close(&format!("{what} lse"), &host(&lseg), &host(&lse), 1e-5, 1e-4);

                let (dq, dk, dv) = super::backward(&q, &k, &v, &o, &lse, &d_o, true, true, true).unwrap();
                let (dqg, dkg, dvg) =
                    backward(&up(&q), &up(&k), &up(&v), &up(&o), &up(&lse), &up(&d_o), true, true, true).unwrap();
                assert_close(&format!("{what} dq"), &host(&dqg.unwrap()), &host(&dq.unwrap()), atol, rtol);
                assert_close(&format!("{what} dk"), &host(&dkg.unwrap()), &host(dk.as_ref().unwrap()), atol, rtol);
                assert_close(&format!("{what} dv"), &host(&dvg.unwrap()), &host(dv.as_ref().unwrap()), atol, rtol);

                // Asking for one of dk, dv alone gives the same values.
                let (none_q, dk_only, none_v) =
                    backward(&up(&q), &up(&k), &up(&v), &up(&o), &up(&lse), &up(&d_o), false, true, false).unwrap();
                assert!(none_q.is_none() && none_v.is_none());
                assert_close(&format!("{what} dk alone"), &host(&dk_only.unwrap()), &host(&dk.unwrap()), atol, rtol);
                let (_, _, dv_only) =
                    backward(&up(&q), &up(&k), &up(&v), &up(&o), &up(&lse), &up(&d_o), false, false, true).unwrap();
                assert_close(&format!("{what} dv alone"), &host(&dv_only.unwrap()), &host(&dv.unwrap()), atol, rtol);
            }
        }
    }

    /// The flash kernels refuse D > 128; the tensor-core path (the default) takes it.
    #[test]
    fn cuda_rejects_bad_inputs() {
        let Some(gpu) = cuda_for_tests("attention::cuda_rejects_bad_inputs") else { return };
        let cpu = Device::cpu();
        let (q, kv) = (random_f32(3 * 2 * 130, 1.0, 1), random_f32(3 * 130, 1.0, 2));
        let q = tensor(q, [1, 3, 2, 130], DType::F32, &cpu).to_device(&gpu).unwrap();
        let kv = tensor(kv, [1, 3, 1, 130], DType::F32, &cpu).to_device(&gpu).unwrap();
        let e = forward_with(&q, &kv, &kv, CudaKernels::Flash).unwrap_err().to_string();
        assert!(e.contains("head_dim 1..=128") && e.contains("130"), "{e}");
        let (o, lse) = forward(&q, &kv, &kv).unwrap();
        let host = |x: &Tensor| x.to_device(&cpu).unwrap();
        let (o_ref, lse_ref) = forward(&host(&q), &host(&kv), &host(&kv)).unwrap();
        assert_close("o, D = 130", &o.to_f32_vec().unwrap(), &o_ref.to_f32_vec().unwrap(), 1e-5, 1e-4);
        assert_close("lse, D = 130", &lse.to_f32_vec().unwrap(), &lse_ref.to_f32_vec().unwrap(), 1e-5, 1e-4);
        let q = Tensor::zeros([1, 3, 2, 8], DType::F32, &gpu).unwrap();
        let kv_cpu = Tensor::zeros([1, 3, 1, 8], DType::F32, &Device::cpu()).unwrap();
        assert!(matches!(forward(&q, &kv_cpu, &kv_cpu), Err(Error::DeviceMismatch { .. })));
    }

    /// The gemm-based CPU path against the f64 reference, forward and backward.
    #[test]
    fn fast_cpu_path_matches_reference() {
        for (batch, seq, q_heads, kv_heads, head_dim) in
            [(1, 1, 1, 1, 3), (2, 7, 4, 2, 5), (1, 33, 9, 3, 64), (2, 65, 6, 6, 16)]
        {
            let d = Dims { batch, seq, q_heads, kv_heads, head_dim };
            let q = random_f32(d.q_len(), 1.0, 1);
            let k = random_f32(d.kv_len(), 1.0, 2);
            let v = random_f32(d.kv_len(), 1.0, 3);
            let d_o = random_f32(d.q_len(), 1.0, 4);
            let (mut o_ref, mut lse_ref) = (vec![0f32; d.q_len()], vec![0f32; d.lse_len()]);
            cpu::forward(&q, &k, &v, d, &mut o_ref, &mut lse_ref);
            let (mut o, mut lse) = (vec![f32::NAN; d.q_len()], vec![f32::NAN; d.lse_len()]);
            cpu_fast::forward(&q, &k, &v, d, &mut o, &mut lse);
            let what = format!("{d:?}");
            assert_close(&format!("fast o {what}"), &o, &o_ref, 1e-5, 1e-4);
            assert_close(&format!("fast lse {what}"), &lse, &lse_ref, 1e-5, 1e-5);
            let grads = |fast: bool| {
                let (mut dq, mut dk, mut dv) =
                    (vec![f32::NAN; d.q_len()], vec![f32::NAN; d.kv_len()], vec![f32::NAN; d.kv_len()]);
                if fast {
                    cpu_fast::backward(
                        &q,
                        &k,
                        &v,
                        &o_ref,
                        &lse_ref,
                        &d_o,
                        d,
                        Some(&mut dq),
                        Some(&mut dk),
                        Some(&mut dv),
                    );
                } else {
                    cpu::backward(&q, &k, &v, &o_ref, &lse_ref, &d_o, d, Some(&mut dq), Some(&mut dk), Some(&mut dv));
                }
                (dq, dk, dv)
            };
            let (fq, fk, fv) = grads(true);
            let (rq, rk, rv) = grads(false);
            assert_close(&format!("fast dq {what}"), &fq, &rq, 1e-5, 1e-4);
            assert_close(&format!("fast dk {what}"), &fk, &rk, 1e-5, 1e-4);
            assert_close(&format!("fast dv {what}"), &fv, &rv, 1e-5, 1e-4);
        }
    }
}
