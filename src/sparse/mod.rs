//! Sparse storage: [`BitMask`] (1 bit per weight) and [`NmMatrix`] (N:M values + packed
//! in-group indices).

mod mask;
pub mod nm;

pub use mask::BitMask;
pub use nm::{check_nm, NmMatrix};
