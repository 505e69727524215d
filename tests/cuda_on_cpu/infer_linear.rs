//! `cuda/infer_linear.cu` on the CPU: `bitmask_decode_*` and `nm_decode_*` (y [N, rows] =
//! x [N, cols]·(W⊙M)ᵀ for N ≤ 4 tokens, W compressed as a bitmask or N:M) with the geometry of
//! `ops::infer_linear::cuda`, against the reference `ops::infer_linear::cpu::compressed`
//! (f32 1e-5 + 1e-4·|ref|, bf16 1e-2 + 1e-2·|ref|). The weight's buffers are the crate's own
//! packing: `SparseWeight::from_dense` of the pruned matrix, read back as stored.

use cuda_cpu::{Arg, Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::infer_linear::cpu;
use sparsetune::ops::infer_linear::cuda::{
    bitmask_geometry, decodes, nm_geometry, Dims, GpuLimits, DECODE_MAX_TOKENS, MAX_NM_M,
};
use sparsetune::sparse::nm::index_bits;
use sparsetune::sparse::{BitMask, SparseFormat, SparseWeight};
use sparsetune::testing::{assert_close, random_f32, random_mask};

use crate::{buffer, i32s, nan_buffer, run, tensor, tolerance, widen};

/// Which entries W keeps.
#[derive(Clone, Copy, Debug)]
enum Pattern {
    /// A bitmask weight with this fraction of every row pruned (1.0: rows keep nothing).
    Sparsity(f64),
    /// A bitmask weight whose row r keeps all (r % 4 == 0), none (r % 4 == 1), or a fraction
    /// falling with r.
    Uneven,
    /// An N:M weight (N kept in every group of M columns).
    NM(usize, usize),
}

/// (tokens, rows, cols, pattern).
type Case = (usize, usize, usize, Pattern);

/// One SM, so that the grid holds at most 2 blocks and warps stride over rows past 32; a
/// block may take all the dynamic shared memory the CPU execution models (227 KiB).
const LIMITS: GpuLimits = GpuLimits { sms: 1, shared_per_block: 227 << 10, shared_per_sm: 228 << 10 };

/// The brief's grid, every pattern on each size with the token count turning over 1..=4:
/// cols 1, 7, 33, 100, 257 (not multiples of 8 or 32; 100 and 36 for 2:4) × rows 1, 31, 33,
/// 130; then edges: rows over several 1024-column segments, the last one partial (2500 at
/// 50%, 3000 at 97%, whose segments and words are often empty; 1001 uneven), a 7B row
/// (11008 columns), 2:4 rows ending half way through a position byte (36)
/// or long (4096), 4:8, 5:16 (4-bit positions), 1:2, 2:6 (3 bits, M not a power of two) and
/// 3:128 (the largest M, 7-bit positions).
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let patterns = [
        Pattern::Sparsity(0.0),
        Pattern::Sparsity(0.5),
        Pattern::Sparsity(0.7),
        Pattern::Sparsity(1.0),
        Pattern::Uneven,
        Pattern::NM(2, 4),
    ];
    for (i, cols) in [1, 7, 33, 100, 257, 36].into_iter().enumerate() {
        for (j, rows) in [1, 31, 33, 130].into_iter().enumerate() {
            for (p, pattern) in patterns.into_iter().enumerate() {
                if matches!(pattern, Pattern::NM(_, m) if cols % m != 0) {
                    continue;
                }
                cases.push((1 + (i + j + p) % DECODE_MAX_TOKENS, rows, cols, pattern));
            }
        }
    }
    cases.extend([
        (4, 33, 2500, Pattern::Sparsity(0.5)),
        (2, 7, 3000, Pattern::Sparsity(0.97)),
        (3, 70, 1001, Pattern::Uneven),
        (1, 5, 11008, Pattern::Sparsity(0.5)),
        (4, 3, 4096, Pattern::NM(2, 4)),
        (2, 9, 48, Pattern::NM(4, 8)),
        (1, 4, 48, Pattern::NM(5, 16)),
        (3, 3, 10, Pattern::NM(1, 2)),
        (2, 5, 36, Pattern::NM(2, 6)),
        (4, 2, 256, Pattern::NM(3, 128)),
    ]);
    cases
}

/// W [rows, cols] with the pattern's zeros, compressed by the crate's own packing.
fn weight<T: CudaFloat>(rows: usize, cols: usize, pattern: Pattern, seed: u64) -> SparseWeight {
    let mut dense = random_f32(rows * cols, 1.0, seed);
    let (mask, format) = match pattern {
        Pattern::Sparsity(s) => (random_mask(rows, cols, s, None, seed + 1), SparseFormat::Bitmask),
        Pattern::NM(n, m) => (random_mask(rows, cols, 0.0, Some((n, m)), seed + 1), SparseFormat::NM { n, m }),
        Pattern::Uneven => {
            let scores = random_f32(rows * cols, 1.0, seed + 1);
            let mask = BitMask::from_fn(rows, cols, |r, c| match r % 4 {
                0 => true,
                1 => false,
                _ => scores[r * cols + c].abs() > (r % 7) as f32 / 7.0,
            });
            (mask, SparseFormat::Bitmask)
        }
    };
    mask.apply(&mut dense).unwrap();
    SparseWeight::from_dense(&tensor::<T>(dense, &[rows, cols]), format).unwrap()
}

/// The case's kernel the way `ops::infer_linear::cuda::{bitmask, nm}` launch it, on a
/// NaN-filled y, against the reference.
fn check<T: CudaFloat>((tokens, rows, cols, pattern): Case, guard: Guard) {
    let what = format!("infer_linear {} {tokens}x{cols} -> {rows} {pattern:?} {guard:?}", T::DTYPE);
    let (atol, rtol) = tolerance::<T>();
    let w = weight::<T>(rows, cols, pattern, (rows * 1000 + cols) as u64);
    let x = tensor::<T>(random_f32(tokens * cols, 1.0, 7), &[tokens, cols]);
    let (values, meta) = (w.values().to_vec::<T>().unwrap(), w.meta().to_vec::<u8>().unwrap());
    let offsets = w.row_offsets().map(|o| o.to_vec::<u32>().unwrap());
    let want =
        cpu::compressed(&x.to_f32_vec().unwrap(), tokens, rows, cols, w.format(), &values, &meta, offsets.as_deref());

    let (x_buf, values_buf, meta_buf) =
        (buffer::<T>(&x, guard), Buffer::from_slice(&values, guard), Buffer::from_slice(&meta, guard));
    let y = nan_buffer::<T>(tokens * rows, guard);
    let d = Dims { tokens, rows, cols };
    match w.format() {
        SparseFormat::Bitmask => {
            let offsets = Buffer::from_slice(offsets.as_deref().unwrap(), guard);
            let [tokens_i, rows_i, cols_i, stride_i] = i32s([tokens, rows, cols, cols.div_ceil(8)]);
            let nnz = values.len() as u32;
            let args: [&dyn Arg; 10] =
                [&x_buf, &values_buf, &meta_buf, &offsets, &y, &tokens_i, &rows_i, &cols_i, &stride_i, &nnz];
            run(
                "infer_linear",
                &format!("bitmask_decode_{}", T::SUFFIX),
                bitmask_geometry(d, std::mem::size_of::<T>(), LIMITS).unwrap(),
                &args,
            );
        }
        SparseFormat::NM { n, m } => {
            let bits = index_bits(m);
            let index_stride = (cols / m * n * bits).div_ceil(8);
            assert_eq!(meta.len(), rows * index_stride, "{what}: positions as the launcher sizes them");
            let [tokens_i, rows_i, cols_i, is_i, n_i, m_i, bits_i] =
                i32s([tokens, rows, cols, index_stride, n, m, bits]);
            let args: [&dyn Arg; 11] =
                [&x_buf, &values_buf, &meta_buf, &y, &tokens_i, &rows_i, &cols_i, &is_i, &n_i, &m_i, &bits_i];
            run("infer_linear", &format!("nm_decode_{}", T::SUFFIX), nm_geometry(d, m, LIMITS).unwrap(), &args);
        }
    }
    assert_close(&what, &widen(&y), &want, atol, rtol);
}

// A bitmask and an N:M case run both kernels.
f32_and_bf16_tests!([(1, 1, 1, Pattern::Sparsity(0.0)), (1, 1, 4, Pattern::NM(2, 4))], cases());

/// What the geometry accepts and how it sizes the grid.
#[test]
fn geometry_sizes_shared_memory_and_the_grid() {
    let hopper = GpuLimits { sms: 132, shared_per_block: 227 << 10, shared_per_sm: 228 << 10 };
    let ampere = GpuLimits { sms: 108, shared_per_block: 163 << 10, shared_per_sm: 164 << 10 };
    let d = |tokens, rows, cols| Dims { tokens, rows, cols };
    // Bitmask: x [4, 11008] as f32 (11008 is a multiple of 256), and 16 warp buffers of 1024
    // values and 32 bytes: 4·4·11008 + 16·(2·1024 + 32) bytes in bf16.
    let g = bitmask_geometry(d(4, 4096, 11008), 2, hopper).unwrap();
    assert_eq!((g.block, g.shared_bytes), ((512, 1, 1), 4 * 4 * 11008 + 16 * 2080));
    assert_eq!(g.grid, (132, 1, 1), "one resident block per SM");
    assert!(decodes(SparseFormat::Bitmask, 2, 4, 11008, hopper));
    assert!(!decodes(SparseFormat::Bitmask, 4, 4, 11008, hopper), "236.5 KiB in f32 do not fit a Hopper block");
    assert!(!decodes(SparseFormat::Bitmask, 2, 4, 11008, ampere), "204.5 KiB do not fit an A100 block");
    assert!(decodes(SparseFormat::Bitmask, 2, 3, 11008, ampere));
    // x rounded up to 256 columns: 100 columns take 256 floats.
    assert_eq!(bitmask_geometry(d(1, 8, 100), 4, hopper).unwrap().shared_bytes, 4 * 256 + 16 * 4128);
    // N:M: x as f32 with a padding float every 32 columns: 4·4·(11008 + 344) bytes.
    let g = nm_geometry(d(4, 4096, 11008), 4, hopper).unwrap();
    assert_eq!((g.block, g.shared_bytes), ((512, 1, 1), 4 * 4 * 11352));
    // Small x: 2 blocks per SM (registers), but never more blocks than rows need.
    assert_eq!(bitmask_geometry(d(1, 1_000_000, 4096), 2, hopper).unwrap().grid.0, 2 * 132);
    assert_eq!(bitmask_geometry(d(1, 33, 4096), 2, hopper).unwrap().grid.0, 3);
    assert!(!decodes(SparseFormat::Bitmask, 2, DECODE_MAX_TOKENS + 1, 64, hopper));
    assert!(!decodes(SparseFormat::Bitmask, 2, 0, 64, hopper));
    assert!(decodes(SparseFormat::NM { n: 2, m: 4 }, 2, 2, 4096, hopper));
    assert!(decodes(SparseFormat::NM { n: 1, m: MAX_NM_M }, 2, 1, 4096, hopper));
    assert!(!decodes(SparseFormat::NM { n: 1, m: 2 * MAX_NM_M }, 2, 1, 4096, hopper));
    assert!(bitmask_geometry(d(1, 0, 64), 2, hopper).is_err(), "an empty grid");
    let err = bitmask_geometry(d(4, 8, 100_000), 2, hopper).unwrap_err().to_string();
    assert!(err.contains("[4, 100000]") && err.contains("shared memory"), "{err}");
}
