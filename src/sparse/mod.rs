//! Sparse storage: [`BitMask`] (1 bit per weight), [`NmMatrix`] (N:M values + packed
//! in-group indices), and [`SparseWeight`], the compressed frozen base of a pruned linear
//! with its expansion into a workspace (`cpu.rs` reference, `cuda.rs` launcher of
//! `cuda/sparse.cu`).

pub mod cpu;
pub mod cuda;
mod mask;
pub mod nm;
mod weight;

pub use mask::BitMask;
pub use nm::{check_nm, NmMatrix};
pub use weight::{Expand, SparseFormat, SparseWeight, WorkspaceElement};

/// Checks an unstructured sparsity (the fraction pruned): 0 ≤ s < 1.
pub fn check_sparsity(s: f64) -> crate::Result<()> {
    if (0.0..1.0).contains(&s) {
        Ok(())
    } else {
        Err(crate::Error::invalid(format!("sparsity must be in [0, 1), got {s}")))
    }
}
