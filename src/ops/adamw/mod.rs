//! AdamW update of a trained tensor with f32 master weights and f32 moments, and the sum
//! of squares of a gradient (for clipping by global norm).
//!
//! `step(param [n] (F32|BF16), master [n] F32 | None, m [n] F32, v [n] F32, grad [n] F32,
//! hyper)`: with a master, the update happens in f32 on the master and `param`
//! receives it rounded to its dtype (bf16 compute, f32 master weights); without one,
//! `param` must be F32 and is updated in place. See [`cpu::adamw`] for the formula.
//!
//! `clipped_step(updates, hyper, micro, max_norm)`: one step of a whole list of tensors, the
//! gradients (sums over `micro` micro-batches) scaled by the factor of clipping by global
//! norm ([`cpu::clip_scale`]); returns the norm. On CUDA it is two launches per kind of
//! parameter present (bf16 with master, f32 with master, f32 in place: the norm into a device
//! scalar, then the update) and one copy of the norm to the host at the end, instead of a
//! launch and a host round trip per tensor.

pub mod cpu;
pub mod cuda;

use crate::ops::{cuda_device, expect_float, host_f32};
use crate::storage::{FloatElement, Storage};
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

/// Error unless `param`, `master`, `m`, `v` and `grad` can take an update (see the module
/// docs).
fn check(param: &Tensor, master: Option<&Tensor>, m: &Tensor, v: &Tensor, grad: &Tensor, h: &Hyper) -> Result<()> {
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
    Ok(())
}

/// One AdamW update of `param` (see the module docs).
pub fn step(param: &Tensor, master: Option<&Tensor>, m: &Tensor, v: &Tensor, grad: &Tensor, h: &Hyper) -> Result<()> {
    const OP: &str = "adamw";
    check(param, master, m, v, grad, h)?;
    let n = param.elem_count();
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

/// One tensor of a [`clipped_step`]: the buffers [`step`] takes.
#[derive(Clone, Copy, Debug)]
pub struct Update<'a> {
    /// The trained tensor (F32, or BF16 with a master).
    pub param: &'a Tensor,
    /// Its F32 master copy (None when `param` is F32 and is its own).
    pub master: Option<&'a Tensor>,
    /// First moment (F32).
    pub m: &'a Tensor,
    /// Second moment (F32).
    pub v: &'a Tensor,
    /// Gradient summed over the step's micro-batches (F32).
    pub grad: &'a Tensor,
}

/// One AdamW step of every tensor of `updates`: each gradient is scaled by the factor of
/// [`cpu::clip_scale`] (global norm over all gradients, `micro` micro-batches, clipping to
/// `max_norm` when given) and nothing changes when that norm is not finite (the step is
/// skipped). Returns the global norm. `h.grad_scale` must be 1: the factor comes from the
/// norm. On CUDA the norm stays on the device until the end (see the module docs).
pub fn clipped_step(updates: &[Update<'_>], h: &Hyper, micro: u32, max_norm: Option<f32>) -> Result<f64> {
    if h.grad_scale != 1.0 {
        return Err(Error::invalid("adamw: a clipped step takes its gradient factor from the norm (grad_scale 1)"));
    }
    if micro == 0 {
        return Err(Error::invalid("adamw: a step sums at least one micro-batch"));
    }
    if max_norm.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
        return Err(Error::invalid(format!("adamw: max_norm must be positive, got {max_norm:?}")));
    }
    let Some(first) = updates.first() else { return Err(Error::invalid("adamw: a step of no tensor")) };
    for (i, u) in updates.iter().enumerate() {
        check(u.param, u.master, u.m, u.v, u.grad, h)?;
        if !u.param.device().same(first.param.device()) {
            return Err(Error::invalid(format!("adamw: tensor {i} is not on the device of tensor 0")));
        }
    }
    // A set of storages, not a test of every pair: a 7B step holds ~2,200 tensors.
    let mut storages = std::collections::HashSet::with_capacity(5 * updates.len());
    let all = updates.iter().flat_map(|u| [u.param, u.m, u.v, u.grad].into_iter().chain(u.master));
    for t in all {
        if !storages.insert(t.storage_key()) {
            return Err(Error::invalid("adamw: the tensors of a step must not share storage"));
        }
    }
    match first.param.device() {
        Device::Cpu(_) => {
            let mut sq = 0f64;
            for u in updates {
                sq += sum_squares(u.grad)?;
            }
            let (norm, scale) = cpu::clip_scale(sq, micro, max_norm);
            if let Some(grad_scale) = scale {
                let h = Hyper { grad_scale, ..*h };
                for u in updates {
                    step(u.param, u.master, u.m, u.v, u.grad, &h)?;
                }
            }
            Ok(norm)
        }
        Device::Cuda(_) => clipped_step_cuda(updates, h, micro, max_norm),
    }
}

/// [`clipped_step`] on CUDA (the checks done): tables of device addresses per kind of
/// parameter (bf16 with master, f32 with master, f32 in place), the norm, the updates, then
/// the one read of the norm.
fn clipped_step_cuda(updates: &[Update<'_>], h: &Hyper, micro: u32, max_norm: Option<f32>) -> Result<f64> {
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    let dev = cuda_device(updates[0].param)?;
    let stream = dev.stream();
    // Every buffer locked until the launches are queued.
    let mut params = updates.iter().map(|u| u.param.write()).collect::<Result<Vec<_>>>()?;
    let mut masters = updates.iter().map(|u| u.master.map(Tensor::write).transpose()).collect::<Result<Vec<_>>>()?;
    let mut ms = updates.iter().map(|u| u.m.write()).collect::<Result<Vec<_>>>()?;
    let mut vs = updates.iter().map(|u| u.v.write()).collect::<Result<Vec<_>>>()?;
    let grads = updates.iter().map(|u| u.grad.read()).collect::<Result<Vec<_>>>()?;
    let mut syncs = Vec::with_capacity(5 * updates.len());
    // Rows of bf16 with master, f32 with master, f32 in place.
    let mut kinds: [Vec<cuda::Row>; 3] = Default::default();
    let guards = params.iter_mut().zip(&mut masters).zip(&mut ms).zip(&mut vs).zip(&grads);
    for (u, ((((p, mst), m), v), g)) in updates.iter().zip(guards) {
        let dtype = u.param.dtype();
        let (param, sync) = match dtype {
            DType::BF16 => p.cuda_mut::<half::bf16>()?.device_ptr_mut(stream),
            _ => p.cuda_mut::<f32>()?.device_ptr_mut(stream),
        };
        syncs.push(sync);
        let master = match mst {
            Some(t) => f32_address(t, stream, &mut syncs)?,
            None => 0,
        };
        let (m, v) = (f32_address(m, stream, &mut syncs)?, f32_address(v, stream, &mut syncs)?);
        let (grad, sync) = g.cuda::<f32>()?.device_ptr(stream);
        syncs.push(sync);
        let kind = match (dtype, master) {
            (DType::BF16, _) => 0,
            (_, 0) => 2,
            _ => 1,
        };
        kinds[kind].push(cuda::Row { param, master, m, v, grad, len: u.param.elem_count() });
    }
    // One table per kind on the device, for both its norm launch and its update launch.
    let tables: Vec<(usize, cuda::MultiTables)> = kinds
        .iter()
        .enumerate()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(kind, rows)| Ok((kind, cuda::MultiTables::new(dev, rows)?)))
        .collect::<Result<_>>()?;
    let mut sumsq = dev.alloc_zeros::<f64>(1)?;
    // SAFETY: each row's buffers are locked above, of its length (checked) and type (F32
    // moments, master and gradient; the parameter's dtype picks its kernel), and distinct
    // (checked); the launches queue on the one stream in order, every norm before any update.
    unsafe {
        for (_, t) in &tables {
            cuda::multi_sum_squares(dev, t, sumsq.slice_mut())?;
        }
        for (kind, t) in &tables {
            match kind {
                0 => cuda::multi_adamw::<half::bf16>(dev, t, false, sumsq.slice(), micro, max_norm, h)?,
                1 => cuda::multi_adamw::<f32>(dev, t, false, sumsq.slice(), micro, max_norm, h)?,
                _ => cuda::multi_adamw::<f32>(dev, t, true, sumsq.slice(), micro, max_norm, h)?,
            }
        }
    }
    drop(syncs);
    let sq = dev.dtoh(sumsq.slice())?[0];
    Ok(cpu::clip_scale(sq, micro, max_norm).0)
}

/// The device address of an F32 CUDA buffer to be written, its stream guard kept in `syncs`.
fn f32_address<'a>(
    t: &'a mut Storage,
    stream: &'a std::sync::Arc<cudarc::driver::CudaStream>,
    syncs: &mut Vec<cudarc::driver::SyncOnDrop<'a>>,
) -> Result<u64> {
    use cudarc::driver::DevicePtrMut;
    let (ptr, sync) = t.cuda_mut::<f32>()?.device_ptr_mut(stream);
    syncs.push(sync);
    Ok(ptr)
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

    /// Fresh F32 state (moments, and a master for a BF16 parameter) for `init` on `dev`.
    fn state(init: &[f32], dtype: DType, dev: &Device) -> (Tensor, Option<Tensor>, Tensor, Tensor) {
        let p = Tensor::from_f32(init.to_vec(), [init.len()], dtype, dev).unwrap();
        let master = (dtype != DType::F32).then(|| p.to_dtype(DType::F32).unwrap());
        (p.clone(), master, zeros_like_f32(&p).unwrap(), zeros_like_f32(&p).unwrap())
    }

    fn f32s(values: &[f32], dev: &Device) -> Tensor {
        Tensor::from_f32(values.to_vec(), [values.len()], DType::F32, dev).unwrap()
    }

    /// Gradients [3, 0] and [4] summed over 2 micro-batches: global norm √25 / 2 = 2.5,
    /// clipped to 1: factor (1 / (2.5 + 1e-6)) / 2 ≈ 0.2, so m = 0.1 · 0.2 · g after step 1.
    #[test]
    fn clipped_step_matches_a_hand_worked_case() {
        let cpu = Device::cpu();
        let (a, b) = (state(&[1.0, 2.0], DType::F32, &cpu), state(&[3.0], DType::BF16, &cpu));
        let (ga, gb) = (f32s(&[3.0, 0.0], &cpu), f32s(&[4.0], &cpu));
        let updates = [
            Update { param: &a.0, master: None, m: &a.2, v: &a.3, grad: &ga },
            Update { param: &b.0, master: b.1.as_ref(), m: &b.2, v: &b.3, grad: &gb },
        ];
        let norm = clipped_step(&updates, &hyper(1), 2, Some(1.0)).unwrap();
        assert!((norm - 2.5).abs() < 1e-12, "norm {norm}");
        let factor = (1.0 / (2.5 + 1e-6)) / 2.0;
        let m = |g: f64| (0.1 * factor * g) as f32;
        assert_close("m of a", &a.2.to_f32_vec().unwrap(), &[m(3.0), 0.0], 1e-9, 1e-6);
        assert_close("m of b", &b.2.to_f32_vec().unwrap(), &[m(4.0)], 1e-9, 1e-6);
        // 1 − β2 as the update computes it in f32 (0.000999987…).
        let v = |g: f64| (f64::from(1.0f32 - 0.999) * (factor * g).powi(2)) as f32;
        assert_close("v of a", &a.3.to_f32_vec().unwrap(), &[v(3.0), 0.0], 1e-12, 1e-5);
        // Unclipped (a limit above the norm): the factor is 1 / micro.
        let (c, gc) = (state(&[1.0], DType::F32, &cpu), f32s(&[3.0], &cpu));
        let one = [Update { param: &c.0, master: None, m: &c.2, v: &c.3, grad: &gc }];
        assert_eq!(clipped_step(&one, &hyper(1), 2, Some(10.0)).unwrap(), 1.5);
        assert_close("unclipped m", &c.2.to_f32_vec().unwrap(), &[0.1 * 1.5], 1e-9, 1e-6);
    }

    /// A gradient with a NaN: the norm is NaN and no buffer changes.
    #[test]
    fn clipped_step_skips_a_non_finite_norm() {
        let cpu = Device::cpu();
        let (a, b) = (state(&[1.0, 2.0], DType::F32, &cpu), state(&[3.0], DType::BF16, &cpu));
        let (ga, gb) = (f32s(&[3.0, 1.0], &cpu), f32s(&[f32::NAN], &cpu));
        let updates = [
            Update { param: &a.0, master: None, m: &a.2, v: &a.3, grad: &ga },
            Update { param: &b.0, master: b.1.as_ref(), m: &b.2, v: &b.3, grad: &gb },
        ];
        assert!(clipped_step(&updates, &hyper(1), 1, Some(1.0)).unwrap().is_nan());
        assert_eq!(a.0.to_f32_vec().unwrap(), [1.0, 2.0]);
        assert_eq!(b.1.as_ref().unwrap().to_f32_vec().unwrap(), [3.0]);
        assert_eq!([a.2.to_f32_vec().unwrap(), a.3.to_f32_vec().unwrap()], [[0.0; 2], [0.0; 2]]);
    }

    #[test]
    fn clipped_step_refuses_bad_input_by_name() {
        let cpu = Device::cpu();
        let (a, b) = (state(&[1.0], DType::F32, &cpu), state(&[2.0], DType::F32, &cpu));
        let g = f32s(&[1.0], &cpu);
        let one = [Update { param: &a.0, master: None, m: &a.2, v: &a.3, grad: &g }];
        let err = |updates: &[Update<'_>], h: &Hyper, micro: u32, max: Option<f32>| {
            clipped_step(updates, h, micro, max).unwrap_err().to_string()
        };
        assert!(err(&one, &Hyper { grad_scale: 0.5, ..hyper(1) }, 1, None).contains("grad_scale"));
        assert!(err(&one, &hyper(1), 0, None).contains("micro-batch"));
        assert!(err(&one, &hyper(1), 1, Some(0.0)).contains("max_norm"));
        assert!(err(&one, &hyper(1), 1, Some(f32::NAN)).contains("max_norm"));
        assert!(err(&[], &hyper(1), 1, None).contains("no tensor"));
        assert!(err(&one, &hyper(0), 1, None).contains("steps count from 1"));
        // The second tensor's moment is the first's.
        let shared = [one[0], Update { param: &b.0, master: None, m: &a.2, v: &b.3, grad: &b.2 }];
        assert!(err(&shared, &hyper(1), 1, None).contains("share storage"));
        assert_eq!(a.0.to_f32_vec().unwrap(), [1.0], "a refused step changes nothing");
    }

    /// One clipped step list of every kind of parameter (BF16 with master, F32 with master,
    /// F32 in place), three steps, on the GPU and the CPU.
    #[test]
    fn clipped_step_cuda_matches_cpu() {
        let Some(gpu) = cuda_for_tests("adamw::clipped_step_cuda_matches_cpu") else { return };
        let sizes = [5003, 1, 4097];
        let mut results = Vec::new();
        for dev in [Device::cpu(), gpu.clone()] {
            let mut tensors: Vec<(Tensor, Option<Tensor>, Tensor, Tensor)> = sizes
                .iter()
                .zip([DType::BF16, DType::F32, DType::F32])
                .enumerate()
                .map(|(i, (&n, dtype))| state(&random_f32(n, 1.0, 1 + i as u64), dtype, &dev))
                .collect();
            tensors[1].1 = Some(tensors[1].0.to_dtype(DType::F32).unwrap());
            let mut norms = Vec::new();
            for s in 1..=3u64 {
                let grads: Vec<Tensor> = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| f32s(&random_f32(n, 0.1, 10 * s + i as u64), &dev))
                    .collect();
                let updates: Vec<Update<'_>> = tensors
                    .iter()
                    .zip(&grads)
                    .map(|(t, g)| Update { param: &t.0, master: t.1.as_ref(), m: &t.2, v: &t.3, grad: g })
                    .collect();
                norms.push(clipped_step(&updates, &hyper(s), 2, (s < 3).then_some(0.5)).unwrap());
            }
            let values: Vec<Vec<f32>> = tensors
                .iter()
                .flat_map(|t| [t.1.clone().unwrap_or(t.0.clone()), t.2.clone()])
                .map(|t| t.to_f32_vec().unwrap())
                .collect();
            results.push((norms, values));
        }
        let (c, g) = (&results[0], &results[1]);
        for (s, (a, b)) in c.0.iter().zip(&g.0).enumerate() {
            assert!((a - b).abs() <= 1e-5 * a, "step {} norm: gpu {b} cpu {a}", s + 1);
        }
        for (i, (a, b)) in c.1.iter().zip(&g.1).enumerate() {
            assert_close(&format!("tensor {} {}", i / 2, ["master", "m"][i % 2]), b, a, 1e-6, 1e-5);
        }
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
