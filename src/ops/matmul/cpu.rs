//! Matmul on the CPU: `c[b] = op(a[b]) · op(b[b or 0])`, op(a) is [m, k], op(b) is [k, n],
//! c is [m, n]; `trans_a` means a is stored [k, m], `trans_b` means b is stored [n, k].
//! `reference` is the plain triple loop with f64 accumulation (the spec); `fast` calls the
//! `gemm` crate (packed, SIMD, rayon) and is tested against it. [`Strided`] describes one
//! batched product on views at offsets with leading dimensions and batch strides (the form
//! the tensor-core attention issues to cuBLAS), with its own plain reference.

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
/// `c += alpha·op(a)·op(b)` with `accumulate`. Same result as \[`reference`\] (alpha 1, no
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

/// One strided, batched product on row-major buffers at offsets, as cuBLAS's
/// `GemmStridedBatchedEx` takes it (issued by [`super::cuda::strided_batched`]): for every
/// batch entry i < `batch`,
///   C_i = alpha·op(A_i)·op(B_i) + beta·C_i,
/// op(A_i) [m, k], op(B_i) [k, n], C_i [m, n]; A_i starts at `a.0 + i·a.2` with row stride
/// (leading dimension) `a.1` and holds [m, k] ([k, m] when `trans_a`), likewise B_i ([k, n],
/// or [n, k] when `trans_b`) and C_i. Views of heads inside [B, T, H, D] tensors need no copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Strided {
    /// Rows of op(A) and C.
    pub m: usize,
    /// Columns of op(B) and C.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// A is stored [k, m].
    pub trans_a: bool,
    /// B is stored [n, k].
    pub trans_b: bool,
    /// A: (offset, row stride, batch stride) in elements.
    pub a: (usize, usize, usize),
    /// B: (offset, row stride, batch stride).
    pub b: (usize, usize, usize),
    /// C: (offset, row stride, batch stride).
    pub c: (usize, usize, usize),
    /// Batch entries.
    pub batch: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of C's previous contents (0: C is only written, never read).
    pub beta: f32,
}

impl Strided {
    /// Elements a buffer must hold for operand `(offset, row stride, batch stride)` of
    /// `rows` × `cols` stored, with the row stride at least `cols`; None on overflow or when
    /// the row stride is shorter than a row.
    fn extent(&self, (offset, ld, stride): (usize, usize, usize), rows: usize, cols: usize) -> Option<usize> {
        if self.batch == 0 || rows == 0 || cols == 0 {
            return Some(0);
        }
        if ld < cols {
            return None;
        }
        let last = (self.batch - 1).checked_mul(stride)?.checked_add((rows - 1).checked_mul(ld)?)?;
        offset.checked_add(last)?.checked_add(cols)
    }

    /// Elements A, B and C must hold (see [`Strided`]); None for a row stride shorter than
    /// its stored row or a size that overflows.
    pub fn extents(&self) -> Option<[usize; 3]> {
        let (ar, ac) = if self.trans_a { (self.k, self.m) } else { (self.m, self.k) };
        let (br, bc) = if self.trans_b { (self.n, self.k) } else { (self.k, self.n) };
        Some([self.extent(self.a, ar, ac)?, self.extent(self.b, br, bc)?, self.extent(self.c, self.m, self.n)?])
    }

    /// The readable reference (f64 sums) on host buffers; the extents are asserted.
    pub fn reference(&self, a: &[f32], b: &[f32], c: &mut [f32]) {
        let [ea, eb, ec] = self.extents().expect("strided product: bad strides");
        assert!(a.len() >= ea && b.len() >= eb && c.len() >= ec, "strided product: buffers too short");
        for i in 0..self.batch {
            let (a0, b0, c0) = (self.a.0 + i * self.a.2, self.b.0 + i * self.b.2, self.c.0 + i * self.c.2);
            for r in 0..self.m {
                for col in 0..self.n {
                    let mut sum = 0f64;
                    for j in 0..self.k {
                        let x = if self.trans_a { a[a0 + j * self.a.1 + r] } else { a[a0 + r * self.a.1 + j] };
                        let y = if self.trans_b { b[b0 + col * self.b.1 + j] } else { b[b0 + j * self.b.1 + col] };
                        sum += f64::from(x) * f64::from(y);
                    }
                    let at = c0 + r * self.c.1 + col;
                    let old = if self.beta == 0.0 { 0.0 } else { f64::from(self.beta) * f64::from(c[at]) };
                    c[at] = (f64::from(self.alpha) * sum + old) as f32;
                }
            }
        }
    }
}
