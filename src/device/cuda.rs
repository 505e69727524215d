//! The CUDA device: one context, one stream, a cuBLAS handle, a lazy cache of our CUDA
//! modules, and the one allocator every GPU buffer goes through ([`CudaDevice::alloc`]),
//! which counts current and peak bytes.
//!
//! The driver is loaded dynamically: on a machine without `libcuda.so`, [`CudaDevice::new`]
//! returns [`Error::NoCuda`] (cudarc itself would panic, so we check for the library first).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtrMut, DeviceRepr, LaunchConfig,
};
use cudarc::nvrtc::Ptx;

use super::memory::{MemTicket, MemoryCounter, MemoryStats};
use crate::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/ptx_registry.rs"));

/// A CUDA GPU. Cheap to clone; clones share the context, stream and allocator.
#[derive(Clone)]
pub struct CudaDevice(Arc<CudaInner>);

struct CudaInner {
    ordinal: usize,
    name: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    attributes: Mutex<HashMap<CUdevice_attribute, i32>>,
    memory: Arc<MemoryCounter>,
    poison: AtomicBool,
    workspace: super::workspace::Workspace<crate::storage::CudaData>,
}

/// A device buffer obtained from [`CudaDevice::alloc`]; its bytes are counted until drop.
#[derive(Debug)]
pub struct CudaBuffer<T> {
    slice: CudaSlice<T>,
    _ticket: MemTicket,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({}: {})", self.0.ordinal, self.0.name)
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal`. Errors (never panics) when no driver or device is present.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: only tries to dlopen the driver library; no CUDA call is made.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::NoCuda("libcuda.so (the NVIDIA driver) was not found".into()));
        }
        let count = CudaContext::device_count()?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::NoCuda(format!("device {ordinal} requested, {count} present")));
        }
        // SAFETY: dlopen probe only.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::NoCuda("libcublas.so was not found".into()));
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream: cross-stream event tracking is pure overhead for us.
        // SAFETY: called before any buffer exists on this context.
        unsafe { ctx.disable_event_tracking() };
        keep_freed_memory(&ctx)?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone())?;
        let name = ctx.name()?;
        Ok(CudaDevice(Arc::new(CudaInner {
            ordinal,
            name,
            ctx,
            stream,
            blas,
            modules: Mutex::new(HashMap::new()),
            attributes: Mutex::new(HashMap::new()),
            memory: Arc::new(MemoryCounter::default()),
            poison: AtomicBool::new(false),
            workspace: Default::default(),
        })))
    }

    /// Device index.
    pub fn ordinal(&self) -> usize {
        self.0.ordinal
    }

    /// Device name as the driver reports it (e.g. "NVIDIA H200").
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The stream all our work is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.0.stream
    }

    /// The cuBLAS handle bound to [`Self::stream`].
    pub fn blas(&self) -> &CudaBlas {
        &self.0.blas
    }

    /// A device attribute as the driver reports it, asked once per attribute and device
    /// (the decode path reads three per linear per token).
    pub fn attribute(&self, attribute: CUdevice_attribute) -> Result<i32> {
        let mut cache = self.0.attributes.lock().map_err(|_| Error::NoCuda("attribute cache lock poisoned".into()))?;
        if let Some(&v) = cache.get(&attribute) {
            return Ok(v);
        }
        let v = self.0.ctx.attribute(attribute)?;
        cache.insert(attribute, v);
        Ok(v)
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        Ok(self.0.ctx.compute_capability()?)
    }

    /// Live and peak bytes of buffers from [`Self::alloc`].
    pub fn memory(&self) -> MemoryStats {
        self.0.memory.stats()
    }

    /// Resets the peak to the current value.
    pub fn reset_peak_memory(&self) {
        self.0.memory.reset_peak()
    }

    /// When on, every new buffer is filled with 0xFF bytes (NaN in f32, bf16 and f16),
    /// so a kernel that fails to write an output element shows up in tests.
    pub fn set_poison_allocations(&self, on: bool) {
        self.0.poison.store(on, Ordering::Relaxed);
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.0.stream.synchronize()?)
    }

    /// True when two handles refer to the same context.
    pub fn same(&self, other: &CudaDevice) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The one place GPU memory is allocated: `len` elements of `T`, uninitialised
    /// (or NaN-poisoned, see [`Self::set_poison_allocations`]), counted until dropped.
    pub fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<CudaBuffer<T>> {
        // SAFETY: the memory is uninitialised; every caller either writes all of it before
        // reading (kernels check their sizes) or it is poisoned/zeroed below.
        let mut slice = unsafe { self.0.stream.alloc::<T>(len) }?;
        if self.0.poison.load(Ordering::Relaxed) && len > 0 {
            let bytes = len * std::mem::size_of::<T>();
            let (ptr, _sync) = slice.device_ptr_mut(&self.0.stream);
            // SAFETY: `ptr` points to `bytes` bytes we own, on our stream.
            unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, self.0.stream.cu_stream()) }?;
        }
        let bytes = len * std::mem::size_of::<T>();
        Ok(CudaBuffer { slice, _ticket: MemTicket::new(&self.0.memory, bytes) })
    }

    /// Runs `f` on this device's reusable workspace of type `T` with at least `n` elements
    /// (the slice may be longer; contents unspecified). See [`super::workspace::Workspace`].
    pub fn with_workspace<T: crate::storage::Element, R>(
        &self,
        n: usize,
        f: impl FnOnce(&mut CudaSlice<T>) -> Result<R>,
    ) -> Result<R> {
        self.0.workspace.with(n, |n| Ok(T::wrap_cuda(self.alloc::<T>(n)?)), f)
    }

    /// [`super::CpuDevice::with_built_workspace`] on this device: `build` skipped when the
    /// workspace still holds what a build with the same `key` left there.
    pub fn with_built_workspace<T: crate::storage::Element, R>(
        &self,
        n: usize,
        key: Option<&[u64]>,
        build: impl FnOnce(&mut CudaSlice<T>) -> Result<()>,
        f: impl FnOnce(&mut CudaSlice<T>) -> Result<R>,
    ) -> Result<R> {
        self.0.workspace.with_built(n, key, |n| Ok(T::wrap_cuda(self.alloc::<T>(n)?)), build, f)
    }

    /// Builds the workspace skipped because it still held them.
    pub fn workspace_reuses(&self) -> usize {
        self.0.workspace.reuses()
    }

    /// Bytes held by the workspace.
    pub fn workspace_bytes(&self) -> usize {
        self.0.workspace.bytes()
    }

    /// `len` zeroed elements.
    pub fn alloc_zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, len: usize) -> Result<CudaBuffer<T>> {
        let mut buf = self.alloc::<T>(len)?;
        self.0.stream.memset_zeros(&mut buf.slice)?;
        Ok(buf)
    }

    /// Copies host data into a new buffer.
    pub fn htod<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaBuffer<T>> {
        let mut buf = self.alloc::<T>(data.len())?;
        self.0.stream.memcpy_htod(data, &mut buf.slice)?;
        Ok(buf)
    }

    /// Copies a buffer back to the host (synchronises).
    pub fn dtoh<T: DeviceRepr + Default + Clone>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>> {
        Ok(self.0.stream.clone_dtoh(buf)?)
    }

    /// A kernel from one of our embedded modules (`cuda/<module>.cu`), loading the module on
    /// first use: its fatbin, from which the driver takes the SASS built for this GPU
    /// (sm_80, sm_90) or else JIT-compiles the PTX it holds.
    pub fn function(&self, module: &'static str, name: &str) -> Result<CudaFunction> {
        let module_handle = {
            let mut cache = self.0.modules.lock().map_err(|_| Error::NoCuda("module cache lock poisoned".into()))?;
            match cache.get(module) {
                Some(m) => m.clone(),
                None => {
                    let image = CUDA_MODULES
                        .iter()
                        .find(|(n, _)| *n == module)
                        .map(|(_, image)| *image)
                        .ok_or_else(|| Error::invalid(format!("no embedded CUDA module named '{module}'")))?;
                    let m = self.0.ctx.load_module(Ptx::from_binary(image.to_vec()))?;
                    cache.insert(module, m.clone());
                    m
                }
            }
        };
        Ok(module_handle.load_function(name)?)
    }
}

impl<T> CudaBuffer<T> {
    /// The underlying slice, for kernel arguments.
    pub fn slice(&self) -> &CudaSlice<T> {
        &self.slice
    }

    /// The underlying slice, mutably.
    pub fn slice_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.slice
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }
}

/// Sets the release threshold of the device's default memory pool (where the stream-ordered
/// allocations come from) to its maximum, so that memory freed during a step stays in the
/// pool for the next one instead of going back to the driver at every synchronisation (the
/// default threshold is 0). Devices without memory pools allocate synchronously: nothing
/// to set.
fn keep_freed_memory(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys::{self, CUdevice_attribute_enum, CUmemPool_attribute};
    if ctx.attribute(CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED)? == 0 {
        return Ok(());
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: the device handle comes from a live context; the driver writes the pool handle
    // and reads the u64 the attribute takes.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()?;
        sys::cuMemPoolSetAttribute(
            pool,
            CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold) as *mut u64 as *mut std::ffi::c_void,
        )
        .result()?;
    }
    Ok(())
}

/// Checked conversion of a size to the `i32` our kernels take.
pub(crate) fn to_i32(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(format!("{op}: size {v} exceeds i32")))
}

/// [`super::Launch::grid_1d`] as cudarc takes it, for launchers whose geometry is not yet a
/// function of their own (see `ops::elementwise::cuda::geometry` for the pattern).
pub fn grid_1d(n: usize, threads: u32) -> Result<LaunchConfig> {
    super::Launch::grid_1d(n, threads).map(LaunchConfig::from)
}

/// Float element types our kernels are instantiated for; `SUFFIX` picks the kernel name
/// (`<kernel>_f32`, `<kernel>_bf16`).
pub trait CudaFloat: crate::storage::FloatElement {
    /// Kernel-name suffix.
    const SUFFIX: &'static str;
    /// The element type as cuBLAS names it.
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType_t;
}

impl CudaFloat for f32 {
    const SUFFIX: &'static str = "f32";
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType_t = cudarc::cublas::sys::cudaDataType_t::CUDA_R_32F;
}

impl CudaFloat for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    const CUDA_TYPE: cudarc::cublas::sys::cudaDataType_t = cudarc::cublas::sys::cudaDataType_t::CUDA_R_16BF;
}

/// Runs `$body` with `$t` bound to f32 or bf16 according to a compute dtype.
#[macro_export]
#[doc(hidden)]
macro_rules! with_compute_type {
    ($dtype:expr, $op:expr, $t:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $t = f32;
                $body
            }
            $crate::DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            other => Err($crate::Error::DType { op: $op, dtype: other, msg: "expected f32 or bf16" }),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::CUDA_MODULES;

    /// The images of a fatbin as (kind, arch): kind 1 is PTX, 2 is machine code (ELF). The
    /// layout: a 16-byte header (magic 0xBA55ED50, version, header size, size of what follows),
    /// then entries of a header (kind u16, u16, header size u32, payload size u64, …, arch u32
    /// at byte 28) and a payload.
    fn images(name: &str, data: &[u8]) -> Vec<(u16, u32)> {
        let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
        assert_eq!(u32_at(0), 0xBA55_ED50, "{name}: not a fatbin");
        let (start, size) = (u16_at(6) as usize, u64_at(8));
        assert!(start + size <= data.len(), "{name}: fatbin of {} bytes says {}", data.len(), start + size);
        let (mut at, mut found) = (start, Vec::new());
        while at < start + size {
            let (kind, header, payload) = (u16_at(at), u32_at(at + 4) as usize, u64_at(at + 8));
            found.push((kind, u32_at(at + 28)));
            at += header + payload;
        }
        found
    }

    /// Every embedded module carries machine code for sm_80 and sm_90 (no JIT compile on the
    /// A100/H100/H200) and its compute_80 PTX (any other GPU), or, for a Hopper-only module
    /// (`*_sm90a`), sm_90a code and its PTX.
    #[test]
    fn every_module_holds_sass_for_our_gpus_and_its_ptx() {
        assert!(!CUDA_MODULES.is_empty());
        for (name, data) in CUDA_MODULES {
            let mut got = images(name, data);
            got.sort();
            let want: &[(u16, u32)] =
                if name.ends_with("_sm90a") { &[(1, 90), (2, 90)] } else { &[(1, 80), (2, 80), (2, 90)] };
            assert_eq!(got, want, "{name}: images (kind 1 PTX, 2 SASS; arch)");
        }
    }
}
