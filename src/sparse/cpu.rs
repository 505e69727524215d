//! Expanding a compressed weight on the host (the reference): for every (r, c), with v the
//! kept value of (r, c) if any:
//!   Overwrite: out[r, c] = v if kept, else 0
//!   AddKept:   out[r, c] = out[r, c] + v if kept, else 0   (sum in f32, rounded to T)
//!   MaskOnly:  out[r, c] = out[r, c] if kept, else 0
//! and the inverse, [`gather`]: v = dense[r, c] for every kept (r, c) (values \[nnz\]).

use rayon::prelude::*;

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

/// Bytes of metadata per row.
pub(crate) fn meta_stride(cols: usize, format: SparseFormat) -> usize {
    match format {
        SparseFormat::Bitmask => cols.div_ceil(8),
        SparseFormat::NM { n, m } => (cols / m * n * index_bits(m)).div_ceil(8),
    }
}

/// Calls `f(c, k)` for the k-th kept entry of a row, at column c, in value order; `meta` is
/// the row's mask bytes or packed N:M positions.
#[inline(always)]
pub(crate) fn visit_row(cols: usize, format: SparseFormat, meta: &[u8], mut f: impl FnMut(usize, usize)) {
    match format {
        SparseFormat::Bitmask => {
            let mut k = 0;
            for (i, &b) in meta.iter().enumerate() {
                let mut b = b;
                while b != 0 {
                    let c = 8 * i + b.trailing_zeros() as usize;
                    // Padding bits past the last column are zero in a valid mask.
                    if c < cols {
                        f(c, k);
                    }
                    k += 1;
                    b &= b - 1;
                }
            }
        }
        SparseFormat::NM { n, m } => {
            let bits = index_bits(m);
            for slot in 0..cols / m * n {
                let p = (0..bits).fold(0usize, |p, b| {
                    let at = slot * bits + b;
                    p | ((((meta[at / 8] >> (at % 8)) & 1) as usize) << b)
                });
                f(slot / n * m + p, slot);
            }
        }
    }
}

/// Where row r's values start.
fn row_start(r: usize, cols: usize, format: SparseFormat, offsets: Option<&[u32]>) -> usize {
    match format {
        SparseFormat::Bitmask => offsets.map_or(0, |o| o[r] as usize),
        SparseFormat::NM { n, m } => r * (cols / m * n),
    }
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
    if cols == 0 {
        return;
    }
    let stride = meta_stride(cols, format);
    // Rows are independent: expanded in parallel (each row knows where its values start).
    out[..rows * cols].par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let bits = &meta[r * stride..(r + 1) * stride];
        // Pass 1: clear what the mask drops (everything, for Overwrite).
        match (mode, format) {
            (Expand::Overwrite, _) => row.fill(T::default()),
            (_, SparseFormat::Bitmask) => {
                for (chunk, &b) in row.chunks_mut(8).zip(bits) {
                    if b != 0xff {
                        for (j, o) in chunk.iter_mut().enumerate() {
                            *o = if b >> j & 1 == 1 { *o } else { T::default() };
                        }
                    }
                }
            }
            (_, SparseFormat::NM { .. }) => {
                let mut keep = vec![false; cols];
                visit_row(cols, format, bits, |c, _| keep[c] = true);
                for (o, k) in row.iter_mut().zip(keep) {
                    if !k {
                        *o = T::default();
                    }
                }
            }
        }
        // Pass 2: the kept positions with their values.
        if mode != Expand::MaskOnly {
            let start = row_start(r, cols, format, offsets);
            visit_row(cols, format, bits, |c, k| {
                if let Some(&v) = values.get(start + k) {
                    put(&mut row[c], v, mode);
                }
            });
        }
    });
}

/// values\[k\] ← dense at the k-th kept position (row-major), for every kept entry.
pub fn gather<T: FloatElement>(
    rows: usize,
    cols: usize,
    format: SparseFormat,
    values: &mut [T],
    meta: &[u8],
    offsets: Option<&[u32]>,
    dense: &[T],
) {
    if cols == 0 {
        return;
    }
    let stride = meta_stride(cols, format);
    // Split the values row by row so that rows gather in parallel.
    let mut per_row = Vec::with_capacity(rows);
    let mut rest = values;
    for r in 0..rows {
        let len = match (format, offsets) {
            (SparseFormat::Bitmask, Some(o)) => (o[r + 1] - o[r]) as usize,
            (SparseFormat::Bitmask, None) => 0,
            (SparseFormat::NM { n, m }, _) => cols / m * n,
        };
        let rest_len = rest.len();
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(len.min(rest_len));
        per_row.push(head);
        rest = tail;
    }
    per_row.into_par_iter().enumerate().for_each(|(r, vals)| {
        let row = &dense[r * cols..(r + 1) * cols];
        visit_row(cols, format, &meta[r * stride..(r + 1) * stride], |c, k| {
            if let Some(v) = vals.get_mut(k) {
                *v = row[c];
            }
        });
    });
}
