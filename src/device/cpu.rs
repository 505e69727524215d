//! The CPU device: host vectors whose bytes are counted like GPU buffers, so that memory
//! plans can be checked on machines without a GPU.

use std::sync::Arc;

use super::memory::{MemTicket, MemoryCounter, MemoryStats};
use super::workspace::Workspace;
use crate::storage::{CpuData, Element};
use crate::Result;

/// Host memory with its own byte counter and workspace. Cheap to clone (both are shared).
#[derive(Clone, Debug, Default)]
pub struct CpuDevice {
    memory: Arc<MemoryCounter>,
    workspace: Workspace<CpuData>,
}

/// A host vector counted against a [`CpuDevice`].
#[derive(Debug)]
pub struct CpuBuffer<T> {
    data: Vec<T>,
    _ticket: MemTicket,
}

impl CpuDevice {
    /// A CPU device with a fresh counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live and peak bytes of this device's buffers.
    pub fn memory(&self) -> MemoryStats {
        self.memory.stats()
    }

    /// Resets the peak to the current value.
    pub fn reset_peak_memory(&self) {
        self.memory.reset_peak()
    }

    /// Runs `f` on at least `n` elements of this device's reusable workspace (see
    /// [`Workspace`]); the contents on entry are unspecified.
    pub fn with_workspace<T: Element, R>(&self, n: usize, f: impl FnOnce(&mut [T]) -> Result<R>) -> Result<R> {
        self.workspace.with(n, |n| T::wrap_cpu(self.buffer(vec![T::default(); n])), f)
    }

    /// Bytes held by the workspace.
    pub fn workspace_bytes(&self) -> usize {
        self.workspace.bytes()
    }

    /// Takes ownership of `data` and counts its bytes.
    pub fn buffer<T>(&self, data: Vec<T>) -> CpuBuffer<T> {
        let bytes = data.len() * std::mem::size_of::<T>();
        CpuBuffer { data, _ticket: MemTicket::new(&self.memory, bytes) }
    }
}

impl<T> CpuBuffer<T> {
    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }

    /// The elements, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data
    }
}
