//! What a pruned matrix keeps ([`Pattern`]) and the mask it selects from scores (higher =
//! more important) on the CPU:
//! - unstructured, per output row: prune the ⌊cols·s⌋ lowest scores of each row;
//! - N:M: in every group of M consecutive columns of a row, prune the M − N lowest.
//!
//! The selection itself (ties by column, NaN lowest) is `ops::prune_select`'s CPU
//! reference; this module turns a pattern into its numbers.

use crate::ops::prune_select::cpu::{prune_lowest_nm, prune_lowest_per_row, pruned_count};
use crate::sparse::{check_nm, check_sparsity, BitMask};
use crate::{Error, Result};

/// What a pruned matrix keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    /// Fraction s ∈ [0, 1) pruned, without structure.
    Unstructured(f64),
    /// N kept in every group of M consecutive inputs of a row.
    NM {
        /// Kept per group.
        n: usize,
        /// Group size.
        m: usize,
    },
}

impl Pattern {
    /// Checks the pattern against a row length.
    pub fn check(&self, cols: usize) -> Result<()> {
        match *self {
            Pattern::Unstructured(s) => check_sparsity(s),
            Pattern::NM { n, m } => check_nm(n, m, cols),
        }
    }

    /// Fraction pruned.
    pub fn sparsity(&self) -> f64 {
        match *self {
            Pattern::Unstructured(s) => s,
            Pattern::NM { n, m } => 1.0 - n as f64 / m as f64,
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Unstructured(s) => write!(f, "{:.0}% unstructured", s * 100.0),
            Pattern::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

/// The mask `pattern` selects from `scores` [rows, cols].
pub fn select(scores: &[f32], rows: usize, cols: usize, pattern: Pattern) -> Result<BitMask> {
    if scores.len() != rows * cols {
        return Err(Error::invalid(format!("{} scores for a {rows}x{cols} matrix", scores.len())));
    }
    pattern.check(cols)?;
    match pattern {
        Pattern::Unstructured(s) => Ok(prune_lowest_per_row(scores, rows, cols, pruned_count(cols, s))),
        Pattern::NM { n, m } => prune_lowest_nm(scores, rows, cols, n, m),
    }
}

/// `w` [rows, cols] with the entries that magnitude pruning by `pattern` removes set to zero
/// (the selection of `sparsetune prune --method magnitude`), in w's dtype and device.
pub fn magnitude_pruned(w: &crate::Tensor, pattern: Pattern) -> Result<crate::Tensor> {
    let [rows, cols] = w.shape().dims_n::<2>("magnitude_pruned")?;
    let mut v = w.to_f32_vec()?;
    select(&crate::ops::prune_select::cpu::magnitude(&v), rows, cols, pattern)?.apply(&mut v)?;
    crate::Tensor::from_f32(v, [rows, cols], w.dtype(), w.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_f32;

    #[test]
    fn per_row_sparsity_is_exact() {
        for (rows, cols, s) in [(5, 37, 0.5), (3, 100, 0.7), (4, 8, 0.0), (2, 9, 0.99), (7, 64, 0.3)] {
            let scores = random_f32(rows * cols, 1.0, 3);
            let mask = select(&scores, rows, cols, Pattern::Unstructured(s)).unwrap();
            let pruned = (cols as f64 * s).floor() as usize;
            for r in 0..rows {
                assert_eq!(cols - mask.kept_in_row(r), pruned, "row {r} of {rows}x{cols} at {s}");
                // Every pruned score is ≤ every kept score in the row.
                let row = &scores[r * cols..(r + 1) * cols];
                let max_pruned = (0..cols).filter(|&c| !mask.get(r, c)).map(|c| row[c]).fold(f32::MIN, f32::max);
                let min_kept = (0..cols).filter(|&c| mask.get(r, c)).map(|c| row[c]).fold(f32::MAX, f32::min);
                assert!(pruned == 0 || max_pruned <= min_kept);
            }
        }
    }

    #[test]
    fn nm_keeps_exactly_n_per_group() {
        for (n, m) in [(2, 4), (4, 8), (1, 4), (3, 4)] {
            let (rows, cols) = (6, 8 * m);
            let scores = random_f32(rows * cols, 1.0, 4);
            let mask = select(&scores, rows, cols, Pattern::NM { n, m }).unwrap();
            for r in 0..rows {
                for g in (0..cols).step_by(m) {
                    assert_eq!((g..g + m).filter(|&c| mask.get(r, c)).count(), n);
                }
            }
        }
    }

    #[test]
    fn ties_prune_lower_indices_first() {
        let mask = select(&[1.0, 1.0, 1.0, 1.0], 1, 4, Pattern::Unstructured(0.5)).unwrap();
        assert_eq!((0..4).map(|c| mask.get(0, c)).collect::<Vec<_>>(), vec![false, false, true, true]);
        let mask = select(&[3.0, 1.0, 1.0, 2.0], 1, 4, Pattern::NM { n: 2, m: 4 }).unwrap();
        assert_eq!((0..4).map(|c| mask.get(0, c)).collect::<Vec<_>>(), vec![true, false, false, true]);
    }

    #[test]
    fn bad_patterns_are_errors() {
        let s = [0.0f32; 8];
        assert!(select(&s, 1, 8, Pattern::Unstructured(1.0)).is_err());
        assert!(select(&s, 1, 8, Pattern::Unstructured(-0.1)).is_err());
        assert!(select(&s, 1, 8, Pattern::NM { n: 4, m: 4 }).is_err());
        assert!(select(&s, 1, 8, Pattern::NM { n: 2, m: 3 }).is_err(), "3 does not divide 8");
        assert!(select(&s, 2, 8, Pattern::Unstructured(0.5)).is_err(), "wrong length");
    }
}
