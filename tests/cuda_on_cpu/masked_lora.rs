//! `cuda/masked_lora.cu` on the CPU: `masked_lora_weff_bitmask_*` and
//! `masked_lora_weff_two_four_*` build W_eff = W⊙M + s·M⊙(B·A) [rows, cols] from a bitmask
//! SparseWeight's values, mask and row offsets, or a 2:4 one's values and positions, and the
//! adapters A [rank, cols], B [rows, rank], into a NaN-filled buffer, against
//! `ops::masked_lora::cpu::effective_weight` (f64) with the ops' tolerances (f32 1e-5 +
//! 1e-4·|ref|, bf16 1e-2 + 1e-2·|ref|); a row whose mask keeps more columns than its offsets
//! give comes out NaN there, with no read of another row's values; two 2:4 values at one
//! position keep the later one.

use cuda_cpu::{Arg, Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::masked_lora::cpu::{effective_weight, Dims};
use sparsetune::ops::masked_lora::cuda::weff_geometry;
use sparsetune::sparse::{SparseFormat, SparseWeight};
use sparsetune::testing::{assert_close, random_f32, random_mask};

use crate::{buffer, i32s, nan_buffer, run, tensor, tolerance, widen};

/// (rows, cols, rank, sparsity, format): a bitmask base at that sparsity, or a 2:4 one.
type Case = (usize, usize, usize, f64, SparseFormat);

const BITMASK: SparseFormat = SparseFormat::Bitmask;
const NM24: SparseFormat = SparseFormat::NM { n: 2, m: 4 };

/// Awkward sizes: rows not a multiple of the block's 4, columns not a multiple of 8 (the
/// element-by-element path; for 2:4 a last lone group of 4) and a multiple of 8 (16-byte
/// loads and stores where aligned); one element (one group); a row of 2056 columns (257
/// mask bytes: two steps of 256 threads); every column kept, and none.
const CASES: [Case; 12] = [
    (7, 37, 3, 0.5, BITMASK),
    (9, 64, 16, 0.7, BITMASK),
    (1, 1, 1, 0.0, BITMASK),
    (5, 2056, 5, 0.5, BITMASK),
    (4, 40, 2, 0.0, BITMASK),
    (3, 24, 4, 1.0, BITMASK),
    (13, 96, 8, 0.3, BITMASK),
    (5, 40, 3, 0.0, NM24),
    (7, 36, 2, 0.0, NM24),
    (1, 4, 1, 0.0, NM24),
    (3, 2056, 4, 0.0, NM24),
    (9, 64, 16, 0.0, NM24),
];

/// The kernel of `w`'s format the way `masked_lora::cuda::build_effective` launches it, with
/// `meta` as its mask or positions and `offsets` as a bitmask's row offsets; returns W_eff.
#[allow(clippy::too_many_arguments)]
fn launch<T: CudaFloat>(
    w: &SparseWeight,
    meta: &[u8],
    offsets: &[u32],
    a: &[f32],
    b: &[f32],
    s: f32,
    d: Dims,
    guard: Guard,
) -> Vec<f32> {
    let (rows, cols) = (d.output, d.input);
    let values = buffer::<T>(w.values(), guard);
    let meta = Buffer::from_slice(meta, guard);
    let a = buffer::<T>(&tensor::<T>(a.to_vec(), &[d.rank, cols]), guard);
    let b = buffer::<T>(&tensor::<T>(b.to_vec(), &[rows, d.rank]), guard);
    let out = nan_buffer::<T>(rows * cols, guard);
    let [rows_i, cols_i, stride_i, rank_i] = i32s([rows, cols, cols.div_ceil(8), d.rank]);
    let geometry = weff_geometry(rows, d.rank).unwrap();
    if w.format() == NM24 {
        let args: [&dyn Arg; 10] = [&values, &meta, &a, &b, &s, &out, &rows_i, &cols_i, &stride_i, &rank_i];
        run("masked_lora", &format!("masked_lora_weff_two_four_{}", T::SUFFIX), geometry, &args);
    } else {
        let offsets = Buffer::from_slice(offsets, guard);
        let args: [&dyn Arg; 11] = [&values, &meta, &offsets, &a, &b, &s, &out, &rows_i, &cols_i, &stride_i, &rank_i];
        run("masked_lora", &format!("masked_lora_weff_bitmask_{}", T::SUFFIX), geometry, &args);
    }
    widen(&out)
}

/// A's and B's values as the kernel sees them (rounded to T).
fn rounded<T: CudaFloat>(v: &[f32], dims: &[usize]) -> Vec<f32> {
    tensor::<T>(v.to_vec(), dims).to_f32_vec().unwrap()
}

fn check<T: CudaFloat>((rows, cols, rank, sparsity, format): Case, guard: Guard) {
    let what = format!("masked_lora W_eff {} {format:?} {rows}x{cols} rank {rank} {sparsity} {guard:?}", T::DTYPE);
    let nm = (format == NM24).then_some((2, 4));
    let mask = random_mask(rows, cols, sparsity, nm, 7);
    let mut dense = random_f32(rows * cols, 1.0, 8);
    mask.apply(&mut dense).unwrap();
    let w = SparseWeight::compress(&tensor::<T>(dense, &[rows, cols]), &mask, format).unwrap();
    let (a, b) = (random_f32(rank * cols, 0.5, 9), random_f32(rows * rank, 0.5, 10));
    let s = 0.75;
    let d = Dims { tokens: 1, input: cols, output: rows, rank };
    let offsets = w.row_offsets().map_or_else(Vec::new, |o| o.to_vec::<u32>().unwrap());
    let got = launch::<T>(&w, &w.meta().to_vec::<u8>().unwrap(), &offsets, &a, &b, s, d, guard);
    // The reference on the values as stored and the adapters rounded to T.
    let w_dense = w.to_dense().unwrap().to_f32_vec().unwrap();
    let keep: Vec<bool> = (0..rows * cols).map(|i| mask.get(i / cols, i % cols)).collect();
    let (a_t, b_t) = (rounded::<T>(&a, &[rank, cols]), rounded::<T>(&b, &[rows, rank]));
    let want: Vec<f32> =
        effective_weight(&w_dense, &keep, &a_t, &b_t, f64::from(s), d).iter().map(|&v| v as f32).collect();
    let (atol, rtol) = tolerance::<T>();
    assert_close(&what, &got, &want, atol, rtol);
}

/// A 2:4 group whose two values name the same position (1): only that column is kept, with
/// the later value, as the expansion resolves it.
fn repeated_position<T: CudaFloat>(guard: Guard) {
    let (rows, cols, rank) = (1, 4, 1);
    let values = [0.5f32, -0.25];
    let w = SparseWeight::compress(
        &tensor::<T>(vec![0.0, 0.5, -0.25, 0.0], &[rows, cols]),
        &sparsetune::sparse::BitMask::from_fn(rows, cols, |_, c| c == 1 || c == 2),
        NM24,
    )
    .unwrap();
    let d = Dims { tokens: 1, input: cols, output: rows, rank };
    let (a, b) = ([1.0f32, 2.0, 3.0, 4.0], [0.5f32]);
    // Positions 1 and 1 (binary 01 01) instead of the compressed 1 and 2.
    let got = launch::<T>(&w, &[0b0101], &[], &a, &b, 1.0, d, guard);
    let want = [0.0, values[1] + 0.5 * 2.0, 0.0, 0.0];
    assert_close(&format!("repeated 2:4 position {} {guard:?}", T::DTYPE), &got, &want, 0.0, 0.0);
}

/// A row whose offsets give it one value fewer than its mask keeps: its last kept column is
/// NaN (the kernel stops at the row's end instead of reading the next row's first value).
fn short_row<T: CudaFloat>(guard: Guard) {
    let (rows, cols, rank) = (3, 40, 2);
    let mask = random_mask(rows, cols, 0.5, None, 3);
    let mut dense = random_f32(rows * cols, 1.0, 4);
    mask.apply(&mut dense).unwrap();
    let w = SparseWeight::compress(&tensor::<T>(dense, &[rows, cols]), &mask, SparseFormat::Bitmask).unwrap();
    let mut offsets = w.row_offsets().unwrap().to_vec::<u32>().unwrap();
    offsets[1] -= 1; // row 0 ends one value early, row 1 starts there
    let d = Dims { tokens: 1, input: cols, output: rows, rank };
    let (a, b) = (random_f32(rank * cols, 0.5, 5), random_f32(rows * rank, 0.5, 6));
    let got = launch::<T>(&w, &w.meta().to_vec::<u8>().unwrap(), &offsets, &a, &b, 1.0, d, guard);
    let last_kept = (0..cols).rev().find(|&c| mask.get(0, c)).unwrap();
    assert!(got[last_kept].is_nan(), "row 0 column {last_kept}: {} past the row's values", got[last_kept]);
    assert!(got[..last_kept].iter().all(|v| v.is_finite()), "row 0 before its last kept column");
}

/// The smallest cases (a bitmask and a 2:4 base), for the kernel count.
pub fn smoke() {
    for case in [CASES[2], CASES[9]] {
        check::<f32>(case, Guard::After);
        check::<half::bf16>(case, Guard::After);
    }
}

#[test]
fn f32_matches_cpu() {
    crate::each_case(&CASES, check::<f32>);
}

#[test]
fn bf16_matches_cpu() {
    crate::each_case(&CASES, check::<half::bf16>);
}

#[test]
fn a_repeated_two_four_position_keeps_the_later_value() {
    for guard in crate::GUARDS {
        repeated_position::<f32>(guard);
        repeated_position::<half::bf16>(guard);
    }
}

#[test]
fn a_row_shorter_than_its_mask_gives_nan_not_another_rows_values() {
    for guard in crate::GUARDS {
        short_row::<f32>(guard);
        short_row::<half::bf16>(guard);
    }
}
