//! generation engine: KV cache, prefill/decode, sampling, chat template (no tape).
//!
//! - [`sample`]: the next token from a row of logits (greedy, or a seeded draw after
//!   temperature, top-k and top-p, as transformers' `generate` applies them).
//! - [`chat`]: a conversation rendered to a prompt with the model's chat template, as
//!   transformers' `apply_chat_template` renders it.
//! - [`generation_config`]: the token ids that end a generation (`generation_config.json`,
//!   `config.json`, or the tokenizer's EOS).

pub mod chat;
pub mod generation_config;
pub mod sample;
