//! N:M compressed matrices. A [rows, cols] matrix whose every group of M consecutive
//! columns in a row keeps exactly N entries is stored as
//! - `values`: [rows, cols/M·N], the kept values of each group in column order;
//! - `indices`: per row, the in-group position of each kept value, `bits = ceil(log2 M)`
//!   bits each, packed LSB-first into bytes, each row padded to whole bytes
//!   ([rows, ceil(cols/M·N·bits / 8)]).
//!
//! For 2:4 with bf16 values a group of 4 costs 2·16 + 2·2 = 36 bits: 1.125 bytes per
//! weight instead of 2 (the same as a 50% bitmask layout).

use rayon::prelude::*;

use super::BitMask;
use crate::{Error, Result};

/// An N:M compressed matrix of `T` (f32 or bf16 in practice).
#[derive(Clone, Debug, PartialEq)]
pub struct NmMatrix<T> {
    rows: usize,
    cols: usize,
    n: usize,
    m: usize,
    values: Vec<T>,
    indices: Vec<u8>,
}

/// Checks an N:M pattern against a row length: 0 < N < M and M divides cols.
pub fn check_nm(n: usize, m: usize, cols: usize) -> Result<()> {
    if n == 0 || n >= m {
        return Err(Error::invalid(format!("N:M needs 0 < N < M, got {n}:{m}")));
    }
    if !cols.is_multiple_of(m) {
        return Err(Error::invalid(format!(
            "N:M with M = {m} needs rows whose length is a multiple of {m}, got {cols}"
        )));
    }
    Ok(())
}

/// Bits per in-group index: ceil(log2 M).
pub fn index_bits(m: usize) -> usize {
    (usize::BITS - (m - 1).leading_zeros()) as usize
}

/// The `indices` of an N:M matrix from its mask alone ([rows, ceil(cols/M·N·bits / 8)]
/// bytes, see the module docs): `mask` must keep exactly N entries in every group of M.
pub fn positions(mask: &BitMask, n: usize, m: usize) -> Result<Vec<u8>> {
    let (rows, cols) = (mask.rows(), mask.cols());
    check_nm(n, m, cols)?;
    let bits = index_bits(m);
    let stride = NmMatrix::<u8>::index_stride(cols, n, m);
    let mut indices = vec![0u8; rows * stride];
    if stride == 0 {
        return Ok(indices);
    }
    // Rows are independent: packed in parallel (7B shapes: 6.5e9 mask bits).
    indices.par_chunks_mut(stride).enumerate().try_for_each(|(r, row)| -> Result<()> {
        let mut slot = 0usize;
        for g in 0..cols / m {
            let mut kept = 0;
            for p in 0..m {
                if !mask.get(r, g * m + p) {
                    continue;
                }
                kept += 1;
                if kept > n {
                    break;
                }
                for b in 0..bits {
                    if (p >> b) & 1 == 1 {
                        let at = slot * bits + b;
                        row[at / 8] |= 1 << (at % 8);
                    }
                }
                slot += 1;
            }
            if kept != n {
                return Err(Error::invalid(format!(
                    "row {r}, group {g}: {kept} kept entries where {n}:{m} needs exactly {n}"
                )));
            }
        }
        Ok(())
    })?;
    Ok(indices)
}

impl<T: Copy + Default> NmMatrix<T> {
    /// Bytes of packed indices per row.
    pub fn index_stride(cols: usize, n: usize, m: usize) -> usize {
        (cols / m * n * index_bits(m)).div_ceil(8)
    }

    /// Compresses the kept entries of `dense` ([rows, cols] row-major); `mask` must keep
    /// exactly N entries in every group of M.
    pub fn compress(dense: &[T], mask: &BitMask, n: usize, m: usize) -> Result<Self> {
        let (rows, cols) = (mask.rows(), mask.cols());
        check_nm(n, m, cols)?;
        if dense.len() != rows * cols {
            return Err(Error::invalid(format!("{} values for a {rows}x{cols} mask", dense.len())));
        }
        let indices = positions(mask, n, m)?;
        // Exactly N per group (checked above), so the kept columns in order are the slots.
        let mut values = Vec::with_capacity(rows * (cols / m * n));
        for r in 0..rows {
            values.extend((0..cols).filter(|&c| mask.get(r, c)).map(|c| dense[r * cols + c]));
        }
        Ok(NmMatrix { rows, cols, n, m, values, indices })
    }

    /// In-group position of kept value `slot` of row `r`.
    fn position(&self, r: usize, slot: usize) -> usize {
        let bits = index_bits(self.m);
        let stride = Self::index_stride(self.cols, self.n, self.m);
        (0..bits).fold(0, |p, b| {
            let at = slot * bits + b;
            p | (((self.indices[r * stride + at / 8] >> (at % 8)) & 1) as usize) << b
        })
    }

    /// The dense matrix, zeros at pruned entries.
    pub fn decompress(&self) -> Vec<T> {
        let mut out = vec![T::default(); self.rows * self.cols];
        let per_row = self.cols / self.m * self.n;
        for r in 0..self.rows {
            for slot in 0..per_row {
                let c = slot / self.n * self.m + self.position(r, slot);
                out[r * self.cols + c] = self.values[r * per_row + slot];
            }
        }
        out
    }

    /// The mask this matrix keeps.
    pub fn mask(&self) -> BitMask {
        let per_row = self.cols / self.m * self.n;
        let mut mask = BitMask::all_pruned(self.rows, self.cols);
        for r in 0..self.rows {
            for slot in 0..per_row {
                mask.set(r, slot / self.n * self.m + self.position(r, slot), true);
            }
        }
        mask
    }

    /// Kept values, [rows, cols/M·N].
    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// Packed indices, [rows, index_stride].
    pub fn indices(&self) -> &[u8] {
        &self.indices
    }

    /// (N, M).
    pub fn pattern(&self) -> (usize, usize) {
        (self.n, self.m)
    }

    /// Bytes used (values + indices).
    pub fn bytes(&self) -> usize {
        self.values.len() * std::mem::size_of::<T>() + self.indices.len()
    }

    /// Bytes of the dense matrix.
    pub fn dense_bytes(&self) -> usize {
        self.rows * self.cols * std::mem::size_of::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_f32;

    fn nm_mask(rows: usize, cols: usize, n: usize, m: usize, seed: u64) -> BitMask {
        // Keep the N largest of random scores in each group.
        let scores = random_f32(rows * cols, 1.0, seed);
        BitMask::from_fn(rows, cols, |r, c| {
            let g = c / m * m;
            let mine = scores[r * cols + c];
            let larger = (g..g + m).filter(|&k| scores[r * cols + k] > mine).count();
            larger < n
        })
    }

    #[test]
    fn round_trip_is_bit_exact_for_several_patterns() {
        for (n, m, rows, cols) in
            [(2, 4, 7, 36), (4, 8, 3, 64), (1, 4, 5, 12), (3, 8, 2, 24), (1, 2, 3, 10), (5, 16, 2, 48)]
        {
            let mask = nm_mask(rows, cols, n, m, 7);
            let mut dense = random_f32(rows * cols, 2.0, 8);
            mask.apply(&mut dense).unwrap();
            let c = NmMatrix::compress(&dense, &mask, n, m).unwrap();
            let back = c.decompress();
            assert!(dense.iter().zip(&back).all(|(a, b)| a.to_bits() == b.to_bits()), "{n}:{m} round trip");
            assert_eq!(c.mask(), mask);
            assert_eq!(c.values().len(), rows * cols / m * n);
            let expect_bytes = rows * cols / m * n * 4 + rows * (cols / m * n * index_bits(m)).div_ceil(8);
            assert_eq!(c.bytes(), expect_bytes);
        }
    }

    #[test]
    fn two_four_bf16_costs_1_125_bytes_per_weight() {
        let (rows, cols) = (64, 256);
        let mask = nm_mask(rows, cols, 2, 4, 1);
        let dense: Vec<half::bf16> = random_f32(rows * cols, 1.0, 2).into_iter().map(half::bf16::from_f32).collect();
        let mut masked = dense.clone();
        mask.apply(&mut masked).unwrap();
        let c = NmMatrix::compress(&masked, &mask, 2, 4).unwrap();
        assert_eq!(c.bytes() as f64 / (rows * cols) as f64, 1.125);
        assert_eq!(c.dense_bytes(), rows * cols * 2);
        assert_eq!(c.decompress(), masked);
    }

    #[test]
    fn bad_patterns_are_errors() {
        let mask = BitMask::all_kept(2, 8);
        let dense = vec![1.0f32; 16];
        assert!(NmMatrix::compress(&dense, &mask, 2, 4).is_err(), "4 kept where 2:4 allows 2");
        assert!(check_nm(4, 4, 8).is_err());
        assert!(check_nm(0, 4, 8).is_err());
        assert!(check_nm(2, 4, 10).is_err());
        assert_eq!((index_bits(2), index_bits(4), index_bits(8), index_bits(5)), (1, 2, 3, 3));
    }
}
