//! Expanding a compressed weight on the host (the reference): for every (r, c), with v the
//! kept value of (r, c) if any:
//!   Overwrite: out[r, c] = v if kept, else 0
//!   AddKept:   out[r, c] = out[r, c] + v if kept, else 0   (sum in f32, rounded to T)
//!   MaskOnly:  out[r, c] = out[r, c] if kept, else 0

use super::nm::index_bits;
use super::weight::{Expand, SparseFormat};
use crate::storage::FloatElement;

#[inline(always)]
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
    use rayon::prelude::*;
    if cols == 0 {
        return;
    }
    // Rows are independent: expanded in parallel (each row knows where its values start).
    let rows_out = out[..rows * cols].par_chunks_mut(cols).enumerate();
    match format {
        SparseFormat::Bitmask => {
            let stride = cols.div_ceil(8);
            rows_out.for_each(|(r, row)| {
                let bits = &meta[r * stride..(r + 1) * stride];
                // Pass 1: clear what the mask drops (everything, for Overwrite).
                if mode == Expand::Overwrite {
                    row.fill(T::default());
                } else {
                    for (chunk, &b) in row.chunks_mut(8).zip(bits) {
                        if b != 0xff {
                            for (j, o) in chunk.iter_mut().enumerate() {
                                *o = if b >> j & 1 == 1 { *o } else { T::default() };
                            }
                        }
                    }
                }
                // Pass 2: visit the kept positions (set bits, lowest first) with their values.
                if mode != Expand::MaskOnly {
                    let mut k = offsets.map_or(0, |o| o[r] as usize);
                    for (i, &b) in bits.iter().enumerate() {
                        let mut b = b;
                        while b != 0 {
                            // Padding bits past the last column are zero in a valid mask.
                            if let (Some(o), Some(&v)) =
                                (row.get_mut(8 * i + b.trailing_zeros() as usize), values.get(k))
                            {
                                put(o, v, mode);
                            }
                            k += 1;
                            b &= b - 1;
                        }
                    }
                }
            });
        }
        SparseFormat::NM { n, m } => {
            let bits = index_bits(m);
            let per_row = cols / m * n;
            let stride = (per_row * bits).div_ceil(8);
            rows_out.for_each(|(r, row)| {
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
            });
        }
    }
}
