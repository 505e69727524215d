//! Dense f64 linear algebra for SparseGPT on the CPU, row-major [n, n]:
//! blocked Cholesky (A = L·Lᵀ: 64-wide diagonal blocks factored directly, the panel below
//! solved as a product with the inverted diagonal block, trailing update A22 −= P·Pᵀ), the
//! inverse of a lower-triangular matrix (recursive: [[A, 0], [B, C]]⁻¹ =
//! [[A⁻¹, 0], [−C⁻¹·B·A⁻¹, C⁻¹]]), and the upper Cholesky factor of A⁻¹ as SparseGPT builds
//! it: L = chol(A), A⁻¹ = L⁻ᵀ·L⁻¹, A⁻¹ = Uᵀ·U with U = chol(A⁻¹)ᵀ. All products go through
//! the gemm crate (all cores), so the O(n³) work runs at matrix-product speed.

use crate::ops::matmul::cpu::strided;

use crate::{Error, Result};

const BLOCK: usize = 64;

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
            gemm_f64(rest, rest, b, &mut a[start..], n, true, -1.0, &panel, b, false, &panel, b, true);
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

/// The upper-triangular U with A⁻¹ = Uᵀ·U, computed as SparseGPT does:
/// L = chol(A); A⁻¹ = L⁻ᵀ·L⁻¹; U = chol(A⁻¹)ᵀ.
pub fn inverse_cholesky_upper(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = a.to_vec();
    cholesky_lower(&mut l, n)?;
    let li = invert_lower(&l, n);
    let mut inv = vec![0f64; n * n];
    gemm_f64(n, n, n, &mut inv, n, false, 1.0, &li, n, true, &li, n, false);
    // Symmetrise against rounding before the second factorisation.
    for i in 0..n {
        for j in 0..i {
            let v = 0.5 * (inv[i * n + j] + inv[j * n + i]);
            inv[i * n + j] = v;
            inv[j * n + i] = v;
        }
    }
    cholesky_lower(&mut inv, n)?;
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = inv[i * n + j];
        }
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close_f64, random_f64};

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
        let u = inverse_cholesky_upper(&a, n).unwrap();
        assert!((0..n).all(|i| (0..i).all(|j| u[i * n + j] == 0.0)), "U is upper triangular");
        // A · (Uᵀ U) = I
        let inv = matmul(&u, &u, n, true, false);
        let id = matmul(&a, &inv, n, false, false);
        let eye: Vec<f64> = (0..n * n).map(|k| if k / n == k % n { 1.0 } else { 0.0 }).collect();
        assert_close_f64("A·A⁻¹", &id, &eye, 1e-8, 0.0);
    }

    #[test]
    fn indefinite_matrix_is_an_error() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert!(cholesky_lower(&mut a, 2).unwrap_err().to_string().contains("positive definite"));
    }
}
