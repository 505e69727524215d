//! One reusable scratch buffer per device, for dense matrices built on the fly and consumed
//! within one op (the masked-LoRA weight W⊙M + s·M⊙(B·A), its masked gradient). It grows to
//! the largest request (the largest linear) and is reused for every layer, so no dense
//! per-layer copy ever stays alive. Its bytes are counted like any buffer of the device.
//! A request while the buffer is in use (a nested op) is an error, never a deadlock.
//! [`Workspace::with_built`] remembers what its last build was made from (a key of input
//! stamps), so an op's backward skips rebuilding a matrix its forward left intact (the
//! masked-LoRA weight of a layer's last linear, recomputed just before its backward under
//! checkpointing); any other use of the workspace forgets it.

use std::sync::{Arc, Mutex};

use crate::storage::{CpuData, CudaData, Element};
use crate::{Error, Result};

/// The workspace of one device: host or device data of one element type at a time.
#[derive(Debug)]
pub struct Workspace<D> {
    slot: Arc<Mutex<Slot<D>>>,
}

/// The buffer, and the key of what it holds when a [`Workspace::with_built`] build is still
/// intact in it.
#[derive(Debug)]
struct Slot<D> {
    data: Option<D>,
    held: Option<Vec<u64>>,
    reuses: usize,
}

impl<D> Default for Workspace<D> {
    fn default() -> Self {
        Workspace { slot: Arc::new(Mutex::new(Slot { data: None, held: None, reuses: 0 })) }
    }
}

impl<D> Clone for Workspace<D> {
    fn clone(&self) -> Self {
        Workspace { slot: self.slot.clone() }
    }
}

fn busy() -> Error {
    Error::invalid("the device workspace is already in use (nested workspace request)")
}

fn wrong_type() -> Error {
    Error::invalid("workspace type")
}

impl<D> Slot<D> {
    /// Keeps the buffer when it `fits`, else frees it and allocates another (which holds
    /// nothing). Returns whether the buffer holds `key`'s build; when it does not, it is
    /// marked as holding nothing, since the caller is about to overwrite it.
    fn ready(&mut self, fits: bool, key: Option<&[u64]>, alloc: impl FnOnce() -> Result<D>) -> Result<bool> {
        if !fits {
            self.held = None;
            self.data = None; // release the old buffer before allocating the new one
            self.data = Some(alloc()?);
        }
        let holds = key.is_some() && self.held.as_deref() == key;
        if holds {
            self.reuses += 1;
        } else {
            self.held = None;
        }
        Ok(holds)
    }
}

/// Runs `build` on `ws` unless it already holds `key`'s build (`holds`), recording `key` as
/// held after a build, then `f`.
fn build_then<S: ?Sized, R>(
    held: &mut Option<Vec<u64>>,
    ws: &mut S,
    holds: bool,
    key: Option<&[u64]>,
    build: impl FnOnce(&mut S) -> Result<()>,
    f: impl FnOnce(&mut S) -> Result<R>,
) -> Result<R> {
    if !holds {
        build(ws)?;
        *held = key.map(<[u64]>::to_vec);
    }
    f(ws)
}

impl<D> Workspace<D> {
    /// How many builds [`Self::with_built`] skipped because the buffer still held them.
    pub fn reuses(&self) -> usize {
        self.slot.lock().map(|g| g.reuses).unwrap_or(0)
    }
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
        self.with_built(n, None, alloc, |_| Ok(()), f)
    }

    /// Runs `build` on `n` elements of workspace, then `f` on them; `build` is skipped when the
    /// buffer still holds what an earlier call with the same `key` built and nothing has used
    /// the workspace since. `key` must name everything the build reads (e.g. the
    /// [`crate::Tensor`] stamps of its inputs, their sizes and types); `f` must only read the
    /// workspace. With `key` `None` this is [`Self::with`].
    pub fn with_built<T: Element, R>(
        &self,
        n: usize,
        key: Option<&[u64]>,
        alloc: impl FnOnce(usize) -> CpuData,
        build: impl FnOnce(&mut [T]) -> Result<()>,
        f: impl FnOnce(&mut [T]) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.slot.try_lock().map_err(|_| busy())?;
        let fits = guard.data.as_mut().is_some_and(|d| cpu_len(d) >= n && T::cpu_mut(d).is_some());
        let holds = guard.ready(fits, key, || Ok(alloc(n)))?;
        let Slot { data, held, .. } = &mut *guard;
        let data = data.as_mut().and_then(T::cpu_mut).ok_or_else(wrong_type)?;
        build_then(held, &mut data.as_mut_slice()[..n], holds, key, build, f)
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.slot.lock().ok().and_then(|g| g.data.as_ref().map(|d| cpu_len(d) * d.dtype().size_in_bytes())).unwrap_or(0)
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
        self.with_built(n, None, alloc, |_| Ok(()), f)
    }

    /// [`Workspace::<CpuData>::with_built`] on the device.
    pub fn with_built<T: Element, R>(
        &self,
        n: usize,
        key: Option<&[u64]>,
        alloc: impl FnOnce(usize) -> Result<CudaData>,
        build: impl FnOnce(&mut cudarc::driver::CudaSlice<T>) -> Result<()>,
        f: impl FnOnce(&mut cudarc::driver::CudaSlice<T>) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.slot.try_lock().map_err(|_| busy())?;
        let fits = guard.data.as_mut().is_some_and(|d| cuda_len(d) >= n && T::cuda_mut(d).is_some());
        let holds = guard.ready(fits, key, || alloc(n))?;
        let Slot { data, held, .. } = &mut *guard;
        let data = data.as_mut().and_then(T::cuda_mut).ok_or_else(wrong_type)?;
        build_then(held, data.slice_mut(), holds, key, build, f)
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.slot
            .lock()
            .ok()
            .and_then(|g| g.data.as_ref().map(|d| cuda_len(d) * d.dtype().size_in_bytes()))
            .unwrap_or(0)
    }
}
