//! `cuda/prune_select.cu` on the CPU, all 20 kernels, against `ops::prune_select::cpu` and
//! `BitMask::apply` with the tolerances of the op's cuda_*_match_cpu tests:
//! - scores of w [rows, cols] (f32 and bf16, a zero row and column when rows, cols > 2):
//!   `magnitude_scores_*` and `wanda_scores_*` bit for bit; RIA (`ria_col_partial_*`,
//!   `ria_col_reduce`, `ria_row_sum_*`, `ria_act`, `ria_scores_*`, a = 0.5 and 1) within
//!   1e-12 + 1e-6·|ref|; `apply_mask_*` bit for bit. Shapes: the op test's, one row of 255,
//!   256 and 257 columns (the 256-thread tiles and row-sum block), 128 and 129 rows (RIA's
//!   128-row column chunks); `magnitude_scores_*` also over 2²⁴ + 1 elements (one more than
//!   its largest grid: a grid-stride step).
//! - selection masks byte for byte (every byte starts as 0xa5, so an unwritten one fails):
//!   `select_rows_lowest` for k in {0, 1, ⌊0.3·cols⌋, ⌊0.5·cols⌋, ⌊0.7·cols⌋, ⌊0.99·cols⌋,
//!   cols − 1, cols} and `select_nm` for 2:4, 4:8, 1:4, 3:8 and 1:2 where M divides cols, on
//!   the op test's shapes (scores with ties, ±0, ±∞ and NaN), all-equal and all-NaN rows with
//!   −∞ among them, NaN-free random rows, heavily tied rows, 1, 2, 255, 256, 257 and 264
//!   columns; the flat select (`select_flat_hist`, `select_flat_choose`,
//!   `select_flat_count_equal`, `select_flat_write`) for k in {0, 1, ⌊len/3⌋, ⌊len/2⌋ + 1,
//!   len − 1, len} on the op test's lengths up to 100,003, around its 4096-score histogram
//!   blocks and 8192-score chunks (4095 to 4097, 8191 to 8193, 24,577), and all-equal and
//!   all-NaN runs across chunks (the op test's 2,000,001 is left to the GPU: minutes here).

use cuda_cpu::{Arg, Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::prune_select::cpu;
use sparsetune::ops::prune_select::cuda::{
    flat_geometry, magnitude_geometry, per_row_geometry, ria_geometry, row_tiles_geometry, FLAT_CHUNK,
    FLAT_HIST_PER_BLOCK, MAX_GRID_THREADS, RIA_ROWS_PER_CHUNK,
};
use sparsetune::sparse::BitMask;
use sparsetune::testing::{assert_close, assert_same_mask, random_f32, random_f64, tricky_scores};

use crate::{buffer, each_case, i32s, nan_buffer, run, tensor, widen, GUARDS};

const MODULE: &str = "prune_select";
/// Mask bytes and flat counts start as this (the launchers allocate them uninitialised).
const POISON: u8 = 0xa5;

/// Every kernel once: the smallest scores case in f32 and bf16, a row select with every k of
/// a two-column row and 1:2, and the flat select of one score with k = 0 and 1.
pub fn smoke() {
    scores::smoke();
    check_rows((1, 2, Kind::Random), Guard::After);
    check_flat((1, Kind::Random), Guard::After);
}

/// Bits of f32 values, for bit-for-bit comparisons (NaN-safe).
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

mod scores {
    use super::*;

    /// (rows, cols): the op tests' shapes (scores, then apply_mask's 7x4099), then edges.
    const SHAPES: [(usize, usize); 13] = [
        (1, 1),
        (3, 7),
        (5, 33),
        (130, 37),
        (17, 1000),
        (2, 4099),
        (7, 4099),
        (1, 255),
        (1, 256),
        (1, 257),
        (RIA_ROWS_PER_CHUNK, 3),
        (RIA_ROWS_PER_CHUNK + 1, 257),
        (3, 256),
    ];

    /// `magnitude_scores_*` over w (n elements), bit for bit against `cpu::magnitude`.
    pub(super) fn check_magnitude<T: CudaFloat>(what: &str, w: &Buffer<T>, wh: &[f32], guard: Guard) {
        let n = wh.len();
        let out = Buffer::filled(n, f32::NAN, guard);
        run(MODULE, &format!("magnitude_scores_{}", T::SUFFIX), magnitude_geometry(n).unwrap(), &[w, &out, &n]);
        assert!(bits(&out.to_vec()) == bits(&cpu::magnitude(wh)), "{what} magnitude: not bit for bit");
    }

    /// RIA's five launches as `prune_select::cuda::ria` makes them; returns the scores.
    fn ria<T: CudaFloat>(
        w: &Buffer<T>,
        scaler: &Buffer<f64>,
        a: f64,
        (rows, cols): (usize, usize),
        guard: Guard,
    ) -> Vec<f32> {
        let g = ria_geometry(rows, cols).unwrap();
        let [rows_i, cols_i, rpc_i, chunks_i] = i32s([rows, cols, RIA_ROWS_PER_CHUNK, g.chunks]);
        let [partial, col_sum, row_sum, act] =
            [g.chunks * cols, cols, rows, cols].map(|n| Buffer::filled(n, f64::NAN, guard));
        let out = Buffer::filled(rows * cols, f32::NAN, guard);
        let s = T::SUFFIX;
        run(MODULE, &format!("ria_col_partial_{s}"), g.col_partial, &[w, &partial, &rows_i, &cols_i, &rpc_i]);
        run(MODULE, "ria_col_reduce", g.col_reduce, &[&partial, &col_sum, &chunks_i, &cols_i]);
        run(MODULE, &format!("ria_row_sum_{s}"), g.row_sum, &[w, &row_sum, &rows_i, &cols_i]);
        run(MODULE, "ria_act", g.act, &[scaler, &act, &a, &cols_i]);
        let args: [&dyn Arg; 7] = [w, &col_sum, &row_sum, &act, &out, &rows_i, &cols_i];
        run(MODULE, &format!("ria_scores_{s}"), g.scores, &args);
        out.to_vec()
    }

    /// Every score kernel and apply_mask on one weight, as `prune_select::cuda` launches them.
    fn check<T: CudaFloat>((rows, cols): (usize, usize), guard: Guard) {
        let what = format!("prune_select scores {} {rows}x{cols} {guard:?}", T::DTYPE);
        let n = rows * cols;
        let mut wv = random_f32(n, 2.0, n as u64);
        // A zero column and a zero row: RIA's zero sums contribute 0.
        if cols > 2 && rows > 2 {
            (0..rows).for_each(|r| wv[r * cols + 1] = 0.0);
            (0..cols).for_each(|c| wv[2 * cols + c] = 0.0);
        }
        let w = tensor::<T>(wv, &[rows, cols]);
        let wh = w.to_f32_vec().unwrap();
        let w_buf = buffer::<T>(&w, guard);
        let scaler: Vec<f64> = random_f64(cols, 3.0, 7).iter().map(|v| v.abs()).collect();
        let scaler_buf = Buffer::from_slice(&scaler, guard);
        let [rows_i, cols_i, stride_i] = i32s([rows, cols, cols.div_ceil(8)]);

        check_magnitude::<T>(&what, &w_buf, &wh, guard);

        let out = Buffer::filled(n, f32::NAN, guard);
        let g = row_tiles_geometry("wanda_scores", rows, cols).unwrap();
        run(MODULE, &format!("wanda_scores_{}", T::SUFFIX), g, &[&w_buf, &scaler_buf, &out, &rows_i, &cols_i]);
        assert!(bits(&out.to_vec()) == bits(&cpu::wanda(&wh, cols, &scaler)), "{what} wanda: not bit for bit");

        for a in [0.5, 1.0] {
            let got = ria::<T>(&w_buf, &scaler_buf, a, (rows, cols), guard);
            assert_close(&format!("{what} ria a={a}"), &got, &cpu::ria(&wh, rows, cols, &scaler, a), 1e-12, 1e-6);
        }

        let keep = random_f32(n, 1.0, 81);
        let mask = BitMask::from_fn(rows, cols, |r, c| keep[r * cols + c] > 0.0);
        let mask_buf = Buffer::from_slice(mask.bytes(), guard);
        let out = nan_buffer::<T>(n, guard);
        let g = row_tiles_geometry("apply_mask", rows, cols).unwrap();
        let args: [&dyn Arg; 6] = [&w_buf, &mask_buf, &out, &rows_i, &cols_i, &stride_i];
        run(MODULE, &format!("apply_mask_{}", T::SUFFIX), g, &args);
        let mut want = wh.clone();
        mask.apply(&mut want).unwrap();
        assert!(bits(&widen(&out)) == bits(&want), "{what} apply_mask: not bit for bit");
    }

    f32_and_bf16_tests!(SHAPES[0], SHAPES);
}

/// One element more than the largest `magnitude_scores_*` grid covers: the last one is
/// reached by the grid-stride step.
#[test]
fn magnitude_one_more_than_a_full_grid_stride() {
    fn check<T: CudaFloat>(guard: Guard) {
        let n = MAX_GRID_THREADS + 1;
        let w = tensor::<T>(random_f32(n, 2.0, 5), &[n]);
        let what = format!("prune_select magnitude {} n={n} {guard:?}", T::DTYPE);
        scores::check_magnitude::<T>(&what, &buffer::<T>(&w, guard), &w.to_f32_vec().unwrap(), guard);
    }
    for guard in GUARDS {
        check::<f32>(guard);
    }
    check::<half::bf16>(Guard::After);
}

/// How a selection case's scores are made.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// The op tests' `tricky_scores`: ties, ±0, ±∞ and NaN.
    Tricky,
    /// NaN-free uniform values in [-1, 1), practically distinct.
    Random,
    /// `tricky_scores` doubled and rounded (the op test's coarse scores): a handful of values,
    /// long runs of ties.
    Coarse,
    /// All 0.5, with −∞ at every fifth element of the middle third.
    Equal,
    /// All NaN, with −∞ (its equal in the order) at every fifth element of the middle third.
    Nan,
}

/// n scores of `kind`.
fn make_scores(kind: Kind, n: usize, seed: u64) -> Vec<f32> {
    let fill = |value: f32| {
        let mut v = vec![value; n];
        (n / 3..2 * n / 3).step_by(5).for_each(|i| v[i] = f32::NEG_INFINITY);
        v
    };
    match kind {
        Kind::Tricky => tricky_scores(n, seed),
        Kind::Random => random_f32(n, 1.0, seed),
        Kind::Coarse => tricky_scores(n, seed).iter().map(|v| (v * 2.0).round()).collect(),
        Kind::Equal => fill(0.5),
        Kind::Nan => fill(f32::NAN),
    }
}

/// The pruned counts tested for a row of `len`: none, one, the op test's `middle` ones, all
/// but one and all (sorted, without repeats).
fn prune_counts(len: usize, middle: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut ks: Vec<usize> = [0, 1, len - 1, len].into_iter().chain(middle).map(|k| k.min(len)).collect();
    ks.sort_unstable();
    ks.dedup();
    ks
}

/// A mask buffer of `len` poisoned bytes.
fn poisoned_mask(len: usize, guard: Guard) -> Buffer<u8> {
    Buffer::filled(len, POISON, guard)
}

/// (rows, cols, scores).
type RowCase = (usize, usize, Kind);

/// The op test's shapes (tricky scores; all-equal and all-NaN rows of 4099), then edges:
/// one column, two (1:2), one tile of 256 columns, one column less and one more, 264 (N:M over
/// a full tile and a part of one), NaN-free and tied rows.
const ROW_CASES: [RowCase; 21] = [
    (3, 1, Kind::Tricky),
    (5, 7, Kind::Tricky),
    (13, 33, Kind::Tricky),
    (4, 36, Kind::Tricky),
    (9, 1000, Kind::Tricky),
    (5, 4099, Kind::Tricky),
    (3, 11008, Kind::Tricky),
    (3, 4099, Kind::Equal),
    (3, 4099, Kind::Nan),
    (1, 1, Kind::Random),
    (4, 2, Kind::Random),
    (4, 2, Kind::Equal),
    (2, 255, Kind::Random),
    (2, 256, Kind::Random),
    (2, 257, Kind::Random),
    (2, 256, Kind::Coarse),
    (2, 257, Kind::Coarse),
    (3, 264, Kind::Tricky),
    (3, 264, Kind::Coarse),
    (5, 1024, Kind::Random),
    (3, 1024, Kind::Equal),
];

/// N:M patterns (N kept of every M), each tested where M divides cols.
const NM: [(usize, usize); 5] = [(2, 4), (4, 8), (1, 4), (3, 8), (1, 2)];

/// `select_rows_lowest` for every tested k and `select_nm` for every pattern of [`NM`] that
/// fits, as `prune_select::cuda` launches them, against the CPU's bytes.
fn check_rows((rows, cols, kind): RowCase, guard: Guard) {
    let what = format!("prune_select {rows}x{cols} {kind:?} {guard:?}");
    let v = make_scores(kind, rows * cols, (rows * 7919 + cols) as u64);
    let v_buf = Buffer::from_slice(&v, guard);
    let stride = cols.div_ceil(8);
    let [rows_i, cols_i, stride_i] = i32s([rows, cols, stride]);
    for k in prune_counts(cols, [0.3, 0.5, 0.7, 0.99].map(|f: f64| (cols as f64 * f).floor() as usize)) {
        let mask = poisoned_mask(rows * stride, guard);
        let k_i = i32s([k])[0];
        let g = per_row_geometry("select", rows).unwrap();
        run(MODULE, "select_rows_lowest", g, &[&v_buf, &mask, &rows_i, &cols_i, &stride_i, &k_i]);
        let want = cpu::prune_lowest_per_row(&v, rows, cols, k);
        assert_same_mask(&format!("{what} select_rows_lowest k {k}"), &mask.to_vec(), want.bytes(), stride);
    }
    for (n, m) in NM.into_iter().filter(|&(_, m)| cols % m == 0) {
        let mask = poisoned_mask(rows * stride, guard);
        let [n_i, m_i] = i32s([n, m]);
        let g = row_tiles_geometry("select N:M", rows, cols).unwrap();
        let args: [&dyn Arg; 7] = [&v_buf, &mask, &rows_i, &cols_i, &stride_i, &n_i, &m_i];
        run(MODULE, "select_nm", g, &args);
        let want = cpu::prune_lowest_nm(&v, rows, cols, n, m).unwrap();
        assert_same_mask(&format!("{what} select_nm {n}:{m}"), &mask.to_vec(), want.bytes(), stride);
    }
}

/// (len, scores).
type FlatCase = (usize, Kind);

/// The op test's lengths up to 100,003 (tricky and coarse scores; 100,003 coarse only) and
/// edges: a histogram block of scores and one more or less (4097 = 8 grid strides of the
/// 2-block histogram grid and one more), a chunk and one more or less, three chunks and one
/// more, all-equal and all-NaN runs across chunks. Longer inputs (the op test's 2,000,001,
/// more than 1024 histogram blocks) take minutes here and add no new path:
/// the GPU test runs them.
const FLAT_CASES: [FlatCase; 17] = [
    (1, Kind::Tricky),
    (7, Kind::Tricky),
    (1000, Kind::Tricky),
    (8193, Kind::Tricky),
    (1, Kind::Coarse),
    (7, Kind::Coarse),
    (1000, Kind::Coarse),
    (8193, Kind::Coarse),
    (100_003, Kind::Coarse),
    (FLAT_HIST_PER_BLOCK - 1, Kind::Random),
    (FLAT_HIST_PER_BLOCK, Kind::Coarse),
    (FLAT_HIST_PER_BLOCK + 1, Kind::Random),
    (FLAT_CHUNK - 1, Kind::Coarse),
    (FLAT_CHUNK, Kind::Random),
    (FLAT_CHUNK + 1, Kind::Equal),
    (3 * FLAT_CHUNK + 1, Kind::Tricky),
    (2 * FLAT_CHUNK + 1, Kind::Nan),
];

/// The flat select of every tested k as `prune_select::cuda::select_flat_lowest` launches it
/// (four histogram and choose passes when k > 0, then count_equal and write), against the
/// CPU's bytes of the scores as one row.
fn check_flat((len, kind): FlatCase, guard: Guard) {
    let what = format!("prune_select flat len {len} {kind:?} {guard:?}");
    let v = make_scores(kind, len, 50 + len as u64);
    let v_buf = Buffer::from_slice(&v, guard);
    let g = flat_geometry(len).unwrap();
    let [n_i, chunk_i] = i32s([len, FLAT_CHUNK]);
    for k in prune_counts(len, [len / 3, len / 2 + 1]) {
        let state = Buffer::from_slice(&[0u32, u32::try_from(k).unwrap()], guard);
        if k > 0 {
            let hist = Buffer::filled(256, 0u32, guard);
            for shift in [24i32, 16, 8, 0] {
                run(MODULE, "select_flat_hist", g.hist, &[&v_buf, &n_i, &shift, &state, &hist]);
                run(MODULE, "select_flat_choose", g.choose, &[&hist, &state, &shift]);
            }
        }
        let counts = Buffer::filled(g.blocks, u32::from_ne_bytes([POISON; 4]), guard);
        run(MODULE, "select_flat_count_equal", g.chunks, &[&v_buf, &n_i, &chunk_i, &state, &counts]);
        let mask = poisoned_mask(len.div_ceil(8), guard);
        let args: [&dyn Arg; 6] = [&v_buf, &mask, &n_i, &chunk_i, &state, &counts];
        run(MODULE, "select_flat_write", g.chunks, &args);
        let want = cpu::prune_lowest_per_row(&v, 1, len, k);
        assert_same_mask(&format!("{what} k {k}"), &mask.to_vec(), want.bytes(), len.div_ceil(8));
    }
}

#[test]
fn select_rows_and_nm_match_cpu_bytes() {
    each_case(&ROW_CASES, check_rows);
}

#[test]
fn select_flat_matches_cpu_bytes() {
    each_case(&FLAT_CASES, check_flat);
}
