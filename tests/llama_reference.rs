//! The real default model (SmolLM2-135M-Instruct, GGUF Q4_1) against the published
//! reference figures in shared/ASSETS.md (Hugging Face transformers, float32, weights
//! dequantised from the same GGUF). Skips when the assets are absent, unless
//! SPARSETUNE_REQUIRE_ASSETS=1 (CI).

use std::sync::OnceLock;

use sparsetune::data::{tokenize_file, windows_of_streams};
use sparsetune::eval::perplexity;
use sparsetune::io::{asset_path, Tokenizer};
use sparsetune::model::llama::{self, Llama};
use sparsetune::{DType, Device};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const OBAMA: &str = "sotu/2009_barack_obama_d.txt";

fn model() -> Option<&'static (Llama, Tokenizer)> {
    static M: OnceLock<Option<(Llama, Tokenizer)>> = OnceLock::new();
    M.get_or_init(|| {
        let path = asset_path(MODEL)?;
        let tok = llama::load_tokenizer(&path).expect("tokenizer");
        let model = llama::load(&path, &Device::cpu(), DType::F32).expect("model");
        Some((model, tok))
    })
    .as_ref()
}

fn obama_ppl(seq_len: usize, windows: usize) -> Option<f64> {
    let (model, tok) = model()?;
    let text = asset_path(OBAMA)?;
    let ids = tokenize_file(tok, &text, "text").expect("tokenize");
    let streams = vec![ids];
    let w = windows_of_streams(&streams, seq_len, Some(windows)).expect("windows");
    let engine = sparsetune::infer::InferModel::new(model.clone(), sparsetune::infer::SparseMode::Off).unwrap();
    Some(perplexity(&engine, &w, |_, _| {}).expect("perplexity").perplexity)
}

#[test]
fn tokenizer_matches_reference_ids() {
    let Some((_, tok)) = model() else { return };
    let Some(text) = asset_path(OBAMA) else { return };
    let ids = tokenize_file(tok, &text, "text").unwrap();
    assert_eq!(ids.len(), 7056);
    assert_eq!(&ids[..10], &[24405, 332, 32436, 28, 4994, 30, 20605, 4267, 28, 16647]);
}

#[test]
fn config_is_smollm2_135m() {
    let Some((m, _)) = model() else { return };
    let c = &m.config;
    assert_eq!((c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads), (576, 30, 9, 3));
    assert_eq!((c.intermediate_size, c.vocab_size, c.head_dim()), (1536, 49152, 64));
    assert!(c.tie_word_embeddings && m.lm_head.is_none());
    assert_eq!(c.rope_theta, 100000.0);
}

/// ASSETS.md: first 512 tokens as one sequence → perplexity 21.81 (the issue asks ±0.02).
#[test]
fn perplexity_first_window_512_is_21_81() {
    let Some(ppl) = obama_ppl(512, 1) else { return };
    println!("perplexity, 1 window of 512: {ppl:.4}");
    assert!((ppl - 21.81).abs() <= 0.02, "perplexity {ppl:.4}, reference 21.81 ± 0.02");
}

/// ASSETS.md: 8 non-overlapping windows of 512 → 22.58; 8 windows of 256 → 25.49.
/// A correct implementation lands within 0.1% (±0.023 and ±0.025).
#[test]
fn perplexity_eight_windows_match_reference() {
    let Some(ppl512) = obama_ppl(512, 8) else { return };
    let Some(ppl256) = obama_ppl(256, 8) else { return };
    println!("perplexity, 8 windows of 512: {ppl512:.4}; of 256: {ppl256:.4}");
    assert!((ppl512 - 22.58).abs() <= 0.023, "perplexity {ppl512:.4}, reference 22.58 ± 0.1%");
    assert!((ppl256 - 25.49).abs() <= 0.025, "perplexity {ppl256:.4}, reference 25.49 ± 0.1%");
}

#[test]
fn greedy_generation_is_coherent() {
    let Some((m, tok)) = model() else { return };
    let prompt = tok.encode("The capital of France is").unwrap();
    let engine = sparsetune::infer::InferModel::new(m.clone(), sparsetune::infer::SparseMode::Off).unwrap();
    let stop: Vec<u32> = tok.eos_token_id().into_iter().collect();
    let opts = sparsetune::infer::GenerateOptions { max_new: 6, stop };
    let greedy = |_: usize, l: &[f32]| sparsetune::infer::sample::argmax(l);
    let out = engine.generate(&[prompt], &opts, greedy, |_, _| Ok(())).unwrap().tokens.remove(0);
    let text = tok.decode(&out).unwrap();
    println!("generated: {text:?}");
    assert!(text.contains("Paris"), "greedy continuation {text:?} does not name Paris");
}
