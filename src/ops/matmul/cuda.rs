//! Matmul through cuBLAS (f32, or bf16 with f32 accumulation; f32 alpha and beta). Row-major
//! `C[m,n] = op(A)·op(B)` is issued as the column-major product `Cᵀ = op(B)ᵀ·op(A)ᵀ`,
//! which reads our row-major buffers without copies.

use std::ffi::c_void;

use cudarc::cublas::result;
use cudarc::cublas::sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
use cudarc::cublas::sys::cublasGemmAlgo_t;
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::cpu::Dims;
use crate::device::cuda::CudaFloat;
use crate::device::CudaDevice;
use crate::ops::to_i32;
use crate::Result;

/// c = alpha·op(a)·op(b) + beta·c for every batch entry (contiguous row-major matrices, b
/// shared by the batch unless `b_batched`), through [`strided_batched`]: f32 accumulation
/// (`CUBLAS_COMPUTE_32F`) and alpha and beta passed as f32 whatever the element type
/// (rounding them to bf16 would scale by 2.672 where 32/12 = 2.667 is meant). Slices may be
/// longer than the matrices.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: CudaFloat>(
    dev: &CudaDevice,
    a: &impl DevicePtr<T>,
    b: &impl DevicePtr<T>,
    c: &mut impl DevicePtrMut<T>,
    d: Dims,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    // Row strides of the stored matrices: a is [m, k] or, transposed, [k, m]; b [k, n] or [n, k].
    let lda = if d.trans_a { d.m } else { d.k };
    let ldb = if d.trans_b { d.k } else { d.n };
    let strided = super::Strided {
        m: d.m,
        n: d.n,
        k: d.k,
        trans_a: d.trans_a,
        trans_b: d.trans_b,
        a: (0, lda, d.m * d.k),
        b: (0, ldb, if d.b_batched { d.k * d.n } else { 0 }),
        c: (0, d.n, d.m * d.n),
        batch: d.batch,
        alpha,
        beta,
    };
    strided_batched::<T, T>(dev, &strided, a, b, c)
}

/// `d`'s product through `cublasGemmStridedBatchedEx` (`cublasGemmEx` for one batch entry):
/// A and B of type `TA`, C of type `TC` (bf16 operands may write an f32 C), f32 accumulation
/// and f32 alpha and beta. The slices must hold [`super::Strided::extents`] elements
/// (checked here).
pub fn strided_batched<TA: CudaFloat, TC: CudaFloat>(
    dev: &CudaDevice,
    d: &super::Strided,
    a: &impl DevicePtr<TA>,
    b: &impl DevicePtr<TA>,
    c: &mut impl DevicePtrMut<TC>,
) -> Result<()> {
    const OP: &str = "matmul (strided)";
    let [ea, eb, ec] =
        d.extents().ok_or_else(|| crate::Error::invalid(format!("{OP}: a row stride shorter than its row")))?;
    for (what, len, need) in [("a", a.len(), ea), ("b", b.len(), eb), ("c", c.len(), ec)] {
        if len < need {
            return Err(crate::Error::invalid(format!("{OP}: {what} holds {len} elements, the product reads {need}")));
        }
    }
    if d.batch == 0 || d.m == 0 || d.n == 0 {
        return Ok(());
    }
    let (m, n, k) = (to_i32(OP, d.m)?, to_i32(OP, d.n)?, to_i32(OP, d.k)?);
    let (lda, ldb, ldc) = (to_i32(OP, d.a.1)?, to_i32(OP, d.b.1)?, to_i32(OP, d.c.1)?);
    let stride =
        |s: usize| i64::try_from(s).map_err(|_| crate::Error::invalid(format!("{OP}: batch stride overflows")));
    let (stride_a, stride_b, stride_c) = (stride(d.a.2)?, stride(d.b.2)?, stride(d.c.2)?);
    // The row-major product is the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ (module docs).
    let transa = if d.trans_b { CUBLAS_OP_T } else { CUBLAS_OP_N };
    let transb = if d.trans_a { CUBLAS_OP_T } else { CUBLAS_OP_N };
    let stream = dev.stream();
    let handle = *dev.blas().handle();
    let (a_ptr, _a_read) = a.device_ptr(stream);
    let (b_ptr, _b_read) = b.device_ptr(stream);
    let (c_ptr, _c_write) = c.device_ptr_mut(stream);
    let at = |ptr: u64, offset: usize, size: usize| (ptr + (offset * size) as u64) as *const c_void;
    let (ta, tc) = (std::mem::size_of::<TA>(), std::mem::size_of::<TC>());
    let (alpha_ptr, beta_ptr) = ((&d.alpha) as *const f32 as *const c_void, (&d.beta) as *const f32 as *const c_void);
    // cuBLAS's first operand is our B, its second our A (the column-major view).
    let (b_at, a_at, c_at) = (at(b_ptr, d.b.0, ta), at(a_ptr, d.a.0, ta), at(c_ptr, d.c.0, tc) as *mut c_void);
    let (compute, algo) = (CUBLAS_COMPUTE_32F, cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT);
    if d.batch == 1 {
        // SAFETY: as below, for the one product.
        unsafe {
            result::gemm_ex(
                handle,
                transa,
                transb,
                n,
                m,
                k,
                alpha_ptr,
                b_at,
                TA::CUDA_TYPE,
                ldb,
                a_at,
                TA::CUDA_TYPE,
                lda,
                beta_ptr,
                c_at,
                TC::CUDA_TYPE,
                ldc,
                compute,
                algo,
            )
        }?;
        return Ok(());
    }
    // SAFETY: every operand's last element read or written lies within its slice (extents
    // checked above; offsets are within them); alpha and beta are f32 as COMPUTE_32F
    // requires; the handle is bound to this device's stream.
    unsafe {
        result::gemm_strided_batched_ex(
            handle,
            transa,
            transb,
            n,
            m,
            k,
            alpha_ptr,
            b_at,
            TA::CUDA_TYPE,
            ldb,
            stride_b,
            a_at,
            TA::CUDA_TYPE,
            lda,
            stride_a,
            beta_ptr,
            c_at,
            TC::CUDA_TYPE,
            ldc,
            stride_c,
            to_i32(OP, d.batch)?,
            compute,
            algo,
        )
    }?;
    Ok(())
}
