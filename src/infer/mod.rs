//! The generation engine: the model as stored for inference, a KV cache, prefill and
//! batched decode steps, sampling and chat templates (no tape).
//!
//! - [`InferModel`] (model.rs): decoder linears dense or compressed (`--sparse
//!   auto|on|off`), applied as stored by `ops::infer_linear`.
//! - engine.rs: [`KvCache`], [`InferModel::step`] (prefill or decode), [`InferModel::generate`]
//!   for a batch of prompts of different lengths, [`InferModel::window_loss_sum`] (eval).
//! - [`sample`]: the next token from a row of logits (greedy, or a seeded draw after
//!   temperature, top-k and top-p, as transformers' `generate` applies them).
//! - [`chat`]: a conversation rendered to a prompt with the model's chat template, as
//!   transformers' `apply_chat_template` renders it.
//! - [`generation_config`]: the token ids that end a generation (`generation_config.json`,
//!   `config.json`, or the tokenizer's EOS).

pub mod chat;
mod cpu_step;
mod engine;
pub mod generation_config;
mod model;
pub mod sample;
mod team;

pub use engine::{Finish, GenerateOptions, Generation, KvCache};
pub use model::{
    detect_format, format_name, InferLayer, InferLinear, InferModel, LinearChoice, SparseMode, AUTO_MIN_SPARSITY,
};
