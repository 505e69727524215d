//! Matmul on the CPU: `c[b] = op(a[b]) · op(b[b or 0])`, op(a) is [m, k], op(b) is [k, n],
//! c is [m, n]; `trans_a` means a is stored [k, m], `trans_b` means b is stored [n, k].
//! `reference` is the plain triple loop with f64 accumulation (the spec); `fast` calls the
//! `gemm` crate (packed, SIMD, rayon) and is tested against it.

use gemm::Parallelism;

use crate::ops::Real;

/// Problem size and layout of one (batched) matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Number of independent products.
    pub batch: usize,
    /// Rows of op(a) and c.
    pub m: usize,
    /// Columns of op(b) and c.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// a is stored transposed ([k, m]).
    pub trans_a: bool,
    /// b is stored transposed ([n, k]).
    pub trans_b: bool,
    /// b has a batch dimension (otherwise one b for every batch entry).
    pub b_batched: bool,
}

impl Dims {
    /// (row stride, column stride) of op(a) within one batch entry.
    fn a_strides(&self) -> (usize, usize) {
        if self.trans_a {
            (1, self.m)
        } else {
            (self.k, 1)
        }
    }
    /// (row stride, column stride) of op(b) within one batch entry.
    fn b_strides(&self) -> (usize, usize) {
        if self.trans_b {
            (1, self.k)
        } else {
            (self.n, 1)
        }
    }
    fn b_offset(&self, batch: usize) -> usize {
        if self.b_batched {
            batch * self.k * self.n
        } else {
            0
        }
    }
}

/// The readable reference: c = op(a) · op(b), f64 accumulation.
pub fn reference<F: Real>(a: &[F], b: &[F], c: &mut [F], d: Dims) {
    let (ars, acs) = d.a_strides();
    let (brs, bcs) = d.b_strides();
    for bi in 0..d.batch {
        let a0 = bi * d.m * d.k;
        let b0 = d.b_offset(bi);
        let c0 = bi * d.m * d.n;
        for i in 0..d.m {
            for j in 0..d.n {
                let mut acc = 0f64;
                for p in 0..d.k {
                    acc += a[a0 + i * ars + p * acs].to_f64() * b[b0 + p * brs + j * bcs].to_f64();
                }
                c[c0 + i * d.n + j] = F::from_f64(acc);
            }
        }
    }
}

/// The fast path for f32 (gemm crate, all cores): `c = alpha·op(a)·op(b)`, or
/// `c += alpha·op(a)·op(b)` with `accumulate`. Same result as [`reference`] (alpha 1, no
/// accumulation) up to f32 summation order.
pub fn fast(a: &[f32], b: &[f32], c: &mut [f32], d: Dims, alpha: f32, accumulate: bool) {
    let (ars, acs) = d.a_strides();
    let (brs, bcs) = d.b_strides();
    let threads = rayon::current_num_threads();
    for bi in 0..d.batch {
        let a_b = &a[bi * d.m * d.k..(bi + 1) * d.m * d.k];
        let b_b = &b[d.b_offset(bi)..d.b_offset(bi) + d.k * d.n];
        let c_b = &mut c[bi * d.m * d.n..(bi + 1) * d.m * d.n];
        // SAFETY: the three slices hold exactly m·k, k·n and m·n elements, and the strides
        // above address only indices below those sizes; c does not alias a or b.
        unsafe {
            gemm::gemm(
                d.m,
                d.n,
                d.k,
                c_b.as_mut_ptr(),
                1,
                d.n as isize,
                accumulate,
                a_b.as_ptr(),
                acs as isize,
                ars as isize,
                b_b.as_ptr(),
                bcs as isize,
                brs as isize,
                1.0f32,
                alpha,
                false,
                false,
                false,
                if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None },
            );
        }
    }
}
