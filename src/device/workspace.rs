//! One reusable scratch buffer per device, for dense matrices built on the fly and consumed
//! within one op (the masked-LoRA weight W⊙M + s·M⊙(B·A), its masked gradient). It grows to
//! the largest request (the largest linear) and is reused for every layer, so no dense
//! per-layer copy ever stays alive. Its bytes are counted like any buffer of the device.
//! A request while the buffer is in use (a nested op) is an error, never a deadlock.

use std::sync::{Arc, Mutex};

use crate::storage::{CpuData, CudaData, Element};
use crate::{Error, Result};

/// The workspace of one device: host or device data of one element type at a time.
#[derive(Debug)]
pub struct Workspace<D> {
    buf: Arc<Mutex<Option<D>>>,
}

impl<D> Default for Workspace<D> {
    fn default() -> Self {
        Workspace { buf: Arc::new(Mutex::new(None)) }
    }
}

impl<D> Clone for Workspace<D> {
    fn clone(&self) -> Self {
        Workspace { buf: self.buf.clone() }
    }
}

fn busy() -> Error {
    Error::invalid("the device workspace is already in use (nested workspace request)")
}

/// Elements held by host data.
fn cpu_len(d: &CpuData) -> usize {
    match d {
        CpuData::F32(b) => b.as_slice().len(),
        CpuData::BF16(b) => b.as_slice().len(),
        CpuData::F16(b) => b.as_slice().len(),
        CpuData::U32(b) => b.as_slice().len(),
        CpuData::U8(b) => b.as_slice().len(),
    }
}

fn cuda_len(d: &CudaData) -> usize {
    match d {
        CudaData::F32(b) => b.len(),
        CudaData::BF16(b) => b.len(),
        CudaData::F16(b) => b.len(),
        CudaData::U32(b) => b.len(),
        CudaData::U8(b) => b.len(),
    }
}

impl Workspace<CpuData> {
    /// Runs `f` on at least `n` elements of host workspace of type `T` (contents
    /// unspecified), allocating through `alloc` when the buffer is too small or of another type.
    pub fn with<T: Element, R>(
        &self,
        n: usize,
        alloc: impl FnOnce(usize) -> CpuData,
        f: impl FnOnce(&mut [T]) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.buf.try_lock().map_err(|_| busy())?;
        let fits = guard.as_mut().is_some_and(|d| cpu_len(d) >= n && T::cpu_mut(d).is_some());
        if !fits {
            *guard = None; // release the old buffer before allocating the new one
            *guard = Some(alloc(n));
        }
        let data = guard.as_mut().and_then(T::cpu_mut).ok_or_else(|| Error::invalid("workspace type"))?;
        f(&mut data.as_mut_slice()[..n])
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.buf.lock().ok().and_then(|g| g.as_ref().map(|d| cpu_len(d) * d.dtype().size_in_bytes())).unwrap_or(0)
    }
}

impl Workspace<CudaData> {
    /// Runs `f` on a device workspace of type `T` with at least `n` elements (contents
    /// unspecified; the slice may be longer), allocating through `alloc` when needed.
    pub fn with<T: Element, R>(
        &self,
        n: usize,
        alloc: impl FnOnce(usize) -> Result<CudaData>,
        f: impl FnOnce(&mut cudarc::driver::CudaSlice<T>) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.buf.try_lock().map_err(|_| busy())?;
        let fits = guard.as_mut().is_some_and(|d| cuda_len(d) >= n && T::cuda_mut(d).is_some());
        if !fits {
            *guard = None;
            *guard = Some(alloc(n)?);
        }
        let data = guard.as_mut().and_then(T::cuda_mut).ok_or_else(|| Error::invalid("workspace type"))?;
        f(data.slice_mut())
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.buf.lock().ok().and_then(|g| g.as_ref().map(|d| cuda_len(d) * d.dtype().size_in_bytes())).unwrap_or(0)
    }
}
