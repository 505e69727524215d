//! RMSNorm over the last dimension: `y = x / sqrt(mean(x²) + eps) · w`.
//! x: [..., dim], w: [dim], y like x. Backward gives dx (like x) and dw (like w).

pub mod cpu;
pub mod cuda;

use crate::autograd::{Saved, Tape};
use crate::ops::{cuda_device, cuda_tensor, expect_float, expect_same, host_f32};
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
    let (rows, dim) = check(x, w)?;
    match x.device() {
        Device::Cpu(_) => {
            let mut y = vec![0f32; rows * dim];
            cpu::forward(&host_f32(x)?, &host_f32(w)?, eps as f64, dim, &mut y);
            Tensor::from_f32(y, x.shape().clone(), x.dtype(), x.device())
        }
        Device::Cuda(_) => with_compute_type!(x.dtype(), "rms_norm", T => {
            let dev = cuda_device(x)?;
            let mut y = dev.alloc::<T>(rows * dim)?;
            cuda::forward::<T>(dev, x.read()?.cuda()?, w.read()?.cuda()?, y.slice_mut(), rows, dim, eps)?;
            cuda_tensor(y, x.shape().clone(), x.device())
        }),
    }
}

/// Gradients `(dx, dw)`, each computed only when asked for.
pub fn backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    eps: f32,
    want_dx: bool,
    want_dw: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (rows, dim) = check(x, w)?;
    expect_same("rms_norm backward", &[x, dy])?;
    x.shape().expect_eq("rms_norm backward", dy.shape())?;
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
            Ok((
                dx.map(|v| Tensor::from_f32(v, x.shape().clone(), x.dtype(), x.device())).transpose()?,
                dw.map(|v| Tensor::from_f32(v, w.shape().clone(), w.dtype(), w.device())).transpose()?,
            ))
        }
        Device::Cuda(_) => with_compute_type!(x.dtype(), "rms_norm", T => {
            let dev = cuda_device(x)?;
            let mut dx = if want_dx { Some(dev.alloc::<T>(rows * dim)?) } else { None };
            let mut dw = if want_dw { Some(dev.alloc::<T>(dim)?) } else { None };
            cuda::backward::<T>(
                dev, x.read()?.cuda()?, w.read()?.cuda()?, dy.read()?.cuda()?,
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

/// RMSNorm, recorded on `tape` when x or w is tracked (saves x and w).
pub fn rms_norm(tape: Option<&mut Tape>, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let y = forward(x, w, eps)?;
    if let Some(tape) = tape {
        tape.record("rms_norm", &[x, w], &y, vec![Saved::Keep(x.clone()), Saved::Keep(w.clone())], move |ctx| {
            let (dx, dw) = backward(ctx.saved(0)?, ctx.saved(1)?, ctx.grad_out(), eps, ctx.needs(0), ctx.needs(1))?;
            ctx.add_grads([dx, dw])
        });
    }
    Ok(y)
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
        let (_, dw) = backward(&x, &w, &dy, 1e-5, false, true).unwrap();
        assert_eq!(grads.get(&w).unwrap().to_f32_vec().unwrap(), dw.unwrap().to_f32_vec().unwrap());
        assert!(grads.get(&x).is_none(), "x is not watched, so it gets no gradient");
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
                let (dx, dw) = backward(&x, &w, &dy, 1e-5, true, true).unwrap();
                let (dxg, dwg) = backward(&xg, &wg, &dyg, 1e-5, true, true).unwrap();
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
