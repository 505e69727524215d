//! SparseGPT on a CUDA device, in f64: the GPU twin of [`cpu::prune`] (the CPU reference,
//! with the equations) and of [`crate::linalg::inverse_cholesky_upper`], matched against
//! them in the tests. Plain numbers in: a sparsity or an N:M pair, a block size, a damping
//! factor; which pattern a pruning method asks for is decided in `crate::prune`. No
//! gradient: these are pruning steps, not differentiable ops. Matrices are row-major device
//! slices; W: [rows, cols] (out × in), H: [cols, cols] = (2/n)·XᵀX.
//!
//! Linear algebra ([`cholesky_lower`], [`invert_lower`], [`inverse_cholesky_upper`]):
//! - Cholesky A = L·Lᵀ, blocked right-looking with 64-wide panels: the diagonal block is
//!   factored by one CUDA block in shared memory, the panel below it by forward substitution
//!   (one thread per row), and the trailing matrix updated by DGEMM, A22 −= P·Pᵀ (the full
//!   square). A pivot that is not > 0 is flagged on the device, read back once at the end, and
//!   becomes an error.
//! - L⁻¹: each 64×64 diagonal block inverted by its own CUDA block, then the halves combined
//!   recursively, X21 = −X22·L21·X11 (two DGEMMs per level).
//! - H⁻¹ = L⁻ᵀ·L⁻¹ (DGEMM), symmetrised, factored again, and transposed: U = chol(H⁻¹)ᵀ.
//!
//! [`prune`], per column block [i1, i2) of `block_size` (at most 256 columns on the GPU):
//! unstructured: scores W1²/diag(U1)² cast to f32, one selection of the ⌊numel·s⌋ lowest over
//! the whole block (`select_block`, ties by flat (row, column) order); then the column loop
//! (one warp per row, N:M groups chosen inside it every M columns from the updated W1) on W in
//! place, and the lazy update W[:, i2:] −= Err1·U[i1:i2, i2:] by DGEMM.

pub mod cpu;
pub mod cuda;

use cudarc::driver::CudaSlice;

use self::cuda::{BlockKeep, CHOL_BLOCK, MAX_BLOCK_COLUMNS};
use crate::device::{CudaBuffer, CudaDevice};
use crate::ops::prune_select::cpu::{prune_lowest_per_row, pruned_count};
use crate::sparse::{check_nm, check_sparsity, BitMask};
use crate::{Error, Result};

/// Checks one call's numbers for a weight of `cols` inputs (shared by the CPU and CUDA
/// versions): `nm` fits the row and `block_size` is a positive multiple of M, or the
/// sparsity is in [0, 1).
pub fn check_args(cols: usize, sparsity: f64, nm: Option<(usize, usize)>, block_size: usize) -> Result<()> {
    match nm {
        Some((n, m)) => {
            check_nm(n, m, cols)?;
            if !block_size.is_multiple_of(m) {
                return Err(Error::invalid(format!("sparsegpt: block size {block_size} is not a multiple of M = {m}")));
            }
        }
        None => check_sparsity(sparsity)?,
    }
    if block_size == 0 {
        return Err(Error::invalid("sparsegpt: block size must be positive"));
    }
    Ok(())
}

/// n·n, or an error unless `len` is exactly that and n > 0.
fn check_square(op: &str, len: usize, n: usize) -> Result<usize> {
    let nn = cuda::product(op, n, n)?;
    if n == 0 || len != nn {
        return Err(Error::invalid(format!("{op}: {len} values for a {n}x{n} matrix (n > 0)")));
    }
    Ok(nn)
}

fn view_error(op: &str, start: usize, len: usize) -> Error {
    Error::invalid(format!("{op}: view at {start} outside a buffer of {len}"))
}

fn not_positive_definite(pivot: usize, value: f64) -> Error {
    Error::invalid(format!("matrix is not positive definite (pivot {pivot} is {value:e}); increase the damping"))
}

/// In-place lower Cholesky factor of the symmetric positive-definite `a` [n, n] (only its lower
/// triangle is read). The lower triangle, diagonal included, becomes L with A = L·Lᵀ; the strict
/// upper triangle is left holding intermediate values (read the result as lower-triangular).
/// A pivot that is not > 0 (or NaN) is an error naming it.
pub fn cholesky_lower(dev: &CudaDevice, a: &mut CudaSlice<f64>, n: usize) -> Result<()> {
    check_square("cholesky", a.len(), n)?;
    let nb = CHOL_BLOCK;
    let mut info = dev.alloc_zeros::<f64>(2)?;
    let mut panel = dev.alloc::<f64>(n.saturating_sub(nb).max(1) * nb)?;
    let mut k0 = 0;
    while k0 < n {
        cuda::chol_diag(dev, a, n, k0, info.slice_mut())?;
        if k0 + nb < n {
            let rest = n - k0 - nb;
            cuda::chol_panel(dev, a, panel.slice_mut(), n, k0, info.slice())?;
            let start = (k0 + nb) * n + k0 + nb;
            let len = a.len();
            let mut trailing = a.try_slice_mut(start..).ok_or_else(|| view_error("cholesky", start, len))?;
            // A22 −= P·Pᵀ over the full square (the strict upper part is never read again).
            cuda::gemm(
                dev,
                rest,
                rest,
                nb,
                &mut trailing,
                n,
                true,
                -1.0,
                panel.slice(),
                nb,
                false,
                panel.slice(),
                nb,
                true,
            )?;
        }
        k0 += nb;
    }
    let info = dev.dtoh(info.slice())?;
    if info[0] != 0.0 {
        return Err(not_positive_definite(info[0] as usize - 1, info[1]));
    }
    Ok(())
}

/// X = L⁻¹ [n, n] for the lower-triangular `l` [n, n] (only its lower triangle is read; the
/// diagonal must be non-zero). X is exactly lower-triangular (zeros above the diagonal).
pub fn invert_lower(dev: &CudaDevice, l: &CudaSlice<f64>, n: usize) -> Result<CudaBuffer<f64>> {
    let nn = check_square("invert_lower", l.len(), n)?;
    let mut x = dev.alloc_zeros::<f64>(nn)?;
    cuda::trtri_diag(dev, l, x.slice_mut(), n)?;
    combine_inverse(dev, l, x.slice_mut(), n, 0, n)?;
    Ok(x)
}

/// Completes X = L⁻¹ on rows and columns [lo, hi) once its 64×64 diagonal blocks are inverted:
/// split at a block boundary `mid`, complete both halves, then X21 = −X22·L21·X11 (from
/// L·X = I on the block [[L11, 0], [L21, L22]]).
fn combine_inverse(
    dev: &CudaDevice,
    l: &CudaSlice<f64>,
    x: &mut CudaSlice<f64>,
    n: usize,
    lo: usize,
    hi: usize,
) -> Result<()> {
    let blocks = (hi - lo).div_ceil(CHOL_BLOCK);
    if blocks < 2 {
        return Ok(());
    }
    let mid = lo + blocks / 2 * CHOL_BLOCK;
    combine_inverse(dev, l, x, n, lo, mid)?;
    combine_inverse(dev, l, x, n, mid, hi)?;
    let (s1, s2) = (mid - lo, hi - mid);
    // T [s2, s1] = X22 · L21
    let mut t = dev.alloc::<f64>(s2 * s1)?;
    {
        let (x22_at, l21_at) = (mid * n + mid, mid * n + lo);
        let x22 = x.try_slice(x22_at..).ok_or_else(|| view_error("invert_lower", x22_at, x.len()))?;
        let l21 = l.try_slice(l21_at..).ok_or_else(|| view_error("invert_lower", l21_at, l.len()))?;
        cuda::gemm(dev, s2, s1, s2, t.slice_mut(), s1, false, 1.0, &x22, n, false, &l21, n, false)?;
    }
    // X21 = −T · X11: X11 lies in rows < mid, X21 in rows ≥ mid, so split the buffer there.
    let len = x.len();
    let (top, mut bottom) = x.try_split_at_mut(mid * n).ok_or_else(|| view_error("invert_lower", mid * n, len))?;
    let x11 = top.try_slice(lo * n + lo..).ok_or_else(|| view_error("invert_lower", lo * n + lo, mid * n))?;
    let mut x21 = bottom.try_slice_mut(lo..).ok_or_else(|| view_error("invert_lower", mid * n + lo, len))?;
    cuda::gemm(dev, s2, s1, s1, &mut x21, n, false, -1.0, t.slice(), s1, false, &x11, n, false)
}

/// The upper-triangular U [n, n] with H⁻¹ = Uᵀ·U for the symmetric positive-definite `h`
/// [n, n], computed as SparseGPT does: L = chol(H); H⁻¹ = L⁻ᵀ·L⁻¹, symmetrised;
/// U = chol(H⁻¹)ᵀ. The CPU's [`crate::linalg::inverse_cholesky_upper`] reaches the same
/// unique factor by one reversed factorisation (half the work), so the tests compare two
/// routes to the same U. U is exactly zero below the
/// diagonal. Errors when H (or the computed H⁻¹) is not positive definite.
pub fn inverse_cholesky_upper(dev: &CudaDevice, h: &CudaSlice<f64>, n: usize) -> Result<CudaBuffer<f64>> {
    let nn = check_square("inverse_cholesky_upper", h.len(), n)?;
    let mut a = dev.alloc::<f64>(nn)?;
    dev.stream().memcpy_dtod(h, a.slice_mut())?;
    cholesky_lower(dev, a.slice_mut(), n)?;
    let mut x = invert_lower(dev, a.slice(), n)?;
    // L is no longer needed: its buffer receives H⁻¹ = Xᵀ·X.
    cuda::gemm(dev, n, n, n, a.slice_mut(), n, false, 1.0, x.slice(), n, true, x.slice(), n, false)?;
    cuda::symmetrize(dev, a.slice_mut(), n)?;
    cholesky_lower(dev, a.slice_mut(), n)?;
    cuda::transpose_lower_to_upper(dev, a.slice(), x.slice_mut(), n)?;
    Ok(x)
}

/// SparseGPT steps 1–3 on the device: zero the weight columns of dead inputs (H_jj = 0) in `w`
/// [rows, cols], damp a copy of `h` [cols, cols] (dead diagonal → 1, then + `percdamp`·mean of
/// the diagonal, summed on the host in the CPU reference's order) and return U
/// ([`inverse_cholesky_upper`]). Like [`cpu::prepare`].
pub fn prepare(
    dev: &CudaDevice,
    w: &mut CudaSlice<f64>,
    h: &CudaSlice<f64>,
    rows: usize,
    cols: usize,
    percdamp: f64,
) -> Result<CudaBuffer<f64>> {
    if rows == 0 || cols == 0 || Some(w.len()) != rows.checked_mul(cols) || Some(h.len()) != cols.checked_mul(cols) {
        return Err(Error::invalid(format!(
            "sparsegpt: W has {} values for {rows}x{cols}, H has {} for {cols}x{cols} (both non-empty)",
            w.len(),
            h.len()
        )));
    }
    let mut diag = dev.alloc::<f64>(cols)?;
    cuda::dead_inputs(dev, h, w, diag.slice_mut(), rows, cols)?;
    let mean_diag = dev.dtoh(diag.slice())?.iter().sum::<f64>() / cols as f64;
    let mut damped = dev.alloc::<f64>(cols * cols)?;
    dev.stream().memcpy_dtod(h, damped.slice_mut())?;
    cuda::damp(dev, damped.slice_mut(), diag.slice(), cols, percdamp * mean_diag)?;
    inverse_cholesky_upper(dev, damped.slice(), cols)
}

/// The unstructured selection over one block: prunes the ⌊len·s⌋ lowest of `scores` [len]
/// (ties to the lower flat index, NaN lowest) and returns packed keep bits on the device
/// (bit k % 8 of byte k / 8 is element k; the [`BitMask`] layout of one row).
///
/// For now the scores go to the host and through [`prune_lowest_per_row`], exactly the CPU
/// reference's selection; this function is the one step to swap for a device selection
/// with the same contract.
fn select_block(dev: &CudaDevice, scores: &CudaSlice<f32>, sparsity: f64) -> Result<CudaBuffer<u8>> {
    let host = dev.dtoh(scores)?;
    let mask = prune_lowest_per_row(&host, 1, host.len(), pruned_count(host.len(), sparsity));
    dev.htod(mask.bytes())
}

/// Prunes `w` ([rows, cols], f64, on the device) in place using H ([cols, cols]), as
/// [`cpu::prune`] does with the same numbers; returns the mask (1 = kept) on the host.
/// Pruned entries of `w` are exact zeros and the kept ones carry SparseGPT's updates.
/// Column blocks wider than 256 are not supported on the GPU (an error).
#[allow(clippy::too_many_arguments)]
pub fn prune(
    dev: &CudaDevice,
    w: &mut CudaSlice<f64>,
    h: &CudaSlice<f64>,
    rows: usize,
    cols: usize,
    sparsity: f64,
    nm: Option<(usize, usize)>,
    block_size: usize,
    percdamp: f64,
) -> Result<BitMask> {
    check_args(cols, sparsity, nm, block_size)?;
    let block = block_size.min(cols.max(1));
    if block > MAX_BLOCK_COLUMNS {
        return Err(Error::invalid(format!(
            "sparsegpt on CUDA: block size {block_size} exceeds {MAX_BLOCK_COLUMNS} columns"
        )));
    }
    let u = prepare(dev, w, h, rows, cols, percdamp)?;
    let mut keep = dev.alloc::<u8>(rows * cols)?;
    let mut err1 = dev.alloc::<f64>(rows * block)?;
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + block).min(cols);
        let count = i2 - i1;
        let selected;
        let decide = match nm {
            None => {
                let scores = cuda::block_scores(dev, w, u.slice(), rows, cols, i1, count)?;
                selected = select_block(dev, scores.slice(), sparsity)?;
                BlockKeep::Selected(selected.slice())
            }
            Some((n, m)) => BlockKeep::NM { n, m },
        };
        cuda::block_columns(dev, w, u.slice(), decide, keep.slice_mut(), err1.slice_mut(), rows, cols, i1, count)?;
        if i2 < cols {
            // Lazy update of the columns after the block: W[:, i2:] −= Err1 · U[i1:i2, i2:].
            let (w_len, u_at) = (w.len(), i1 * cols + i2);
            let mut w_rest = w.try_slice_mut(i2..).ok_or_else(|| view_error("sparsegpt", i2, w_len))?;
            let u_rest = u.slice().try_slice(u_at..).ok_or_else(|| view_error("sparsegpt", u_at, u.len()))?;
            cuda::gemm(
                dev,
                rows,
                cols - i2,
                count,
                &mut w_rest,
                cols,
                true,
                -1.0,
                err1.slice(),
                count,
                false,
                &u_rest,
                cols,
                false,
            )?;
        }
        i1 = i2;
    }
    let bits = cuda::pack_mask(dev, keep.slice(), rows, cols)?;
    BitMask::from_bytes(rows, cols, dev.dtoh(bits.slice())?)
}

/// One case of [`TEST_CASES`]: (rows, cols, (sparsity, N:M), block size).
#[doc(hidden)]
pub type TestCase = (usize, usize, (f64, Option<(usize, usize)>), usize);

/// The cases of the CUDA test `prune_matches_cpu`, shared with its CPU execution
/// (tests/cuda_on_cpu/sparsegpt.rs); case i uses seed 100 + 10·i.
#[doc(hidden)]
pub const TEST_CASES: [TestCase; 15] = [
    (9, 40, (0.5, None), 16),
    (23, 77, (0.5, None), 32),
    (70, 300, (0.5, None), 128),
    (7, 250, (0.5, None), 200),
    (41, 129, (0.7, None), 16),
    (13, 150, (0.7, None), 32),
    (37, 259, (0.7, None), 128),
    (11, 300, (0.7, None), 256),
    (17, 96, (0.0, Some((2, 4))), 16),
    (33, 200, (0.0, Some((2, 4))), 32),
    (70, 300, (0.0, Some((2, 4))), 128),
    (11, 300, (0.0, Some((2, 4))), 256),
    (21, 48, (0.0, Some((4, 8))), 16),
    (9, 136, (0.0, Some((4, 8))), 32),
    (50, 264, (0.0, Some((4, 8))), 128),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cuda_for_tests;
    use crate::linalg;
    use crate::testing::{assert_close_f64, random_f64};
    use crate::Device;

    fn gpu(test: &str) -> Option<CudaDevice> {
        match cuda_for_tests(test)? {
            Device::Cuda(d) => Some(d),
            Device::Cpu(_) => None,
        }
    }

    /// X·Xᵀ + 0.1·I with X [n, 3n] uniform: condition number about 14.
    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let x = random_f64(3 * n * n, 1.0, seed);
        let mut a = vec![0f64; n * n];
        linalg::gemm_f64(n, n, 3 * n, &mut a, n, false, 1.0, &x, 3 * n, false, &x, 3 * n, true);
        for i in 0..n {
            a[i * n + i] += 0.1;
        }
        a
    }

    fn lower(a: &[f64], n: usize) -> Vec<f64> {
        (0..n * n).map(|k| if k % n <= k / n { a[k] } else { 0.0 }).collect()
    }

    fn max_abs(v: &[f64]) -> f64 {
        v.iter().fold(0.0, |m, x| m.max(x.abs()))
    }

    const SIZES: [usize; 6] = [1, 5, 64, 65, 200, 513];

    #[test]
    fn cuda_cholesky_matches_cpu() {
        let Some(dev) = gpu("sparsegpt::cuda_cholesky_matches_cpu") else { return };
        for n in SIZES {
            let a = spd(n, n as u64);
            let mut want = a.clone();
            linalg::cholesky_lower(&mut want, n).unwrap();
            let mut got = dev.htod(&a).unwrap();
            cholesky_lower(&dev, got.slice_mut(), n).unwrap();
            let got = lower(&dev.dtoh(got.slice()).unwrap(), n);
            assert_close_f64(&format!("L n={n}"), &got, &want, 1e-9 * max_abs(&want), 1e-9);
        }
    }

    #[test]
    fn cuda_triangular_inverse_matches_cpu() {
        let Some(dev) = gpu("sparsegpt::cuda_triangular_inverse_matches_cpu") else { return };
        for n in SIZES {
            let mut l = spd(n, 10 + n as u64);
            linalg::cholesky_lower(&mut l, n).unwrap();
            let want = linalg::invert_lower(&l, n);
            let got = dev.dtoh(invert_lower(&dev, dev.htod(&l).unwrap().slice(), n).unwrap().slice()).unwrap();
            assert!((0..n * n).all(|k| k % n <= k / n || got[k] == 0.0), "L⁻¹ n={n} is not lower-triangular");
            assert_close_f64(&format!("L⁻¹ n={n}"), &got, &want, 1e-9 * max_abs(&want), 1e-9);
        }
    }

    #[test]
    fn cuda_inverse_cholesky_factor_matches_cpu() {
        let Some(dev) = gpu("sparsegpt::cuda_inverse_cholesky_factor_matches_cpu") else { return };
        for n in SIZES {
            let a = spd(n, 20 + n as u64);
            let want = linalg::inverse_cholesky_upper(a.clone(), n).unwrap();
            let got = inverse_cholesky_upper(&dev, dev.htod(&a).unwrap().slice(), n).unwrap();
            let got = dev.dtoh(got.slice()).unwrap();
            assert!((0..n * n).all(|k| k % n >= k / n || got[k] == 0.0), "U n={n} is not upper-triangular");
            assert_close_f64(&format!("U n={n}"), &got, &want, 1e-9 * max_abs(&want), 1e-9);
        }
    }

    #[test]
    fn cuda_indefinite_or_malformed_matrices_are_errors() {
        let Some(dev) = gpu("sparsegpt::cuda_indefinite_or_malformed_matrices_are_errors") else { return };
        let small = dev.htod(&[1.0, 2.0, 2.0, 1.0]).unwrap();
        let e = inverse_cholesky_upper(&dev, small.slice(), 2).unwrap_err().to_string();
        assert!(e.contains("positive definite") && e.contains("pivot 1"), "{e}");
        // A failure in the second panel: every later kernel must stand down, and the error
        // must name the first failing pivot.
        let n = 150;
        let mut a = spd(n, 7);
        a[100 * n + 100] = -1.0;
        let mut buf = dev.htod(&a).unwrap();
        let e = cholesky_lower(&dev, buf.slice_mut(), n).unwrap_err().to_string();
        assert!(e.contains("pivot 100"), "{e}");
        let mut nan = spd(70, 8);
        nan[3] = f64::NAN;
        nan[3 * 70] = f64::NAN;
        assert!(inverse_cholesky_upper(&dev, dev.htod(&nan).unwrap().slice(), 70).is_err());
        // Shape errors, not panics.
        assert!(inverse_cholesky_upper(&dev, small.slice(), 3).is_err());
        assert!(invert_lower(&dev, small.slice(), 0).is_err());
    }

    use crate::testing::correlated_hessian as hessian;

    #[test]
    fn cuda_prepare_matches_cpu() {
        let Some(dev) = gpu("sparsegpt::cuda_prepare_matches_cpu") else { return };
        let (rows, cols) = (13, 101);
        let h = hessian(cols, 3, &[0, 64]);
        let w0 = random_f64(rows * cols, 1.0, 4);
        let mut w_cpu = w0.clone();
        let u_cpu = cpu::prepare(&mut w_cpu, h.clone(), rows, cols, 0.01).unwrap();
        let mut w_gpu = dev.htod(&w0).unwrap();
        let u_gpu = prepare(&dev, w_gpu.slice_mut(), dev.htod(&h).unwrap().slice(), rows, cols, 0.01).unwrap();
        assert_eq!(dev.dtoh(w_gpu.slice()).unwrap(), w_cpu, "dead columns zeroed, nothing else touched");
        let u_gpu = dev.dtoh(u_gpu.slice()).unwrap();
        assert_close_f64("U", &u_gpu, &u_cpu, 1e-9 * max_abs(&u_cpu), 1e-9);
    }

    #[test]
    fn cuda_prune_matches_cpu() {
        let Some(dev) = gpu("sparsegpt::cuda_prune_matches_cpu") else { return };
        for (seed, (rows, cols, (s, nm), block_size)) in TEST_CASES.into_iter().enumerate() {
            let seed = 100 + 10 * seed as u64;
            let what = format!("{s} {nm:?} {rows}x{cols} block {block_size}");
            let h = hessian(cols, seed, &[3]);
            let w0 = random_f64(rows * cols, 1.0, seed + 5);
            let mut want = w0.clone();
            let want_mask = cpu::prune(&mut want, h.clone(), rows, cols, s, nm, block_size, 0.01).unwrap();
            let mut w_gpu = dev.htod(&w0).unwrap();
            let h_gpu = dev.htod(&h).unwrap();
            let mask = prune(&dev, w_gpu.slice_mut(), h_gpu.slice(), rows, cols, s, nm, block_size, 0.01).unwrap();
            let got = dev.dtoh(w_gpu.slice()).unwrap();
            let flips: Vec<(usize, usize)> = (0..rows * cols)
                .map(|k| (k / cols, k % cols))
                .filter(|&(r, c)| mask.get(r, c) != want_mask.get(r, c))
                .collect();
            let shown: Vec<String> = flips
                .iter()
                .take(8)
                .map(|&(r, c)| {
                    format!(
                        "({r}, {c}): GPU kept {} w {:e}, CPU w {:e}",
                        mask.get(r, c),
                        got[r * cols + c],
                        want[r * cols + c]
                    )
                })
                .collect();
            assert!(
                flips.is_empty(),
                "{what}: masks differ at {} positions (a near-tie of scores computed from weights that \
                 agree to ~1e-12 flips them; report it, do not loosen): {shown:?}",
                flips.len()
            );
            assert!((0..rows * cols).all(|k| mask.get(k / cols, k % cols) || got[k] == 0.0), "{what}: pruned ≠ 0");
            assert_close_f64(&format!("{what} weights"), &got, &want, 1e-9 * max_abs(&want), 1e-9);
        }
    }

    #[test]
    fn cuda_prune_rejects_bad_arguments() {
        let Some(dev) = gpu("sparsegpt::cuda_prune_rejects_bad_arguments") else { return };
        let (rows, cols) = (4, 512);
        let h = dev.htod(&hessian(cols, 1, &[])).unwrap();
        let mut w = dev.htod(&random_f64(rows * cols, 1.0, 2)).unwrap();
        let un = (0.5, None);
        for ((s, nm), block, r, c) in [
            (un, 0, rows, cols),
            (un, 512, rows, cols),
            ((0.0, Some((2, 4))), 30, rows, cols),
            ((0.0, Some((2, 3))), 30, rows, cols),
            ((1.0, None), 128, rows, cols),
            (un, 128, rows + 1, cols),
            (un, 128, 0, cols),
        ] {
            let what = format!("{s} {nm:?} block {block} {r}x{c}");
            assert!(prune(&dev, w.slice_mut(), h.slice(), r, c, s, nm, block, 0.01).is_err(), "{what}");
        }
    }
}
