//! Inference linear (no tape): `y = x·Wᵀ` with W [out, in] dense ([`dense`]) or compressed
//! ([`sparse`], a [`SparseWeight`]: bitmask or N:M), read straight from storage, never
//! expanded to memory. x: [..., in] F32 or BF16, W of the same dtype; y: [..., out] in x's
//! dtype. Activations are converted to f32 once, weights widened in registers, sums in f32,
//! the result rounded to the output dtype.
//!
//! CPU: `cpu.rs` is the reference (plain loops, f64 sums); `cpu_fast.rs` the fast path
//! (a GEMV for up to 24 tokens, four at a time over each few rows, tiled prefill beyond;
//! threads over row ranges of equal bytes; AVX-512, AVX2+FMA or portable SIMD chosen at run
//! time, `simd.rs`); `two_four.rs` the bf16 2:4 decode on AVX-512 with VBMI and BF16, which
//! gathers x at each row's kept columns instead of spreading the row's values.
//! CUDA: [`dense`] is cuBLAS ([`crate::ops::matmul::forward`]). [`sparse`] decodes (1..=4
//! tokens, where time is bytes read) with its own kernels, `cuda.rs` / `cuda/infer_linear.cu`:
//! one warp per row reads the row's values in 16-byte chunks and finds their columns in the
//! mask (or N:M positions), x staged in shared memory as f32; beyond 4 tokens (prefill), for
//! N:M groups over 128, or x too large for a block's shared memory ([`cuda::decodes`]), it
//! expands W into the device workspace ([`SparseWeight::expand_into_cuda`]) and multiplies
//! ([`crate::ops::sparse_linear::forward`]).

mod bf16_pairs;
pub mod cpu;
pub(crate) mod cpu_fast;
pub mod cuda;
pub(crate) mod simd;
mod two_four;

use std::sync::RwLockReadGuard;

use cpu_fast::{Isa, Linear, Weights};
pub(crate) use simd::Stored;

use crate::ops::{expect_float, expect_same, host_f32, linear_out_shape};
use crate::sparse::{SparseFormat, SparseWeight};
use crate::storage::Storage;
use crate::{with_compute_type, Device, Error, Result, Shape, Tensor};

/// Error unless x is a float tensor [..., in] (rank ≥ 1) sharing the weight's device and
/// dtype; `w_shape` names the weight in the message.
fn check(op: &'static str, x: &Tensor, w_values: &Tensor, w_shape: [usize; 2]) -> Result<()> {
    expect_float(op, x)?;
    expect_same(op, &[x, w_values])?;
    if x.shape().rank() == 0 || x.shape().last_dim() != w_shape[1] {
        return Err(Error::ShapeMismatch { op, lhs: x.shape().clone(), rhs: Shape::new(w_shape) });
    }
    Ok(())
}

/// y = x·Wᵀ for a dense W [out, in].
pub fn dense(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "infer_linear::dense";
    let [out, input] = w.shape().dims_n::<2>(OP)?;
    check(OP, x, w, [out, input])?;
    match x.device() {
        Device::Cpu(_) => with_compute_type!(w.dtype(), OP, T => on_cpu::<T>(x, &Held::dense(w)?)),
        Device::Cuda(_) => on_cuda(x, |x2| crate::ops::matmul::forward(x2, w, false, true)),
    }
}

/// y = x·(W⊙M)ᵀ for a compressed W [out, in].
pub fn sparse(x: &Tensor, w: &SparseWeight) -> Result<Tensor> {
    const OP: &str = "infer_linear::sparse";
    let (out, input) = (w.rows(), w.cols());
    check(OP, x, w.values(), [out, input])?;
    match x.device() {
        Device::Cpu(_) => with_compute_type!(w.dtype(), OP, T => on_cpu::<T>(x, &Held::sparse(w)?)),
        Device::Cuda(dev) => {
            let limits = cuda::GpuLimits::of(dev)?;
            if cuda::decodes(w.format(), w.dtype().size_in_bytes(), x.shape().rows(), input, limits) {
                on_cuda(x, |x2| cuda::decode(x2, w, limits))
            } else {
                on_cuda(x, |x2| crate::ops::sparse_linear::forward(x2, w))
            }
        }
    }
}

/// The instruction set the CPU path uses on this machine (e.g. for benchmark reports).
pub fn cpu_simd() -> &'static str {
    Isa::best().name()
}

/// A CPU weight's buffers held for reading (dense values, or a [`SparseWeight`]'s values,
/// mask or positions, and row offsets), from which the kernels' [`Linear`] is built.
pub(crate) struct Held<'w> {
    shape: [usize; 2],
    format: Option<SparseFormat>,
    values: RwLockReadGuard<'w, Storage>,
    meta: Option<RwLockReadGuard<'w, Storage>>,
    offsets: Option<RwLockReadGuard<'w, Storage>>,
}

impl<'w> Held<'w> {
    /// A dense weight [out, in].
    pub(crate) fn dense(w: &'w Tensor) -> Result<Self> {
        let shape = w.shape().dims_n::<2>("infer_linear::dense")?;
        Ok(Held { shape, format: None, values: w.read()?, meta: None, offsets: None })
    }

    /// A compressed weight.
    pub(crate) fn sparse(w: &'w SparseWeight) -> Result<Self> {
        let offsets = match w.format() {
            SparseFormat::Bitmask => {
                Some(w.row_offsets().ok_or_else(|| Error::invalid("bitmask weight without row offsets"))?.read()?)
            }
            SparseFormat::NM { .. } => None,
        };
        Ok(Held {
            shape: [w.rows(), w.cols()],
            format: Some(w.format()),
            values: w.values().read()?,
            meta: Some(w.meta().read()?),
            offsets,
        })
    }

    /// The weight for the kernels, its values of type T (an error for another dtype or a
    /// device other than the CPU).
    pub(crate) fn linear<T: Stored>(&self) -> Result<Linear<'_, T>> {
        let [rows, cols] = self.shape;
        let values = self.values.cpu::<T>()?;
        let meta = || self.meta.as_ref().ok_or_else(|| Error::invalid("sparse weight without a mask"))?.cpu::<u8>();
        let w = match self.format {
            None => Weights::Dense(values),
            Some(SparseFormat::Bitmask) => {
                let offsets =
                    self.offsets.as_ref().ok_or_else(|| Error::invalid("bitmask weight without row offsets"))?;
                Weights::Bitmask { values, mask: meta()?, offsets: offsets.cpu::<u32>()? }
            }
            Some(SparseFormat::NM { n, m }) => Weights::NM { values, positions: meta()?, n, m },
        };
        Linear::new(rows, cols, w)
    }
}

/// The fast CPU path on the best instruction set, y in x's dtype.
fn on_cpu<T: Stored>(x: &Tensor, w: &Held<'_>) -> Result<Tensor> {
    let tokens = x.shape().rows();
    let out = w.shape[0];
    let y = cpu_fast::apply(Isa::best(), &host_f32(x)?, tokens, &w.linear::<T>()?)?;
    Tensor::from_f32(y, linear_out_shape(x, out), x.dtype(), x.device())
}

/// The CUDA path on x seen as a matrix [rows, in].
fn on_cuda(x: &Tensor, product: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let x2 = x.reshape([x.shape().rows(), x.shape().last_dim()])?;
    let y = product(&x2)?;
    y.reshape(linear_out_shape(x, y.shape().last_dim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::BitMask;
    use crate::testing::{assert_close, random_f32, random_mask};
    use crate::DType;

    /// A pruning pattern: a uniform sparsity, uneven rows, or N:M.
    #[derive(Clone, Copy, Debug)]
    enum Pattern {
        Dense,
        Uniform(f64),
        /// Row r keeps all (r % 4 == 0), none (r % 4 == 1), or a sparsity growing with r.
        Uneven,
        NM(usize, usize),
    }

    /// 0.5 and 0.7 take the bf16 prefill's dense pairs, 0.9 its kept pairs (on a CPU with
    /// AVX512-BF16).
    const PATTERNS: [Pattern; 10] = [
        Pattern::Dense,
        Pattern::Uniform(0.0),
        Pattern::Uniform(0.5),
        Pattern::Uniform(0.7),
        Pattern::Uniform(0.9),
        Pattern::Uniform(1.0),
        Pattern::Uneven,
        Pattern::NM(2, 4),
        Pattern::NM(4, 8),
        Pattern::NM(1, 2),
    ];

    fn mask_for(pattern: Pattern, rows: usize, cols: usize, seed: u64) -> Option<BitMask> {
        match pattern {
            Pattern::Dense => None,
            Pattern::Uniform(s) => Some(random_mask(rows, cols, s, None, seed)),
            Pattern::NM(n, m) => cols.is_multiple_of(m).then(|| random_mask(rows, cols, 0.0, Some((n, m)), seed)),
            Pattern::Uneven => {
                let scores = random_f32(rows * cols, 1.0, seed);
                Some(BitMask::from_fn(rows, cols, |r, c| match r % 4 {
                    0 => true,
                    1 => false,
                    _ => scores[r * cols + c].abs() > (r % 7) as f32 / 7.0,
                }))
            }
        }
    }

    /// W [rows, cols] with the pattern's zeros (in `dtype`), its compressed form, and x.
    struct Case {
        w: Tensor,
        compressed: Option<SparseWeight>,
        x: Tensor,
        what: String,
    }

    fn case(pattern: Pattern, rows: usize, cols: usize, tokens: usize, dtype: DType, seed: u64) -> Option<Case> {
        let dev = Device::cpu();
        let mut wv = random_f32(rows * cols, 1.0, seed);
        let mask = mask_for(pattern, rows, cols, seed + 1);
        if matches!(pattern, Pattern::NM(..)) && mask.is_none() {
            return None;
        }
        if let Some(mask) = &mask {
            mask.apply(&mut wv).unwrap();
        }
        let w = Tensor::from_f32(wv, [rows, cols], dtype, &dev).unwrap();
        let compressed = mask.map(|mask| {
            let format = match pattern {
                Pattern::NM(n, m) => SparseFormat::NM { n, m },
                _ => SparseFormat::Bitmask,
            };
            SparseWeight::compress(&w, &mask, format).unwrap()
        });
        let x = Tensor::from_f32(random_f32(tokens * cols, 1.0, seed + 2), [tokens, cols], dtype, &dev).unwrap();
        Some(Case { w, compressed, x, what: format!("{dtype} {pattern:?} {tokens}x{cols} -> {rows}") })
    }

    /// (out, in): in 36 has a 2:4 row ending half way through a mask byte; 64 and 576 are
    /// whole blocks of the 2:4 gather decode (`two_four.rs`; 576 odd, 64 one block).
    const SIZES: [(usize, usize); 15] = [
        (1, 8),
        (7, 13),
        (33, 24),
        (257, 1000),
        (1, 1001),
        (7, 1000),
        (33, 1001),
        (257, 8),
        (7, 24),
        (33, 13),
        (1, 24),
        (257, 1001),
        (7, 36),
        (4, 64),
        (33, 576),
    ];
    // 5 to 8: one pass of all of them for masked rows in the AVX512-BF16 GEMV, two passes
    // of four (the last one padded for 5 to 7) elsewhere and in the 2:4 gather decode; 9
    // and 24: GEMV passes (the last one padded, and whole; masked rows decoded first); 25:
    // one padded prefill block; then blocks of 48 tokens, which masked rows take together:
    // 60, 75 and 90, a whole block and a padded one of 1, 2 and 3 vectors in one pass; 101,
    // two whole and a padded one in one pass; 170, three whole in one pass, then a padded
    // one alone.
    const TOKENS: [usize; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 24, 25, 60, 75, 90, 101, 170];

    /// Every instruction set this CPU has, forced, against the reference (f64 sums).
    #[test]
    fn fast_matches_reference_on_every_instruction_set() {
        let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
        println!("instruction sets tested: {:?}", isas);
        for dtype in [DType::F32, DType::BF16] {
            for (i, &(rows, cols)) in SIZES.iter().enumerate() {
                for pattern in PATTERNS {
                    for (j, &tokens) in TOKENS.iter().enumerate() {
                        // Every size meets every token count across the patterns, not all pairs.
                        if (i + j) % 2 == 1 && tokens > 4 && rows * cols > 10_000 {
                            continue;
                        }
                        let Some(c) = case(pattern, rows, cols, tokens, dtype, (i * 10 + j) as u64) else { continue };
                        let x = c.x.to_f32_vec().unwrap();
                        with_compute_type!(dtype, "test", T => {
                            let (want, held) = match &c.compressed {
                                None => {
                                    let w_vals = c.w.to_vec::<T>().unwrap();
                                    (cpu::dense(&x, tokens, &w_vals, rows, cols), Held::dense(&c.w).unwrap())
                                }
                                Some(s) => {
                                    let w_vals = s.values().to_vec::<T>().unwrap();
                                    let meta = s.meta().to_vec::<u8>().unwrap();
                                    let offsets = s.row_offsets().map(|o| o.to_vec::<u32>().unwrap());
                                    let want = cpu::compressed(&x, tokens, rows, cols, s.format(), &w_vals, &meta, offsets.as_deref());
                                    (want, Held::sparse(s).unwrap())
                                }
                            };
                            let linear = held.linear::<T>().unwrap();
                            for &isa in &isas {
                                let got = cpu_fast::apply(isa, &x, tokens, &linear).unwrap();
                                assert_close(&format!("{} on {}", c.what, isa.name()), &got, &want, 1e-4, 1e-4);
                            }
                            Ok::<(), Error>(())
                        })
                        .unwrap();
                    }
                }
            }
        }
    }

    /// The public ops: sparse(W) against dense(expand(W)), and dense against the reference,
    /// y in x's dtype and shape ([2, tokens, in] → [2, tokens, out]).
    #[test]
    fn sparse_matches_dense_of_the_expanded_weight() {
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 1e-2)] {
            for (i, &(rows, cols)) in SIZES.iter().enumerate() {
                for pattern in PATTERNS {
                    let tokens = TOKENS[i % TOKENS.len()] * 2;
                    let Some(c) = case(pattern, rows, cols, tokens, dtype, 100 + i as u64) else { continue };
                    let x = c.x.reshape([2, tokens / 2, cols]).unwrap();
                    let y_dense = dense(&x, &c.w).unwrap();
                    assert_eq!((y_dense.dims(), y_dense.dtype()), (&[2, tokens / 2, rows][..], dtype));
                    let xv = x.to_f32_vec().unwrap();
                    let want = cpu::dense(&xv, tokens, &c.w.to_f32_vec().unwrap(), rows, cols);
                    assert_close(&format!("{} dense", c.what), &y_dense.to_f32_vec().unwrap(), &want, tol, tol);
                    if let Some(s) = &c.compressed {
                        let y = sparse(&x, s).unwrap();
                        assert_eq!((y.dims(), y.dtype()), (y_dense.dims(), dtype));
                        let expanded = dense(&x, &s.to_dense().unwrap()).unwrap();
                        let what = format!("{} sparse vs dense(expand)", c.what);
                        assert_close(&what, &y.to_f32_vec().unwrap(), &expanded.to_f32_vec().unwrap(), tol, tol);
                    }
                }
            }
        }
    }

    /// Decode rows are split by bytes: uneven rows still give every row exactly once.
    #[test]
    fn uneven_rows_split_over_threads_cover_every_row() {
        let (rows, cols) = (700, 1000);
        for dtype in [DType::F32, DType::BF16] {
            let c = case(Pattern::Uneven, rows, cols, 1, dtype, 7).unwrap();
            let s = c.compressed.unwrap();
            let y = sparse(&c.x, &s).unwrap().to_f32_vec().unwrap();
            let want = cpu::dense(&c.x.to_f32_vec().unwrap(), 1, &c.w.to_f32_vec().unwrap(), rows, cols);
            assert_close(&format!("{dtype} uneven 700x1000"), &y, &want, 1e-2, 1e-2);
        }
    }

    /// Decode ranges cover the rows in order, come in a multiple of the thread count, and
    /// carry about equal bytes when rows differ (here row r costs r bytes).
    #[test]
    fn decode_ranges_balance_bytes() {
        let rows = 4000;
        let cost_before = |r: usize| r * (r.max(1) - 1) / 2;
        for threads in [1, 2, 3, 8] {
            let ranges = cpu_fast::balanced_ranges(rows, cost_before, threads);
            assert_eq!(ranges.len() % threads, 0, "{threads} threads: {} ranges", ranges.len());
            assert_eq!((ranges[0].start, ranges.last().unwrap().end), (0, rows));
            assert!(ranges.windows(2).all(|p| p[0].end == p[1].start));
            let costs: Vec<usize> = ranges.iter().map(|r| cost_before(r.end) - cost_before(r.start)).collect();
            let (lo, hi) = (costs.iter().min().unwrap(), costs.iter().max().unwrap());
            assert!(*hi as f64 <= *lo as f64 * 1.05, "{threads} threads: costs {lo}..{hi}");
        }
        assert_eq!(cpu_fast::balanced_ranges(3, |r| r << 30, 8).len(), 3, "never more ranges than rows");
        assert_eq!(cpu_fast::balanced_ranges(100, |r| r, 2), vec![0..100], "small work stays in one range");
        // A cost that decreases (corrupt row offsets) still gives ranges covering every row.
        let zigzag = |r: usize| if r.is_multiple_of(2) { r << 20 } else { 0 };
        for parts in [2, 3, 7] {
            let ranges = cpu_fast::split_ranges(101, zigzag, parts);
            assert_eq!((ranges[0].start, ranges.last().unwrap().end), (0, 101), "{parts} parts: {ranges:?}");
            assert!(ranges.windows(2).all(|p| p[0].end == p[1].start), "{parts} parts: {ranges:?}");
        }
    }

    #[test]
    fn one_element_and_empty_shapes() {
        let dev = Device::cpu();
        let x = Tensor::from_f32(vec![3.0], [1], DType::F32, &dev).unwrap();
        let w = Tensor::from_f32(vec![-2.0], [1, 1], DType::F32, &dev).unwrap();
        let y = dense(&x, &w).unwrap();
        assert_eq!((y.dims(), y.to_f32_vec().unwrap()), (&[1][..], vec![-6.0]));
        let s = SparseWeight::from_dense(&w, SparseFormat::Bitmask).unwrap();
        assert_eq!(sparse(&x, &s).unwrap().to_f32_vec().unwrap(), vec![-6.0]);
        let none = Tensor::from_f32(vec![], [0, 5], DType::F32, &dev).unwrap();
        let w5 = Tensor::from_f32(random_f32(15, 1.0, 1), [3, 5], DType::F32, &dev).unwrap();
        assert_eq!(dense(&none, &w5).unwrap().dims(), &[0, 3]);
        let no_rows = Tensor::from_f32(vec![], [0, 5], DType::F32, &dev).unwrap();
        let x5 = Tensor::from_f32(random_f32(10, 1.0, 2), [2, 5], DType::F32, &dev).unwrap();
        assert_eq!(dense(&x5, &no_rows).unwrap().dims(), &[2, 0]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::cpu();
        let w = Tensor::from_f32(random_f32(12, 1.0, 1), [3, 4], DType::F32, &dev).unwrap();
        let x = Tensor::from_f32(random_f32(10, 1.0, 2), [2, 5], DType::F32, &dev).unwrap();
        let err = dense(&x, &w).unwrap_err().to_string();
        assert!(err.contains("[2, 5]") && err.contains("[3, 4]"), "names both shapes: {err}");
        let s = SparseWeight::from_dense(&w, SparseFormat::Bitmask).unwrap();
        assert!(sparse(&x, &s).unwrap_err().to_string().contains("[3, 4]"));
        let x4 = Tensor::from_f32(random_f32(8, 1.0, 2), [2, 4], DType::BF16, &dev).unwrap();
        assert!(dense(&x4, &w).is_err(), "dtypes differ");
        assert!(sparse(&x4, &s).is_err(), "dtypes differ");
        let ids = Tensor::from_vec(vec![1u32; 8], [2, 4], &dev).unwrap();
        assert!(dense(&ids, &w).is_err(), "integer activations");
        let w3 = w.reshape([1, 3, 4]).unwrap();
        assert!(dense(&x4.to_dtype(DType::F32).unwrap(), &w3).is_err(), "rank-3 weight");
        let (x16, w16) = (x4.to_dtype(DType::F16).unwrap(), w.to_dtype(DType::F16).unwrap());
        assert!(dense(&x16, &w16).is_err(), "f16 is not computed");
    }

    /// y for weights given as slices (checked, then applied on `isa`).
    fn linear<T: Stored>(
        isa: Isa,
        x: &[f32],
        tokens: usize,
        rows: usize,
        cols: usize,
        w: Weights<'_, T>,
    ) -> Result<Vec<f32>> {
        cpu_fast::apply(isa, x, tokens, &Linear::new(rows, cols, w)?)
    }

    /// Stored data that contradicts itself is refused before any read past its values.
    #[test]
    fn inconsistent_weights_are_errors_on_every_instruction_set() {
        let x = random_f32(2 * 16, 1.0, 3);
        let values = random_f32(10, 1.0, 4);
        // Two rows of 16 columns: row 0 keeps 3 (bits 0, 1, 2), row 1 keeps 5.
        let mask = [0b0000_0111, 0, 0b0001_1111, 0];
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let run = |values: &[f32], offsets: &[u32], mask: &[u8]| {
                linear(isa, &x, 2, 2, 16, Weights::Bitmask { values, mask, offsets })
            };
            assert!(run(&values[..8], &[0, 3, 8], &mask).is_ok());
            assert!(run(&values[..8], &[0, 2, 8], &mask).is_err(), "row 0 keeps more than its offsets give");
            assert!(run(&values[..8], &[0, 4, 8], &mask).is_err(), "row 0 keeps fewer");
            assert!(run(&values[..8], &[0, 9, 8], &mask).is_err(), "offsets decrease");
            assert!(run(&values[..8], &[1, 3, 8], &mask).is_err(), "offsets start past 0");
            assert!(run(&values, &[0, 3, 8], &mask).is_err(), "values beyond the last offset");
            assert!(run(&values[..8], &[0, 3, 8], &mask[..3]).is_err(), "short mask");
            // A mask keeping all 64 columns of a row of one value: an error, its reads kept
            // inside the row's padding (the value pointer is not clamped per chunk).
            let x64 = random_f32(64, 1.0, 5);
            let all = Weights::Bitmask { values: &values[..1], mask: &[0xff; 8], offsets: &[0, 1] };
            assert!(linear(isa, &x64, 1, 1, 64, all).is_err(), "a mask keeping every column");
            // 2:4 over 8 columns: both positions of a group equal (0, 0) keeps one column
            // for two values.
            let nm = |positions: &[u8]| {
                linear(isa, &x[..8], 1, 1, 8, Weights::NM { values: &values[..4], positions, n: 2, m: 4 })
            };
            assert!(nm(&[0b1101_0100]).is_ok());
            assert!(nm(&[0b1101_0000]).is_err(), "a repeated position");
            assert!(nm(&[0b1101_0100, 0]).is_err(), "positions too long");
            assert!(linear(isa, &x[..7], 1, 1, 8, Weights::Dense(&values[..8])).is_err(), "short x");
        }
        // bf16 2:4 over whole blocks of 64 columns (the gather decode where the CPU has it):
        // group 4 of row 1 repeats a position (16 bytes of positions a row).
        // x exactly bf16, as the engine's activations (the decode then holds it in bf16 pairs).
        let x: Vec<f32> = random_f32(7 * 128, 1.0, 6).into_iter().map(|v| half::bf16::from_f32(v).to_f32()).collect();
        let values: Vec<half::bf16> = random_f32(3 * 64, 1.0, 7).into_iter().map(half::bf16::from_f32).collect();
        let mut positions = vec![0b1101_0100u8; 3 * 16];
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            // 5 and 7 tokens: two passes, the second padded.
            for tokens in [1, 2, 3, 5, 7] {
                let run = |positions: &[u8]| {
                    linear(
                        isa,
                        &x[..tokens * 128],
                        tokens,
                        3,
                        128,
                        Weights::NM { values: &values, positions, n: 2, m: 4 },
                    )
                };
                assert!(run(&positions).is_ok(), "{}", isa.name());
                positions[16 + 2] = 0b1101_0101;
                let err = run(&positions).expect_err("a repeated position in a bf16 row").to_string();
                println!("{}, {tokens} tokens: {err}", isa.name());
                positions[16 + 2] = 0b1101_0100;
            }
        }
    }

    /// The CUDA decode kernels (1..=4 tokens) on every pattern at the op's sizes and a 7B row
    /// (11008 columns, 4 tokens: the bitmask kernel takes 204.5 KiB of shared memory in bf16,
    /// which a Hopper block allows, 236.5 KiB in f32, which none does), against the
    /// reference on the pruned dense matrix; outputs NaN-poisoned (`cuda_for_tests`).
    #[test]
    fn cuda_decode_matches_cpu() {
        let Some(gpu) = crate::device::cuda_for_tests("infer_linear::cuda_decode_matches_cpu") else { return };
        let Device::Cuda(dev) = &gpu else { unreachable!("a CUDA test device") };
        let limits = cuda::GpuLimits::of(dev).unwrap();
        println!("{limits:?}");
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 1e-2)] {
            for (i, &(rows, cols)) in SIZES.iter().chain(&[(64, 11008)]).enumerate() {
                for (p, pattern) in PATTERNS.into_iter().enumerate() {
                    let tokens = if cols == 11008 { 4 } else { 1 + (i + p) % cuda::DECODE_MAX_TOKENS };
                    let Some(c) = case(pattern, rows, cols, tokens, dtype, 200 + i as u64) else { continue };
                    let Some(s) = &c.compressed else { continue };
                    if !cuda::decodes(s.format(), s.dtype().size_in_bytes(), tokens, cols, limits) {
                        assert_eq!(cols, 11008, "{}: only x [4, 11008] may exceed a block's shared memory", c.what);
                        println!("{}: x does not fit this GPU's shared memory, not decoded", c.what);
                        continue;
                    }
                    let want = cpu::dense(&c.x.to_f32_vec().unwrap(), tokens, &c.w.to_f32_vec().unwrap(), rows, cols);
                    let y = sparse(&c.x.to_device(&gpu).unwrap(), &s.to_device(&gpu).unwrap()).unwrap();
                    assert_eq!((y.dims(), y.dtype()), (&[tokens, rows][..], dtype));
                    assert_close(&format!("{} cuda decode", c.what), &y.to_f32_vec().unwrap(), &want, tol, tol);
                }
            }
        }
    }

    #[test]
    fn cuda_matches_cpu() {
        let Some(gpu) = crate::device::cuda_for_tests("infer_linear::cuda_matches_cpu") else { return };
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 1e-2)] {
            for pattern in [Pattern::Dense, Pattern::Uniform(0.5), Pattern::NM(2, 4)] {
                let c = case(pattern, 33, 1000, 5, dtype, 3).unwrap();
                let (xg, wg) = (c.x.to_device(&gpu).unwrap(), c.w.to_device(&gpu).unwrap());
                let want = dense(&c.x, &c.w).unwrap().to_f32_vec().unwrap();
                let got = dense(&xg, &wg).unwrap().to_f32_vec().unwrap();
                assert_close(&format!("{} cuda dense", c.what), &got, &want, tol, tol);
                if let Some(s) = &c.compressed {
                    let got = sparse(&xg, &s.to_device(&gpu).unwrap()).unwrap().to_f32_vec().unwrap();
                    assert_close(&format!("{} cuda sparse", c.what), &got, &want, tol, tol);
                }
            }
        }
    }
}
