//! AdamW update of a trained tensor with f32 master weights and f32 moments, and the sum
//! of squares of a gradient (for clipping by global norm).
//!
//! `step(param [n] (F32|BF16), master [n] F32 | None, m [n] F32, v [n] F32, grad [n] F32,
//! hyper)`: with a master, the update happens in f32 on the master and `param`
//! receives it rounded to its dtype (bf16 compute, f32 master weights); without one,
//! `param` must be F32 and is updated in place. See [`cpu::adamw`] for the formula.

pub mod cpu;
pub mod cuda;

use crate::ops::{cuda_device, expect_float, host_f32};
use crate::storage::FloatElement;
use crate::{with_compute_type, DType, Device, Error, Result, Tensor};

/// AdamW hyper-parameters for one update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// Learning rate of this step.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// 1-based step number (for the bias corrections).
    pub step: u64,
    /// Factor applied to the gradient first (1 / accumulation steps × clipping factor).
    pub grad_scale: f32,
}

impl Hyper {
    /// (1 − β1ᵗ, √(1 − β2ᵗ)), computed in f64.
    pub fn bias_corrections(&self) -> (f32, f32) {
        let t = self.step.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - f64::from(self.beta1).powi(t);
        let bc2 = 1.0 - f64::from(self.beta2).powi(t);
        (bc1 as f32, bc2.sqrt() as f32)
    }
}

/// One AdamW update of `param` (see the module docs).
pub fn step(param: &Tensor, master: Option<&Tensor>, m: &Tensor, v: &Tensor, grad: &Tensor, h: &Hyper) -> Result<()> {
    const OP: &str = "adamw";
    expect_float(OP, param)?;
    if h.step == 0 {
        return Err(Error::invalid("adamw: steps count from 1"));
    }
    let n = param.elem_count();
    let mut state = vec![m, v, grad];
    state.extend(master);
    for t in &state {
        if t.dtype() != DType::F32 || !t.device().same(param.device()) {
            return Err(Error::invalid("adamw: master, moments and gradient must be F32 on the parameter's device"));
        }
        if t.elem_count() != n {
            return Err(Error::ShapeMismatch { op: OP, lhs: param.shape().clone(), rhs: t.shape().clone() });
        }
    }
    let all: Vec<&Tensor> = state.iter().copied().chain([param]).collect();
    for (i, a) in all.iter().enumerate() {
        if all[i + 1..].iter().any(|b| a.same_storage(b)) {
            return Err(Error::invalid("adamw: parameter, master, moments and gradient must not share storage"));
        }
    }
    if master.is_none() && param.dtype() != DType::F32 {
        return Err(Error::invalid("adamw: a bf16 parameter needs an f32 master copy"));
    }
    match param.device() {
        Device::Cpu(_) => {
            let g = host_f32(grad)?;
            let (mut mg, mut vg) = (m.write()?, v.write()?);
            let (ms, vs) = (mg.cpu_mut::<f32>()?, vg.cpu_mut::<f32>()?);
            let mut pg = param.write()?;
            match master {
                None => cpu::adamw(pg.cpu_mut::<f32>()?, ms, vs, &g, h),
                Some(mst) => {
                    let mut mstg = mst.write()?;
                    let p32 = mstg.cpu_mut::<f32>()?;
                    cpu::adamw(p32, ms, vs, &g, h);
                    with_compute_type!(param.dtype(), OP, T => {
                        round_into::<T>(p32, pg.cpu_mut::<T>()?);
                        Ok(())
                    })?;
                }
            }
            Ok(())
        }
        Device::Cuda(_) => with_compute_type!(param.dtype(), OP, T => {
            let dev = cuda_device(param)?;
            let (mut mg, mut vg, gg, mut pg) = (m.write()?, v.write()?, grad.read()?, param.write()?);
            let mut mstg = match master {
                Some(t) => Some(t.write()?),
                None => None,
            };
            let mst = match mstg.as_mut() {
                Some(g) => Some(g.cuda_mut::<f32>()?),
                None => None,
            };
            cuda::adamw::<T>(dev, pg.cuda_mut::<T>()?, mst, mg.cuda_mut()?, vg.cuda_mut()?, gg.cuda::<f32>()?, n, h)
        }),
    }
}

fn round_into<T: FloatElement>(src: &[f32], dst: &mut [T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = T::from_f32(s);
    }
}

/// Σ x² of a float tensor, in f64.
pub fn sum_squares(x: &Tensor) -> Result<f64> {
    expect_float("sum_squares", x)?;
    match x.device() {
        Device::Cpu(_) => Ok(cpu::sum_squares(&host_f32(x)?)),
        Device::Cuda(_) => with_compute_type!(x.dtype(), "sum_squares", T => {
            cuda::sum_squares::<T>(cuda_device(x)?, x.read()?.cuda::<T>()?, x.elem_count())
        }),
    }
}

/// An F32 tensor of zeros shaped like `t` on its device (a fresh moment buffer).
pub fn zeros_like_f32(t: &Tensor) -> Result<Tensor> {
    Tensor::zeros(t.shape().clone(), DType::F32, t.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cuda_for_tests;
    use crate::testing::{assert_close, random_f32};

    fn hyper(step: u64) -> Hyper {
        Hyper { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step, grad_scale: 1.0 }
    }

    #[test]
    fn two_steps_match_a_hand_worked_case() {
        let cpu = Device::cpu();
        let p = Tensor::from_f32(vec![1.0, -2.0], [2], DType::F32, &cpu).unwrap();
        let (m, v) = (zeros_like_f32(&p).unwrap(), zeros_like_f32(&p).unwrap());
        let g1 = Tensor::from_f32(vec![0.5, 0.0], [2], DType::F32, &cpu).unwrap();
        step(&p, None, &m, &v, &g1, &hyper(1)).unwrap();
        // Step 1: m̂ = g, v̂ = g², so p ← p(1 − lr·wd) − lr·g/(|g| + eps).
        let want1 = [1.0 * (1.0 - 0.001) - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 * (1.0 - 0.001)];
        assert_close("step 1", &p.to_f32_vec().unwrap(), &want1.map(|x| x as f32), 1e-7, 1e-6);
        let g2 = Tensor::from_f32(vec![-1.0, 2.0], [2], DType::F32, &cpu).unwrap();
        step(&p, None, &m, &v, &g2, &hyper(2)).unwrap();
        let mut want2 = [0f64; 2];
        for (i, (&a, &b)) in [0.5f64, 0.0].iter().zip(&[-1.0f64, 2.0]).enumerate() {
            let m2 = 0.9 * (0.1 * a) + 0.1 * b;
            let v2 = 0.999 * (0.001 * a * a) + 0.001 * b * b;
            let (bc1, bc2) = (1.0 - 0.81, (1.0 - 0.999f64 * 0.999).sqrt());
            want2[i] = want1[i] * (1.0 - 0.001) - (0.1 / bc1) * m2 / (v2.sqrt() / bc2 + 1e-8);
        }
        assert_close("step 2", &p.to_f32_vec().unwrap(), &want2.map(|x| x as f32), 1e-6, 1e-6);
    }

    #[test]
    fn master_copy_rounds_into_bf16_and_bad_inputs_are_errors() {
        let cpu = Device::cpu();
        let p = Tensor::from_f32(vec![1.0, 2.0, 3.0], [3], DType::BF16, &cpu).unwrap();
        let master = p.to_dtype(DType::F32).unwrap();
        let (m, v) = (zeros_like_f32(&p).unwrap(), zeros_like_f32(&p).unwrap());
        let g = Tensor::from_f32(vec![1e-3, -1e-3, 0.0], [3], DType::F32, &cpu).unwrap();
        let mut h = hyper(1);
        h.lr = 1e-4; // smaller than bf16's spacing at 1..3: only the master moves
        step(&p, Some(&master), &m, &v, &g, &h).unwrap();
        let mv = master.to_f32_vec().unwrap();
        assert!(mv[0] < 1.0 && mv[1] > 2.0, "master moved: {mv:?}");
        assert_eq!(p.to_f32_vec().unwrap(), mv.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect::<Vec<_>>());
        assert!(step(&p, None, &m, &v, &g, &h).is_err(), "bf16 without master");
        assert!(step(&master, None, &m, &m, &g, &h).is_err(), "shared storage");
        assert!(step(&master, None, &m, &v, &g, &hyper(0)).is_err(), "step 0");
        assert!(step(&p, Some(&master), &m, &v, &g.to_dtype(DType::BF16).unwrap(), &h).is_err(), "bf16 gradient");
    }

    #[test]
    fn cuda_matches_cpu() {
        let Some(gpu) = cuda_for_tests("adamw::cuda_matches_cpu") else { return };
        let n = 5003;
        for dtype in [DType::F32, DType::BF16] {
            let init = random_f32(n, 1.0, 1);
            let mut results = Vec::new();
            for dev in [Device::cpu(), gpu.clone()] {
                let p = Tensor::from_f32(init.clone(), [n], dtype, &dev).unwrap();
                let master = (dtype != DType::F32).then(|| p.to_dtype(DType::F32).unwrap());
                let (m, v) = (zeros_like_f32(&p).unwrap(), zeros_like_f32(&p).unwrap());
                for s in 1..=3 {
                    let g = Tensor::from_f32(random_f32(n, 0.1, 10 + s), [n], DType::F32, &dev).unwrap();
                    let h = Hyper { grad_scale: 0.5, ..hyper(s) };
                    step(&p, master.as_ref(), &m, &v, &g, &h).unwrap();
                }
                let norm = sum_squares(&p).unwrap();
                results.push((master.unwrap_or(p).to_f32_vec().unwrap(), m.to_f32_vec().unwrap(), norm));
            }
            let (c, g) = (&results[0], &results[1]);
            assert_close(&format!("{dtype:?} master"), &g.0, &c.0, 1e-6, 1e-5);
            assert_close(&format!("{dtype:?} m"), &g.1, &c.1, 1e-7, 1e-5);
            let rel = (g.2 - c.2).abs() / c.2;
            assert!(rel < 1e-5, "{dtype:?} sum of squares: gpu {} cpu {} (rel {rel:e}, rtol 1e-5)", g.2, c.2);
        }
    }
}
