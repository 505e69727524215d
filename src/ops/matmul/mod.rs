//! Matrix products. `matmul(a, b)` = a·b and `matmul_nt(a, b)` = a·bᵀ (a linear layer
//! `y = x·Wᵀ` with W [out, in]).
//!
//! Shapes: with a 2-D `b`, `a` may have any leading dims ([..., m, k] · [k, n] → [..., m, n]:
//! the leading dims are flattened into m); with a 3-D `b` ([batch, k, n]) `a` must be
//! [batch, m, k]. Backward of c = op(a)·op(b): d op(a) = dc·op(b)ᵀ, d op(b) = op(a)ᵀ·dc,
//! each again one matmul; a 2-D b shared over a batch gets the sum over it.

pub mod cpu;
pub mod cuda;

pub use cpu::Dims;

use crate::autograd::{Saved, Tape};
use crate::ops::{cuda_device, cuda_tensor, expect_float, expect_same, host_f32};
use crate::{with_compute_type, Device, Error, Result, Shape, Tensor};

fn plan(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<(Dims, Shape)> {
    expect_float("matmul", a)?;
    expect_same("matmul", &[a, b])?;
    let mismatch = || Error::ShapeMismatch { op: "matmul", lhs: a.shape().clone(), rhs: b.shape().clone() };
    let (ad, bd) = (a.dims(), b.dims());
    let (bk, n) = match bd {
        [r, c] | [_, r, c] => {
            if trans_b {
                (*c, *r)
            } else {
                (*r, *c)
            }
        }
        _ => return Err(mismatch()),
    };
    let (batch, m, k, b_batched, mut out) = match (bd.len(), trans_a, ad) {
        (2, true, [k, m]) => (1, *m, *k, false, vec![*m]),
        (2, false, [.., k]) if ad.len() >= 2 => (1, a.shape().rows(), *k, false, ad[..ad.len() - 1].to_vec()),
        (3, true, [bt, k, m]) if *bt == bd[0] => (*bt, *m, *k, true, vec![*bt, *m]),
        (3, false, [bt, m, k]) if *bt == bd[0] => (*bt, *m, *k, true, vec![*bt, *m]),
        _ => return Err(mismatch()),
    };
    if k != bk {
        return Err(mismatch());
    }
    out.push(n);
    Ok((Dims { batch, m, n, k, trans_a, trans_b, b_batched }, Shape::new(out)))
}

/// c = op(a) · op(b) without recording; see the module docs for shapes.
pub fn forward(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let (d, out_shape) = plan(a, b, trans_a, trans_b)?;
    let n_out = d.batch * d.m * d.n;
    match a.device() {
        Device::Cpu(_) => {
            let mut c = vec![0f32; n_out];
            cpu::fast(&host_f32(a)?, &host_f32(b)?, &mut c, d, 1.0, false);
            Tensor::from_f32(c, out_shape, a.dtype(), a.device())
        }
        Device::Cuda(_) => with_compute_type!(a.dtype(), "matmul", T => {
            let dev = cuda_device(a)?;
            let mut c = dev.alloc::<T>(n_out)?;
            cuda::matmul::<T>(dev, a.read()?.cuda()?, b.read()?.cuda()?, c.slice_mut(), d, 1.0, 0.0)?;
            cuda_tensor(c, out_shape, a.device())
        }),
    }
}

/// Gradients (da, db) of c = op(a)·op(b) given dc, each only when asked for.
pub fn backward(
    a: &Tensor,
    b: &Tensor,
    dc: &Tensor,
    trans_a: bool,
    trans_b: bool,
    want_a: bool,
    want_b: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (d, out_shape) = plan(a, b, trans_a, trans_b)?;
    dc.shape().expect_eq("matmul backward", &out_shape)?;
    // With a shared 2-D b, view a and dc as plain matrices so db sums over all rows.
    let (a2, dc2) = if d.b_batched || trans_a {
        (a.clone(), dc.clone())
    } else {
        (a.reshape([d.m, d.k])?, dc.reshape([d.m, d.n])?)
    };
    let da = if want_a {
        let g = match (trans_a, trans_b) {
            (false, false) => forward(&dc2, b, false, true)?,
            (false, true) => forward(&dc2, b, false, false)?,
            (true, false) => forward(b, &dc2, false, true)?,
            (true, true) => forward(b, &dc2, true, true)?,
        };
        Some(g.reshape(a.shape().clone())?)
    } else {
        None
    };
    let db = if want_b {
        let g = match (trans_a, trans_b) {
            (false, false) => forward(&a2, &dc2, true, false)?,
            (false, true) => forward(&dc2, &a2, true, false)?,
            (true, false) => forward(&a2, &dc2, false, false)?,
            (true, true) => forward(&dc2, &a2, true, true)?,
        };
        Some(g.reshape(b.shape().clone())?)
    } else {
        None
    };
    Ok((da, db))
}

fn record(tape: Option<&mut Tape>, a: &Tensor, b: &Tensor, c: &Tensor, trans_a: bool, trans_b: bool) {
    if let Some(tape) = tape {
        tape.record("matmul", &[a, b], c, vec![Saved::Keep(a.clone()), Saved::Keep(b.clone())], move |ctx| {
            let (da, db) =
                backward(ctx.saved(0)?, ctx.saved(1)?, ctx.grad_out(), trans_a, trans_b, ctx.needs(0), ctx.needs(1))?;
            ctx.add_grads([da, db])
        });
    }
}

/// a · b, recorded on `tape` (saves a and b).
pub fn matmul(tape: Option<&mut Tape>, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let c = forward(a, b, false, false)?;
    record(tape, a, b, &c, false, false);
    Ok(c)
}

/// a · bᵀ (b is [n, k] or [batch, n, k]), recorded on `tape` (saves a and b).
pub fn matmul_nt(tape: Option<&mut Tape>, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let c = forward(a, b, false, true)?;
    record(tape, a, b, &c, false, true);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f64, finite_diff, random_f32, random_f64};
    use crate::{device::cuda_for_tests, DType};

    const ALL_TRANS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

    fn dims(batch: usize, m: usize, n: usize, k: usize, ta: bool, tb: bool, bb: bool) -> Dims {
        Dims { batch, m, n, k, trans_a: ta, trans_b: tb, b_batched: bb }
    }

    #[test]
    fn fast_matches_reference() {
        for (ta, tb) in ALL_TRANS {
            for (batch, m, n, k, bb) in
                [(1, 1, 1, 1, false), (1, 37, 65, 129, false), (3, 17, 9, 33, true), (2, 5, 300, 7, false)]
            {
                let d = dims(batch, m, n, k, ta, tb, bb);
                let a = random_f32(batch * m * k, 1.0, 1);
                let b = random_f32(if bb { batch } else { 1 } * k * n, 1.0, 2);
                let (mut c_ref, mut c_fast) = (vec![0f32; batch * m * n], vec![f32::NAN; batch * m * n]);
                cpu::reference(&a, &b, &mut c_ref, d);
                cpu::fast(&a, &b, &mut c_fast, d, 1.0, false);
                assert_close(&format!("matmul fast {d:?}"), &c_fast, &c_ref, 1e-5, 1e-4);
            }
        }
    }

    #[test]
    fn reference_matches_a_hand_worked_case() {
        // [[1,2],[3,4]] · [[5,6],[7,8]] = [[19,22],[43,50]]
        let mut c = [0f64; 4];
        cpu::reference(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], &mut c, dims(1, 2, 2, 2, false, false, false));
        assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
        // Same b read transposed: a · bᵀ = [[17,23],[39,53]]
        cpu::reference(&[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0], &mut c, dims(1, 2, 2, 2, false, true, false));
        assert_eq!(c, [17.0, 23.0, 39.0, 53.0]);
    }

    /// The tensor-level backward (built from forward matmuls) against f64 finite
    /// differences of the reference, for every transpose combination and a shared b.
    #[test]
    fn backward_matches_finite_differences() {
        let dev = Device::cpu();
        for (ta, tb) in ALL_TRANS {
            for (batch, bb) in [(1, false), (3, true), (2, false)] {
                if ta && batch > 1 && !bb {
                    continue; // a transposed needs a 2-D a when b is shared
                }
                let (m, n, k) = (4, 3, 5);
                let d = dims(batch, m, n, k, ta, tb, bb);
                let a = random_f64(batch * m * k, 1.0, 3);
                let b = random_f64(if bb { batch } else { 1 } * k * n, 1.0, 4);
                let dc = random_f64(batch * m * n, 1.0, 5);
                let run = |a: &[f64], b: &[f64]| {
                    let mut c = vec![0.0; batch * m * n];
                    cpu::reference(a, b, &mut c, d);
                    c
                };
                let fd_a = finite_diff(|a| run(a, &b), &a, &dc, 1e-6);
                let fd_b = finite_diff(|b| run(&a, b), &b, &dc, 1e-6);
                let a_shape: Vec<usize> = match (batch, ta) {
                    (1, false) => vec![m, k],
                    (1, true) => vec![k, m],
                    (_, false) if bb => vec![batch, m, k],
                    (_, true) => vec![batch, k, m],
                    _ => vec![batch, m, k],
                };
                let b_shape: Vec<usize> = match (bb, tb) {
                    (false, false) => vec![k, n],
                    (false, true) => vec![n, k],
                    (true, false) => vec![batch, k, n],
                    (true, true) => vec![batch, n, k],
                };
                let t = |v: &[f64], s: &[usize]| {
                    Tensor::from_f32(v.iter().map(|&x| x as f32).collect(), s.to_vec(), DType::F32, &dev).unwrap()
                };
                let out_shape: Vec<usize> = if bb || (batch > 1) { vec![batch, m, n] } else { vec![m, n] };
                let (ga, gb) =
                    backward(&t(&a, &a_shape), &t(&b, &b_shape), &t(&dc, &out_shape), ta, tb, true, true).unwrap();
                let to64 = |t: Tensor| t.to_f32_vec().unwrap().into_iter().map(|v| v as f64).collect::<Vec<_>>();
                let what = format!("matmul backward ta={ta} tb={tb} batch={batch} shared_b={}", !bb);
                assert_close_f64(&format!("{what} da"), &to64(ga.unwrap()), &fd_a, 1e-5, 1e-5);
                assert_close_f64(&format!("{what} db"), &to64(gb.unwrap()), &fd_b, 1e-5, 1e-5);
            }
        }
    }

    #[test]
    fn shape_errors_name_both_shapes() {
        let dev = Device::cpu();
        let a = Tensor::zeros([2, 3], DType::F32, &dev).unwrap();
        let b = Tensor::zeros([4, 5], DType::F32, &dev).unwrap();
        let e = forward(&a, &b, false, false).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
        let u = Tensor::zeros([3, 5], DType::U32, &dev).unwrap();
        assert!(forward(&a, &u, false, false).is_err());
    }

    #[test]
    fn cuda_matches_cpu() {
        let Some(gpu) = cuda_for_tests("matmul::cuda_matches_cpu") else { return };
        let cpu = Device::cpu();
        for (dtype, atol, rtol) in [(DType::F32, 1e-4, 1e-4), (DType::BF16, 2e-2, 2e-2)] {
            for (ta, tb) in ALL_TRANS {
                for (batch, m, n, k, bb) in
                    [(1, 1, 1, 1, false), (1, 37, 65, 129, false), (3, 17, 9, 33, true), (1, 300, 7, 513, false)]
                {
                    let a_shape = match (bb, ta) {
                        (false, false) => vec![m, k],
                        (false, true) => vec![k, m],
                        (true, false) => vec![batch, m, k],
                        (true, true) => vec![batch, k, m],
                    };
                    let b_shape = match (bb, tb) {
                        (false, false) => vec![k, n],
                        (false, true) => vec![n, k],
                        (true, false) => vec![batch, k, n],
                        (true, true) => vec![batch, n, k],
                    };
                    let a =
                        Tensor::from_f32(random_f32(a_shape.iter().product(), 1.0, 7), a_shape, dtype, &cpu).unwrap();
                    let b =
                        Tensor::from_f32(random_f32(b_shape.iter().product(), 1.0, 8), b_shape, dtype, &cpu).unwrap();
                    let c = forward(&a, &b, ta, tb).unwrap();
                    let (ag, bg) = (a.to_device(&gpu).unwrap(), b.to_device(&gpu).unwrap());
                    let cg = forward(&ag, &bg, ta, tb).unwrap();
                    let what = format!("matmul {dtype} ta={ta} tb={tb} {batch}x{m}x{n}x{k}");
                    let tol = (k as f64).sqrt();
                    assert_close(&what, &cg.to_f32_vec().unwrap(), &c.to_f32_vec().unwrap(), atol * tol, rtol);
                    let dc =
                        Tensor::from_f32(random_f32(c.elem_count(), 1.0, 9), c.shape().clone(), dtype, &cpu).unwrap();
                    let (da, db) = backward(&a, &b, &dc, ta, tb, true, true).unwrap();
                    let (dag, dbg) = backward(&ag, &bg, &dc.to_device(&gpu).unwrap(), ta, tb, true, true).unwrap();
                    let tol = ((m.max(n) * batch) as f64).sqrt();
                    assert_close(
                        &format!("{what} da"),
                        &dag.unwrap().to_f32_vec().unwrap(),
                        &da.unwrap().to_f32_vec().unwrap(),
                        atol * tol,
                        rtol,
                    );
                    assert_close(
                        &format!("{what} db"),
                        &dbg.unwrap().to_f32_vec().unwrap(),
                        &db.unwrap().to_f32_vec().unwrap(),
                        atol * tol,
                        rtol,
                    );
                }
            }
        }
    }

    /// Alpha and beta reach cuBLAS as f32 for bf16 too: 32/12 and 1/3 are no bf16 values
    /// (they round to 2.671875 and 0.333984375, 0.2% high), and LoRA's scale s = α/r is
    /// such an alpha. Element errors are bf16 roundings of the output (unbiased), so the
    /// mean of got/want over many elements is 1 to ~1e-5 with f32 scalars and 1.002 with
    /// bf16 ones.
    #[test]
    fn cuda_bf16_takes_alpha_and_beta_in_f32() {
        use half::bf16;
        let Some(gpu) = cuda_for_tests("matmul::cuda_bf16_takes_alpha_and_beta_in_f32") else { return };
        let Device::Cuda(dev) = &gpu else { panic!("cuda_for_tests gave a non-CUDA device") };
        let (m, n, k) = (128, 96, 64);
        let (alpha, beta) = (32.0f32 / 12.0, 1.0f32 / 3.0);
        let to_bf16 = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<_>>();
        let (a, b, c0) = (
            to_bf16(random_f32(m * k, 1.0, 21)),
            to_bf16(random_f32(k * n, 1.0, 22)),
            to_bf16(random_f32(m * n, 1.0, 23)),
        );
        let (ag, bg, mut cg) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap(), dev.htod(&c0).unwrap());
        let d = Dims::single(m, n, k, false, false);
        cuda::matmul::<bf16>(dev, ag.slice(), bg.slice(), cg.slice_mut(), d, alpha, beta).unwrap();
        let got = dev.dtoh(cg.slice()).unwrap();
        let (mut ratio_sum, mut counted) = (0f64, 0usize);
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| a[i * k + p].to_f64() * b[p * n + j].to_f64()).sum();
                let want = alpha as f64 * dot + beta as f64 * c0[i * n + j].to_f64();
                let g = got[i * n + j].to_f64();
                assert!((g - want).abs() <= 1e-2 + 8e-3 * want.abs(), "({i}, {j}): {g} vs {want}");
                if want.abs() > 0.5 {
                    ratio_sum += g / want;
                    counted += 1;
                }
            }
        }
        let mean = ratio_sum / counted as f64;
        assert!((mean - 1.0).abs() < 5e-4, "mean got/want {mean} over {counted} elements: the scalars were rounded");
    }
}
