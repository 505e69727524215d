//! Layers built from ops: [`Linear`].

pub mod linear;

pub use linear::Linear;
