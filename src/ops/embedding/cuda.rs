//! Launches `cuda/embedding.cu`: the gather (one 256-thread block per token) and the
//! deterministic scatter-add backward, for which this file groups token positions by id
//! on the host (the ids are already there: `ops::embedding` range-checks them).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::device::cuda::CudaFloat;
use crate::device::{CudaDevice, Launch};
use crate::ops::to_i32;
use crate::{Error, Result};

const THREADS: u32 = 256;

/// Geometry of `embedding_fwd_*`: one block per token (at least one block).
pub fn forward_geometry(tokens: usize) -> Result<Launch> {
    let blocks = to_i32("embedding", tokens)?.max(1) as u32;
    Ok(Launch { grid: (blocks, 1, 1), block: (THREADS, 1, 1), shared_bytes: 0 })
}

/// Geometry of `embedding_bwd_*`: grid (n_unique, ⌈dim / 256⌉), one thread per column of
/// one id's row.
pub fn backward_geometry(n_unique: usize, dim: usize) -> Result<Launch> {
    let column_tiles = u16::try_from(dim.div_ceil(THREADS as usize))
        .map_err(|_| Error::invalid(format!("embedding: dim {dim} exceeds one CUDA grid")))?;
    let ids = to_i32("embedding", n_unique)? as u32;
    Ok(Launch { grid: (ids, column_tiles.into(), 1), block: (THREADS, 1, 1), shared_bytes: 0 })
}

/// `out = weight[ids]`. Slices: weight `[vocab·dim]`, ids `[tokens]`, out `[tokens·dim]` (checked by
/// the caller, which also checked every id < vocab).
pub fn forward<T: CudaFloat>(
    dev: &CudaDevice,
    weight: &CudaSlice<T>,
    ids: &CudaSlice<u32>,
    out: &mut CudaSlice<T>,
    tokens: usize,
    vocab: usize,
    dim: usize,
) -> Result<()> {
    let f = dev.function("embedding", &format!("embedding_fwd_{}", T::SUFFIX))?;
    let (tokens_i, vocab_i, dim_i) =
        (to_i32("embedding", tokens)?, to_i32("embedding", vocab)?, to_i32("embedding", dim)?);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(weight).arg(ids).arg(out).arg(&tokens_i).arg(&vocab_i).arg(&dim_i);
    // SAFETY: weight holds vocab·dim, ids tokens and out tokens·dim elements (checked in
    // ops::embedding); block n < tokens reads row ids[n] only when ids[n] < vocab.
    unsafe { b.launch(LaunchConfig::from(forward_geometry(tokens)?)) }?;
    Ok(())
}

/// Token positions grouped by id: `order` lists positions sorted by id (token order kept
/// within an id), id `uniq[u]` owns `order[starts[u]..starts[u + 1]]`.
pub struct IdGroups {
    /// Token positions sorted by id.
    pub order: Vec<u32>,
    /// n_unique + 1 offsets into `order`.
    pub starts: Vec<u32>,
    /// The distinct ids, ascending.
    pub uniq: Vec<u32>,
}

/// Groups the token positions of `ids` by id (the host side of the backward).
pub fn group_by_id(ids: &[u32]) -> IdGroups {
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    // Stable: the positions of one id stay in token order, which fixes the summation order.
    order.sort_by_key(|&n| ids[n as usize]);
    let (mut starts, mut uniq) = (Vec::new(), Vec::new());
    for (k, &n) in order.iter().enumerate() {
        let id = ids[n as usize];
        if uniq.last() != Some(&id) {
            uniq.push(id);
            starts.push(k as u32);
        }
    }
    starts.push(ids.len() as u32);
    IdGroups { order, starts, uniq }
}

/// `dweight[v] = Σ_{n: ids[n] = v} dout[n]`. `dweight` (`[vocab·dim]`) must arrive zeroed: only
/// rows of ids that occur are written. `ids_host` are the ids (all < vocab, checked by the
/// caller); dout holds ids_host.len()·dim elements.
pub fn backward<T: CudaFloat>(
    dev: &CudaDevice,
    ids_host: &[u32],
    dout: &CudaSlice<T>,
    dweight: &mut CudaSlice<T>,
    vocab: usize,
    dim: usize,
) -> Result<()> {
    let tokens = ids_host.len();
    if tokens == 0 || dim == 0 {
        return Ok(());
    }
    let (tokens_i, vocab_i, dim_i) =
        (to_i32("embedding", tokens)?, to_i32("embedding", vocab)?, to_i32("embedding", dim)?);
    let groups = group_by_id(ids_host);
    let launch = backward_geometry(groups.uniq.len(), dim)?;
    let n_unique_i = to_i32("embedding", groups.uniq.len())?;
    let (order, starts, uniq) = (dev.htod(&groups.order)?, dev.htod(&groups.starts)?, dev.htod(&groups.uniq)?);
    let f = dev.function("embedding", &format!("embedding_bwd_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(dout).arg(order.slice()).arg(starts.slice()).arg(uniq.slice()).arg(dweight);
    b.arg(&n_unique_i).arg(&tokens_i).arg(&vocab_i).arg(&dim_i);
    // SAFETY: dout holds tokens·dim and dweight vocab·dim elements (checked in ops::embedding);
    // order holds tokens positions < tokens, starts n_unique + 1 offsets ≤ tokens and uniq
    // n_unique ids < vocab (built above from range-checked ids); the kernel re-checks them.
    unsafe { b.launch(LaunchConfig::from(launch)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::group_by_id;

    #[test]
    fn groups_positions_by_id_in_token_order() {
        let g = group_by_id(&[5, 2, 5, 0, 2, 5]);
        assert_eq!(g.uniq, vec![0, 2, 5]);
        assert_eq!(g.starts, vec![0, 1, 3, 6]);
        assert_eq!(g.order, vec![3, 1, 4, 0, 2, 5]);
    }
}
