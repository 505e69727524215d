//! `BitMask`: which entries of a [rows, cols] matrix are kept, one bit each. Row-major,
//! each row padded to whole bytes (`stride = ceil(cols/8)` bytes), bit `j % 8` of byte
//! `j / 8` of a row is column j (little-endian within a byte); 1 = kept, 0 = pruned.
//! This is the `P.bitmask` uint8 [rows, ceil(cols/8)] layout of compressed-tensors.

use crate::{Error, Result};

/// A bit mask over a matrix (1 = kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitMask {
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

impl BitMask {
    /// Bytes per row.
    pub fn stride_for(cols: usize) -> usize {
        cols.div_ceil(8)
    }

    /// Every entry kept.
    pub fn all_kept(rows: usize, cols: usize) -> Self {
        let stride = Self::stride_for(cols);
        let mut bytes = vec![0xFFu8; rows * stride];
        if !cols.is_multiple_of(8) {
            let last = (1u8 << (cols % 8)) - 1;
            for r in 0..rows {
                bytes[r * stride + stride - 1] = last;
            }
        }
        BitMask { rows, cols, bytes }
    }

    /// Every entry pruned.
    pub fn all_pruned(rows: usize, cols: usize) -> Self {
        BitMask { rows, cols, bytes: vec![0; rows * Self::stride_for(cols)] }
    }

    /// Kept where `keep(row, col)`.
    pub fn from_fn(rows: usize, cols: usize, mut keep: impl FnMut(usize, usize) -> bool) -> Self {
        let mut m = Self::all_pruned(rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                if keep(r, c) {
                    m.set(r, c, true);
                }
            }
        }
        m
    }

    /// Kept where the dense row-major matrix is non-zero.
    pub fn from_nonzero(values: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if values.len() != rows * cols {
            return Err(Error::invalid(format!("mask from {} values for a {rows}x{cols} matrix", values.len())));
        }
        Ok(Self::from_fn(rows, cols, |r, c| values[r * cols + c] != 0.0))
    }

    /// Wraps raw bytes in this layout (checked: length, and zero padding bits).
    pub fn from_bytes(rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self> {
        let stride = Self::stride_for(cols);
        if bytes.len() != rows * stride {
            return Err(Error::invalid(format!(
                "bitmask for {rows}x{cols} needs {} bytes, got {}",
                rows * stride,
                bytes.len()
            )));
        }
        if !cols.is_multiple_of(8) {
            let pad = !((1u8 << (cols % 8)) - 1);
            if (0..rows).any(|r| bytes[r * stride + stride - 1] & pad != 0) {
                return Err(Error::invalid("bitmask has bits set beyond the last column"));
            }
        }
        Ok(BitMask { rows, cols, bytes })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The packed bytes, [rows, stride].
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Row `r`'s bytes.
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        let s = Self::stride_for(self.cols);
        &self.bytes[r * s..(r + 1) * s]
    }

    /// Whether (r, c) is kept.
    pub fn get(&self, r: usize, c: usize) -> bool {
        self.bytes[r * Self::stride_for(self.cols) + c / 8] >> (c % 8) & 1 == 1
    }

    /// Sets (r, c) kept or pruned.
    pub fn set(&mut self, r: usize, c: usize, keep: bool) {
        let i = r * Self::stride_for(self.cols) + c / 8;
        if keep {
            self.bytes[i] |= 1 << (c % 8);
        } else {
            self.bytes[i] &= !(1 << (c % 8));
        }
    }

    /// Kept entries in row `r`.
    pub fn kept_in_row(&self, r: usize) -> usize {
        self.row_bytes(r).iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Kept entries overall.
    pub fn kept(&self) -> usize {
        self.bytes.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Fraction pruned.
    pub fn sparsity(&self) -> f64 {
        let n = self.rows * self.cols;
        if n == 0 {
            0.0
        } else {
            1.0 - self.kept() as f64 / n as f64
        }
    }

    /// Zeroes the pruned entries of a dense row-major matrix.
    pub fn apply<T: Copy + Default>(&self, values: &mut [T]) -> Result<()> {
        if values.len() != self.rows * self.cols {
            return Err(Error::invalid(format!(
                "applying a {}x{} mask to {} values",
                self.rows,
                self.cols,
                values.len()
            )));
        }
        for r in 0..self.rows {
            for c in 0..self.cols {
                if !self.get(r, c) {
                    values[r * self.cols + c] = T::default();
                }
            }
        }
        Ok(())
    }

    /// Kept where both masks keep.
    pub fn and(&self, other: &BitMask) -> Result<BitMask> {
        if (self.rows, self.cols) != (other.rows, other.cols) {
            return Err(Error::invalid("mask shapes differ"));
        }
        Ok(BitMask {
            rows: self.rows,
            cols: self.cols,
            bytes: self.bytes.iter().zip(&other.bytes).map(|(a, b)| a & b).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_row_padded_little_endian_bits() {
        let mut m = BitMask::all_pruned(2, 10);
        m.set(0, 0, true);
        m.set(0, 9, true);
        m.set(1, 3, true);
        assert_eq!(m.bytes(), &[0b0000_0001, 0b0000_0010, 0b0000_1000, 0]);
        assert_eq!((m.kept(), m.kept_in_row(0), m.kept_in_row(1)), (3, 2, 1));
        let all = BitMask::all_kept(3, 13);
        assert_eq!(all.kept(), 39);
        assert_eq!(all.row_bytes(2), &[0xFF, 0b0001_1111]);
        assert!(BitMask::from_bytes(1, 13, vec![0xFF, 0xFF]).is_err(), "padding bits must be zero");
        assert_eq!(BitMask::from_bytes(1, 13, vec![0xFF, 0x1F]).unwrap().kept(), 13);
    }

    #[test]
    fn apply_zeroes_pruned_entries() {
        let m = BitMask::from_fn(2, 3, |r, c| (r + c) % 2 == 0);
        let mut v = vec![1.0f32; 6];
        m.apply(&mut v).unwrap();
        assert_eq!(v, vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
        assert_eq!(BitMask::from_nonzero(&v, 2, 3).unwrap(), m);
    }
}
