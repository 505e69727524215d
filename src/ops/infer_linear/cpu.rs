//! The inference linear's readable reference: y [tokens, rows] = x [tokens, cols] · Wᵀ,
//!   y[t, r] = Σ_c x[t, c] · W[r, c]   (f64 sums, rounded to f32),
//! with W [rows, cols] dense, or compressed (bitmask or N:M, see
//! [`crate::sparse::SparseWeight`]), whose kept entries are visited in value order.

use crate::sparse::cpu::{meta_stride, visit_row};
use crate::sparse::SparseFormat;
use crate::storage::FloatElement;

/// Dense W [rows, cols].
pub fn dense<T: FloatElement>(x: &[f32], tokens: usize, w: &[T], rows: usize, cols: usize) -> Vec<f32> {
    let mut y = vec![0f32; tokens * rows];
    for t in 0..tokens {
        for r in 0..rows {
            let mut acc = 0f64;
            for c in 0..cols {
                acc += x[t * cols + c] as f64 * w[r * cols + c].to_f32() as f64;
            }
            y[t * rows + r] = acc as f32;
        }
    }
    y
}

/// Compressed W: `values` and `meta` (mask bytes or packed N:M positions) as stored, with
/// the bitmask's row offsets.
#[allow(clippy::too_many_arguments)]
pub fn compressed<T: FloatElement>(
    x: &[f32],
    tokens: usize,
    rows: usize,
    cols: usize,
    format: SparseFormat,
    values: &[T],
    meta: &[u8],
    offsets: Option<&[u32]>,
) -> Vec<f32> {
    let stride = meta_stride(cols, format);
    let mut y = vec![0f32; tokens * rows];
    for r in 0..rows {
        let start = match (format, offsets) {
            (SparseFormat::NM { n, m }, _) => r * (cols / m * n),
            (SparseFormat::Bitmask, Some(o)) => o[r] as usize,
            (SparseFormat::Bitmask, None) => 0,
        };
        for t in 0..tokens {
            let mut acc = 0f64;
            visit_row(cols, format, &meta[r * stride..(r + 1) * stride], |c, k| {
                acc += x[t * cols + c] as f64 * values[start + k].to_f32() as f64;
            });
            y[t * rows + r] = acc as f32;
        }
    }
    y
}
