//! Sparsity-preserving fine-tuning (being built): adapters over compressed pruned weights.

pub mod adapters;

pub use adapters::{adapter_tensors, attach_masked_lora, LoraOptions};
