//! `cuda/kv_cache.cu` on the CPU: `kv_write_*` into a random cache against `ops::kv_cache::write`
//! on the CPU (bit for bit), then `kv_attention_*` over the written keys against the reference
//! `ops::kv_cache::cpu::attention` (f32 1e-5 + 1e-4·|ref|, bf16 1e-2 + 1e-2·|ref|).

use cuda_cpu::{Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::kv_cache::{self, cpu, cuda::attention_geometry, cuda::write_geometry, AttentionDims, CacheDims};
use sparsetune::testing::{assert_close, random_f32};

use crate::{buffer, i32s, nan_buffer, run, tensor, tolerance, widen};

/// Cache [B, Hkv, S, D], Hq query heads, and the distinct (sequence, position) of every row.
#[derive(Clone, Copy, Debug)]
struct Case {
    sequences: usize,
    capacity: usize,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    seqs: &'static [u32],
    positions: &'static [u32],
}

const fn case(
    (sequences, capacity, q_heads, kv_heads, head_dim): (usize, usize, usize, usize, usize),
    seqs: &'static [u32],
    positions: &'static [u32],
) -> Case {
    Case { sequences, capacity, q_heads, kv_heads, head_dim, seqs, positions }
}

/// The op test's sizes (D 1, 7, 80, 128; Hq/Hkv 1, 3, 4; rows out of order, sequences of
/// different lengths) and edges: one key; 300 and 257 keys (more than the block's 256 threads,
/// 8 warps taking 38 keys or fewer each) with D = 33 (a partial lane chunk); D = 256 (the
/// kernel's limit: every lane holds 8 elements; rows of exactly 256 elements to write);
/// written rows of 300 elements (past the block) and queries seeing 1..5 keys (fewer than the
/// 8 warps: some merge nothing); a prefill chunk of 5 tokens at positions 7..11.
const CASES: [Case; 9] = [
    case((1, 1, 1, 1, 1), &[0], &[0]),
    case((3, 20, 3, 1, 7), &[2, 0, 1, 2, 0], &[19, 0, 5, 11, 3]),
    case((4, 33, 6, 2, 80), &[3, 1, 0, 2, 3, 1], &[0, 32, 7, 13, 21, 2]),
    case((2, 70, 8, 2, 128), &[0, 1], &[69, 40]),
    case((3, 9, 4, 4, 1), &[2, 0, 1], &[8, 8, 0]),
    case((2, 300, 4, 4, 33), &[1, 0], &[299, 256]),
    case((1, 10, 2, 1, kv_cache::cuda::MAX_HEAD_DIM), &[0], &[9]),
    case((2, 5, 6, 3, 100), &[0, 1, 1], &[4, 0, 3]),
    case((1, 12, 4, 1, 64), &[0, 0, 0, 0, 0], &[7, 8, 9, 10, 11]),
];

/// Runs both kernels the way `kv_cache::cuda::{write, attention}` launch them.
fn check<T: CudaFloat>(c: Case, guard: Guard) {
    let what = format!("kv_cache {} {c:?} {guard:?}", T::DTYPE);
    let (atol, rtol) = tolerance::<T>();
    let cache = CacheDims { sequences: c.sequences, capacity: c.capacity, kv_heads: c.kv_heads, head_dim: c.head_dim };
    let d = AttentionDims { cache, q_heads: c.q_heads };
    let n = c.seqs.len();
    let cache_dims = cache.shape();
    let (seqs, positions) = (Buffer::from_slice(c.seqs, guard), Buffer::from_slice(c.positions, guard));

    let k = tensor::<T>(random_f32(cache.len(), 2.0, 1), &cache_dims);
    let rows = tensor::<T>(random_f32(n * cache.row_len(), 2.0, 2), &[n, c.kv_heads, c.head_dim]);
    let (k_buf, rows_buf) = (buffer::<T>(&k, guard), buffer::<T>(&rows, guard));
    let [capacity_i, kv_heads_i, dim_i] = i32s([c.capacity, c.kv_heads, c.head_dim]);
    run(
        "kv_cache",
        &format!("kv_write_{}", T::SUFFIX),
        write_geometry(n).unwrap(),
        &[&k_buf, &rows_buf, &seqs, &positions, &capacity_i, &kv_heads_i, &dim_i],
    );
    kv_cache::write(&k, &rows, c.seqs, c.positions).unwrap();
    let written: Vec<u8> = bytemuck::cast_slice(&k_buf.to_vec()).to_vec();
    assert!(written == k.to_le_bytes().unwrap(), "{what}: the written cache differs from the CPU's");

    let v = tensor::<T>(random_f32(cache.len(), 1.0, 3), &cache_dims);
    let q = tensor::<T>(random_f32(n * c.q_heads * c.head_dim, 2.0, 4), &[n, c.q_heads, c.head_dim]);
    let (q_buf, v_buf) = (buffer::<T>(&q, guard), buffer::<T>(&v, guard));
    let o = nan_buffer::<T>(q.elem_count(), guard);
    let [q_heads_i] = i32s([c.q_heads]);
    let scale_log2 = (std::f64::consts::LOG2_E * d.scale()) as f32;
    run(
        "kv_cache",
        &format!("kv_attention_{}", T::SUFFIX),
        attention_geometry(n, c.q_heads).unwrap(),
        &[&q_buf, &k_buf, &v_buf, &o, &seqs, &positions, &q_heads_i, &kv_heads_i, &capacity_i, &dim_i, &scale_log2],
    );
    let host = |t: &sparsetune::Tensor| t.to_f32_vec().unwrap();
    let mut want = vec![f32::NAN; q.elem_count()];
    cpu::attention(&host(&q), &host(&k), &host(&v), d, c.seqs, c.positions, &mut want);
    assert_close(&format!("{what} o"), &widen(&o), &want, atol, rtol);
}

f32_and_bf16_tests!(CASES[0], CASES);

/// Launches the kernels cannot take are refused before launching.
#[test]
fn geometry_refuses_empty_and_oversized_grids() {
    assert!(write_geometry(0).is_err());
    assert!(attention_geometry(0, 4).is_err());
    assert!(attention_geometry(3, 0).is_err());
    assert!(attention_geometry(3, 65_536).is_err());
    assert_eq!(attention_geometry(3, 65_535).unwrap().grid, (3, 65_535, 1));
}
