//! `cuda/nm_pack.cu` on the CPU: `nm_compress_values_*` (dense [rows, cols] f32 or bf16 and
//! bitmask [rows, ⌈cols/8⌉] → values [rows, cols/m·n], and the first group not keeping
//! exactly n in bad_group) and `nm_compress_indices` (→ indices [rows, ⌈cols/m·n·bits/8⌉]
//! u8), against `sparse::NmMatrix::compress` bit for bit, as ops::nm_pack's
//! cuda_matches_cpu_bytes compares them.

use cuda_cpu::{Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::nm_pack::cuda::row_tiles_geometry;
use sparsetune::ops::prune_select::cpu::prune_lowest_nm;
use sparsetune::sparse::nm::index_bits;
use sparsetune::sparse::{BitMask, NmMatrix};
use sparsetune::testing::random_f32;

use crate::{i32s, nan_buffer, run, widen, GUARDS};

/// (n, m) patterns and (rows, groups per row) sizes of the op test, every pair a case.
const PATTERNS: [(usize, usize); 7] = [(2, 4), (4, 8), (1, 4), (3, 8), (5, 16), (1, 2), (2, 6)];
const SIZES: [(usize, usize); 3] = [(1, 3), (7, 11), (37, 130)];

/// (n, m, rows, groups per row): one value (1:2, one group); 2:4 with 128 groups (256
/// values: one full tile of values) and 129 (a tile straddled).
const EDGES: [(usize, usize, usize, usize); 3] = [(1, 2, 1, 1), (2, 4, 3, 128), (2, 4, 1, 129)];

/// The op test's cases, then the edges.
fn cases() -> Vec<(usize, usize, usize, usize)> {
    let op_cases = PATTERNS.iter().flat_map(|&(n, m)| SIZES.iter().map(move |&(rows, groups)| (n, m, rows, groups)));
    op_cases.chain(EDGES).collect()
}

/// Both kernels the way `nm_pack::cuda::compress` launches them: (values, indices, bad_group).
fn compress<T: CudaFloat>(
    dense: &[T],
    mask: &BitMask,
    (rows, cols, n, m): (usize, usize, usize, usize),
    guard: Guard,
) -> (Vec<f32>, Vec<u8>, u64) {
    let op = "nm_pack compress";
    let (mask_stride, per_row, index_stride) =
        (cols.div_ceil(8), cols / m * n, NmMatrix::<u8>::index_stride(cols, n, m));
    let (dense, mask) = (Buffer::from_slice(dense, guard), Buffer::from_slice(mask.bytes(), guard));
    let (values, indices) =
        (nan_buffer::<T>(rows * per_row, guard), Buffer::filled(rows * index_stride, 0xA5u8, guard));
    let bad_group = Buffer::from_slice(&[u64::MAX], guard);
    let [rows_i, cols_i, mask_stride_i, n_i, m_i, index_stride_i, bits_i] =
        i32s([rows, cols, mask_stride, n, m, index_stride, index_bits(m)]);
    let launch = row_tiles_geometry(op, rows, per_row).unwrap();
    let kernel = format!("nm_compress_values_{}", T::SUFFIX);
    run(
        "nm_pack",
        &kernel,
        launch,
        &[&dense, &mask, &values, &bad_group, &rows_i, &cols_i, &mask_stride_i, &n_i, &m_i],
    );
    let launch = row_tiles_geometry(op, rows, index_stride).unwrap();
    let args: [&dyn cuda_cpu::Arg; 9] =
        [&mask, &indices, &rows_i, &cols_i, &mask_stride_i, &index_stride_i, &n_i, &m_i, &bits_i];
    run("nm_pack", "nm_compress_indices", launch, &args);
    (widen(&values), indices.to_vec(), bad_group.to_vec()[0])
}

/// A dense matrix and an N:M mask as the op test draws them.
fn case<T: CudaFloat>(rows: usize, cols: usize, n: usize, m: usize) -> (Vec<T>, BitMask) {
    let mask = prune_lowest_nm(&random_f32(rows * cols, 1.0, (rows * cols + n) as u64), rows, cols, n, m).unwrap();
    (random_f32(rows * cols, 2.0, 5).into_iter().map(T::from_f32).collect(), mask)
}

/// Compresses one case and compares values (bits), indices and bad_group with the reference.
fn check<T: CudaFloat>((n, m, rows, groups): (usize, usize, usize, usize), guard: Guard) {
    let cols = m * groups;
    let what = format!("nm_pack {} {n}:{m} {rows}x{cols} {guard:?}", T::DTYPE);
    let (dense, mask) = case::<T>(rows, cols, n, m);
    let (values, indices, bad_group) = compress(&dense, &mask, (rows, cols, n, m), guard);
    let want = NmMatrix::compress(&dense, &mask, n, m).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let want_values: Vec<f32> = want.values().iter().map(|&v| v.to_f32()).collect();
    assert_eq!(bits(&values), bits(&want_values), "{what} values");
    assert_eq!(indices, want.indices(), "{what} indices");
    assert_eq!(bad_group, u64::MAX, "{what}: bad_group set for a good mask");
}

f32_and_bf16_tests!(EDGES[0], cases());

/// A group keeping n + 1 or n − 1 is reported as the smallest bad flat group index, as
/// ops::nm_pack's cuda_bad_masks_are_errors expects (row 3, group 8 of 9).
#[test]
fn bad_groups_are_reported() {
    let (rows, cols, n, m) = (5, 36, 2, 4);
    for guard in GUARDS {
        for (c, keep) in [(33, true), (34, false)] {
            let (dense, mut mask) = case::<f32>(rows, cols, n, m);
            let flip = (c - c % 4..c - c % 4 + 4).find(|&k| mask.get(3, k) != keep).unwrap();
            mask.set(3, flip, keep);
            let (_, _, bad_group) = compress(&dense, &mask, (rows, cols, n, m), guard);
            assert_eq!(bad_group, 3 * 9 + 8, "{guard:?} column {c} kept {keep}");
        }
    }
}
