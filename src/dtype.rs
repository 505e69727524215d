//! Element types. F32 and BF16 are compute types; F16 is read from files and converted;
//! U32 holds token ids and indices, U8 holds bit-packed masks and raw bytes.

use std::fmt;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// bfloat16 (8-bit exponent, 7-bit mantissa); computed with f32 accumulation.
    BF16,
    /// IEEE half; load-only: convert to F32 or BF16 before computing.
    F16,
    /// Unsigned 32-bit integers (token ids, indices).
    U32,
    /// Bytes (bit-packed masks, raw data).
    U8,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::U8 => 1,
        }
    }

    /// True for the float types that ops compute in (F32, BF16).
    pub fn is_compute_float(self) -> bool {
        matches!(self, DType::F32 | DType::BF16)
    }

    /// Lower-case name as used on the command line and in file metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U32 => "u32",
            DType::U8 => "u8",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "f16" | "float16" => Ok(DType::F16),
            "u32" => Ok(DType::U32),
            "u8" => Ok(DType::U8),
            other => {
                Err(crate::Error::invalid(format!("unknown dtype '{other}' (expected f32, bf16, f16, u32 or u8)")))
            }
        }
    }
}
