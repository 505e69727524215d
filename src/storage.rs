//! Storage: the bytes behind a tensor, either host or device, in one of the element types.
//! Exactly two variants (Cpu, Cuda); dtype dispatch happens on the inner enums.

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};

use crate::device::{CpuBuffer, CudaBuffer};
use crate::{DType, Error, Result};

/// A tensor's data.
#[derive(Debug)]
pub enum Storage {
    /// Host memory.
    Cpu(CpuData),
    /// Device memory.
    Cuda(CudaData),
}

/// Host data by element type.
#[derive(Debug)]
pub enum CpuData {
    F32(CpuBuffer<f32>),
    BF16(CpuBuffer<bf16>),
    F16(CpuBuffer<f16>),
    U32(CpuBuffer<u32>),
    U8(CpuBuffer<u8>),
}

/// Device data by element type.
#[derive(Debug)]
pub enum CudaData {
    F32(CudaBuffer<f32>),
    BF16(CudaBuffer<bf16>),
    F16(CudaBuffer<f16>),
    U32(CudaBuffer<u32>),
    U8(CudaBuffer<u8>),
}

/// A Rust type that can be a tensor element.
pub trait Element:
    Copy + Send + Sync + Default + std::fmt::Debug + bytemuck::Pod + DeviceRepr + ValidAsZeroBits + 'static
{
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Wraps a host buffer.
    fn wrap_cpu(buf: CpuBuffer<Self>) -> CpuData;
    /// Wraps a device buffer.
    fn wrap_cuda(buf: CudaBuffer<Self>) -> CudaData;
    /// The host buffer, if `data` holds this type.
    fn cpu_ref(data: &CpuData) -> Option<&CpuBuffer<Self>>;
    /// The host buffer mutably, if `data` holds this type.
    fn cpu_mut(data: &mut CpuData) -> Option<&mut CpuBuffer<Self>>;
    /// The device buffer, if `data` holds this type.
    fn cuda_ref(data: &CudaData) -> Option<&CudaBuffer<Self>>;
    /// The device buffer mutably, if `data` holds this type.
    fn cuda_mut(data: &mut CudaData) -> Option<&mut CudaBuffer<Self>>;
}

/// Float elements that convert to and from f32 (F32, BF16, F16).
pub trait FloatElement: Element {
    /// Widen to f32 (exact).
    fn to_f32(self) -> f32;
    /// Round from f32 (round-to-nearest-even for the half types).
    fn from_f32(v: f32) -> Self;
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn wrap_cpu(buf: CpuBuffer<Self>) -> CpuData {
                CpuData::$variant(buf)
            }
            fn wrap_cuda(buf: CudaBuffer<Self>) -> CudaData {
                CudaData::$variant(buf)
            }
            fn cpu_ref(data: &CpuData) -> Option<&CpuBuffer<Self>> {
                match data {
                    CpuData::$variant(b) => Some(b),
                    _ => None,
                }
            }
            fn cpu_mut(data: &mut CpuData) -> Option<&mut CpuBuffer<Self>> {
                match data {
                    CpuData::$variant(b) => Some(b),
                    _ => None,
                }
            }
            fn cuda_ref(data: &CudaData) -> Option<&CudaBuffer<Self>> {
                match data {
                    CudaData::$variant(b) => Some(b),
                    _ => None,
                }
            }
            fn cuda_mut(data: &mut CudaData) -> Option<&mut CudaBuffer<Self>> {
                match data {
                    CudaData::$variant(b) => Some(b),
                    _ => None,
                }
            }
        }
    };
}
element!(f32, F32);
element!(bf16, BF16);
element!(f16, F16);
element!(u32, U32);
element!(u8, U8);

impl FloatElement for f32 {
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn from_f32(v: f32) -> Self {
        v
    }
}
impl FloatElement for bf16 {
    #[inline]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}
impl FloatElement for f16 {
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl CpuData {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            CpuData::F32(_) => DType::F32,
            CpuData::BF16(_) => DType::BF16,
            CpuData::F16(_) => DType::F16,
            CpuData::U32(_) => DType::U32,
            CpuData::U8(_) => DType::U8,
        }
    }
}

impl CudaData {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            CudaData::F32(_) => DType::F32,
            CudaData::BF16(_) => DType::BF16,
            CudaData::F16(_) => DType::F16,
            CudaData::U32(_) => DType::U32,
            CudaData::U8(_) => DType::U8,
        }
    }
}

fn wrong_type(op: &'static str, found: DType, want: DType) -> Error {
    Error::DType {
        op,
        dtype: found,
        msg: match want {
            DType::F32 => "expected f32 storage",
            DType::BF16 => "expected bf16 storage",
            DType::F16 => "expected f16 storage",
            DType::U32 => "expected u32 storage",
            DType::U8 => "expected u8 storage",
        },
    }
}

impl Storage {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(d) => d.dtype(),
            Storage::Cuda(d) => d.dtype(),
        }
    }

    /// Host elements of type `T`.
    pub fn cpu<T: Element>(&self) -> Result<&[T]> {
        match self {
            Storage::Cpu(d) => {
                T::cpu_ref(d).map(|b| b.as_slice()).ok_or_else(|| wrong_type("cpu storage", d.dtype(), T::DTYPE))
            }
            Storage::Cuda(_) => Err(Error::invalid("expected CPU storage, found CUDA")),
        }
    }

    /// Host elements of type `T`, mutably.
    pub fn cpu_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        match self {
            Storage::Cpu(d) => {
                let dt = d.dtype();
                T::cpu_mut(d).map(|b| b.as_mut_slice()).ok_or_else(|| wrong_type("cpu storage", dt, T::DTYPE))
            }
            Storage::Cuda(_) => Err(Error::invalid("expected CPU storage, found CUDA")),
        }
    }

    /// Device slice of type `T`.
    pub fn cuda<T: Element>(&self) -> Result<&CudaSlice<T>> {
        match self {
            Storage::Cuda(d) => {
                T::cuda_ref(d).map(|b| b.slice()).ok_or_else(|| wrong_type("cuda storage", d.dtype(), T::DTYPE))
            }
            Storage::Cpu(_) => Err(Error::invalid("expected CUDA storage, found CPU")),
        }
    }

    /// Device slice of type `T`, mutably.
    pub fn cuda_mut<T: Element>(&mut self) -> Result<&mut CudaSlice<T>> {
        match self {
            Storage::Cuda(d) => {
                let dt = d.dtype();
                T::cuda_mut(d).map(|b| b.slice_mut()).ok_or_else(|| wrong_type("cuda storage", dt, T::DTYPE))
            }
            Storage::Cpu(_) => Err(Error::invalid("expected CUDA storage, found CPU")),
        }
    }
}
