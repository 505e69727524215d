//! Models. LLaMA-family decoders are the one architecture sparsetune targets.

pub mod llama;
