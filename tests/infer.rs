//! The inference engine (src/infer) against the training forward: greedy decoding with the
//! KV cache gives the tokens of a full forward per step (and its logits within tolerance);
//! a batch of prompts of different lengths gives what each prompt gives alone; the sparse
//! kernels (bitmask, 2:4, 4:8) give the dense path's logits on the same pruned weights;
//! `--sparse auto` compresses exactly the pruned linears; two models run in turns of decode
//! steps give what each gives alone; bad requests are errors.

use sparsetune::infer::{Finish, GenerateOptions, InferModel, SparseMode};
use sparsetune::model::llama::{ForwardOptions, Llama, LlamaConfig};
use sparsetune::prune::select::Pattern;
use sparsetune::testing::{assert_close, awkward_llama, magnitude_pruned};
use sparsetune::{DType, Device, Result, Tensor};

fn tiny(config: &LlamaConfig, dtype: DType, seed: u64) -> Llama {
    Llama::random(config, dtype, &Device::cpu(), seed).unwrap()
}

fn argmax(logits: &[f32]) -> u32 {
    sparsetune::infer::sample::argmax(logits).unwrap()
}

/// Greedy generation by the engine, with the logits each token was picked from.
fn greedy(engine: &InferModel, prompts: &[Vec<u32>], max_new: usize) -> (Vec<Vec<u32>>, Vec<Vec<Vec<f32>>>) {
    let mut seen = vec![Vec::new(); prompts.len()];
    let opts = GenerateOptions { max_new, stop: vec![] };
    let gen = engine
        .generate(
            prompts,
            &opts,
            |s, logits| {
                seen[s].push(logits.to_vec());
                Ok(argmax(logits))
            },
            |_, _| Ok(()),
        )
        .unwrap();
    (gen.tokens, seen)
}

/// The last position's logits of a full forward of `tokens`.
fn full_forward_last(model: &Llama, tokens: &[u32]) -> Vec<f32> {
    let ids = Tensor::from_vec(tokens.to_vec(), [1, tokens.len()], &Device::cpu()).unwrap();
    let logits = model.forward(None, &ids, ForwardOptions::default()).unwrap().to_f32_vec().unwrap();
    logits[(tokens.len() - 1) * model.config.vocab_size..].to_vec()
}

#[test]
fn greedy_with_the_kv_cache_equals_a_full_forward_per_step() {
    for config in [LlamaConfig::tiny(), awkward_llama()] {
        let model = tiny(&config, DType::F32, 7);
        let engine = InferModel::new(model.clone(), SparseMode::Off).unwrap();
        let prompt = vec![3u32, 17, 5, 9, 22];
        let (tokens, logits) = greedy(&engine, std::slice::from_ref(&prompt), 20);
        let mut context = prompt.clone();
        for (step, (&token, got)) in tokens[0].iter().zip(&logits[0]).enumerate() {
            let want = full_forward_last(&model, &context);
            assert_close(&format!("step {step} logits"), got, &want, 1e-5, 1e-4);
            assert_eq!(token, argmax(&want), "step {step}: the engine's token is not the full forward's");
            context.push(token);
        }
        assert_eq!(tokens[0].len(), 20);
    }
}

#[test]
fn a_batch_of_prompts_of_different_lengths_gives_what_each_gives_alone() {
    let model = tiny(&awkward_llama(), DType::F32, 11);
    let engine = InferModel::new(model, SparseMode::Off).unwrap();
    let prompts = vec![vec![1u32, 2, 3], vec![40u32, 8, 8, 15, 16, 23, 42, 4, 9], vec![5u32]];
    let (batch_tokens, batch_logits) = greedy(&engine, &prompts, 9);
    for (s, prompt) in prompts.iter().enumerate() {
        let (tokens, logits) = greedy(&engine, std::slice::from_ref(prompt), 9);
        assert_eq!(batch_tokens[s], tokens[0], "sequence {s}");
        for (step, (b, a)) in batch_logits[s].iter().zip(&logits[0]).enumerate() {
            assert_close(&format!("sequence {s} step {step}"), b, a, 1e-6, 1e-5);
        }
    }
}

/// `model` with the linears of `layers` magnitude-pruned by `p`.
fn pruned(model: &Llama, layers: &[usize], p: Pattern) -> Llama {
    magnitude_pruned(model, layers, p).unwrap()
}

/// Prefill of a 7-token prompt and 8 greedy steps, sparse kernels vs dense, same weights.
fn sparse_matches_dense(model: &Llama, want_formats: &[&str], atol: f64, rtol: f64) {
    let dense = InferModel::new(model.clone(), SparseMode::Off).unwrap();
    let sparse = InferModel::new(model.clone(), SparseMode::On).unwrap();
    let formats: Vec<&str> = sparse.choices.iter().map(|c| c.format.as_str()).collect();
    for f in want_formats {
        assert!(formats.contains(f), "no {f} linear among {formats:?}");
    }
    assert!(dense.choices.iter().all(|c| c.format == "dense"));
    let prompt = vec![vec![2u32, 30, 11, 7, 7, 50, 1]];
    let (dense_tokens, dense_logits) = greedy(&dense, &prompt, 8);
    let (sparse_tokens, sparse_logits) = greedy(&sparse, &prompt, 8);
    for (step, (s, d)) in sparse_logits[0].iter().zip(&dense_logits[0]).enumerate() {
        assert_close(&format!("{want_formats:?} step {step}"), s, d, atol, rtol);
    }
    assert_eq!(sparse_tokens, dense_tokens);
}

#[test]
fn sparse_kernels_give_the_dense_logits_on_the_same_pruned_weights() {
    for (dtype, atol, rtol) in [(DType::F32, 1e-5, 1e-4), (DType::BF16, 1e-2, 1e-2)] {
        // Bitmask at uneven sparsity (layer 0 ~50%, layer 1 ~70%, layer 2 dense but stored
        // as a bitmask keeping everything), awkward widths.
        let base = tiny(&awkward_llama(), dtype, 3);
        let m = pruned(&pruned(&base, &[0], Pattern::Unstructured(0.5)), &[1], Pattern::Unstructured(0.7));
        sparse_matches_dense(&m, &["bitmask"], atol, rtol);
        // 2:4 and 4:8 on widths that allow them.
        let base = tiny(&LlamaConfig::tiny(), dtype, 5);
        sparse_matches_dense(&pruned(&base, &[0, 1], Pattern::NM { n: 2, m: 4 }), &["2:4"], atol, rtol);
        sparse_matches_dense(&pruned(&base, &[0, 1], Pattern::NM { n: 4, m: 8 }), &["4:8"], atol, rtol);
    }
}

#[test]
fn auto_compresses_the_pruned_linears_and_only_those() {
    let base = tiny(&awkward_llama(), DType::F32, 9);
    let model = pruned(&pruned(&base, &[0], Pattern::Unstructured(0.5)), &[2], Pattern::Unstructured(0.1));
    let engine = InferModel::new(model, SparseMode::Auto).unwrap();
    for c in &engine.choices {
        let want = if c.layer == 0 { "bitmask" } else { "dense" };
        assert_eq!(c.format, want, "layer {} {}: sparsity {:.3}", c.layer, c.proj, c.sparsity);
    }
    let n = engine.choices.iter().filter(|c| c.layer == 0).map(|c| c.sparsity).fold(0.0, f64::max);
    assert!((0.45..=0.55).contains(&n), "layer 0 sparsity {n}");
    let dense_bytes = InferModel::new(base, SparseMode::Off).unwrap().weight_bytes_per_token();
    assert!(engine.weight_bytes_per_token() < dense_bytes);
}

#[test]
fn a_stop_id_ends_its_sequence_only() {
    let engine = InferModel::new(tiny(&awkward_llama(), DType::F32, 13), SparseMode::Off).unwrap();
    let prompts = vec![vec![4u32, 5, 6], vec![30u32, 31]];
    let (free, _) = greedy(&engine, &prompts, 6);
    // Stop at the third token of sequence 0 (unless it appears earlier in either).
    let stop = free[0][2];
    let opts = GenerateOptions { max_new: 6, stop: vec![stop] };
    let gen = engine.generate(&prompts, &opts, |_, l| Ok(argmax(l)), |_, _| Ok(())).unwrap();
    for (s, free) in free.iter().enumerate() {
        match free.iter().position(|&t| t == stop) {
            Some(at) => {
                assert_eq!(gen.tokens[s], free[..=at], "sequence {s}");
                assert_eq!(gen.finish[s], Finish::Stop);
            }
            None => {
                assert_eq!(&gen.tokens[s], free, "sequence {s}");
                assert_eq!(gen.finish[s], Finish::Length);
            }
        }
    }
}

#[test]
fn generation_stops_at_the_context_and_refuses_what_cannot_run() {
    let engine = InferModel::new(tiny(&LlamaConfig::tiny(), DType::F32, 17), SparseMode::Off).unwrap();
    let context = engine.context();
    assert_eq!(context, 64);
    let run = |prompt: Vec<u32>, max_new: usize| -> Result<sparsetune::infer::Generation> {
        engine.generate(&[prompt], &GenerateOptions { max_new, stop: vec![] }, |_, l| Ok(argmax(l)), |_, _| Ok(()))
    };
    let gen = run(vec![1; 60], 10).unwrap();
    // 60 prompt positions, then 4 decode steps fill the cache to 64; the 5th token is not fed.
    assert_eq!((gen.tokens[0].len(), gen.finish[0]), (5, Finish::Context));
    assert!(run(vec![1; 64], 1).unwrap_err().to_string().contains("no room"));
    assert!(run(vec![1; 3], 0).unwrap_err().to_string().contains("--max-new"));
    assert!(run(vec![], 3).unwrap_err().to_string().contains("empty"));
    assert!(run(vec![99], 3).is_err(), "an id outside the vocabulary");
}

#[test]
fn the_kv_cache_holds_every_layer_once() {
    let config = awkward_llama();
    let engine = InferModel::new(tiny(&config, DType::BF16, 1), SparseMode::Off).unwrap();
    let cache = engine.new_cache(3, 20).unwrap();
    let per_position = config.num_key_value_heads * config.head_dim() * 2; // bf16
    assert_eq!(cache.bytes(), 2 * config.num_hidden_layers * 3 * 20 * per_position);
    let beyond = config.max_position_embeddings + 1;
    assert!(engine.new_cache(1, beyond).unwrap_err().to_string().contains("context"));
}

/// Two models in turns of decode steps each give the tokens they give alone (a dense model
/// and a pruned one run compressed, so their tokens differ), with the stop reasons and
/// counts of `generate`, whatever the turn's length; a turn of 0 steps is refused.
#[test]
fn two_models_in_turns_give_what_each_gives_alone() {
    let base = tiny(&awkward_llama(), DType::F32, 11);
    let sparse = pruned(&base, &[0, 1, 2], Pattern::Unstructured(0.7));
    let (a, b) = (InferModel::new(base, SparseMode::Off).unwrap(), InferModel::new(sparse, SparseMode::Auto).unwrap());
    let prompt = vec![7u32, 1, 30, 2];
    let (alone_a, _) = greedy(&a, std::slice::from_ref(&prompt), 11);
    let (alone_b, _) = greedy(&b, std::slice::from_ref(&prompt), 11);
    assert_ne!(alone_a, alone_b, "the pruned model should decode other tokens");
    let opts = GenerateOptions { max_new: 11, stop: vec![] };
    for turn in [1, 3, 11, 50] {
        let [ga, gb] = a.generate_in_turns(&b, &prompt, &opts, turn).unwrap();
        for (name, g, alone) in [("dense", &ga, &alone_a), ("pruned", &gb, &alone_b)] {
            assert_eq!(&g.tokens, alone, "{name}, turns of {turn}");
            assert_eq!(g.finish, vec![Finish::Length], "{name}, turns of {turn}");
            assert_eq!((g.prefill_tokens, g.decode_tokens), (4, 10), "{name}, turns of {turn}");
            assert!(g.prefill_seconds > 0.0 && g.decode_seconds > 0.0, "{name}: times {g:?}");
        }
    }
    // A stop id ends one model's generation; the other goes on to max_new.
    let at = alone_a[0].iter().position(|t| !alone_b[0].contains(t)).expect("a token only the dense model decodes");
    let stop_opts = GenerateOptions { max_new: 11, stop: vec![alone_a[0][at]] };
    let [ga, gb] = a.generate_in_turns(&b, &prompt, &stop_opts, 2).unwrap();
    assert_eq!((ga.tokens[0].as_slice(), ga.finish[0]), (&alone_a[0][..=at], Finish::Stop));
    assert_eq!((&gb.tokens, gb.finish[0]), (&alone_b, Finish::Length));
    assert!(a.generate_in_turns(&b, &prompt, &opts, 0).unwrap_err().to_string().contains("turn"));
    assert!(a.generate_in_turns(&b, &[], &opts, 4).unwrap_err().to_string().contains("empty"));
}
