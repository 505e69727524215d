//! The training loop on a tiny pruned LLaMA with masked-LoRA adapters: the loss falls,
//! the zeros of the pruned weights survive training and merging, gradient accumulation
//! equals a larger batch, a non-finite loss skips the step, and the reported gradient norm
//! is the norm of the gradients computed independently.

mod common;

use sparsetune::finetune::{adapter_params, attach_masked_lora, LoraOptions, TrainConfig, TrainData, Trainer};
use sparsetune::model::llama::{ForwardOptions, Llama, Proj};
use sparsetune::prune::{prune_model, Method, Pattern, PruneOptions};
use sparsetune::sparse::BitMask;
use sparsetune::{DType, Device, Grads, Tape, Tensor};

fn pruned_tiny() -> Llama {
    let mut m = common::tiny_model(DType::F32, &Device::cpu(), 5);
    prune_model(&mut m, &[], &PruneOptions::new(Method::Magnitude, Pattern::Unstructured(0.5)), &mut |_| {}).unwrap();
    m
}

/// A repetitive token stream (learnable in a few steps).
fn stream(vocab: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i % 7) * 5 % vocab) as u32).collect()
}

fn trainer(steps: usize, batch: usize, accum: usize) -> (Trainer, TrainData) {
    let m = pruned_tiny();
    let data = TrainData::new(&[stream(m.config.vocab_size, 400)], 16).unwrap();
    let lm = attach_masked_lora(&m, LoraOptions::new(4, 8.0)).unwrap();
    let mut cfg = TrainConfig::new(steps);
    (cfg.batch, cfg.grad_accum, cfg.seq_len, cfg.lr, cfg.warmup) = (batch, accum, 16, 3e-2, 0.0);
    let params = adapter_params(&lm);
    (Trainer::new(lm, params, cfg).unwrap(), data)
}

#[test]
fn loss_falls_and_zeros_survive() {
    let (mut t, data) = trainer(60, 2, 1);
    let before = pruned_tiny();
    while !t.done() {
        t.train_step(&data).unwrap();
    }
    let (first, last) = (t.history[0].loss, t.history.last().unwrap().loss);
    assert!(last < 0.9 * first, "loss {first} -> {last}");
    assert!(t.history.iter().all(|r| !r.skipped && r.grad_norm.is_finite()));
    let merged = t.model.merged().unwrap();
    for (lb, lm) in before.layers.iter().zip(&merged.layers) {
        for p in Proj::ALL {
            let w0 = lb.linear(p).dense().unwrap().to_f32_vec().unwrap();
            let (rows, cols) = lb.linear(p).dims();
            let mask = BitMask::from_nonzero(&w0, rows, cols).unwrap();
            let w1 = lm.linear(p).dense().unwrap().to_f32_vec().unwrap();
            let zeros_kept = w1.iter().enumerate().all(|(k, &v)| mask.get(k / cols, k % cols) || v == 0.0);
            assert!(zeros_kept, "{p:?}: a pruned weight became non-zero");
            let changed = w1.iter().zip(&w0).filter(|(a, b)| a != b).count();
            assert!(changed > 0, "{p:?}: training changed nothing");
        }
    }
}

#[test]
fn accumulation_equals_a_larger_batch() {
    let (mut a, data) = trainer(2, 2, 1);
    let (mut b, _) = trainer(2, 1, 2);
    for _ in 0..2 {
        let (ra, rb) = (a.train_step(&data).unwrap(), b.train_step(&data).unwrap());
        assert!((ra.loss - rb.loss).abs() <= 1e-5 + 1e-5 * ra.loss.abs(), "loss {} vs {}", ra.loss, rb.loss);
        assert!(
            (ra.grad_norm - rb.grad_norm).abs() <= 1e-6 + 1e-4 * ra.grad_norm,
            "{} vs {}",
            ra.grad_norm,
            rb.grad_norm
        );
    }
    for ((n, pa), (_, pb)) in a.params.iter().zip(&b.params) {
        sparsetune::testing::assert_close(n, &pb.to_f32_vec().unwrap(), &pa.to_f32_vec().unwrap(), 1e-6, 1e-4);
    }
}

#[test]
fn gradient_norm_is_the_norm_of_independent_gradients() {
    let (mut t, data) = trainer(1, 2, 1);
    // The same first batch, through the model directly.
    let cfg = t.config.clone();
    let (ids, targets) = data.batch(0, cfg.batch, cfg.seed, &Device::cpu()).unwrap();
    let mut tape = Tape::new();
    for (_, p) in &t.params {
        tape.watch(p);
    }
    let loss = t.model.loss(Some(&mut tape), &ids, &targets, ForwardOptions::default()).unwrap();
    let mut grads = Grads::new();
    tape.backward(&loss, &mut grads).unwrap();
    let want: f64 = t
        .params
        .iter()
        .map(|(_, p)| grads.get(p).unwrap().to_f32_vec().unwrap().iter().map(|&g| (g as f64).powi(2)).sum::<f64>())
        .sum::<f64>()
        .sqrt();
    let r = t.train_step(&data).unwrap();
    assert!(
        (r.grad_norm as f64 - want).abs() <= 1e-7 + 1e-4 * want,
        "grad norm {} vs {want} (atol 1e-7 + rtol 1e-4)",
        r.grad_norm
    );
    assert!((r.loss - loss.to_scalar_f32().unwrap()).abs() < 1e-6);
}

#[test]
fn non_finite_loss_skips_the_step() {
    let (mut t, data) = trainer(2, 1, 1);
    // Poison one adapter: the loss becomes NaN.
    let (_, a) = t.params[0].clone();
    let poisoned = vec![f32::NAN; a.elem_count()];
    a.copy_from(&Tensor::from_f32(poisoned, a.shape().clone(), DType::F32, a.device()).unwrap()).unwrap();
    let b_before = t.params[1].1.to_f32_vec().unwrap();
    let r = t.train_step(&data).unwrap();
    assert!(r.skipped && !r.loss.is_finite());
    assert_eq!(t.optimizer.step, 0, "no update applied");
    assert_eq!(t.params[1].1.to_f32_vec().unwrap(), b_before);
    assert_eq!(t.samples_seen, 1, "the data position still advances");
}

#[test]
fn bad_configs_are_errors() {
    let m = pruned_tiny();
    let lm = attach_masked_lora(&m, LoraOptions::new(2, 4.0)).unwrap();
    let params = adapter_params(&lm);
    let mut cfg = TrainConfig::new(3);
    cfg.warmup = 2.0;
    assert!(Trainer::new(lm.clone(), params.clone(), cfg).is_err());
    assert!(Trainer::new(lm.clone(), Vec::new(), TrainConfig::new(3)).is_err());
    let mut cfg = TrainConfig::new(3);
    cfg.lr = f32::NAN;
    assert!(Trainer::new(lm, params, cfg).is_err());
    assert!(TrainData::new(&[vec![1, 2, 3]], 16).is_err(), "text shorter than a window");
}

fn all_state(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = t.params.iter().map(|(n, p)| (n.clone(), p.to_f32_vec().unwrap())).collect();
    v.extend(t.optimizer.named_state().into_iter().map(|(n, s)| (n, s.to_f32_vec().unwrap())));
    v
}

#[test]
fn resume_is_bit_identical_and_bad_checkpoints_are_refused() {
    use sparsetune::finetune::checkpoint;
    let dir = common::scratch("resume");
    let path = checkpoint::path_in(&dir);
    let (mut straight, data) = trainer(6, 2, 2);
    while !straight.done() {
        straight.train_step(&data).unwrap();
    }
    // Interrupted after 3 steps: the process "dies" (the trainer is dropped) and a fresh
    // one is built the same way, then resumed.
    let (mut first, _) = trainer(6, 2, 2);
    for _ in 0..3 {
        first.train_step(&data).unwrap();
    }
    checkpoint::save(&path, &first, "masked-lora", None, serde_json::json!({}), &[]).unwrap();
    drop(first);
    let (mut resumed, _) = trainer(6, 2, 2);
    let ck = checkpoint::load(&path).unwrap();
    assert!(ck.restore(&mut resumed, "seft").is_err(), "another method's checkpoint");
    ck.restore(&mut resumed, "masked-lora").unwrap();
    assert_eq!(resumed.step, 3);
    while !resumed.done() {
        resumed.train_step(&data).unwrap();
    }
    assert_eq!(all_state(&resumed), all_state(&straight), "resumed run differs from the uninterrupted one");
    let losses = |t: &Trainer| t.history.iter().map(|r| r.loss).collect::<Vec<_>>();
    assert_eq!(losses(&resumed), losses(&straight));

    // A flipped byte in the data, or a truncated file, is refused with a clear error.
    let bytes = std::fs::read(&path).unwrap();
    let mut flipped = bytes.clone();
    let k = bytes.len() - 5;
    flipped[k] ^= 0x40;
    let bad = dir.join("flipped.safetensors");
    std::fs::write(&bad, &flipped).unwrap();
    let e = checkpoint::load(&bad).unwrap_err().to_string();
    assert!(e.contains("corrupted") && e.contains("flipped.safetensors"), "{e}");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    assert!(checkpoint::load(&bad).is_err(), "truncated checkpoint accepted");
    // A different configuration cannot resume.
    let (mut other, _) = trainer(7, 2, 2);
    let e = ck.restore(&mut other, "masked-lora").unwrap_err().to_string();
    assert!(e.contains("configuration differs"), "{e}");
}

#[test]
fn lors_initialisation_takes_the_gradient_principal_directions() {
    use sparsetune::finetune::{prepare, RepairMethod, RepairOptions};
    use sparsetune::linalg::top_right_singular_vectors;
    let m = pruned_tiny();
    let data = TrainData::new(&[stream(m.config.vocab_size, 400)], 16).unwrap();
    let mut opts = RepairOptions::new(LoraOptions::new(2, 4.0));
    opts.init_samples = 3;
    let (lm, params) = prepare(&m, RepairMethod::Lors, &opts, &data, &mut |_, _| {}).unwrap();
    // B = 0: the adapted model computes exactly what the pruned one does.
    let (ids, targets) = data.batch(0, 2, 0, &Device::cpu()).unwrap();
    let l0 = m.loss(None, &ids, &targets, ForwardOptions::default()).unwrap().to_scalar_f32().unwrap();
    let l1 = lm.loss(None, &ids, &targets, ForwardOptions::default()).unwrap().to_scalar_f32().unwrap();
    assert_eq!(l0, l1);
    // Independently: the dense gradient summed over the same 3 windows, and its exact SVD
    // (a sketch as wide as the matrix). A's rows must capture the top-2 energy.
    let w = m.layers[1].linear(Proj::Up).dense().unwrap().clone();
    let mut grads = Grads::new();
    for i in 0..3 {
        let (ids, targets) = data.batch(i, 1, 0, &Device::cpu()).unwrap();
        let mut tape = Tape::new();
        tape.watch(&w);
        let l = m.loss(Some(&mut tape), &ids, &targets, ForwardOptions::default()).unwrap();
        tape.backward(&l, &mut grads).unwrap();
    }
    let g: Vec<f64> = grads.get(&w).unwrap().to_f32_vec().unwrap().into_iter().map(f64::from).collect();
    let (rows, cols) = (w.dims()[0], w.dims()[1]);
    let (_, sigma) = top_right_singular_vectors(&g, rows, cols, 2, rows.min(cols), 0, 1).unwrap();
    let a = params.iter().find(|(n, _)| n == "model.layers.1.mlp.up_proj.lora_A").unwrap().1.to_f32_vec().unwrap();
    let mut energy = 0.0;
    for j in 0..2 {
        for r in 0..rows {
            let dot: f64 = (0..cols).map(|c| g[r * cols + c] * a[j * cols + c] as f64).sum();
            energy += dot * dot;
        }
        let norm: f64 = (0..cols).map(|c| (a[j * cols + c] as f64).powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-5, "row {j} of A has norm² {norm}");
    }
    let want: f64 = sigma.iter().map(|s| s * s).sum();
    assert!(energy >= 0.999 * want, "A captures {energy} of the top-2 gradient energy {want}");
}

#[test]
fn adapter_file_merges_to_the_in_memory_merge() {
    use sparsetune::finetune::export::{merge_adapter_file, save_adapters};
    let (mut t, data) = trainer(3, 1, 1);
    for _ in 0..3 {
        t.train_step(&data).unwrap();
    }
    let path = common::scratch("adapter").join("adapter.safetensors");
    save_adapters(&t.model, &path, DType::F32).unwrap();
    let from_file = merge_adapter_file(&pruned_tiny(), &path).unwrap();
    let in_memory = t.model.merged().unwrap();
    for ((p, a), (_, b)) in from_file.named_tensors().unwrap().into_iter().zip(in_memory.named_tensors().unwrap()) {
        assert_eq!(a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap(), "{p:?}");
    }
    assert!(save_adapters(&pruned_tiny(), &path, DType::F32).is_err(), "a model without adapters");
}

/// Measured CPU peak vs the plan, with and without checkpointing, for every method: two
/// steps of masked-lora and lors, of SEFT with a drop-and-grow round between them, and of
/// LoSA from the dense model (its five stage re-selections happen before the first step).
#[test]
fn measured_peak_is_within_ten_percent_of_the_plan() {
    use sparsetune::finetune::plan::{plan, PlanInput};
    use sparsetune::finetune::{Repair, RepairMethod, RepairOptions};
    use sparsetune::model::llama::LlamaConfig;
    let config = LlamaConfig {
        vocab_size: 512,
        hidden_size: 64,
        intermediate_size: 176,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 256,
        ..LlamaConfig::tiny()
    };
    let dev = Device::cpu();
    let data = TrainData::new(&[stream(config.vocab_size, 2000)], 128).unwrap();
    for method in RepairMethod::ALL {
        for checkpointing in [true, false] {
            let mut cfg = TrainConfig::new(2);
            (cfg.batch, cfg.seq_len, cfg.checkpoint_layers) = (2, 128, checkpointing);
            let mut opts = RepairOptions::new(LoraOptions::new(8, 16.0));
            (opts.init_samples, opts.seft.interval, opts.seft.grad_batches) = (0, 1, 1);
            (opts.losa.target, opts.losa.calib_samples, opts.losa.cka_samples) = (Some(0.5), 8, 4);
            // Only what training holds is alive at the reset: the source goes, as in the CLI.
            let mut source = Llama::random(&config, DType::F32, &dev, 3).unwrap();
            if method != RepairMethod::Losa {
                let magnitude = PruneOptions::new(Method::Magnitude, Pattern::Unstructured(0.5));
                prune_model(&mut source, &[], &magnitude, &mut |_| {}).unwrap();
            }
            let mut r = Repair::new(&source, method, opts, cfg, &data, &mut |_, _| {}).unwrap();
            drop(source);
            dev.reset_peak_memory();
            while !r.done() {
                r.step(&data).unwrap();
            }
            let measured = dev.memory().peak_bytes as f64;
            let p = plan(&PlanInput {
                config: config.clone(),
                // LoSA's base is largest at its start: the dense source.
                sparsity: if method == RepairMethod::Losa { 0.0 } else { 0.5 },
                nm: None,
                dtype: DType::F32,
                seq_len: 128,
                batch: 2,
                rank: 8,
                checkpointing,
                cuda: false,
                method,
                calib_samples: 8,
            })
            .unwrap();
            let planned = p.total_bytes as f64;
            eprintln!(
                "{method} checkpointing {checkpointing}: measured {measured} planned {planned} ({}: {:?})",
                p.peak_phase, p.items
            );
            assert!(
                (measured - planned).abs() <= 0.10 * planned,
                "{method}, checkpointing {checkpointing}: measured peak {measured} bytes vs plan {planned} (rtol 0.10)"
            );
        }
    }
}

/// After a forward of the adapted model (no checkpointing), the tape lists per layer what
/// it keeps: activations and the adapters, never a tensor shaped like a weight (out × in).
#[test]
fn tape_keeps_no_weight_sized_tensor_per_layer() {
    let lm = attach_masked_lora(&pruned_tiny(), LoraOptions::new(2, 4.0)).unwrap();
    let (ids, targets) = common::tokens(1, 5, lm.config.vocab_size, &Device::cpu());
    let mut tape = Tape::new();
    for (_, p) in adapter_params(&lm) {
        tape.watch(&p);
    }
    lm.loss(Some(&mut tape), &ids, &targets, ForwardOptions::default()).unwrap();
    let weight_shapes: Vec<[usize; 2]> = Proj::ALL.iter().map(|p| p.shape(&lm.config)).collect();
    let report = tape.saved_report();
    for l in 0..lm.config.num_hidden_layers {
        let scope = format!("layer {l}");
        let entries: Vec<_> = report.iter().filter(|e| e.scope.as_deref() == Some(scope.as_str())).collect();
        let masked: Vec<_> = entries.iter().filter(|e| e.op == "masked_lora").collect();
        assert_eq!(masked.len(), 7, "{scope}: seven masked-LoRA linears recorded");
        for e in &entries {
            for (shape, _) in &e.kept {
                assert!(
                    !weight_shapes.iter().any(|w| shape.dims() == w),
                    "{scope}: {} keeps a weight-shaped tensor {shape}",
                    e.op
                );
            }
        }
        assert!(masked.iter().all(|e| !e.recomputed.is_empty()), "{scope}: W_eff is recomputed, not kept");
    }
}

fn seft_repair(steps: usize, interval: usize) -> (sparsetune::finetune::Repair, TrainData) {
    use sparsetune::finetune::{Repair, RepairMethod, RepairOptions};
    let m = pruned_tiny();
    let data = TrainData::new(&[stream(m.config.vocab_size, 400)], 16).unwrap();
    let mut cfg = TrainConfig::new(steps);
    (cfg.batch, cfg.seq_len, cfg.lr, cfg.warmup) = (2, 16, 1e-2, 0.0);
    let mut opts = RepairOptions::new(LoraOptions::new(4, 8.0));
    (opts.seft.interval, opts.seft.swap_fraction, opts.seft.grad_batches) = (interval, 0.2, 2);
    (Repair::new(&m, RepairMethod::Seft, opts, cfg, &data, &mut |_, _| {}).unwrap(), data)
}

/// The kept weights of every linear as a mask.
fn masks_of(m: &Llama) -> Vec<BitMask> {
    m.layers
        .iter()
        .flat_map(|l| Proj::ALL.map(|p| l.linear(p).merged().unwrap()))
        .map(|w| BitMask::from_nonzero(&w.to_f32_vec().unwrap(), w.dims()[0], w.dims()[1]).unwrap())
        .collect()
}

#[test]
fn seft_trains_kept_weights_at_constant_sparsity_and_evolves_the_mask() {
    let (mut r, data) = seft_repair(8, 3);
    let before = masks_of(&pruned_tiny());
    let mut losses = Vec::new();
    while !r.done() {
        losses.push(r.step(&data).unwrap().loss);
    }
    assert!(losses[7] < losses[0], "loss did not fall: {losses:?}");
    assert_eq!(r.evolutions.len(), 2, "evolutions after steps 3 and 6");
    assert!(r.evolutions.iter().all(|e| e.swapped > 0));
    let merged = r.merged().unwrap();
    let after = masks_of(&merged);
    let mut moved = 0;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        // Exactly as many weights per linear (a trained kept weight could in principle be
        // exactly 0.0 and read as pruned; it is not, here).
        assert_eq!(a.kept(), b.kept(), "linear {i}: sparsity changed");
        moved += (0..b.rows())
            .flat_map(|r| (0..b.cols()).map(move |c| (r, c)))
            .filter(|&(r, c)| a.get(r, c) != b.get(r, c))
            .count();
    }
    assert!(moved > 0, "drop-and-grow moved nothing");
    // Zeros exactly where the final masks of the model say.
    let finals = sparsetune::finetune::checkpoint::masks(&r.trainer.model).unwrap();
    for ((_, m), want) in finals.iter().zip(&after) {
        assert_eq!(m.to_vec::<u8>().unwrap(), want.bytes());
    }
}

#[test]
fn seft_resumes_bit_identically_across_an_evolution() {
    let (mut whole, data) = seft_repair(6, 2);
    while !whole.done() {
        whole.step(&data).unwrap();
    }
    let path = common::scratch("seft-resume").join("ck.safetensors");
    let (mut first, _) = seft_repair(6, 2);
    for _ in 0..2 {
        first.step(&data).unwrap(); // the checkpoint follows the evolution after step 2
    }
    first.save(&path).unwrap();
    drop(first);
    let (mut second, _) = seft_repair(6, 2);
    second.resume(&path).unwrap();
    assert_eq!(second.evolutions.len(), 1);
    while !second.done() {
        second.step(&data).unwrap();
    }
    let (a, b) = (whole.merged().unwrap(), second.merged().unwrap());
    for ((_, x), (_, y)) in a.named_tensors().unwrap().iter().zip(b.named_tensors().unwrap().iter()) {
        assert_eq!(x.to_f32_vec().unwrap(), y.to_f32_vec().unwrap());
    }
    // Another method's checkpoint is refused before anything is read.
    let (mut lora, _) = trainer(6, 2, 1);
    let e = sparsetune::finetune::checkpoint::load(&path).unwrap().restore(&mut lora, "masked-lora").unwrap_err();
    assert!(e.to_string().contains("seft"), "{e}");
}

/// LoSA on a dense 3-layer tiny model towards 50% over `steps` steps (5 stages).
fn losa_repair(steps: usize) -> (sparsetune::finetune::Repair, TrainData) {
    use sparsetune::finetune::{Repair, RepairMethod, RepairOptions};
    let mut cfg = sparsetune::model::llama::LlamaConfig::tiny();
    cfg.num_hidden_layers = 3;
    let m = Llama::random(&cfg, DType::F32, &Device::cpu(), 9).unwrap();
    let data = TrainData::new(&[stream(cfg.vocab_size, 400)], 16).unwrap();
    let mut tc = TrainConfig::new(steps);
    (tc.batch, tc.seq_len, tc.lr, tc.warmup) = (2, 16, 1e-2, 0.0);
    let mut opts = RepairOptions::new(LoraOptions::new(4, 8.0));
    (opts.losa.target, opts.losa.calib_samples, opts.losa.cka_samples) = (Some(0.5), 6, 4);
    (Repair::new(&m, RepairMethod::Losa, opts, tc, &data, &mut |_, _| {}).unwrap(), data)
}

/// Pruned entries per row of each linear of a model with masked-LoRA linears.
fn pruned_per_row(m: &Llama) -> Vec<Vec<usize>> {
    masks_of(m).iter().map(|k| (0..k.rows()).map(|r| k.cols() - k.kept_in_row(r)).collect()).collect()
}

#[test]
fn losa_raises_sparsity_in_stages_with_nested_masks_and_allocated_ranks() {
    use sparsetune::finetune::losa::stage_sparsity;
    use sparsetune::nn::Linear;
    let (mut r, data) = losa_repair(10);
    let (layers, cfg) = (r.trainer.model.layers.len(), r.trainer.model.config.clone());
    let (ids, targets) = data.batch(0, 4, 0, &Device::cpu()).unwrap(); // training windows
    let loss = |m: &Llama| m.loss(None, &ids, &targets, ForwardOptions::default()).unwrap().to_scalar_f32().unwrap();
    let mut prev_rows = pruned_per_row(&r.trainer.model); // dense: no zeros
    assert!(prev_rows.iter().flatten().all(|&z| z == 0));
    let mut prev_ranks = vec![4; layers];
    for k in 1..=5 {
        assert_eq!(r.pending_stage(), Some(k));
        let before = r.trainer.model.merged().unwrap();
        let stage = r.losa.as_mut().unwrap().advance(&mut r.trainer).unwrap().clone();
        assert_eq!(r.pending_stage(), None);
        assert!((stage.sparsity - stage_sparsity(0.5, k, 5)).abs() < 1e-12);
        // Ranks: mean R − T + k (at least 1) per layer, shared by the seven projections.
        assert_eq!(stage.ranks.iter().sum::<usize>(), (4 + k).saturating_sub(5).max(1) * layers, "{stage:?}");
        // The same re-prune, done independently on the merged model before the stage.
        let mut want = before.clone();
        let mut po = PruneOptions::new(Method::Wanda, Pattern::Unstructured(stage.sparsity));
        po.allocation = sparsetune::prune::Allocation::Explicit(stage.allocated.clone());
        prune_model(&mut want, &data.inputs(6), &po, &mut |_| {}).unwrap();
        let rows = pruned_per_row(&r.trainer.model);
        let (old_masks, new_masks) = (masks_of(&before), masks_of(&r.trainer.model));
        for (i, (got, prev)) in rows.iter().zip(&prev_rows).enumerate() {
            let (l, p) = (i / 7, Proj::ALL[i % 7]);
            let cols = p.shape(&cfg)[1];
            let wanda = (cols as f64 * stage.allocated[l]).floor() as usize;
            for (row, (&g, &q)) in got.iter().zip(prev).enumerate() {
                // Wanda prunes the row's zeros first (score 0): max(its quota, the zeros it had).
                assert_eq!(g, wanda.max(q), "stage {k} layer {l} {p:?} row {row}");
            }
            // Nested: nothing pruned earlier comes back.
            let (o, n) = (&old_masks[i], &new_masks[i]);
            assert!(
                (0..o.rows()).all(|rr| (0..o.cols()).all(|c| o.get(rr, c) || !n.get(rr, c))),
                "stage {k} linear {i}"
            );
            // Where the rank did not shrink, the model's weight is the re-pruned merged weight.
            let Linear::MaskedLora(lin) = r.trainer.model.layers[l].linear(p) else { panic!("not masked LoRA") };
            assert_eq!(lin.a.dims()[0], stage.ranks[l]);
            if stage.ranks[l] >= prev_ranks[l] {
                let got = r.trainer.model.layers[l].linear(p).merged().unwrap();
                let (got, want) = (got, want.layers[l].linear(p).dense().unwrap().clone());
                sparsetune::testing::assert_close(
                    &format!("stage {k} layer {l} {p:?}"),
                    &got.to_f32_vec().unwrap(),
                    &want.to_f32_vec().unwrap(),
                    1e-6,
                    1e-5,
                );
            }
        }
        let achieved: f64 = stage.achieved.iter().sum::<f64>() / layers as f64;
        assert!((achieved - stage.sparsity).abs() < 0.06, "stage {k}: {achieved} vs {}", stage.sparsity);
        prev_rows = rows;
        prev_ranks = stage.ranks.clone();
        // Train the stage.
        let start = loss(&r.trainer.model);
        while r.trainer.step < stage.steps.end {
            let rec = r.step(&data).unwrap();
            assert!(!rec.skipped);
        }
        assert_eq!(r.trainer.segment, stage.steps);
        let end = loss(&r.trainer.model);
        assert!(end < start, "stage {k}: loss {start} -> {end}");
    }
    assert!(r.done());
    // The merge has zeros exactly where the final masks are.
    let merged = r.merged().unwrap();
    for ((_, m), want) in
        sparsetune::finetune::checkpoint::masks(&r.trainer.model).unwrap().iter().zip(masks_of(&merged))
    {
        assert_eq!(m.to_vec::<u8>().unwrap(), want.bytes());
    }
}

#[test]
fn losa_resumes_bit_identically_across_a_stage() {
    let (mut whole, data) = losa_repair(6);
    while !whole.done() {
        whole.step(&data).unwrap();
    }
    let path = common::scratch("losa-resume").join("ck.safetensors");
    let (mut first, _) = losa_repair(6);
    for _ in 0..2 {
        first.step(&data).unwrap(); // stages 1 and 2 set up, one step each
    }
    first.save(&path).unwrap();
    drop(first);
    let (mut second, _) = losa_repair(6);
    second.resume(&path).unwrap();
    assert_eq!(second.losa.as_ref().unwrap().stages.len(), 2);
    while !second.done() {
        second.step(&data).unwrap();
    }
    let (a, b) = (whole.merged().unwrap(), second.merged().unwrap());
    for ((n, x), (_, y)) in a.named_tensors().unwrap().iter().zip(b.named_tensors().unwrap().iter()) {
        assert_eq!(x.to_f32_vec().unwrap(), y.to_f32_vec().unwrap(), "{n:?}");
    }
}

#[test]
fn losa_refuses_what_it_cannot_do() {
    use sparsetune::finetune::{prepare, Repair, RepairMethod, RepairOptions};
    use sparsetune::sparse::SparseFormat;
    let m = common::tiny_model(DType::F32, &Device::cpu(), 5);
    let data = TrainData::new(&[stream(m.config.vocab_size, 400)], 16).unwrap();
    let mut tc = TrainConfig::new(5);
    tc.seq_len = 16;
    let err = |opts: RepairOptions| match Repair::new(&m, RepairMethod::Losa, opts, tc.clone(), &data, &mut |_, _| {}) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    // A dense source with no target sparsity.
    let e = err(RepairOptions::new(LoraOptions::new(4, 8.0)));
    assert!(e.to_string().contains("target sparsity"), "{e}");
    // N:M bases.
    let mut opts = RepairOptions::new(LoraOptions::new(4, 8.0));
    opts.losa.target = Some(0.5);
    opts.lora.format = SparseFormat::NM { n: 2, m: 4 };
    assert!(err(opts).to_string().contains("N:M"));
    let mut opts = RepairOptions::new(LoraOptions::new(4, 8.0));
    opts.losa.target = Some(0.5);
    assert!(prepare(&m, RepairMethod::Losa, &opts, &data, &mut |_, _| {}).is_err());
}

/// A checkpoint whose LoSA stage ranks no allocation could give (10⁹, 2⁴⁰, 2⁶⁴ − 1, 0),
/// checksum and all in order, is refused on resume before any adapter is sized by them.
#[test]
fn losa_checkpoint_with_absurd_ranks_is_refused() {
    let (_, data) = losa_repair(6);
    let dir = common::scratch("losa-ranks");
    for rank in [1_000_000_000usize, 1 << 40, usize::MAX, 0] {
        let (mut first, _) = losa_repair(6);
        first.step(&data).unwrap();
        let stage = first.losa.as_mut().unwrap().stages.last_mut().unwrap();
        stage.ranks = vec![rank; stage.ranks.len()];
        let path = dir.join("ck.safetensors");
        first.save(&path).unwrap();
        let (mut second, _) = losa_repair(6);
        let e = second.resume(&path).unwrap_err().to_string();
        assert!(e.contains(&format!("rank {rank}")) && e.contains("outside"), "{rank}: {e}");
    }
    common::remove_scratch(&dir);
}

/// Issue 22: a checkpoint records what it was made from and refuses, by name, a resume
/// from anything else; one that records nothing (saved without it, or format version 1)
/// still loads but is refused by the check; an unknown version is refused at load.
#[test]
fn checkpoints_record_what_they_were_made_from() {
    use sparsetune::finetune::checkpoint;
    use sparsetune::io::outputs::{DataFile, Provenance};
    use sparsetune::io::{write_owned, OwnedEntry, SafetensorsFile};
    let dir = common::scratch("provenance");
    let (t, _) = trainer(4, 1, 1);
    let made =
        Provenance::new("m1".into(), vec![DataFile { path: "a.txt".into(), hash: "d1".into() }]).arg("--rank", 4);
    let path = dir.join("with.safetensors");
    checkpoint::save(&path, &t, "masked-lora", Some(&made), serde_json::json!({}), &[]).unwrap();
    let ck = checkpoint::load(&path).unwrap();
    assert_eq!(ck.meta.version, 2);
    ck.check_provenance(&made, "--model", "--data").unwrap();
    let other = Provenance { model: "m2".into(), ..made.clone() }.arg("--rank", 8);
    let e = ck.check_provenance(&other, "--model", "--data").unwrap_err().to_string();
    assert!(e.contains("--model: another model") && e.contains("--rank: 4 then, 8 now"), "{e}");

    let none = dir.join("none.safetensors");
    checkpoint::save(&none, &t, "masked-lora", None, serde_json::json!({}), &[]).unwrap();
    let e = checkpoint::load(&none).unwrap().check_provenance(&made, "--model", "--data").unwrap_err().to_string();
    assert!(e.contains("does not record what it was made from"), "{e}");
    // The same file as format version 1 wrote it, and as an unknown version 3.
    let rewrite = |version: u64| {
        let st = SafetensorsFile::open(&none).unwrap();
        let mut md = st.metadata().clone();
        let mut meta: serde_json::Value = serde_json::from_str(&md["sparsetune.checkpoint"]).unwrap();
        meta["version"] = version.into();
        meta.as_object_mut().unwrap().remove("provenance");
        md.insert("sparsetune.checkpoint".into(), meta.to_string());
        let blobs: Vec<OwnedEntry> = st
            .names()
            .into_iter()
            .map(|n| {
                let (dtype, shape) = st.info(n).unwrap();
                OwnedEntry { name: n.to_string(), dtype, shape, data: st.tensor_bytes(n).unwrap().to_vec() }
            })
            .collect();
        let out = dir.join(format!("v{version}.safetensors"));
        write_owned(&out, &blobs, &md).unwrap();
        checkpoint::reseal(&out).unwrap();
        out
    };
    let v1 = checkpoint::load(&rewrite(1)).unwrap();
    assert!(v1.meta.provenance.is_none());
    let e = v1.check_provenance(&made, "--model", "--data").unwrap_err().to_string();
    assert!(e.contains("format version 1"), "{e}");
    let e = checkpoint::load(&rewrite(3)).unwrap_err().to_string();
    assert!(e.contains("format version 3"), "{e}");
    common::remove_scratch(&dir);
}
