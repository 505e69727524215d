//! The crate's one error type. Every fallible API returns [`Result<T>`]; nothing on a
//! user-reachable path panics on bad input.

use std::path::PathBuf;

use crate::shape::Shape;

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in sparsetune.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable CUDA driver or device on this machine.
    #[error("no CUDA device: {0}")]
    NoCuda(String),

    /// A CUDA driver call failed.
    #[error("CUDA driver error: {0}")]
    Cuda(#[from] cudarc::driver::DriverError),

    /// A cuBLAS call failed.
    #[error("cuBLAS error: {0:?}")]
    Cublas(#[from] cudarc::cublas::result::CublasError),

    /// Two shapes that must agree do not.
    #[error("{op}: shape mismatch, {lhs} vs {rhs}")]
    ShapeMismatch { op: &'static str, lhs: Shape, rhs: Shape },

    /// A shape is invalid for an operation (wrong rank, zero size, ...).
    #[error("{op}: invalid shape {shape}: {msg}")]
    BadShape { op: &'static str, shape: Shape, msg: String },

    /// An operation got a dtype it does not support.
    #[error("{op}: unsupported dtype {dtype} ({msg})")]
    DType { op: &'static str, dtype: crate::DType, msg: &'static str },

    /// Tensors that must live on one device do not.
    #[error("{op}: tensors on different devices ({lhs} vs {rhs})")]
    DeviceMismatch { op: &'static str, lhs: String, rhs: String },

    /// An I/O error, with the file it happened on.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file is not in the format it claims to be (truncated, corrupted, inconsistent).
    #[error("{path}: invalid {format} file: {msg}")]
    Format { path: PathBuf, format: &'static str, msg: String },

    /// A GGUF tensor uses a quantisation type we do not read.
    #[error("{path}: tensor {tensor} uses unsupported GGUF type {ggml_type}")]
    UnsupportedQuant { path: PathBuf, tensor: String, ggml_type: String },

    /// A tensor the model needs is not in the file.
    #[error("{path}: missing tensor {name}")]
    MissingTensor { path: PathBuf, name: String },

    /// A model configuration is missing a field or is inconsistent.
    #[error("invalid model config: {0}")]
    Config(String),

    /// Tokenizer construction or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A caller passed an argument outside its documented domain.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// Helper for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Helper for [`Error::Format`].
    pub fn format(path: impl Into<PathBuf>, format: &'static str, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), format, msg: msg.into() }
    }

    /// Helper for [`Error::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}
