//! `cuda/cholesky.cu` on the CPU, on row-major f64 [n, n] matrices, each kernel alone against
//! its piece of `sparsetune::linalg` (or its formula), then in `ops::sparsegpt`'s sequences:
//! - `chol_diag` at every block start k0: an SPD block (NaN above its diagonal, never read)
//!   set into a random matrix becomes `linalg::cholesky_lower` of it; nothing else changes;
//! - `chol_panel` below every block with rows below it: the random rows become
//!   B·L_kk⁻ᵀ (`linalg::invert_lower`, one product), in `a` and in the contiguous panel;
//! - `trtri_diag`: each diagonal block of L (NaN above the diagonal, never read) inverted in
//!   full into a NaN buffer as `linalg::invert_lower` of the block; nothing else written;
//! - `symmetrize` and `transpose_lower_to_upper` (NaN above the input's diagonal): bit for bit;
//! - the sequences `cholesky_lower`, `invert_lower` and `inverse_cholesky_upper` of
//!   `ops::sparsegpt` with their DGEMMs on the host (`linalg::gemm_f64`, the CPU twin of
//!   `ops::sparsegpt::cuda::gemm`; cuBLAS is not modelled) against `linalg::{cholesky_lower,
//!   invert_lower, inverse_cholesky_upper}`, as the op tests do, with their tolerance
//!   1e-9·max|ref| + 1e-9·|ref|;
//! - a non-positive or NaN pivot writes info = [pivot + 1, value] at the pivot the CPU names,
//!   and every later launch leaves its buffers alone.
//!
//! Sizes: the op tests' 1, 5, 64, 65, 200, 513; a partial diagonal block (63); tiles of the
//! 32×32 kernels full, short and straddled (31, 32, 33); one panel block of 32 rows full and
//! straddled (96, 97); two full blocks and one more row (128, 129).

use cuda_cpu::{Buffer, Guard};
use sparsetune::linalg::{self, gemm_f64};
use sparsetune::ops::sparsegpt::cuda::{
    chol_diag_geometry, chol_panel_geometry, symmetrize_geometry, transpose_lower_to_upper_geometry,
    trtri_diag_geometry, CHOL_BLOCK as NB,
};
use sparsetune::testing::{assert_close_f64, random_f64};

use crate::{each_case, i32s, run};

/// The op tests' sizes, then the edges named in the header.
const SIZES: [usize; 14] = [1, 5, 64, 65, 200, 513, 63, 31, 32, 33, 96, 97, 128, 129];

/// X·Xᵀ + 0.1·I with X [n, 3n] uniform: the op tests' SPD matrices (condition number about 14).
pub fn spd(n: usize, seed: u64) -> Vec<f64> {
    let x = random_f64(3 * n * n, 1.0, seed);
    let mut a = vec![0f64; n * n];
    gemm_f64(n, n, 3 * n, &mut a, n, false, 1.0, &x, 3 * n, false, &x, 3 * n, true);
    for i in 0..n {
        a[i * n + i] += 0.1;
    }
    a
}

/// The op tests' comparison: |got − want| ≤ 1e-9·max|want| + 1e-9·|want|.
pub fn assert_matches(what: &str, got: &[f64], want: &[f64]) {
    let max_abs = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert_close_f64(what, got, want, 1e-9 * max_abs, 1e-9);
}

/// Bit patterns, to compare values that must not change (NaN included).
pub fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The elements (i, j) of a row-major [n, n] matrix with `pick(i, j)`, in row-major order.
fn picked(a: &[f64], n: usize, pick: impl Fn(usize, usize) -> bool) -> Vec<f64> {
    (0..n * n).filter(|k| pick(k / n, k % n)).map(|k| a[k]).collect()
}

/// `a` with `fill` above the diagonal.
fn lower_filled(a: &[f64], n: usize, fill: f64) -> Vec<f64> {
    (0..n * n).map(|k| if k % n <= k / n { a[k] } else { fill }).collect()
}

/// A host step between launches (a DGEMM of the op's sequence): `b`'s values changed by `f`.
pub fn on_host(b: Buffer<f64>, guard: Guard, f: impl FnOnce(&mut [f64])) -> Buffer<f64> {
    let mut v = b.to_vec();
    f(&mut v);
    Buffer::from_slice(&v, guard)
}

fn chol_diag(a: &Buffer<f64>, n: usize, k0: usize, info: &Buffer<f64>) {
    let [n_i, k0_i] = i32s([n, k0]);
    run("cholesky", "chol_diag", chol_diag_geometry().unwrap(), &[a, &n_i, &k0_i, info]);
}

fn chol_panel(a: &Buffer<f64>, panel: &Buffer<f64>, n: usize, k0: usize, info: &Buffer<f64>) {
    let [n_i, k0_i] = i32s([n, k0]);
    run("cholesky", "chol_panel", chol_panel_geometry(n, k0).unwrap(), &[a, panel, &n_i, &k0_i, info]);
}

fn trtri_diag(l: &Buffer<f64>, x: &Buffer<f64>, n: usize) {
    run("cholesky", "trtri_diag", trtri_diag_geometry(n).unwrap(), &[l, x, &i32s([n])[0]]);
}

fn symmetrize(a: &Buffer<f64>, n: usize) {
    run("cholesky", "symmetrize", symmetrize_geometry(n).unwrap(), &[a, &i32s([n])[0]]);
}

fn transpose_lower_to_upper(lower: &Buffer<f64>, u: &Buffer<f64>, n: usize) {
    let geometry = transpose_lower_to_upper_geometry(n).unwrap();
    run("cholesky", "transpose_lower_to_upper", geometry, &[lower, u, &i32s([n])[0]]);
}

/// `ops::sparsegpt::cholesky_lower` on the CPU harness (each panel into its own NaN buffer of
/// exactly the rows below the block); returns the matrix and info.
pub fn cholesky_lower(a: Buffer<f64>, n: usize, guard: Guard) -> (Buffer<f64>, Vec<f64>) {
    let info = Buffer::filled(2, 0.0, guard);
    let mut a = a;
    for k0 in (0..n).step_by(NB) {
        chol_diag(&a, n, k0, &info);
        if k0 + NB < n {
            let rest = n - k0 - NB;
            let panel = Buffer::filled(rest * NB, f64::NAN, guard);
            chol_panel(&a, &panel, n, k0, &info);
            let p = panel.to_vec();
            // A22 −= P·Pᵀ over the full square.
            let at = (k0 + NB) * n + k0 + NB;
            a = on_host(a, guard, |a| {
                gemm_f64(rest, rest, NB, &mut a[at..], n, true, -1.0, &p, NB, false, &p, NB, true)
            });
        }
    }
    (a, info.to_vec())
}

/// `ops::sparsegpt::invert_lower`: `trtri_diag` into zeros, then the recursive combination
/// of `combine_inverse` on the host.
pub fn invert_lower(l: &Buffer<f64>, n: usize, guard: Guard) -> Vec<f64> {
    let x = Buffer::filled(n * n, 0.0, guard);
    trtri_diag(l, &x, n);
    let mut x = x.to_vec();
    combine_inverse(&l.to_vec(), &mut x, n, 0, n);
    x
}

/// `ops::sparsegpt::combine_inverse` with `linalg::gemm_f64`: X21 = −X22·L21·X11 on rows and
/// columns [lo, hi), split at the block boundary `mid` it uses.
fn combine_inverse(l: &[f64], x: &mut [f64], n: usize, lo: usize, hi: usize) {
    let blocks = (hi - lo).div_ceil(NB);
    if blocks < 2 {
        return;
    }
    let mid = lo + blocks / 2 * NB;
    combine_inverse(l, x, n, lo, mid);
    combine_inverse(l, x, n, mid, hi);
    let (s1, s2) = (mid - lo, hi - mid);
    let mut t = vec![0f64; s2 * s1];
    gemm_f64(s2, s1, s2, &mut t, s1, false, 1.0, &x[mid * n + mid..], n, false, &l[mid * n + lo..], n, false);
    let (top, bottom) = x.split_at_mut(mid * n);
    gemm_f64(s2, s1, s1, &mut bottom[lo..], n, false, -1.0, &t, s1, false, &top[lo * n + lo..], n, false);
}

/// `ops::sparsegpt::inverse_cholesky_upper` of the SPD `h` [n, n]: L = chol(H), H⁻¹ = L⁻ᵀ·L⁻¹
/// symmetrised, U = chol(H⁻¹)ᵀ (transposed into a NaN buffer, which it must fill).
pub fn inverse_cholesky_upper(h: &[f64], n: usize, guard: Guard) -> Vec<f64> {
    let (a, info) = cholesky_lower(Buffer::from_slice(h, guard), n, guard);
    assert_eq!(info, [0.0, 0.0], "chol(H) n={n}");
    let x = invert_lower(&a, n, guard);
    let a = on_host(a, guard, |a| gemm_f64(n, n, n, a, n, false, 1.0, &x, n, true, &x, n, false));
    symmetrize(&a, n);
    let (a, info) = cholesky_lower(a, n, guard);
    assert_eq!(info, [0.0, 0.0], "chol(H⁻¹) n={n}");
    let u = Buffer::filled(n * n, f64::NAN, guard);
    transpose_lower_to_upper(&a, &u, n);
    u.to_vec()
}

/// `chol_diag` at every block start: the block's lower triangle only, in place.
fn check_chol_diag(n: usize, guard: Guard) {
    for k0 in (0..n).step_by(NB) {
        let what = format!("chol_diag n={n} k0={k0} {guard:?}");
        let b = NB.min(n - k0);
        let in_block = |i: usize, j: usize| (k0..k0 + b).contains(&i) && (k0..k0 + b).contains(&j);
        let s = spd(b, 50 + (n + k0) as u64);
        let mut a0 = random_f64(n * n, 1.0, 40 + k0 as u64);
        for (k, v) in lower_filled(&s, b, f64::NAN).into_iter().enumerate() {
            a0[(k0 + k / b) * n + k0 + k % b] = v;
        }
        let (a, info) = (Buffer::from_slice(&a0, guard), Buffer::filled(2, 0.0, guard));
        chol_diag(&a, n, k0, &info);
        let mut want = s;
        linalg::cholesky_lower(&mut want, b).unwrap();
        let got = a.to_vec();
        let factor = |i: usize, j: usize| in_block(i, j) && j <= i;
        assert_matches(&what, &picked(&got, n, factor), &picked(&want, b, |i, j| j <= i));
        let untouched = |v: &[f64]| bits(&picked(v, n, |i, j| !factor(i, j)));
        assert_eq!(untouched(&got), untouched(&a0), "{what}: written outside the block's lower triangle");
        assert_eq!(info.to_vec(), [0.0, 0.0], "{what}: info");
    }
}

/// `chol_panel` below every block that has rows below it.
fn check_chol_panel(n: usize, guard: Guard) {
    for k0 in (0..n).step_by(NB).filter(|k0| k0 + NB < n) {
        let what = format!("chol_panel n={n} k0={k0} {guard:?}");
        let rest = n - k0 - NB;
        let in_panel = |i: usize, j: usize| i >= k0 + NB && (k0..k0 + NB).contains(&j);
        let mut l = spd(NB, 70 + (n + k0) as u64);
        linalg::cholesky_lower(&mut l, NB).unwrap();
        let mut a0 = random_f64(n * n, 1.0, 60 + k0 as u64);
        for (k, v) in lower_filled(&l, NB, f64::NAN).into_iter().enumerate() {
            a0[(k0 + k / NB) * n + k0 + k % NB] = v;
        }
        let below = picked(&a0, n, in_panel);
        let mut want = vec![0f64; rest * NB];
        let l_inv = linalg::invert_lower(&l, NB);
        gemm_f64(rest, NB, NB, &mut want, NB, false, 1.0, &below, NB, false, &l_inv, NB, true);
        let (a, info) = (Buffer::from_slice(&a0, guard), Buffer::filled(2, 0.0, guard));
        let panel = Buffer::filled(rest * NB, f64::NAN, guard);
        chol_panel(&a, &panel, n, k0, &info);
        let (got, got_panel) = (a.to_vec(), panel.to_vec());
        assert_matches(&what, &got_panel, &want);
        assert_eq!(bits(&picked(&got, n, in_panel)), bits(&got_panel), "{what}: a and the panel differ");
        let untouched = |v: &[f64]| bits(&picked(v, n, |i, j| !in_panel(i, j)));
        assert_eq!(untouched(&got), untouched(&a0), "{what}: written outside the panel");
    }
}

/// The blocked Cholesky of the op test's matrix against `linalg::cholesky_lower`.
fn check_cholesky(n: usize, guard: Guard) {
    let a = spd(n, n as u64);
    let mut want = a.clone();
    linalg::cholesky_lower(&mut want, n).unwrap();
    let (got, info) = cholesky_lower(Buffer::from_slice(&a, guard), n, guard);
    assert_eq!(info, [0.0, 0.0], "cholesky n={n} {guard:?}: info");
    assert_matches(&format!("L n={n} {guard:?}"), &lower_filled(&got.to_vec(), n, 0.0), &want);
}

/// The op test's L (NaN above its diagonal: the Cholesky leaves intermediate values there).
fn factor(n: usize) -> Vec<f64> {
    let mut l = spd(n, 10 + n as u64);
    linalg::cholesky_lower(&mut l, n).unwrap();
    lower_filled(&l, n, f64::NAN)
}

/// `trtri_diag`: each diagonal block in full, nothing outside the diagonal blocks.
fn check_trtri_diag(n: usize, guard: Guard) {
    let what = format!("trtri_diag n={n} {guard:?}");
    let l = factor(n);
    let x = Buffer::filled(n * n, f64::NAN, guard);
    trtri_diag(&Buffer::from_slice(&l, guard), &x, n);
    let got = x.to_vec();
    for k0 in (0..n).step_by(NB) {
        let b = NB.min(n - k0);
        let in_block = |i: usize, j: usize| (k0..k0 + b).contains(&i) && (k0..k0 + b).contains(&j);
        let want = linalg::invert_lower(&lower_filled(&picked(&l, n, in_block), b, 0.0), b);
        assert_matches(&format!("{what} block {k0}"), &picked(&got, n, in_block), &want);
    }
    let off_blocks = picked(&got, n, |i, j| i / NB != j / NB);
    assert!(off_blocks.iter().all(|v| v.is_nan()), "{what}: written outside the diagonal blocks");
}

/// L⁻¹ as the op test checks it: lower-triangular and close to `linalg::invert_lower`.
fn check_invert_lower(n: usize, guard: Guard) {
    let l = factor(n);
    let want = linalg::invert_lower(&lower_filled(&l, n, 0.0), n);
    let got = invert_lower(&Buffer::from_slice(&l, guard), n, guard);
    assert!(picked(&got, n, |i, j| j > i).iter().all(|&v| v == 0.0), "L⁻¹ n={n} {guard:?} is not lower-triangular");
    assert_matches(&format!("L⁻¹ n={n} {guard:?}"), &got, &want);
}

/// `symmetrize` bit for bit: (a_ij + a_ji)/2 on both sides, the diagonal unchanged.
fn check_symmetrize(n: usize, guard: Guard) {
    let a0 = random_f64(n * n, 1.0, 80 + n as u64);
    let want: Vec<f64> =
        (0..n * n).map(|k| if k / n == k % n { a0[k] } else { 0.5 * (a0[k] + a0[(k % n) * n + k / n]) }).collect();
    let a = Buffer::from_slice(&a0, guard);
    symmetrize(&a, n);
    assert_eq!(bits(&a.to_vec()), bits(&want), "symmetrize n={n} {guard:?}");
}

/// `transpose_lower_to_upper` bit for bit into NaN: Lᵀ, exact zeros below the diagonal.
fn check_transpose(n: usize, guard: Guard) {
    let lower = lower_filled(&random_f64(n * n, 1.0, 90 + n as u64), n, f64::NAN);
    let want: Vec<f64> = (0..n * n).map(|k| if k % n >= k / n { lower[(k % n) * n + k / n] } else { 0.0 }).collect();
    let u = Buffer::filled(n * n, f64::NAN, guard);
    transpose_lower_to_upper(&Buffer::from_slice(&lower, guard), &u, n);
    assert_eq!(bits(&u.to_vec()), bits(&want), "transpose_lower_to_upper n={n} {guard:?}");
}

/// U with H⁻¹ = Uᵀ·U as the op test checks it: upper-triangular, close to the CPU's factor.
fn check_inverse_cholesky_upper(n: usize, guard: Guard) {
    let a = spd(n, 20 + n as u64);
    let want = linalg::inverse_cholesky_upper(a.clone(), n).unwrap();
    let got = inverse_cholesky_upper(&a, n, guard);
    assert!(picked(&got, n, |i, j| j < i).iter().all(|&v| v == 0.0), "U n={n} {guard:?} is not upper-triangular");
    assert_matches(&format!("U n={n} {guard:?}"), &got, &want);
}

/// Every kernel of the file, through the whole sequence on the smallest size with a panel.
pub fn smoke() {
    check_inverse_cholesky_upper(65, Guard::After);
}

#[test]
fn chol_diag_factors_each_diagonal_block() {
    each_case(&SIZES, check_chol_diag);
}

#[test]
fn chol_panel_solves_below_each_block() {
    each_case(&SIZES, check_chol_panel);
}

#[test]
fn cholesky_matches_cpu() {
    each_case(&SIZES, check_cholesky);
}

#[test]
fn trtri_diag_inverts_each_diagonal_block() {
    each_case(&SIZES, check_trtri_diag);
}

#[test]
fn triangular_inverse_matches_cpu() {
    each_case(&SIZES, check_invert_lower);
}

#[test]
fn symmetrize_and_transpose_are_exact() {
    each_case(&SIZES, check_symmetrize);
    each_case(&SIZES, check_transpose);
}

#[test]
fn inverse_cholesky_factor_matches_cpu() {
    each_case(&SIZES, check_inverse_cholesky_upper);
}

/// The op test's indefinite matrices: info names the pivot the CPU names, and kernels launched
/// after the failure leave `a` and the panel as they are.
#[test]
fn indefinite_matrices_flag_the_first_pivot() {
    let mut bad_100 = spd(150, 7);
    bad_100[100 * 150 + 100] = -1.0;
    let mut nan_3 = spd(70, 8);
    nan_3[3] = f64::NAN;
    nan_3[3 * 70] = f64::NAN;
    for (a, n, pivot) in [(vec![1.0, 2.0, 2.0, 1.0], 2, 1), (bad_100, 150, 100), (nan_3, 70, 3)] {
        for guard in crate::GUARDS {
            let what = format!("indefinite n={n} {guard:?}");
            let cpu = linalg::cholesky_lower(&mut a.clone(), n).unwrap_err().to_string();
            assert!(cpu.contains(&format!("pivot {pivot} ")), "{what}: the CPU says {cpu}");
            let (got, info) = cholesky_lower(Buffer::from_slice(&a, guard), n, guard);
            assert_eq!(info[0], (pivot + 1) as f64, "{what}: info {info:?}");
            assert!(info[1] <= 0.0 || info[1].is_nan(), "{what}: info {info:?}");
            let info = Buffer::from_slice(&info, guard);
            let before = bits(&got.to_vec());
            chol_diag(&got, n, 0, &info);
            if n > NB {
                let panel = Buffer::filled((n - NB) * NB, f64::NAN, guard);
                chol_panel(&got, &panel, n, 0, &info);
                assert!(panel.to_vec().iter().all(|v| v.is_nan()), "{what}: panel written after the failure");
            }
            assert_eq!(bits(&got.to_vec()), before, "{what}: a written after the failure");
        }
    }
}
