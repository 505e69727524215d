//! Layers built from ops: [`Linear`] (dense, or masked LoRA over a compressed base).

pub mod linear;

pub use linear::{Linear, MaskedLora};
