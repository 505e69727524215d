//! RMSNorm reference. x, y, dy, dx: [rows, dim] row-major; w, dw: \[dim\].
//!   r = 1 / sqrt(mean_j x_j² + eps),  y_j = x_j · r · w_j
//!   dx_j = r·dy_j·w_j − x_j · r³ · mean_k(dy_k·w_k·x_k),  dw_j = Σ_rows dy_j · x_j · r

use crate::ops::{sum_f64_by, Real};

/// Σ x_j² in f64 ([`sum_f64_by`]: one sum in order was a chain of dependent f64 additions,
/// ~5% of a 512-token prefill; the decode engine normalises every row with this function).
fn sum_squares<F: Real>(x: &[F]) -> f64 {
    sum_f64_by(x, |v| v.to_f64() * v.to_f64())
}

/// Forward into `y`. Inlined, so that it is compiled for its caller's instruction set (the
/// inference step's members run AVX-512 or AVX2 code).
#[inline(always)]
pub fn forward<F: Real>(x: &[F], w: &[F], eps: f64, dim: usize, y: &mut [F]) {
    for (xr, yr) in x.chunks_exact(dim).zip(y.chunks_exact_mut(dim)) {
        let r = 1.0 / (sum_squares(xr) / dim as f64 + eps).sqrt();
        for j in 0..dim {
            yr[j] = F::from_f64(xr[j].to_f64() * r * w[j].to_f64());
        }
    }
}

/// Backward: writes `dx` (if given) and `dw` (if given, overwritten with the sum over rows).
pub fn backward<F: Real>(
    x: &[F],
    w: &[F],
    dy: &[F],
    eps: f64,
    dim: usize,
    mut dx: Option<&mut [F]>,
    dw: Option<&mut [F]>,
) {
    let mut dw_acc = vec![0f64; if dw.is_some() { dim } else { 0 }];
    for (row, (xr, dyr)) in x.chunks_exact(dim).zip(dy.chunks_exact(dim)).enumerate() {
        let r = 1.0 / (sum_squares(xr) / dim as f64 + eps).sqrt();
        let dot: f64 = (0..dim).map(|j| dyr[j].to_f64() * w[j].to_f64() * xr[j].to_f64()).sum();
        let c = dot * r * r * r / dim as f64;
        if let Some(dx) = dx.as_deref_mut() {
            let dxr = &mut dx[row * dim..(row + 1) * dim];
            for j in 0..dim {
                dxr[j] = F::from_f64(r * dyr[j].to_f64() * w[j].to_f64() - c * xr[j].to_f64());
            }
        }
        for (j, acc) in dw_acc.iter_mut().enumerate() {
            *acc += dyr[j].to_f64() * xr[j].to_f64() * r;
        }
    }
    if let Some(dw) = dw {
        for (d, a) in dw.iter_mut().zip(dw_acc) {
            *d = F::from_f64(a);
        }
    }
}
