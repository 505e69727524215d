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
