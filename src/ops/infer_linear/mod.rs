//! Inference linear `y = x·Wᵀ` (x [N, in], W [out, in] dense or compressed) without a
//! tape. Interim: both forms go through `ops::matmul` (a compressed weight expanded for the
//! call); the fast CPU kernels that read W as stored replace this.

use crate::sparse::SparseWeight;
use crate::{Result, Tensor};

/// y [N, out] = x [N, in] · Wᵀ.
pub fn dense(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    crate::ops::matmul::forward(x, w, false, true)
}

/// y [N, out] = x [N, in] · (W⊙M)ᵀ (interim: expanded for the call).
pub fn sparse(x: &Tensor, w: &SparseWeight) -> Result<Tensor> {
    crate::ops::matmul::forward(x, &w.to_dense()?, false, true)
}
