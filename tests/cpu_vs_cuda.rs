//! The whole model on CUDA against the CPU reference: logits, loss and every weight
//! gradient of a tiny random LLaMA (f32 and bf16), with and without checkpointing.
//! Per-op CUDA checks live next to each op (src/ops/*/mod.rs). Skips without a GPU.

mod common;

use sparsetune::device::cuda_for_tests;
use sparsetune::model::llama::ForwardOptions;
use sparsetune::testing::assert_close;
use sparsetune::{DType, Device, Grads, Tape, Tensor};

#[test]
fn tiny_llama_forward_and_backward_match_cpu() {
    let Some(gpu) = cuda_for_tests("tiny_llama_forward_and_backward_match_cpu") else { return };
    let cpu = Device::cpu();
    for (dtype, atol, rtol) in [(DType::F32, 1e-4, 1e-3), (DType::BF16, 3e-2, 3e-2)] {
        for checkpoint_layers in [false, true] {
            let m = common::tiny_model(dtype, &cpu, 21);
            let mg = m.to(&gpu, dtype).unwrap();
            let (ids, targets) = common::tokens(2, 13, m.config.vocab_size, &cpu);
            let (idg, tg) = (ids.to_device(&gpu).unwrap(), targets.to_device(&gpu).unwrap());
            let opts = ForwardOptions { checkpoint_layers };
            let what = format!("tiny llama {dtype} checkpoint={checkpoint_layers}");
            let l = m.forward(None, &ids, opts).unwrap().to_f32_vec().unwrap();
            let lg = mg.forward(None, &idg, opts).unwrap().to_f32_vec().unwrap();
            assert_close(&format!("{what} logits"), &lg, &l, atol, rtol);

            let run = |model: &sparsetune::model::llama::Llama, ids: &Tensor, t: &Tensor| {
                let mut tape = Tape::new();
                let ws: Vec<Tensor> = model.named_tensors().unwrap().into_iter().map(|(_, t)| t.clone()).collect();
                for w in &ws {
                    tape.watch(w);
                }
                let loss = model.loss(Some(&mut tape), ids, t, opts).unwrap();
                let mut grads = Grads::new();
                tape.backward(&loss, &mut grads).unwrap();
                let gs: Vec<Vec<f32>> = ws.iter().map(|w| grads.get(w).unwrap().to_f32_vec().unwrap()).collect();
                (loss.to_scalar_f32().unwrap(), gs)
            };
            let (loss_c, grads_c) = run(&m, &ids, &targets);
            let (loss_g, grads_g) = run(&mg, &idg, &tg);
            assert_close(&format!("{what} loss"), &[loss_g], &[loss_c], atol, rtol);
            for ((part, _), (gc, gg)) in m.named_tensors().unwrap().into_iter().zip(grads_c.iter().zip(&grads_g)) {
                assert_close(&format!("{what} grad {part:?}"), gg, gc, atol, rtol * 3.0);
            }
        }
    }
}

/// The pruning pipeline on CUDA against the CPU: the same masks (up to near-ties, since
/// the calibration activations differ by float rounding between devices) and weights.
#[test]
fn pruning_on_cuda_matches_cpu() {
    use sparsetune::prune::{prune_model, Method, Pattern, PruneOptions};
    use sparsetune::sparse::BitMask;
    let Some(gpu) = cuda_for_tests("pruning_on_cuda_matches_cpu") else { return };
    let cpu = Device::cpu();
    let samples: Vec<Vec<u32>> = (0..6).map(|s| (0..24).map(|t| ((s * 13 + t * 5) % 61) as u32).collect()).collect();
    for method in [Method::Magnitude, Method::Wanda, Method::SparseGpt, Method::Ria] {
        for pattern in [Pattern::Unstructured(0.5), Pattern::NM { n: 2, m: 4 }] {
            let mut on_cpu = common::tiny_model(DType::F32, &cpu, 31);
            let mut on_gpu = on_cpu.to(&gpu, DType::F32).unwrap();
            let opts = PruneOptions::new(method, pattern);
            prune_model(&mut on_cpu, &samples, &opts, &mut |_| {}).unwrap();
            prune_model(&mut on_gpu, &samples, &opts, &mut |_| {}).unwrap();
            let (mut same, mut all) = (0usize, 0usize);
            for ((part, a), (_, b)) in on_cpu.named_tensors().unwrap().into_iter().zip(on_gpu.named_tensors().unwrap())
            {
                let (va, vb) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
                if let [rows, cols] = a.dims() {
                    let (ma, mb) = (
                        BitMask::from_nonzero(&va, *rows, *cols).unwrap(),
                        BitMask::from_nonzero(&vb, *rows, *cols).unwrap(),
                    );
                    same +=
                        (0..rows * cols).filter(|&k| ma.get(k / cols, k % cols) == mb.get(k / cols, k % cols)).count();
                    all += rows * cols;
                    if method != Method::SparseGpt {
                        // Masking methods keep the original values where both keep.
                        for k in 0..rows * cols {
                            if ma.get(k / cols, k % cols) && mb.get(k / cols, k % cols) {
                                assert_eq!(va[k], vb[k], "{method:?} {pattern} {part:?}");
                            }
                        }
                    }
                }
            }
            let agreement = same as f64 / all as f64;
            println!("{method:?} {pattern}: mask agreement {agreement:.5}");
            assert!(agreement > 0.99, "{method:?} {pattern}: masks agree on only {agreement}");
        }
    }
}

/// A masked-LoRA tiny LLaMA on CUDA against the CPU: loss and adapter gradients.
#[test]
fn masked_lora_model_matches_cpu() {
    use sparsetune::finetune::{adapter_tensors, attach_masked_lora, LoraOptions};
    use sparsetune::ops::masked_lora::AdapterGrad;
    use sparsetune::prune::{prune_model, Method, Pattern, PruneOptions};
    let Some(gpu) = cuda_for_tests("masked_lora_model_matches_cpu") else { return };
    let cpu = Device::cpu();
    let mut m = common::tiny_model(DType::F32, &cpu, 41);
    prune_model(&mut m, &[], &PruneOptions::new(Method::Magnitude, Pattern::NM { n: 2, m: 4 }), &mut |_| {}).unwrap();
    for grad in [AdapterGrad::Exact, AdapterGrad::Rearranged] {
        for format in [sparsetune::sparse::SparseFormat::Bitmask, sparsetune::sparse::SparseFormat::NM { n: 2, m: 4 }] {
            let mut opts = LoraOptions::new(4, 8.0);
            opts.b_std = 0.1;
            opts.grad = grad;
            opts.format = format;
            let on_cpu = attach_masked_lora(&m, opts).unwrap();
            let on_gpu = attach_masked_lora(&m.to(&gpu, DType::F32).unwrap(), opts).unwrap();
            let (ids, targets) = common::tokens(2, 11, m.config.vocab_size, &cpu);
            let run = |model: &sparsetune::model::llama::Llama, dev: &Device| {
                let mut tape = Tape::new();
                let ad = adapter_tensors(model);
                for (_, _, a, b) in &ad {
                    tape.watch(a);
                    tape.watch(b);
                }
                let (i, t) = (ids.to_device(dev).unwrap(), targets.to_device(dev).unwrap());
                let loss = model.loss(Some(&mut tape), &i, &t, ForwardOptions { checkpoint_layers: true }).unwrap();
                let mut grads = Grads::new();
                tape.backward(&loss, &mut grads).unwrap();
                let gs: Vec<Vec<f32>> = ad
                    .iter()
                    .flat_map(|(_, _, a, b)| {
                        [grads.get(a).unwrap().to_f32_vec().unwrap(), grads.get(b).unwrap().to_f32_vec().unwrap()]
                    })
                    .collect();
                (loss.to_scalar_f32().unwrap(), gs)
            };
            let (lc, gc) = run(&on_cpu, &cpu);
            let (lg, gg) = run(&on_gpu, &gpu);
            let what = format!("{grad:?} {format:?}");
            assert_close(&format!("{what} loss"), &[lg], &[lc], 1e-4, 1e-4);
            for (k, (c, g)) in gc.iter().zip(&gg).enumerate() {
                assert_close(&format!("{what} adapter grad {k}"), g, c, 1e-4, 3e-3);
            }
        }
    }
}
