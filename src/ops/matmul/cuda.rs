//! Matmul through cuBLAS (f32, or bf16 with f32 accumulation; f32 alpha and beta). Row-major
//! `C[m,n] = op(A)·op(B)` is issued as the column-major product `Cᵀ = op(B)ᵀ·op(A)ᵀ`,
//! which reads our row-major buffers without copies.

use std::ffi::c_void;

use cudarc::cublas::result;
use cudarc::cublas::sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
use cudarc::cublas::sys::cublasGemmAlgo_t;
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::cpu::Dims;
use crate::device::cuda::CudaFloat;
use crate::device::CudaDevice;
use crate::ops::to_i32;
use crate::Result;

/// c = alpha·op(a)·op(b) + beta·c for every batch entry, through `cublasGemmEx` with f32
/// accumulation (`CUBLAS_COMPUTE_32F`) and alpha and beta passed as f32 whatever the
/// element type (rounding them to bf16 would scale by 2.672 where 32/12 = 2.667 is meant).
/// Slices may be longer than the matrices; sizes are checked by the caller.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: CudaFloat>(
    dev: &CudaDevice,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    c: &mut CudaSlice<T>,
    d: Dims,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    let (m, n, k) = (to_i32("matmul", d.m)?, to_i32("matmul", d.n)?, to_i32("matmul", d.k)?);
    // Column-major A' = op(b)ᵀ: b row-major [k,n] is already [n,k] col-major (N); b stored
    // [n,k] row-major is [k,n] col-major, so transpose it (T). B' = op(a)ᵀ likewise.
    let transa = if d.trans_b { CUBLAS_OP_T } else { CUBLAS_OP_N };
    let transb = if d.trans_a { CUBLAS_OP_T } else { CUBLAS_OP_N };
    let (lda, ldb, ldc) = (if d.trans_b { k } else { n }, if d.trans_a { m } else { k }, n);
    let stream = dev.stream();
    let handle = *dev.blas().handle();
    let (a_ptr, _a_read) = a.device_ptr(stream);
    let (b_ptr, _b_read) = b.device_ptr(stream);
    let (c_ptr, _c_write) = c.device_ptr_mut(stream);
    let (alpha_ptr, beta_ptr) = ((&alpha) as *const f32 as *const c_void, (&beta) as *const f32 as *const c_void);
    let (ty, compute, algo) = (T::CUDA_TYPE, CUBLAS_COMPUTE_32F, cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT);
    if d.batch == 1 {
        // SAFETY: a holds m·k, b k·n and c m·n elements of type T (checked in ops::matmul),
        // matching the leading dimensions above; alpha and beta are f32, as COMPUTE_32F
        // requires; the handle is bound to this device's stream.
        unsafe {
            result::gemm_ex(
                handle,
                transa,
                transb,
                n,
                m,
                k,
                alpha_ptr,
                b_ptr as *const c_void,
                ty,
                lda,
                a_ptr as *const c_void,
                ty,
                ldb,
                beta_ptr,
                c_ptr as *mut c_void,
                ty,
                ldc,
                compute,
                algo,
            )
        }?;
    } else {
        let stride_a = if d.b_batched { (d.k * d.n) as i64 } else { 0 };
        let (stride_b, stride_c) = ((d.m * d.k) as i64, (d.m * d.n) as i64);
        // SAFETY: as above, per batch entry; b is shared (stride 0) when not batched.
        unsafe {
            result::gemm_strided_batched_ex(
                handle,
                transa,
                transb,
                n,
                m,
                k,
                alpha_ptr,
                b_ptr as *const c_void,
                ty,
                lda,
                stride_a,
                a_ptr as *const c_void,
                ty,
                ldb,
                stride_b,
                beta_ptr,
                c_ptr as *mut c_void,
                ty,
                ldc,
                stride_c,
                to_i32("matmul", d.batch)?,
                compute,
                algo,
            )
        }?;
    }
    Ok(())
}

/// `d`'s product through `cublasGemmStridedBatchedEx`: A and B of type `TA`, C of type `TC`
/// (bf16 operands may write an f32 C), f32 accumulation and f32 alpha and beta. The slices
/// must hold [`super::Strided::extents`] elements (checked here).
pub fn strided_batched<TA: CudaFloat, TC: CudaFloat>(
    dev: &CudaDevice,
    d: &super::Strided,
    a: &CudaSlice<TA>,
    b: &CudaSlice<TA>,
    c: &mut CudaSlice<TC>,
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
    // As in `matmul`: the row-major product is the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ.
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
            at(b_ptr, d.b.0, ta),
            TA::CUDA_TYPE,
            ldb,
            stride_b,
            at(a_ptr, d.a.0, ta),
            TA::CUDA_TYPE,
            lda,
            stride_a,
            beta_ptr,
            at(c_ptr, d.c.0, tc) as *mut c_void,
            TC::CUDA_TYPE,
            ldc,
            stride_c,
            to_i32(OP, d.batch)?,
            CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }?;
    Ok(())
}
