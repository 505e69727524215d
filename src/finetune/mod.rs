//! Sparsity-preserving fine-tuning: adapters over compressed pruned weights
//! ([`adapters`]) or trained sparse weights ([`seft`]), the methods as strategies of one
//! trainer ([`repair`]), the training loop ([`trainer`]) with AdamW ([`optim`]) and a warmup +
//! decay schedule ([`schedule`]), checkpoints that resume bit-identically ([`checkpoint`]).

pub mod adapters;
pub mod checkpoint;
pub mod dense_grad;
pub mod export;
pub mod lors;
pub mod losa;
pub mod optim;
pub mod plan;
pub mod repair;
pub mod schedule;
pub mod seft;
pub mod trainer;

pub use adapters::{adapter_params, adapter_tensors, attach_masked_lora, module_name, LoraOptions};
pub use optim::{AdamW, AdamWConfig};
pub use repair::{prepare, Repair, RepairMethod, RepairOptions};
pub use schedule::{Decay, Schedule};
pub use seft::SeftOptions;
pub use trainer::{StepRecord, TrainConfig, TrainData, Trainer};
