//! GGUF reader (versions 2 and 3) with dequantisation to f32, and a small writer.
//!
//! File layout (all integers little-endian):
//! ```text
//! magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//! n_kv ×      { string key | u32 value_type | value }
//! n_tensors × { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//! padding to `general.alignment` (default 32)
//! data section: each tensor at data_start + offset
//! ```
//! A string is `u64 len | len bytes of UTF-8`; an array value is
//! `u32 elem_type | u64 count | count × value`. `ne` lists dimensions innermost first, so we
//! store [`GgufTensorInfo::shape`] reversed (row-major, outermost first): a PyTorch
//! `[out, in]` weight has `ne = [in, out]` and `shape = [out, in]`.
//!
//! Dequantisation, per block of 32 consecutive weights along a row (`d`, `m` are f16):
//! ```text
//! Q4_0 (18 bytes): d, qs[16]     w[j] = d·((qs[j] & 0xF) − 8), w[j+16] = d·((qs[j] >> 4) − 8)
//! Q4_1 (20 bytes): d, m, qs[16]  w[j] = d·(qs[j] & 0xF) + m,   w[j+16] = d·(qs[j] >> 4) + m
//! Q8_0 (34 bytes): d, q[32] i8   w[j] = d·q[j]
//! ```
//! F32, F16 and BF16 convert exactly. Every count and length read from the file is checked
//! against the bytes that remain before anything is allocated, so truncated or hostile files
//! give [`Error::Format`] instead of a panic or a huge allocation. Only a regular file is
//! opened (see [`super::open_regular`]), and a tensor that dequantises to NaN or an
//! infinity is refused by name.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;

use crate::{Error, Result};

const FORMAT: &str = "GGUF";
const MAGIC: [u8; 4] = *b"GGUF";
/// Writer's version; the reader accepts 2 and 3 (identical layout, v3 adds big-endian
/// variants that we do not read).
const WRITE_VERSION: u32 = 3;
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: usize = 4;
/// Arrays of arrays are legal; deeper nesting than this only serves to overflow the stack.
const MAX_ARRAY_NESTING: usize = 8;
/// Weights per quantisation block for Q4_0, Q4_1 and Q8_0.
const QK: usize = 32;
/// Quantisation blocks handed to one rayon task.
const BLOCKS_PER_TASK: usize = 4096;

// GGUF metadata value type ids.
const VT_U8: u32 = 0;
const VT_I8: u32 = 1;
const VT_U16: u32 = 2;
const VT_I16: u32 = 3;
const VT_U32: u32 = 4;
const VT_I32: u32 = 5;
const VT_F32: u32 = 6;
const VT_BOOL: u32 = 7;
const VT_STRING: u32 = 8;
const VT_ARRAY: u32 = 9;
const VT_U64: u32 = 10;
const VT_I64: u32 = 11;
const VT_F64: u32 = 12;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float32`
    F32(f32),
    /// `float64`
    F64(f64),
    /// `bool` (one byte, 0 or 1)
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// Array; GGUF requires all elements to have one type.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as u64 if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as i64 if it is an integer of any width that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as f64 if it is a float or an integer (large 64-bit integers round).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as f32 if it is a float or an integer (rounded to nearest).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(v) => Some(v),
            _ => self.as_f64().map(|v| v as f32),
        }
    }

    /// The value as a string slice if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements if the value is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }

    /// GGUF value type id.
    fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => VT_U8,
            GgufValue::I8(_) => VT_I8,
            GgufValue::U16(_) => VT_U16,
            GgufValue::I16(_) => VT_I16,
            GgufValue::U32(_) => VT_U32,
            GgufValue::I32(_) => VT_I32,
            GgufValue::U64(_) => VT_U64,
            GgufValue::I64(_) => VT_I64,
            GgufValue::F32(_) => VT_F32,
            GgufValue::F64(_) => VT_F64,
            GgufValue::Bool(_) => VT_BOOL,
            GgufValue::String(_) => VT_STRING,
            GgufValue::Array(_) => VT_ARRAY,
        }
    }
}

/// Storage type of a tensor (ggml type id in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// f32 (0)
    F32,
    /// IEEE half (1)
    F16,
    /// 4-bit, symmetric, blocks of 32 (2)
    Q4_0,
    /// 4-bit with offset, blocks of 32 (3)
    Q4_1,
    /// 8-bit, blocks of 32 (8)
    Q8_0,
    /// bfloat16 (30)
    BF16,
    /// Any other ggml type id; `open` accepts it, dequantising it is an error.
    Other(u32),
}

impl GgmlType {
    /// The type for a ggml type id.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// `(elements, bytes)` of one storage block: (1, 4) for F32, (32, 20) for Q4_1, ...;
    /// `None` for types we do not read.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::BF16 => Some((1, 2)),
            GgmlType::Q4_0 => Some((QK, 2 + QK / 2)),
            GgmlType::Q4_1 => Some((QK, 4 + QK / 2)),
            GgmlType::Q8_0 => Some((QK, 2 + QK)),
            GgmlType::Other(_) => None,
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::BF16 => "BF16",
            // Name the common types we do not read, so the error tells the user what the
            // file holds (ids from ggml.h).
            GgmlType::Other(id) => {
                let known = match id {
                    6 => Some("Q5_0"),
                    7 => Some("Q5_1"),
                    9 => Some("Q8_1"),
                    10 => Some("Q2_K"),
                    11 => Some("Q3_K"),
                    12 => Some("Q4_K"),
                    13 => Some("Q5_K"),
                    14 => Some("Q6_K"),
                    15 => Some("Q8_K"),
                    _ => None,
                };
                return match known {
                    Some(n) => write!(f, "{n} (ggml type {id})"),
                    None => write!(f, "ggml type {id}"),
                };
            }
        };
        f.write_str(name)
    }
}

/// Where and how one tensor is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Row-major dimensions, outermost first (GGUF's `ne` reversed).
    pub shape: Vec<usize>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Absolute file offset of the first byte of the tensor's data.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Number of elements (1 for a rank-0 tensor).
    pub fn elem_count(&self) -> usize {
        // `open` rejected shapes whose product overflows.
        self.shape.iter().product()
    }
}

/// Bytes of data for `shape` stored as `ty`, or why it cannot be sized: a type we do not
/// read, or a row length (innermost dimension) that is not a whole number of blocks.
fn data_len(ty: GgmlType, shape: &[usize]) -> std::result::Result<usize, String> {
    let (block_elems, block_bytes) =
        ty.block_layout().ok_or_else(|| format!("{ty} is not a type this reader decodes"))?;
    let row_len = shape.last().copied().unwrap_or(1);
    if row_len % block_elems != 0 {
        return Err(format!(
            "{ty} row length {row_len} (shape {shape:?}) is not a multiple of the block size \
             {block_elems}"
        ));
    }
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| (n / block_elems).checked_mul(block_bytes))
        .ok_or_else(|| format!("byte size of {ty} shape {shape:?} overflows"))
}

/// An open, memory-mapped GGUF file: metadata and tensor directory parsed, tensor data read
/// on demand with [`GgufFile::tensor_f32`].
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The metadata holds the whole vocabulary; print sizes only.
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps the file and parses its header, metadata and tensor directory. Checks that the
    /// data of every tensor of a known type lies inside the file; tensors of unknown types
    /// are listed and only fail when read. Anything but a regular file (a FIFO, a
    /// directory) is refused by name.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let file = super::open_regular(&path)?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        // magic + version + n_tensors + n_kv
        if len < 24 {
            return Err(Error::format(
                &path,
                FORMAT,
                format!("file is {len} bytes, shorter than a GGUF header (24 bytes)"),
            ));
        }
        // SAFETY: the map is read-only and lives as long as `GgufFile`; like every
        // memory-mapped reader we rely on the file not being truncated while it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let header = parse(&mmap, &path)?;
        Ok(GgufFile {
            path,
            mmap,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            tensor_index: header.tensor_index,
        })
    }

    /// Path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata, sorted by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn get_typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&'a GgufValue) -> Option<T>,
    ) -> Result<T> {
        let value =
            self.get(key).ok_or_else(|| Error::format(&self.path, FORMAT, format!("missing metadata key '{key}'")))?;
        convert(value).ok_or_else(|| {
            Error::format(
                &self.path,
                FORMAT,
                format!("metadata key '{key}' is a {}, expected {expected}", value.type_name()),
            )
        })
    }

    /// A non-negative integer value of any width.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_typed(key, "a non-negative integer", GgufValue::as_u64)
    }

    /// A float or integer value as f32.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get_typed(key, "a number", GgufValue::as_f32)
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get_typed(key, "a string", GgufValue::as_str)
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<String>> {
        self.get_typed(key, "an array of strings", |v| {
            v.as_array()?.iter().map(|e| e.as_str().map(str::to_owned)).collect()
        })
    }

    /// Tensor directory in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// Directory entry of one tensor.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's elements as f32, row-major in [`GgufTensorInfo::shape`] order,
    /// dequantised from F32, F16, BF16, Q4_0, Q4_1 or Q8_0 (in parallel over blocks). An
    /// element that is NaN or infinite (stored so, or from a block scale that is) is an
    /// error naming the tensor, the element (flat index into the stored layout) and its
    /// value.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name: name.to_owned() })?;
        if let GgmlType::Other(_) = info.ggml_type {
            return Err(Error::UnsupportedQuant {
                path: self.path.clone(),
                tensor: name.to_owned(),
                ggml_type: info.ggml_type.to_string(),
            });
        }
        let byte_len = data_len(info.ggml_type, &info.shape)
            .map_err(|msg| Error::format(&self.path, FORMAT, format!("tensor '{name}': {msg}")))?;
        let bytes = usize::try_from(info.offset)
            .ok()
            .and_then(|start| self.mmap.get(start..start.checked_add(byte_len)?))
            .ok_or_else(|| {
                Error::format(
                    &self.path,
                    FORMAT,
                    format!(
                        "tensor '{name}': data at offset {} ({byte_len} bytes) lies beyond the \
                         end of the file ({} bytes)",
                        info.offset,
                        self.mmap.len()
                    ),
                )
            })?;
        let mut out = vec![0f32; info.elem_count()];
        dequantize(info.ggml_type, bytes, &mut out);
        if let Some(i) = out.par_iter().position_first(|x| !x.is_finite()) {
            return Err(Error::format(
                &self.path,
                FORMAT,
                format!(
                    "tensor '{name}' ({} {:?}): element {i} (at {:?}) is {}: NaN and infinite weights are refused",
                    info.ggml_type,
                    info.shape,
                    super::safetensors::unravel(i, &info.shape),
                    out[i]
                ),
            ));
        }
        Ok(out)
    }
}

/// Converts `src` (exactly `out.len()` elements of `ty`, a type with a block layout) into
/// `out`. Types without a block layout leave `out` untouched; callers check beforehand.
fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => for_each_block(src, out, 1, 4, |b, o| {
            o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }),
        GgmlType::F16 => for_each_block(src, out, 1, 2, |b, o| o[0] = f16_at(b, 0)),
        GgmlType::BF16 => for_each_block(src, out, 1, 2, |b, o| {
            o[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        }),
        GgmlType::Q4_0 => for_each_block(src, out, QK, 2 + QK / 2, dequant_q4_0_block),
        GgmlType::Q4_1 => for_each_block(src, out, QK, 4 + QK / 2, dequant_q4_1_block),
        GgmlType::Q8_0 => for_each_block(src, out, QK, 2 + QK, dequant_q8_0_block),
        GgmlType::Other(_) => {}
    }
}

/// Applies `decode(block_bytes, block_out)` to every block, in parallel over runs of
/// [`BLOCKS_PER_TASK`] blocks. `src` holds `out.len() / block_elems` blocks.
fn for_each_block(
    src: &[u8],
    out: &mut [f32],
    block_elems: usize,
    block_bytes: usize,
    decode: impl Fn(&[u8], &mut [f32]) + Sync,
) {
    out.par_chunks_mut(block_elems * BLOCKS_PER_TASK).zip(src.par_chunks(block_bytes * BLOCKS_PER_TASK)).for_each(
        |(out_run, src_run)| {
            for (o, b) in out_run.chunks_exact_mut(block_elems).zip(src_run.chunks_exact(block_bytes)) {
                decode(b, o);
            }
        },
    );
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Q4_0: `b` = f16 d | 16 bytes qs; `out` = 32 weights.
fn dequant_q4_0_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..2 + QK / 2];
    let (lo, hi) = out.split_at_mut(QK / 2);
    for ((&q, l), h) in qs.iter().zip(lo).zip(hi) {
        *l = d * (i32::from(q & 0x0F) - 8) as f32;
        *h = d * (i32::from(q >> 4) - 8) as f32;
    }
}

/// Q4_1: `b` = f16 d | f16 m | 16 bytes qs; `out` = 32 weights.
fn dequant_q4_1_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..4 + QK / 2];
    let (lo, hi) = out.split_at_mut(QK / 2);
    for ((&q, l), h) in qs.iter().zip(lo).zip(hi) {
        *l = d * f32::from(q & 0x0F) + m;
        *h = d * f32::from(q >> 4) + m;
    }
}

/// Q8_0: `b` = f16 d | 32 × i8 q; `out` = 32 weights.
fn dequant_q8_0_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (&q, o) in b[2..2 + QK].iter().zip(out) {
        *o = d * f32::from(q as i8);
    }
}

/// What [`parse`] extracts from the header.
struct Header {
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// Parses everything before the data section and checks each known tensor's data range.
fn parse(buf: &[u8], path: &Path) -> Result<Header> {
    let mut r = Reader { buf, pos: 0, path };
    let magic = r.array::<4>("magic")?;
    if magic != MAGIC {
        return Err(r.err(format!("bad magic {magic:02x?} (expected \"GGUF\" = {MAGIC:02x?}); not a GGUF file")));
    }
    let version = r.u32("version")?;
    if matches!(version.swap_bytes(), 2 | 3) {
        return Err(r.err("big-endian GGUF files are not supported"));
    }
    if version != 2 && version != 3 {
        return Err(r.err(format!("unsupported GGUF version {version} (this reader handles 2 and 3, little-endian)")));
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    // A metadata entry takes at least key length (8) + value type (4) + a 1-byte value;
    // a tensor info name length (8) + n_dims (4) + type (4) + offset (8).
    let n_kv = r.check_count(n_kv, 13, "metadata entries")?;
    let n_tensors = r.check_count(n_tensors, 24, "tensor infos")?;

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string("metadata key")?;
        let ty = r.u32(&key)?;
        let value = r.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(r.err(format!("duplicate metadata key '{key}'")));
        }
    }

    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(n_tensors);
    let mut tensor_index = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = r.string("tensor name")?;
        let what = format!("tensor info of '{name}'");
        let n_dims = r.u32(&what)? as usize;
        if n_dims > MAX_DIMS {
            return Err(r.err(format!("tensor '{name}' has {n_dims} dimensions (ggml allows at most {MAX_DIMS})")));
        }
        let mut shape = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let ne = r.u64(&what)?;
            shape.push(
                usize::try_from(ne)
                    .map_err(|_| r.err(format!("tensor '{name}': dimension {ne} does not fit in memory")))?,
            );
        }
        shape.reverse();
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none() {
            return Err(r.err(format!("tensor '{name}': element count of shape {shape:?} overflows")));
        }
        let ggml_type = GgmlType::from_id(r.u32(&what)?);
        let offset = r.u64(&what)?;
        if tensor_index.insert(name.clone(), i).is_some() {
            return Err(r.err(format!("duplicate tensor name '{name}'")));
        }
        tensors.push(GgufTensorInfo { name, shape, ggml_type, offset });
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            Some(a) => return Err(r.err(format!("general.alignment must be a power of two, found {a}"))),
            None => return Err(r.err(format!("general.alignment must be an integer, found a {}", v.type_name()))),
        },
    };
    let file_len = buf.len() as u64;
    let data_start =
        (r.pos as u64).checked_next_multiple_of(alignment).ok_or_else(|| r.err("data section offset overflows"))?;
    for t in &mut tensors {
        // Unknown types cannot be sized: only their start is checked here, and reading
        // them fails anyway.
        let len = match t.ggml_type {
            GgmlType::Other(_) => 0,
            ty => data_len(ty, &t.shape).map_err(|msg| r.err(format!("tensor '{}': {msg}", t.name)))? as u64,
        };
        let range = data_start.checked_add(t.offset).and_then(|start| Some((start, start.checked_add(len)?)));
        match range {
            Some((start, end)) if end <= file_len => t.offset = start,
            _ => {
                return Err(r.err(format!(
                    "tensor '{}' ({}, shape {:?}): data at data start {data_start} + offset {} \
                     ({len} bytes) lies beyond the end of the file ({file_len} bytes)",
                    t.name, t.ggml_type, t.shape, t.offset
                )))
            }
        }
    }
    Ok(Header { version, metadata, tensors, tensor_index })
}

/// Bounds-checked little-endian cursor over the mapped file.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(self.path, FORMAT, msg)
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let slice = self.pos.checked_add(n).and_then(|end| self.buf.get(self.pos..end)).ok_or_else(|| {
            self.err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file is {} bytes",
                self.pos,
                self.buf.len()
            ))
        })?;
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// `count` as usize if `count × min_item_bytes` fits in the rest of the file.
    fn check_count(&self, count: u64, min_item_bytes: u64, what: &str) -> Result<usize> {
        let fits = count.checked_mul(min_item_bytes).is_some_and(|need| need <= self.remaining() as u64);
        match usize::try_from(count) {
            Ok(n) if fits => Ok(n),
            _ => Err(self.err(format!(
                "header claims {count} {what}, which cannot fit in the {} bytes left at offset {}",
                self.remaining(),
                self.pos
            ))),
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        // `bytes` checks the length against the file before anything is allocated.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let bytes = self.bytes(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.err(format!("{what}: string is not valid UTF-8")))
    }

    /// One value of type `ty` belonging to metadata key `key`.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            VT_U8 => GgufValue::U8(u8::from_le_bytes(self.array(key)?)),
            VT_I8 => GgufValue::I8(i8::from_le_bytes(self.array(key)?)),
            VT_U16 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            VT_I16 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            VT_U32 => GgufValue::U32(self.u32(key)?),
            VT_I32 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            VT_U64 => GgufValue::U64(self.u64(key)?),
            VT_I64 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            VT_F32 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            VT_F64 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            VT_BOOL => match self.array::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("metadata key '{key}': bool byte is {b}"))),
            },
            VT_STRING => GgufValue::String(self.string(key)?),
            VT_ARRAY => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(
                        self.err(format!("metadata key '{key}': arrays nested deeper than {MAX_ARRAY_NESTING}"))
                    );
                }
                let elem_ty = self.u32(key)?;
                let count = self.u64(key)?;
                let count = self.check_count(
                    count,
                    min_value_bytes(elem_ty),
                    &format!("array elements for metadata key '{key}'"),
                )?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            other => return Err(self.err(format!("metadata key '{key}': unknown value type {other}"))),
        })
    }
}

/// Fewest bytes a value of type `ty` occupies (1 for unknown types, which fail on read).
fn min_value_bytes(ty: u32) -> u64 {
    match ty {
        VT_U16 | VT_I16 => 2,
        VT_U32 | VT_I32 | VT_F32 => 4,
        VT_U64 | VT_I64 | VT_F64 | VT_STRING => 8,
        VT_ARRAY => 12,
        _ => 1,
    }
}

/// Writes GGUF v3 with F32/F16 tensors and metadata; used by tests and tools. Quantised
/// blocks can be written verbatim with [`GgufWriter::add_tensor_raw`]. Alignment is the
/// default 32 bytes.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<(GgufTensorInfo, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty file: no metadata, no tensors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata value; a later value for the same key replaces the earlier one.
    pub fn add_metadata(&mut self, key: &str, value: GgufValue) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_owned(), value)),
        }
        self
    }

    /// Sets a u32 value.
    pub fn add_u32(&mut self, key: &str, value: u32) -> &mut Self {
        self.add_metadata(key, GgufValue::U32(value))
    }

    /// Sets an f32 value.
    pub fn add_f32(&mut self, key: &str, value: f32) -> &mut Self {
        self.add_metadata(key, GgufValue::F32(value))
    }

    /// Sets a string value.
    pub fn add_str(&mut self, key: &str, value: &str) -> &mut Self {
        self.add_metadata(key, GgufValue::String(value.to_owned()))
    }

    /// Sets an array of strings.
    pub fn add_str_array<S: AsRef<str>>(&mut self, key: &str, values: &[S]) -> &mut Self {
        let items = values.iter().map(|s| GgufValue::String(s.as_ref().to_owned())).collect();
        self.add_metadata(key, GgufValue::Array(items))
    }

    /// Sets an array of i32.
    pub fn add_i32_array(&mut self, key: &str, values: &[i32]) -> &mut Self {
        let items = values.iter().map(|&v| GgufValue::I32(v)).collect();
        self.add_metadata(key, GgufValue::Array(items))
    }

    /// Adds an F32 tensor; `shape` is row-major (outermost first).
    pub fn add_tensor_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor_raw(name, shape, GgmlType::F32, bytes)
    }

    /// Adds a tensor whose data is already encoded as `ggml_type` (e.g. hand-built Q4_1
    /// blocks, or F16 bits). For types we read, `bytes` must have exactly the size the
    /// shape implies; bytes for other types are written unchecked.
    pub fn add_tensor_raw(&mut self, name: &str, shape: &[usize], ggml_type: GgmlType, bytes: Vec<u8>) -> Result<()> {
        if shape.len() > MAX_DIMS {
            return Err(Error::invalid(format!("GGUF tensor '{name}': rank {} exceeds {MAX_DIMS}", shape.len())));
        }
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none() {
            return Err(Error::invalid(format!("GGUF tensor '{name}': element count of {shape:?} overflows")));
        }
        if self.tensors.iter().any(|(t, _)| t.name == name) {
            return Err(Error::invalid(format!("GGUF tensor '{name}' added twice")));
        }
        if !matches!(ggml_type, GgmlType::Other(_)) {
            let expected =
                data_len(ggml_type, shape).map_err(|msg| Error::invalid(format!("GGUF tensor '{name}': {msg}")))?;
            if bytes.len() != expected {
                return Err(Error::invalid(format!(
                    "GGUF tensor '{name}' ({ggml_type}, shape {shape:?}) needs {expected} bytes, \
                     got {}",
                    bytes.len()
                )));
            }
        }
        let info = GgufTensorInfo { name: name.to_owned(), shape: shape.to_vec(), ggml_type, offset: 0 };
        self.tensors.push((info, bytes));
        Ok(())
    }

    /// The complete file contents.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&WRITE_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut out, key, value)?;
        }
        // Relative offsets: each tensor starts on an alignment boundary.
        let align = DEFAULT_ALIGNMENT as usize;
        let mut rel = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (info, bytes) in &self.tensors {
            let offset = rel;
            offsets.push(offset);
            rel = (rel + bytes.len()).next_multiple_of(align);
            put_string(&mut out, &info.name);
            out.extend_from_slice(&(info.shape.len() as u32).to_le_bytes());
            for &d in info.shape.iter().rev() {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            out.extend_from_slice(&info.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
        }
        let data_start = out.len().next_multiple_of(align);
        for ((_, bytes), off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    /// Writes the file to `path`, atomically (see [`super::write_atomic`]).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        super::write_atomic(path, &self.to_bytes()?)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends `value` without its type id.
fn put_value(out: &mut Vec<u8>, key: &str, value: &GgufValue) -> Result<()> {
    match value {
        GgufValue::U8(v) => out.push(*v),
        GgufValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        GgufValue::Bool(v) => out.push(u8::from(*v)),
        GgufValue::String(s) => put_string(out, s),
        GgufValue::Array(items) => {
            // An empty array still needs an element type; u8 is as good as any.
            let elem_ty = items.first().map_or(VT_U8, GgufValue::type_id);
            if items.iter().any(|v| v.type_id() != elem_ty) {
                return Err(Error::invalid(format!("GGUF metadata '{key}': array elements must all have one type")));
            }
            out.extend_from_slice(&elem_ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{asset_path, test_dir};
    use std::time::{Duration, Instant};

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    fn write_and_open(w: &GgufWriter, name: &str) -> Result<GgufFile> {
        let path = test_dir("gguf").join(name);
        w.write(&path)?;
        GgufFile::open(&path)
    }

    /// A Q8_0 block whose f16 scale is infinite, and an F32 NaN: refused by tensor,
    /// element and value.
    #[test]
    fn non_finite_values_are_refused_by_tensor_and_element() {
        let mut block = h(f32::INFINITY).to_vec();
        block.extend([1u8; 32]);
        let mut w = GgufWriter::new();
        w.add_tensor_raw("scaled", &[32], GgmlType::Q8_0, block).unwrap();
        w.add_tensor_f32("plain", &[2, 3], &[0.0, 1.0, 2.0, 3.0, f32::NAN, 5.0]).unwrap();
        w.add_tensor_f32("fine", &[2], &[f32::MAX, -f32::MAX]).unwrap();
        let f = write_and_open(&w, "non-finite.gguf").unwrap();
        let e = f.tensor_f32("scaled").unwrap_err().to_string();
        assert!(
            e.contains("non-finite.gguf") && e.contains("'scaled'") && e.contains("element 0") && e.contains("inf"),
            "{e}"
        );
        let e = f.tensor_f32("plain").unwrap_err().to_string();
        assert!(e.contains("'plain'") && e.contains("element 4 (at [1, 1]) is NaN"), "{e}");
        assert_eq!(f.tensor_f32("fine").unwrap(), [f32::MAX, -f32::MAX]);
    }

    #[test]
    fn dequant_q4_0_block_by_hand() {
        // d = 0.5; qs[j] = low nibble j, high nibble 15 − j.
        let mut block = h(0.5).to_vec();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut w = GgufWriter::new();
        w.add_tensor_raw("q", &[32], GgmlType::Q4_0, block).unwrap();
        let f = write_and_open(&w, "q4_0.gguf").unwrap();
        let got = f.tensor_f32("q").unwrap();
        for j in 0..16 {
            assert_eq!(got[j], 0.5 * (j as f32 - 8.0), "low j={j}");
            assert_eq!(got[j + 16], 0.5 * ((15 - j) as f32 - 8.0), "high j={j}");
        }
        assert_eq!(got[0], -4.0);
        assert_eq!(got[16], 3.5);
    }

    #[test]
    fn dequant_q4_1_block_by_hand() {
        // d = 0.25, m = −1.5; qs[j] = low nibble (j+3) mod 16, high nibble j.
        let mut block = h(0.25).to_vec();
        block.extend(h(-1.5));
        block.extend((0..16u8).map(|j| ((j + 3) % 16) | (j << 4)));
        let mut w = GgufWriter::new();
        // Two rows of one block each, to check row-major order too.
        let mut two = block.clone();
        two.extend(&block);
        w.add_tensor_raw("q", &[2, 32], GgmlType::Q4_1, two).unwrap();
        let f = write_and_open(&w, "q4_1.gguf").unwrap();
        assert_eq!(f.tensor_info("q").unwrap().shape, vec![2, 32]);
        let got = f.tensor_f32("q").unwrap();
        assert_eq!(got.len(), 64);
        for j in 0..16 {
            assert_eq!(got[j], 0.25 * ((j + 3) % 16) as f32 - 1.5, "low j={j}");
            assert_eq!(got[j + 16], 0.25 * j as f32 - 1.5, "high j={j}");
        }
        assert_eq!(&got[..32], &got[32..]);
        assert_eq!(got[0], -0.75);
        assert_eq!(got[31], 2.25);
    }

    #[test]
    fn dequant_q8_0_block_by_hand() {
        // d = 0.125; q[j] = j·9 − 128 wraps through the whole i8 range.
        let mut block = h(0.125).to_vec();
        let qs: Vec<i8> = (0..32).map(|j| (j * 9 - 128) as i8).collect();
        block.extend(qs.iter().map(|&q| q as u8));
        let mut w = GgufWriter::new();
        w.add_tensor_raw("q", &[1, 32], GgmlType::Q8_0, block).unwrap();
        let f = write_and_open(&w, "q8_0.gguf").unwrap();
        let got = f.tensor_f32("q").unwrap();
        for j in 0..32 {
            assert_eq!(got[j], 0.125 * f32::from(qs[j]), "j={j}");
        }
        assert_eq!(got[0], -16.0);
        assert_eq!(got[31], 0.125 * -105.0); // 31·9 − 128 = 151 wraps to −105
    }

    #[test]
    fn dequant_f16_and_bf16_exact() {
        let vals = [0.0f32, -0.0, 1.0, -2.5, 65504.0, 6.1035156e-5, 0.333_251_95];
        let f16_bytes: Vec<u8> = vals.iter().flat_map(|&v| h(v)).collect();
        // bf16 keeps f32's exponent: 1e30 and 2^-100 survive.
        let bvals = [1.0f32, -3.0, 1.0e30, 2f32.powi(-100), 0.5078125];
        let bf16_bytes: Vec<u8> = bvals.iter().flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes()).collect();
        let mut w = GgufWriter::new();
        w.add_tensor_raw("h", &[vals.len()], GgmlType::F16, f16_bytes).unwrap();
        w.add_tensor_raw("b", &[bvals.len()], GgmlType::BF16, bf16_bytes).unwrap();
        let f = write_and_open(&w, "half.gguf").unwrap();
        let got = f.tensor_f32("h").unwrap();
        for (g, v) in got.iter().zip(vals) {
            assert_eq!(g.to_bits(), f16::from_f32(v).to_f32().to_bits());
        }
        assert_eq!(got[3], -2.5);
        assert_eq!(got[4], 65504.0);
        let got = f.tensor_f32("b").unwrap();
        assert_eq!(got[0], 1.0);
        assert_eq!(got[1], -3.0);
        assert_eq!(got[2], bf16::from_f32(1.0e30).to_f32());
        assert_eq!(got[3], 2f32.powi(-100));
        assert_eq!(got[4], 0.5078125);
    }

    /// A small file with every metadata kind and two tensors.
    fn sample_writer() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.add_str("general.architecture", "llama")
            .add_u32("llama.block_count", 2)
            .add_f32("llama.rope.freq_base", 10000.0)
            .add_str_array("tokenizer.ggml.tokens", &["a", "b", "ab"])
            .add_i32_array("tokenizer.ggml.token_type", &[1, 1, 3])
            .add_metadata("x.u64", GgufValue::U64(1 << 40))
            .add_metadata("x.i64", GgufValue::I64(-5))
            .add_metadata("x.f64", GgufValue::F64(0.1))
            .add_metadata("x.bool", GgufValue::Bool(true))
            .add_metadata("x.u8", GgufValue::U8(7))
            .add_metadata(
                "x.nested",
                GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::I16(-1)]), GgufValue::Array(vec![])]),
            );
        let m: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        w.add_tensor_f32("m", &[2, 3], &m).unwrap();
        w.add_tensor_f32("v", &[5], &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        w
    }

    #[test]
    fn writer_round_trip() {
        let w = sample_writer();
        let f = write_and_open(&w, "round_trip.gguf").unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(f.get_u64("llama.block_count").unwrap(), 2);
        assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
        assert_eq!(f.get_f32("llama.block_count").unwrap(), 2.0);
        assert_eq!(f.get_str_array("tokenizer.ggml.tokens").unwrap(), ["a", "b", "ab"]);
        let types: Vec<i64> = f
            .get("tokenizer.ggml.token_type")
            .and_then(GgufValue::as_array)
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(types, [1, 1, 3]);
        assert_eq!(f.get_u64("x.u64").unwrap(), 1 << 40);
        assert_eq!(f.get("x.i64"), Some(&GgufValue::I64(-5)));
        assert!(f.get_u64("x.i64").is_err());
        assert_eq!(f.get("x.f64").and_then(GgufValue::as_f64), Some(0.1));
        assert_eq!(f.get("x.bool"), Some(&GgufValue::Bool(true)));
        assert_eq!(f.get_u64("x.u8").unwrap(), 7);
        assert_eq!(f.get("x.nested"), sample_writer().metadata.last().map(|(_, v)| v));
        let err = f.get_str("llama.block_count").unwrap_err().to_string();
        assert!(err.contains("llama.block_count") && err.contains("u32"), "{err}");
        let err = f.get_u64("no.such.key").unwrap_err().to_string();
        assert!(err.contains("no.such.key"), "{err}");

        let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["m", "v"]);
        let m = f.tensor_info("m").unwrap();
        assert_eq!(m.shape, vec![2, 3]);
        assert_eq!(m.ggml_type, GgmlType::F32);
        assert_eq!(m.offset % DEFAULT_ALIGNMENT, 0);
        assert_eq!(f.tensor_f32("m").unwrap(), [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]);
        assert_eq!(f.tensor_f32("v").unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(matches!(f.tensor_f32("nope"), Err(Error::MissingTensor { .. })));
    }

    #[test]
    fn version_2_is_accepted() {
        let mut bytes = sample_writer().to_bytes().unwrap();
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        let path = test_dir("gguf").join("v2.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 2);
        assert_eq!(f.tensor_f32("v").unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample_writer().to_bytes().unwrap();
        let path = test_dir("gguf").join("truncated.gguf");
        for cut in 0..bytes.len() {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            match GgufFile::open(&path) {
                Err(Error::Format { .. }) => {}
                Err(e) => panic!("cut at {cut}: wrong error kind {e}"),
                Ok(_) => panic!("cut at {cut} of {} opened", bytes.len()),
            }
        }
    }

    #[test]
    fn corrupted_magic_and_version() {
        let bytes = sample_writer().to_bytes().unwrap();
        let path = test_dir("gguf").join("magic.gguf");
        let mut bad = bytes.clone();
        bad[0] = b'X';
        std::fs::write(&path, &bad).unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("magic"), "{err}");
        let mut bad = bytes;
        bad[4..8].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("version 1"), "{err}");
        bad[4..8].copy_from_slice(&3u32.to_be_bytes());
        std::fs::write(&path, &bad).unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("big-endian"), "{err}");
    }

    #[test]
    fn absurd_counts_fail_fast() {
        let bytes = sample_writer().to_bytes().unwrap();
        let path = test_dir("gguf").join("absurd.gguf");
        // n_tensors at 8, n_kv at 16; then the first key's length at 24.
        for (at, value) in [(8, 1u64 << 60), (16, 1 << 60), (16, u64::MAX), (24, u64::MAX)] {
            let mut bad = bytes.clone();
            bad[at..at + 8].copy_from_slice(&value.to_le_bytes());
            std::fs::write(&path, &bad).unwrap();
            let start = Instant::now();
            let err = GgufFile::open(&path).unwrap_err();
            assert!(matches!(err, Error::Format { .. }), "{err}");
            assert!(start.elapsed() < Duration::from_secs(1));
        }
        // An array claiming 2^60 strings.
        let mut w = GgufWriter::new();
        w.add_str_array("k", &["x"]);
        let mut bad = w.to_bytes().unwrap();
        // magic4 ver4 nt8 nkv8 | keylen8 "k" | type4 | elemtype4 | count8
        let count_at = 24 + 8 + 1 + 4 + 4;
        bad[count_at..count_at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("array elements"), "{err}");
        // Deeply nested arrays.
        let mut v = GgufValue::U8(1);
        for _ in 0..(MAX_ARRAY_NESTING + 1) {
            v = GgufValue::Array(vec![v]);
        }
        let mut w = GgufWriter::new();
        w.add_metadata("deep", v);
        let err = write_and_open(&w, "deep.gguf").unwrap_err().to_string();
        assert!(err.contains("nested"), "{err}");
    }

    #[test]
    fn unknown_type_opens_but_does_not_load() {
        let mut w = GgufWriter::new();
        // Q4_K (type 12): 144-byte super-blocks of 256; we do not read it.
        w.add_tensor_raw("k", &[256], GgmlType::Other(12), vec![0; 144]).unwrap();
        w.add_tensor_f32("ok", &[2], &[1.0, 2.0]).unwrap();
        let f = write_and_open(&w, "unknown.gguf").unwrap();
        assert_eq!(f.tensor_info("k").unwrap().ggml_type, GgmlType::Other(12));
        match f.tensor_f32("k") {
            Err(Error::UnsupportedQuant { tensor, ggml_type, .. }) => {
                assert_eq!(tensor, "k");
                assert_eq!(ggml_type, "Q4_K (ggml type 12)");
            }
            other => panic!("expected UnsupportedQuant, got {other:?}"),
        }
        assert_eq!(f.tensor_f32("ok").unwrap(), [1.0, 2.0]);
    }

    /// Position of the `n_dims` field of tensor `name`'s info (right after its name).
    fn tensor_info_pos(bytes: &[u8], name: &str) -> usize {
        let pattern = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
        let at = bytes.windows(pattern.len()).position(|w| w == pattern.as_slice()).expect("tensor info present");
        at + pattern.len()
    }

    #[test]
    fn data_beyond_eof_and_bad_rows_are_errors() {
        let bytes = sample_writer().to_bytes().unwrap();
        let path = test_dir("gguf").join("beyond.gguf");
        // Drop the file's last byte: tensor "v" now ends past EOF.
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("'v'") && err.contains("beyond the end"), "{err}");
        // Relative offsets of "v" (rank 1: n_dims 4 + ne 8 + type 4, then offset) that point
        // past the end, or overflow when added to the data start.
        let offset_at = tensor_info_pos(&bytes, "v") + 4 + 8 + 4;
        for rel in [1u64 << 20, u64::MAX - 3] {
            let mut bad = bytes.clone();
            bad[offset_at..offset_at + 8].copy_from_slice(&rel.to_le_bytes());
            std::fs::write(&path, &bad).unwrap();
            let err = GgufFile::open(&path).unwrap_err().to_string();
            assert!(err.contains("beyond the end"), "{err}");
        }

        // The writer refuses a Q8_0 row of 33 elements ...
        let mut w = GgufWriter::new();
        assert!(w.add_tensor_raw("q", &[33], GgmlType::Q8_0, vec![0; 34]).is_err());
        // ... and the reader rejects one patched into a file.
        w.add_tensor_raw("q", &[64], GgmlType::Q8_0, vec![0; 68]).unwrap();
        let mut bad = w.to_bytes().unwrap();
        let ne_at = tensor_info_pos(&bad, "q") + 4;
        bad[ne_at..ne_at + 8].copy_from_slice(&33u64.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("not a multiple"), "{err}");
    }

    #[test]
    fn real_model() {
        let Some(path) = asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") else {
            return;
        };
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(f.get_u64("llama.embedding_length").unwrap(), 576);
        assert_eq!(f.get_u64("llama.block_count").unwrap(), 30);
        for (k, v) in f.metadata().range("llama.".to_string().."llama/".to_string()) {
            println!("{k} = {v:?}");
        }
        for (k, v) in f.metadata() {
            if !k.starts_with("llama.") {
                let shown = match v {
                    GgufValue::Array(a) => format!("array of {} {}", a.len(), a.first().map_or("", |e| e.type_name())),
                    GgufValue::String(s) if s.len() > 80 => format!("string of {} bytes", s.len()),
                    other => format!("{other:?}"),
                };
                println!("{k} = {shown}");
            }
        }
        println!("tensors: {}", f.tensors().len());
        assert_eq!(f.tensors().len(), 272);
        let emb = f.tensor_info("token_embd.weight").unwrap();
        assert_eq!(emb.shape, vec![49152, 576]);
        assert_eq!(emb.ggml_type, GgmlType::Q8_0);
        let q = f.tensor_info("blk.0.attn_q.weight").unwrap();
        assert_eq!(q.shape, vec![576, 576]);
        assert_eq!(q.ggml_type, GgmlType::Q4_1);
        assert!(f.tensor_info("output.weight").is_none());
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for t in f.tensors() {
            *counts.entry(t.ggml_type.to_string()).or_default() += 1;
        }
        println!("tensor types: {counts:?}");

        // Spot values from an independent pure-Python decode of the same file.
        let close = |got: &[f32], want: &[f64]| {
            for (g, w) in got.iter().zip(want) {
                assert!((f64::from(*g) - w).abs() <= 1e-6 * w.abs().max(1e-3), "{got:?} vs {want:?}");
            }
        };
        let q = f.tensor_f32("blk.0.attn_q.weight").unwrap();
        close(&q[..4], &[-0.0963134766, 0.157348633, -0.0963134766, -0.73046875]);
        close(&q[16..18], &[-0.223144531, 0.284179688]);
        let emb = f.tensor_f32("token_embd.weight").unwrap();
        close(&emb[..3], &[-0.10654449462890625, 0.032978057861328125, 0.048198699951171875]);
        close(&emb[emb.len() - 2..], &[-0.11989402770996094, -0.0417022705078125]);
        close(&f.tensor_f32("output_norm.weight").unwrap()[..3], &[1.7578125, 1.8203125, 1.78125]);
        drop((q, emb));

        let start = Instant::now();
        let f = GgufFile::open(&path).unwrap();
        let mut total = 0usize;
        for t in f.tensors() {
            let w = f.tensor_f32(&t.name).unwrap();
            assert_eq!(w.len(), t.elem_count());
            assert!(w.iter().all(|v| v.is_finite()), "{} has non-finite values", t.name);
            total += w.len();
        }
        println!(
            "opened and dequantised {} tensors, {total} weights, in {:.3} s (including \
             finiteness checks)",
            f.tensors().len(),
            start.elapsed().as_secs_f64()
        );
    }
}
