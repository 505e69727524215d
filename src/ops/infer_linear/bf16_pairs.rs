//! The dense bf16 prefill on [`Isa::Avx512Bf16`] (AVX512-BF16, taken on AMD CPUs):
//! y [tokens, rows] = x [tokens, cols] · Wᵀ for W [rows, cols] bf16 as stored and x whose
//! values are all bf16 (the engine rounds its activations to the model's dtype), by
//! `vdpbf16ps`: one instruction multiplies 16 pairs of bf16 (two adjacent columns) exactly
//! and adds both products to 16 f32 sums, twice the work of an f32 fused multiply-add.
//!
//! - x as [`Pairs`]: in blocks of [`MT`] tokens, for each column pair p every token's
//!   (x[t, 2p], x[t, 2p + 1]) as one u32, the even column in the low half; an odd last
//!   column pairs with 0, padding tokens are 0. Each linear's activations are packed this
//!   way (every thread its own copy): with AVX-512 BW, 16 tokens × 32 columns at a time
//!   (`x86::pack16`); one value per step, this was ~12% of a 512-token prefill of the
//!   default model (perf), and prefill ran 1706–1955 tokens/s against 1982–2063 after.
//! - Rows in tiles of [`TILE_ROWS`]; per tile, token block and [`KP`] pairs (that part of
//!   the block, 12 KiB, and of the tile's rows, 8 KiB, stay in L1), groups of [`RB`] rows:
//!   each row's pair of weights is broadcast from W and multiplied into the block's 48
//!   tokens (3 vectors), 24 sums in registers, kept per (row, token) between steps.
//! - The sums are f32 as in the other paths; their order differs, and the instruction
//!   flushes denormal inputs and results to zero (terms below 1e-38).
//!
//! - [`kept`]: the sparser masked rows' kernel, one listed pair of weights (a column pair
//!   that keeps one) broadcast into a block's 48 tokens at a time.
//!
//! Used by [`super::cpu_fast`] where [`Pairs::ready`] (the instruction set is
//! [`Isa::Avx512Bf16`], the tokens take the prefill path, the weight is bf16 and x is
//! exactly bf16); elsewhere the f32 path runs.

use std::ops::Range;

use super::cpu_fast::{Aligned, Dest, Isa, GEMV_MAX_TOKENS, MT, TILE_ROWS};
use crate::{DType, Error, Result};

// The kernels' sizes and `TileRows`' fields are read by the x86-64 kernels only; elsewhere
// `Pairs` are never ready and `prefill_rows` computes nothing.
/// Rows multiplied into a block's tokens together (each pair of weights broadcast once).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const RB: usize = 8;
/// Column pairs per step.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const KP: usize = 64;
/// Vectors of 16 tokens per block.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const NV: usize = MT / 16;

/// x for the kernel: [block][pair][MT] u32 (see the module notes), or not ready.
pub(super) struct Pairs {
    data: Aligned<u32>,
    pairs: usize,
    tokens: usize,
    ready: bool,
}

impl Pairs {
    /// Whether `isa` is the kernel's ([`Isa::Avx512Bf16`]) and this CPU runs it.
    pub(super) fn supported(isa: Isa) -> bool {
        isa == Isa::Avx512Bf16 && isa.available()
    }

    /// No activations (not ready), holding `buffer` for the next ones.
    pub(super) fn none(buffer: Aligned<u32>) -> Pairs {
        Pairs { data: buffer, pairs: 0, tokens: 0, ready: false }
    }

    /// Whether the kernel applies to `tokens` tokens of `cols` columns for weights of
    /// `dtype` on `isa` (when every value of x is a bf16).
    fn applies(isa: Isa, dtype: DType, tokens: usize, cols: usize) -> bool {
        dtype == DType::BF16 && tokens > GEMV_MAX_TOKENS && cols > 0 && Self::supported(isa)
    }

    /// x [tokens, cols] in pairs, in `buffer` (its contents do not matter), where the kernel
    /// [`applies`](Self::applies) and every value of x is a bf16; otherwise not ready.
    /// Read row by row, each token's pairs written MT apart.
    pub(super) fn new(isa: Isa, dtype: DType, x: &[f32], tokens: usize, cols: usize, buffer: Aligned<u32>) -> Pairs {
        let mut new = Pairs::none(buffer);
        if !Self::applies(isa, dtype, tokens, cols) {
            return new;
        }
        assert_eq!(x.len(), tokens * cols, "infer_linear: activations");
        let (pairs, blocks) = (cols.div_ceil(2), tokens.div_ceil(MT));
        new.data.resize(blocks * pairs * MT);
        // Padding tokens (the last block's, past `tokens`) hold zeros.
        if !tokens.is_multiple_of(MT) {
            new.data[(blocks - 1) * pairs * MT..].fill(0);
        }
        let mut inexact = 0;
        // Groups of 16 tokens (MT is a multiple of 16, so a group lies in one block) take
        // their first 16·⌊cols/32⌋ pairs from the x86-64 kernel where the CPU has AVX-512 BW.
        let (groups, wide) = (vector_groups(isa, tokens), cols / 32);
        for (t, row) in x.chunks_exact(cols).enumerate() {
            let at = (t / MT) * pairs * MT + t % MT;
            let block = &mut new.data[at..];
            let from = if t < 16 * groups { 16 * wide } else { 0 };
            for (p, (pair, dropped)) in pack_pairs(&row[2 * from..]).enumerate() {
                inexact |= dropped;
                block[(from + p) * MT] = pair;
            }
        }
        #[cfg(target_arch = "x86_64")]
        for g in 0..groups {
            let t0 = 16 * g;
            let at = (t0 / MT) * pairs * MT + t0 % MT;
            // SAFETY: `vector_groups` checked the CPU; rows t0..t0 + 16 of x hold `cols` ≥
            // 32·wide values each; the block holds pairs ≥ 16·wide pairs of MT tokens from
            // `at`, and t0 % MT + 16 ≤ MT.
            inexact |= unsafe { x86::pack16(x.as_ptr().add(t0 * cols), cols, wide, new.data.as_mut_ptr().add(at)) };
        }
        (new.pairs, new.tokens, new.ready) = (pairs, tokens, inexact == 0);
        new
    }

    /// Its buffer, for the next activations.
    pub(super) fn into_buffer(self) -> Aligned<u32> {
        self.data
    }

    /// Whether [`prefill`] may run on these activations.
    pub(super) fn ready(&self) -> bool {
        self.ready
    }
}

/// Groups of 16 tokens from the start whose pairs the x86-64 kernel packs: ⌊tokens/16⌋ where
/// the CPU has AVX-512 BW, none elsewhere.
fn vector_groups(isa: Isa, tokens: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() && isa.available() {
        return tokens / 16;
    }
    let _ = (isa, tokens);
    0
}

/// `row`'s columns in bf16 pairs: for pair p, (column 2p's bf16 bits in the low half and
/// column 2p + 1's in the high half, an odd last column paired with 0; the bits a bf16
/// drops from them, nonzero where a value is not a bf16).
pub(super) fn pack_pairs(row: &[f32]) -> impl Iterator<Item = (u32, u32)> + '_ {
    let whole = row.chunks_exact(2);
    let last = whole.remainder().first().map(|v| (v.to_bits(), 0));
    whole
        .map(|c| (c[0].to_bits(), c[1].to_bits()))
        .chain(last)
        .map(|(e, o)| (e >> 16 | (o & 0xffff_0000), (e | o) & 0xffff))
}

/// Rows `rows` of y = x·Wᵀ for a dense W [.., cols] (bf16 bits, row-major) into `out`
/// (rows.len() rows of x's tokens). Error unless `x` is ready for `cols` columns and W holds
/// the rows.
pub(super) fn prefill(x: &Pairs, w: &[u16], cols: usize, rows: Range<usize>, out: Dest<'_>) -> Result<()> {
    if !x.ready || x.pairs != cols.div_ceil(2) || rows.end.checked_mul(cols).is_none_or(|n| n > w.len()) {
        return Err(Error::invalid(format!(
            "infer_linear: bf16 pairs of {} columns for rows {rows:?} of a weight of {} values with {cols} columns",
            2 * x.pairs,
            w.len()
        )));
    }
    // SAFETY: each tile's rows lie in W (checked above), `cols` apart; pairs below cols/2
    // are whole, an odd last column is read alone.
    unsafe {
        prefill_rows(x, rows, out, |tile| {
            Ok(TileRows { first: w.as_ptr().add(tile.start * cols), stride: cols, whole_pairs: cols / 2 })
        })
    }
}

/// The rows of one tile for the kernel, as bf16 bits: row i starts at `first` + i·`stride`
/// (in u16), and its pair p is read as one u32 for p < `whole_pairs`, as the u16 of its even
/// column (the odd one 0) from there to x's last pair.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct TileRows {
    pub(super) first: *const u16,
    pub(super) stride: usize,
    pub(super) whole_pairs: usize,
}

/// Rows `rows` of y = x·Wᵀ into `out`, where `tile_rows(range)` gives the rows `range` (at
/// most [`TILE_ROWS`], in order) of W.
///
/// # Safety
/// Each [`TileRows`] describes rows readable as it says for every pair of x, valid until
/// the next call of `tile_rows`.
// Inlined into its callers: `tile_rows` of the masked rows decodes with SIMD intrinsics,
// which compile to calls unless they land in a function built for AVX-512.
#[inline(always)]
pub(super) unsafe fn prefill_rows(
    x: &Pairs,
    rows: Range<usize>,
    mut out: Dest<'_>,
    mut tile_rows: impl FnMut(Range<usize>) -> Result<TileRows>,
) -> Result<()> {
    if !x.ready {
        return Err(Error::invalid("infer_linear: activations not in bf16 pairs"));
    }
    let tok_pad = x.tokens.next_multiple_of(MT);
    let mut sums: Aligned<f32> = Aligned::zeros(TILE_ROWS * tok_pad);
    for start in rows.clone().step_by(TILE_ROWS) {
        let tile = start..(start + TILE_ROWS).min(rows.end);
        let w = tile_rows(tile.clone())?;
        sums.fill(0.0);
        // SAFETY: `ready` means the CPU has AVX-512 F and BF16; the caller vouches for w;
        // sums holds TILE_ROWS rows of tok_pad.
        #[cfg(target_arch = "x86_64")]
        x86::tile(x, &w, tile.len(), &mut sums, tok_pad);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = w;
        for t in 0..x.tokens {
            let y = out.token_rows(t, tile.start - rows.start..tile.end - rows.start);
            for (i, v) in y.iter_mut().enumerate() {
                *v = sums[i * tok_pad + t];
            }
        }
    }
    Ok(())
}

/// sums[t] += Σ_e pairs[e] · x[block b][ats[e] / MT][t] for the MT tokens of block b, where
/// each pairs[e] holds two weights' bf16 bits (as f32 bits) and ats[e] is its pair's offset
/// in a block (pair · MT): the masked rows' kernel of [`super::cpu_fast`].
///
/// # Safety
/// `x` is ready; every ats[e] + MT ≤ x's pairs · MT; sums holds MT values.
pub(super) unsafe fn kept(x: &Pairs, b: usize, pairs: &[f32], ats: &[u32], sums: *mut f32) {
    #[cfg(target_arch = "x86_64")]
    x86::kept(x.data.as_ptr().add(b * x.pairs * MT), pairs, ats, sums);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, b, pairs, ats, sums);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// Pairs 0 .. 16·`chunks` of 16 tokens (rows of `x`, `cols` apart) as [`pack_pairs`]
    /// makes them, pair p's 16 values at `dst` + p·MT; returns the OR of the bits dropped.
    /// Per 32 columns: each token's 32 values become 16 pairs in one vector (the high halves
    /// of the f32, `vpermt2w`), stored in a 16×16 block that is then read by columns
    /// (gathers), one vector of 16 tokens per pair.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW; x holds 16 rows of `cols` ≥ 32·chunks values; dst is
    /// writable at p·MT .. p·MT + 16 for every p < 16·chunks.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn pack16(x: *const f32, cols: usize, chunks: usize, dst: *mut u32) -> u32 {
        // Word k of the result: word 2k + 1 of (lo, hi), the high half of f32 k.
        let high_halves = _mm512_set_epi16(
            63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11,
            9, 7, 5, 3, 1,
        );
        let low_halves = _mm512_set1_epi32(0xffff);
        // Lane i of `by_column` + p: element (token i, pair p) of the 16×16 block.
        let by_column = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64, 48, 32, 16, 0);
        let mut dropped = _mm512_setzero_si512();
        let mut block = [0u32; 256];
        for c in 0..chunks {
            for (t, out) in block.chunks_exact_mut(16).enumerate() {
                let row = x.add(t * cols + 32 * c);
                let (lo, hi) = (_mm512_loadu_si512(row.cast()), _mm512_loadu_si512(row.add(16).cast()));
                dropped = _mm512_or_si512(dropped, _mm512_and_si512(_mm512_or_si512(lo, hi), low_halves));
                _mm512_storeu_si512(out.as_mut_ptr().cast(), _mm512_permutex2var_epi16(lo, high_halves, hi));
            }
            for p in 0..16 {
                let column = _mm512_i32gather_epi32::<4>(
                    _mm512_add_epi32(by_column, _mm512_set1_epi32(p)),
                    block.as_ptr().cast(),
                );
                _mm512_storeu_si512(dst.add((16 * c + p as usize) * MT).cast(), column);
            }
        }
        _mm512_reduce_or_epi32(dropped) as u32
    }

    /// sums[t] += Σ_e pairs[e] · x[ats[e] + t] for the MT tokens of a block (x: the block's
    /// pairs); two pairs per step in two sets of accumulators, added at the end.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; every ats[e] + MT ≤ the block's length; sums holds MT
    /// values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn kept(x: *const u32, pairs: &[f32], ats: &[u32], sums: *mut f32) {
        let mut acc = [[_mm512_setzero_ps(); NV]; 2];
        let one = |set: &mut [__m512; NV], w: f32, at: u32| {
            let w: __m512bh = std::mem::transmute(_mm512_set1_epi32(w.to_bits() as i32));
            let xk = x.add(at as usize);
            for (v, a) in set.iter_mut().enumerate() {
                let xv = std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(xk.add(v * 16).cast()));
                *a = _mm512_dpbf16_ps(*a, w, xv);
            }
        };
        let twos = pairs.len() / 2 * 2;
        for (w2, at2) in pairs[..twos].chunks_exact(2).zip(ats[..twos].chunks_exact(2)) {
            one(&mut acc[0], w2[0], at2[0]);
            one(&mut acc[1], w2[1], at2[1]);
        }
        if twos < pairs.len() {
            one(&mut acc[0], pairs[twos], ats[twos]);
        }
        for (v, (&a0, &a1)) in acc[0].iter().zip(&acc[1]).enumerate() {
            let p = sums.add(v * 16);
            _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), _mm512_add_ps(a0, a1)));
        }
    }

    /// sums [row i][token] (row stride tok_pad) += the `n_rows` rows of `w` times every
    /// token of x.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `w` describes `n_rows` ≥ 1 rows readable for every
    /// pair of x; sums holds n_rows ≤ TILE_ROWS rows of tok_pad ≥ x's blocks · MT.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(x: &Pairs, w: &TileRows, n_rows: usize, sums: &mut [f32], tok_pad: usize) {
        for b in 0..x.tokens.div_ceil(MT) {
            let block = x.data.as_ptr().add(b * x.pairs * MT);
            for k0 in (0..x.pairs).step_by(KP) {
                let k1 = (k0 + KP).min(x.pairs);
                for g in (0..n_rows).step_by(RB) {
                    let live = (n_rows - g).min(RB);
                    // Rows past the tile's end repeat its last row (computed, not stored).
                    let row: [*const u16; RB] = std::array::from_fn(|i| w.first.add((g + i.min(live - 1)) * w.stride));
                    let acc_at = |i: usize, v: usize| sums.as_ptr().add((g + i) * tok_pad + b * MT + v * 16);
                    let mut acc = [[_mm512_setzero_ps(); NV]; RB];
                    for (i, a) in acc.iter_mut().enumerate().take(live) {
                        for (v, a) in a.iter_mut().enumerate() {
                            *a = _mm512_loadu_ps(acc_at(i, v));
                        }
                    }
                    for p in k0..k1 {
                        let xp = block.add(p * MT);
                        let xv: [__m512bh; NV] =
                            std::array::from_fn(|v| std::mem::transmute(_mm512_load_si512(xp.add(v * 16).cast())));
                        for (i, a) in acc.iter_mut().enumerate() {
                            // The pair (W[r, 2p], W[r, 2p + 1]); for an odd last column, W[r, 2p] and 0.
                            let pair = if p < w.whole_pairs {
                                row[i].add(2 * p).cast::<u32>().read_unaligned()
                            } else {
                                u32::from(*row[i].add(2 * p))
                            };
                            let wb: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                            for (a, &xv) in a.iter_mut().zip(&xv) {
                                *a = _mm512_dpbf16_ps(*a, wb, xv);
                            }
                        }
                    }
                    for (i, a) in acc.iter().enumerate().take(live) {
                        for (v, &a) in a.iter().enumerate() {
                            _mm512_storeu_ps(acc_at(i, v).cast_mut(), a);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::infer_linear::cpu;
    use crate::ops::infer_linear::cpu_fast::Activations;
    use crate::testing::{assert_close, random_f32};

    fn bf16(v: f32) -> f32 {
        half::bf16::from_f32(v).to_f32()
    }

    /// Against the reference (f64 sums) at awkward sizes: odd columns, rows not a multiple of
    /// 8 or 32, tokens not a multiple of 48, several tiles, blocks and pair steps.
    #[test]
    fn matches_the_reference() {
        let isa = Isa::Avx512Bf16;
        if !Pairs::supported(isa) {
            println!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (rows, cols, tokens) in [(1, 1, 25), (7, 13, 26), (33, 129, 49), (70, 300, 101), (257, 1001, 48)] {
            let x: Vec<f32> = random_f32(tokens * cols, 1.0, 3).into_iter().map(bf16).collect();
            let wf: Vec<f32> = random_f32(rows * cols, 1.0, 4).into_iter().map(bf16).collect();
            let w: Vec<u16> = wf.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
            let act = Activations::new(isa, DType::BF16, &x, tokens, cols);
            let pairs = act.pairs();
            assert!(pairs.ready(), "{rows}x{cols}, {tokens} tokens: bf16 activations should pair");
            let mut y = vec![f32::NAN; tokens * rows];
            // Rows 0..rows in two ranges, as threads take them.
            let split = rows / 2;
            let ranges = [0..split, split..rows];
            for (range, out) in Dest::columns(&mut y, rows, tokens, &ranges) {
                prefill(pairs, &w, cols, range, out).unwrap();
            }
            let want = cpu::dense(&x, tokens, &wf, rows, cols);
            assert_close(&format!("{rows}x{cols}, {tokens} tokens"), &y, &want, 1e-5, 1e-5);
        }
    }

    /// Activations that are not all bf16, GEMV token counts and f32 weights keep the f32
    /// path.
    #[test]
    fn pairs_only_for_exact_bf16_prefill() {
        let isa = Isa::Avx512Bf16;
        if !Pairs::supported(isa) {
            println!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let tokens = GEMV_MAX_TOKENS + 1;
        let mut x: Vec<f32> = random_f32(tokens * 8, 1.0, 5).into_iter().map(bf16).collect();
        let ready = |dtype, x: &[f32], tokens| Activations::new(isa, dtype, x, tokens, 8).pairs().ready();
        assert!(ready(DType::BF16, &x, tokens));
        assert!(!ready(DType::F32, &x, tokens), "f32 weights");
        assert!(!ready(DType::BF16, &x[..32], 4), "decode");
        assert!(!ready(DType::BF16, &x[..8 * GEMV_MAX_TOKENS], GEMV_MAX_TOKENS), "GEMV passes");
        x[17] += 1e-6;
        assert!(!ready(DType::BF16, &x, tokens), "an activation that is not a bf16");
        // 40 tokens of 70 columns: an inexact value where 16-token groups are packed 32
        // columns at a time (on x86-64 with AVX-512 BW), in a group's last columns, and in
        // the tokens after the last group.
        let wide: Vec<f32> = random_f32(40 * 70, 1.0, 6).into_iter().map(bf16).collect();
        let ready = |x: &[f32]| Activations::new(isa, DType::BF16, x, 40, 70).pairs().ready();
        assert!(ready(&wide));
        for at in [17 * 70 + 33, 31 * 70 + 63, 31 * 70 + 69, 35 * 70 + 3] {
            let mut inexact = wide.clone();
            inexact[at] = f32::from_bits(inexact[at].to_bits() | 1);
            assert!(!ready(&inexact), "a value that is not a bf16 at token {}, column {}", at / 70, at % 70);
        }
        assert!([Isa::Avx512Vbmi2, Isa::Avx512, Isa::Avx2, Isa::Portable].iter().all(|&i| !Pairs::supported(i)));
    }
}
