//! SwiGLU gating of a LLaMA MLP: `h = silu(gate) · up` with `silu(g) = g·σ(g)`.
//! gate, up, h: the same shape (any), F32 or BF16.
//! Backward: `dgate = dh·up·σ(g)·(1 + g·(1 − σ(g)))`, `dup = dh·silu(g)`.
//! On the CPU the forward runs [`cpu_fast`] (tested against the reference [`cpu`]), the
//! backward the reference.

pub mod cpu;
pub mod cpu_fast;
pub mod cuda;

use crate::autograd::{Saved, Tape};
use crate::ops::{cuda_device, cuda_tensor, expect_alike, expect_float, host_f32};
use crate::{with_compute_type, Device, Result, Tensor};

fn check(gate: &Tensor, up: &Tensor) -> Result<usize> {
    expect_float("swiglu", gate)?;
    expect_alike("swiglu", gate, up)?;
    Ok(gate.elem_count())
}

/// `silu(gate) · up` without recording.
pub fn forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let n = check(gate, up)?;
    match gate.device() {
        Device::Cpu(_) => {
            let mut h = vec![0f32; n];
            cpu_fast::forward(&host_f32(gate)?, &host_f32(up)?, &mut h);
            Tensor::from_f32(h, gate.shape().clone(), gate.dtype(), gate.device())
        }
        Device::Cuda(_) => with_compute_type!(gate.dtype(), "swiglu", T => {
            let dev = cuda_device(gate)?;
            let mut h = dev.alloc::<T>(n)?;
            cuda::forward::<T>(dev, &gate.read()?.cuda()?.slice(..), &up.read()?.cuda()?.slice(..), h.slice_mut(), n)?;
            cuda_tensor(h, gate.shape().clone(), gate.device())
        }),
    }
}

/// Gradients `(dgate, dup)` given `dh`, each computed only when asked for.
pub fn backward(
    gate: &Tensor,
    up: &Tensor,
    dh: &Tensor,
    want_gate: bool,
    want_up: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let n = check(gate, up)?;
    expect_alike("swiglu backward", gate, dh)?;
    let shape = gate.shape().clone();
    match gate.device() {
        Device::Cpu(_) => {
            let mut dgate = want_gate.then(|| vec![0f32; n]);
            let mut dup = want_up.then(|| vec![0f32; n]);
            cpu::backward(&host_f32(gate)?, &host_f32(up)?, &host_f32(dh)?, dgate.as_deref_mut(), dup.as_deref_mut());
            Ok((
                dgate.map(|v| Tensor::from_f32(v, shape.clone(), gate.dtype(), gate.device())).transpose()?,
                dup.map(|v| Tensor::from_f32(v, shape.clone(), gate.dtype(), gate.device())).transpose()?,
            ))
        }
        Device::Cuda(_) => with_compute_type!(gate.dtype(), "swiglu", T => {
            let dev = cuda_device(gate)?;
            let mut dgate = if want_gate { Some(dev.alloc::<T>(n)?) } else { None };
            let mut dup = if want_up { Some(dev.alloc::<T>(n)?) } else { None };
            if dgate.is_some() || dup.is_some() {
                cuda::backward::<T>(
                    dev, &gate.read()?.cuda()?.slice(..), &up.read()?.cuda()?.slice(..), dh.read()?.cuda()?,
                    dgate.as_mut().map(|b| b.slice_mut()), dup.as_mut().map(|b| b.slice_mut()), n,
                )?;
            }
            Ok((
                dgate.map(|b| cuda_tensor(b, shape.clone(), gate.device())).transpose()?,
                dup.map(|b| cuda_tensor(b, shape.clone(), gate.device())).transpose()?,
            ))
        }),
    }
}

/// `silu(gate) · up`, recorded on `tape` when gate or up is tracked (saves gate and up).
pub fn swiglu(tape: Option<&mut Tape>, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let h = forward(gate, up)?;
    if let Some(tape) = tape {
        tape.record("swiglu", &[gate, up], &h, vec![Saved::Keep(gate.clone()), Saved::Keep(up.clone())], |ctx| {
            let (dgate, dup) = backward(ctx.saved(0)?, ctx.saved(1)?, ctx.grad_out(), ctx.needs(0), ctx.needs(1))?;
            ctx.add_grads([dgate, dup])
        });
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f64, finite_diff, random_f32, random_f64};
    use crate::{device::cuda_for_tests, DType};

    #[test]
    fn backward_matches_finite_differences() {
        let n = 23;
        // Scale 6 reaches the saturated ends of σ as well as its middle.
        let gate = random_f64(n, 6.0, 1);
        let up = random_f64(n, 2.0, 2);
        let dh = random_f64(n, 1.0, 3);
        let fwd = |g: &[f64], u: &[f64]| {
            let mut h = vec![0.0; n];
            cpu::forward(g, u, &mut h);
            h
        };
        let mut dgate = vec![0.0; n];
        let mut dup = vec![0.0; n];
        cpu::backward(&gate, &up, &dh, Some(&mut dgate), Some(&mut dup));
        let fd_gate = finite_diff(|g| fwd(g, &up), &gate, &dh, 1e-6);
        let fd_up = finite_diff(|u| fwd(&gate, u), &up, &dh, 1e-6);
        assert_close_f64("swiglu dgate", &dgate, &fd_gate, 1e-8, 1e-6);
        assert_close_f64("swiglu dup", &dup, &fd_up, 1e-8, 1e-6);
    }

    /// The fast path against the reference in f64, atol 1e-30 + rtol 1e-6: gates across
    /// σ's range (scale 12), at its ends and at the fast exp's cut (−87), in a length that
    /// leaves a partial vector; the ends ±∞ and NaN as the reference gives them; and the
    /// instruction sets equal bit for bit.
    #[test]
    fn fast_path_matches_reference() {
        let mut gate = random_f32(4099, 12.0, 7);
        gate.extend([0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 86.9, 87.1, -86.9, -87.1, -100.0, 100.0, 1e30, -1e30]);
        let up = random_f32(gate.len(), 2.0, 8);
        let mut h = vec![0f32; gate.len()];
        cpu_fast::forward(&gate, &up, &mut h);
        let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let mut want = vec![0f64; gate.len()];
        cpu::forward(&wide(&gate), &wide(&up), &mut want);
        assert_close_f64("swiglu fast path", &wide(&h), &want, 1e-30, 1e-6);

        let mut portable = vec![0f32; gate.len()];
        cpu_fast::forward_portable(&gate, &up, &mut portable);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&h), bits(&portable), "the instruction sets disagree");

        let ends = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
        let mut h = [0f32; 3];
        cpu_fast::forward(&ends, &[2.0; 3], &mut h);
        let mut want = [0f32; 3];
        cpu::forward(&ends, &[2.0; 3], &mut want);
        assert_eq!(h[0], want[0], "silu(+inf)·2");
        assert!(h[1].is_nan() && want[1].is_nan(), "silu(-inf) = -inf·0: {} and {}", h[1], want[1]);
        assert!(h[2].is_nan() && want[2].is_nan(), "NaN stays NaN: {} and {}", h[2], want[2]);
    }

    #[test]
    fn tape_routes_gradients_to_watched_inputs_only() {
        let dev = Device::cpu();
        let gate = Tensor::from_f32(random_f32(12, 3.0, 4), [3, 4], DType::F32, &dev).unwrap();
        let up = Tensor::from_f32(random_f32(12, 1.0, 5), [3, 4], DType::F32, &dev).unwrap();
        let dh = Tensor::from_f32(random_f32(12, 1.0, 6), [3, 4], DType::F32, &dev).unwrap();

        let mut untracked = Tape::new();
        swiglu(Some(&mut untracked), &gate, &up).unwrap();
        assert!(untracked.is_empty(), "nothing is tracked, so nothing is recorded");

        let mut tape = Tape::new();
        tape.watch(&up);
        let h = swiglu(Some(&mut tape), &gate, &up).unwrap();
        let mut grads = crate::Grads::new();
        tape.backward_from(&h, dh.clone(), &mut grads).unwrap();
        let (_, dup) = backward(&gate, &up, &dh, false, true).unwrap();
        assert_eq!(grads.get(&up).unwrap().to_f32_vec().unwrap(), dup.unwrap().to_f32_vec().unwrap());
        assert!(grads.get(&gate).is_none(), "gate is not watched, so it gets no gradient");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::cpu();
        let gate = Tensor::zeros([2, 5], DType::F32, &dev).unwrap();
        let up = Tensor::zeros([2, 4], DType::F32, &dev).unwrap();
        let e = forward(&gate, &up).unwrap_err().to_string();
        assert!(e.contains("[2, 5]") && e.contains("[2, 4]"), "{e}");

        let up_bf16 = Tensor::zeros([2, 5], DType::BF16, &dev).unwrap();
        let e = forward(&gate, &up_bf16).unwrap_err().to_string();
        assert!(e.contains("bf16"), "{e}");

        let ids = Tensor::zeros([2, 5], DType::U32, &dev).unwrap();
        assert!(forward(&ids, &ids).is_err(), "integer tensors are rejected");

        let up = Tensor::zeros([2, 5], DType::F32, &dev).unwrap();
        let dh = Tensor::zeros([5, 2], DType::F32, &dev).unwrap();
        let e = backward(&gate, &up, &dh, true, true).unwrap_err().to_string();
        assert!(e.contains("[2, 5]") && e.contains("[5, 2]"), "{e}");
    }

    #[test]
    fn cuda_matches_cpu() {
        let Some(gpu) = cuda_for_tests("swiglu::cuda_matches_cpu") else { return };
        let cpu = Device::cpu();
        for (dtype, atol, rtol) in [(DType::F32, 1e-5, 1e-4), (DType::BF16, 1e-2, 1e-2)] {
            for dims in [vec![1], vec![3, 33], vec![37, 577], vec![5, 7, 4099]] {
                let n: usize = dims.iter().product();
                let mk = |scale, seed| Tensor::from_f32(random_f32(n, scale, seed), dims.clone(), dtype, &cpu).unwrap();
                let (gate, up, dh) = (mk(8.0, 20), mk(1.0, 21), mk(1.0, 22));
                let on_gpu = |t: &Tensor| t.to_device(&gpu).unwrap();
                let (gate_g, up_g, dh_g) = (on_gpu(&gate), on_gpu(&up), on_gpu(&dh));
                let what = format!("swiglu {dtype} {dims:?}");
                let h = forward(&gate, &up).unwrap().to_f32_vec().unwrap();
                let h_g = forward(&gate_g, &up_g).unwrap().to_f32_vec().unwrap();
                assert_close(&format!("{what} h"), &h_g, &h, atol, rtol);
                let (dgate, dup) = backward(&gate, &up, &dh, true, true).unwrap();
                let (dgate_g, dup_g) = backward(&gate_g, &up_g, &dh_g, true, true).unwrap();
                let host = |t: Option<Tensor>| t.unwrap().to_f32_vec().unwrap();
                assert_close(&format!("{what} dgate"), &host(dgate_g), &host(dgate), atol, rtol);
                assert_close(&format!("{what} dup"), &host(dup_g), &host(dup), atol, rtol);
                // One output alone: the other pointer is null and must stay untouched.
                let (none, dup_only) = backward(&gate_g, &up_g, &dh_g, false, true).unwrap();
                assert!(none.is_none());
                let (_, dup) = backward(&gate, &up, &dh, false, true).unwrap();
                assert_close(&format!("{what} dup alone"), &host(dup_only), &host(dup), atol, rtol);
            }
        }
    }
}
