//! `cuda/masked_lora.cu` on the CPU: `masked_lora_weff_bitmask_*` builds W_eff = W⊙M +
//! s·M⊙(B·A) [rows, cols] from a bitmask SparseWeight's values, mask and row offsets and the
//! adapters A [rank, cols], B [rows, rank], into a NaN-filled buffer, against
//! `ops::masked_lora::cpu::effective_weight` (f64) with the ops' tolerances (f32 1e-5 +
//! 1e-4·|ref|, bf16 1e-2 + 1e-2·|ref|); and a row whose mask keeps more columns than its
//! offsets give comes out NaN there, with no read of another row's values.

use cuda_cpu::{Arg, Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::masked_lora::cpu::{effective_weight, Dims};
use sparsetune::ops::masked_lora::cuda::weff_geometry;
use sparsetune::sparse::{SparseFormat, SparseWeight};
use sparsetune::testing::{assert_close, random_f32, random_mask};

use crate::{buffer, i32s, nan_buffer, run, tensor, tolerance, widen};

/// (rows, cols, rank, sparsity).
type Case = (usize, usize, usize, f64);

/// Awkward sizes: rows not a multiple of the block's 4, columns not a multiple of 8 (the
/// element-by-element path) and a multiple of 8 (16-byte loads and stores where aligned);
/// one element; a row of 2056 columns (257 mask bytes: two steps of 256 threads); every
/// column kept, and none.
const CASES: [Case; 7] = [
    (7, 37, 3, 0.5),
    (9, 64, 16, 0.7),
    (1, 1, 1, 0.0),
    (5, 2056, 5, 0.5),
    (4, 40, 2, 0.0),
    (3, 24, 4, 1.0),
    (13, 96, 8, 0.3),
];

/// The kernel the way `masked_lora::cuda::build_effective` launches it; returns W_eff.
fn launch<T: CudaFloat>(
    w: &SparseWeight,
    offsets: &[u32],
    a: &[f32],
    b: &[f32],
    s: f32,
    d: Dims,
    guard: Guard,
) -> Vec<f32> {
    let (rows, cols) = (d.output, d.input);
    let values = buffer::<T>(w.values(), guard);
    let mask = Buffer::from_slice(&w.meta().to_vec::<u8>().unwrap(), guard);
    let offsets = Buffer::from_slice(offsets, guard);
    let a = buffer::<T>(&tensor::<T>(a.to_vec(), &[d.rank, cols]), guard);
    let b = buffer::<T>(&tensor::<T>(b.to_vec(), &[rows, d.rank]), guard);
    let out = nan_buffer::<T>(rows * cols, guard);
    let [rows_i, cols_i, stride_i, rank_i] = i32s([rows, cols, cols.div_ceil(8), d.rank]);
    let args: [&dyn Arg; 11] = [&values, &mask, &offsets, &a, &b, &s, &out, &rows_i, &cols_i, &stride_i, &rank_i];
    run("masked_lora", &format!("masked_lora_weff_bitmask_{}", T::SUFFIX), weff_geometry(rows, d.rank).unwrap(), &args);
    widen(&out)
}

fn check<T: CudaFloat>((rows, cols, rank, sparsity): Case, guard: Guard) {
    let what = format!("masked_lora W_eff {} {rows}x{cols} rank {rank} {sparsity} {guard:?}", T::DTYPE);
    let mask = random_mask(rows, cols, sparsity, None, 7);
    let mut dense = random_f32(rows * cols, 1.0, 8);
    mask.apply(&mut dense).unwrap();
    let w = SparseWeight::compress(&tensor::<T>(dense, &[rows, cols]), &mask, SparseFormat::Bitmask).unwrap();
    let (a, b) = (random_f32(rank * cols, 0.5, 9), random_f32(rows * rank, 0.5, 10));
    let s = 0.75;
    let d = Dims { tokens: 1, input: cols, output: rows, rank };
    let offsets = w.row_offsets().unwrap().to_vec::<u32>().unwrap();
    let got = launch::<T>(&w, &offsets, &a, &b, s, d, guard);
    // The reference on the values as stored (rounded to T) and the adapters rounded to T.
    let w_dense = w.to_dense().unwrap().to_f32_vec().unwrap();
    let keep: Vec<bool> = (0..rows * cols).map(|i| mask.get(i / cols, i % cols)).collect();
    let (a_t, b_t) =
        (tensor::<T>(a, &[rank, cols]).to_f32_vec().unwrap(), tensor::<T>(b, &[rows, rank]).to_f32_vec().unwrap());
    let want: Vec<f32> =
        effective_weight(&w_dense, &keep, &a_t, &b_t, f64::from(s), d).iter().map(|&v| v as f32).collect();
    let (atol, rtol) = tolerance::<T>();
    assert_close(&what, &got, &want, atol, rtol);
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
    let got =
        launch::<T>(&w, &offsets, &random_f32(rank * cols, 0.5, 5), &random_f32(rows * rank, 0.5, 6), 1.0, d, guard);
    let last_kept = (0..cols).rev().find(|&c| mask.get(0, c)).unwrap();
    assert!(got[last_kept].is_nan(), "row 0 column {last_kept}: {} past the row's values", got[last_kept]);
    assert!(got[..last_kept].iter().all(|v| v.is_finite()), "row 0 before its last kept column");
}

/// The smallest case, for the kernel count.
pub fn smoke() {
    check::<f32>(CASES[2], Guard::After);
    check::<half::bf16>(CASES[2], Guard::After);
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
fn a_row_shorter_than_its_mask_gives_nan_not_another_rows_values() {
    for guard in crate::GUARDS {
        short_row::<f32>(guard);
        short_row::<half::bf16>(guard);
    }
}
