//! The fast CPU inference linear: y [tokens, rows] = x [tokens, cols] · Wᵀ with W [rows, cols]
//! read as stored (dense, bitmask or N:M values in f32 or bf16), never expanded to memory.
//! Activations are copied once into an f32 buffer padded to whole 32-column chunks; weights
//! are decoded chunk by chunk into registers ([`super::simd`]); sums are f32.
//!
//! - Decode (tokens ≤ [`GEMV_MAX_TOKENS`]): a GEMV; each weight chunk is read once and
//!   multiplied into every token's accumulators, [`DECODE_MAX_TOKENS`] tokens at a time
//!   (more tokens take passes over the same few rows, again from cache). Up to four rows,
//!   from four parts of the row range, are read in lockstep: four weight streams from
//!   memory at once. For bf16
//!   weights and activations on [`Isa::Avx512Bf16`] (taken on AMD CPUs), the chunks stay bf16
//!   (a masked chunk spread by `vpexpandw`) and `vdpbf16ps` multiplies them into x held in
//!   bf16 pairs ([`Gemv`]): one instruction where the f32 path widens and runs two FMAs.
//!   Chunks go two at a time; for one token a row's even and odd chunks are summed apart, so
//!   that a sparse row does not wait on one chain of `vdpbf16ps`; five to eight tokens of
//!   masked rows go in one pass of two rows. Masked rows with 9 or more tokens are decoded
//!   a few at a time into dense rows first ([`masked_part`]), so that each chunk is
//!   expanded once.
//! - Prefill: the tokens are padded to a multiple of [`MT`] and stored in blocks of MT
//!   tokens column by column ([block][column][token]; with AVX-512 by 16×16 transposes in
//!   registers). Output rows go in tiles of [`TILE_ROWS`].
//!   - Dense weights: [`TILE_COLS`] columns of the tile are decoded into an f32 block
//!     (16 KiB) row by row, transposed 16×16 at a time (in registers with AVX-512) into
//!     one stored column by column, and multiplied by the tokens as outer products: all
//!     the tile's rows × 12 tokens per column step in registers, the tokens' values read at
//!     fixed offsets of their block (8 KiB of cache lines per 12 tokens: both stay in L1).
//!   - bf16 weights and activations on [`Isa::Avx512Bf16`] ([`super::bf16_pairs`]):
//!     dense rows, and masked rows that keep about 24% or more (decoded a tile at a time),
//!     are multiplied by pairs of columns with `vdpbf16ps`, twice the work of an FMA;
//!     sparser masked rows list their column pairs that keep a weight (below).
//!   - Masked weights (bitmask, N:M) that keep at most 55% of their weights: the zeros are
//!     skipped. Each row of the tile becomes a list of its kept weights (value, column),
//!     read straight from the mask and the packed values; then, [`KC`] or 2·KC columns at a
//!     time (the blocks' activations for them stay in L1), every kept weight of a row is
//!     multiplied into a pass of tokens held in registers (with AVX-512 up to 9 vectors:
//!     three blocks, or one or two and the last partial one; a weight and its column are loaded
//!     once for all of them): the work is the kept count, not the row length. Denser
//!     masked rows are decoded into the dense tiles.
//!
//! Rows prefetch their values [`PREFETCH_BYTES`] ahead: at 50–70% sparsity a row's values
//! end within a page or two, where the hardware prefetchers would restart.
//!
//! Threads (rayon) take contiguous row ranges: tiles in prefill; in decode, ranges of equal
//! bytes read (kept values + mask), since pruning leaves rows with different kept counts.
//! N:M rows get their column mask built in a small per-row buffer first (2:4 a byte of
//! positions at a time, [`Simd::two_four_mask`]; other patterns position by position), then
//! run the bitmask kernel; the decode of bf16 2:4 rows whose length is whole blocks of 64
//! on a CPU with AVX-512 VBMI and BF16 is [`super::two_four`]'s instead. A masked row's
//! values are read through a pointer that moves by each chunk's popcount, with no bound per
//! chunk: a row keeps at most `cols` columns and is readable for `cols` + 32 values (the
//! last rows of a matrix are copied, padded). A row whose mask disagrees with its value
//! count is an error after the row.

use std::marker::PhantomData;
use std::ops::Range;

use rayon::prelude::*;

use super::bf16_pairs::Pairs;
use super::simd::{Portable, Simd, Stored, CHUNK, NATURAL};
use super::two_four::TwoFour;
use crate::sparse::cpu::{meta_stride, visit_row};
use crate::sparse::{check_nm, SparseFormat};
use crate::{DType, Error, Result};

/// Tokens per GEMV pass (the decode kernels' token counts).
pub const DECODE_MAX_TOKENS: usize = 4;
/// Up to this many tokens take the GEMV path: beyond [`DECODE_MAX_TOKENS`], in passes of
/// that many tokens over each few rows, whose weights come from memory in the first pass
/// and from cache in the others.
pub const GEMV_MAX_TOKENS: usize = 24;
/// Output rows per prefill tile.
pub const TILE_ROWS: usize = 32;
/// Columns of a prefill tile decoded at a time (a multiple of [`CHUNK`]).
pub const TILE_COLS: usize = 128;
/// Prefill pads the tokens to a multiple of this and stores them in blocks of this many
/// (every micro-kernel's token count divides it; 3 AVX-512 vectors, 6 AVX2 ones).
pub const MT: usize = 48;
/// Columns per step of the masked prefill (a multiple of [`CHUNK`]): the activations of
/// up to three blocks for them (36 KiB), or two blocks for two steps (48 KiB), stay in L1.
pub const KC: usize = 64;
/// Bytes of a row's values prefetched ahead of the chunk it reads (hardware prefetchers
/// stop at page boundaries; the streams of rows run across them; also the 2:4 gather's).
pub(super) const PREFETCH_BYTES: usize = 4096;
/// The densest masked rows (percent of their weights kept) that [`prefill`] lists; denser
/// ones take the dense tiles.
const LISTED_MAX_PERCENT: usize = 55;
/// Decode work per thread task, in bytes of weights.
const PART_BYTES: usize = 256 << 10;

/// The instruction set the kernels use, chosen at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/BW/VL with VBMI2 and BF16: as [`Isa::Avx512Vbmi2`], and bf16 weights with
    /// bf16 activations multiplied by `vdpbf16ps` ([`super::bf16_pairs`], the decode's
    /// `Bf16Gemv`). [`Isa::best`] takes it on AMD CPUs only (see [`Isa::preferred`]).
    Avx512Bf16,
    /// AVX-512 F/BW/VL with VBMI2 (16-bit expand).
    Avx512Vbmi2,
    /// AVX-512 F/BW/VL without VBMI2.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// Plain code the compiler vectorizes (any target).
    Portable,
}

impl Isa {
    /// Every instruction set, best first.
    pub const ALL: [Isa; 5] = [Isa::Avx512Bf16, Isa::Avx512Vbmi2, Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let avx512 = avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl");
            let vbmi2 = avx512 && is_x86_feature_detected!("avx512vbmi2");
            match self {
                Isa::Avx512Bf16 => vbmi2 && is_x86_feature_detected!("avx512bf16"),
                Isa::Avx512Vbmi2 => vbmi2,
                Isa::Avx512 => avx512,
                Isa::Avx2 => avx2,
                Isa::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// The best one this CPU runs: the first of [`Isa::ALL`] that it runs and that is
    /// [preferred](Isa::preferred) on it.
    pub fn best() -> Isa {
        Isa::ALL.into_iter().find(|isa| isa.available() && isa.preferred()).unwrap_or(Isa::Portable)
    }

    /// Whether [`Isa::best`] may take it on this CPU. [`Isa::Avx512Bf16`] only on AMD CPUs:
    /// there `vdpbf16ps` made the bf16 GEMV and prefill faster than widening to f32 and two
    /// FMAs; on an Intel Xeon (Emerald Rapids) one `vdpbf16ps` cost as much as ~4 FMAs
    /// (0.74 ns each, 16 independent sums, against 0.18 ns per FMA) and shares its port with
    /// `vpexpandw`: a Wanda 70% row read 11.9 GB/s from memory with it and 13.2 without
    /// (one thread), and the dense bf16 prefill of the default model ran 456–494 tokens/s
    /// with it and 515–693 without. Every other instruction set: wherever it runs.
    pub fn preferred(self) -> bool {
        match self {
            Isa::Avx512Bf16 => cpu_is_amd(),
            _ => true,
        }
    }

    /// Whether it is an AVX-512 set (the other kernels that have AVX-512 loops take them).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn is_avx512(self) -> bool {
        matches!(self, Isa::Avx512Bf16 | Isa::Avx512Vbmi2 | Isa::Avx512)
    }

    /// The column of each lane of a decoded chunk of weights of `dtype`: bf16 ones in
    /// [`Simd::BF16_COLUMNS`], f32 ones in column order.
    fn columns(self, dtype: DType) -> [u8; CHUNK] {
        if dtype != DType::BF16 {
            return NATURAL;
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 | Isa::Avx512Vbmi2 => <super::simd::Avx512<true> as Simd>::BF16_COLUMNS,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => <super::simd::Avx512<false> as Simd>::BF16_COLUMNS,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => <super::simd::Avx2 as Simd>::BF16_COLUMNS,
            _ => <Portable as Simd>::BF16_COLUMNS,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Bf16 => "avx512+vbmi2+bf16",
            Isa::Avx512Vbmi2 => "avx512+vbmi2",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2+fma",
            Isa::Portable => "portable",
        }
    }
}

/// `work(wide)` compiled for `isa` where it is an AVX-512 or the AVX2 one that this CPU
/// runs, otherwise for the build's target; `wide` says it runs compiled for AVX-512 (for
/// code that takes its 512-bit kernels then: a constant in each compilation). Only code
/// inlined into it is compiled so: `work` is a closure marked `#[inline(always)]`; functions
/// it calls keep their own compilation (the kernels choose their instruction set themselves).
#[inline(always)]
pub(crate) fn compiled_for<R>(isa: Isa, work: impl FnOnce(bool) -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        /// `work(true)` with AVX-512.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
        unsafe fn avx512<R>(work: impl FnOnce(bool) -> R) -> R {
            work(true)
        }
        /// `work(false)` with AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(work: impl FnOnce(bool) -> R) -> R {
            work(false)
        }
        if isa.is_avx512() && isa.available() {
            // SAFETY: this CPU runs AVX-512 F/BW/VL (every AVX-512 `Isa` has them) and AVX2.
            return unsafe { avx512(work) };
        }
        if isa == Isa::Avx2 && isa.available() {
            // SAFETY: this CPU runs AVX2 and FMA.
            return unsafe { avx2(work) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    work(false)
}

/// Whether the CPU's vendor string (CPUID leaf 0) is AMD's. Read once: in a virtual
/// machine each CPUID traps to the hypervisor, and [`Isa::best`] is asked for every
/// attention task (with a CPUID per call, the default model decoded ~20% slower).
fn cpu_is_amd() -> bool {
    static AMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMD.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: every x86-64 CPU has CPUID (a safe function in newer Rust).
            #[allow(unused_unsafe)]
            let id = unsafe { std::arch::x86_64::__cpuid(0) };
            [id.ebx, id.edx, id.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163]
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// A weight matrix [rows, cols] as stored (see [`crate::sparse::SparseWeight`]).
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a, T> {
    /// Row-major values [rows, cols].
    Dense(&'a [T]),
    /// Kept values [nnz] row by row, mask [rows, ceil(cols/8)], row offsets [rows + 1].
    Bitmask {
        /// Kept values.
        values: &'a [T],
        /// Mask bytes, bit j%8 of byte j/8 for column j.
        mask: &'a [u8],
        /// First value of each row, and nnz.
        offsets: &'a [u32],
    },
    /// Values [rows, cols/m·n] and packed in-group positions ([`crate::sparse::NmMatrix`]).
    NM {
        /// Kept values.
        values: &'a [T],
        /// Positions, ceil(log2 m) bits each, rows padded to whole bytes.
        positions: &'a [u8],
        /// Kept per group.
        n: usize,
        /// Group size.
        m: usize,
    },
}

/// y [tokens, rows] = x [tokens, cols] · Wᵀ on `isa` (an error where this CPU lacks it).
pub(crate) fn apply<T: Stored>(isa: Isa, x: &[f32], tokens: usize, linear: &Linear<'_, T>) -> Result<Vec<f32>> {
    if !isa.available() {
        return Err(Error::invalid(format!("infer_linear: this CPU has no {}", isa.name())));
    }
    let (rows, cols) = (linear.rows, linear.cols());
    if x.len() != tokens * cols {
        return Err(Error::invalid(format!("infer_linear: {} activations for {tokens} tokens of {cols}", x.len())));
    }
    if tokens == 0 || rows == 0 {
        return Ok(Vec::new());
    }
    let job = Activations::new(isa, T::DTYPE, x, tokens, cols);
    let ranges = if job.is_decode() {
        balanced_ranges(rows, |r| linear.bytes_before(r), rayon::current_num_threads())
    } else {
        (0..rows).step_by(TILE_ROWS).map(|r| r..(r + TILE_ROWS).min(rows)).collect()
    };
    let mut y = vec![f32::NAN; tokens * rows];
    let parts: Vec<(Range<usize>, Dest<'_>)> = Dest::columns(&mut y, rows, tokens, &ranges).collect();
    if parts.len() == 1 {
        parts.into_iter().try_for_each(|(range, out)| linear.compute(isa, &job, range, out))?;
    } else {
        parts.into_par_iter().try_for_each(|(range, out)| linear.compute(isa, &job, range, out))?;
    }
    Ok(y)
}

/// Where the results of one row range go: (row i of the range, token t) at element
/// i + t·token_stride of a buffer no other range writes at those places.
pub(crate) struct Dest<'a> {
    ptr: *mut f32,
    len: usize,
    rows: usize,
    tokens: usize,
    token_stride: usize,
    _buffer: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a Dest writes only its own elements (its rows of y); `columns` hands out Dests of
// disjoint row ranges.
unsafe impl Send for Dest<'_> {}

impl<'a> Dest<'a> {
    /// A block of its own, `out` [tokens, rows].
    pub(crate) fn token_major(out: &'a mut [f32], rows: usize, tokens: usize) -> Self {
        assert_eq!(out.len(), rows * tokens, "infer_linear: output block");
        Dest { ptr: out.as_mut_ptr(), len: out.len(), rows, tokens, token_stride: rows, _buffer: Default::default() }
    }

    /// The rows `ranges` (increasing, disjoint, within 0..rows) of y [tokens, rows], each
    /// with its Dest.
    pub(super) fn columns<'r>(
        y: &'a mut [f32],
        rows: usize,
        tokens: usize,
        ranges: &'r [Range<usize>],
    ) -> impl Iterator<Item = (Range<usize>, Dest<'a>)> + 'r
    where
        'a: 'r,
    {
        assert_eq!(y.len(), rows * tokens, "infer_linear: output");
        assert!(
            ranges.windows(2).all(|w| w[0].end <= w[1].start) && ranges.last().is_none_or(|r| r.end <= rows),
            "infer_linear: row ranges overlap"
        );
        let (ptr, len) = (y.as_mut_ptr(), y.len());
        ranges.iter().map(move |r| {
            // SAFETY: r.start ≤ rows ≤ len (or the range is empty at the end).
            let at = r.start.min(len);
            let dest = Dest {
                ptr: unsafe { ptr.add(at) },
                len: len - at,
                rows: r.len(),
                tokens,
                token_stride: rows,
                _buffer: Default::default(),
            };
            (r.clone(), dest)
        })
    }

    /// Stores v at (row i, token t).
    #[inline(always)]
    pub(super) fn put(&mut self, i: usize, t: usize, v: f32) {
        let at = i + t * self.token_stride;
        assert!(i < self.rows && t < self.tokens && at < self.len, "infer_linear: output ({i}, {t}) outside its part");
        // SAFETY: in bounds (checked), and (i, t) of this part is written by this Dest only.
        unsafe { *self.ptr.add(at) = v };
    }

    /// The part of it from token t0 on (tokens t0.. as its tokens 0..).
    #[inline(always)]
    fn tokens_on(&mut self, t0: usize) -> Dest<'_> {
        assert!(t0 <= self.tokens, "infer_linear: token {t0} of an output of {}", self.tokens);
        let at = (t0 * self.token_stride).min(self.len);
        Dest {
            // SAFETY: at ≤ len.
            ptr: unsafe { self.ptr.add(at) },
            len: self.len - at,
            rows: self.rows,
            tokens: self.tokens - t0,
            token_stride: self.token_stride,
            _buffer: Default::default(),
        }
    }

    /// Rows r0 .. r0 + n of it (as its rows 0..n).
    #[inline(always)]
    fn rows_from(&mut self, r0: usize, n: usize) -> Dest<'_> {
        assert!(r0 + n <= self.rows, "infer_linear: rows {r0}..{} of an output of {}", r0 + n, self.rows);
        let at = r0.min(self.len);
        Dest {
            // SAFETY: at ≤ len.
            ptr: unsafe { self.ptr.add(at) },
            len: self.len - at,
            rows: n,
            tokens: self.tokens,
            token_stride: self.token_stride,
            _buffer: Default::default(),
        }
    }

    /// Rows `rows` of token t, adjacent in y.
    #[inline(always)]
    pub(super) fn token_rows(&mut self, t: usize, rows: Range<usize>) -> &mut [f32] {
        let at = rows.start + t * self.token_stride;
        assert!(
            rows.start <= rows.end && rows.end <= self.rows && t < self.tokens && at + rows.len() <= self.len,
            "infer_linear: output rows {rows:?} of token {t} outside its part"
        );
        // SAFETY: in bounds (checked), and these elements of this part are written by this
        // Dest only, which this borrow holds.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), rows.len()) }
    }
}

/// A weight [rows, cols] whose buffers were checked once, ready for [`Linear::compute`] on
/// any row range from any thread.
#[derive(Clone, Copy)]
pub(crate) struct Linear<'a, T> {
    rows: usize,
    kind: Kind<'a, T>,
}

#[derive(Clone, Copy)]
enum Kind<'a, T> {
    Dense(DenseSource<'a, T>),
    Bitmask(BitmaskSource<'a, T>),
    NM(NmSource<'a, T>),
}

impl<'a, T: Stored> Linear<'a, T> {
    /// Error unless the buffers of `w` fit a [rows, cols] weight (bitmask row offsets
    /// increasing from 0 to the number of values).
    pub(crate) fn new(rows: usize, cols: usize, w: Weights<'a, T>) -> Result<Self> {
        let sized = |what: &str, have: usize, want: usize| {
            if have == want {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "infer_linear: {what} holds {have} elements for a {rows}x{cols} weight, not {want}"
                )))
            }
        };
        let kind = match w {
            Weights::Dense(w) => {
                sized("dense weight", w.len(), rows * cols)?;
                Kind::Dense(DenseSource { w, cols, stride: cols })
            }
            Weights::Bitmask { values, mask, offsets } => {
                let stride = meta_stride(cols, SparseFormat::Bitmask);
                sized("mask", mask.len(), rows * stride)?;
                sized("row offsets", offsets.len(), rows + 1)?;
                // That they increase in between is checked where rows are read
                // (`BitmaskSource::check_rows`): a check over all offsets here read the
                // default model's 620 KB of them from memory each time its linears were
                // built (then every token, ~60 µs of ~3.5 ms; now once per generation, but
                // `InferModel::step` still builds them per call).
                if offsets.first() != Some(&0) || offsets[rows] as usize != values.len() {
                    return Err(Error::invalid(format!(
                        "infer_linear: row offsets do not run from 0 to the {} values",
                        values.len()
                    )));
                }
                Kind::Bitmask(BitmaskSource { values, mask, offsets, cols, stride })
            }
            Weights::NM { values, positions, n, m } => {
                check_nm(n, m, cols)?;
                let format = SparseFormat::NM { n, m };
                let per_row = cols / m * n;
                sized("N:M values", values.len(), rows * per_row)?;
                sized("N:M positions", positions.len(), rows * meta_stride(cols, format))?;
                Kind::NM(NmSource {
                    values,
                    positions,
                    cols,
                    format,
                    per_row,
                    pos_stride: meta_stride(cols, format),
                    two_four: (n, m) == (2, 4),
                })
            }
        };
        Ok(Linear { rows, kind })
    }

    /// Output rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub(crate) fn cols(&self) -> usize {
        match &self.kind {
            Kind::Dense(s) => s.cols,
            Kind::Bitmask(s) => s.cols,
            Kind::NM(s) => s.cols,
        }
    }

    /// Bytes stored for rows 0..r (values, and mask or positions).
    pub(crate) fn bytes_before(&self, r: usize) -> usize {
        match &self.kind {
            Kind::Dense(s) => s.bytes_before(r),
            Kind::Bitmask(s) => s.bytes_before(r),
            Kind::NM(s) => s.bytes_before(r),
        }
    }

    /// Rows `rows` of y for the activations `x` (prepared for this weight's columns), into
    /// `out` (rows.len() rows of x's tokens), on `isa`.
    pub(crate) fn compute(&self, isa: Isa, x: &Activations, rows: Range<usize>, out: Dest<'_>) -> Result<()> {
        if !isa.available() {
            return Err(Error::invalid(format!("infer_linear: this CPU has no {}", isa.name())));
        }
        let cols = self.cols();
        if x.cols != cols || rows.end > self.rows || (out.rows, out.tokens) != (rows.len(), x.tokens) {
            return Err(Error::invalid(format!(
                "infer_linear: rows {rows:?} of a {}x{cols} weight for {} tokens of {} into {}x{} outputs",
                self.rows, x.tokens, x.cols, out.rows, out.tokens
            )));
        }
        match &self.kind {
            Kind::Dense(s)
                if T::DTYPE == DType::BF16 && !x.is_decode() && Pairs::supported(isa) && x.pairs().ready() =>
            {
                // SAFETY: T is bf16, a u16 in memory.
                let w = unsafe { std::slice::from_raw_parts(s.w.as_ptr().cast::<u16>(), s.w.len()) };
                super::bf16_pairs::prefill(x.pairs(), w, cols, rows, out)
            }
            Kind::Dense(s) => run_part(isa, x, s, rows, out),
            Kind::Bitmask(s) => {
                s.check_rows(rows.clone())?;
                masked_part(isa, x, s, rows, out)
            }
            Kind::NM(s) if s.two_four && T::DTYPE == DType::BF16 && isa == Isa::Avx512Bf16 && two_four_gathers(x) => {
                let words = x.words().expect("infer_linear: x in bf16 pairs (two_four_gathers)");
                // SAFETY: T is bf16 and x's pairs are two bf16 each: u16 in memory.
                let (x16, values) = unsafe {
                    (
                        std::slice::from_raw_parts(words.as_ptr().cast::<u16>(), 2 * words.len()),
                        std::slice::from_raw_parts(s.values.as_ptr().cast::<u16>(), s.values.len()),
                    )
                };
                let w = TwoFour { x: x16, in_pad: x.in_pad, tokens: x.tokens, values, positions: s.positions, cols };
                super::two_four::decode(w, rows, out)
            }
            Kind::NM(s) => masked_part(isa, x, s, rows, out),
        }
    }
}

/// Bytes of masked rows decoded at a time by [`masked_part`] (at least four rows).
const DECODED_BYTES: usize = 32 << 10;

/// [`run_part`] of masked rows; for the GEMV in three to six passes (9 to
/// [`GEMV_MAX_TOKENS`] tokens), rows decoded a group at a time into dense rows in column
/// order (zeros where pruned; [`decoded_rows`]) and the passes run on those as dense rows,
/// so that each chunk is expanded once instead of once per pass. On an AMD EPYC (Zen 4),
/// one core, 1536×576 bf16 rows in cache, 50% / 2:4 against dense: 12 tokens 182 / 211 →
/// 165 / 186 µs (dense 128), 16 tokens 241 / 280 → 206 / 223 µs (170), 24 tokens 359 /
/// 417 → 288 / 306 µs (255); with 8 tokens (two passes) decoding first was slower, 124 /
/// 144 → 130 / 151 µs (87): it costs about one token's GEMV.
fn masked_part<T: Stored, Src: Source<T>>(
    isa: Isa,
    job: &Activations,
    src: &Src,
    rows: Range<usize>,
    mut out: Dest<'_>,
) -> Result<()> {
    if !job.is_decode() || job.tokens <= 2 * DECODE_MAX_TOKENS {
        return run_part(isa, job, src, rows, out);
    }
    let (cols, stride) = (job.cols, job.cols.next_multiple_of(CHUNK));
    let group = (DECODED_BYTES / (stride * std::mem::size_of::<T>())).max(4);
    let mut decoded = vec![T::default(); group.min(rows.len()) * stride];
    for r0 in rows.clone().step_by(group) {
        let n = group.min(rows.end - r0);
        let w = &mut decoded[..n * stride];
        decoded_rows(isa, src, r0..r0 + n, cols, w)?;
        let dense = DenseSource { w, cols, stride };
        run_part(isa, job, &dense, 0..n, out.rows_from(r0 - rows.start, n))?;
    }
    Ok(())
}

/// Rows `rows` of a masked source decoded into `out` [rows.len(), cols rounded up to
/// [`CHUNK`]]: each row's values at their columns, in column order, zeros elsewhere.
fn decoded_rows<T: Stored, Src: Source<T>>(
    isa: Isa,
    src: &Src,
    rows: Range<usize>,
    cols: usize,
    out: &mut [T],
) -> Result<()> {
    assert_eq!(out.len(), rows.len() * cols.next_multiple_of(CHUNK), "infer_linear: decoded rows");
    // SAFETY: `Linear::compute` checked that this CPU runs `isa`.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 | Isa::Avx512Vbmi2 => x86::decode_avx512_vbmi2(src, rows, cols, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::decode_avx512(src, rows, cols, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::decode_avx2(src, rows, cols, out),
            Isa::Portable => decode_into::<Portable, T, Src>(src, rows, cols, out),
            #[cfg(not(target_arch = "x86_64"))]
            other => Err(Error::invalid(format!("infer_linear: this CPU has no {}", other.name()))),
        }
    }
}

/// [`decoded_rows`] with `S`.
///
/// # Safety
/// The CPU runs `S`; `out` holds rows.len() rows of cols rounded up to [`CHUNK`] values.
#[inline(always)]
unsafe fn decode_into<S: Simd, T: Stored, Src: Source<T>>(
    src: &Src,
    rows: Range<usize>,
    cols: usize,
    out: &mut [T],
) -> Result<()> {
    let stride = cols.next_multiple_of(CHUNK);
    let mut scratch = src.scratch();
    for (r, dst) in rows.zip(out.chunks_exact_mut(stride)) {
        let mut reader = src.row::<S>(r, &mut scratch);
        for ch in 0..stride / CHUNK {
            // SAFETY: chunk ch's 32 values lie within the row's `stride`.
            let at = dst.as_mut_ptr().add(ch * CHUNK);
            if T::DTYPE == DType::BF16 {
                pairs_of::<S, T, _>(&mut reader, ch, cols, at.cast());
            } else {
                // f32 chunks are in column order.
                S::store(chunk_of::<S, T, _>(&mut reader, ch, cols), at.cast());
            }
        }
        reader.finish()?;
    }
    Ok(())
}

/// Whether 2:4 bf16 rows take [`super::two_four::decode`] for these activations: 1 to
/// [`super::two_four::MAX_TOKENS`] tokens held in bf16 pairs, whole blocks of 64 columns,
/// and a CPU with the kernel's instructions.
fn two_four_gathers(x: &Activations) -> bool {
    x.words().is_some()
        && (1..=super::two_four::MAX_TOKENS).contains(&x.tokens)
        && x.cols.is_multiple_of(super::two_four::BLOCK)
        && super::two_four::available()
}

/// Row ranges of about equal cost (`cost_before(r)`: cost of rows 0..r, increasing), about
/// one per [`PART_BYTES`] of work, a multiple of the thread count (so that threads finish
/// together), at most 8 per thread.
pub(super) fn balanced_ranges(rows: usize, cost_before: impl Fn(usize) -> usize, threads: usize) -> Vec<Range<usize>> {
    let threads = threads.max(1);
    let parts = match cost_before(rows) / PART_BYTES {
        0 => 1,
        n => n.next_multiple_of(threads).min(8 * threads),
    };
    split_ranges(rows, cost_before, parts)
}

/// At most `parts` non-empty row ranges covering 0..rows, each of about 1/parts of the
/// total cost (`cost_before(r)`: cost of rows 0..r, increasing). Where it is not, as from
/// corrupt row offsets, the ranges still cover every row, so that each row is read and
/// checked: the binary search's answer never decreases as its target grows, whatever the
/// cost (at each step a larger target goes right whenever a smaller one does).
pub(crate) fn split_ranges(rows: usize, cost_before: impl Fn(usize) -> usize, parts: usize) -> Vec<Range<usize>> {
    let total = cost_before(rows);
    let parts = parts.clamp(1, rows.max(1));
    let mut bounds = vec![0];
    for i in 1..parts {
        let target = total / parts * i;
        // First row whose preceding cost reaches the target.
        let (mut lo, mut hi) = (0, rows);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if cost_before(mid) < target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        bounds.push(lo);
    }
    bounds.push(rows);
    bounds.dedup();
    bounds.windows(2).map(|b| b[0]..b[1]).filter(|r| !r.is_empty()).collect()
}

/// Activations in the kernels' layout: x [tokens, cols] as f32, each row padded with zeros to
/// whole 32-column chunks and, for bf16 weights, in the lane order the weights decode to.
/// Decode keeps the rows as they are, [tok_pad, in_pad] (beyond [`DECODE_MAX_TOKENS`]
/// tokens, zero rows pad them to whole GEMV passes); prefill pads the tokens to a
/// multiple of [`MT`] (zero rows) and stores each block of MT tokens column by column,
/// [tok_pad / MT, in_pad, MT]. Where the AVX512-BF16 kernel applies and every value is a
/// bf16, prefill holds x as [`Pairs`] only (its kernels then read nothing else).
pub(crate) struct Activations {
    /// x padded, zeros beyond the data: [tokens, in_pad] in decode, [tok_pad / MT, in_pad,
    /// MT] in prefill; empty where `pairs` is ready.
    x: Aligned,
    /// Prefill: x for the AVX512-BF16 kernel (not ready where it does not apply).
    pairs: Pairs,
    /// Decode: x [tok_pad, in_pad / 2] in bf16 pairs (columns 2p and 2p + 1 of a token in u32
    /// p, the even one low; zeros beyond the data) for the AVX512-BF16 GEMV, where it
    /// applies and every value of x is a bf16; empty otherwise.
    words: Aligned<u32>,
    cols: usize,
    in_pad: usize,
    tokens: usize,
    tok_pad: usize,
}

impl Activations {
    /// x [tokens, cols] for weights of `dtype` on `isa`.
    pub(crate) fn new(isa: Isa, dtype: DType, x: &[f32], tokens: usize, cols: usize) -> Self {
        let mut a = Activations {
            x: Aligned::default(),
            pairs: Pairs::none(Aligned::default()),
            words: Aligned::default(),
            cols,
            in_pad: 0,
            tokens: 0,
            tok_pad: 0,
        };
        a.fill(isa, dtype, x, tokens, cols);
        a
    }

    /// Refills with x [tokens, cols], reusing the buffers.
    pub(crate) fn fill(&mut self, isa: Isa, dtype: DType, x: &[f32], tokens: usize, cols: usize) {
        debug_assert_eq!(x.len(), tokens * cols, "infer_linear: activations");
        let in_pad = cols.next_multiple_of(CHUNK);
        let tok_pad = if tokens <= DECODE_MAX_TOKENS {
            tokens
        } else if tokens <= GEMV_MAX_TOKENS {
            tokens.next_multiple_of(DECODE_MAX_TOKENS)
        } else {
            tokens.next_multiple_of(MT)
        };
        (self.cols, self.in_pad, self.tokens, self.tok_pad) = (cols, in_pad, tokens, tok_pad);
        let buffer = std::mem::replace(&mut self.pairs, Pairs::none(Aligned::default())).into_buffer();
        self.pairs = Pairs::new(isa, dtype, x, tokens, cols, buffer);
        if self.pairs.ready() {
            self.x.resize(0);
            return;
        }
        self.fill_words(isa, dtype, x, tokens);
        let columns = isa.columns(dtype);
        self.x.resize(tok_pad * in_pad);
        let rows = x.chunks_exact(cols.max(1)).take(tokens);
        if self.is_decode() {
            // Every element of the tokens' rows is written; the padding tokens' are zeros.
            for (dst, src_row) in self.x.chunks_exact_mut(in_pad.max(1)).zip(rows) {
                lanes(src_row, &columns, dst);
            }
            self.x[tokens * in_pad..].fill(0.0);
        } else {
            for (b, block) in self.x.chunks_exact_mut(MT * in_pad).enumerate() {
                let n = (tokens - b * MT).min(MT);
                let src = &x[b * MT * cols..(b * MT + n) * cols];
                #[cfg(target_arch = "x86_64")]
                if isa.is_avx512() {
                    // SAFETY: the CPU runs AVX-512 (`isa` is available: `Isa::best` or a
                    // kernel's check).
                    unsafe { x86::transpose_block(src, cols, &columns, block) };
                    continue;
                }
                transpose_block(src, cols, &columns, block);
            }
        }
    }

    /// Decode: `words` for x [tokens, cols] where the AVX512-BF16 GEMV applies
    /// ([`Isa::Avx512Bf16`], bf16 weights) and every value of x is a bf16; else empty.
    fn fill_words(&mut self, isa: Isa, dtype: DType, x: &[f32], tokens: usize) {
        self.words.resize(0);
        let applies = dtype == DType::BF16 && self.cols > 0 && Pairs::supported(isa);
        if !applies || !self.is_decode() {
            return;
        }
        let (cols, width) = (self.cols, self.in_pad / 2);
        self.words.resize(self.tok_pad * width);
        let mut inexact = 0;
        for (row, dst) in x.chunks_exact(cols).zip(self.words.chunks_exact_mut(width)) {
            let (data, pad) = dst.split_at_mut(cols.div_ceil(2));
            for (d, (pair, dropped)) in data.iter_mut().zip(super::bf16_pairs::pack_pairs(row)) {
                inexact |= dropped;
                *d = pair;
            }
            pad.fill(0);
        }
        self.words[tokens * width..].fill(0);
        if inexact != 0 {
            self.words.resize(0);
        }
    }

    /// Decode: x in bf16 pairs ([`Self::fill_words`]), if held (only x86-64 has the kernel
    /// that reads them; elsewhere they are never held).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn words(&self) -> Option<&[u32]> {
        (!self.words.is_empty()).then_some(&self.words[..])
    }

    /// Prefill: x in bf16 pairs, ready where the AVX512-BF16 kernel applies.
    pub(super) fn pairs(&self) -> &Pairs {
        &self.pairs
    }

    /// Tokens.
    pub(crate) fn tokens(&self) -> usize {
        self.tokens
    }

    /// Whether the tokens take the GEMV path.
    fn is_decode(&self) -> bool {
        self.tokens <= GEMV_MAX_TOKENS
    }
}

/// A buffer of 4-byte elements (f32, or the u32 bf16 pairs of [`super::bf16_pairs`]) whose
/// first element is on a 64-byte boundary: vector loads at multiples of 16 elements never
/// straddle two cache lines (a straddling load costs two).
#[derive(Default)]
pub(super) struct Aligned<T = f32> {
    buffer: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> Aligned<T> {
    /// `len` zeros.
    pub(super) fn zeros(len: usize) -> Self {
        let mut a = Aligned { buffer: Vec::new(), start: 0, len: 0 };
        a.resize(len);
        a.fill(T::default());
        a
    }

    /// Makes it `len` elements long; the values are left unspecified.
    pub(super) fn resize(&mut self, len: usize) {
        const { assert!(std::mem::size_of::<T>() == 4) };
        self.buffer.resize(len + 16, T::default());
        self.start = self.buffer.as_ptr().align_offset(64).min(16);
        self.len = len;
    }
}

impl<T> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buffer[self.start..self.start + self.len]
    }
}

impl<T> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buffer[self.start..self.start + self.len]
    }
}

/// dst [in_pad] = src [cols] in whole chunks of the lane order `columns`, zeros beyond.
fn lanes(src: &[f32], columns: &[u8; CHUNK], dst: &mut [f32]) {
    let (full, tail) = src.split_at(src.len() / CHUNK * CHUNK);
    for (block, src) in dst.chunks_exact_mut(CHUNK).zip(full.chunks_exact(CHUNK)) {
        if *columns == NATURAL {
            block.copy_from_slice(src);
        } else {
            for (v, &column) in block.iter_mut().zip(columns) {
                *v = src[column as usize];
            }
        }
    }
    if let Some(block) = dst.chunks_exact_mut(CHUNK).nth(full.len() / CHUNK) {
        for (v, &column) in block.iter_mut().zip(columns) {
            *v = tail.get(column as usize).copied().unwrap_or(0.0);
        }
    }
}

/// A prefill block: dst [in_pad][MT] (position p, token t at p·MT + t) from src [n][cols]
/// (n ≤ MT tokens), the column of position p being p/32·32 + columns[p mod 32]; zeros past
/// the tokens and the columns. Chunk by chunk, token by token: a token's 32 columns read
/// together, its values written to the chunk's 32 positions (32 lines of cache).
fn transpose_block(src: &[f32], cols: usize, columns: &[u8; CHUNK], dst: &mut [f32]) {
    let n = src.len() / cols.max(1);
    debug_assert!(n <= MT && dst.len().is_multiple_of(MT * CHUNK), "infer_linear: prefill block");
    for (ch, chunk) in dst.chunks_exact_mut(MT * CHUNK).enumerate() {
        let base = ch * CHUNK;
        if base + CHUNK > cols {
            chunk.fill(0.0);
        }
        for (t, row) in src.chunks_exact(cols.max(1)).enumerate() {
            for (p, &c) in columns.iter().enumerate() {
                if let Some(&v) = row.get(base + c as usize) {
                    chunk[p * MT + t] = v;
                }
            }
        }
        if n < MT {
            for position in chunk.chunks_exact_mut(MT) {
                position[n..].fill(0.0);
            }
        }
    }
}

/// Per-row working space: an N:M row's column mask, and a zero-padded copy of a row's
/// values when the buffer ends less than a chunk after them.
#[derive(Default)]
struct Scratch<T> {
    mask: Vec<u8>,
    values: Vec<T>,
}

/// `values` if at least `need` elements long, else a zero-padded copy of them in `scratch`:
/// chunk reads may then take 32 elements from any position below the row's end. Inlined:
/// decode calls it for every row (a call per row cost ~5% of a 576-column model's step).
#[inline(always)]
fn padded<'s, T: Copy + Default>(values: &'s [T], need: usize, scratch: &'s mut Vec<T>) -> &'s [T] {
    if values.len() >= need {
        values
    } else {
        padded_copy(values, need, scratch)
    }
}

/// The copy of [`padded`] (the last rows of a matrix only).
#[cold]
#[inline(never)]
fn padded_copy<'s, T: Copy + Default>(values: &[T], need: usize, scratch: &'s mut Vec<T>) -> &'s [T] {
    scratch.clear();
    scratch.extend_from_slice(values);
    scratch.resize(need, T::default());
    scratch
}

/// Elements of T in [`PREFETCH_BYTES`].
#[inline(always)]
fn prefetch_ahead<T>() -> usize {
    PREFETCH_BYTES / std::mem::size_of::<T>()
}

/// The mask of the first `n` (< 32) lanes.
fn low_lanes(n: usize) -> u32 {
    (1u32 << n) - 1
}

/// Where weight rows come from.
trait Source<T: Stored>: Sync {
    /// Whether rows keep some columns only (prefill then skips the others).
    const MASKED: bool;
    /// Reads one row.
    type Reader<'s>: RowReader<T>
    where
        Self: 's,
        T: 's;
    /// Working space for one row (empty unless the source needs some).
    fn scratch(&self) -> Scratch<T> {
        Scratch::default()
    }
    /// Row r, using `scratch`.
    ///
    /// # Safety
    /// The CPU runs `S`.
    unsafe fn row<'s, S: Simd>(&'s self, r: usize, scratch: &'s mut Scratch<T>) -> Self::Reader<'s>;
    /// Bytes stored for rows 0..r.
    fn bytes_before(&self, r: usize) -> usize;
    /// Values stored for rows 0..r (every weight of a dense row, the kept ones of a masked
    /// one).
    fn values_before(&self, r: usize) -> usize;
}

/// One row's weights, chunk by chunk in order: where each chunk's values are and which
/// columns they fill ([`RowReader::full_at`], [`RowReader::tail_at`]), or the chunk decoded
/// as f32 in the decoder's lane order ([`RowReader::full`], [`RowReader::tail`]).
trait RowReader<T: Stored> {
    /// Every chunk is whole: the columns are all the chunk's (a dense row).
    const DENSE: bool;
    /// Chunk `ch`, wholly inside the row (32·ch + 32 ≤ cols): the mask of its columns that
    /// hold a value (all 32 bits where [`Self::DENSE`]) and its first value, from which 32
    /// values are readable; the reader moves past its values. No branch, no call.
    ///
    /// # Safety
    /// The CPU runs `S`; chunks are read in order.
    unsafe fn full_at<S: Simd>(&mut self, ch: usize) -> (u32, *const T);
    /// The same for the last chunk of a row whose length is not a multiple of 32
    /// (ch = cols / 32): no bit beyond the row is set.
    ///
    /// # Safety
    /// The CPU runs `S`; chunks are read in order.
    unsafe fn tail_at<S: Simd>(&mut self, ch: usize) -> (u32, *const T);
    /// Error unless the row's mask kept exactly its values.
    fn finish(&self) -> Result<()>;

    /// Chunk `ch` ([`Self::full_at`]) decoded.
    ///
    /// # Safety
    /// The CPU runs `S`; chunks are read in order.
    #[inline(always)]
    unsafe fn full<S: Simd>(&mut self, ch: usize) -> S::C {
        let (bits, at) = self.full_at::<S>(ch);
        if Self::DENSE {
            T::chunk::<S>(at)
        } else {
            T::expand::<S>(bits, at)
        }
    }

    /// The last chunk ([`Self::tail_at`]) decoded, zeros beyond the row.
    ///
    /// # Safety
    /// The CPU runs `S`; chunks are read in order.
    #[inline(always)]
    unsafe fn tail<S: Simd>(&mut self, ch: usize) -> S::C {
        let (bits, at) = self.tail_at::<S>(ch);
        T::expand::<S>(bits, at)
    }

    /// Chunk `ch` of a row of `cols` columns as (mask, where its values start):
    /// [`Self::full_at`] or [`Self::tail_at`].
    ///
    /// # Safety
    /// The CPU runs `S`; 32·ch < cols; chunks are read in order.
    #[inline(always)]
    unsafe fn chunk_at<S: Simd>(&mut self, ch: usize, cols: usize) -> (u32, *const T) {
        if (ch + 1) * CHUNK <= cols {
            self.full_at::<S>(ch)
        } else {
            self.tail_at::<S>(ch)
        }
    }
}

/// Chunk `ch` of a row of `cols` columns: [`RowReader::full`] or [`RowReader::tail`].
///
/// # Safety
/// The CPU runs `S`; 32·ch < cols.
#[inline(always)]
unsafe fn chunk_of<S: Simd, T: Stored, R: RowReader<T>>(reader: &mut R, ch: usize, cols: usize) -> S::C {
    if (ch + 1) * CHUNK <= cols {
        reader.full::<S>(ch)
    } else {
        reader.tail::<S>(ch)
    }
}

/// Chunk `ch` of a bf16 row of `cols` columns as its 16 column pairs at `out`
/// ([`Simd::expand_bf16_pairs`]), zeros beyond the row.
///
/// # Safety
/// The CPU runs `S`; T is bf16; 32·ch < cols; chunks are read in order; `out` is writable
/// for 16 u32.
#[inline(always)]
unsafe fn pairs_of<S: Simd, T: Stored, R: RowReader<T>>(reader: &mut R, ch: usize, cols: usize, out: *mut u32) {
    assert_eq!(T::DTYPE, DType::BF16, "infer_linear: bf16 pairs of bf16 weights");
    let (bits, at) = reader.chunk_at::<S>(ch, cols);
    // SAFETY: 32 values are readable at `at` (RowReader), bf16 (asserted).
    S::expand_bf16_pairs(bits, at.cast(), out)
}

#[derive(Clone, Copy)]
struct DenseSource<'a, T> {
    w: &'a [T],
    cols: usize,
    /// Values from one row's start to the next's (`cols` for a weight as stored).
    stride: usize,
}

/// A dense row, readable for 32 elements past each chunk start (from the next rows or
/// zero padding).
struct DenseRow<'a, T> {
    row: &'a [T],
    cols: usize,
}

impl<T: Stored> Source<T> for DenseSource<'_, T> {
    const MASKED: bool = false;
    type Reader<'s>
        = DenseRow<'s, T>
    where
        Self: 's,
        T: 's;
    #[inline(always)]
    unsafe fn row<'s, S: Simd>(&'s self, r: usize, scratch: &'s mut Scratch<T>) -> DenseRow<'s, T> {
        let need = self.cols.next_multiple_of(CHUNK);
        DenseRow { row: padded(&self.w[r * self.stride..], need, &mut scratch.values), cols: self.cols }
    }
    fn bytes_before(&self, r: usize) -> usize {
        r * self.stride * std::mem::size_of::<T>()
    }
    fn values_before(&self, r: usize) -> usize {
        r * self.cols
    }
}

impl<T: Stored> RowReader<T> for DenseRow<'_, T> {
    const DENSE: bool = true;
    #[inline(always)]
    unsafe fn full_at<S: Simd>(&mut self, ch: usize) -> (u32, *const T) {
        S::prefetch(self.row.as_ptr().wrapping_add(ch * CHUNK + prefetch_ahead::<T>()).cast());
        // SAFETY: the row is readable up to cols rounded up to 32 (`padded`).
        (u32::MAX, self.row.as_ptr().add(ch * CHUNK))
    }
    #[inline(always)]
    unsafe fn tail_at<S: Simd>(&mut self, ch: usize) -> (u32, *const T) {
        // The row's own columns as a masked chunk: lanes past the row are zero.
        (low_lanes(self.cols - ch * CHUNK), self.row.as_ptr().add(ch * CHUNK))
    }
    #[inline(always)]
    fn finish(&self) -> Result<()> {
        Ok(())
    }
}

/// A row of packed values with its column mask (a bitmask row, or an N:M row's mask).
///
/// The values are read through a moving pointer with no bound per chunk: a row's mask keeps
/// at most `cols` columns (a full chunk's 32 bits lie inside the row, a tail chunk's bits
/// are cut to the row), so the pointer never passes `cols` values from the row's start, and
/// the row is readable for `cols` + 32 values ([`MaskedRow::new`]). A mask that keeps
/// another number of values than the row has is found by [`RowReader::finish`].
struct MaskedRow<'a, T> {
    /// The next value.
    next: *const T,
    /// The row's first value.
    first: *const T,
    /// The row's mask bytes.
    mask: &'a [u8],
    cols: usize,
    /// Values of the row.
    count: usize,
    /// The values are borrowed.
    _values: PhantomData<&'a [T]>,
}

impl<'a, T: Stored> MaskedRow<'a, T> {
    /// The row of `count` values starting `values` (the rest of the matrix's values from
    /// this row on) under `mask`: the values are copied into `scratch`, zero-padded, when
    /// fewer than `cols` + 32 follow the row's start (the last rows of a matrix).
    #[inline(always)]
    fn new(values: &'a [T], count: usize, mask: &'a [u8], cols: usize, scratch: &'a mut Vec<T>) -> Self {
        let values = padded(values, cols + CHUNK, scratch);
        MaskedRow { next: values.as_ptr(), first: values.as_ptr(), mask, cols, count, _values: PhantomData }
    }

    /// (`bits`, where the values of mask `bits` start); the pointer moves past them.
    ///
    /// # Safety
    /// The CPU runs `S`; `bits` is the mask of a chunk of this row, in order.
    #[inline(always)]
    unsafe fn take<S: Simd>(&mut self, bits: u32) -> (u32, *const T) {
        let at = self.next;
        // SAFETY: the masks of the chunks read so far keep at most `cols` columns, so `at`
        // is at most `cols` values past `first` and 32 values from it are readable (`new`).
        self.next = at.add(bits.count_ones() as usize);
        S::prefetch(at.wrapping_add(prefetch_ahead::<T>()).cast());
        (bits, at)
    }
}

impl<T: Stored> RowReader<T> for MaskedRow<'_, T> {
    const DENSE: bool = false;
    #[inline(always)]
    unsafe fn full_at<S: Simd>(&mut self, ch: usize) -> (u32, *const T) {
        // SAFETY: the row's mask holds cols/8 ≥ 4·ch + 4 bytes.
        let bits = self.mask.as_ptr().add(4 * ch).cast::<u32>().read_unaligned();
        self.take::<S>(bits)
    }
    #[inline(always)]
    unsafe fn tail_at<S: Simd>(&mut self, ch: usize) -> (u32, *const T) {
        let mut bits = 0u32;
        for (i, &b) in self.mask[4 * ch..].iter().take(4).enumerate() {
            bits |= (b as u32) << (8 * i);
        }
        self.take::<S>(bits & low_lanes(self.cols - ch * CHUNK))
    }
    #[inline(always)]
    fn finish(&self) -> Result<()> {
        // SAFETY: `next` moved forward from `first` within one padded slice.
        let kept = unsafe { self.next.offset_from(self.first) } as usize;
        if kept == self.count {
            Ok(())
        } else {
            Err(mask_mismatch(kept, self.count))
        }
    }
}

/// The error of a row whose mask keeps `kept` entries for `count` values.
#[cold]
fn mask_mismatch(kept: usize, count: usize) -> Error {
    Error::invalid(format!("infer_linear: a weight row's mask keeps {kept} entries, it has {count} values"))
}

#[derive(Clone, Copy)]
struct BitmaskSource<'a, T> {
    values: &'a [T],
    mask: &'a [u8],
    offsets: &'a [u32],
    cols: usize,
    stride: usize,
}

impl<T> BitmaskSource<'_, T> {
    /// Error unless the offsets of rows `rows` (within the weight's) increase and stay
    /// within the values, so that every row read is a slice of them. Every pair compared,
    /// no early exit, so that the loop vectorizes.
    fn check_rows(&self, rows: Range<usize>) -> Result<()> {
        let offsets = &self.offsets[rows.start..=rows.end];
        let descents = offsets.iter().zip(&offsets[1..]).fold(0u32, |n, (a, b)| n | u32::from(a > b));
        if descents != 0 || offsets[offsets.len() - 1] as usize > self.values.len() {
            return Err(Error::invalid(format!(
                "infer_linear: the row offsets of rows {rows:?} are not increasing within the {} values",
                self.values.len()
            )));
        }
        Ok(())
    }
}

impl<T: Stored> Source<T> for BitmaskSource<'_, T> {
    const MASKED: bool = true;
    type Reader<'s>
        = MaskedRow<'s, T>
    where
        Self: 's,
        T: 's;
    #[inline(always)]
    unsafe fn row<'s, S: Simd>(&'s self, r: usize, scratch: &'s mut Scratch<T>) -> MaskedRow<'s, T> {
        let (start, end) = (self.offsets[r] as usize, self.offsets[r + 1] as usize);
        let mask = &self.mask[r * self.stride..(r + 1) * self.stride];
        MaskedRow::new(&self.values[start..], end - start, mask, self.cols, &mut scratch.values)
    }
    fn bytes_before(&self, r: usize) -> usize {
        self.offsets[r] as usize * std::mem::size_of::<T>() + r * self.stride
    }
    fn values_before(&self, r: usize) -> usize {
        self.offsets[r] as usize
    }
}

#[derive(Clone, Copy)]
struct NmSource<'a, T> {
    values: &'a [T],
    positions: &'a [u8],
    cols: usize,
    format: SparseFormat,
    per_row: usize,
    pos_stride: usize,
    two_four: bool,
}

impl<T: Stored> Source<T> for NmSource<'_, T> {
    const MASKED: bool = true;
    type Reader<'s>
        = MaskedRow<'s, T>
    where
        Self: 's,
        T: 's;
    fn scratch(&self) -> Scratch<T> {
        Scratch { mask: vec![0; self.cols.div_ceil(8)], values: Vec::new() }
    }
    #[inline(always)]
    unsafe fn row<'s, S: Simd>(&'s self, r: usize, scratch: &'s mut Scratch<T>) -> MaskedRow<'s, T> {
        let positions = &self.positions[r * self.pos_stride..(r + 1) * self.pos_stride];
        let cols = self.cols;
        let mask = scratch.mask.as_mut_slice();
        if self.two_four {
            // Same stride: a 2:4 row holds one position byte per eight columns.
            S::two_four_mask(positions, mask);
        } else {
            mask.fill(0);
            visit_row(cols, self.format, positions, |c, _| {
                if c < cols {
                    mask[c / 8] |= 1 << (c % 8);
                }
            });
        }
        if !cols.is_multiple_of(8) {
            if let Some(last) = mask.last_mut() {
                *last &= (1u8 << (cols % 8)) - 1;
            }
        }
        MaskedRow::new(&self.values[r * self.per_row..], self.per_row, &scratch.mask, cols, &mut scratch.values)
    }
    fn bytes_before(&self, r: usize) -> usize {
        r * (self.per_row * std::mem::size_of::<T>() + self.pos_stride)
    }
    fn values_before(&self, r: usize) -> usize {
        r * self.per_row
    }
}

/// One row range on `isa` (checked available by [`linear`]).
fn run_part<T: Stored, Src: Source<T>>(
    isa: Isa,
    job: &Activations,
    src: &Src,
    rows: Range<usize>,
    out: Dest<'_>,
) -> Result<()> {
    // SAFETY: `linear` checked that this CPU runs `isa`; `part` checks its slices; words
    // are held only for `Isa::Avx512Bf16` (the CPU has AVX-512 with VBMI2 and BF16).
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 if T::DTYPE == DType::BF16 && job.words().is_some() => {
                x86::avx512_bf16_decode(job, src, rows, out)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 | Isa::Avx512Vbmi2 => x86::avx512_vbmi2(job, src, rows, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::avx512(job, src, rows, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::avx2(job, src, rows, out),
            Isa::Portable => part::<Portable, T, Src>(job, src, rows, out),
            #[cfg(not(target_arch = "x86_64"))]
            other => Err(Error::invalid(format!("infer_linear: this CPU has no {}", other.name()))),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;
    use crate::ops::infer_linear::simd::{expand_words, transpose16, Avx2, Avx512};

    /// An entry point compiled for one instruction set; the kernels inline into it.
    macro_rules! entry {
        ($name:ident, $features:literal, $simd:ty) => {
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<T: Stored, Src: Source<T>>(
                job: &Activations,
                src: &Src,
                rows: Range<usize>,
                out: Dest<'_>,
            ) -> Result<()> {
                part::<$simd, T, Src>(job, src, rows, out)
            }
        };
    }

    /// A [`super::decode_into`] compiled for one instruction set.
    macro_rules! decoder {
        ($name:ident, $features:literal, $simd:ty) => {
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<T: Stored, Src: Source<T>>(
                src: &Src,
                rows: Range<usize>,
                cols: usize,
                out: &mut [T],
            ) -> Result<()> {
                decode_into::<$simd, T, Src>(src, rows, cols, out)
            }
        };
    }

    entry!(avx512_vbmi2, "avx512f,avx512bw,avx512vl,avx512vbmi2,avx2,fma,popcnt", Avx512<true>);
    entry!(avx512, "avx512f,avx512bw,avx512vl,avx2,fma,popcnt", Avx512<false>);
    entry!(avx2, "avx2,fma,popcnt", Avx2);
    decoder!(decode_avx512_vbmi2, "avx512f,avx512bw,avx512vl,avx512vbmi2,avx2,fma,popcnt", Avx512<true>);
    decoder!(decode_avx512, "avx512f,avx512bw,avx512vl,avx2,fma,popcnt", Avx512<false>);
    decoder!(decode_avx2, "avx2,fma,popcnt", Avx2);

    /// [`super::transpose_block`] by 16×16 transposes in registers: a tile of 16 tokens'
    /// 16 columns loaded row by row (masked past the tokens and the columns), transposed
    /// (4 rounds of 16 shuffles), each column's 16 tokens stored at its position.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_block(src: &[f32], cols: usize, columns: &[u8; CHUNK], dst: &mut [f32]) {
        let n = src.len() / cols.max(1);
        assert!(n <= MT && dst.len().is_multiple_of(MT * CHUNK), "infer_linear: prefill block");
        // The position of each column of a chunk.
        let mut position = [0usize; CHUNK];
        for (p, &c) in columns.iter().enumerate() {
            position[c as usize] = p;
        }
        let in_pad = dst.len() / MT;
        for c0 in (0..in_pad).step_by(16) {
            let (base, first) = (c0 / CHUNK * CHUNK, c0 % CHUNK);
            let lanes = cols.saturating_sub(c0).min(16);
            let mask: __mmask16 = ((1u32 << lanes) - 1) as u16;
            for t0 in (0..MT).step_by(16) {
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, v) in r.iter_mut().enumerate().take(n.saturating_sub(t0)) {
                    // SAFETY: lanes past the mask are not read; token t0 + i < n, columns
                    // c0 .. c0 + lanes ≤ cols of its row.
                    *v = _mm512_maskz_loadu_ps(mask, src.as_ptr().wrapping_add((t0 + i) * cols + c0));
                }
                for (j, column) in transpose16(r).into_iter().enumerate() {
                    let at = (base + position[first + j]) * MT + t0;
                    assert!(at + 16 <= dst.len(), "infer_linear: prefill block position");
                    _mm512_storeu_ps(dst.as_mut_ptr().add(at), column);
                }
            }
        }
    }

    /// The decode of bf16 weights with x held in bf16 pairs ([`Activations::fill_words`]),
    /// by [`Bf16Gemv`].
    ///
    /// # Safety
    /// The CPU has AVX-512 with VBMI2 and BF16; T is bf16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi2,avx512bf16,avx2,fma,popcnt")]
    pub(super) unsafe fn avx512_bf16_decode<T: Stored, Src: Source<T>>(
        job: &Activations,
        src: &Src,
        rows: Range<usize>,
        out: Dest<'_>,
    ) -> Result<()> {
        assert_eq!(T::DTYPE, DType::BF16, "infer_linear: the bf16 GEMV reads bf16 weights");
        let words = job.words().expect("infer_linear: the bf16 GEMV needs x in bf16 pairs");
        assert_eq!((out.rows, out.tokens), (rows.len(), job.tokens), "infer_linear: output block size");
        assert_eq!(words.len(), job.tok_pad * job.in_pad / 2, "infer_linear: x in bf16 pairs");
        let (x, width, cols) = (words.as_ptr(), job.in_pad / 2, job.cols);
        let (two_sums, one_sum) = (Bf16Gemv::<2> { x, width, cols }, Bf16Gemv::<1> { x, width, cols });
        // Four rows in lockstep for up to four tokens, two for one token of masked rows. On
        // an AMD EPYC (Zen 5, 2 threads, LLaMA-2-7B shapes), with four masked rows the GEMV
        // read 80–90% of the dense one's bandwidth, with two 95–105% (bitmask 50%,
        // 11008×4096: 1.39–1.66× dense → 1.70–1.96×; 70%: 2.28–2.47× → 2.30–2.58×), with one
        // row less than with four (50%: 1.33–1.49×).
        // For one token, two sum registers per row, for even and odd chunks (`SUMS` = 2):
        // with one, each row waited on its `vdpbf16ps` chain, and a 70% row (~10 values per
        // chunk) read 74–77% of the bandwidth; with two 91–105% (70%, 11008×4096: 2.18–2.34×
        // dense → 2.65–2.72× in runs where memory read ~62 GB/s; 50% and 2:4 unchanged).
        // Five to eight tokens of masked rows in one pass, two rows in lockstep (the sums of
        // four rows would take every register), instead of two passes of four: a chunk is
        // expanded once, and no padding token is multiplied. One core of an AMD EPYC 9004,
        // 1536×576 50% in cache, fastest of 300 calls, 5 / 6 / 7 / 8 tokens: 115 / 118 / 120
        // / 123 → 68 / 80–97 / 91 / 104 µs; 2 threads, 11008×4096 from memory: 5 tokens
        // 2.7–3.2 → 2.0–2.2 ms, 8 tokens even (3.2–3.5 ms). Dense rows keep passes of four
        // rows: with two, faster in cache (75 → 52 µs) but from memory they read much less
        // (5 tokens 3.3–3.5 → 3.8–4.3 ms, 8 tokens 3.5–3.8 → 4.9–5.0).
        match job.tokens {
            1 if Src::MASKED => decode::<_, T, Src, 1, 2>(two_sums, src, rows, out),
            1 => decode::<_, T, Src, 1, 4>(two_sums, src, rows, out),
            2 => decode::<_, T, Src, 2, 4>(one_sum, src, rows, out),
            3 => decode::<_, T, Src, 3, 4>(one_sum, src, rows, out),
            5 if Src::MASKED => decode::<_, T, Src, 5, 2>(one_sum, src, rows, out),
            6 if Src::MASKED => decode::<_, T, Src, 6, 2>(one_sum, src, rows, out),
            7 if Src::MASKED => decode::<_, T, Src, 7, 2>(one_sum, src, rows, out),
            8 if Src::MASKED => decode::<_, T, Src, 8, 2>(one_sum, src, rows, out),
            4..=GEMV_MAX_TOKENS => decode::<_, T, Src, 4, 4>(one_sum, src, rows, out),
            n => {
                Err(Error::invalid(format!("infer_linear: the bf16 GEMV takes 1 to {GEMV_MAX_TOKENS} tokens, not {n}")))
            }
        }
    }

    /// Chunks as 32 bf16 in column order (a masked chunk's values spread over its columns
    /// by `vpexpandw`), multiplied into x's pairs by `vdpbf16ps`: 16 sums, each of two
    /// exact products, where the f32 path widens the chunk into two vectors and runs two
    /// fused multiply-adds. Like the prefill's pairs, it flushes denormal inputs and sums to
    /// zero. `SUMS` (1 or 2) sum registers per row and token: with two, even chunks go to
    /// the first and odd ones to the second ([`Gemv::fma_pair`]), two independent chains.
    #[derive(Clone, Copy)]
    pub(super) struct Bf16Gemv<const SUMS: usize> {
        /// x [tokens, width] in pairs.
        x: *const u32,
        /// Pairs per token (in_pad / 2).
        width: usize,
        cols: usize,
    }

    impl<const SUMS: usize> Bf16Gemv<SUMS> {
        /// A row's one vector of sums: the even and odd chunks' sums added.
        #[inline(always)]
        unsafe fn row(acc: [__m512; SUMS]) -> __m512 {
            if SUMS == 2 {
                _mm512_add_ps(acc[0], acc[SUMS - 1])
            } else {
                acc[0]
            }
        }

        /// acc + w · x[t, chunk ch] by `vdpbf16ps`.
        #[inline(always)]
        unsafe fn dot(self, acc: __m512, w: __m512i, t: usize, ch: usize) -> __m512 {
            let x = _mm512_loadu_si512(self.x.add(t * self.width + ch * CHUNK / 2).cast());
            _mm512_dpbf16_ps(
                acc,
                std::mem::transmute::<__m512i, __m512bh>(w),
                std::mem::transmute::<__m512i, __m512bh>(x),
            )
        }
    }

    impl<T: Stored, const SUMS: usize> Gemv<T> for Bf16Gemv<SUMS> {
        type S = Avx512<true>;
        type W = __m512i;
        type A = [__m512; SUMS];
        #[inline(always)]
        unsafe fn zero() -> [__m512; SUMS] {
            [_mm512_setzero_ps(); SUMS]
        }
        #[inline(always)]
        unsafe fn full<R: RowReader<T>>(reader: &mut R, ch: usize) -> __m512i {
            let (bits, at) = reader.full_at::<Self::S>(ch);
            // SAFETY: 32 values are readable at `at` (RowReader), bf16 (the entry checks).
            let words = _mm512_loadu_si512(at.cast());
            if R::DENSE {
                words
            } else {
                expand_words(bits, words)
            }
        }
        #[inline(always)]
        unsafe fn tail<R: RowReader<T>>(reader: &mut R, ch: usize) -> __m512i {
            let (bits, at) = reader.tail_at::<Self::S>(ch);
            expand_words(bits, _mm512_loadu_si512(at.cast()))
        }
        #[inline(always)]
        unsafe fn fma<const NT: usize>(self, acc: &mut [[__m512; SUMS]; NT], w: __m512i, ch: usize) {
            for (t, a) in acc.iter_mut().enumerate() {
                a[0] = self.dot(a[0], w, t, ch);
            }
        }
        #[inline(always)]
        unsafe fn fma_pair<const NT: usize>(self, acc: &mut [[__m512; SUMS]; NT], w: [__m512i; 2], ch: usize) {
            for (t, a) in acc.iter_mut().enumerate() {
                a[0] = self.dot(a[0], w[0], t, ch);
                a[SUMS - 1] = self.dot(a[SUMS - 1], w[1], t, ch + 1);
            }
        }
        #[inline(always)]
        unsafe fn sum(acc: [__m512; SUMS]) -> f32 {
            _mm512_reduce_add_ps(Self::row(acc))
        }
        /// The tree of `_mm512_reduce_add_ps` (halves of 256, 128, 64 and 32 bits added,
        /// lower plus upper) for two rows at once: both rows' 256-bit halves in one vector.
        #[inline(always)]
        unsafe fn sum_pair(a: [__m512; SUMS], b: [__m512; SUMS]) -> [f32; 2] {
            let (a, b) = (Self::row(a), Self::row(b));
            // [a lo256 + a hi256 | b lo256 + b hi256]
            let h = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xee>(a, b));
            // each 256-bit half: lo128 + hi128
            let q = _mm512_add_ps(h, _mm512_shuffle_f32x4::<0xb1>(h, h));
            // each 128-bit quarter: lo64 + hi64, then lane 0 + lane 1
            let d = _mm512_add_ps(q, _mm512_permute_ps::<0x4e>(q));
            let e = _mm512_add_ps(d, _mm512_permute_ps::<0xb1>(d));
            [_mm512_cvtss_f32(e), _mm512_cvtss_f32(_mm512_shuffle_f32x4::<0x02>(e, e))]
        }
        fn cols(self) -> usize {
            self.cols
        }
        fn tokens_on(self, t0: usize) -> Self {
            Bf16Gemv { x: self.x.wrapping_add(t0 * self.width), ..self }
        }
    }
}

/// Rows `rows` of y (transposed, `out` [rows.len(), tokens]): decode or prefill.
///
/// # Safety
/// The CPU runs `S`.
#[inline(always)]
unsafe fn part<S: Simd, T: Stored, Src: Source<T>>(
    job: &Activations,
    src: &Src,
    rows: Range<usize>,
    out: Dest<'_>,
) -> Result<()> {
    assert_eq!((out.rows, out.tokens), (rows.len(), job.tokens), "infer_linear: output block size");
    // Where x is held in bf16 pairs only, the masked bf16 prefill is the one kernel here
    // that reads them (dense bf16 weights take `bf16_pairs::prefill` before this).
    if job.x.len() != job.tok_pad * job.in_pad && !reads_pairs::<S, T, Src>(job) {
        return Err(Error::invalid("infer_linear: activations held in bf16 pairs for another kernel"));
    }
    // Rows in lockstep (independent weight streams and FMA chains) as many as the
    // accumulators, K·NT chunk-wide values, leave registers for: 32 AVX-512 registers, 16
    // AVX2 ones (a chunk is 2 AVX-512 or 4 AVX2 vectors). One token of masked rows: two
    // rows, as in the bf16 GEMV; with four the eight chunks in flight need eight masks, one
    // more than the mask registers, and the compiler spilled them (Intel Xeon, one thread,
    // rows in cache: 1536×576 at 70% 1.65–1.84 ns a chunk with four, 1.56 with two; 4096×4096
    // 1.50 → 1.46, 50% 1.64 → 1.57).
    let (wide, g) = (S::LANES >= 16, F32Gemv::<S>::new(job));
    match (job.tokens, wide) {
        (1, true) if Src::MASKED => decode::<_, T, Src, 1, 2>(g, src, rows, out),
        (1, true) => decode::<_, T, Src, 1, 4>(g, src, rows, out),
        (2, true) => decode::<_, T, Src, 2, 4>(g, src, rows, out),
        (3, true) => decode::<_, T, Src, 3, 2>(g, src, rows, out),
        (4..=GEMV_MAX_TOKENS, true) => decode::<_, T, Src, 4, 2>(g, src, rows, out),
        (1, false) => decode::<_, T, Src, 1, 2>(g, src, rows, out),
        (2, false) => decode::<_, T, Src, 2, 2>(g, src, rows, out),
        (3, false) => decode::<_, T, Src, 3, 1>(g, src, rows, out),
        (4..=GEMV_MAX_TOKENS, false) => decode::<_, T, Src, 4, 1>(g, src, rows, out),
        _ => prefill::<S, T, Src>(job, src, rows, out),
    }
}

/// How the GEMV multiplies a row's chunks into the tokens' sums: chunks decoded to f32 and
/// fused multiply-adds with x in f32 ([`F32Gemv`]), or, for bf16 weights and activations on
/// [`Isa::Avx512Bf16`], chunks left as bf16 and `vdpbf16ps` with x in bf16 pairs
/// (`x86::Bf16Gemv`).
trait Gemv<T: Stored>: Copy {
    /// The instruction set.
    type S: Simd;
    /// A decoded chunk.
    type W: Copy;
    /// One token's sums.
    type A: Copy;
    /// Zero sums.
    ///
    /// # Safety
    /// The CPU runs `Self::S`.
    unsafe fn zero() -> Self::A;
    /// Chunk `ch` of a row, wholly inside it ([`RowReader::full_at`]).
    ///
    /// # Safety
    /// The CPU runs `Self::S`; chunks are read in order.
    unsafe fn full<R: RowReader<T>>(reader: &mut R, ch: usize) -> Self::W;
    /// The row's last chunk ([`RowReader::tail_at`]), zeros beyond the row.
    ///
    /// # Safety
    /// The CPU runs `Self::S`; chunks are read in order.
    unsafe fn tail<R: RowReader<T>>(reader: &mut R, ch: usize) -> Self::W;
    /// acc[t] += w · x[t, chunk ch] for the NT tokens.
    ///
    /// # Safety
    /// The CPU runs `Self::S`; x holds NT tokens and chunk ch.
    unsafe fn fma<const NT: usize>(self, acc: &mut [Self::A; NT], w: Self::W, ch: usize);
    /// Chunks ch and ch + 1 ([`Gemv::fma`] of each in order, unless the sums keep them apart).
    ///
    /// # Safety
    /// As [`Gemv::fma`], for both chunks.
    #[inline(always)]
    unsafe fn fma_pair<const NT: usize>(self, acc: &mut [Self::A; NT], w: [Self::W; 2], ch: usize) {
        self.fma::<NT>(acc, w[0], ch);
        self.fma::<NT>(acc, w[1], ch + 1);
    }
    /// The sum of one token's sums.
    ///
    /// # Safety
    /// The CPU runs `Self::S`.
    unsafe fn sum(acc: Self::A) -> f32;
    /// [`Gemv::sum`] of two rows' sums, bit for bit (where both reduce at once, two
    /// reductions in the instructions of one).
    ///
    /// # Safety
    /// The CPU runs `Self::S`.
    #[inline(always)]
    unsafe fn sum_pair(a: Self::A, b: Self::A) -> [f32; 2] {
        [Self::sum(a), Self::sum(b)]
    }
    /// The activations' columns.
    fn cols(self) -> usize;
    /// The same with x from token t0 on (its tokens t0.. as 0..).
    fn tokens_on(self, t0: usize) -> Self;
}

/// Chunks as f32 ([`Simd::C`], in the decoder's lane order), x [tokens, in_pad] f32 in the
/// same order.
#[derive(Clone, Copy)]
struct F32Gemv<S> {
    x: *const f32,
    in_pad: usize,
    cols: usize,
    _simd: PhantomData<S>,
}

impl<S: Simd> F32Gemv<S> {
    fn new(job: &Activations) -> Self {
        F32Gemv { x: job.x.as_ptr(), in_pad: job.in_pad, cols: job.cols, _simd: PhantomData }
    }
}

impl<S: Simd, T: Stored> Gemv<T> for F32Gemv<S> {
    type S = S;
    type W = S::C;
    type A = S::C;
    #[inline(always)]
    unsafe fn zero() -> S::C {
        S::zero()
    }
    #[inline(always)]
    unsafe fn full<R: RowReader<T>>(reader: &mut R, ch: usize) -> S::C {
        reader.full::<S>(ch)
    }
    #[inline(always)]
    unsafe fn tail<R: RowReader<T>>(reader: &mut R, ch: usize) -> S::C {
        reader.tail::<S>(ch)
    }
    #[inline(always)]
    unsafe fn fma<const NT: usize>(self, acc: &mut [S::C; NT], w: S::C, ch: usize) {
        for (t, a) in acc.iter_mut().enumerate() {
            *a = S::fma(w, S::load(self.x.add(t * self.in_pad + ch * CHUNK)), *a);
        }
    }
    #[inline(always)]
    unsafe fn sum(acc: S::C) -> f32 {
        S::sum(acc)
    }
    fn cols(self) -> usize {
        self.cols
    }
    fn tokens_on(self, t0: usize) -> Self {
        F32Gemv { x: self.x.wrapping_add(t0 * self.in_pad), ..self }
    }
}

/// GEMV for `out`'s tokens, NT at a time (with NT = [`DECODE_MAX_TOKENS`], in passes over
/// each row group, x and `out` from the pass's first token on; where the last pass goes
/// past the tokens, x holds zero rows and their sums are dropped), K rows at a time in
/// lockstep: the range is cut into K parts of ⌊n/K⌋ rows (the rest, at its end, row by row)
/// and row i of every part is read with row i of the others ([`lockstep!`]), every pass
/// before the next rows (their weights then come from cache). The K rows are K weight
/// streams from memory at once: one masked row's stream read 12–13 GB/s of a core's 15 at
/// 50–70% sparsity, four rows' 15–16 (LLaMA-2-7B shapes, bf16).
#[inline(always)]
unsafe fn decode<G: Gemv<T>, T: Stored, Src: Source<T>, const NT: usize, const K: usize>(
    g: G,
    src: &Src,
    rows: Range<usize>,
    out: Dest<'_>,
) -> Result<()> {
    const { assert!(K == 1 || K == 2 || K == 4, "infer_linear: decode reads 1, 2 or 4 rows in lockstep") };
    // A source's working space for each of the K rows (empty for the others).
    let mut scratch: [Scratch<T>; 4] = std::array::from_fn(|k| if k < K { src.scratch() } else { Scratch::default() });
    let [s0, s1, s2, s3] = &mut scratch;
    let mut out = out;
    let n = rows.len();
    let part = n / K;
    // Passes of DECODE_MAX_TOKENS tokens (x holds zero rows up to the last one's end); a
    // constant 1 for fewer tokens, so that the decode of one token compiles without the loop.
    let passes = if NT == DECODE_MAX_TOKENS { out.tokens.div_ceil(NT) } else { 1 };
    for i in 0..part {
        let first = rows.start + i;
        for p in 0..passes {
            let (g, mut o) = (g.tokens_on(p * NT), out.tokens_on(p * NT));
            match K {
                4 => lockstep!(G, T, NT, g, src, o, i, first, part, [0 r0 s0 a0, 1 r1 s1 a1, 2 r2 s2 a2, 3 r3 s3 a3]),
                2 => lockstep!(G, T, NT, g, src, o, i, first, part, [0 r0 s0 a0, 1 r1 s1 a1]),
                _ /* K = 1 */ => lockstep!(G, T, NT, g, src, o, i, first, part, [0 r0 s0 a0]),
            }
        }
    }
    for i in K * part..n {
        for p in 0..passes {
            let (g, mut o) = (g.tokens_on(p * NT), out.tokens_on(p * NT));
            lockstep!(G, T, NT, g, src, o, i, rows.start + i, 0, [0 r0 s0 a0]);
        }
    }
    Ok(())
}

/// Rows `first + k·part` (k listed with a reader, scratch and accumulator name each) times
/// the NT tokens of x, chunk by chunk in lockstep, two chunks of a row at a time
/// ([`Gemv::fma_pair`]): each chunk is decoded once and multiplied into its row's NT
/// accumulators; the sums go to output rows `i + k·part`. Written out per
/// row (a macro, not an array and a loop) so that every reader and accumulator stays in
/// registers.
macro_rules! lockstep {
    ($G:ty, $T:ty, $NT:ident, $g:ident, $src:ident, $out:ident, $i:expr, $first:expr, $part:expr,
     [$($k:literal $r:ident $s:ident $a:ident),+]) => {{
        let cols = $g.cols();
        let full = cols / CHUNK;
        $(
            let mut $r = $src.row::<<$G as Gemv<$T>>::S>($first + $k * $part, $s);
            let mut $a = [<$G as Gemv<$T>>::zero(); $NT];
        )+
        for ch in (0..full - full % 2).step_by(2) {
            $(
                let w = [<$G as Gemv<$T>>::full(&mut $r, ch), <$G as Gemv<$T>>::full(&mut $r, ch + 1)];
                $g.fma_pair::<$NT>(&mut $a, w, ch);
            )+
        }
        if full % 2 == 1 {
            $( $g.fma::<$NT>(&mut $a, <$G as Gemv<$T>>::full(&mut $r, full - 1), full - 1); )+
        }
        if full * CHUNK < cols {
            $( $g.fma::<$NT>(&mut $a, <$G as Gemv<$T>>::tail(&mut $r, full), full); )+
        }
        // The sums go out before the rows' mask checks: with the checks first, their error
        // path (a call) made the compiler store the accumulators to the stack after the loop
        // and reload them for the sums, and 24% of the masked GEMV's samples sat on those
        // reloads (`perf`, Wanda 70%, default model); after, 12%. On an error the caller
        // drops the output.
        put_rows::<$G, $T, $NT, _>(&mut $out, $i, $part, [$( $a ),+]);
        $( $r.finish()?; )+
    }};
}
use lockstep;

/// Each token's sums of the K rows `i + k·part` (k < K) into `out`, two rows at a time
/// ([`Gemv::sum_pair`]); tokens past `out`'s are dropped.
///
/// # Safety
/// The CPU runs `G::S`.
#[inline(always)]
unsafe fn put_rows<G: Gemv<T>, T: Stored, const NT: usize, const K: usize>(
    out: &mut Dest<'_>,
    i: usize,
    part: usize,
    rows: [[G::A; NT]; K],
) {
    let tokens = out.tokens;
    for k in (0..K - K % 2).step_by(2) {
        for (t, (&a, &b)) in rows[k].iter().zip(&rows[k + 1]).enumerate().take(tokens) {
            let [s0, s1] = G::sum_pair(a, b);
            out.put(i + k * part, t, s0);
            out.put(i + (k + 1) * part, t, s1);
        }
    }
    if K % 2 == 1 {
        for (t, &a) in rows[K - 1].iter().enumerate().take(tokens) {
            out.put(i + (K - 1) * part, t, G::sum(a));
        }
    }
}

/// Tiles of [`TILE_ROWS`] rows: [`TILE_COLS`] columns at a time decoded into an f32 block
/// stored column by column ([column][row], the columns in x's lane order), then multiplied
/// by the tokens in outer products: for each column, the tile's rows (a few vectors) times
/// each token's value of that column (broadcast), summed into [rows × tokens] accumulators
/// ([`micro`]; no horizontal sums).
#[inline(always)]
unsafe fn prefill<S: Simd, T: Stored, Src: Source<T>>(
    job: &Activations,
    src: &Src,
    rows: Range<usize>,
    out: Dest<'_>,
) -> Result<()> {
    // Masked bf16 rows as dense pairs where they store at least 40% of a dense row's bytes
    // (up to about 66% pruned); sparser, only their pairs that keep a weight. On an AMD EPYC
    // (Zen 4, 2 threads, the default model pruned by Wanda, sparse / dense prefill of 128
    // and 512 tokens): 70% pruned, kept pairs 1.07-1.15x, dense pairs 0.96-1.03x; 60%, both
    // 0.95-1.02x; LLaMA-2-7B shapes at 70% (64 tokens), both 0.94-0.98x. (With the code
    // of 2026-12-05, on that session's AMD EPYC, the kept pairs were 0.95x at 70%, 1.02x at
    // 80% and 1.11x at 90%, and the cut was 30%.)
    if reads_pairs::<S, T, Src>(job) {
        let stored = src.bytes_before(rows.end) - src.bytes_before(rows.start);
        return if 10 * stored >= 4 * 2 * rows.len() * job.cols {
            prefill_pairs::<S, T, Src>(job, src, rows, out)
        } else {
            prefill_kept::<S, T, Src, 3, true>(job, src, rows, out)
        };
    }
    // Masked rows that keep at most 55% of their weights are listed (the work is the kept
    // count); denser ones are decoded into the dense tiles. On an Intel Xeon (Emerald
    // Rapids; 128 tokens, 2 threads, bf16, the default model's shapes) listed rows ran
    // 0.83–0.88x the dense speed at 30% pruned, 0.91–0.98x at 40%, 1.00–1.07x at 50% and
    // 1.03–1.12x at 55%; decoded into tiles, 0.89–1.02x at all of them.
    let kept = src.values_before(rows.end) - src.values_before(rows.start);
    let listed = Src::MASKED && 100 * kept <= LISTED_MAX_PERCENT * rows.len() * job.cols;
    // Dense, AVX-512: 2 row vectors × 12 tokens = 24 accumulators; 8 lanes: 4 × 2 = 8.
    match (listed, S::LANES) {
        (true, 16) => prefill_kept::<S, T, Src, 3, false>(job, src, rows, out),
        (true, _) => prefill_kept::<S, T, Src, 6, false>(job, src, rows, out),
        (false, 16) => prefill_tiles::<S, T, Src, 2, 12>(job, src, rows, out),
        (false, _) => prefill_tiles::<S, T, Src, 4, 2>(job, src, rows, out),
    }
}

/// Whether [`prefill`] of `Src` rows reads x as bf16 pairs (masked bf16 rows with 16 lanes,
/// pairs ready).
fn reads_pairs<S: Simd, T: Stored, Src: Source<T>>(job: &Activations) -> bool {
    Src::MASKED && T::DTYPE == DType::BF16 && S::LANES == 16 && job.pairs().ready()
}

/// [`prefill`] of masked bf16 rows where x is in bf16 pairs ([`super::bf16_pairs`]): each
/// tile's rows decoded chunk by chunk into column pairs (zeros where pruned;
/// [`Simd::expand_bf16_pairs`], with VBMI2 one `vpexpandw` a chunk), then multiplied as dense
/// rows by `vdpbf16ps`.
#[inline(always)]
unsafe fn prefill_pairs<S: Simd, T: Stored, Src: Source<T>>(
    job: &Activations,
    src: &Src,
    rows: Range<usize>,
    out: Dest<'_>,
) -> Result<()> {
    let chunks = job.in_pad / CHUNK;
    let stride = chunks * CHUNK / 2;
    let mut tile: Aligned<u32> = Aligned::zeros(TILE_ROWS * stride);
    let mut scratch = src.scratch();
    // SAFETY: the tile's rows are `stride` whole pairs each, which covers x's pairs
    // (⌈cols / 2⌉ ≤ in_pad / 2), and stay put until the next tile is decoded.
    super::bf16_pairs::prefill_rows(
        job.pairs(),
        rows,
        out,
        #[inline(always)]
        |range| {
            for (i, r) in range.enumerate() {
                let mut reader = src.row::<S>(r, &mut scratch);
                for ch in 0..chunks {
                    pairs_of::<S, T, _>(&mut reader, ch, job.cols, tile.as_mut_ptr().add(i * stride + ch * 16));
                }
                reader.finish()?;
            }
            Ok(super::bf16_pairs::TileRows { first: tile.as_ptr().cast(), stride: 2 * stride, whole_pairs: stride })
        },
    )
}

/// [`prefill`] with RV row vectors (RV · LANES = [`TILE_ROWS`]) and NT tokens per micro-kernel
/// (NT divides [`MT`]).
#[inline(always)]
unsafe fn prefill_tiles<S: Simd, T: Stored, Src: Source<T>, const RV: usize, const NT: usize>(
    job: &Activations,
    src: &Src,
    rows: Range<usize>,
    mut out: Dest<'_>,
) -> Result<()> {
    assert!(RV * S::LANES == TILE_ROWS && MT.is_multiple_of(NT), "infer_linear: prefill micro-kernel shape");
    const { assert!(TILE_COLS.is_multiple_of(CHUNK) && TILE_ROWS.is_multiple_of(16)) };
    let (in_pad, tok_pad, tokens) = (job.in_pad, job.tok_pad, job.tokens);
    let chunks = in_pad / CHUNK;
    let mut scratch: Vec<Scratch<T>> = (0..TILE_ROWS).map(|_| src.scratch()).collect();
    // decoded: [TILE_ROWS][TILE_COLS] (row by row, zeros past the rows); tile: its transpose
    // [TILE_COLS][TILE_ROWS]; sums: [tok_pad][TILE_ROWS].
    let mut decoded = Aligned::<f32>::zeros(TILE_ROWS * TILE_COLS);
    let (mut tile, mut sums) =
        (Aligned::<f32>::zeros(TILE_COLS * TILE_ROWS), Aligned::<f32>::zeros(tok_pad * TILE_ROWS));
    let first = rows.start;
    for start in rows.clone().step_by(TILE_ROWS) {
        let n_rows = TILE_ROWS.min(rows.end - start);
        let mut readers: Vec<Src::Reader<'_>> = Vec::with_capacity(n_rows);
        for (s, r) in scratch.iter_mut().zip(start..start + n_rows) {
            readers.push(src.row::<S>(r, s));
        }
        if n_rows < TILE_ROWS {
            decoded.fill(0.0);
        }
        for c0 in (0..chunks).step_by(TILE_COLS / CHUNK) {
            let c1 = (c0 + TILE_COLS / CHUNK).min(chunks);
            let width = (c1 - c0) * CHUNK;
            // Decoded row by row (whole-vector stores), then transposed 16×16 at a time: one
            // scalar store per weight into the tile's columns cost ~45 ms of every prefill of
            // the default model (bf16, 2 threads), ~7% of 512 tokens' and most of 8 tokens'.
            for (i, reader) in readers.iter_mut().enumerate() {
                for ch in c0..c1 {
                    // SAFETY: row i < TILE_ROWS, columns (ch − c0)·CHUNK .. + CHUNK ≤ TILE_COLS.
                    S::store(
                        chunk_of::<S, T, _>(reader, ch, job.cols),
                        decoded.as_mut_ptr().add(i * TILE_COLS + (ch - c0) * CHUNK),
                    );
                }
            }
            for i0 in (0..TILE_ROWS).step_by(16) {
                for k0 in (0..width).step_by(16) {
                    // SAFETY: rows i0 .. i0 + 16 ≤ TILE_ROWS, columns k0 .. k0 + 16 ≤ width of
                    // both (TILE_ROWS and width are multiples of 16).
                    S::transpose_16x16(
                        decoded.as_ptr().add(i0 * TILE_COLS + k0),
                        TILE_COLS,
                        tile.as_mut_ptr().add(k0 * TILE_ROWS + i0),
                        TILE_ROWS,
                    );
                }
            }
            for t0 in (0..tokens.next_multiple_of(NT)).step_by(NT) {
                // SAFETY: tokens t0 .. t0 + NT of one block of MT (NT divides MT) and columns
                // 32·c0 + width ≤ in_pad of x; the tile holds width columns of TILE_ROWS;
                // sums rows t0 .. t0 + NT.
                micro::<S, RV, NT>(
                    tile.as_ptr(),
                    job.x.as_ptr().add(t0 / MT * MT * in_pad + c0 * CHUNK * MT + t0 % MT),
                    width,
                    sums.as_mut_ptr().add(t0 * TILE_ROWS),
                    c0 == 0,
                );
            }
        }
        for reader in &readers {
            reader.finish()?;
        }
        for (t, row) in sums.chunks_exact(TILE_ROWS).take(tokens).enumerate() {
            let dst = out.token_rows(t, start - first..start - first + n_rows);
            // A whole tile's row as one fixed-size copy (vector moves, not a memcpy call per
            // token and tile: that call cost ~4% of a 512-token prefill).
            match <&mut [f32; TILE_ROWS]>::try_from(&mut *dst) {
                Ok(whole) => *whole = row.try_into().expect("a row of sums is TILE_ROWS long"),
                Err(_) => dst.copy_from_slice(&row[..n_rows]),
            }
        }
    }
    Ok(())
}

/// sums[t][r] += Σ_k tile[k][r] · x[k][t] (= with `first`: the sums start from zero) for the
/// tile's [`TILE_ROWS`] rows (RV vectors), NT tokens (x's columns [MT] apart) and `width`
/// columns: per column, RV vector loads, NT broadcasts and RV·NT fused multiply-adds.
#[inline(always)]
unsafe fn micro<S: Simd, const RV: usize, const NT: usize>(
    tile: *const f32,
    x: *const f32,
    width: usize,
    sums: *mut f32,
    first: bool,
) {
    // acc[t][v]: token t, rows v·LANES .., starting from the sums so far.
    let mut acc = [[S::zero_v(); RV]; NT];
    if !first {
        for (t, acc_t) in acc.iter_mut().enumerate() {
            for (v, a) in acc_t.iter_mut().enumerate() {
                *a = S::load_v(sums.add(t * TILE_ROWS + v * S::LANES));
            }
        }
    }
    // Four columns per iteration (width is a multiple of 32): the loop's counter and pointer
    // updates take execution ports from the fused multiply-adds a quarter as often (a
    // 512-token prefill of the default model in f32: one column 760 tokens/s, two 785, four
    // 800, eight 765; an Intel Xeon, 2 threads).
    for k0 in (0..width).step_by(4) {
        for k in k0..k0 + 4 {
            let mut w = [S::zero_v(); RV];
            for (v, wv) in w.iter_mut().enumerate() {
                *wv = S::load_v(tile.add(k * TILE_ROWS + v * S::LANES));
            }
            for (t, acc_t) in acc.iter_mut().enumerate() {
                let xb = S::splat_v(*x.add(k * MT + t));
                for (a, &wv) in acc_t.iter_mut().zip(&w) {
                    *a = S::fma_v(wv, xb, *a);
                }
            }
        }
    }
    for (t, acc_t) in acc.iter().enumerate() {
        for (v, &a) in acc_t.iter().enumerate() {
            S::store_v(a, sums.add(t * TILE_ROWS + v * S::LANES));
        }
    }
}

/// [`prefill`] for masked rows, NV vectors of LANES tokens (NV · LANES = [`MT`]): each row of a
/// tile is listed as its kept weights, chunk by chunk straight from the mask and the packed
/// values (the values widened to f32; their columns' offsets in a token block, x's lane of
/// the column · MT, compressed by the mask), then for each pass over token blocks (with 16
/// lanes up to three blocks at once) and each [`KC`]-column step (two steps for up to two
/// blocks), every row's kept weights of the step are multiplied into the pass's tokens
/// ([`kept_micro`]).
///
/// With PAIRS (bf16 weights, x in [`Pairs`], AVX-512): the list holds the row's column pairs
/// that keep a weight (both weights' bf16 bits in one u32, stored as f32 bits, zero where
/// pruned; offset pair · MT), multiplied by `vdpbf16ps` ([`super::bf16_pairs`]).
#[inline(always)]
unsafe fn prefill_kept<S: Simd, T: Stored, Src: Source<T>, const NV: usize, const PAIRS: bool>(
    job: &Activations,
    src: &Src,
    rows: Range<usize>,
    mut out: Dest<'_>,
) -> Result<()> {
    assert!(NV * S::LANES == MT && NV <= 6, "infer_linear: masked prefill kernel shape");
    assert!(!PAIRS || (NV == 3 && job.pairs().ready()), "infer_linear: masked pairs kernel");
    const { assert!(KC.is_multiple_of(CHUNK)) };
    let (in_pad, tok_pad, tokens) = (job.in_pad, job.tok_pad, job.tokens);
    if u32::try_from(in_pad * MT).is_err() {
        return Err(Error::invalid(format!("infer_linear: {} columns are too many for the prefill kernel", job.cols)));
    }
    let chunks = in_pad / CHUNK;
    let steps = chunks.div_ceil(KC / CHUNK);
    let mut scratch = src.scratch();
    // ws, ats: the tile's rows one after the other; row i's entries of step s are
    // starts[i·(steps+1) + s] .. starts[i·(steps+1) + s + 1]; sums [TILE_ROWS][tok_pad].
    let (mut ws, mut ats): (Vec<f32>, Vec<u32>) =
        (Vec::with_capacity(TILE_ROWS * in_pad), Vec::with_capacity(TILE_ROWS * in_pad));
    let mut starts = vec![0usize; TILE_ROWS * (steps + 1)];
    // Column c of a chunk is x's lane offsets[c] / MT of it (the lane order of decoded chunks).
    let order = if T::DTYPE == DType::BF16 { S::BF16_COLUMNS } else { NATURAL };
    let mut offsets = [0u32; CHUNK];
    for (lane, &column) in order.iter().enumerate() {
        offsets[column as usize] = (lane * MT) as u32;
    }
    let mut sums = Aligned::zeros(TILE_ROWS * tok_pad);
    // Token blocks, and the values between two blocks' activations.
    let (blocks, stride) = (tokens.div_ceil(MT), MT * in_pad);
    let first = rows.start;
    for start in rows.clone().step_by(TILE_ROWS) {
        let n_rows = TILE_ROWS.min(rows.end - start);
        ws.clear();
        ats.clear();
        for i in 0..n_rows {
            let mut reader = src.row::<S>(start + i, &mut scratch);
            let bounds = &mut starts[i * (steps + 1)..(i + 1) * (steps + 1)];
            ws.reserve(chunks * CHUNK);
            ats.reserve(chunks * CHUNK);
            let mut len = ws.len();
            // Pairs: two chunks (32 pairs) at a time; KC / CHUNK is even.
            for ch in (0..chunks).step_by(if PAIRS { 2 } else { 1 }) {
                if ch % (KC / CHUNK) == 0 {
                    bounds[ch / (KC / CHUNK)] = len;
                }
                // SAFETY: `reserve` made room for a whole row (chunks · CHUNK elements) past
                // the row's start, and at most CHUNK are written per chunk from `len`
                // (in_pad · MT fits u32, checked above).
                let (w_at, at_at) = (ws.as_mut_ptr().add(len), ats.as_mut_ptr().add(len));
                len += if PAIRS {
                    let mut pairs = [0u32; CHUNK];
                    for (k, half) in pairs.chunks_exact_mut(CHUNK / 2).enumerate().take(chunks - ch) {
                        pairs_of::<S, T, _>(&mut reader, ch + k, job.cols, half.as_mut_ptr());
                    }
                    // A pair whose bits read as ±0.0 is dropped: its products are zeros.
                    let at = (ch * CHUNK / 2 * MT) as u32;
                    S::compress_nonzero(S::load(pairs.as_ptr().cast()), at, MT as u32, w_at, at_at)
                } else {
                    // Straight from the mask and the packed values: the values as they are
                    // (widened), their columns' offsets compressed by the mask.
                    let (bits, values) = reader.chunk_at::<S>(ch, job.cols);
                    T::widen::<S>(values, w_at);
                    S::compress_offsets(bits, (ch * CHUNK * MT) as u32, &offsets, at_at)
                };
            }
            // SAFETY: every element below `len` was written above.
            ws.set_len(len);
            ats.set_len(len);
            bounds[steps] = ws.len();
            reader.finish()?;
        }
        // Without PAIRS, step 0 sets the sums of every token of every row (up to the tokens
        // rounded up to whole vectors): no memset.
        if PAIRS {
            sums[..n_rows * tok_pad].fill(0.0);
        }
        for s0 in (0..steps).step_by(2) {
            let mut b = 0;
            while b < blocks {
                // Block b of x (read only without PAIRS, where it holds in_pad · MT values).
                let x = job.x.as_ptr().wrapping_add(b * stride);
                // The blocks of this pass: with 16 lanes (without PAIRS) three whole blocks,
                // or the last one or two whole and the partial last one (at most 9 vectors of
                // tokens, in 2 sets of accumulators: each kept weight and its offset are read
                // once for all of them); otherwise one block (one at a time). A whole block
                // and a partial one in one pass: a 64-token prompt of LLaMA-2-7B's shapes
                // at 50% ran 0.86x the dense speed in two passes (3 vectors, then 1).
                let rest = tokens - b * MT;
                let (whole, part) = match rest {
                    _ if PAIRS || NV != 3 || rest <= MT => (0, rest.min(MT).div_ceil(S::LANES)),
                    _ if rest >= 3 * MT => (3, 0),
                    _ if rest >= 2 * MT => (2, (rest - 2 * MT).div_ceil(S::LANES)),
                    _ => (1, (rest - MT).div_ceil(S::LANES)),
                };
                // Two steps per call for up to two blocks, one for three: the blocks'
                // activations for the columns of a call (48 or 36 KiB) stay in L1.
                let span = if whole + usize::from(part > 0) <= 2 { 2 } else { 1 };
                for s in (s0..(s0 + 2).min(steps)).step_by(span) {
                    let end = (s + span).min(steps);
                    for i in 0..n_rows {
                        let list = starts[i * (steps + 1) + s]..starts[i * (steps + 1) + end];
                        let (w, at) = (&ws[list.clone()], &ats[list]);
                        // SAFETY: sums row i holds tok_pad ≥ (b + 1) · MT values.
                        let acc = sums.as_mut_ptr().add(i * tok_pad + b * MT);
                        if PAIRS {
                            // SAFETY: pairs are ready (asserted), hence AVX512-BF16; a kept
                            // pair's offset is below the block's pairs · MT (past ⌈cols / 2⌉
                            // every pair is zero).
                            super::bf16_pairs::kept(job.pairs(), b, w, at, acc);
                            continue;
                        }
                        // SAFETY: without PAIRS x is padded (`part` checks): blocks b .. b + whole
                        // (and the next one where part > 0) hold in_pad · MT values each; every
                        // `at` < in_pad · MT; sums row i holds tok_pad ≥ (b + whole + 1) · MT
                        // values where part > 0, (b + whole) · MT otherwise.
                        let setting = s == 0;
                        // NV is 3 with 16 lanes, 6 with 8: each compiles its own arms only.
                        if NV == 3 {
                            match (whole, part) {
                                (3, _) => kept_micro::<S, 3, 3, 9, 2>(w, at, x, stride, acc, setting),
                                (2, 0) => kept_micro::<S, 3, 2, 6, 2>(w, at, x, stride, acc, setting),
                                (2, 1) => kept_micro::<S, 3, 2, 7, 2>(w, at, x, stride, acc, setting),
                                (2, 2) => kept_micro::<S, 3, 2, 8, 2>(w, at, x, stride, acc, setting),
                                (2, _) => kept_micro::<S, 3, 2, 9, 2>(w, at, x, stride, acc, setting),
                                (1, 1) => kept_micro::<S, 3, 1, 4, 2>(w, at, x, stride, acc, setting),
                                (1, 2) => kept_micro::<S, 3, 1, 5, 2>(w, at, x, stride, acc, setting),
                                (1, _) => kept_micro::<S, 3, 1, 6, 2>(w, at, x, stride, acc, setting),
                                (_, 1) => kept_micro::<S, NV, 0, 1, 4>(w, at, x, stride, acc, setting),
                                (_, 2) => kept_micro::<S, NV, 0, 2, 4>(w, at, x, stride, acc, setting),
                                _ => kept_micro::<S, NV, 0, 3, 4>(w, at, x, stride, acc, setting),
                            }
                        } else {
                            match part {
                                1 => kept_micro::<S, NV, 0, 1, 4>(w, at, x, stride, acc, setting),
                                2 => kept_micro::<S, NV, 0, 2, 4>(w, at, x, stride, acc, setting),
                                3 => kept_micro::<S, NV, 0, 3, 4>(w, at, x, stride, acc, setting),
                                4 => kept_micro::<S, NV, 0, 4, 4>(w, at, x, stride, acc, setting),
                                5 => kept_micro::<S, NV, 0, 5, 4>(w, at, x, stride, acc, setting),
                                _ => kept_micro::<S, NV, 0, 6, 4>(w, at, x, stride, acc, setting),
                            }
                        }
                    }
                }
                b += whole + usize::from(part > 0);
            }
        }
        // Into y token by token (each token's rows are adjacent there): 16 rows × 16 tokens
        // at a time transposed (`transpose_16x16`; one scalar copy per value took ~7% of a
        // 96-token masked prefill), the rest value by value.
        let (whole_rows, whole_tokens) = (n_rows / 16 * 16, tokens / 16 * 16);
        let mut block = [0f32; 16 * 16];
        let rows_at = start - first;
        for i0 in (0..whole_rows).step_by(16) {
            for t0 in (0..whole_tokens).step_by(16) {
                // SAFETY: sums rows i0 .. i0 + 16 ≤ n_rows hold tok_pad ≥ t0 + 16 values each;
                // the block is 16 × 16.
                S::transpose_16x16(sums.as_ptr().add(i0 * tok_pad + t0), tok_pad, block.as_mut_ptr(), 16);
                for (t, rows) in block.chunks_exact(16).enumerate() {
                    let y: &mut [f32; 16] =
                        out.token_rows(t0 + t, rows_at + i0..rows_at + i0 + 16).try_into().expect("16 rows");
                    *y = rows.try_into().expect("16 rows");
                }
            }
        }
        for t in 0..tokens {
            let y = out.token_rows(t, rows_at..rows_at + n_rows);
            let done = if t < whole_tokens { whole_rows } else { 0 };
            for (i, v) in y.iter_mut().enumerate().skip(done) {
                *v = sums[i * tok_pad + t];
            }
        }
    }
    Ok(())
}

/// sums[t] += Σ_e ws[e] · x[ats[e] + t] for the tokens of NT vectors: B whole blocks of NV
/// vectors, then NT − B·NV vectors of the next block (x: the first block's activations,
/// [column][MT], each next one `stride` values further; sums: the first block's, each next
/// one MT further): SETS kept weights per step in SETS sets of accumulators (the chains of
/// fused multiply-adds overlap), added together at the end. A weight and its offset are
/// loaded once for all the blocks' products. With `first`, the sums are set (=), not added
/// to.
#[inline(always)]
unsafe fn kept_micro<S: Simd, const NV: usize, const B: usize, const NT: usize, const SETS: usize>(
    ws: &[f32],
    ats: &[u32],
    x: *const f32,
    stride: usize,
    sums: *mut f32,
    first: bool,
) {
    /// Vector v's offset from a block's start in `block` values per block.
    #[inline(always)]
    fn offset<const NV: usize, const B: usize>(v: usize, block: usize, lanes: usize) -> usize {
        if v < B * NV {
            v / NV * block + v % NV * lanes
        } else {
            B * block + (v - B * NV) * lanes
        }
    }
    // A function, not a closure: a closure may be compiled apart from the caller's
    // instruction set, its intrinsics then calls.
    #[inline(always)]
    unsafe fn one<S: Simd, const NV: usize, const B: usize, const NT: usize>(
        set: &mut [S::V; NT],
        w: f32,
        xk: *const f32,
        stride: usize,
    ) {
        let w = S::splat_v(w);
        for (v, a) in set.iter_mut().enumerate() {
            *a = S::fma_v(w, S::load_v(xk.add(offset::<NV, B>(v, stride, S::LANES))), *a);
        }
    }
    const { assert!(NV > 0 && B * NV <= NT) };
    let mut acc = [[S::zero_v(); NT]; SETS];
    let full = ws.len() / SETS * SETS;
    for (w_set, at_set) in ws[..full].chunks_exact(SETS).zip(ats[..full].chunks_exact(SETS)) {
        for ((set, &w), &at) in acc.iter_mut().zip(w_set).zip(at_set) {
            one::<S, NV, B, NT>(set, w, x.add(at as usize), stride);
        }
    }
    for (&w, &at) in ws[full..].iter().zip(&ats[full..]) {
        one::<S, NV, B, NT>(&mut acc[0], w, x.add(at as usize), stride);
    }
    for v in 0..NT {
        let mut total = acc[0][v];
        for set in &acc[1..] {
            total = S::add_v(total, set[v]);
        }
        let p = sums.add(offset::<NV, B>(v, MT, S::LANES));
        S::store_v(if first { total } else { S::add_v(S::load_v(p), total) }, p);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::arch::x86_64::*;

    use super::*;

    /// Two rows' sums reduced at once equal each row's own reduction bit for bit, with one
    /// and with two sum registers per row (random values of mixed signs and magnitudes).
    #[test]
    fn paired_row_sums_equal_single_ones_bit_for_bit() {
        if !Isa::best().is_avx512() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let values = crate::testing::random_f32(64 * 200, 1.0, 3);
        let scaled: Vec<f32> = values.iter().enumerate().map(|(i, v)| v * 10f32.powi((i % 7) as i32 - 3)).collect();
        // SAFETY: the CPU runs AVX-512F (checked above); each load reads 16 of the values.
        unsafe {
            let vector = |k: usize| _mm512_loadu_ps(scaled[16 * k..].as_ptr());
            for r in 0..50 {
                let (a, b) = ([vector(4 * r), vector(4 * r + 1)], [vector(4 * r + 2), vector(4 * r + 3)]);
                type Two = x86::Bf16Gemv<2>;
                let got = <Two as Gemv<half::bf16>>::sum_pair(a, b);
                let want = [<Two as Gemv<half::bf16>>::sum(a), <Two as Gemv<half::bf16>>::sum(b)];
                assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits), "two sums, case {r}");
                type One = x86::Bf16Gemv<1>;
                let got = <One as Gemv<half::bf16>>::sum_pair([a[0]], [b[1]]);
                let want = [<One as Gemv<half::bf16>>::sum([a[0]]), <One as Gemv<half::bf16>>::sum([b[1]])];
                assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits), "one sum, case {r}");
            }
        }
    }

    /// The AVX-512 transpose of a prefill block writes what the portable loop writes (every
    /// element, the padding's zeros too), for partial blocks of tokens, columns that end
    /// inside a chunk or a 16-column half, and both lane orders.
    #[test]
    fn transposed_blocks_match_the_portable_loop() {
        if !Isa::best().is_avx512() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let orders = [NATURAL, <super::super::simd::Avx512<true> as Simd>::BF16_COLUMNS];
        for (n, cols) in [(48, 576), (1, 40), (17, 17), (48, 64), (33, 100), (0, 32)] {
            let src = crate::testing::random_f32(n * cols, 1.0, (n * cols) as u64);
            let in_pad = cols.next_multiple_of(CHUNK);
            for columns in &orders {
                let (mut want, mut got) = (vec![f32::NAN; MT * in_pad], vec![f32::NAN; MT * in_pad]);
                transpose_block(&src, cols, columns, &mut want);
                // SAFETY: the CPU runs AVX-512F (checked above).
                unsafe { x86::transpose_block(&src, cols, columns, &mut got) };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{n} tokens, {cols} columns");
                let data = src.iter().filter(|v| **v != 0.0).count();
                assert_eq!(want.iter().filter(|v| **v != 0.0).count(), data, "every value in place once");
            }
        }
    }
}
