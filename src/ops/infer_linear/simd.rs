//! The instruction sets of the fast inference linear (`cpu_fast.rs`). Each gives f32
//! vectors `V` and chunks `C` of [`CHUNK`] = 32 columns held in registers, and decodes
//! stored weights into a chunk of f32:
//! - dense: 32 consecutive values (f32, or bf16 widened by a 16-bit left shift, exact);
//! - masked: `mask` bit j set means column j is kept, its value is the next one of the
//!   packed values (the first popcount(mask) values at `p` are used), others are 0.
//!
//! A decoded bf16 chunk may hold its columns in another order ([`Simd::BF16_COLUMNS`]: the
//! column of each lane): a bf16 pair in a 32-bit lane widens to two f32 with one AND (the
//! odd column) and one shift (the even one), so even and odd columns land in separate
//! vectors. The activations are laid out in the same order, which leaves every dot product
//! unchanged. f32 chunks are in column order.
//!
//! [`Avx512`] (16 lanes) expands with `vexpandps` and, for bf16, `vpexpandw` (VBMI2) or,
//! without VBMI2, 16-bit loads widened then expanded in registers (column order). [`Avx2`]
//! (8 lanes, with FMA) spreads plain loads by 256-entry tables per mask byte (`vpermps` for
//! f32, `pshufb` for bf16). [`Portable`] is plain arrays and loops that the compiler
//! vectorizes for the target (SSE2, NEON); column order.
//!
//! 2:4 positions become mask bytes ([`Simd::two_four_mask`]): a positions byte holds two
//! groups of four columns, each a nibble (two 2-bit positions) looked up in a 16-entry
//! table (`pshufb` on x86).
//!
//! Safety contract of every decoding function: `p` points to at least 32 readable elements
//! (callers copy the last values of a buffer into a padded block), and every function runs
//! only where its instruction set was detected.

/// Columns per chunk.
pub(super) const CHUNK: usize = 32;

/// One instruction set: f32 vectors, 32-column chunks and the weight decoders.
pub(crate) trait Simd: Copy {
    /// One f32 vector.
    type V: Copy;
    /// 32 f32 values.
    type C: Copy;
    /// f32 lanes of `V`.
    const LANES: usize;
    /// The column (within the chunk) of each lane of a decoded bf16 chunk.
    const BF16_COLUMNS: [u8; CHUNK];
    /// A zero vector.
    unsafe fn zero_v() -> Self::V;
    /// `LANES` f32 at p.
    unsafe fn load_v(p: *const f32) -> Self::V;
    /// Every lane x.
    unsafe fn splat_v(x: f32) -> Self::V;
    /// Writes `LANES` f32 at p.
    unsafe fn store_v(v: Self::V, p: *mut f32);
    /// acc + a·b.
    unsafe fn fma_v(a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    /// a + b.
    unsafe fn add_v(a: Self::V, b: Self::V) -> Self::V;
    /// Sum of the lanes.
    unsafe fn sum_v(v: Self::V) -> f32;
    /// A zero chunk.
    unsafe fn zero() -> Self::C;
    /// 32 f32 at p.
    unsafe fn load(p: *const f32) -> Self::C;
    /// Writes 32 f32 at p.
    unsafe fn store(c: Self::C, p: *mut f32);
    /// The nonzero lanes of `c` packed from the start: their values to `ws` and
    /// `at + lane·step` to `ats`; returns how many. Both have room for 32 elements (lanes
    /// past the count may be written too).
    #[inline(always)]
    unsafe fn compress_nonzero(c: Self::C, at: u32, step: u32, ws: *mut f32, ats: *mut u32) -> usize {
        let mut lanes = [0f32; CHUNK];
        Self::store(c, lanes.as_mut_ptr());
        let mut n = 0;
        for (j, &v) in lanes.iter().enumerate() {
            *ws.add(n) = v;
            *ats.add(n) = at + j as u32 * step;
            n += usize::from(v != 0.0);
        }
        n
    }
    /// The masked prefill's listing of a chunk's kept columns: for the set bits
    /// c_0 < c_1 < … of `bits`, ats[j] = at + offsets[c_j]; returns how many. `ats` has room
    /// for 32 elements (entries past the count may be written too).
    #[inline(always)]
    unsafe fn compress_offsets(bits: u32, at: u32, offsets: &[u32; CHUNK], ats: *mut u32) -> usize {
        let (mut rest, mut n) = (bits, 0);
        while rest != 0 {
            *ats.add(n) = at + offsets[rest.trailing_zeros() as usize];
            n += 1;
            rest &= rest - 1;
        }
        n
    }
    /// 32 bf16 (as u16) at p widened to f32 in their order, written to `out`.
    #[inline(always)]
    unsafe fn widen_bf16(p: *const u16, out: *mut f32) {
        for i in 0..CHUNK {
            *out.add(i) = bf16_bits_to_f32(*p.add(i));
        }
    }
    /// acc + w·x, lane by lane.
    unsafe fn fma(w: Self::C, x: Self::C, acc: Self::C) -> Self::C;
    /// Sum of the 32 values.
    unsafe fn sum(c: Self::C) -> f32;
    /// 32 bf16 (as u16) at p, widened.
    unsafe fn dense_bf16(p: *const u16) -> Self::C;
    /// f32 values at p expanded to the columns `mask` keeps; p must be readable for 32
    /// values whatever the mask (whole vectors are loaded).
    unsafe fn expand_f32(mask: u32, p: *const f32) -> Self::C;
    /// bf16 values at p expanded to the columns `mask` keeps, widened; p must be readable for
    /// 32 values whatever the mask.
    unsafe fn expand_bf16(mask: u32, p: *const u16) -> Self::C;
    /// bf16 values at p expanded to the columns `mask` keeps, written to `out` as the chunk's
    /// 16 column pairs ([`Self::bf16_pairs`] of [`Self::expand_bf16`], the same bits); p
    /// must be readable for 32 values whatever the mask.
    #[inline(always)]
    unsafe fn expand_bf16_pairs(mask: u32, p: *const u16, out: *mut u32) {
        Self::bf16_pairs(Self::expand_bf16(mask, p), out)
    }
    /// A chunk decoded from bf16 values (lane order [`Self::BF16_COLUMNS`]) as its 16 column
    /// pairs in column order, for [`super::bf16_pairs`]: out[p] holds the bf16 bits of
    /// column 2p (low half) and 2p + 1.
    #[inline(always)]
    unsafe fn bf16_pairs(c: Self::C, out: *mut u32) {
        let mut lanes = [0f32; CHUNK];
        Self::store(c, lanes.as_mut_ptr());
        let mut columns = [0u32; CHUNK];
        for (lane, &v) in lanes.iter().enumerate() {
            columns[Self::BF16_COLUMNS[lane] as usize] = v.to_bits() >> 16;
        }
        for (p, two) in columns.chunks_exact(2).enumerate() {
            *out.add(p) = two[0] | two[1] << 16;
        }
    }
    /// dst[j·dst_stride + i] = src[i·src_stride + j] for i, j < 16: a 16×16 block
    /// transposed (the prefill's weight tiles, decoded row by row, stored column by column).
    #[inline(always)]
    unsafe fn transpose_16x16(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
        for i in 0..16 {
            for j in 0..16 {
                *dst.add(j * dst_stride + i) = *src.add(i * src_stride + j);
            }
        }
    }
    /// Hints that the cache line at p will be read soon, into L2 (any address; nothing is
    /// read).
    #[inline(always)]
    unsafe fn prefetch(_p: *const u8) {}
    /// The column mask bytes of 2:4 rows from their position bytes (as many as `out`).
    unsafe fn two_four_mask(positions: &[u8], out: &mut [u8]) {
        two_four_bytes(positions, out)
    }
}

/// Column order.
pub(super) const NATURAL: [u8; CHUNK] = {
    let mut order = [0u8; CHUNK];
    let mut i = 0;
    while i < CHUNK {
        order[i] = i as u8;
        i += 1;
    }
    order
};

/// Even then odd columns of each `span` (16 or 32) columns: the order of bf16 pairs
/// widened by AND and shift in vectors of span/2 lanes.
#[cfg(target_arch = "x86_64")]
const fn paired(span: usize) -> [u8; CHUNK] {
    let mut order = [0u8; CHUNK];
    let mut i = 0;
    while i < CHUNK {
        let (block, at) = (i / span, i % span);
        let column = if at < span / 2 { 2 * at } else { 2 * (at - span / 2) + 1 };
        order[i] = (block * span + column) as u8;
        i += 1;
    }
    order
}

/// Mask nibble of one 2:4 group from its nibble of positions (two 2-bit positions).
const TWO_FOUR_NIBBLE: [u8; 16] = {
    let mut table = [0u8; 16];
    let mut code = 0;
    while code < 16 {
        table[code] = (1 << (code & 3)) | (1 << (code >> 2));
        code += 1;
    }
    table
};

/// 2:4 mask bytes one at a time (also the tail of the vector versions).
fn two_four_bytes(positions: &[u8], out: &mut [u8]) {
    for (o, &p) in out.iter_mut().zip(positions) {
        *o = TWO_FOUR_NIBBLE[(p & 15) as usize] | (TWO_FOUR_NIBBLE[(p >> 4) as usize] << 4);
    }
}

/// A stored weight element (f32 or bf16) decoded by any [`Simd`].
pub(crate) trait Stored: crate::storage::FloatElement {
    /// 32 dense values at p as f32 (see the module's safety contract).
    unsafe fn chunk<S: Simd>(p: *const Self) -> S::C;
    /// Packed values at p expanded to the columns `mask` keeps.
    unsafe fn expand<S: Simd>(mask: u32, p: *const Self) -> S::C;
    /// 32 values at p as f32 in their order, written to `out` (packed values stay packed).
    unsafe fn widen<S: Simd>(p: *const Self, out: *mut f32);
}

impl Stored for f32 {
    #[inline(always)]
    unsafe fn chunk<S: Simd>(p: *const Self) -> S::C {
        S::load(p)
    }
    #[inline(always)]
    unsafe fn expand<S: Simd>(mask: u32, p: *const Self) -> S::C {
        S::expand_f32(mask, p)
    }
    #[inline(always)]
    unsafe fn widen<S: Simd>(p: *const Self, out: *mut f32) {
        // A fixed-size copy (vector moves).
        out.cast::<[f32; CHUNK]>().write_unaligned(p.cast::<[f32; CHUNK]>().read_unaligned())
    }
}

impl Stored for half::bf16 {
    #[inline(always)]
    unsafe fn chunk<S: Simd>(p: *const Self) -> S::C {
        S::dense_bf16(p.cast())
    }
    #[inline(always)]
    unsafe fn expand<S: Simd>(mask: u32, p: *const Self) -> S::C {
        S::expand_bf16(mask, p.cast())
    }
    #[inline(always)]
    unsafe fn widen<S: Simd>(p: *const Self, out: *mut f32) {
        S::widen_bf16(p.cast(), out)
    }
}

/// Plain arrays and loops, vectorized by the compiler for the target.
#[derive(Clone, Copy, Debug)]
pub(super) struct Portable;

#[inline(always)]
fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

impl Simd for Portable {
    type V = [f32; 8];
    type C = [f32; CHUNK];
    const LANES: usize = 8;
    const BF16_COLUMNS: [u8; CHUNK] = NATURAL;

    #[inline(always)]
    unsafe fn zero_v() -> Self::V {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn load_v(p: *const f32) -> Self::V {
        p.cast::<Self::V>().read_unaligned()
    }
    #[inline(always)]
    unsafe fn splat_v(x: f32) -> Self::V {
        [x; 8]
    }
    #[inline(always)]
    unsafe fn store_v(v: Self::V, p: *mut f32) {
        p.cast::<Self::V>().write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn fma_v(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        std::array::from_fn(|i| acc[i] + a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn add_v(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn sum_v(v: Self::V) -> f32 {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
    #[inline(always)]
    unsafe fn zero() -> Self::C {
        [0.0; CHUNK]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::C {
        p.cast::<Self::C>().read_unaligned()
    }
    #[inline(always)]
    unsafe fn store(c: Self::C, p: *mut f32) {
        p.cast::<Self::C>().write_unaligned(c)
    }
    #[inline(always)]
    unsafe fn fma(w: Self::C, x: Self::C, acc: Self::C) -> Self::C {
        std::array::from_fn(|i| acc[i] + w[i] * x[i])
    }
    #[inline(always)]
    unsafe fn sum(c: Self::C) -> f32 {
        let mut v = [0f32; 8];
        for (i, &x) in c.iter().enumerate() {
            v[i % 8] += x;
        }
        Self::sum_v(v)
    }
    #[inline(always)]
    unsafe fn dense_bf16(p: *const u16) -> Self::C {
        let raw = p.cast::<[u16; CHUNK]>().read_unaligned();
        raw.map(bf16_bits_to_f32)
    }
    #[inline(always)]
    unsafe fn expand_f32(mask: u32, p: *const f32) -> Self::C {
        let raw = p.cast::<[f32; CHUNK]>().read_unaligned();
        expand_array(mask, &raw)
    }
    #[inline(always)]
    unsafe fn expand_bf16(mask: u32, p: *const u16) -> Self::C {
        let raw = p.cast::<[u16; CHUNK]>().read_unaligned();
        expand_array(mask, &raw.map(bf16_bits_to_f32))
    }
}

/// Column j takes the next packed value when bit j is set (branch-free; `k` never passes
/// 31 while it is read).
#[inline(always)]
fn expand_array(mask: u32, packed: &[f32; CHUNK]) -> [f32; CHUNK] {
    let mut out = [0f32; CHUNK];
    let mut k = 0usize;
    for (j, o) in out.iter_mut().enumerate() {
        let bit = (mask >> j) & 1;
        *o = if bit == 1 { packed[k & (CHUNK - 1)] } else { 0.0 };
        k += bit as usize;
    }
    out
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{expand_words, Avx2, Avx512};
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{transpose16, widen16};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{paired, two_four_bytes, Simd, CHUNK, NATURAL, TWO_FOUR_NIBBLE};

    /// AVX-512 (F, BW); with `VBMI2` the bf16 expand is one `vpexpandw` and bf16 chunks
    /// hold even then odd columns.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx512<const VBMI2: bool>;

    /// 16 bf16 (u16) in a 256-bit register widened to f32.
    #[inline(always)]
    pub(crate) unsafe fn widen16(v: __m256i) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16))
    }

    /// 32 bf16 in a 512-bit register as f32: (even columns, odd columns).
    #[inline(always)]
    unsafe fn split_pairs(v: __m512i) -> [__m512; 2] {
        [
            _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)),
            _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xffff_0000u32 as i32))),
        ]
    }

    /// `vexpandps` in its register form (see [`expand_words`]).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn expand_floats(mask: u16, v: __m512) -> __m512 {
        let mut v = v;
        std::arch::asm!(
            "vexpandps {v}{{{k}}}{{z}}, {v}",
            v = inout(zmm_reg) v,
            k = in(kreg) mask,
            options(pure, nomem, nostack),
        );
        v
    }

    /// `vpexpandw` in its register form: the compiler folds a load before the intrinsic into
    /// the memory-source form, which AMD Zen 4/5 run microcoded (the masked decode read
    /// 22 GB/s of a 45 GB/s machine with it, 45 GB/s without; on Intel both forms cost the
    /// same). The result overwrites the source register: AMD Zen 4 makes the expand wait
    /// for the last write of its destination even under zero-masking, and the register
    /// allocator may give one destination to consecutive expands, a chain through all of
    /// them (a C loop of the decode's masked chunks, 70% pruned rows in cache, one core of an
    /// AMD EPYC 9004: 4.5–4.8 cycles of the time-stamp counter a row-chunk with one
    /// destination, 2.1–2.3 in place).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi2")]
    pub(crate) unsafe fn expand_words(mask: u32, v: __m512i) -> __m512i {
        let mut v = v;
        std::arch::asm!(
            "vpexpandw {v}{{{k}}}{{z}}, {v}",
            v = inout(zmm_reg) v,
            k = in(kreg) mask,
            options(pure, nomem, nostack),
        );
        v
    }

    /// The transpose of a 16×16 f32 matrix held as 16 rows (inlined into its callers, which
    /// run AVX-512F).
    #[inline(always)]
    pub(crate) unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // Pairs of rows interleaved within 128-bit lanes, then pairs of those by 64 bits:
        // u[4k + m] holds, in 128-bit lane L, column 4L + m of rows 4k .. 4k + 3.
        let mut t = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for k in 0..4 {
            // Written out, not an array's `map`: its closure may be compiled apart from the
            // caller's instruction set.
            let (a, b) = (_mm512_castps_pd(t[4 * k]), _mm512_castps_pd(t[4 * k + 1]));
            let (c, d) = (_mm512_castps_pd(t[4 * k + 2]), _mm512_castps_pd(t[4 * k + 3]));
            u[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
            u[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
            u[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
            u[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
        }
        // Column 4L + m: lane L of u[m], u[4 + m], u[8 + m], u[12 + m].
        let mut out = [_mm512_setzero_ps(); 16];
        for m in 0..4 {
            let low01 = _mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]);
            let high01 = _mm512_shuffle_f32x4::<0x44>(u[8 + m], u[12 + m]);
            let low23 = _mm512_shuffle_f32x4::<0xEE>(u[m], u[4 + m]);
            let high23 = _mm512_shuffle_f32x4::<0xEE>(u[8 + m], u[12 + m]);
            out[m] = _mm512_shuffle_f32x4::<0x88>(low01, high01);
            out[4 + m] = _mm512_shuffle_f32x4::<0xDD>(low01, high01);
            out[8 + m] = _mm512_shuffle_f32x4::<0x88>(low23, high23);
            out[12 + m] = _mm512_shuffle_f32x4::<0xDD>(low23, high23);
        }
        out
    }

    /// 2:4 position bytes → mask bytes, 64 at a time.
    #[inline(always)]
    unsafe fn two_four_512(positions: &[u8], out: &mut [u8]) {
        // A plain read, not `_mm_loadu_si128`: in a large caller the compiler left that
        // intrinsic out of line (a call, `tests/simd_inlined.rs`).
        let table = _mm512_broadcast_i32x4(TWO_FOUR_NIBBLE.as_ptr().cast::<__m128i>().read_unaligned());
        let table_high = _mm512_slli_epi16(table, 4);
        let nibble = _mm512_set1_epi8(15);
        let n = out.len().min(positions.len());
        let mut i = 0;
        while i + 64 <= n {
            let p = _mm512_loadu_si512(positions.as_ptr().add(i).cast());
            let low = _mm512_shuffle_epi8(table, _mm512_and_si512(p, nibble));
            let high = _mm512_shuffle_epi8(table_high, _mm512_and_si512(_mm512_srli_epi16(p, 4), nibble));
            _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), _mm512_or_si512(low, high));
            i += 64;
        }
        two_four_bytes(&positions[i..n], &mut out[i..n]);
    }

    /// For [`Simd::bf16_pairs`]: u16 j of the result (column j) is the high half of the f32
    /// lane holding column j in `order`, u16 2·lane + 1 of the chunk's two vectors.
    const fn pair_index(order: [u8; CHUNK]) -> [u16; CHUNK] {
        let mut index = [0u16; CHUNK];
        let mut lane = 0;
        while lane < CHUNK {
            index[order[lane] as usize] = 2 * lane as u16 + 1;
            lane += 1;
        }
        index
    }
    static PAIRED_INDEX: [u16; CHUNK] = pair_index(paired(32));
    static NATURAL_INDEX: [u16; CHUNK] = pair_index(NATURAL);

    impl<const VBMI2: bool> Simd for Avx512<VBMI2> {
        type V = __m512;
        type C = [__m512; 2];
        const LANES: usize = 16;
        const BF16_COLUMNS: [u8; CHUNK] = if VBMI2 { paired(32) } else { NATURAL };

        #[inline(always)]
        unsafe fn zero_v() -> Self::V {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load_v(p: *const f32) -> Self::V {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn splat_v(x: f32) -> Self::V {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn store_v(v: Self::V, p: *mut f32) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma_v(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
            _mm512_fmadd_ps(a, b, acc)
        }
        #[inline(always)]
        unsafe fn add_v(a: Self::V, b: Self::V) -> Self::V {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sum_v(v: Self::V) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline(always)]
        unsafe fn zero() -> Self::C {
            [_mm512_setzero_ps(); 2]
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::C {
            [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))]
        }
        #[inline(always)]
        unsafe fn store(c: Self::C, p: *mut f32) {
            _mm512_storeu_ps(p, c[0]);
            _mm512_storeu_ps(p.add(16), c[1]);
        }
        #[inline(always)]
        unsafe fn compress_nonzero(c: Self::C, at: u32, step: u32, ws: *mut f32, ats: *mut u32) -> usize {
            let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            let offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(step as i32));
            let mut n = 0;
            for (half, &v) in c.iter().enumerate() {
                // Unordered-or-unequal: NaN is kept, as `v != 0.0` keeps it.
                let keep = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(v, _mm512_setzero_ps());
                let first = _mm512_set1_epi32((at + 16 * half as u32 * step) as i32);
                _mm512_storeu_ps(ws.add(n), _mm512_maskz_compress_ps(keep, v));
                let columns = _mm512_maskz_compress_epi32(keep, _mm512_add_epi32(first, offsets));
                _mm512_storeu_si512(ats.add(n).cast(), columns);
                n += keep.count_ones() as usize;
            }
            n
        }
        #[inline(always)]
        unsafe fn compress_offsets(bits: u32, at: u32, offsets: &[u32; CHUNK], ats: *mut u32) -> usize {
            let first = _mm512_set1_epi32(at as i32);
            let low = bits as u16;
            for (half, keep) in [low, (bits >> 16) as u16].into_iter().enumerate() {
                let columns = _mm512_add_epi32(first, _mm512_loadu_si512(offsets.as_ptr().add(16 * half).cast()));
                let written = if half == 0 { 0 } else { low.count_ones() as usize };
                _mm512_storeu_si512(ats.add(written).cast(), _mm512_maskz_compress_epi32(keep, columns));
            }
            bits.count_ones() as usize
        }
        #[inline(always)]
        unsafe fn widen_bf16(p: *const u16, out: *mut f32) {
            _mm512_storeu_ps(out, widen16(_mm256_loadu_si256(p.cast())));
            _mm512_storeu_ps(out.add(16), widen16(_mm256_loadu_si256(p.add(16).cast())));
        }
        #[inline(always)]
        unsafe fn fma(w: Self::C, x: Self::C, acc: Self::C) -> Self::C {
            [_mm512_fmadd_ps(w[0], x[0], acc[0]), _mm512_fmadd_ps(w[1], x[1], acc[1])]
        }
        #[inline(always)]
        unsafe fn bf16_pairs(c: Self::C, out: *mut u32) {
            let index = if VBMI2 { &PAIRED_INDEX } else { &NATURAL_INDEX };
            let index = _mm512_loadu_si512(index.as_ptr().cast());
            let pairs = _mm512_permutex2var_epi16(_mm512_castps_si512(c[0]), index, _mm512_castps_si512(c[1]));
            _mm512_storeu_si512(out.cast(), pairs);
        }
        #[inline(always)]
        unsafe fn sum(c: Self::C) -> f32 {
            _mm512_reduce_add_ps(_mm512_add_ps(c[0], c[1]))
        }
        #[inline(always)]
        unsafe fn transpose_16x16(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
            // A loop, not `array::from_fn`: its closure was compiled apart from the caller's
            // instruction set, each load a call.
            let mut rows = [_mm512_setzero_ps(); 16];
            for (i, row) in rows.iter_mut().enumerate() {
                *row = _mm512_loadu_ps(src.add(i * src_stride));
            }
            for (j, column) in transpose16(rows).into_iter().enumerate() {
                _mm512_storeu_ps(dst.add(j * dst_stride), column);
            }
        }
        #[inline(always)]
        unsafe fn dense_bf16(p: *const u16) -> Self::C {
            if VBMI2 {
                split_pairs(_mm512_loadu_si512(p.cast()))
            } else {
                [widen16(_mm256_loadu_si256(p.cast())), widen16(_mm256_loadu_si256(p.add(16).cast()))]
            }
        }
        #[inline(always)]
        // Full loads, then the register form of expand (`expand_words`, `expand_floats`):
        // the memory-source forms are microcoded on AMD Zen 4/5. Reading whole vectors is in
        // bounds: p is readable for 32 values (the trait's contract).
        unsafe fn expand_f32(mask: u32, p: *const f32) -> Self::C {
            let low = mask as u16;
            [
                expand_floats(low, _mm512_loadu_ps(p)),
                expand_floats((mask >> 16) as u16, _mm512_loadu_ps(p.add(low.count_ones() as usize))),
            ]
        }
        #[inline(always)]
        unsafe fn expand_bf16(mask: u32, p: *const u16) -> Self::C {
            let low = mask as u16;
            if VBMI2 {
                split_pairs(expand_words(mask, _mm512_loadu_si512(p.cast())))
            } else {
                let first = widen16(_mm256_loadu_si256(p.cast()));
                let second = widen16(_mm256_loadu_si256(p.add(low.count_ones() as usize).cast()));
                [expand_floats(low, first), expand_floats((mask >> 16) as u16, second)]
            }
        }
        #[inline(always)]
        unsafe fn expand_bf16_pairs(mask: u32, p: *const u16, out: *mut u32) {
            if VBMI2 {
                // The expanded words are the pairs already (column 2p in the low half of
                // u32 p): no widening into two f32 vectors and permuting back.
                _mm512_storeu_si512(out.cast(), expand_words(mask, _mm512_loadu_si512(p.cast())));
            } else {
                Self::bf16_pairs(Self::expand_bf16(mask, p), out)
            }
        }
        #[inline(always)]
        unsafe fn two_four_mask(positions: &[u8], out: &mut [u8]) {
            two_four_512(positions, out)
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const u8) {
            // Into L2 (T1): with T0 the weight streams read 21–22 GB/s of a 31 GB/s machine,
            // with T1 26–29 (dense, LLaMA-2-7B shapes).
            _mm_prefetch::<_MM_HINT_T1>(p.cast());
        }
    }

    /// AVX2 with FMA; bf16 chunks hold even then odd columns of each 16.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx2;

    /// For each mask byte, lane j's source among the packed values: the number of set bits
    /// below j (lanes whose bit is clear are zeroed separately).
    static PERMUTE: [u64; 256] = {
        let mut table = [0u64; 256];
        let mut m = 0;
        while m < 256 {
            let (mut k, mut j, mut entry) = (0u64, 0, 0u64);
            while j < 8 {
                entry |= k << (8 * j);
                if (m >> j) & 1 == 1 {
                    k += 1;
                }
                j += 1;
            }
            table[m] = entry;
            m += 1;
        }
        table
    };

    /// For each mask byte, the `pshufb` control spreading 8 packed u16 to the kept lanes
    /// (bytes 2k, 2k+1 of the k-th kept value; 0x80 zeroes a lane).
    static SPREAD16: [[u8; 16]; 256] = {
        let mut table = [[0x80u8; 16]; 256];
        let mut m = 0;
        while m < 256 {
            let (mut k, mut j) = (0u8, 0);
            while j < 8 {
                if (m >> j) & 1 == 1 {
                    table[m][2 * j] = 2 * k;
                    table[m][2 * j + 1] = 2 * k + 1;
                    k += 1;
                }
                j += 1;
            }
            m += 1;
        }
        table
    };

    /// Eight packed f32 spread over the lanes `bits` (low byte) keeps, zeros elsewhere.
    #[inline(always)]
    unsafe fn expand8(bits: u32, packed: __m256) -> __m256 {
        let index = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(PERMUTE[(bits & 0xff) as usize] as i64));
        let spread = _mm256_permutevar8x32_ps(packed, index);
        // Bit j moved to the sign bit of lane j selects the lane.
        let select =
            _mm256_sllv_epi32(_mm256_set1_epi32(bits as i32), _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24));
        _mm256_blendv_ps(_mm256_setzero_ps(), spread, _mm256_castsi256_ps(select))
    }

    /// Packed u16 at p spread over the 8 lanes `bits` (low byte) keeps.
    #[inline(always)]
    unsafe fn spread8(bits: u32, p: *const u16) -> __m128i {
        let control = _mm_loadu_si128(SPREAD16[(bits & 0xff) as usize].as_ptr().cast());
        _mm_shuffle_epi8(_mm_loadu_si128(p.cast()), control)
    }

    /// 16 bf16 in a 256-bit register as f32: (even columns, odd columns).
    #[inline(always)]
    unsafe fn split_pairs8(v: __m256i) -> (__m256, __m256) {
        (
            _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)),
            _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(0xffff_0000u32 as i32))),
        )
    }

    impl Simd for Avx2 {
        type V = __m256;
        type C = [__m256; 4];
        const LANES: usize = 8;
        const BF16_COLUMNS: [u8; CHUNK] = paired(16);

        #[inline(always)]
        unsafe fn zero_v() -> Self::V {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load_v(p: *const f32) -> Self::V {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn splat_v(x: f32) -> Self::V {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn store_v(v: Self::V, p: *mut f32) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma_v(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
            _mm256_fmadd_ps(a, b, acc)
        }
        #[inline(always)]
        unsafe fn add_v(a: Self::V, b: Self::V) -> Self::V {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sum_v(v: Self::V) -> f32 {
            let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
            _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)))
        }
        #[inline(always)]
        unsafe fn zero() -> Self::C {
            [_mm256_setzero_ps(); 4]
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::C {
            [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))]
        }
        #[inline(always)]
        unsafe fn store(c: Self::C, p: *mut f32) {
            _mm256_storeu_ps(p, c[0]);
            _mm256_storeu_ps(p.add(8), c[1]);
            _mm256_storeu_ps(p.add(16), c[2]);
            _mm256_storeu_ps(p.add(24), c[3]);
        }
        #[inline(always)]
        unsafe fn fma(w: Self::C, x: Self::C, acc: Self::C) -> Self::C {
            [
                _mm256_fmadd_ps(w[0], x[0], acc[0]),
                _mm256_fmadd_ps(w[1], x[1], acc[1]),
                _mm256_fmadd_ps(w[2], x[2], acc[2]),
                _mm256_fmadd_ps(w[3], x[3], acc[3]),
            ]
        }
        #[inline(always)]
        unsafe fn sum(c: Self::C) -> f32 {
            Self::sum_v(_mm256_add_ps(_mm256_add_ps(c[0], c[1]), _mm256_add_ps(c[2], c[3])))
        }
        #[inline(always)]
        unsafe fn dense_bf16(p: *const u16) -> Self::C {
            let (e0, o0) = split_pairs8(_mm256_loadu_si256(p.cast()));
            let (e1, o1) = split_pairs8(_mm256_loadu_si256(p.add(16).cast()));
            [e0, o0, e1, o1]
        }
        #[inline(always)]
        unsafe fn expand_f32(mask: u32, p: *const f32) -> Self::C {
            let k1 = (mask & 0xff).count_ones() as usize;
            let k2 = k1 + ((mask >> 8) & 0xff).count_ones() as usize;
            let k3 = k2 + ((mask >> 16) & 0xff).count_ones() as usize;
            [
                expand8(mask, _mm256_loadu_ps(p)),
                expand8(mask >> 8, _mm256_loadu_ps(p.add(k1))),
                expand8(mask >> 16, _mm256_loadu_ps(p.add(k2))),
                expand8(mask >> 24, _mm256_loadu_ps(p.add(k3))),
            ]
        }
        #[inline(always)]
        unsafe fn expand_bf16(mask: u32, p: *const u16) -> Self::C {
            let k1 = (mask & 0xff).count_ones() as usize;
            let k2 = k1 + ((mask >> 8) & 0xff).count_ones() as usize;
            let k3 = k2 + ((mask >> 16) & 0xff).count_ones() as usize;
            let low = _mm256_set_m128i(spread8(mask >> 8, p.add(k1)), spread8(mask, p));
            let high = _mm256_set_m128i(spread8(mask >> 24, p.add(k3)), spread8(mask >> 16, p.add(k2)));
            let (e0, o0) = split_pairs8(low);
            let (e1, o1) = split_pairs8(high);
            [e0, o0, e1, o1]
        }
        #[inline(always)]
        unsafe fn two_four_mask(positions: &[u8], out: &mut [u8]) {
            let table = _mm256_broadcastsi128_si256(TWO_FOUR_NIBBLE.as_ptr().cast::<__m128i>().read_unaligned());
            let table_high = _mm256_slli_epi16(table, 4);
            let nibble = _mm256_set1_epi8(15);
            let n = out.len().min(positions.len());
            let mut i = 0;
            while i + 32 <= n {
                let p = _mm256_loadu_si256(positions.as_ptr().add(i).cast());
                let low = _mm256_shuffle_epi8(table, _mm256_and_si256(p, nibble));
                let high = _mm256_shuffle_epi8(table_high, _mm256_and_si256(_mm256_srli_epi16(p, 4), nibble));
                _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), _mm256_or_si256(low, high));
                i += 32;
            }
            two_four_bytes(&positions[i..n], &mut out[i..n]);
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const u8) {
            // Into L2 (T1): with T0 the weight streams read 21–22 GB/s of a 31 GB/s machine,
            // with T1 26–29 (dense, LLaMA-2-7B shapes).
            _mm_prefetch::<_MM_HINT_T1>(p.cast());
        }
    }

    // The chunk types hold exactly CHUNK lanes.
    const _: () = assert!(std::mem::size_of::<[__m512; 2]>() == CHUNK * 4);
    const _: () = assert!(std::mem::size_of::<[__m256; 4]>() == CHUNK * 4);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`Simd::bf16_pairs`] of a decoded dense bf16 chunk gives back its column pairs, on
    /// every instruction set this CPU has: the default (portable, AVX2) and the AVX-512
    /// permutation for both of its lane orders.
    #[test]
    fn bf16_pairs_undo_the_lane_order() {
        // Distinct bf16 values, one per column (the bits of 1.0 + column / 128).
        let bits: [u16; CHUNK] = std::array::from_fn(|c| 0x3f80 + c as u16);
        let want: Vec<u32> = bits.chunks_exact(2).map(|two| u32::from(two[0]) | u32::from(two[1]) << 16).collect();
        fn pairs<S: Simd>(bits: &[u16; CHUNK]) -> Vec<u32> {
            let mut out = [0u32; CHUNK / 2];
            // SAFETY: callers run S only where the CPU has it; `bits` holds 32 values.
            unsafe { S::bf16_pairs(S::dense_bf16(bits.as_ptr()), out.as_mut_ptr()) };
            out.to_vec()
        }
        assert_eq!(pairs::<Portable>(&bits), want, "portable");
        #[cfg(target_arch = "x86_64")]
        {
            use super::super::cpu_fast::Isa;
            if Isa::Avx2.available() {
                assert_eq!(pairs::<Avx2>(&bits), want, "avx2");
            }
            if Isa::Avx512.available() {
                assert_eq!(pairs::<Avx512<false>>(&bits), want, "avx512");
            }
            if Isa::Avx512Vbmi2.available() {
                assert_eq!(pairs::<Avx512<true>>(&bits), want, "avx512+vbmi2");
            }
        }
    }
}
