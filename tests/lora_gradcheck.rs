//! Masked LoRA through a whole tiny LLaMA: the loss gradient with respect to the adapters
//! A and B matches finite differences (directional, Richardson-extrapolated: the forward
//! runs in f32), the merged model equals the adapted one, and merging keeps the zeros.

mod common;

use sparsetune::finetune::{adapter_tensors, attach_masked_lora, LoraOptions};
use sparsetune::model::llama::{ForwardOptions, Llama, Proj};
use sparsetune::nn::{Linear, MaskedLora};
use sparsetune::ops::masked_lora::AdapterGrad;
use sparsetune::prune::{prune_model, Method, Pattern, PruneOptions};
use sparsetune::sparse::BitMask;
use sparsetune::testing::random_f32;
use sparsetune::{DType, Device, Grads, Tape, Tensor};

fn pruned_tiny() -> (Llama, Tensor, Tensor) {
    let dev = Device::cpu();
    let mut m = common::tiny_model(DType::F32, &dev, 12);
    prune_model(&mut m, &[], &PruneOptions::new(Method::Magnitude, Pattern::Unstructured(0.5)), &mut |_| {}).unwrap();
    let (ids, targets) = common::tokens(2, 9, m.config.vocab_size, &dev);
    (m, ids, targets)
}

fn loss(m: &Llama, ids: &Tensor, t: &Tensor) -> f64 {
    m.loss(None, ids, t, ForwardOptions::default()).unwrap().to_scalar_f32().unwrap() as f64
}

/// `m` with adapter (layer, proj)'s A (or B) replaced by A + h·dir.
fn perturbed(m: &Llama, layer: usize, proj: Proj, which_a: bool, dir: &[f32], h: f32) -> Llama {
    let mut m = m.clone();
    let Linear::MaskedLora(l) = m.layers[layer].linear(proj).clone() else { panic!("not adapted") };
    let t = if which_a { &l.a } else { &l.b };
    let v: Vec<f32> = t.to_f32_vec().unwrap().iter().zip(dir).map(|(x, d)| x + h * d).collect();
    let new = Tensor::from_f32(v, t.shape().clone(), DType::F32, t.device()).unwrap();
    let l = if which_a { MaskedLora { a: new, ..l } } else { MaskedLora { b: new, ..l } };
    *m.layers[layer].linear_mut(proj) = Linear::MaskedLora(l);
    m
}

#[test]
fn adapter_gradients_match_finite_differences() {
    let (m, ids, targets) = pruned_tiny();
    let mut opts = LoraOptions::new(4, 8.0);
    opts.b_std = 0.1; // non-zero B so that A has a gradient too
    for grad in [AdapterGrad::Exact, AdapterGrad::Rearranged] {
        opts.grad = grad;
        let lm = attach_masked_lora(&m, opts).unwrap();
        let mut tape = Tape::new();
        let adapters = adapter_tensors(&lm);
        for (_, _, a, b) in &adapters {
            tape.watch(a);
            tape.watch(b);
        }
        let l = lm.loss(Some(&mut tape), &ids, &targets, ForwardOptions::default()).unwrap();
        let mut grads = Grads::new();
        tape.backward(&l, &mut grads).unwrap();
        for (k, (layer, proj, a, b)) in adapters.iter().enumerate().filter(|(k, _)| k % 5 == 0) {
            for (which_a, t) in [(true, a), (false, b)] {
                let g = grads.get(t).unwrap().to_f32_vec().unwrap();
                let dir = random_f32(t.elem_count(), 1.0, 40 + k as u64);
                let analytic: f64 = g.iter().zip(&dir).map(|(x, y)| *x as f64 * *y as f64).sum();
                let h = 1e-2f32;
                let central = |h: f32| {
                    (loss(&perturbed(&lm, *layer, *proj, which_a, &dir, h), &ids, &targets)
                        - loss(&perturbed(&lm, *layer, *proj, which_a, &dir, -h), &ids, &targets))
                        / (2.0 * h as f64)
                };
                let fd = (4.0 * central(h / 2.0) - central(h)) / 3.0;
                let name = if which_a { "A" } else { "B" };
                println!(
                    "{grad:?} layer {layer} {proj:?} d{name}: analytic {analytic:.6e}, finite difference {fd:.6e}"
                );
                match grad {
                    AdapterGrad::Exact => {
                        let tol = 2e-4 + 2e-2 * fd.abs();
                        assert!(
                            (analytic - fd).abs() <= tol,
                            "{grad:?} layer {layer} {proj:?} d{name}: {analytic:e} vs {fd:e}"
                        );
                    }
                    // LoRS drops the mask from the adapter gradients, so they are not the
                    // loss's derivative, by design (its formulas are checked against the
                    // dense reference in ops::masked_lora); here: finite values only.
                    AdapterGrad::Rearranged => assert!(analytic.is_finite()),
                }
            }
        }
    }
}

#[test]
fn merged_model_equals_the_adapted_one_and_keeps_the_zeros() {
    let (m, ids, _) = pruned_tiny();
    let mut opts = LoraOptions::new(3, 6.0);
    opts.b_std = 0.2;
    let lm = attach_masked_lora(&m, opts).unwrap();
    let merged = lm.merged().unwrap();
    let y1 = lm.forward(None, &ids, ForwardOptions::default()).unwrap().to_f32_vec().unwrap();
    let y2 = merged.forward(None, &ids, ForwardOptions::default()).unwrap().to_f32_vec().unwrap();
    sparsetune::testing::assert_close("merged vs adapted logits", &y2, &y1, 1e-5, 1e-4);
    for (layer_p, layer_m) in m.layers.iter().zip(&merged.layers) {
        for p in Proj::ALL {
            let (rows, cols) = layer_p.linear(p).dims();
            let before =
                BitMask::from_nonzero(&layer_p.linear(p).dense().unwrap().to_f32_vec().unwrap(), rows, cols).unwrap();
            let after = layer_m.linear(p).dense().unwrap().to_f32_vec().unwrap();
            for (k, &v) in after.iter().enumerate() {
                if !before.get(k / cols, k % cols) {
                    assert_eq!(v, 0.0, "{p:?}: merged weight non-zero where the mask prunes");
                }
            }
            // The adapter changed the kept weights.
            assert!(after.iter().zip(layer_p.linear(p).dense().unwrap().to_f32_vec().unwrap()).any(|(a, b)| *a != b));
        }
    }
}
