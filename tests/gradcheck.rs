//! The whole model's loss gradient with respect to weight matrices on a tiny random
//! LLaMA, against finite differences of the loss. The forward runs in f32, so single
//! entries would drown in rounding noise: each check is a directional derivative (along a
//! random direction, and along the gradient itself, whose signal is |g|²), estimated by
//! Richardson extrapolation of central differences, (4·D(h/2) − D(h))/3, whose error is
//! O(h⁴). Also: checkpointed and plain backward agree bit for bit.

mod common;

use sparsetune::model::llama::{ForwardOptions, Llama, Part, Proj};
use sparsetune::nn::Linear;
use sparsetune::testing::random_f32;
use sparsetune::{DType, Device, Grads, Tape, Tensor};

fn loss_value(m: &Llama, ids: &Tensor, targets: &Tensor) -> f64 {
    m.loss(None, ids, targets, ForwardOptions::default()).unwrap().to_scalar_f32().unwrap() as f64
}

/// Replaces the weight of `part` with `w + h·dir`.
fn perturbed(m: &Llama, part: &Part, dir: &[f32], h: f32) -> Llama {
    m.map_tensors(|p, t| {
        if p != part {
            return Ok(t.clone());
        }
        let v: Vec<f32> = t.to_f32_vec()?.iter().zip(dir).map(|(a, d)| a + h * d).collect();
        Tensor::from_f32(v, t.shape().clone(), DType::F32, t.device())
    })
    .unwrap()
}

fn grads_of(m: &Llama, ids: &Tensor, targets: &Tensor, watch: &[&Tensor], checkpoint: bool) -> Grads {
    let mut tape = Tape::new();
    for w in watch {
        tape.watch(w);
    }
    let loss = m.loss(Some(&mut tape), ids, targets, ForwardOptions { checkpoint_layers: checkpoint }).unwrap();
    let mut grads = Grads::new();
    tape.backward(&loss, &mut grads).unwrap();
    grads
}

#[test]
fn loss_gradient_matches_finite_differences() {
    let dev = Device::cpu();
    // Larger weights than the default init (std 0.08) so the loss depends visibly on every matrix.
    let mut m = common::tiny_model(DType::F32, &dev, 5);
    for layer in &mut m.layers {
        for p in Proj::ALL {
            let w = layer.linear(p).dense().unwrap();
            let v: Vec<f32> = w.to_f32_vec().unwrap().iter().map(|x| x * 4.0).collect();
            *layer.linear_mut(p) = Linear::new(Tensor::from_f32(v, w.shape().clone(), DType::F32, &dev).unwrap());
        }
    }
    let (ids, targets) = common::tokens(2, 7, m.config.vocab_size, &dev);
    let parts = [
        Part::Linear(0, Proj::Q),
        Part::Linear(1, Proj::K),
        Part::Linear(0, Proj::Down),
        Part::Linear(1, Proj::O),
        Part::InputNorm(1),
        Part::Embed,
    ];
    let tensors: Vec<Tensor> =
        parts.iter().map(|p| m.named_tensors().unwrap().into_iter().find(|(q, _)| q == p).unwrap().1.clone()).collect();
    let grads = grads_of(&m, &ids, &targets, &tensors.iter().collect::<Vec<_>>(), false);
    for (i, (part, t)) in parts.iter().zip(&tensors).enumerate() {
        let g = grads.get(t).unwrap_or_else(|| panic!("no gradient for {part:?}")).to_f32_vec().unwrap();
        let random_dir = random_f32(t.elem_count(), 1.0, 100 + i as u64);
        for (what, dir) in [("random direction", random_dir), ("gradient direction", g.clone())] {
            let analytic: f64 = g.iter().zip(&dir).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            // Perturbation RMS = 4% of the weights' RMS (embedding std 0.02, linears 0.08):
            // small enough for the O(h⁴) truncation, large enough to rise above f32 noise.
            let w = t.to_f32_vec().unwrap();
            let w_rms = (w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
            let dir_rms = (dir.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / dir.len() as f64).sqrt();
            let h = (0.04 * w_rms / dir_rms) as f32;
            let central = |h: f32| {
                (loss_value(&perturbed(&m, part, &dir, h), &ids, &targets)
                    - loss_value(&perturbed(&m, part, &dir, -h), &ids, &targets))
                    / (2.0 * h as f64)
            };
            let fd = (4.0 * central(h / 2.0) - central(h)) / 3.0;
            // Along the gradient the signal is |g|² and the estimate is good to ~1e-4;
            // a random direction has a smaller signal, so f32 noise allows ~1% there.
            let tol = if what == "random direction" { 1e-4 + 2e-2 * fd.abs() } else { 1e-5 + 5e-3 * fd.abs() };
            println!("{part:?} along the {what}: analytic {analytic:.6e}, finite difference {fd:.6e}");
            assert!(
                (analytic - fd).abs() <= tol,
                "{part:?} along the {what}: analytic {analytic:e} vs finite difference {fd:e} (tol {tol:e})"
            );
        }
        let g_norm2: f64 = g.iter().map(|v| (*v as f64).powi(2)).sum();
        assert!(g_norm2 > 1e-6, "{part:?}: the gradient is too small for a meaningful check ({g_norm2:e})");
    }
}

#[test]
fn checkpointed_backward_equals_plain_backward() {
    let dev = Device::cpu();
    let m = common::tiny_model(DType::F32, &dev, 9);
    let (ids, targets) = common::tokens(2, 5, m.config.vocab_size, &dev);
    let watch: Vec<&Tensor> = m.named_tensors().unwrap().into_iter().map(|(_, t)| t).collect();
    let plain = grads_of(&m, &ids, &targets, &watch, false);
    let ckpt = grads_of(&m, &ids, &targets, &watch, true);
    assert_eq!(plain.len(), watch.len());
    for t in &watch {
        let (a, b) = (plain.get(t).unwrap().to_f32_vec().unwrap(), ckpt.get(t).unwrap().to_f32_vec().unwrap());
        assert_eq!(a, b, "checkpointing changed a gradient of shape {}", t.shape());
    }
}

#[test]
fn checkpointing_keeps_only_layer_inputs() {
    let dev = Device::cpu();
    let m = common::tiny_model(DType::F32, &dev, 9);
    let (ids, targets) = common::tokens(1, 6, m.config.vocab_size, &dev);
    let mut tape = Tape::new();
    for l in &m.layers {
        tape.watch(l.q.dense().unwrap());
    }
    m.loss(Some(&mut tape), &ids, &targets, ForwardOptions { checkpoint_layers: true }).unwrap();
    let report = tape.saved_report();
    let layers: Vec<_> = report.iter().filter(|e| e.op == "checkpoint").collect();
    assert_eq!(layers.len(), m.config.num_hidden_layers);
    for e in layers {
        assert_eq!(e.kept.len(), 1, "a checkpointed layer keeps its input only: {e:?}");
        assert_eq!(e.kept[0].0.dims(), [1, 6, m.config.hidden_size]);
        assert_eq!(e.recomputed, vec!["decoder layer"]);
    }
}
