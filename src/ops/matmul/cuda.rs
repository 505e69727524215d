//! Matmul through cuBLAS (f32, or bf16 with f32 accumulation). Row-major
//! `C[m,n] = op(A)·op(B)` is issued as the column-major product `Cᵀ = op(B)ᵀ·op(A)ᵀ`,
//! which reads our row-major buffers without copies.

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::CudaSlice;

use super::cpu::Dims;
use crate::device::cuda::CudaFloat;
use crate::device::CudaDevice;
use crate::ops::to_i32;
use crate::Result;

/// c = alpha·op(a)·op(b) + beta·c for every batch entry (f32 accumulation for bf16; for
/// bf16 cuBLAS receives alpha and beta rounded to bf16). Slices may be longer than the
/// matrices; sizes are checked by the caller.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: CudaFloat>(
    dev: &CudaDevice,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    c: &mut CudaSlice<T>,
    d: Dims,
    alpha: f32,
    beta: f32,
) -> Result<()>
where
    cudarc::cublas::CudaBlas: Gemm<T>,
{
    let (m, n, k) = (to_i32("matmul", d.m)?, to_i32("matmul", d.n)?, to_i32("matmul", d.k)?);
    let gemm = GemmConfig {
        // column-major A' = op(b)ᵀ: b row-major [k,n] is already [n,k] col-major (N);
        // b stored [n,k] row-major is [k,n] col-major, so transpose it (T).
        transa: if d.trans_b { CUBLAS_OP_T } else { CUBLAS_OP_N },
        transb: if d.trans_a { CUBLAS_OP_T } else { CUBLAS_OP_N },
        m: n,
        n: m,
        k,
        alpha: T::from_f32(alpha),
        lda: if d.trans_b { k } else { n },
        ldb: if d.trans_a { m } else { k },
        beta: T::from_f32(beta),
        ldc: n,
    };
    let blas = dev.blas();
    if d.batch == 1 {
        // SAFETY: a holds m·k, b k·n and c m·n elements (checked in ops::matmul), matching
        // the leading dimensions above.
        unsafe { blas.gemm(gemm, b, a, c) }?;
    } else {
        let cfg = StridedBatchedConfig {
            gemm,
            batch_size: to_i32("matmul", d.batch)?,
            stride_a: if d.b_batched { (d.k * d.n) as i64 } else { 0 },
            stride_b: (d.m * d.k) as i64,
            stride_c: (d.m * d.n) as i64,
        };
        // SAFETY: as above, per batch entry; b is shared (stride 0) when not batched.
        unsafe { blas.gemm_strided_batched(cfg, b, a, c) }?;
    }
    Ok(())
}
