//! `cuda/sparse.cu` on the CPU: `bitmask_expand_*` and `nm_expand_*` (values + bitmask
//! [rows, ⌈cols/8⌉] with row offsets [rows + 1], or values + packed N:M positions → dense
//! [rows, cols]) in their three modes (overwrite, add kept, and the gather of the kept
//! positions into the values), against `SparseWeight::{expand_into_host, gather_host}` bit
//! for bit, as sparse::weight's cuda_expand_matches_cpu and gather tests compare them;
//! `mask_window_*` (mask only, over every column and over windows of columns [rows, width])
//! against `expand_into_host(MaskOnly)`'s columns; and `nonzero_mask_*` (the mask of a dense
//! weight's non-zeros) against `BitMask::from_nonzero`.

use cuda_cpu::{Arg, Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::sparse::cuda::{bitmask_geometry, mask_window_geometry, nm_geometry, nonzero_mask_geometry};
use sparsetune::sparse::nm::index_bits;
use sparsetune::sparse::{BitMask, Expand, SparseFormat, SparseWeight};
use sparsetune::testing::{random_f32, random_mask};

use crate::{i32s, nan_buffer, run, tensor};

/// (rows, cols, sparsity, N:M pattern of the mask, format).
type Case = (usize, usize, f64, Option<(usize, usize)>, SparseFormat);

const BITMASK: SparseFormat = SparseFormat::Bitmask;
const NM24: SparseFormat = SparseFormat::NM { n: 2, m: 4 };

/// The op tests' cases (sparse::weight), then its N:M big case, then edges: one element;
/// 2049 columns (257 mask bytes: threads count two bytes each, one thread none); 65,536
/// columns (a mask row of MAX_STRIDE bytes); an N:M row of 256 and 260 columns (one column
/// tile full, then straddled); 5:16 (4-bit positions) and 1:2 (1-bit).
const CASES: [Case; 15] = [
    (7, 37, 0.5, None, BITMASK),
    (13, 64, 0.7, None, BITMASK),
    (3, 9, 0.0, None, BITMASK),
    (5, 40, 0.0, Some((2, 4)), BITMASK),
    (5, 40, 0.0, Some((2, 4)), NM24),
    (9, 48, 0.0, Some((4, 8)), SparseFormat::NM { n: 4, m: 8 }),
    (2, 12, 0.0, Some((1, 4)), SparseFormat::NM { n: 1, m: 4 }),
    (70, 1028, 0.0, Some((2, 4)), NM24),
    (1, 1, 0.0, None, BITMASK),
    (3, 2049, 0.5, None, BITMASK),
    (1, 65536, 0.6, None, BITMASK),
    (2, 256, 0.0, Some((2, 4)), NM24),
    (3, 260, 0.0, Some((2, 4)), NM24),
    (4, 48, 0.0, Some((5, 16)), SparseFormat::NM { n: 5, m: 16 }),
    (1, 2, 0.0, Some((1, 2)), SparseFormat::NM { n: 1, m: 2 }),
];

/// The kernel of `w`'s format the way `sparse::cuda::launch` calls it with `mode`, on guarded
/// copies of `values` and `out`; returns them after the launch.
fn launch<T: CudaFloat>(w: &SparseWeight, values: &[T], out: &[T], mode: i32, guard: Guard) -> (Vec<T>, Vec<T>) {
    let (rows, cols) = (w.rows(), w.cols());
    let op = "sparse expand";
    let (values, out) = (Buffer::from_slice(values, guard), Buffer::from_slice(out, guard));
    let meta = Buffer::from_slice(&w.meta().to_vec::<u8>().unwrap(), guard);
    match w.format() {
        SparseFormat::Bitmask => {
            let offsets = Buffer::from_slice(&w.row_offsets().unwrap().to_vec::<u32>().unwrap(), guard);
            let [rows_i, cols_i, stride_i] = i32s([rows, cols, cols.div_ceil(8)]);
            let args: [&dyn Arg; 8] = [&values, &meta, &offsets, &out, &rows_i, &cols_i, &stride_i, &mode];
            run("sparse", &format!("bitmask_expand_{}", T::SUFFIX), bitmask_geometry(op, rows).unwrap(), &args);
        }
        SparseFormat::NM { n, m } => {
            let index_stride = (cols / m * n * index_bits(m)).div_ceil(8);
            let [rows_i, cols_i, is_i, n_i, m_i, bits_i] = i32s([rows, cols, index_stride, n, m, index_bits(m)]);
            let args: [&dyn Arg; 10] = [&values, &meta, &out, &rows_i, &cols_i, &is_i, &n_i, &m_i, &bits_i, &mode];
            run("sparse", &format!("nm_expand_{}", T::SUFFIX), nm_geometry(op, rows, cols).unwrap(), &args);
        }
    }
    (values.to_vec(), out.to_vec())
}

/// `mask_window_*` the way `sparse::cuda::mask_window` calls it, on a guarded copy of `out`
/// [rows, width] (columns col0.. of `w`); returns it after the launch.
fn launch_mask<T: CudaFloat>(w: &SparseWeight, out: &[T], col0: usize, width: usize, guard: Guard) -> Vec<T> {
    let out = Buffer::from_slice(out, guard);
    let meta = Buffer::from_slice(&w.meta().to_vec::<u8>().unwrap(), guard);
    let (n, m, bits) = match w.format() {
        SparseFormat::Bitmask => (0, 0, 0),
        SparseFormat::NM { n, m } => (n, m, index_bits(m)),
    };
    let stride = w.meta().elem_count() / w.rows();
    let ints = i32s([w.rows(), stride, col0, width, n, m, bits]);
    let args: [&dyn Arg; 9] = [&meta, &out, &ints[0], &ints[1], &ints[2], &ints[3], &ints[4], &ints[5], &ints[6]];
    let geometry = mask_window_geometry("sparse mask window", w.rows(), width).unwrap();
    run("sparse", &format!("mask_window_{}", T::SUFFIX), geometry, &args);
    out.to_vec()
}

fn bits<T: CudaFloat>(v: &[T]) -> Vec<u32> {
    v.iter().map(|x| x.to_f32().to_bits()).collect()
}

/// Every mode of the case's kernel against the reference: overwrite into NaN, add kept and
/// mask only over a buffer holding 0.25, and the gather of the pruned dense weight into NaN
/// values (the dense buffer must stay as it was).
fn check<T: CudaFloat>((rows, cols, sparsity, nm, format): Case, guard: Guard) {
    let what = format!("sparse {} {rows}x{cols} {sparsity} {nm:?} {format:?} {guard:?}", T::DTYPE);
    let mask = random_mask(rows, cols, sparsity, nm, 12);
    let mut dense = random_f32(rows * cols, 1.0, 11);
    mask.apply(&mut dense).unwrap();
    let w = tensor::<T>(dense, &[rows, cols]);
    let s = SparseWeight::compress(&w, &mask, format).unwrap();
    let values = s.values().to_vec::<T>().unwrap();
    let nan = nan_buffer::<T>(rows * cols, guard).to_vec();
    let quarter = vec![T::from_f32(0.25); rows * cols];
    for (mode, name, start) in [(Expand::Overwrite, 0, &nan), (Expand::AddKept, 1, &quarter)] {
        let mut want = start.clone();
        s.expand_into_host(&mut want, mode).unwrap();
        let (values_after, got) = launch(&s, &values, start, name, guard);
        assert_eq!(bits(&got), bits(&want), "{what} {mode:?}");
        assert_eq!(bits(&values_after), bits(&values), "{what} {mode:?}: values written");
    }
    // Mask only, over a buffer of distinct values: every column, then a window from a middle
    // mask byte to the end (uneven width where cols is).
    let start: Vec<T> = (0..rows * cols).map(|k| T::from_f32(1.0 + (k % 97) as f32)).collect();
    let mut masked = start.clone();
    s.expand_into_host(&mut masked, Expand::MaskOnly).unwrap();
    let col0 = cols / 16 * 8;
    for (col0, width) in [(0, cols), (col0, cols - col0)] {
        let window = |m: &[T]| -> Vec<T> {
            (0..rows).flat_map(|r| m[r * cols + col0..r * cols + col0 + width].to_vec()).collect()
        };
        let got = launch_mask(&s, &window(&start), col0, width, guard);
        assert_eq!(bits(&got), bits(&window(&masked)), "{what} mask of columns {col0}..+{width}");
    }
    let dense = w.to_vec::<T>().unwrap();
    let (gathered, dense_after) = launch(&s, &nan_buffer::<T>(values.len(), guard).to_vec(), &dense, 3, guard);
    assert_eq!(bits(&gathered), bits(&s.gather_host(&dense).unwrap()), "{what} gather");
    assert_eq!(bits(&dense_after), bits(&dense), "{what} gather: dense written");

    // nonzero_mask_*: the pruned weight's mask found from its values, with a -0 (a zero) in
    // its first entry and a NaN (kept) in its last; the mask buffer starts as 0xA5 bytes.
    let mut probe = dense;
    probe[0] = T::from_f32(-0.0);
    probe[rows * cols - 1] = T::from_f32(f32::NAN);
    let widened: Vec<f32> = probe.iter().map(|v| v.to_f32()).collect();
    let want = BitMask::from_nonzero(&widened, rows, cols).unwrap();
    let (probe, found) = (Buffer::from_slice(&probe, guard), Buffer::filled(want.bytes().len(), 0xA5u8, guard));
    let [rows_i, cols_i, stride_i] = i32s([rows, cols, cols.div_ceil(8)]);
    let args: [&dyn Arg; 5] = [&probe, &found, &rows_i, &cols_i, &stride_i];
    run("sparse", &format!("nonzero_mask_{}", T::SUFFIX), nonzero_mask_geometry(rows, cols).unwrap(), &args);
    assert_eq!(found.to_vec(), want.bytes(), "{what} nonzero mask");
}

// A bitmask and an N:M case run both kernels.
f32_and_bf16_tests!([CASES[8], CASES[14]], CASES);
