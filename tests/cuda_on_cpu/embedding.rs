//! `cuda/embedding.cu` on the CPU: `embedding_fwd_*` (out [tokens, dim] = weight[ids], weight
//! [vocab, dim], ids [tokens] u32) and `embedding_bwd_*` (dweight [vocab, dim]: per id, the
//! sum of its tokens' dout rows, from the host's grouping `group_by_id`), f32 and bf16,
//! against `ops::embedding::{forward, backward}` on the CPU with its cuda_matches_cpu
//! tolerances (out exact; dweight atol·repeats of an id + rtol·|ref|).

use cuda_cpu::{Buffer, Guard};
use sparsetune::device::cuda::CudaFloat;
use sparsetune::ops::embedding::{self, cuda::backward_geometry, cuda::forward_geometry, cuda::group_by_id};
use sparsetune::testing::{assert_close, random_f32, random_ids};
use sparsetune::{Device, Tensor};

use crate::{buffer, i32s, nan_buffer, run, tensor, tolerance, widen, GUARDS};

/// (vocab, dim, tokens, ids drawn below): the op test's cases ([3, 5] and [2, 300] ids
/// flattened); dim 257 (a row one past the 256-thread block: the gather's second stride,
/// the backward's second column tile) and 513 (two strides and one more) with few ids, so
/// that ids repeat.
const CASES: [(usize, usize, usize, u32); 6] =
    [(1, 1, 1, 1), (37, 33, 15, 37), (1000, 4099, 600, 50), (50_257, 65, 777, 50_257), (5, 257, 4, 5), (9, 513, 7, 2)];

/// `embedding_fwd_*` as `embedding::cuda::forward` launches it: out = weight[ids].
fn gather<T: CudaFloat>(weight: &Buffer<T>, ids: &[u32], out: &Buffer<T>, vocab: usize, dim: usize, guard: Guard) {
    let ids_buf = Buffer::from_slice(ids, guard);
    let [tokens_i, vocab_i, dim_i] = i32s([ids.len(), vocab, dim]);
    let launch = forward_geometry(ids.len()).unwrap();
    run(
        "embedding",
        &format!("embedding_fwd_{}", T::SUFFIX),
        launch,
        &[weight, &ids_buf, out, &tokens_i, &vocab_i, &dim_i],
    );
}

/// `embedding_bwd_*` as `embedding::cuda::backward` launches it (ids grouped on the host):
/// writes the dweight rows of the ids that occur (below vocab). Returns the distinct ids,
/// ascending.
fn scatter<T: CudaFloat>(
    dout: &Buffer<T>,
    ids: &[u32],
    dweight: &Buffer<T>,
    vocab: usize,
    dim: usize,
    guard: Guard,
) -> Vec<u32> {
    let groups = group_by_id(ids);
    let (order, starts, uniq) = (
        Buffer::from_slice(&groups.order, guard),
        Buffer::from_slice(&groups.starts, guard),
        Buffer::from_slice(&groups.uniq, guard),
    );
    let [n_unique_i, tokens_i, vocab_i, dim_i] = i32s([groups.uniq.len(), ids.len(), vocab, dim]);
    run(
        "embedding",
        &format!("embedding_bwd_{}", T::SUFFIX),
        backward_geometry(groups.uniq.len(), dim).unwrap(),
        &[dout, &order, &starts, &uniq, dweight, &n_unique_i, &tokens_i, &vocab_i, &dim_i],
    );
    groups.uniq
}

/// Rows `ids` of a [.., dim] matrix, concatenated.
fn rows(values: &[f32], ids: &[u32], dim: usize) -> Vec<f32> {
    ids.iter().flat_map(|&v| values[v as usize * dim..(v as usize + 1) * dim].to_vec()).collect()
}

/// Runs both kernels and compares out and dweight with the CPU reference; dweight rows of
/// ids that do not occur must stay untouched (the caller zeroes them).
fn check<T: CudaFloat>((vocab, dim, tokens, below): (usize, usize, usize, u32), guard: Guard) {
    let what = format!("embedding {} vocab {vocab} dim {dim} tokens {tokens} {guard:?}", T::DTYPE);
    let (atol, rtol) = tolerance::<T>();
    let weight = tensor::<T>(random_f32(vocab * dim, 1.0, 40), &[vocab, dim]);
    let ids = random_ids(tokens, below, 41);
    let ids_t = Tensor::from_vec(ids.clone(), [tokens], &Device::cpu()).unwrap();
    let dout = tensor::<T>(random_f32(tokens * dim, 1.0, 42), &[tokens, dim]);

    let out = nan_buffer::<T>(tokens * dim, guard);
    gather(&buffer::<T>(&weight, guard), &ids, &out, vocab, dim, guard);
    let out_ref = embedding::forward(&weight, &ids_t).unwrap().to_f32_vec().unwrap();
    assert_close(&format!("{what} out"), &widen(&out), &out_ref, 0.0, 0.0);

    let dweight = nan_buffer::<T>(vocab * dim, guard);
    let present = scatter(&buffer::<T>(&dout, guard), &ids, &dweight, vocab, dim, guard);
    let (got, want) = (widen(&dweight), embedding::backward(&ids_t, &dout, vocab).unwrap().to_f32_vec().unwrap());
    let repeats = (tokens as f64 / f64::from(below)).ceil().max(1.0);
    assert_close(
        &format!("{what} dweight"),
        &rows(&got, &present, dim),
        &rows(&want, &present, dim),
        atol * repeats,
        rtol,
    );
    let absent: Vec<u32> = (0..vocab as u32).filter(|v| present.binary_search(v).is_err()).collect();
    assert!(rows(&got, &absent, dim).iter().all(|v| v.is_nan()), "{what}: dweight rows of absent ids were written");
}

f32_and_bf16_tests!(CASES[0], CASES);

/// Ids ≥ vocab (the host rejects them before launching) read nothing outside the weight:
/// the gather writes NaN rows for them, the backward skips them.
#[test]
fn out_of_range_ids_stay_inside_the_weight() {
    let (vocab, dim) = (3, 257);
    let ids = [1u32, 3, u32::MAX, 2];
    for guard in GUARDS {
        let weight = Buffer::from_slice(&random_f32(vocab * dim, 1.0, 43), guard);
        let out = Buffer::filled(ids.len() * dim, 0f32, guard);
        gather(&weight, &ids, &out, vocab, dim, guard);
        let (weight, out) = (weight.to_vec(), out.to_vec());
        assert_eq!(rows(&out, &[0], dim), rows(&weight, &[1], dim), "{guard:?} token 0");
        assert_eq!(rows(&out, &[3], dim), rows(&weight, &[2], dim), "{guard:?} token 3");
        assert!(rows(&out, &[1, 2], dim).iter().all(|v| v.is_nan()), "{guard:?}: ids ≥ vocab give NaN rows");

        let dout = Buffer::from_slice(&random_f32(ids.len() * dim, 1.0, 44), guard);
        let dweight = Buffer::filled(vocab * dim, 0f32, guard);
        scatter(&dout, &ids, &dweight, vocab, dim, guard);
        let (dout, dweight) = (dout.to_vec(), dweight.to_vec());
        assert_eq!(rows(&dweight, &[0], dim), vec![0f32; dim], "{guard:?}: id 0 does not occur");
        assert_eq!(rows(&dweight, &[1], dim), rows(&dout, &[0], dim), "{guard:?}: id 1 is token 0");
        assert_eq!(rows(&dweight, &[2], dim), rows(&dout, &[3], dim), "{guard:?}: id 2 is token 3");
    }
}
