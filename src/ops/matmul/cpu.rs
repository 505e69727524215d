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
    /// One unbatched product c [m, n] = op(a) [m, k] · op(b) [k, n].
    pub fn single(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        Dims { batch: 1, m, n, k, trans_a, trans_b, b_batched: false }
    }

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

/// Element types the gemm crate multiplies here.
pub trait GemmFloat: Copy + Send + Sync + 'static {
    /// 1.
    const ONE: Self;
}

impl GemmFloat for f32 {
    const ONE: Self = 1.0;
}

impl GemmFloat for f64 {
    const ONE: Self = 1.0;
}

/// `c = alpha·a·b` (or `c += alpha·a·b` with `accumulate`) on strided row-major views:
/// a [m, k], b [k, n], c [m, n], each given as (slice, (row stride, column stride)), so
/// transposes and sub-matrices need no copies. `parallel` uses all rayon threads (callers
/// that already parallelise over independent products pass false).
#[allow(clippy::too_many_arguments)]
pub fn strided<T: GemmFloat>(
    m: usize,
    n: usize,
    k: usize,
    (c, c_rs, c_cs): (&mut [T], usize, usize),
    accumulate: bool,
    alpha: T,
    (a, a_rs, a_cs): (&[T], usize, usize),
    (b, b_rs, b_cs): (&[T], usize, usize),
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() > (m - 1) * c_rs + (n - 1) * c_cs, "gemm: c too small");
    if k > 0 {
        assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs, "gemm: a too small");
        assert!(b.len() > (k - 1) * b_rs + (n - 1) * b_cs, "gemm: b too small");
    }
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: the asserts bound every index the strides address; c is a distinct mutable
    // borrow, so it does not alias a or b; T is f32 or f64, both supported by gemm.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs as isize,
            c_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::ONE,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// The fast path for f32 (gemm crate, all cores): `c = alpha·op(a)·op(b)`, or
/// `c += alpha·op(a)·op(b)` with `accumulate`. Same result as [`reference`] (alpha 1, no
/// accumulation) up to f32 summation order.
pub fn fast(a: &[f32], b: &[f32], c: &mut [f32], d: Dims, alpha: f32, accumulate: bool) {
    let (ars, acs) = d.a_strides();
    let (brs, bcs) = d.b_strides();
    for bi in 0..d.batch {
        let a_b = &a[bi * d.m * d.k..(bi + 1) * d.m * d.k];
        let b_b = &b[d.b_offset(bi)..d.b_offset(bi) + d.k * d.n];
        let c_b = &mut c[bi * d.m * d.n..(bi + 1) * d.m * d.n];
        strided(d.m, d.n, d.k, (c_b, d.n, 1), accumulate, alpha, (a_b, ars, acs), (b_b, brs, bcs), true);
    }
}
