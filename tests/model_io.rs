//! Saving and loading models: our safetensors writer round-trips a tiny random LLaMA
//! bit-exactly (f32, and bf16 values exactly representable), GGUF loading un-permutes
//! Q/K rows correctly (a GGUF written with llama.cpp's permutation gives the same logits),
//! and bad files give clear errors, never panics.

mod common;

use std::collections::BTreeMap;

use sparsetune::io::{GgmlType, GgufWriter};
use sparsetune::model::llama::{self, load::unpermute_rows, ForwardOptions, Llama, LlamaConfig, Part, Proj};
use sparsetune::{DType, Device, Error};

fn logits(m: &Llama) -> Vec<f32> {
    let (ids, _) = common::tokens(1, 9, m.config.vocab_size, m.device());
    m.forward(None, &ids, ForwardOptions::default()).unwrap().to_f32_vec().unwrap()
}

#[test]
fn safetensors_round_trip_is_bit_exact() {
    let dev = Device::cpu();
    let dir = common::scratch("roundtrip");
    for dtype in [DType::F32, DType::BF16] {
        let m = common::tiny_model(dtype, &dev, 3);
        let path = dir.join(format!("tiny-{dtype}.safetensors"));
        llama::save_safetensors(&m, &path, dtype, None, &BTreeMap::new()).unwrap();
        let back = llama::load(&path, &dev, dtype).unwrap();
        assert_eq!(back.config, m.config);
        for ((pa, a), (pb, b)) in m.named_tensors().unwrap().into_iter().zip(back.named_tensors().unwrap()) {
            assert_eq!(pa, pb);
            let (va, vb) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
            assert!(va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{pa:?} changed in the round trip");
        }
        assert_eq!(logits(&m), logits(&back));
    }
    common::remove_scratch(&dir);
}

/// llama.cpp's HF→GGUF permutation of Q/K rows (the inverse of our `unpermute_rows`).
fn permute_rows(data: &[f32], heads: usize, hd: usize, cols: usize) -> Vec<f32> {
    let half = hd / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for c in 0..2 {
                let hf = (h * hd + c * half + i) * cols;
                let gg = (h * hd + 2 * i + c) * cols;
                out[gg..gg + cols].copy_from_slice(&data[hf..hf + cols]);
            }
        }
    }
    out
}

fn write_gguf(m: &Llama, path: &std::path::Path, skip: Option<&str>, corrupt_type: Option<&str>) {
    gguf_writer(m, skip, corrupt_type).write(path).unwrap();
}

fn gguf_writer(m: &Llama, skip: Option<&str>, corrupt_type: Option<&str>) -> GgufWriter {
    let c = &m.config;
    let mut w = GgufWriter::new();
    common::add_gguf_llama_metadata(&mut w, c);
    for (part, t) in m.named_tensors().unwrap() {
        let name = part.gguf_name();
        if Some(name.as_str()) == skip {
            continue;
        }
        let mut data = t.to_f32_vec().unwrap();
        let hd = c.head_dim();
        match part {
            Part::Linear(_, Proj::Q) => data = permute_rows(&data, c.num_attention_heads, hd, c.hidden_size),
            Part::Linear(_, Proj::K) => data = permute_rows(&data, c.num_key_value_heads, hd, c.hidden_size),
            _ => {}
        }
        if Some(name.as_str()) == corrupt_type {
            w.add_tensor_raw(&name, t.dims(), GgmlType::Other(99), bytemuck::cast_slice(&data).to_vec()).unwrap();
        } else {
            w.add_tensor_f32(&name, t.dims(), &data).unwrap();
        }
    }
    w
}

/// A GGUF `rope_freqs.weight` (llama.cpp's frequency factors, as LLaMA-3.1 files carry)
/// divides the inverse frequencies: the model equals one whose config has those factors,
/// and differs from one without.
#[test]
fn gguf_rope_freqs_scale_the_frequencies() {
    use sparsetune::model::llama::RopeScaling;
    let dev = Device::cpu();
    let m = common::tiny_model(DType::F32, &dev, 4);
    let half = m.config.head_dim() / 2;
    let factors: Vec<f32> = (0..half).map(|i| 1.0 + 3.0 * i as f32).collect();
    let mut w = gguf_writer(&m, None, None);
    w.add_tensor_f32("rope_freqs.weight", &[half], &factors).unwrap();
    let path = common::scratch("gguf-rope-freqs").join("freqs.gguf");
    w.write(&path).unwrap();
    let g = llama::load(&path, &dev, DType::F32).unwrap();
    assert_eq!(g.config.rope_scaling, RopeScaling::FreqFactors(factors.clone()));
    let mut want = m.clone();
    want.config.rope_scaling = RopeScaling::FreqFactors(factors);
    assert_eq!(logits(&g), logits(&want));
    assert_ne!(logits(&g), logits(&m));
    // A config.json cannot say this: exporting it to HF form is refused by name.
    let e = g.config.to_hf_json(DType::F32).unwrap_err().to_string();
    assert!(e.contains("rope_freqs"), "{e}");
}

#[test]
fn gguf_q_k_rows_are_unpermuted() {
    let dev = Device::cpu();
    let m = common::tiny_model(DType::F32, &dev, 4);
    let path = common::scratch("gguf").join("tiny.gguf");
    write_gguf(&m, &path, None, None);
    let g = llama::load(&path, &dev, DType::F32).unwrap();
    assert_eq!(logits(&g), logits(&m), "GGUF-loaded model differs from the HF-layout one");
    let rows = unpermute_rows(&permute_rows(&(0..48).map(|v| v as f32).collect::<Vec<_>>(), 2, 6, 4), 2, 6, 4);
    assert_eq!(rows, (0..48).map(|v| v as f32).collect::<Vec<_>>());
}

#[test]
fn bad_model_files_are_clear_errors() {
    let dev = Device::cpu();
    let m = common::tiny_model(DType::F32, &dev, 6);
    let dir = common::scratch("bad");

    // Missing tensor.
    let p = dir.join("missing.gguf");
    write_gguf(&m, &p, Some("blk.1.ffn_up.weight"), None);
    let e = llama::load(&p, &dev, DType::F32).unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }) && e.to_string().contains("blk.1.ffn_up.weight"), "{e}");

    // Unknown quantisation type.
    let p = dir.join("unknown-quant.gguf");
    write_gguf(&m, &p, None, Some("blk.0.attn_v.weight"));
    let e = llama::load(&p, &dev, DType::F32).unwrap_err();
    assert!(matches!(e, Error::UnsupportedQuant { .. }), "{e}");

    // Truncated and corrupted files: every prefix of a GGUF and of a safetensors errors.
    let good = dir.join("good.gguf");
    write_gguf(&m, &good, None, None);
    let st = dir.join("good.safetensors");
    llama::save_safetensors(&m, &st, DType::F32, None, &BTreeMap::new()).unwrap();
    for src in [&good, &st] {
        let bytes = std::fs::read(src).unwrap();
        let cut = dir.join("cut.bin");
        for len in [0, 3, 8, 16, 40, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&cut, &bytes[..len]).unwrap();
            assert!(llama::load(&cut, &dev, DType::F32).is_err(), "{} truncated to {len} bytes loaded", src.display());
        }
        let mut flipped = bytes.clone();
        for b in flipped.iter_mut().skip(8).take(64) {
            *b ^= 0x5A;
        }
        std::fs::write(&cut, &flipped).unwrap();
        assert!(llama::load(&cut, &dev, DType::F32).is_err(), "{} with a corrupted header loaded", src.display());
    }

    // Shape mismatch: a file whose config says a wider model than its tensors.
    let mut wide = m.config.clone();
    wide.intermediate_size += 8;
    let mut meta = BTreeMap::new();
    meta.insert("sparsetune.config".to_string(), wide.to_hf_json(DType::F32).unwrap());
    let p = dir.join("shape.safetensors");
    llama::save_safetensors(&m, &p, DType::F32, None, &BTreeMap::new()).unwrap();
    let raw = sparsetune::io::SafetensorsFile::open(&p).unwrap();
    let names = raw.names().iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let blobs: Vec<(String, Vec<usize>, Vec<u8>)> =
        names.iter().map(|n| (n.clone(), raw.info(n).unwrap().1, raw.tensor_bytes(n).unwrap().to_vec())).collect();
    let p2 = dir.join("shape2.safetensors");
    common::write_f32_safetensors(&p2, &blobs, &meta);
    let e = llama::load(&p2, &dev, DType::F32).unwrap_err();
    let gate = Proj::Gate.hf_name(0);
    assert!(matches!(e, Error::Format { .. }), "{e}");
    assert!(e.to_string().contains(&gate) && e.to_string().contains("shape2.safetensors"), "{e}");

    // Not a LLaMA.
    let e = LlamaConfig::from_hf_json(r#"{"model_type":"gpt2","vocab_size":1,"hidden_size":4,"intermediate_size":4,"num_hidden_layers":1,"num_attention_heads":1}"#, "config.json").unwrap_err();
    assert!(e.to_string().contains("'model_type' = \"gpt2\""), "{e}");
}

/// A Hugging Face style directory: model.safetensors without our metadata, config.json
/// and tokenizer.json beside it.
#[test]
fn hf_directory_with_config_and_tokenizer_json_loads() {
    let dev = Device::cpu();
    let m = common::tiny_model(DType::F32, &dev, 8);
    let dir = common::scratch("hfdir");
    let blobs = common::hf_blobs(&m);
    common::write_f32_safetensors(&dir.join("model.safetensors"), &blobs, &BTreeMap::new());
    assert!(llama::load(&dir, &dev, DType::F32).unwrap_err().to_string().contains("config.json"));
    std::fs::write(dir.join("config.json"), m.config.to_hf_json(DType::F32).unwrap()).unwrap();
    let back = llama::load(&dir, &dev, DType::F32).unwrap();
    assert_eq!(logits(&back), logits(&m));
    assert!(llama::load_tokenizer(&dir).is_err(), "no tokenizer anywhere is an error");
    let vocab: Vec<String> = (0..m.config.vocab_size).map(|i| format!("t{i}")).collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect::<serde_json::Map<_, _>>(), "unk_token": "t0"}
    });
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let tok = llama::load_tokenizer(&dir).unwrap();
    assert_eq!(tok.encode("t5 t7").unwrap(), vec![5, 7]);
    common::remove_scratch(&dir);
}

#[test]
fn sparse_bitmask_export_round_trips_bit_exactly() {
    use sparsetune::prune::{prune_model, Method, Pattern, PruneOptions};
    let dev = Device::cpu();
    let mut m = common::tiny_model(DType::F32, &dev, 21);
    prune_model(&mut m, &[], &PruneOptions::new(Method::Magnitude, Pattern::Unstructured(0.6)), &mut |_| {}).unwrap();
    let dir = common::scratch("bitmask-export");
    let (dense_path, sparse_path) = (dir.join("dense.safetensors"), dir.join("sparse.safetensors"));
    llama::save_safetensors(&m, &dense_path, DType::F32, None, &BTreeMap::new()).unwrap();
    llama::save_safetensors_as(
        &m,
        &sparse_path,
        DType::F32,
        llama::WeightLayout::SparseBitmask,
        None,
        &BTreeMap::new(),
    )
    .unwrap();
    let back = llama::load(&sparse_path, &dev, DType::F32).unwrap();
    for ((p, a), (_, b)) in m.named_tensors().unwrap().into_iter().zip(back.named_tensors().unwrap()) {
        assert_eq!(a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap(), "{p:?} differs after the round trip");
    }
    let (dense_len, sparse_len) =
        (std::fs::metadata(&dense_path).unwrap().len(), std::fs::metadata(&sparse_path).unwrap().len());
    assert!(sparse_len < dense_len, "compressed file {sparse_len} bytes vs dense {dense_len}");
    // The compressed-tensors names are there, with the documented shapes.
    let st = sparsetune::io::SafetensorsFile::open(&sparse_path).unwrap();
    let w = Proj::Gate.hf_name(1);
    let (rows, cols) = (m.config.intermediate_size, m.config.hidden_size);
    assert_eq!(st.info(&format!("{w}.bitmask")), Some((DType::U8, vec![rows, cols.div_ceil(8)])));
    assert_eq!(st.info(&format!("{w}.row_offsets")), Some((DType::U32, vec![rows])));
    assert!(st.info(&w).is_none());
    // A row offset that disagrees with the bitmask is refused.
    let mut bytes = std::fs::read(&sparse_path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let begin = header[format!("{w}.row_offsets")]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + header_len + begin + 4; // row 1's offset
    bytes[at] ^= 1;
    let bad = dir.join("bad-offsets.safetensors");
    std::fs::write(&bad, &bytes).unwrap();
    let e = llama::load(&bad, &dev, DType::F32).unwrap_err().to_string();
    assert!(e.contains("row 1 starts at value"), "{e}");
    common::remove_scratch(&dir);
}

/// Counts and shapes a file only claims are checked against what it holds before anything
/// is sized by them (issue 15's table): a GGUF `llama.block_count` or an embedded
/// `num_hidden_layers` far beyond the layers present, a compressed weight whose claimed
/// shape is not the config's. Each is a clean error naming the key, never a panic or a
/// multi-gigabyte allocation.
#[test]
fn counts_and_shapes_the_file_cannot_back_are_refused() {
    use sparsetune::io::GgufValue;
    let dev = Device::cpu();
    let m = common::tiny_model(DType::F32, &dev, 6);
    let dir = common::scratch("hostile-counts");
    for count in [1u64 << 62, u64::MAX, (1 << 31) - 1, 1 << 40, 3] {
        let mut w = gguf_writer(&m, None, None);
        w.add_metadata("llama.block_count", GgufValue::U64(count));
        let p = dir.join("count.gguf");
        w.write(&p).unwrap();
        let e = llama::load(&p, &dev, DType::F32).unwrap_err().to_string();
        assert!(e.contains("llama.block_count") && e.contains(&count.to_string()), "{count}: {e}");
    }
    for count in [1u64 << 63, 1_000_000_000, 1 << 40, 3] {
        let mut cfg: serde_json::Value = serde_json::from_str(&m.config.to_hf_json(DType::F32).unwrap()).unwrap();
        cfg["num_hidden_layers"] = count.into();
        let meta = BTreeMap::from([("sparsetune.config".to_string(), cfg.to_string())]);
        let p = dir.join("layers.safetensors");
        let blobs = common::hf_blobs(&m);
        common::write_f32_safetensors(&p, &blobs, &meta);
        let e = llama::load(&p, &dev, DType::F32).unwrap_err().to_string();
        assert!(e.contains("num_hidden_layers") && e.contains(&count.to_string()), "{count}: {e}");
    }
    // A compressed weight claiming [1, 2^32 − 1] over a tiny file.
    let mut pruned = m.clone();
    use sparsetune::prune::{prune_model, Method, Pattern, PruneOptions};
    prune_model(&mut pruned, &[], &PruneOptions::new(Method::Magnitude, Pattern::Unstructured(0.5)), &mut |_| {})
        .unwrap();
    let good = dir.join("sparse.safetensors");
    llama::save_safetensors_as(&pruned, &good, DType::F32, llama::WeightLayout::SparseBitmask, None, &BTreeMap::new())
        .unwrap();
    let name = format!("{}.shape", Proj::Q.hf_name(0));
    let mut bytes = std::fs::read(&good).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let begin = 8 + header_len + header[&name]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[begin..begin + 8].copy_from_slice(&[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    let bad = dir.join("claimed-shape.safetensors");
    std::fs::write(&bad, &bytes).unwrap();
    let e = llama::load(&bad, &dev, DType::F32).unwrap_err().to_string();
    assert!(e.contains("[1, 4294967295]") && e.contains("config"), "{e}");
    common::remove_scratch(&dir);
}
