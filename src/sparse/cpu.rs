//! Expanding a compressed weight on the host (the reference): for every (r, c), with v the
//! kept value of (r, c) if any:
//!   Overwrite: out[r, c] = v if kept, else 0
//!   AddKept:   out[r, c] = out[r, c] + v if kept, else 0   (sum in f32, rounded to T)
//!   MaskOnly:  out[r, c] = out[r, c] if kept, else 0

use super::nm::index_bits;
use super::weight::{Expand, SparseFormat};
use crate::storage::FloatElement;

fn put<T: FloatElement>(out: &mut T, v: T, mode: Expand) {
    *out = match mode {
        Expand::Overwrite => v,
        Expand::AddKept => T::from_f32(out.to_f32() + v.to_f32()),
        Expand::MaskOnly => *out,
    };
}

/// Expands into `out` [rows·cols]; `meta` is the bitmask or packed N:M positions,
/// `offsets` the Bitmask row offsets.
#[allow(clippy::too_many_arguments)]
pub fn expand<T: FloatElement>(
    rows: usize,
    cols: usize,
    format: SparseFormat,
    values: &[T],
    meta: &[u8],
    offsets: Option<&[u32]>,
    out: &mut [T],
    mode: Expand,
) {
    match format {
        SparseFormat::Bitmask => {
            let stride = cols.div_ceil(8);
            for r in 0..rows {
                let mut k = offsets.map_or(0, |o| o[r] as usize);
                for c in 0..cols {
                    let o = &mut out[r * cols + c];
                    if meta[r * stride + c / 8] >> (c % 8) & 1 == 1 {
                        put(o, values[k], mode);
                        k += 1;
                    } else {
                        *o = T::default();
                    }
                }
            }
        }
        SparseFormat::NM { n, m } => {
            let bits = index_bits(m);
            let per_row = cols / m * n;
            let stride = (per_row * bits).div_ceil(8);
            for r in 0..rows {
                let row = &mut out[r * cols..(r + 1) * cols];
                let mut kept = vec![usize::MAX; cols];
                for slot in 0..per_row {
                    let p = (0..bits).fold(0usize, |p, b| {
                        let at = slot * bits + b;
                        p | ((((meta[r * stride + at / 8] >> (at % 8)) & 1) as usize) << b)
                    });
                    kept[slot / n * m + p] = slot;
                }
                for (c, o) in row.iter_mut().enumerate() {
                    match kept[c] {
                        usize::MAX => *o = T::default(),
                        slot => put(o, values[r * per_row + slot], mode),
                    }
                }
            }
        }
    }
}
