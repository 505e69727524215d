//! RMSNorm over the last dimension: `y = x / sqrt(mean(x²) + eps) · w`.
//! x: [..., dim], w: \[dim\], y like x. Backward gives dx (like x) and dw (like w).
//!
//! Fused with the residual stream of a decoder: [`add_rms_norm`] computes s = x + r and
//! rms_norm(s) in one pass, and the recorded backward folds the gradient x already holds
//! (from the residual add recorded after it) into dx in the same pass, instead of a
//! separate gradient-accumulation add.

pub mod cpu;
pub mod cuda;

use crate::autograd::{Saved, Tape};
use crate::ops::{cuda_device, cuda_tensor, expect_alike, expect_float, expect_same, host_f32};
use crate::{with_compute_type, Device, Error, Result, Tensor};

fn check(x: &Tensor, w: &Tensor) -> Result<(usize, usize)> {
    expect_float("rms_norm", x)?;
    expect_same("rms_norm", &[x, w])?;
    let dim = x.shape().last_dim();
    if w.dims() != [dim] {
        return Err(Error::ShapeMismatch { op: "rms_norm", lhs: x.shape().clone(), rhs: w.shape().clone() });
    }
    Ok((x.shape().rows(), dim))
}

/// Forward without recording.
pub fn forward(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    Ok(forward_impl(x, None, w, eps)?.1)
}

/// `(s, rms_norm(s)·w)` with s = x + res (rounded to the dtype, as [`crate::ops::add`]
/// rounds it), in one pass, without recording.
pub fn forward_residual(x: &Tensor, res: &Tensor, w: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let (s, y) = forward_impl(x, Some(res), w, eps)?;
    Ok((s.ok_or_else(|| Error::invalid("rms_norm: the residual sum is missing"))?, y))
}

fn forward_impl(x: &Tensor, res: Option<&Tensor>, w: &Tensor, eps: f32) -> Result<(Option<Tensor>, Tensor)> {
    let (rows, dim) = check(x, w)?;
    if let Some(res) = res {
        expect_alike("rms_norm residual", x, res)?;
    }
    match x.device() {
        Device::Cpu(_) => {
            let sum = res.map(|r| crate::ops::elementwise::add_forward(x, r)).transpose()?;
            let mut y = vec![0f32; rows * dim];
            cpu::forward(&host_f32(sum.as_ref().unwrap_or(x))?, &host_f32(w)?, eps as f64, dim, &mut y);
            Ok((sum, Tensor::from_f32(y, x.shape().clone(), x.dtype(), x.device())?))
        }
        Device::Cuda(_) => with_compute_type!(x.dtype(), "rms_norm", T => {
            let dev = cuda_device(x)?;
            let mut y = dev.alloc::<T>(rows * dim)?;
            let mut sum = match res {
                Some(_) => Some(dev.alloc::<T>(rows * dim)?),
                None => None,
            };
            let res = res.map(|r| r.read()).transpose()?;
            let residual = match (res.as_ref(), sum.as_mut()) {
                (Some(r), Some(s)) => Some((r.cuda::<T>()?, s.slice_mut())),
                _ => None,
            };
            cuda::forward::<T>(dev, x.read()?.cuda()?, residual, w.read()?.cuda()?, y.slice_mut(), rows, dim, eps)?;
            let sum = sum.map(|s| cuda_tensor(s, x.shape().clone(), x.device())).transpose()?;
            Ok((sum, cuda_tensor(y, x.shape().clone(), x.device())?))
        }),
    }
}

/// Gradients `(dx, dw)`, each computed only when asked for; dx includes `pending` (a
/// gradient x already has, folded in with one rounding) when given.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    eps: f32,
    pending: Option<&Tensor>,
    want_dx: bool,
    want_dw: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (rows, dim) = check(x, w)?;
    expect_alike("rms_norm backward", x, dy)?;
    if let Some(p) = pending {
        expect_alike("rms_norm backward (pending gradient)", x, p)?;
    }
    match x.device() {
        Device::Cpu(_) => {
            let mut dx = want_dx.then(|| vec![0f32; rows * dim]);
            let mut dw = want_dw.then(|| vec![0f32; dim]);
            cpu::backward(
                &host_f32(x)?,
                &host_f32(w)?,
                &host_f32(dy)?,
                eps as f64,
                dim,
                dx.as_deref_mut(),
                dw.as_deref_mut(),
            );
            if let (Some(dx), Some(p)) = (dx.as_mut(), pending) {
                for (d, p) in dx.iter_mut().zip(host_f32(p)?.iter()) {
                    *d += p;
                }
            }
            Ok((
                dx.map(|v| Tensor::from_f32(v, x.shape().clone(), x.dtype(), x.device())).transpose()?,
                dw.map(|v| Tensor::from_f32(v, w.shape().clone(), w.dtype(), w.device())).transpose()?,
            ))
        }
        Device::Cuda(_) => with_compute_type!(x.dtype(), "rms_norm", T => {
            let dev = cuda_device(x)?;
            let mut dx = if want_dx { Some(dev.alloc::<T>(rows * dim)?) } else { None };
            let mut dw = if want_dw { Some(dev.alloc::<T>(dim)?) } else { None };
            let pending = pending.map(|p| p.read()).transpose()?;
            let pending = pending.as_ref().map(|p| p.cuda::<T>()).transpose()?;
            cuda::backward::<T>(
                dev, x.read()?.cuda()?, w.read()?.cuda()?, dy.read()?.cuda()?, pending,
                dx.as_mut().map(|b| b.slice_mut()), dw.as_mut().map(|b| b.slice_mut()),
                rows, dim, eps,
            )?;
            Ok((
                dx.map(|b| cuda_tensor(b, x.shape().clone(), x.device())).transpose()?,
                dw.map(|b| cuda_tensor(b, w.shape().clone(), w.device())).transpose()?,
            ))
        }),
    }
}

/// Records y = rms_norm(x)·w: saves x and w; the backward takes the gradient x already
/// holds and returns it inside dx.
fn record(tape: &mut Tape, x: &Tensor, w: &Tensor, y: &Tensor, eps: f32) {
    tape.record("rms_norm", &[x, w], y, vec![Saved::Keep(x.clone()), Saved::Keep(w.clone())], move |ctx| {
        let pending = if ctx.needs(0) { ctx.take_grad(0) } else { None };
        let (dx, dw) =
            backward(ctx.saved(0)?, ctx.saved(1)?, ctx.grad_out(), eps, pending.as_ref(), ctx.needs(0), ctx.needs(1))?;
        ctx.add_grads([dx, dw])
    });
}

/// RMSNorm, recorded on `tape` when x or w is tracked (saves x and w).
pub fn rms_norm(tape: Option<&mut Tape>, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let y = forward(x, w, eps)?;
    if let Some(tape) = tape {
        record(tape, x, w, &y, eps);
    }
    Ok(y)
}

/// The residual add and the norm after it: `(s, rms_norm(s)·w)` with s = x + res, in one
/// pass; recorded on `tape` as the add and the norm (which save s and w).
pub fn add_rms_norm(
    tape: Option<&mut Tape>,
    x: &Tensor,
    res: &Tensor,
    w: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let (s, y) = forward_residual(x, res, w, eps)?;
    if let Some(tape) = tape {
        crate::ops::elementwise::record_add(tape, x, res, &s);
        record(tape, &s, w, &y, eps);
    }
    Ok((s, y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f64, finite_diff, random_f32, random_f64};
    use crate::{device::cuda_for_tests, DType};

    #[test]
    fn backward_matches_finite_differences() {
        let (rows, dim, eps) = (3, 7, 1e-5);
        let x = random_f64(rows * dim, 1.0, 1);
        let w = random_f64(dim, 1.0, 2);
        let dy = random_f64(rows * dim, 1.0, 3);
        let fwd = |x: &[f64], w: &[f64]| {
            let mut y = vec![0.0; rows * dim];
            cpu::forward(x, w, eps, dim, &mut y);
            y
        };
        let mut dx = vec![0.0; rows * dim];
        let mut dw = vec![0.0; dim];
        cpu::backward(&x, &w, &dy, eps, dim, Some(&mut dx), Some(&mut dw));
        let fd_x = finite_diff(|x| fwd(x, &w), &x, &dy, 1e-6);
        let fd_w = finite_diff(|w| fwd(&x, w), &w, &dy, 1e-6);
        assert_close_f64("rms_norm dx", &dx, &fd_x, 1e-8, 1e-6);
        assert_close_f64("rms_norm dw", &dw, &fd_w, 1e-8, 1e-6);
    }

    #[test]
    fn tape_records_and_routes_gradients() {
        let dev = Device::cpu();
        let x = Tensor::from_f32(random_f32(2 * 5, 1.0, 4), [2, 5], DType::F32, &dev).unwrap();
        let w = Tensor::from_f32(random_f32(5, 1.0, 5), [5], DType::F32, &dev).unwrap();
        let mut tape = Tape::new();
        tape.watch(&w);
        let y = rms_norm(Some(&mut tape), &x, &w, 1e-5).unwrap();
        let dy = Tensor::from_f32(random_f32(10, 1.0, 6), [2, 5], DType::F32, &dev).unwrap();
        let mut grads = crate::Grads::new();
        tape.backward_from(&y, dy.clone(), &mut grads).unwrap();
        let (_, dw) = backward(&x, &w, &dy, 1e-5, None, false, true).unwrap();
        assert_eq!(grads.get(&w).unwrap().to_f32_vec().unwrap(), dw.unwrap().to_f32_vec().unwrap());
        assert!(grads.get(&x).is_none(), "x is not watched, so it gets no gradient");
    }

    /// The fused residual add and norm, with the norm's backward folding the residual's
    /// gradient into dx, gives the gradients of the separate add and norm (whose backward is
    /// checked against finite differences above), when both outputs feed the loss.
    #[test]
    fn add_rms_norm_matches_the_separate_ops() {
        let dev = Device::cpu();
        let (rows, dim) = (3, 37);
        let mk = |n: usize, seed| Tensor::from_f32(random_f32(n, 1.0, seed), [n], DType::F32, &dev).unwrap();
        let (x, res) =
            (mk(rows * dim, 1).reshape([rows, dim]).unwrap(), mk(rows * dim, 2).reshape([rows, dim]).unwrap());
        let (w, dz) = (mk(dim, 3), mk(rows * dim, 4).reshape([rows, dim]).unwrap());
        let grads_of = |fused: bool| {
            let mut tape = Tape::new();
            for t in [&x, &res, &w] {
                tape.watch(t);
            }
            let (s, y) = if fused {
                add_rms_norm(Some(&mut tape), &x, &res, &w, 1e-5).unwrap()
            } else {
                let s = crate::ops::add(Some(&mut tape), &x, &res).unwrap();
                let y = rms_norm(Some(&mut tape), &s, &w, 1e-5).unwrap();
                (s, y)
            };
            // The next residual reads s, as a decoder's does.
            let z = crate::ops::add(Some(&mut tape), &s, &y).unwrap();
            let mut grads = crate::Grads::new();
            tape.backward_from(&z, dz.clone(), &mut grads).unwrap();
            let out: Vec<Vec<f32>> =
                [&x, &res, &w].iter().map(|t| grads.get(t).unwrap().to_f32_vec().unwrap()).collect();
            (z.to_f32_vec().unwrap(), out)
        };
        let (z_fused, fused) = grads_of(true);
        let (z_sep, separate) = grads_of(false);
        assert_close("z", &z_fused, &z_sep, 1e-6, 1e-6);
        for (name, (f, s)) in ["dx", "dres", "dw"].iter().zip(fused.iter().zip(&separate)) {
            assert_close(name, f, s, 1e-6, 1e-6);
        }
        // The case exercises the fold: x's gradient is not the norm's alone.
        let (dx_norm, _) = backward(&x, &w, &dz, 1e-5, None, true, false).unwrap();
        let dx_norm = dx_norm.unwrap().to_f32_vec().unwrap();
        assert!(fused[0].iter().zip(&dx_norm).any(|(a, b)| (a - b).abs() > 1e-3), "the residual's gradient counts");
    }

    #[test]
    fn shape_errors_name_both_shapes() {
        let dev = Device::cpu();
        let x = Tensor::zeros([2, 5], DType::F32, &dev).unwrap();
        let w = Tensor::zeros([4], DType::F32, &dev).unwrap();
        let e = forward(&x, &w, 1e-5).unwrap_err().to_string();
        assert!(e.contains("[2, 5]") && e.contains("[4]"), "{e}");
    }

    #[test]
    fn cuda_matches_cpu() {
        let Some(gpu) = cuda_for_tests("rms_norm::cuda_matches_cpu") else { return };
        let cpu = Device::cpu();
        for (dtype, atol, rtol) in [(DType::F32, 1e-5, 1e-4), (DType::BF16, 1e-2, 1e-2)] {
            for (rows, dim) in [(1, 1), (3, 33), (37, 576), (5, 4099)] {
                let mk = |n, seed| Tensor::from_f32(random_f32(n, 1.0, seed), [n], dtype, &cpu).unwrap();
                let x = mk(rows * dim, 10).reshape([rows, dim]).unwrap();
                let w = mk(dim, 11);
                let dy = mk(rows * dim, 12).reshape([rows, dim]).unwrap();
                let (xg, wg, dyg) =
                    (x.to_device(&gpu).unwrap(), w.to_device(&gpu).unwrap(), dy.to_device(&gpu).unwrap());
                let what = format!("rms_norm {dtype} {rows}x{dim}");
                let y = forward(&x, &w, 1e-5).unwrap().to_f32_vec().unwrap();
                let yg = forward(&xg, &wg, 1e-5).unwrap().to_f32_vec().unwrap();
                assert_close(&format!("{what} y"), &yg, &y, atol, rtol);
                // Fused with a residual (the sum is rounded as the add rounds it).
                let res = mk(rows * dim, 13).reshape([rows, dim]).unwrap();
                let (s, y) = forward_residual(&x, &res, &w, 1e-5).unwrap();
                let (sg, yg) = forward_residual(&xg, &res.to_device(&gpu).unwrap(), &wg, 1e-5).unwrap();
                assert_eq!(sg.to_f32_vec().unwrap(), s.to_f32_vec().unwrap(), "{what} residual sum");
                assert_close(
                    &format!("{what} y of x + res"),
                    &yg.to_f32_vec().unwrap(),
                    &y.to_f32_vec().unwrap(),
                    atol,
                    rtol,
                );
                let (dx, _) = backward(&x, &w, &dy, 1e-5, Some(&res), true, false).unwrap();
                let (dxg, _) =
                    backward(&xg, &wg, &dyg, 1e-5, Some(&res.to_device(&gpu).unwrap()), true, false).unwrap();
                let (dx, dxg) = (dx.unwrap().to_f32_vec().unwrap(), dxg.unwrap().to_f32_vec().unwrap());
                assert_close(&format!("{what} dx + pending"), &dxg, &dx, atol, rtol);
                let (dx, dw) = backward(&x, &w, &dy, 1e-5, None, true, true).unwrap();
                let (dxg, dwg) = backward(&xg, &wg, &dyg, 1e-5, None, true, true).unwrap();
                assert_close(
                    &format!("{what} dx"),
                    &dxg.unwrap().to_f32_vec().unwrap(),
                    &dx.unwrap().to_f32_vec().unwrap(),
                    atol,
                    rtol,
                );
                // dw sums over rows: allow for the longer f32 sum on the GPU.
                let rows_f = rows as f64;
                assert_close(
                    &format!("{what} dw"),
                    &dwg.unwrap().to_f32_vec().unwrap(),
                    &dw.unwrap().to_f32_vec().unwrap(),
                    atol * rows_f,
                    rtol,
                );
            }
        }
    }
}
