//! Dense f64 linear algebra on the CPU, row-major: products through the gemm crate, and for
//! SparseGPT a blocked Cholesky (A = L·Lᵀ: 64-wide diagonal blocks factored directly, the panel below
//! solved as a product with the inverted diagonal block, trailing update A22 −= P·Pᵀ of its
//! lower triangle only, in row blocks of 512), the
//! inverse of a lower-triangular matrix (recursive: [[A, 0], [B, C]]⁻¹ =
//! [[A⁻¹, 0], [−C⁻¹·B·A⁻¹, C⁻¹]]), and the upper Cholesky factor U of A⁻¹ (A⁻¹ = Uᵀ·U, the
//! factor SparseGPT builds as chol(A⁻¹)ᵀ) from one Cholesky of A in reversed order:
//! U = J·chol(J·A·J)⁻¹·J, J the order reversal. All products go through
//! the gemm crate (all cores), so the O(n³) work runs at matrix-product speed.
//! For LoRS's initialisation, the top right singular vectors of a matrix by randomised SVD
//! (range finder with power iterations, as `torch.svd_lowrank`; the small factor's SVD by
//! one-sided Jacobi); for LoSA's re-sized adapters, the SVD of a low-rank product B·A
//! from its factors ([`low_rank_svd`]).

use crate::ops::matmul::cpu::strided;

use crate::{Error, Result};

const BLOCK: usize = 64;
/// Rows per product of the Cholesky trailing update.
const TRAILING_ROWS: usize = 512;

/// `c = beta·c + alpha·op(a)·op(b)` on row-major strided f64 views, all cores; `c` is
/// [m, n] with row stride `ldc`, op(a) [m, k], op(b) [k, n]; `a_t`/`b_t` read a/b
/// transposed ([`crate::ops::matmul::cpu::strided`] with leading dimensions).
#[allow(clippy::too_many_arguments)]
pub fn gemm_f64(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f64],
    ldc: usize,
    accumulate: bool,
    alpha: f64,
    a: &[f64],
    lda: usize,
    a_t: bool,
    b: &[f64],
    ldb: usize,
    b_t: bool,
) {
    let (a_rs, a_cs) = if a_t { (1, lda) } else { (lda, 1) };
    let (b_rs, b_cs) = if b_t { (1, ldb) } else { (ldb, 1) };
    strided(m, n, k, (c, ldc, 1), accumulate, alpha, (a, a_rs, a_cs), (b, b_rs, b_cs), true);
}

fn not_pd(i: usize, v: f64) -> Error {
    Error::invalid(format!("matrix is not positive definite (pivot {i} is {v:e}); increase the damping"))
}

/// Unblocked Cholesky of the diagonal block starting at `k0` of size `b` (lower part).
fn chol_block(a: &mut [f64], n: usize, k0: usize, b: usize) -> Result<()> {
    for i in k0..k0 + b {
        for j in k0..=i {
            let (ri, rj) = (i * n, j * n);
            let mut s = a[ri + j];
            for p in k0..j {
                s -= a[ri + p] * a[rj + p];
            }
            if i == j {
                if s.is_nan() || s <= 0.0 {
                    return Err(not_pd(i, s));
                }
                a[ri + i] = s.sqrt();
            } else {
                a[ri + j] = s / a[rj + j];
            }
        }
    }
    Ok(())
}

/// In-place lower Cholesky factor of a symmetric positive-definite matrix (only the lower
/// triangle is read); the strict upper triangle is set to zero.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<()> {
    if a.len() != n * n {
        return Err(Error::invalid(format!("cholesky: {} values for {n}x{n}", a.len())));
    }
    let mut k0 = 0;
    while k0 < n {
        let b = BLOCK.min(n - k0);
        chol_block(a, n, k0, b)?;
        let rest = n - k0 - b;
        if rest > 0 {
            // Panel: P = A[rows below, k0..k0+b] · L_kk⁻ᵀ, written back into A.
            let diag: Vec<f64> = (k0..k0 + b).flat_map(|i| a[i * n + k0..i * n + k0 + b].iter().copied()).collect();
            let diag_inv = invert_lower_small(&diag, b);
            let below: Vec<f64> =
                (k0 + b..n).flat_map(|i| a[i * n + k0..i * n + k0 + b].iter().copied()).collect::<Vec<_>>();
            gemm_f64(rest, b, b, &mut a[(k0 + b) * n + k0..], n, false, 1.0, &below, b, false, &diag_inv, b, true);
            // Trailing update: A[r, r] -= P · Pᵀ with P = A[r, k0..k0+b], r = rows below.
            let panel: Vec<f64> =
                (k0 + b..n).flat_map(|i| a[i * n + k0..i * n + k0 + b].iter().copied()).collect::<Vec<_>>();
            let start = (k0 + b) * n + k0 + b;
            // Only the lower triangle is read later: update it by row blocks, each up to its
            // own last column (about half the products of the full square, the same bits).
            for r0 in (0..rest).step_by(TRAILING_ROWS) {
                let r1 = (r0 + TRAILING_ROWS).min(rest);
                let c = &mut a[start + r0 * n..];
                gemm_f64(r1 - r0, r1, b, c, n, true, -1.0, &panel[r0 * b..], b, false, &panel, b, true);
            }
        }
        k0 += b;
    }
    for i in 0..n {
        for j in i + 1..n {
            a[i * n + j] = 0.0;
        }
    }
    Ok(())
}

/// Inverse of a small lower-triangular matrix, row by row:
/// X[i, :] = (e_i − Σ_{p<i} L[i, p]·X[p, :]) / L[i, i] (axpys over contiguous rows).
fn invert_lower_small(l: &[f64], n: usize) -> Vec<f64> {
    let mut x = vec![0f64; n * n];
    for i in 0..n {
        let (done, rest) = x.split_at_mut(i * n);
        let row = &mut rest[..n];
        row[i] = 1.0;
        for p in 0..i {
            let lip = l[i * n + p];
            if lip != 0.0 {
                for (xj, &xpj) in row[..=p].iter_mut().zip(&done[p * n..p * n + p + 1]) {
                    *xj -= lip * xpj;
                }
            }
        }
        let d = l[i * n + i];
        row[..=i].iter_mut().for_each(|v| *v /= d);
    }
    x
}

/// Inverse of a lower-triangular matrix with a non-zero diagonal (recursive halving above
/// 64 rows).
pub fn invert_lower(l: &[f64], n: usize) -> Vec<f64> {
    if n <= BLOCK {
        return invert_lower_small(l, n);
    }
    let h = n / 2;
    let m = n - h;
    let block = |r0: usize, c0: usize, rows: usize, cols: usize| -> Vec<f64> {
        (r0..r0 + rows).flat_map(|i| l[i * n + c0..i * n + c0 + cols].iter().copied()).collect()
    };
    let ai = invert_lower(&block(0, 0, h, h), h);
    let ci = invert_lower(&block(h, h, m, m), m);
    let b = block(h, 0, m, h);
    let mut t = vec![0f64; m * h];
    gemm_f64(m, h, h, &mut t, h, false, 1.0, &b, h, false, &ai, h, false);
    let mut x21 = vec![0f64; m * h];
    gemm_f64(m, h, m, &mut x21, h, false, -1.0, &ci, m, false, &t, h, false);
    let mut x = vec![0f64; n * n];
    for i in 0..h {
        x[i * n..i * n + h].copy_from_slice(&ai[i * h..(i + 1) * h]);
    }
    for i in 0..m {
        x[(h + i) * n..(h + i) * n + h].copy_from_slice(&x21[i * h..(i + 1) * h]);
        x[(h + i) * n + h..(h + i + 1) * n].copy_from_slice(&ci[i * m..(i + 1) * m]);
    }
    x
}

/// The upper-triangular U with A⁻¹ = Uᵀ·U (positive diagonal: the unique such factor, the
/// one SparseGPT builds as chol(A⁻¹)ᵀ), by one factorisation of A reversed instead of
/// SparseGPT's two. With J the order-reversing permutation, J·A·J = L·Lᵀ gives
/// A = R·Rᵀ for the upper-triangular R = J·L·J, so A⁻¹ = R⁻ᵀ·R⁻¹ and U = R⁻¹ = J·L⁻¹·J.
/// For a row-major n×n matrix, X ↦ J·X·J is the reversal of its n² values. Cost ⅔·n³
/// (Cholesky and triangular inverse) instead of SparseGPT's 4⁄3·n³, and two n×n buffers
/// alive at once instead of three; `a` is consumed (factored in place; a 7B layer's 11008²
/// Hessian is 0.97 GB).
pub fn inverse_cholesky_upper(a: Vec<f64>, n: usize) -> Result<Vec<f64>> {
    let mut l = a;
    if l.len() != n * n {
        return Err(Error::invalid(format!("inverse Cholesky: {} values for {n}x{n}", l.len())));
    }
    l.reverse();
    // A failing pivot k is counted in J·A·J's order: row n − 1 − k of A.
    cholesky_lower(&mut l, n).map_err(|e| Error::invalid(format!("inverse Cholesky of J·A·J: {e}")))?;
    let mut u = invert_lower(&l, n);
    drop(l);
    u.reverse();
    Ok(u)
}

/// Orthonormalises the `q` columns of `y` [rows, q] in place (modified Gram–Schmidt, run
/// twice for stability); a column that vanishes is replaced by zeros.
fn orthonormalize_columns(y: &mut [f64], rows: usize, q: usize) {
    for j in 0..q {
        for _ in 0..2 {
            for i in 0..j {
                let dot: f64 = (0..rows).map(|r| y[r * q + i] * y[r * q + j]).sum();
                for r in 0..rows {
                    y[r * q + j] -= dot * y[r * q + i];
                }
            }
        }
        let norm = (0..rows).map(|r| y[r * q + j] * y[r * q + j]).sum::<f64>().sqrt();
        let inv = if norm > 1e-300 { 1.0 / norm } else { 0.0 };
        for r in 0..rows {
            y[r * q + j] *= inv;
        }
    }
}

/// The top `r` right singular vectors of `g` [rows, cols], as rows of an [r, cols] matrix,
/// with their singular values (descending), by randomised SVD: a Gaussian sketch of
/// `oversample` ≥ r columns (seeded), `power_iters` power iterations, then the exact SVD of
/// the projected [oversample, cols] factor by one-sided Jacobi. Signs are fixed so that the
/// largest entry of each vector is positive.
pub fn top_right_singular_vectors(
    g: &[f64],
    rows: usize,
    cols: usize,
    r: usize,
    oversample: usize,
    power_iters: usize,
    seed: u64,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let q = oversample.max(r).min(rows.min(cols));
    if r == 0 || r > q || g.len() != rows * cols {
        return Err(Error::invalid(format!(
            "randomised SVD: rank {r} of a {rows}x{cols} matrix ({} values) with sketch {q}",
            g.len()
        )));
    }
    let sketch = crate::Tensor::randn([cols * q], 1.0, crate::DType::F32, &crate::Device::cpu(), seed)?;
    let omega: Vec<f64> = sketch.to_f32_vec()?.into_iter().map(f64::from).collect();
    // Range of g: Y = g·Ω [rows, q], refined by (g·gᵀ)ⁱ.
    let mut y = vec![0.0; rows * q];
    gemm_f64(rows, q, cols, &mut y, q, false, 1.0, g, cols, false, &omega, q, false);
    orthonormalize_columns(&mut y, rows, q);
    let mut z = vec![0.0; cols * q];
    for _ in 0..power_iters {
        gemm_f64(cols, q, rows, &mut z, q, false, 1.0, g, cols, true, &y, q, false);
        orthonormalize_columns(&mut z, cols, q);
        gemm_f64(rows, q, cols, &mut y, q, false, 1.0, g, cols, false, &z, q, false);
        orthonormalize_columns(&mut y, rows, q);
    }
    // xt = gᵀ·Q [cols, q] = Bᵀ for B = Qᵀ·g; its orthogonalised columns are V·S.
    let mut xt = vec![0.0; cols * q];
    gemm_f64(cols, q, rows, &mut xt, q, false, 1.0, g, cols, true, &y, q, false);
    one_sided_jacobi(&mut xt, cols, cols, q);
    let mut order: Vec<(f64, usize)> =
        (0..q).map(|j| ((0..cols).map(|i| xt[i * q + j] * xt[i * q + j]).sum::<f64>().sqrt(), j)).collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut v = vec![0.0; r * cols];
    let mut sigma = Vec::with_capacity(r);
    for (k, &(s, j)) in order.iter().take(r).enumerate() {
        sigma.push(s);
        let row = &mut v[k * cols..(k + 1) * cols];
        for (i, x) in row.iter_mut().enumerate() {
            *x = if s > 0.0 { xt[i * q + j] / s } else { 0.0 };
        }
        let big = row.iter().fold(0.0f64, |m, &x| if x.abs() > m.abs() { x } else { m });
        if big < 0.0 {
            row.iter_mut().for_each(|x| *x = -*x);
        }
    }
    Ok((v, sigma))
}

/// Rotates the columns of x [rows, q] (Hestenes' one-sided Jacobi) until their first
/// `measured` rows are mutually orthogonal; x·J for an orthogonal J (rows below `measured`
/// are rotated along, so they accumulate J applied to whatever they held).
fn one_sided_jacobi(x: &mut [f64], rows: usize, measured: usize, q: usize) {
    for _sweep in 0..60 {
        let mut rotated = false;
        for i in 0..q {
            for j in i + 1..q {
                let (mut a, mut b, mut c) = (0.0, 0.0, 0.0);
                for r in 0..measured {
                    let (xi, xj) = (x[r * q + i], x[r * q + j]);
                    a += xi * xi;
                    b += xj * xj;
                    c += xi * xj;
                }
                if c.abs() <= 1e-15 * (a * b).sqrt() || c == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (b - a) / (2.0 * c);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let cs = 1.0 / (1.0 + t * t).sqrt();
                let sn = cs * t;
                for r in 0..rows {
                    let (xi, xj) = (x[r * q + i], x[r * q + j]);
                    x[r * q + i] = cs * xi - sn * xj;
                    x[r * q + j] = sn * xi + cs * xj;
                }
            }
        }
        if !rotated {
            break;
        }
    }
}

/// The SVD of the product `b·a` (b [out, r], a [r, inp]) from its factors, without forming
/// it: `b·a = Σ_j σ_j·u_j·v_jᵀ`. Returns (`us` [out, r] with columns σ_j·u_j, `v` [r, inp]
/// with orthonormal rows v_j, σ), ordered by descending σ. The rows of `a` are
/// orthonormalised first (a = R·Qᵀ), then the columns of b·R are rotated orthogonal by
/// one-sided Jacobi, with Q rotated along. Rows of `v` that `a` does not span are zero.
pub fn low_rank_svd(b: &[f64], a: &[f64], out: usize, r: usize, inp: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    if b.len() != out * r || a.len() != r * inp || r == 0 {
        return Err(Error::invalid(format!(
            "low-rank SVD: b has {} values for [{out}, {r}], a {} for [{r}, {inp}]",
            b.len(),
            a.len()
        )));
    }
    // Q [inp, r]: orthonormal columns spanning the rows of a; R = a·Q [r, r].
    let mut qt = vec![0.0; inp * r];
    for i in 0..r {
        for c in 0..inp {
            qt[c * r + i] = a[i * inp + c];
        }
    }
    orthonormalize_columns(&mut qt, inp, r);
    let mut rq = vec![0.0; r * r];
    gemm_f64(r, r, inp, &mut rq, r, false, 1.0, a, inp, false, &qt, r, false);
    // Stack [b·R; Q] and rotate until the top block's columns are orthogonal.
    let mut x = vec![0.0; (out + inp) * r];
    gemm_f64(out, r, r, &mut x[..out * r], r, false, 1.0, b, r, false, &rq, r, false);
    x[out * r..].copy_from_slice(&qt);
    one_sided_jacobi(&mut x, out + inp, out, r);
    let norm = |j: usize| (0..out).map(|i| x[i * r + j] * x[i * r + j]).sum::<f64>().sqrt();
    let mut order: Vec<(f64, usize)> = (0..r).map(|j| (norm(j), j)).collect();
    order.sort_by(|p, q| q.0.total_cmp(&p.0).then(p.1.cmp(&q.1)));
    let (mut us, mut v, mut sigma) = (vec![0.0; out * r], vec![0.0; r * inp], Vec::with_capacity(r));
    for (k, &(s, j)) in order.iter().enumerate() {
        sigma.push(s);
        for i in 0..out {
            us[i * r + k] = x[i * r + j];
        }
        for c in 0..inp {
            v[k * inp + c] = x[(out + c) * r + j];
        }
    }
    Ok((us, v, sigma))
}

#[cfg(test)]
mod tests {
    #[test]
    fn randomised_svd_recovers_planted_singular_vectors() {
        // g = U·diag(s)·Vᵀ with orthonormal U [40, 6], V [30, 6] built by Gram–Schmidt.
        let (rows, cols, k) = (40, 30, 6);
        let mut u = crate::testing::random_f64(rows * k, 1.0, 1);
        let mut v = crate::testing::random_f64(cols * k, 1.0, 2);
        super::orthonormalize_columns(&mut u, rows, k);
        super::orthonormalize_columns(&mut v, cols, k);
        let s = [10.0, 7.0, 5.0, 3.0, 1.0, 0.5];
        let mut g = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                g[r * cols + c] = (0..k).map(|j| u[r * k + j] * s[j] * v[c * k + j]).sum();
            }
        }
        let (top, sigma) = super::top_right_singular_vectors(&g, rows, cols, 3, 12, 2, 7).unwrap();
        crate::testing::assert_close_f64("singular values", &sigma, &s[..3], 1e-9, 1e-9);
        for j in 0..3 {
            // Same direction up to sign: |⟨v_j, v̂_j⟩| = 1.
            let dot: f64 = (0..cols).map(|c| top[j * cols + c] * v[c * k + j]).sum();
            assert!((dot.abs() - 1.0).abs() < 1e-9, "vector {j}: |cos| = {}", dot.abs());
        }
        assert!(super::top_right_singular_vectors(&g, rows, cols, 0, 12, 2, 7).is_err());
    }

    use super::*;
    use crate::testing::{assert_close_f64, random_f64};

    /// The factors reproduce b·a, their singular values are those planted in it, and the
    /// top-k truncation leaves exactly the dropped σ² as squared error (Eckart–Young).
    #[test]
    fn low_rank_svd_of_a_planted_product() {
        let (out, r, inp) = (23, 5, 31);
        let mut u = random_f64(out * r, 1.0, 3);
        let mut w = random_f64(inp * r, 1.0, 4);
        orthonormalize_columns(&mut u, out, r);
        orthonormalize_columns(&mut w, inp, r);
        let planted = [9.0, 4.0, 2.5, 1.0, 0.25];
        // b = U·diag(σ)·M, a = M⁻¹·Wᵀ with M upper triangular (mixes the factors).
        let mut m = vec![0.0; r * r];
        for i in 0..r {
            for j in i..r {
                m[i * r + j] = if i == j { 2.0 } else { 0.3 * (i + j) as f64 };
            }
        }
        let minv = {
            // Back substitution, column by column.
            let mut inv = vec![0.0; r * r];
            for col in 0..r {
                for i in (0..r).rev() {
                    let e = if i == col { 1.0 } else { 0.0 };
                    let s: f64 = (i + 1..r).map(|j| m[i * r + j] * inv[j * r + col]).sum();
                    inv[i * r + col] = (e - s) / m[i * r + i];
                }
            }
            inv
        };
        let mut us = vec![0.0; out * r];
        for i in 0..out {
            for j in 0..r {
                us[i * r + j] = u[i * r + j] * planted[j];
            }
        }
        let mut b = vec![0.0; out * r];
        gemm_f64(out, r, r, &mut b, r, false, 1.0, &us, r, false, &m, r, false);
        let mut a = vec![0.0; r * inp];
        gemm_f64(r, inp, r, &mut a, inp, false, 1.0, &minv, r, false, &w, r, true);
        let mut ba = vec![0.0; out * inp];
        gemm_f64(out, inp, r, &mut ba, inp, false, 1.0, &b, r, false, &a, inp, false);

        let (fu, fv, sigma) = low_rank_svd(&b, &a, out, r, inp).unwrap();
        assert_close_f64("σ", &sigma, &planted, 1e-9, 1e-9);
        let mut back = vec![0.0; out * inp];
        gemm_f64(out, inp, r, &mut back, inp, false, 1.0, &fu, r, false, &fv, inp, false);
        assert_close_f64("U·S·Vᵀ = b·a", &back, &ba, 1e-9, 1e-9);
        let mut vvt = vec![0.0; r * r];
        gemm_f64(r, r, inp, &mut vvt, r, false, 1.0, &fv, inp, false, &fv, inp, true);
        let eye: Vec<f64> = (0..r * r).map(|i| if i % (r + 1) == 0 { 1.0 } else { 0.0 }).collect();
        assert_close_f64("V·Vᵀ = I", &vvt, &eye, 1e-9, 1e-9);
        for k in 1..r {
            let mut t = vec![0.0; out * inp];
            gemm_f64(out, inp, k, &mut t, inp, false, 1.0, &fu, r, false, &fv, inp, false);
            let err: f64 = t.iter().zip(&ba).map(|(x, y)| (x - y) * (x - y)).sum();
            let dropped: f64 = planted[k..].iter().map(|s| s * s).sum();
            assert!((err - dropped).abs() <= 1e-9 * (1.0 + dropped), "k={k}: {err} vs {dropped}");
        }
        assert!(low_rank_svd(&b, &a, out, r + 1, inp).is_err());
    }

    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let x = random_f64(3 * n * n, 1.0, seed);
        let mut a = vec![0f64; n * n];
        gemm_f64(n, n, 3 * n, &mut a, n, false, 1.0, &x, 3 * n, false, &x, 3 * n, true);
        for i in 0..n {
            a[i * n + i] += 0.1;
        }
        a
    }

    fn matmul(a: &[f64], b: &[f64], n: usize, a_t: bool, b_t: bool) -> Vec<f64> {
        let mut c = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                c[i * n + j] = (0..n)
                    .map(|p| {
                        let x = if a_t { a[p * n + i] } else { a[i * n + p] };
                        let y = if b_t { b[j * n + p] } else { b[p * n + j] };
                        x * y
                    })
                    .sum();
            }
        }
        c
    }

    #[test]
    fn blocked_cholesky_reconstructs_the_matrix() {
        for n in [1, 5, 64, 65, 150] {
            let a = spd(n, n as u64);
            let mut l = a.clone();
            cholesky_lower(&mut l, n).unwrap();
            assert!((0..n).all(|i| (i + 1..n).all(|j| l[i * n + j] == 0.0)));
            assert_close_f64(&format!("L·Lᵀ n={n}"), &matmul(&l, &l, n, false, true), &a, 1e-9, 1e-9);
        }
    }

    #[test]
    fn triangular_inverse_is_exact_on_a_hand_worked_case() {
        // L = [[2, 0], [1, 4]] → L⁻¹ = [[1/2, 0], [−1/8, 1/4]]
        assert_eq!(invert_lower(&[2.0, 0.0, 1.0, 4.0], 2), vec![0.5, 0.0, -0.125, 0.25]);
        for n in [40, 64, 65, 130, 200] {
            let mut l = spd(n, 9);
            cholesky_lower(&mut l, n).unwrap();
            let li = invert_lower(&l, n);
            assert!((0..n).all(|i| (i + 1..n).all(|j| li[i * n + j] == 0.0)), "lower triangular");
            let eye: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { 1.0 } else { 0.0 }).collect();
            assert_close_f64(&format!("L·L⁻¹ n={n}"), &matmul(&l, &li, n, false, false), &eye, 1e-9, 0.0);
        }
    }

    #[test]
    fn inverse_factor_satisfies_its_definition() {
        let n = 70;
        let a = spd(n, 3);
        let u = inverse_cholesky_upper(a.clone(), n).unwrap();
        assert!((0..n).all(|i| (0..i).all(|j| u[i * n + j] == 0.0)), "U is upper triangular");
        assert!((0..n).all(|i| u[i * n + i] > 0.0), "U has a positive diagonal (the unique factor)");
        // A · (Uᵀ U) = I
        let inv = matmul(&u, &u, n, true, false);
        let id = matmul(&a, &inv, n, false, false);
        let eye: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { 1.0 } else { 0.0 }).collect();
        assert_close_f64("A·A⁻¹", &id, &eye, 1e-8, 0.0);
    }

    /// A = [[4, 2], [2, 3]]: A⁻¹ = [[3/8, −1/4], [−1/4, 1/2]] = Uᵀ·U for
    /// U = [[√(3/8), −(1/4)/√(3/8)], [0, 1/√3]] (worked by hand from UᵀU's entries).
    #[test]
    fn inverse_factor_on_a_hand_worked_case() {
        let u = inverse_cholesky_upper(vec![4.0, 2.0, 2.0, 3.0], 2).unwrap();
        let a = (3.0f64 / 8.0).sqrt();
        let want = [a, -0.25 / a, 0.0, 1.0 / 3f64.sqrt()];
        assert_close_f64("U of [[4, 2], [2, 3]]", &u, &want, 1e-15, 1e-15);
    }

    #[test]
    fn indefinite_matrix_is_an_error() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert!(cholesky_lower(&mut a, 2).unwrap_err().to_string().contains("positive definite"));
        let e = inverse_cholesky_upper(vec![1.0, 2.0, 2.0, 1.0], 2).unwrap_err().to_string();
        assert!(e.contains("positive definite"), "{e}");
        assert!(inverse_cholesky_upper(vec![1.0; 3], 2).is_err(), "3 values for 2x2");
    }
}
