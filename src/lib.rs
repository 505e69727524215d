//! sparsetune: prune LLaMA-family language models and repair them with
//! sparsity-preserving fine-tuning, on CPU and CUDA.
//!
//! Layers, from the bottom: [`Tensor`] (shape, dtype, [`Device`], storage), ops in
//! [`ops`] (each with a CPU reference and a CUDA kernel, forward and backward), the
//! [`Tape`] autodiff, [`model::llama`], the file formats in [`io`], perplexity in
//! [`eval`], and the command line in [`cli`].
//!
//! ```no_run
//! use sparsetune::model::llama::{self, ForwardOptions};
//! use sparsetune::{DType, Device, Grads, Tape, Tensor};
//!
//! fn main() -> sparsetune::Result<()> {
//!     let path = std::path::Path::new("SmolLM2-135M-Instruct.Q4_1.gguf");
//!     let device = Device::cuda(0).unwrap_or_else(|_| Device::cpu());
//!     let tokenizer = llama::load_tokenizer(path)?;
//!     let model = llama::load(path, &device, DType::F32)?;
//!
//!     let ids = tokenizer.encode("The capital of France is Paris.")?;
//!     let n = ids.len() - 1;
//!     let x = Tensor::from_vec(ids[..n].to_vec(), [1, n], &device)?;
//!     let y = Tensor::from_vec(ids[1..].to_vec(), [1, n], &device)?;
//!
//!     let mut tape = Tape::new();                    // owned by the training step
//!     let wq = model.layers[0].q.dense()?.clone();
//!     tape.watch(&wq);                               // what we want gradients for
//!     let loss = model.loss(Some(&mut tape), &x, &y, ForwardOptions { checkpoint_layers: true })?;
//!     let mut grads = Grads::new();
//!     tape.backward(&loss, &mut grads)?;              // parameter gradients accumulate (+=)
//!     let g = grads.get(&wq).expect("watched");
//!     println!("loss {:.4}, |dWq| has {} entries, peak {} MB", loss.to_scalar_f32()?,
//!              g.elem_count(), device.memory().peak_bytes >> 20);
//!     Ok(())
//! }
//! ```
pub mod autograd;
pub mod cli;
pub mod data;
pub mod device;
pub mod dtype;
pub mod error;
pub mod eval;
pub mod finetune;
pub mod infer;
pub mod io;
pub mod linalg;
pub mod model;
pub mod nn;
pub mod ops;
pub mod prune;
pub mod report;
pub mod shape;
pub mod sparse;
pub mod storage;
pub mod tensor;
#[doc(hidden)]
pub mod testing;

pub use autograd::{Grads, Saved, Tape};
pub use device::Device;
pub use dtype::DType;
pub use error::{Error, Result};
pub use shape::Shape;
pub use tensor::{Tensor, TensorId};
