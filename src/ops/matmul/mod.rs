//! Matrix products. `matmul(a, b)` = a·b and `matmul_nt(a, b)` = a·bᵀ (a linear layer
//! `y = x·Wᵀ` with W [out, in]).
//!
//! Shapes: with a 2-D `b`, `a` may have any leading dims ([..., m, k] · [k, n] → [..., m, n]:
//! the leading dims are flattened into m); with a 3-D `b` ([batch, k, n]) `a` must be
//! [batch, m, k]. Backward of c = op(a)·op(b): d op(a) = dc·op(b)ᵀ, d op(b) = op(a)ᵀ·dc,
//! each again one matmul; a 2-D b shared over a batch gets the sum over it.

pub mod cpu;
pub mod cuda;

pub use cpu::{Dims, Strided};

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

    /// Views like the tensor-core attention's: heads at offsets inside [T, H, D] rows, every
    /// transpose, a batch stride between heads.
    fn head_views(ta: bool, tb: bool, beta: f32) -> Strided {
        // C_i [5, 4] = op(A_i) [5, 3] · op(B_i) [3, 4] for 2 heads of 3 columns in rows of 7.
        let (m, n, k) = (5, 4, 3);
        Strided {
            m,
            n,
            k,
            trans_a: ta,
            trans_b: tb,
            a: (1, 7, 3),
            b: (2, 8, 4),
            c: (3, 11, 5),
            batch: 2,
            alpha: 0.75,
            beta,
        }
    }

    /// The strided reference against the plain one on the same matrices copied out.
    #[test]
    fn strided_reference_matches_plain_reference() {
        for (ta, tb) in ALL_TRANS {
            for beta in [0.0, 0.5] {
                let s = head_views(ta, tb, beta);
                let [ea, eb, ec] = s.extents().unwrap();
                let (a, b) = (random_f32(ea, 1.0, 31), random_f32(eb, 1.0, 32));
                let c0 = random_f32(ec, 1.0, 33);
                let mut c = c0.clone();
                s.reference(&a, &b, &mut c);
                let (ar, ac) = if ta { (s.k, s.m) } else { (s.m, s.k) };
                let (br, bc) = if tb { (s.n, s.k) } else { (s.k, s.n) };
                let copy = |x: &[f32], (off, ld, st): (usize, usize, usize), i: usize, rows: usize, cols: usize| {
                    (0..rows)
                        .flat_map(|r| (0..cols).map(move |c| (r, c)))
                        .map(|(r, c)| x[off + i * st + r * ld + c])
                        .collect::<Vec<_>>()
                };
                for i in 0..s.batch {
                    let mut want = vec![0f32; s.m * s.n];
                    cpu::reference(
                        &copy(&a, s.a, i, ar, ac),
                        &copy(&b, s.b, i, br, bc),
                        &mut want,
                        Dims::single(s.m, s.n, s.k, ta, tb),
                    );
                    let old = copy(&c0, s.c, i, s.m, s.n);
                    let want: Vec<f32> = want.iter().zip(&old).map(|(w, o)| 0.75 * w + beta * o).collect();
                    assert_close(
                        &format!("strided {ta} {tb} {beta} head {i}"),
                        &copy(&c, s.c, i, s.m, s.n),
                        &want,
                        1e-6,
                        1e-6,
                    );
                }
                // Elements outside the views are untouched.
                let inside: std::collections::HashSet<usize> = (0..s.batch)
                    .flat_map(|i| {
                        (0..s.m).flat_map(move |r| (0..s.n).map(move |col| s.c.0 + i * s.c.2 + r * s.c.1 + col))
                    })
                    .collect();
                assert!((0..ec).filter(|e| !inside.contains(e)).all(|e| c[e] == c0[e]));
            }
        }
        let short = Strided { a: (0, 2, 3), ..head_views(false, false, 0.0) };
        assert!(short.extents().is_none(), "a row stride shorter than a row of A is refused");
    }

    /// cuBLAS's strided batched product against the strided reference: f32, and bf16
    /// operands into an f32 result (as the attention's scores) and into bf16.
    #[test]
    fn cuda_strided_batched_matches_reference() {
        use half::bf16;
        let Some(gpu) = cuda_for_tests("matmul::cuda_strided_batched_matches_reference") else { return };
        let Device::Cuda(dev) = &gpu else { panic!("cuda_for_tests gave a non-CUDA device") };
        for (ta, tb) in ALL_TRANS {
            for beta in [0.0, 0.5] {
                let s = head_views(ta, tb, beta);
                let [ea, eb, ec] = s.extents().unwrap();
                let to_bf16 = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
                let (a, b, c0) = (random_f32(ea, 1.0, 41), random_f32(eb, 1.0, 42), random_f32(ec, 1.0, 43));
                let (a16, b16, c16) = (to_bf16(&a), to_bf16(&b), to_bf16(&c0));
                let widen = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
                let what = format!("strided batched {ta} {tb} beta {beta}");
                // f32.
                let mut want = c0.clone();
                s.reference(&a, &b, &mut want);
                let mut cg = dev.htod(&c0).unwrap();
                let (ag, bg) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap());
                cuda::strided_batched::<f32, f32>(dev, &s, ag.slice(), bg.slice(), cg.slice_mut()).unwrap();
                assert_close(&format!("{what} f32"), &dev.dtoh(cg.slice()).unwrap(), &want, 1e-5, 1e-5);
                // bf16 operands, f32 and bf16 results.
                let (a_w, b_w) = (widen(&a16), widen(&b16));
                let mut want = c0.clone();
                s.reference(&a_w, &b_w, &mut want);
                let (ag, bg) = (dev.htod(&a16).unwrap(), dev.htod(&b16).unwrap());
                let mut cg = dev.htod(&c0).unwrap();
                cuda::strided_batched::<bf16, f32>(dev, &s, ag.slice(), bg.slice(), cg.slice_mut()).unwrap();
                assert_close(&format!("{what} bf16 -> f32"), &dev.dtoh(cg.slice()).unwrap(), &want, 1e-5, 1e-5);
                let mut want = widen(&c16);
                s.reference(&a_w, &b_w, &mut want);
                let mut cg = dev.htod(&c16).unwrap();
                cuda::strided_batched::<bf16, bf16>(dev, &s, ag.slice(), bg.slice(), cg.slice_mut()).unwrap();
                assert_close(&format!("{what} bf16"), &widen(&dev.dtoh(cg.slice()).unwrap()), &want, 1e-2, 1e-2);
                // A result buffer one element short of the views is refused.
                let mut short = dev.htod(&c0[..ec - 1]).unwrap();
                let e = cuda::strided_batched::<f32, f32>(
                    dev,
                    &s,
                    dev.htod(&a).unwrap().slice(),
                    dev.htod(&b).unwrap().slice(),
                    short.slice_mut(),
                );
                assert!(e.unwrap_err().to_string().contains("c holds"), "{what}");
            }
        }
    }
}
