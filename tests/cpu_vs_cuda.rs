//! The whole model on CUDA against the CPU reference: logits, loss and every weight
//! gradient of a tiny random LLaMA (f32 and bf16), with and without checkpointing; pruning,
//! masked LoRA, training steps, and the generation engine's prefill and decode steps.
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

/// Three training steps of a masked-LoRA tiny LLaMA (two micro-batches per step, gradient
/// clipping that binds, AdamW) on CUDA, in f32 and in bf16, against the same steps in f32 on
/// the CPU: before each step the adapters' gradients, then the step's loss, gradient norm
/// and updated adapters (f32; bf16 steps start from the same adapters). Tolerances scale with each compared tensor's largest magnitude
/// (`tol`·max|ref| + `tol`·|ref|).
#[test]
fn training_steps_match_cpu() {
    use sparsetune::finetune::{adapter_params, attach_masked_lora, LoraOptions, TrainConfig, TrainData, Trainer};
    use sparsetune::prune::{prune_model, Method, Pattern, PruneOptions};
    use sparsetune::sparse::SparseFormat;
    let Some(gpu) = cuda_for_tests("training_steps_match_cpu") else { return };
    let cpu = Device::cpu();
    let cases = [
        (DType::F32, SparseFormat::Bitmask, Pattern::Unstructured(0.5), 2e-3),
        (DType::F32, SparseFormat::NM { n: 2, m: 4 }, Pattern::NM { n: 2, m: 4 }, 2e-3),
        (DType::BF16, SparseFormat::Bitmask, Pattern::Unstructured(0.5), 5e-2),
    ];
    for (dtype, format, pattern, tol) in cases {
        let mut m = common::tiny_model(DType::F32, &cpu, 51);
        prune_model(&mut m, &[], &PruneOptions::new(Method::Magnitude, pattern), &mut |_| {}).unwrap();
        let mut opts = LoraOptions::new(4, 8.0);
        opts.b_std = 0.05;
        opts.format = format;
        let stream: Vec<u32> = (0..600).map(|i| ((i * 37 + 11) % m.config.vocab_size) as u32).collect();
        let data = TrainData::new(&[stream], 12).unwrap();
        let trainer = |model: &sparsetune::model::llama::Llama| {
            let lm = attach_masked_lora(model, opts).unwrap();
            let mut cfg = TrainConfig::new(3);
            (cfg.batch, cfg.grad_accum, cfg.seq_len, cfg.lr, cfg.warmup) = (2, 2, 12, 1e-2, 0.0);
            cfg.max_grad_norm = Some(0.05);
            cfg.checkpoint_layers = true;
            let params = adapter_params(&lm);
            Trainer::new(lm, params, cfg).unwrap()
        };
        let (mut on_cpu, mut on_gpu) = (trainer(&m), trainer(&m.to(&gpu, dtype).unwrap()));
        let close = |what: &str, got: &[f32], want: &[f32]| {
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert_close(what, got, want, f64::from(tol * scale) + 1e-7, tol.into());
        };
        let values = |t: &Trainer| -> Vec<Vec<f32>> { t.params.iter().map(|(_, p)| p.to_f32_vec().unwrap()).collect() };
        let gradients = |t: &Trainer| -> Vec<Vec<f32>> {
            let (ids, targets) = data.batch(t.samples_seen, 2, t.config.seed, t.model.device()).unwrap();
            let mut tape = Tape::new();
            for (_, p) in &t.params {
                tape.watch(p);
            }
            let loss =
                t.model.loss(Some(&mut tape), &ids, &targets, ForwardOptions { checkpoint_layers: true }).unwrap();
            let mut grads = Grads::new();
            let reused = t.model.device().workspace_reuses();
            tape.backward(&loss, &mut grads).unwrap();
            // Each layer's down projection, recomputed last, finds its W_eff in the workspace.
            let layers = t.model.config.num_hidden_layers;
            assert_eq!(t.model.device().workspace_reuses() - reused, layers, "W_eff reused per layer");
            t.params.iter().map(|(_, p)| grads.get(p).unwrap().to_f32_vec().unwrap()).collect()
        };
        for step in 1..=3 {
            let what = format!("{dtype} {format:?} step {step}");
            if dtype == DType::BF16 {
                // Both steps start from the GPU's adapters (see below).
                for ((_, c), (_, g)) in on_cpu.params.iter().zip(&on_gpu.params) {
                    c.copy_from(&g.to_device(&cpu).unwrap().to_dtype(DType::F32).unwrap()).unwrap();
                }
            }
            for (((name, _), c), g) in on_cpu.params.iter().zip(gradients(&on_cpu)).zip(gradients(&on_gpu)) {
                close(&format!("{what} gradient of {name}"), &g, &c);
            }
            let (rc, rg) = (on_cpu.train_step(&data).unwrap(), on_gpu.train_step(&data).unwrap());
            close(&format!("{what} loss"), &[rg.loss], &[rc.loss]);
            close(&format!("{what} gradient norm"), &[rg.grad_norm], &[rc.grad_norm]);
            assert!(rc.grad_norm > 0.05, "{what}: clipping should bind (norm {})", rc.grad_norm);
            // AdamW's first steps move each value by about ±lr whatever the gradient's size, so
            // a gradient near zero whose sign bf16 rounding flips moves it the other way: the
            // values are compared in f32 only, and in bf16 the CPU takes the GPU's adapters
            // before each step, so that every step compares gradients at the same point.
            if dtype == DType::F32 {
                for (((name, _), c), g) in on_cpu.params.iter().zip(values(&on_cpu)).zip(values(&on_gpu)) {
                    close(&format!("{what} {name} after the step"), &g, &c);
                }
            }
        }
    }
}

/// The generation engine on CUDA against the CPU: two prompts of different lengths in one
/// cache, each prefilled, then five batched decode steps fed the CPU's greedy tokens, for the
/// dense model and for models pruned to a bitmask and to 2:4 (kept compressed: the CUDA
/// decode and prefill kernels), f32 and bf16: the format of every linear, and every row's
/// logits.
#[test]
fn generation_on_cuda_matches_cpu() {
    use sparsetune::infer::{sample::argmax, InferModel, SparseMode};
    use sparsetune::prune::select::Pattern;
    use sparsetune::testing::magnitude_pruned;
    let Some(gpu) = cuda_for_tests("generation_on_cuda_matches_cpu") else { return };
    let cpu = Device::cpu();
    for (dtype, atol, rtol) in [(DType::F32, 1e-4, 1e-3), (DType::BF16, 3e-2, 3e-2)] {
        let base = common::tiny_model(dtype, &cpu, 41);
        let layers: Vec<usize> = (0..base.config.num_hidden_layers).collect();
        let models = [
            ("dense", base.clone()),
            ("bitmask", magnitude_pruned(&base, &layers, Pattern::Unstructured(0.6)).unwrap()),
            ("2:4", magnitude_pruned(&base, &layers, Pattern::NM { n: 2, m: 4 }).unwrap()),
        ];
        for (form, model) in models {
            let what = format!("{form} {dtype}");
            let on_gpu = model.to(&gpu, dtype).unwrap();
            let (ec, eg) =
                (InferModel::new(model, SparseMode::Auto).unwrap(), InferModel::new(on_gpu, SparseMode::Auto).unwrap());
            let formats: Vec<&str> = eg.choices.iter().map(|c| c.format.as_str()).collect();
            assert!(formats.iter().all(|f| *f == form), "{what}: {formats:?}");
            assert_eq!(formats.len(), ec.choices.len(), "{what}");
            let (mut cache_c, mut cache_g) = (ec.new_cache(2, 24).unwrap(), eg.new_cache(2, 24).unwrap());
            let prompts = [vec![3u32, 14, 15, 9, 2, 6, 5], vec![27u32, 1, 8]];
            let mut next = Vec::new();
            for (s, prompt) in prompts.iter().enumerate() {
                let (seqs, rows) = (vec![s as u32; prompt.len()], (0..prompt.len()).collect::<Vec<_>>());
                let c = ec.step(&mut cache_c, &seqs, prompt, &rows).unwrap();
                let g = eg.step(&mut cache_g, &seqs, prompt, &rows).unwrap();
                for (r, (g, c)) in g.iter().zip(&c).enumerate() {
                    assert_close(&format!("{what}: prompt {s}, row {r}"), g, c, atol, rtol);
                }
                next.push(argmax(c.last().unwrap()).unwrap());
            }
            for step in 0..5 {
                let c = ec.step(&mut cache_c, &[0, 1], &next, &[0, 1]).unwrap();
                let g = eg.step(&mut cache_g, &[0, 1], &next, &[0, 1]).unwrap();
                for (s, (g, c)) in g.iter().zip(&c).enumerate() {
                    assert_close(&format!("{what}: decode step {step}, sequence {s}"), g, c, atol, rtol);
                }
                next = c.iter().map(|l| argmax(l).unwrap()).collect();
            }
        }
    }
}

/// The tests above on the CPU driver of crates/cuda-cpu (in a child process whose GPU it
/// is): every launcher, kernel and cuBLAS call they make runs on the CPU, on a machine
/// without a GPU too.
#[test]
fn on_the_cpu_driver() {
    let passed = cuda_cpu::run_on_cpu_driver(None, "on_the_cpu_driver").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(passed, 5, "tests of cpu_vs_cuda.rs run on the CPU driver");
}
