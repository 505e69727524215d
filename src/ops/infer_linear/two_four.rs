//! The bf16 2:4 decode on AVX-512 with VBMI and BF16 (taken where the decode runs
//! `Isa::Avx512Bf16`, chosen on AMD CPUs such as Zen 4): y [tokens, rows] = x [tokens,
//! cols] · Wᵀ for 1 to [`MAX_TOKENS`] tokens (more than [`PASS_TOKENS`] in passes of that
//! many, each row's passes one after another while its values are in L1), W [rows,
//! cols] 2:4 in bf16 (every group of four columns keeps two: a row's cols/2 values
//! packed, and one 2-bit position per value, least significant bits first), cols a multiple
//! of [`BLOCK`] (64), x [tokens, in_pad] bf16 as u16 (in_pad ≥ cols; with more than
//! [`PASS_TOKENS`] tokens, zero rows up to a multiple of it).
//!
//! Instead of spreading each row's values over their columns (the bitmask kernel's
//! `vpexpandw`, which 2:4 rows reach through a mask built from their positions), x is
//! gathered at the row's kept columns: a block's 32 positions (one u64) become a word index
//! (`vpmultishiftqb` puts position j in word j, `vpternlogq` adds the group's first column
//! 4·⌊j/2⌋), `vpermt2w` picks those 32 activations out of the block's 64, and `vdpbf16ps`
//! multiplies them with the 32 values (a lane: a group's two products). Rows in cache, one
//! core of an AMD EPYC 9004, 1536×576: 1.8 cycles of the time-stamp counter per 32 columns
//! against 2.7 with the mask and the expand (a C loop of both). Sums are f32 in another order
//! than the other paths; like every `vdpbf16ps` path, denormal inputs and sums flush to zero.
//!
//! A row whose two positions in one group are equal (a corrupt 2:4 weight: the reference
//! keeps one column for two values) is an error after its sums are written, as the mask
//! kernel's count check makes it.

use std::ops::Range;

use super::cpu_fast::{Dest, DECODE_MAX_TOKENS};
use crate::{Error, Result};

/// Columns per step: 32 kept values, one vector of bf16.
pub(super) const BLOCK: usize = 64;
/// Tokens per pass over a row (the decode's passes of four).
pub(super) const PASS_TOKENS: usize = DECODE_MAX_TOKENS;
/// Most tokens: two passes. One core of an AMD EPYC 9004, 1536×576 in cache, time against
/// the dense GEMV's in the same run: with 5 and 8 tokens 1.81× and 1.74× through the mask
/// and `vpexpandw` in passes, 1.48× and 1.28–1.45× here; with more, the rows decoded once
/// (`cpu_fast::masked_part`) are as fast or faster (12 tokens 1.42–1.51× either way, 16
/// and 24 tokens 1.23–1.34× there, 1.30–1.47× here).
pub(super) const MAX_TOKENS: usize = 2 * PASS_TOKENS;

/// Whether [`decode`] runs on this CPU: `Isa::Avx512Bf16`'s instructions and VBMI
/// (`vpmultishiftqb`).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::cpu_fast::Isa::Avx512Bf16.available() && std::arch::is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A 2:4 weight's buffers and x, checked by [`decode`].
#[derive(Clone, Copy)]
pub(super) struct TwoFour<'a> {
    /// x [tokens, in_pad], bf16 bits (zero rows up to a whole pass beyond them).
    pub x: &'a [u16],
    pub in_pad: usize,
    pub tokens: usize,
    /// Values [rows, cols / 2], bf16 bits.
    pub values: &'a [u16],
    /// Positions [rows, cols / 8] bytes.
    pub positions: &'a [u8],
    pub cols: usize,
}

impl TwoFour<'_> {
    /// The same with x from token t0 on (its tokens t0.. as 0..).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn tokens_on(self, t0: usize) -> Self {
        TwoFour { x: &self.x[t0 * self.in_pad..], tokens: self.tokens - t0, ..self }
    }
}

/// Rows `rows` of y into `out` ([rows.len(), tokens], row i of it is row rows.start + i).
pub(super) fn decode(w: TwoFour<'_>, rows: Range<usize>, out: Dest<'_>) -> Result<()> {
    let (per_row, pos_stride) = (w.cols / 2, w.cols / 8);
    // Rows of x read: the tokens, or whole passes.
    let x_rows = if w.tokens <= PASS_TOKENS { w.tokens } else { w.tokens.next_multiple_of(PASS_TOKENS) };
    if !available()
        || w.cols == 0
        || !w.cols.is_multiple_of(BLOCK)
        || !(1..=MAX_TOKENS).contains(&w.tokens)
        || w.in_pad < w.cols
        || w.x.len() < x_rows * w.in_pad
        || w.values.len() < rows.end * per_row
        || w.positions.len() < rows.end * pos_stride
    {
        return Err(Error::invalid(format!(
            "infer_linear: the 2:4 gather decode does not take {} tokens of {} (x {}, {} values, {} position bytes) for rows {rows:?} of {} columns",
            w.tokens,
            w.in_pad,
            w.x.len(),
            w.values.len(),
            w.positions.len(),
            w.cols
        )));
    }
    // SAFETY: the CPU has the features (`available`); the buffers hold the rows and tokens
    // read (checked above).
    #[cfg(target_arch = "x86_64")]
    let result = unsafe {
        match w.tokens {
            1 => x86::decode::<1>(w, rows, out),
            2 => x86::decode::<2>(w, rows, out),
            3 => x86::decode::<3>(w, rows, out),
            _ => x86::decode::<4>(w, rows, out),
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let result = {
        let _ = out;
        Err(Error::invalid("infer_linear: the 2:4 gather decode runs on x86-64 only"))
    };
    result
}

/// Nonzero where a group of the u64 of positions `p` (16 groups, 4 bits each: two 2-bit
/// positions) repeats a position.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn repeated(p: u64) -> u64 {
    let d = (p ^ (p >> 2)) & 0x3333_3333_3333_3333;
    !(d | (d >> 1)) & 0x1111_1111_1111_1111
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;
    use crate::ops::infer_linear::cpu_fast::PREFETCH_BYTES;

    /// `vpmultishiftqb` control: the low byte of word j takes the 8 bits from bit 2j of the
    /// positions (position j in its two low bits); the high bytes take bit 0 (masked off).
    static CONTROL: [u8; 64] = {
        let mut c = [0u8; 64];
        let mut j = 0;
        while j < 32 {
            c[2 * j] = (2 * j) as u8;
            j += 1;
        }
        c
    };
    /// Word j: the first column of its group, 4·⌊j/2⌋.
    static GROUP_FIRST: [u16; 32] = {
        let mut g = [0u16; 32];
        let mut j = 0;
        while j < 32 {
            g[j] = (4 * (j / 2)) as u16;
            j += 1;
        }
        g
    };

    /// Rows i and i + ⌊n/2⌋ in lockstep (two weight streams), the odd last row alone; each
    /// pair's passes of NT tokens one after another (one pass unless NT is
    /// [`PASS_TOKENS`]).
    ///
    /// # Safety
    /// The CPU runs AVX-512 F, BW, VBMI and BF16; `w` holds rows `rows`, and NT tokens or
    /// its tokens rounded up to a multiple of NT.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512bf16")]
    pub(super) unsafe fn decode<const NT: usize>(w: TwoFour<'_>, rows: Range<usize>, mut out: Dest<'_>) -> Result<()> {
        let (n, first) = (rows.len(), rows.start);
        let part = n / 2;
        let passes = if NT == PASS_TOKENS { w.tokens.div_ceil(NT) } else { 1 };
        let mut bad = None;
        // Row i of y from the R rows' sums of the pass from token t0 (padding tokens dropped).
        let mut put = |i: usize, t0: usize, sums: &[f32; NT], repeats: u64| {
            for (t, &s) in sums.iter().enumerate().take(w.tokens - t0) {
                out.put(i, t0 + t, s);
            }
            if repeats != 0 {
                bad.get_or_insert(first + i);
            }
        };
        for i in 0..part {
            for p in 0..passes {
                let (sums, repeats) = row_sums::<NT, 2>(w.tokens_on(p * NT), [first + i, first + i + part]);
                put(i, p * NT, &sums[0], repeats[0]);
                put(i + part, p * NT, &sums[1], repeats[1]);
            }
        }
        if n % 2 == 1 {
            for p in 0..passes {
                let (sums, repeats) = row_sums::<NT, 1>(w.tokens_on(p * NT), [first + n - 1]);
                put(n - 1, p * NT, &sums[0], repeats[0]);
            }
        }
        match bad {
            None => Ok(()),
            Some(r) => Err(Error::invalid(format!("infer_linear: 2:4 row {r} repeats a position within a group"))),
        }
    }

    /// The NT tokens' sums of the R rows `rows`, and per row the groups that repeat a
    /// position (nonzero if any). Blocks alternate between two sums per (row, token), so
    /// that a row does not wait on one chain of `vdpbf16ps`.
    ///
    /// # Safety
    /// As [`decode`].
    #[inline(always)]
    unsafe fn row_sums<const NT: usize, const R: usize>(
        w: TwoFour<'_>,
        rows: [usize; R],
    ) -> ([[f32; NT]; R], [u64; R]) {
        let mut acc = [[[_mm512_setzero_ps(); 2]; NT]; R];
        let mut repeats = [0u64; R];
        let blocks = w.cols / BLOCK;
        for b in (0..blocks - blocks % 2).step_by(2) {
            block::<NT, R, 0>(w, rows, b, &mut acc, &mut repeats);
            block::<NT, R, 1>(w, rows, b + 1, &mut acc, &mut repeats);
        }
        if blocks % 2 == 1 {
            block::<NT, R, 0>(w, rows, blocks - 1, &mut acc, &mut repeats);
        }
        let mut sums = [[0f32; NT]; R];
        for (s, a) in sums.iter_mut().zip(&acc) {
            for (s, a) in s.iter_mut().zip(a) {
                *s = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
            }
        }
        (sums, repeats)
    }

    /// Block b (columns 64·b ..) of the R rows into their sums `S`.
    ///
    /// # Safety
    /// As [`decode`]; b < cols / 64.
    #[inline(always)]
    unsafe fn block<const NT: usize, const R: usize, const S: usize>(
        w: TwoFour<'_>,
        rows: [usize; R],
        b: usize,
        acc: &mut [[[__m512; 2]; NT]; R],
        repeats: &mut [u64; R],
    ) {
        let control = _mm512_loadu_si512(CONTROL.as_ptr().cast());
        let group_first = _mm512_loadu_si512(GROUP_FIRST.as_ptr().cast());
        let two_bits = _mm512_set1_epi16(3);
        // The tokens' 64 activations of the block, two vectors each.
        let mut x = [[_mm512_setzero_si512(); 2]; NT];
        for (t, x) in x.iter_mut().enumerate() {
            let p = w.x.as_ptr().add(t * w.in_pad + b * BLOCK);
            *x = [_mm512_loadu_si512(p.cast()), _mm512_loadu_si512(p.add(32).cast())];
        }
        for k in 0..R {
            let p = w.positions.as_ptr().add(rows[k] * (w.cols / 8) + 8 * b).cast::<u64>().read_unaligned();
            repeats[k] |= repeated(p);
            // Word j: 4·⌊j/2⌋ + position j, the column of value j within the block.
            let spread = _mm512_multishift_epi64_epi8(control, _mm512_set1_epi64(p as i64));
            let index = _mm512_ternarylogic_epi64::<0xEA>(spread, two_bits, group_first);
            let at = w.values.as_ptr().add(rows[k] * (w.cols / 2) + 32 * b);
            _mm_prefetch::<_MM_HINT_T1>(at.cast::<i8>().wrapping_add(PREFETCH_BYTES));
            let values: __m512bh = std::mem::transmute(_mm512_loadu_si512(at.cast()));
            for t in 0..NT {
                let gathered: __m512bh = std::mem::transmute(_mm512_permutex2var_epi16(x[t][0], index, x[t][1]));
                acc[k][t][S] = _mm512_dpbf16_ps(acc[k][t][S], values, gathered);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repeat check against a plain reading of the 16 groups.
    #[test]
    fn repeated_finds_each_group_that_repeats_a_position() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let p = seed;
            let want: Vec<bool> = (0..16).map(|g| (p >> (4 * g)) & 3 == (p >> (4 * g + 2)) & 3).collect();
            let got = repeated(p);
            for (g, &w) in want.iter().enumerate() {
                assert_eq!((got >> (4 * g)) & 1 == 1, w, "group {g} of {p:#018x}");
            }
            assert_eq!(got & !0x1111_1111_1111_1111, 0, "only each group's low bit: {p:#018x}");
        }
    }
}
