//! LLaMA: config, tensor names, weights, forward to logits and loss, greedy generation,
//! loading (GGUF, safetensors) and saving (safetensors).

mod config;
pub mod load;
mod model;
mod names;

pub use config::LlamaConfig;
pub use load::{load, load_config, load_tokenizer, save_safetensors, save_safetensors_as, WeightLayout};
pub use model::{DecoderLayer, ForwardOptions, LinearInput, Llama};
pub use names::{Part, Proj};
