//! Sparsity-preserving fine-tuning: adapters over compressed pruned weights
//! ([`adapters`]), the training loop ([`trainer`]) with AdamW ([`optim`]) and a warmup +
//! decay schedule ([`schedule`]), checkpoints that resume bit-identically ([`checkpoint`]).

pub mod adapters;
pub mod checkpoint;
pub mod export;
pub mod lors;
pub mod optim;
pub mod plan;
pub mod repair;
pub mod schedule;
pub mod trainer;

pub use adapters::{adapter_params, adapter_tensors, attach_masked_lora, module_name, LoraOptions};
pub use optim::{AdamW, AdamWConfig};
pub use repair::{prepare, RepairMethod, RepairOptions};
pub use schedule::{Decay, Schedule};
pub use trainer::{StepRecord, TrainConfig, TrainData, Trainer};
