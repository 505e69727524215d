//! `Tensor`: a cheap-to-clone handle (`Arc`) to a contiguous, row-major buffer with a
//! shape, an element type, a device, and a unique [`TensorId`] that the tape uses to
//! route gradients. `reshape` makes a new handle over the same storage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::device::{CpuDevice, CudaDevice, Device};
use crate::storage::{CpuData, CudaData, Element, FloatElement, Storage};
use crate::{DType, Error, Result, Shape};

/// Identity of a tensor handle, unique within the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> Self {
        // Identity only: no state anyone can observe besides uniqueness.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// An n-dimensional array on a device. Clones share the data.
#[derive(Clone)]
pub struct Tensor(Arc<TensorInner>);

struct TensorInner {
    id: TensorId,
    shape: Shape,
    dtype: DType,
    device: Device,
    storage: Arc<StorageCell>,
}

/// A tensor's data with its stamp: a value unique within the process, drawn afresh when the
/// storage is made and each time write access to it is taken, so equal stamps mean the same
/// data, unchanged (what [`crate::device::workspace::Workspace`] checks before reusing a
/// matrix built from tensors).
struct StorageCell {
    data: RwLock<Storage>,
    stamp: AtomicU64,
}

/// A fresh stamp (see [`StorageCell`]).
fn fresh_stamp() -> u64 {
    // Identity only, like TensorId.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {}, {}, {})", self.0.id, self.0.shape, self.0.dtype, self.0.device.label())
    }
}

/// Runs `$body` with `$t` bound to the Rust type of a float dtype (F32, BF16, F16).
#[macro_export]
#[doc(hidden)]
macro_rules! with_float_type {
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
            $crate::DType::F16 => {
                type $t = half::f16;
                $body
            }
            other => Err($crate::Error::DType { op: $op, dtype: other, msg: "expected a float type" }),
        }
    };
}

fn lock_err() -> Error {
    Error::invalid("tensor storage lock poisoned by a panic in another thread")
}

impl Tensor {
    /// Wraps storage; checks that its length matches the shape.
    pub(crate) fn from_storage(storage: Storage, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let len = storage_len(&storage);
        if len != shape.elem_count() {
            return Err(Error::BadShape { op: "from_storage", shape, msg: format!("storage holds {len} elements") });
        }
        Ok(Tensor(Arc::new(TensorInner {
            id: TensorId::fresh(),
            dtype: storage.dtype(),
            shape,
            device: device.clone(),
            storage: Arc::new(StorageCell { data: RwLock::new(storage), stamp: AtomicU64::new(fresh_stamp()) }),
        })))
    }

    /// A tensor from host data of element type `T`, placed on `device`.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::BadShape { op: "from_vec", shape, msg: format!("{} values given", data.len()) });
        }
        let storage = match device {
            Device::Cpu(d) => Storage::Cpu(T::wrap_cpu(d.buffer(data))),
            Device::Cuda(d) => Storage::Cuda(T::wrap_cuda(d.htod(&data)?)),
        };
        Tensor::from_storage(storage, shape, device)
    }

    /// A float tensor of `dtype` from f32 values (rounded to nearest for BF16/F16).
    pub fn from_f32(data: Vec<f32>, shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        match dtype {
            DType::F32 => Tensor::from_vec(data, shape, device),
            DType::BF16 => Tensor::from_vec(data.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>(), shape, device),
            DType::F16 => Tensor::from_vec(data.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(), shape, device),
            other => Err(Error::DType { op: "from_f32", dtype: other, msg: "expected a float type" }),
        }
    }

    /// All zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.elem_count();
        let storage = match device {
            Device::Cpu(d) => Storage::Cpu(match dtype {
                DType::F32 => CpuData::F32(d.buffer(vec![0f32; n])),
                DType::BF16 => CpuData::BF16(d.buffer(vec![bf16::ZERO; n])),
                DType::F16 => CpuData::F16(d.buffer(vec![f16::ZERO; n])),
                DType::U32 => CpuData::U32(d.buffer(vec![0u32; n])),
                DType::U8 => CpuData::U8(d.buffer(vec![0u8; n])),
            }),
            Device::Cuda(d) => Storage::Cuda(match dtype {
                DType::F32 => CudaData::F32(d.alloc_zeros(n)?),
                DType::BF16 => CudaData::BF16(d.alloc_zeros(n)?),
                DType::F16 => CudaData::F16(d.alloc_zeros(n)?),
                DType::U32 => CudaData::U32(d.alloc_zeros(n)?),
                DType::U8 => CudaData::U8(d.alloc_zeros(n)?),
            }),
        };
        Tensor::from_storage(storage, shape, device)
    }

    /// Normal(0, std²) values from a seeded ChaCha8 stream (Box–Muller), made on the host.
    pub fn randn(shape: impl Into<Shape>, std: f32, dtype: DType, device: &Device, seed: u64) -> Result<Tensor> {
        let shape = shape.into();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = shape.elem_count();
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let a = 2.0 * std::f64::consts::PI * u2;
            v.push((r * a.cos()) as f32 * std);
            if v.len() < n {
                v.push((r * a.sin()) as f32 * std);
            }
        }
        Tensor::from_f32(v, shape, dtype, device)
    }

    /// Uniform values in [lo, hi) from a seeded ChaCha8 stream, made on the host.
    pub fn rand_uniform(
        shape: impl Into<Shape>,
        lo: f32,
        hi: f32,
        dtype: DType,
        device: &Device,
        seed: u64,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v = (0..shape.elem_count()).map(|_| lo + (hi - lo) * rng.random::<f32>()).collect();
        Tensor::from_f32(v, shape, dtype, device)
    }

    /// Unique id of this handle (a reshape gets a new one).
    pub fn id(&self) -> TensorId {
        self.0.id
    }

    /// Shape.
    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }

    /// Dimensions.
    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.0.shape.elem_count()
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// Device.
    pub fn device(&self) -> &Device {
        &self.0.device
    }

    /// Bytes of data.
    pub fn size_in_bytes(&self) -> usize {
        self.elem_count() * self.dtype().size_in_bytes()
    }

    /// Read access to the storage.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, Storage>> {
        self.0.storage.data.read().map_err(|_| lock_err())
    }

    /// Write access to the storage (in-place updates: optimizer steps, gradient accumulation).
    /// Draws a new stamp for the storage (how a workspace knows a matrix it built from this
    /// tensor is stale).
    pub fn write(&self) -> Result<RwLockWriteGuard<'_, Storage>> {
        let guard = self.0.storage.data.write().map_err(|_| lock_err())?;
        self.0.storage.stamp.store(fresh_stamp(), Ordering::Relaxed);
        Ok(guard)
    }

    /// The storage's stamp: unique within the process, new each time the storage is made or
    /// written through [`Self::write`]. Two equal stamps read at different times mean the data
    /// did not change in between.
    pub(crate) fn stamp(&self) -> u64 {
        self.0.storage.stamp.load(Ordering::Relaxed)
    }

    /// True when no other tensor handle or view shares this storage.
    pub(crate) fn is_sole_owner(&self) -> bool {
        Arc::strong_count(&self.0) == 1 && Arc::strong_count(&self.0.storage) == 1
    }

    /// True when both handles share one storage.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// A key equal for two handles exactly when they share one storage ([`Self::same_storage`]
    /// as a value, for sets of many tensors).
    pub(crate) fn storage_key(&self) -> usize {
        Arc::as_ptr(&self.0.storage) as usize
    }

    /// A new handle with another shape of the same element count, sharing the data.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape().clone(), rhs: shape });
        }
        Ok(Tensor(Arc::new(TensorInner {
            id: TensorId::fresh(),
            shape,
            dtype: self.0.dtype,
            device: self.0.device.clone(),
            storage: self.0.storage.clone(),
        })))
    }

    /// Copies the data to the host as `T` (the dtype must be `T`'s).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let s = self.read()?;
        match &*s {
            Storage::Cpu(_) => Ok(s.cpu::<T>()?.to_vec()),
            Storage::Cuda(_) => {
                let Device::Cuda(dev) = self.device() else {
                    return Err(Error::invalid("CUDA storage on a non-CUDA tensor"));
                };
                dev.dtoh(s.cuda::<T>()?)
            }
        }
    }

    /// The raw little-endian bytes of the data, in its own dtype (for files).
    pub fn to_le_bytes(&self) -> Result<Vec<u8>> {
        fn bytes<T: Element>(t: &Tensor) -> Result<Vec<u8>> {
            Ok(bytemuck::cast_slice(&t.to_vec::<T>()?).to_vec())
        }
        match self.dtype() {
            DType::F32 => bytes::<f32>(self),
            DType::BF16 => bytes::<half::bf16>(self),
            DType::F16 => bytes::<half::f16>(self),
            DType::U32 => bytes::<u32>(self),
            DType::U8 => bytes::<u8>(self),
        }
    }

    /// A tensor from raw little-endian bytes of `dtype` (the inverse of [`Tensor::to_le_bytes`]).
    pub fn from_le_bytes(bytes: &[u8], dtype: DType, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        fn build<T: Element>(bytes: &[u8], shape: Shape, device: &Device) -> Result<Tensor> {
            if !bytes.len().is_multiple_of(std::mem::size_of::<T>()) {
                return Err(Error::invalid(format!("{} bytes do not hold whole {} values", bytes.len(), T::DTYPE)));
            }
            // Copy into an aligned vector: file data need not be aligned for T.
            let mut v = vec![T::default(); bytes.len() / std::mem::size_of::<T>()];
            bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(bytes);
            Tensor::from_vec(v, shape, device)
        }
        let shape = shape.into();
        match dtype {
            DType::F32 => build::<f32>(bytes, shape, device),
            DType::BF16 => build::<half::bf16>(bytes, shape, device),
            DType::F16 => build::<half::f16>(bytes, shape, device),
            DType::U32 => build::<u32>(bytes, shape, device),
            DType::U8 => build::<u8>(bytes, shape, device),
        }
    }

    /// Copies float data to the host as f32.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        with_float_type!(self.dtype(), "to_f32_vec", T => {
            Ok(self.to_vec::<T>()?.into_iter().map(|v| v.to_f32()).collect())
        })
    }

    /// The single value of a one-element float tensor.
    pub fn to_scalar_f32(&self) -> Result<f32> {
        if self.elem_count() != 1 {
            return Err(Error::BadShape {
                op: "to_scalar_f32",
                shape: self.shape().clone(),
                msg: "expected one element".into(),
            });
        }
        Ok(self.to_f32_vec()?[0])
    }

    /// A copy on `device` (a new handle sharing nothing with this one).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        let s = self.read()?;
        let storage = match (&*s, device) {
            (Storage::Cpu(data), Device::Cpu(d)) => Storage::Cpu(copy_cpu(data, d)),
            (Storage::Cpu(data), Device::Cuda(d)) => Storage::Cuda(upload(data, d)?),
            (Storage::Cuda(_), _) => {
                drop(s);
                let host = host_data(self)?;
                return match device {
                    Device::Cpu(d) => {
                        Tensor::from_storage(Storage::Cpu(host.into_cpu(d)), self.shape().clone(), device)
                    }
                    Device::Cuda(d) => {
                        let cpu = host.into_cpu(&CpuDevice::new());
                        Tensor::from_storage(Storage::Cuda(upload(&cpu, d)?), self.shape().clone(), device)
                    }
                };
            }
        };
        Tensor::from_storage(storage, self.shape().clone(), device)
    }

    /// A copy converted to `dtype` (float ↔ float; a plain copy when it is unchanged), on
    /// the same device. Records nothing; see [`crate::ops::cast()`] for the differentiable
    /// version.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if self.dtype() == dtype {
            return self.to_device(self.device());
        }
        let float = |d: DType| matches!(d, DType::F32 | DType::BF16 | DType::F16);
        if !float(self.dtype()) || !float(dtype) {
            return Err(Error::DType { op: "cast", dtype: self.dtype(), msg: "only float types convert" });
        }
        match self.device() {
            Device::Cpu(_) => Tensor::from_f32(self.to_f32_vec()?, self.shape().clone(), dtype, self.device()),
            Device::Cuda(d) => crate::device::cast::cast(d, self, dtype),
        }
    }

    /// Overwrites this tensor's data with `src`'s (same shape, dtype and device).
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        self.shape().expect_eq("copy_from", src.shape())?;
        if self.dtype() != src.dtype() || !self.device().same(src.device()) {
            return Err(Error::invalid(format!("copy_from: {self:?} from {src:?}")));
        }
        if self.same_storage(src) {
            return Ok(());
        }
        let s = src.read()?;
        let mut d = self.write()?;
        match (&*s, &mut *d, self.device()) {
            (Storage::Cpu(a), Storage::Cpu(b), _) => copy_cpu_into(a, b),
            (Storage::Cuda(a), Storage::Cuda(b), Device::Cuda(dev)) => copy_cuda_into(a, b, dev),
            _ => Err(Error::invalid("copy_from: storage/device mismatch")),
        }
    }
}

/// Host data of any element type, used when moving between devices.
enum HostData {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    U32(Vec<u32>),
    U8(Vec<u8>),
}

impl HostData {
    fn into_cpu(self, d: &CpuDevice) -> CpuData {
        match self {
            HostData::F32(v) => CpuData::F32(d.buffer(v)),
            HostData::BF16(v) => CpuData::BF16(d.buffer(v)),
            HostData::F16(v) => CpuData::F16(d.buffer(v)),
            HostData::U32(v) => CpuData::U32(d.buffer(v)),
            HostData::U8(v) => CpuData::U8(d.buffer(v)),
        }
    }
}

fn host_data(t: &Tensor) -> Result<HostData> {
    Ok(match t.dtype() {
        DType::F32 => HostData::F32(t.to_vec()?),
        DType::BF16 => HostData::BF16(t.to_vec()?),
        DType::F16 => HostData::F16(t.to_vec()?),
        DType::U32 => HostData::U32(t.to_vec()?),
        DType::U8 => HostData::U8(t.to_vec()?),
    })
}

fn storage_len(s: &Storage) -> usize {
    match s {
        Storage::Cpu(d) => match d {
            CpuData::F32(b) => b.as_slice().len(),
            CpuData::BF16(b) => b.as_slice().len(),
            CpuData::F16(b) => b.as_slice().len(),
            CpuData::U32(b) => b.as_slice().len(),
            CpuData::U8(b) => b.as_slice().len(),
        },
        Storage::Cuda(d) => match d {
            CudaData::F32(b) => b.len(),
            CudaData::BF16(b) => b.len(),
            CudaData::F16(b) => b.len(),
            CudaData::U32(b) => b.len(),
            CudaData::U8(b) => b.len(),
        },
    }
}

fn copy_cpu(data: &CpuData, d: &CpuDevice) -> CpuData {
    match data {
        CpuData::F32(b) => CpuData::F32(d.buffer(b.as_slice().to_vec())),
        CpuData::BF16(b) => CpuData::BF16(d.buffer(b.as_slice().to_vec())),
        CpuData::F16(b) => CpuData::F16(d.buffer(b.as_slice().to_vec())),
        CpuData::U32(b) => CpuData::U32(d.buffer(b.as_slice().to_vec())),
        CpuData::U8(b) => CpuData::U8(d.buffer(b.as_slice().to_vec())),
    }
}

fn upload(data: &CpuData, d: &CudaDevice) -> Result<CudaData> {
    Ok(match data {
        CpuData::F32(b) => CudaData::F32(d.htod(b.as_slice())?),
        CpuData::BF16(b) => CudaData::BF16(d.htod(b.as_slice())?),
        CpuData::F16(b) => CudaData::F16(d.htod(b.as_slice())?),
        CpuData::U32(b) => CudaData::U32(d.htod(b.as_slice())?),
        CpuData::U8(b) => CudaData::U8(d.htod(b.as_slice())?),
    })
}

fn copy_cpu_into(src: &CpuData, dst: &mut CpuData) -> Result<()> {
    match (src, dst) {
        (CpuData::F32(a), CpuData::F32(b)) => b.as_mut_slice().copy_from_slice(a.as_slice()),
        (CpuData::BF16(a), CpuData::BF16(b)) => b.as_mut_slice().copy_from_slice(a.as_slice()),
        (CpuData::F16(a), CpuData::F16(b)) => b.as_mut_slice().copy_from_slice(a.as_slice()),
        (CpuData::U32(a), CpuData::U32(b)) => b.as_mut_slice().copy_from_slice(a.as_slice()),
        (CpuData::U8(a), CpuData::U8(b)) => b.as_mut_slice().copy_from_slice(a.as_slice()),
        _ => return Err(Error::invalid("copy_from: dtype mismatch")),
    }
    Ok(())
}

fn copy_cuda_into(src: &CudaData, dst: &mut CudaData, dev: &CudaDevice) -> Result<()> {
    let s = dev.stream();
    match (src, dst) {
        (CudaData::F32(a), CudaData::F32(b)) => s.memcpy_dtod(a.slice(), b.slice_mut())?,
        (CudaData::BF16(a), CudaData::BF16(b)) => s.memcpy_dtod(a.slice(), b.slice_mut())?,
        (CudaData::F16(a), CudaData::F16(b)) => s.memcpy_dtod(a.slice(), b.slice_mut())?,
        (CudaData::U32(a), CudaData::U32(b)) => s.memcpy_dtod(a.slice(), b.slice_mut())?,
        (CudaData::U8(a), CudaData::U8(b)) => s.memcpy_dtod(a.slice(), b.slice_mut())?,
        _ => return Err(Error::invalid("copy_from: dtype mismatch")),
    }
    Ok(())
}

/// Wraps a finished device buffer as a tensor of `shape` on `device` (launchers' results).
pub(crate) fn cuda_tensor<T: Element>(
    buf: crate::device::CudaBuffer<T>,
    shape: impl Into<Shape>,
    device: &Device,
) -> Result<Tensor> {
    Tensor::from_storage(Storage::Cuda(T::wrap_cuda(buf)), shape, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_memory_is_counted_with_peak() {
        let dev = Device::cpu();
        assert_eq!(dev.memory().current_bytes, 0);
        let a = Tensor::zeros([1000], DType::F32, &dev).unwrap();
        let b = Tensor::zeros([500], DType::BF16, &dev).unwrap();
        assert_eq!(dev.memory().current_bytes, 4000 + 1000);
        let view = a.reshape([10, 100]).unwrap();
        drop(a);
        assert_eq!(dev.memory().current_bytes, 5000, "a view keeps the storage alive");
        drop(view);
        drop(b);
        let m = dev.memory();
        assert_eq!((m.current_bytes, m.peak_bytes), (0, 5000));
        dev.reset_peak_memory();
        assert_eq!(dev.memory().peak_bytes, 0);
    }

    #[test]
    fn stamps_change_with_every_write_and_are_shared_by_views() {
        let dev = Device::cpu();
        let t = Tensor::zeros([2, 3], DType::F32, &dev).unwrap();
        let (u, view) = (Tensor::zeros([2, 3], DType::F32, &dev).unwrap(), t.reshape([6]).unwrap());
        let s0 = t.stamp();
        assert_ne!(s0, u.stamp(), "two storages");
        assert_eq!((t.clone().stamp(), view.stamp()), (s0, s0), "a clone and a view share the storage's stamp");
        drop(t.read().unwrap());
        assert_eq!(t.stamp(), s0, "reading changes nothing");
        t.copy_from(&u).unwrap();
        let s1 = view.stamp();
        assert_ne!(s1, s0, "written through another handle");
        drop(view.write().unwrap());
        assert_ne!(t.stamp(), s1);
    }

    #[test]
    fn conversions_and_shapes() {
        let dev = Device::cpu();
        let t = Tensor::from_f32(vec![1.0, 2.5, -3.0, 1e-3], [2, 2], DType::BF16, &dev).unwrap();
        assert_eq!(t.to_f32_vec().unwrap(), vec![1.0, 2.5, -3.0, half::bf16::from_f32(1e-3).to_f32()]);
        assert_eq!(t.to_dtype(DType::F32).unwrap().dtype(), DType::F32);
        assert!(t.reshape([3]).is_err());
        assert!(Tensor::from_vec(vec![1u32, 2, 3], [2, 2], &dev).is_err());
        assert!(t.to_vec::<f32>().is_err(), "typed access checks the dtype");
        let ids = Tensor::from_vec(vec![7u32, 8], [2], &dev).unwrap();
        assert!(ids.to_f32_vec().is_err());
        let r = Tensor::randn([1000], 2.0, DType::F32, &dev, 1).unwrap().to_f32_vec().unwrap();
        let std = (r.iter().map(|v| v * v).sum::<f32>() / 1000.0).sqrt();
        assert!((std - 2.0).abs() < 0.2, "std {std}");
        assert_eq!(r, Tensor::randn([1000], 2.0, DType::F32, &dev, 1).unwrap().to_f32_vec().unwrap(), "seeded");
    }

    #[test]
    fn copy_from_checks_and_copies() {
        let dev = Device::cpu();
        let a = Tensor::zeros([3], DType::F32, &dev).unwrap();
        let b = Tensor::from_f32(vec![1.0, 2.0, 3.0], [3], DType::F32, &dev).unwrap();
        a.copy_from(&b).unwrap();
        assert_eq!(a.to_f32_vec().unwrap(), vec![1.0, 2.0, 3.0]);
        assert!(a.copy_from(&Tensor::zeros([4], DType::F32, &dev).unwrap()).is_err());
    }

    #[test]
    fn cuda_round_trip_and_memory() {
        let Some(gpu) = crate::device::cuda_for_tests("tensor::cuda_round_trip_and_memory") else { return };
        let before = gpu.memory().current_bytes;
        let v: Vec<f32> = (0..1001).map(|i| i as f32 * 0.5).collect();
        let t = Tensor::from_f32(v.clone(), [1001], DType::F32, &Device::cpu()).unwrap().to_device(&gpu).unwrap();
        assert_eq!(gpu.memory().current_bytes - before, 4004);
        assert_eq!(t.to_f32_vec().unwrap(), v);
        assert_eq!(
            t.to_dtype(DType::BF16).unwrap().to_device(&Device::cpu()).unwrap().to_f32_vec().unwrap(),
            Tensor::from_f32(v, [1001], DType::BF16, &Device::cpu()).unwrap().to_f32_vec().unwrap()
        );
        drop(t);
        assert_eq!(gpu.memory().current_bytes, before);
        assert!(gpu.memory().peak_bytes >= before + 4004);
    }
}
