//! Token embedding lookup: `out[n] = weight[ids[n]]`.
//! weight: [vocab, dim] F32 or BF16; ids: U32 of any shape [...]; out: [..., dim] in the
//! weight's dtype. Backward (w.r.t. the weight only; ids are integers) is a scatter-add:
//! `dweight[v] = Σ_{n: ids[n] = v} dout[n]`, a dense [vocab, dim] tensor, zero in the rows
//! of ids that do not occur. An id ≥ vocab is an error on both devices (CUDA ids are
//! copied to the host and checked before any kernel runs).

pub mod cpu;
pub mod cuda;

use crate::autograd::{Saved, Tape};
use crate::ops::{cuda_device, cuda_tensor, expect_float, expect_u32, host_f32};
use crate::{with_compute_type, Device, Error, Result, Shape, Tensor};

/// The ids on the host, or an error naming the first one that is ≥ vocab.
fn host_ids(ids: &Tensor, vocab: usize) -> Result<Vec<u32>> {
    let host = ids.to_vec::<u32>()?;
    if let Some((n, id)) = host.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(Error::invalid(format!(
            "embedding: id {id} at flat index {n} of ids {} is out of range for a vocabulary of {vocab}",
            ids.shape()
        )));
    }
    Ok(host)
}

/// `ids.dims() ++ [dim]`.
fn out_shape(ids: &Tensor, dim: usize) -> Shape {
    let mut dims = ids.dims().to_vec();
    dims.push(dim);
    Shape::new(dims)
}

/// The rows `weight[ids]` ([..., dim]) without recording.
pub fn forward(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    expect_float("embedding", weight)?;
    let [vocab, dim] = weight.shape().dims_n::<2>("embedding")?;
    expect_u32("embedding", ids, weight.device())?;
    let ids_host = host_ids(ids, vocab)?;
    let shape = out_shape(ids, dim);
    match weight.device() {
        Device::Cpu(_) => with_compute_type!(weight.dtype(), "embedding", T => {
            let out = cpu::forward(weight.read()?.cpu::<T>()?, &ids_host, dim);
            Tensor::from_vec(out, shape, weight.device())
        }),
        Device::Cuda(_) => with_compute_type!(weight.dtype(), "embedding", T => {
            let dev = cuda_device(weight)?;
            let tokens = ids_host.len();
            let mut out = dev.alloc::<T>(tokens * dim)?;
            cuda::forward::<T>(dev, weight.read()?.cuda()?, ids.read()?.cuda()?, out.slice_mut(), tokens, vocab, dim)?;
            cuda_tensor(out, shape, weight.device())
        }),
    }
}

/// Gradient of the weight, [vocab, dim] in `dout`'s dtype (the weight's), given the ids and
/// `dout` ([..., dim] with the ids' shape in front).
pub fn backward(ids: &Tensor, dout: &Tensor, vocab: usize) -> Result<Tensor> {
    expect_float("embedding backward", dout)?;
    expect_u32("embedding", ids, dout.device())?;
    let dim = dout.shape().last_dim();
    if out_shape(ids, dim) != *dout.shape() {
        return Err(Error::ShapeMismatch {
            op: "embedding backward",
            lhs: ids.shape().clone(),
            rhs: dout.shape().clone(),
        });
    }
    let ids_host = host_ids(ids, vocab)?;
    let shape = Shape::new(vec![vocab, dim]);
    match dout.device() {
        Device::Cpu(_) => {
            let mut dweight = vec![0f32; vocab * dim];
            cpu::backward(&ids_host, &host_f32(dout)?, dim, &mut dweight);
            Tensor::from_f32(dweight, shape, dout.dtype(), dout.device())
        }
        Device::Cuda(_) => with_compute_type!(dout.dtype(), "embedding", T => {
            let dev = cuda_device(dout)?;
            let mut dweight = dev.alloc_zeros::<T>(vocab * dim)?;
            cuda::backward::<T>(dev, &ids_host, dout.read()?.cuda()?, dweight.slice_mut(), vocab, dim)?;
            cuda_tensor(dweight, shape, dout.device())
        }),
    }
}

/// `weight[ids]`, recorded on `tape` when the weight is tracked. Saves the ids; the
/// weight's shape and dtype are captured as plain values (the table itself is not kept).
pub fn embedding(tape: Option<&mut Tape>, weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let out = forward(weight, ids)?;
    if let Some(tape) = tape {
        let (weight_shape, dtype) = (weight.shape().clone(), weight.dtype());
        tape.record("embedding", &[weight], &out, vec![Saved::Keep(ids.clone())], move |ctx| {
            let dout = ctx.grad_out();
            if dout.dtype() != dtype {
                return Err(Error::DType {
                    op: "embedding backward",
                    dtype: dout.dtype(),
                    msg: "gradient dtype differs from the weight's",
                });
            }
            let dweight = backward(ctx.saved(0)?, dout, weight_shape.dims()[0])?;
            weight_shape.expect_eq("embedding backward", dweight.shape())?;
            ctx.add_grad(0, dweight)
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cuda_for_tests;
    use crate::testing::{assert_close, assert_close_f64, finite_diff, random_f32, random_f64, random_ids};
    use crate::DType;

    #[test]
    fn backward_matches_finite_differences() {
        let (vocab, dim) = (7, 5);
        // Repeats (3 appears three times) and ids that never occur (rows stay zero).
        let ids = [3u32, 0, 3, 6, 3, 1];
        let weight = random_f64(vocab * dim, 1.0, 1);
        let dout = random_f64(ids.len() * dim, 1.0, 2);
        let mut dweight = vec![f64::NAN; vocab * dim];
        cpu::backward(&ids, &dout, dim, &mut dweight);
        let fd = finite_diff(|w| cpu::forward(w, &ids, dim), &weight, &dout, 1e-6);
        assert_close_f64("embedding dweight", &dweight, &fd, 1e-8, 1e-6);
        assert!(dweight[2 * dim..3 * dim].iter().all(|&v| v == 0.0), "id 2 does not occur");
    }

    #[test]
    fn tape_routes_gradient_to_watched_weight() {
        let dev = Device::cpu();
        let weight = Tensor::from_f32(random_f32(9 * 4, 1.0, 3), [9, 4], DType::F32, &dev).unwrap();
        let ids = Tensor::from_vec(vec![1u32, 8, 1, 0, 5, 1], [2, 3], &dev).unwrap();
        let dout = Tensor::from_f32(random_f32(6 * 4, 1.0, 4), [2, 3, 4], DType::F32, &dev).unwrap();

        let mut untracked = Tape::new();
        embedding(Some(&mut untracked), &weight, &ids).unwrap();
        assert!(untracked.is_empty(), "the weight is not tracked, so nothing is recorded");

        let mut tape = Tape::new();
        tape.watch(&weight);
        let out = embedding(Some(&mut tape), &weight, &ids).unwrap();
        assert_eq!(out.dims(), [2, 3, 4]);
        let report = tape.saved_report();
        assert_eq!(report[0].kept, vec![(ids.shape().clone(), ids.size_in_bytes())], "only the ids are kept");
        let mut grads = crate::Grads::new();
        tape.backward_from(&out, dout.clone(), &mut grads).unwrap();
        let want = backward(&ids, &dout, 9).unwrap();
        assert_eq!(grads.get(&weight).unwrap().to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
        assert!(grads.get(&ids).is_none(), "ids are integers and get no gradient");
    }

    #[test]
    fn bf16_table_is_gathered_exactly() {
        let dev = Device::cpu();
        let weight = Tensor::from_f32(random_f32(6 * 3, 1.0, 5), [6, 3], DType::BF16, &dev).unwrap();
        let ids = Tensor::from_vec(vec![5u32, 0], [2], &dev).unwrap();
        let out = forward(&weight, &ids).unwrap();
        assert_eq!(out.dtype(), DType::BF16);
        let w = weight.to_f32_vec().unwrap();
        let mut want = w[15..18].to_vec();
        want.extend_from_slice(&w[0..3]);
        assert_eq!(out.to_f32_vec().unwrap(), want);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::cpu();
        let weight = Tensor::zeros([5, 3], DType::F32, &dev).unwrap();
        let ids = Tensor::from_vec(vec![0u32, 5, 1], [3], &dev).unwrap();
        let e = forward(&weight, &ids).unwrap_err().to_string();
        assert!(e.contains("id 5") && e.contains("vocabulary of 5"), "{e}");

        let float_ids = Tensor::zeros([3], DType::F32, &dev).unwrap();
        let e = forward(&weight, &float_ids).unwrap_err().to_string();
        assert!(e.contains("u32"), "{e}");

        let flat = Tensor::zeros([15], DType::F32, &dev).unwrap();
        let ok_ids = Tensor::from_vec(vec![0u32, 1], [2], &dev).unwrap();
        let e = forward(&flat, &ok_ids).unwrap_err().to_string();
        assert!(e.contains("[15]") && e.contains("rank 2"), "{e}");

        let dout = Tensor::zeros([3, 3], DType::F32, &dev).unwrap();
        let e = backward(&ok_ids, &dout, 5).unwrap_err().to_string();
        assert!(e.contains("[2]") && e.contains("[3, 3]"), "{e}");
        let dout = Tensor::zeros([3, 3], DType::F32, &dev).unwrap();
        assert!(backward(&ids, &dout, 5).unwrap_err().to_string().contains("id 5"));
    }

    #[test]
    fn cuda_matches_cpu() {
        let Some(gpu) = cuda_for_tests("embedding::cuda_matches_cpu") else { return };
        let cpu = Device::cpu();
        for (dtype, atol, rtol) in [(DType::F32, 1e-5, 1e-4), (DType::BF16, 1e-2, 1e-2)] {
            // (vocab, dim, ids shape, ids drawn below): small id ranges give many repeats.
            for (vocab, dim, ids_dims, below) in [
                (1, 1, vec![1], 1),
                (37, 33, vec![3, 5], 37),
                (1000, 4099, vec![2, 300], 50),
                (50_257, 65, vec![777], 50_257),
            ] {
                let n: usize = ids_dims.iter().product();
                let weight = Tensor::from_f32(random_f32(vocab * dim, 1.0, 40), [vocab, dim], dtype, &cpu).unwrap();
                let ids = Tensor::from_vec(random_ids(n, below, 41), ids_dims.clone(), &cpu).unwrap();
                let mut out_dims = ids_dims.clone();
                out_dims.push(dim);
                let dout = Tensor::from_f32(random_f32(n * dim, 1.0, 42), out_dims, dtype, &cpu).unwrap();
                let on_gpu = |t: &Tensor| t.to_device(&gpu).unwrap();
                let what = format!("embedding {dtype} vocab {vocab} dim {dim} ids {ids_dims:?}");
                let out = forward(&weight, &ids).unwrap().to_f32_vec().unwrap();
                let out_g = forward(&on_gpu(&weight), &on_gpu(&ids)).unwrap();
                assert_eq!(out_g.dims(), forward(&weight, &ids).unwrap().dims());
                assert_close(&format!("{what} out"), &out_g.to_f32_vec().unwrap(), &out, 0.0, 0.0);
                let dw = backward(&ids, &dout, vocab).unwrap().to_f32_vec().unwrap();
                let dw_g = backward(&on_gpu(&ids), &on_gpu(&dout), vocab).unwrap().to_f32_vec().unwrap();
                // Sums over up to n / below repeats of one id.
                let repeats = (n as f64 / below as f64).ceil().max(1.0);
                assert_close(&format!("{what} dweight"), &dw_g, &dw, atol * repeats, rtol);
            }
        }
        // Out-of-range ids are refused on the GPU too, before any kernel runs.
        let weight = Tensor::zeros([4, 3], DType::F32, &gpu).unwrap();
        let ids = Tensor::from_vec(vec![0u32, 4], [2], &gpu).unwrap();
        assert!(forward(&weight, &ids).unwrap_err().to_string().contains("id 4"));
        let dout = Tensor::zeros([2, 3], DType::F32, &gpu).unwrap();
        assert!(backward(&ids, &dout, 4).unwrap_err().to_string().contains("id 4"));
    }
}
