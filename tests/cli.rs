//! The `sparsetune` binary: `eval --json` on the real model reproduces the reference
//! perplexity, and bad input (empty text, seq-len larger than the text, a missing or
//! corrupt model) fails with a clear message and exit code 1, never a panic; `generate
//! --json` reports tokens and speeds, repeats its draw for a seed, and refuses bad flags,
//! a missing chat template and a prompt beyond the context by name; `bench step` reports
//! throughput and peak next to the plan, on the CPU and with `--device cuda` on the CPU
//! driver (the GPU script's command, run here before a GPU is lent).

mod common;

use common::sparsetune;

use sparsetune::io::asset_path;
use sparsetune::{DType, Device};

#[test]
fn eval_json_reproduces_reference_perplexity() {
    let (Some(model), Some(text)) =
        (asset_path("SmolLM2-135M-Instruct.Q4_1.gguf"), asset_path("sotu/2009_barack_obama_d.txt"))
    else {
        return;
    };
    let (code, stdout, stderr) = sparsetune(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--seq-len",
        "512",
        "--windows",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "stderr: {stderr}");
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout}"));
    let ppl = v["perplexity"].as_f64().unwrap();
    assert!((ppl - 21.81).abs() <= 0.02, "perplexity {ppl}");
    assert_eq!(v["tokens_scored"].as_u64(), Some(511));
    assert_eq!(v["windows"].as_u64(), Some(1));
    assert!(v["seconds"].as_f64().unwrap() > 0.0 && v["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(v["text_tokens"][0].as_u64(), Some(7056));
}

#[test]
fn bad_input_is_a_clear_error() {
    let Some(model) = asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let dir = common::scratch("cli");
    let model = model.to_str().unwrap();

    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n").unwrap();
    let (code, _, err) = sparsetune(&["eval", "--model", model, "--text", empty.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("empty") && !err.contains("panicked"), "{err}");

    let short = dir.join("short.txt");
    std::fs::write(&short, "Only a few words here.").unwrap();
    let (code, _, err) = sparsetune(&["eval", "--model", model, "--text", short.to_str().unwrap(), "--seq-len", "512"]);
    assert_eq!(code, 1);
    assert!(err.contains("larger than the text") && !err.contains("panicked"), "{err}");

    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let (code, _, err) = sparsetune(&["eval", "--model", junk.to_str().unwrap(), "--text", short.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.lines().any(|l| l.starts_with("error:")) && !err.contains("panicked"), "{err}");

    let (code, _, err) = sparsetune(&["eval", "--model", model, "--text", short.to_str().unwrap(), "--device", "tpu"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown device"), "{err}");
}

#[test]
fn prune_rejects_bad_options_before_loading() {
    let Some(model) = asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let dir = common::scratch("cli-prune");
    let model = model.to_str().unwrap();
    let out = dir.join("out.safetensors");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--method", "wanda", "--sparsity", "1.2"], "[0, 1)"),
        (&["--method", "wanda", "--sparsity", "-0.1"], "[0, 1)"),
        (&["--method", "wanda", "--nm", "4:4"], "N < M"),
        (&["--method", "wanda", "--nm", "2:5"], "multiple of 5"),
        (&["--method", "foo", "--sparsity", "0.5"], "unknown pruning method"),
        (&["--method", "sparsegpt", "--sparsity", "0.5", "--dsnot"], "DSnoT"),
    ];
    for (args, want) in cases {
        let mut all = vec!["prune", "--model", model, "--out", out];
        all.extend_from_slice(args);
        let (code, _, err) = sparsetune(&all);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(want) && !err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!std::path::Path::new(out).exists());
}

#[test]
fn prune_rejects_a_model_that_is_not_llama() {
    let dir = common::scratch("cli-not-llama");
    let mut w = sparsetune::io::GgufWriter::new();
    w.add_str("general.architecture", "gpt2");
    w.add_u32("gpt2.embedding_length", 8);
    w.add_tensor_f32("token_embd.weight", &[4, 8], &[0.0; 32]).unwrap();
    let path = dir.join("gpt2.gguf");
    w.write(&path).unwrap();
    let text = dir.join("calib.txt");
    std::fs::write(&text, "some calibration text").unwrap();
    let out = dir.join("out.safetensors");
    let (code, _, err) = sparsetune(&[
        "prune",
        "--model",
        path.to_str().unwrap(),
        "--method",
        "wanda",
        "--sparsity",
        "0.5",
        "--calib",
        text.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not llama") && !err.contains("panicked"), "{err}");
}

/// Prune the real model (tiny calibration), fine-tune a few short steps with each method,
/// in one go and interrupted + resumed, dense and compressed; the outputs keep the zeros
/// exactly, agree bit for bit, and load in `eval`.
#[test]
fn finetune_real_model_keeps_zeros_and_resumes() {
    use sparsetune::io::SafetensorsFile;
    use sparsetune::model::llama::{self, Proj};
    let Some(model) = asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let dir = common::scratch("cli-finetune");
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (code, _, err) = sparsetune(&[
        "prune",
        "--model",
        model.to_str().unwrap(),
        "--method",
        "wanda",
        "--sparsity",
        "0.5",
        "--calib-samples",
        "2",
        "--calib-seq-len",
        "64",
        "--out",
        &p("pruned.safetensors"),
    ]);
    assert_eq!(code, 0, "{err}");
    // stderr is a pipe here: plain progress lines, per stage and per tenth of the layers.
    for line in
        ["opening ", "reading calibration text", "prune: started 0/30", "prune: at 3/30 (10%)", "prune: done 30/30"]
    {
        assert!(err.contains(line), "no '{line}' in the progress log:\n{err}");
    }
    let common_args = |method: &'static str, out: String, ck: String| -> Vec<String> {
        [
            "finetune",
            "--model",
            &p("pruned.safetensors"),
            "--method",
            method,
            "--steps",
            "4",
            "--seq-len",
            "32",
            "--rank",
            "4",
            "--init-samples",
            "2",
            "--save-every",
            "2",
            "--checkpoint-dir",
            &ck,
            "--out",
            &out,
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = sparsetune(&refs);
        assert_eq!(code, 0, "finetune {args:?}: {err}");
        out
    };
    let pruned = SafetensorsFile::open(p("pruned.safetensors")).unwrap();
    // LoSA (from the pruned model, to its own sparsity: all 4 steps in the last stage) with
    // a small calibration.
    let losa_args = ["--losa-calib-samples", "4", "--losa-cka-samples", "2"].map(String::from);
    let common_args = |method: &'static str, out: String, ck: String| -> Vec<String> {
        let mut v = common_args(method, out, ck);
        if method == "losa" {
            v.extend(losa_args.iter().cloned());
        }
        v
    };
    for method in ["masked-lora", "lors", "losa"] {
        let out = run(common_args(method, p(&format!("{method}.safetensors")), p(&format!("ck-{method}"))));
        let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert!(report["last_loss"].as_f64().unwrap().is_finite(), "{report}");
        // Interrupted after 2 steps, then resumed; and a compressed export.
        let mut first = common_args(method, p("unused.safetensors"), p(&format!("ck2-{method}")));
        first.extend(["--stop-after".to_string(), "2".to_string()]);
        run(first);
        let mut second = common_args(method, p(&format!("{method}-c.safetensors")), p(&format!("ck2-{method}")));
        second.extend(["--resume".to_string(), "--compressed".to_string()]);
        run(second);
        let straight = llama::load(&dir.join(format!("{method}.safetensors")), &Device::cpu(), DType::F32).unwrap();
        let resumed = llama::load(&dir.join(format!("{method}-c.safetensors")), &Device::cpu(), DType::F32).unwrap();
        let repaired = SafetensorsFile::open(p(&format!("{method}.safetensors"))).unwrap();
        for l in [0, 14, 29] {
            for proj in Proj::ALL {
                let name = proj.hf_name(l);
                let (before, after) = (pruned.tensor_f32(&name).unwrap(), repaired.tensor_f32(&name).unwrap());
                let moved_zeros = before.iter().zip(&after).filter(|(b, a)| **b == 0.0 && **a != 0.0).count();
                assert_eq!(moved_zeros, 0, "{method} {name}: pruned weights became non-zero");
                assert!(before.iter().zip(&after).any(|(b, a)| b != a), "{method} {name}: nothing trained");
                let (s, c) =
                    (straight.layers[l].linear(proj).dense().unwrap(), resumed.layers[l].linear(proj).dense().unwrap());
                assert_eq!(s.to_f32_vec().unwrap(), c.to_f32_vec().unwrap(), "{method} {name}: resumed run differs");
            }
        }
        let (code, _, err) = sparsetune(&[
            "eval",
            "--model",
            &p(&format!("{method}-c.safetensors")),
            "--seq-len",
            "32",
            "--windows",
            "1",
        ]);
        assert_eq!(code, 0, "eval of the compressed export: {err}");
    }
    common::remove_scratch(&dir);
}

/// The main job end to end on the real model, tiny settings: a table, report.json with the
/// three stages, the charts, sparsity kept; a second call with --resume reuses the pruned
/// model and the finished checkpoint.
#[test]
fn run_main_job_end_to_end_and_resume() {
    let Some(model) = asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let dir = common::scratch("cli-run");
    let args = [
        "run",
        "--model",
        model.to_str().unwrap(),
        "--repair",
        "seft",
        "--seft-interval",
        "1",
        "--steps",
        "3",
        "--seq-len",
        "32",
        "--calib-samples",
        "2",
        "--eval-windows",
        "1",
        "--out-dir",
        dir.to_str().unwrap(),
    ];
    let (code, out, err) = sparsetune(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("repaired (seft)") && out.contains("pruned (wanda 50%)"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    assert!(stages.iter().all(|s| s["perplexity"].as_f64().unwrap().is_finite()));
    assert!(stages.iter().all(|s| s["decode_tokens_per_second"].as_f64().unwrap() > 0.0), "{stages:?}");
    // SEFT moves the mask but keeps every layer's sparsity; the pruned model is ~50% sparse.
    assert_eq!(report["layer_sparsity"]["pruned"], report["layer_sparsity"]["repaired"]);
    assert!((stages[1]["sparsity"].as_f64().unwrap() - 0.5).abs() < 0.01, "{}", stages[1]);
    // Weights grown after steps 1 and 2 were trained by the next step.
    assert!(report["revived_weights"].as_u64().unwrap() > 0, "SEFT grew no weight");
    assert_eq!(report["repair"]["seft_evolutions"].as_array().unwrap().len(), 2, "after steps 1 and 2");
    for png in ["loss.png", "perplexity.png", "layers.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png}");
    }
    // Both models are Hugging Face directories: config, tokenizer, weights.
    for sub in ["pruned", "repaired"] {
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
            assert!(dir.join(sub).join(f).is_file(), "{sub}/{f} missing");
        }
        let src = sparsetune::model::llama::ModelSource::open(&dir.join(sub)).unwrap();
        assert_eq!(src.config().num_hidden_layers, 30);
        let gguf = sparsetune::model::llama::load_tokenizer(&model).unwrap();
        let text = "Call me Ishmael. In 1851, <|im_start|>";
        assert_eq!(src.tokenizer().unwrap().encode_document(text).unwrap(), gguf.encode_document(text).unwrap());
    }
    let (code, _, err) = sparsetune(&[&args[..], &["--resume"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reusing") && err.contains("resumed from") && err.contains("at step 3"), "{err}");
    common::remove_scratch(&dir);
}

/// `run --repair losa`: LoSA prunes the dense model in five stages towards the target,
/// reports every stage, and ends at the target sparsity with the ranks' budget met.
#[test]
fn run_with_losa_prunes_the_dense_model_in_stages() {
    let Some(model) = asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let dir = common::scratch("cli-run-losa");
    let (code, out, err) = sparsetune(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--repair",
        "losa",
        "--steps",
        "5",
        "--seq-len",
        "32",
        "--calib-samples",
        "2",
        "--losa-calib-samples",
        "4",
        "--eval-windows",
        "1",
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("repaired (losa)"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let stages = report["repair"]["losa_stages"].as_array().unwrap();
    assert_eq!(stages.len(), 5);
    let targets: Vec<f64> = stages.iter().map(|s| s["sparsity"].as_f64().unwrap()).collect();
    for (got, want) in targets.iter().zip([0.244, 0.392, 0.468, 0.496, 0.5]) {
        assert!((got - want).abs() < 1e-12, "{targets:?}");
    }
    let mean = |v: &serde_json::Value| {
        let v = v.as_array().unwrap();
        v.iter().map(|x| x.as_f64().unwrap()).sum::<f64>() / v.len() as f64
    };
    for (s, want) in stages.iter().zip(&targets) {
        // Per row Wanda prunes floor(cols·x) (a little under), and a layer whose allocation
        // falls keeps the zeros it had (a little over).
        let got = mean(&s["achieved"]);
        assert!((got - want).abs() < 0.01, "stage {}: {got} vs {want}", s["stage"]);
    }
    // Final ranks: mean R = 16 over 30 layers; the chart and layer sparsity follow them.
    let ranks: Vec<u64> = report["layer_rank"].as_array().unwrap().iter().map(|r| r.as_f64().unwrap() as u64).collect();
    assert_eq!(ranks.iter().sum::<u64>(), 16 * 30, "{ranks:?}");
    assert!((mean(&report["layer_sparsity"]["repaired"]) - 0.5).abs() < 0.01);
    for png in ["loss.png", "perplexity.png", "layers.png", "rank.png"] {
        assert_eq!(&std::fs::read(dir.join(png)).unwrap()[..8], b"\x89PNG\r\n\x1a\n", "{png}");
    }
    common::remove_scratch(&dir);
}

/// `bench step` on a small known shape (CPU): one JSON line per (method, checkpointing),
/// a finite loss, and the measured peak within 10% of the plan at that shape.
#[test]
fn bench_step_reports_throughput_and_peak_next_to_the_plan() {
    let (code, out, err) = sparsetune(&[
        "bench",
        "--reps",
        "1",
        "step",
        "--shape",
        "smollm2-135m",
        "--seq-len",
        "32",
        "--methods",
        "masked-lora,lors",
        "--checkpointing",
        "on",
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    for r in &rows {
        assert!(r["tokens_per_second"].as_f64().unwrap() > 0.0 && r["last_loss"].as_f64().unwrap().is_finite(), "{r}");
        let (peak, plan) = (r["peak_bytes"].as_f64().unwrap(), r["planned_peak_bytes"].as_f64().unwrap());
        assert!((peak - plan).abs() <= 0.10 * plan, "{}: measured {peak} vs planned {plan}", r["method"]);
    }
}

/// A tiny checkpoint written by transformers (tests/fixtures/hf), without a chat template.
fn fixture_model() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama3-untied").display().to_string()
}

#[test]
fn generate_json_reports_tokens_and_speeds_and_a_seed_repeats_its_draw() {
    let model = fixture_model();
    let run = |seed: &str| {
        let args =
            ["generate", "--model", &model, "--prompt", "Call me Ishmael.", "--max-new", "12", "--temperature", "0.9"];
        let (code, stdout, stderr) =
            sparsetune(&[&args[..], &["--top-k", "40", "--top-p", "0.9", "--seed", seed, "--json"]].concat());
        assert_eq!(code, 0, "stderr: {stderr}");
        serde_json::from_str::<serde_json::Value>(stdout.trim())
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
    };
    let (a, b, c) = (run("7"), run("7"), run("8"));
    assert_eq!(a["tokens"], b["tokens"], "the same seed drew different tokens");
    assert_ne!(a["tokens"], c["tokens"], "seeds 7 and 8 drew the same 12 tokens");
    let n = a["tokens"].as_array().unwrap().len();
    assert!((1..=12).contains(&n), "{n} tokens");
    for key in ["prefill_tokens_per_second", "decode_tokens_per_second"] {
        assert!(a[key].as_f64().unwrap() > 0.0, "{key}: {}", a[key]);
    }
    assert!(a["text"].is_string());
    assert_eq!(a["linears"].as_array().unwrap().len(), 2 * 7, "one format per decoder linear");
}

#[test]
fn generate_refuses_what_it_cannot_do_by_name() {
    let model = fixture_model();
    let gen = |extra: &[&str]| {
        let (code, _, err) = sparsetune(&[&["generate", "--model", &model, "--prompt", "Call me"][..], extra].concat());
        assert_eq!(code, 1, "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    assert!(gen(&["--max-new", "0"]).contains("--max-new"));
    assert!(gen(&["--temperature", "1", "--top-p", "1.5"]).contains("--top-p"));
    assert!(gen(&["--temperature", "1", "--top-p", "0"]).contains("--top-p"));
    // Negative numbers reach the checks (not clap's "unexpected argument").
    assert!(gen(&["--temperature", "1", "--top-p", "-0.5"]).contains("--top-p must be in (0, 1]"));
    assert!(gen(&["--temperature", "-1"]).contains("--temperature must be"));
    assert!(gen(&["--chat"]).contains("no chat template"));
    assert!(gen(&["--sparse", "maybe"]).contains("--sparse"));
    // The fixture's context is 128 positions.
    let long = "Ishmael ".repeat(200);
    let (code, _, err) = sparsetune(&["generate", "--model", &model, "--prompt", &long]);
    assert_eq!(code, 1);
    assert!(err.contains("--prompt") && err.contains("context"), "{err}");
}

/// The summary line on stderr says why generation stopped: after --max-new tokens, or at
/// a full context (the fixture's 128 positions) when --max-new asks for more.
#[test]
fn generate_says_why_it_stopped() {
    let model = fixture_model();
    let summary = |prompt: &str, max_new: &str| {
        let (code, _, err) = sparsetune(&["generate", "--model", &model, "--prompt", prompt, "--max-new", max_new]);
        assert_eq!(code, 0, "{err}");
        err.lines().last().unwrap_or_default().to_string()
    };
    let short = summary("Call me", "3");
    assert!(short.contains("3 generated") && short.contains("stopped after --max-new 3"), "{short}");
    let full = summary("Call me", "500");
    assert!(full.contains("context of 128 positions is full"), "{full}");
}

/// `bench decode` on one layer of the default model's shape, 50% pruned: one JSON line per
/// variant with the keys; the sparse variant is a bitmask that reads and holds fewer
/// bytes. Bad flags are refused by name.
#[test]
fn bench_decode_reports_both_variants() {
    let args = ["bench", "--reps", "1", "decode", "--shape", "smollm2-135m"];
    let (code, stdout, stderr) = sparsetune(
        &[&args[..], &["--layers", "1", "--sparsity", "0.5", "--tokens", "3", "--context", "5", "--threads", "1"]]
            .concat(),
    );
    assert_eq!(code, 0, "stderr: {stderr}");
    let lines: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let (dense, sparse) = (&lines[0], &lines[1]);
    assert_eq!((dense["variant"].as_str(), dense["format"].as_str()), (Some("dense"), Some("dense")));
    assert_eq!((sparse["variant"].as_str(), sparse["format"].as_str()), (Some("sparse"), Some("bitmask")));
    for line in &lines {
        for key in ["decode_tokens_per_second", "prefill_tokens_per_second", "read_gbps", "machine_read_gbps"] {
            assert!(line[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {line}");
        }
    }
    // One round: the paired speedups are the ratios of the two lines' speeds.
    for (key, speed) in
        [("decode_speedup", "decode_tokens_per_second"), ("prefill_speedup", "prefill_tokens_per_second")]
    {
        let want = sparse[speed].as_f64().unwrap() / dense[speed].as_f64().unwrap();
        let got = sparse[key].as_f64().unwrap_or(f64::NAN);
        assert!((got - want).abs() <= 1e-9 * want, "{key}: {got} vs {want}");
        assert!(dense.get(key).is_none(), "{key} on the dense line");
    }
    for key in ["weight_bytes", "resident_bytes"] {
        let (d, s) = (dense[key].as_u64().unwrap(), sparse[key].as_u64().unwrap());
        assert!(s < d, "{key}: sparse {s} is not below dense {d}");
    }
    for (extra, flag) in [
        (&["--layers", "1", "--sparsity", "1.5"][..], "--sparsity"),
        (&["--layers", "1", "--sparsity", "0.5", "--tokens", "0"], "--tokens"),
        (&["--sparsity", "0.5", "--layers", "31"], "--layers"),
        (&["--layers", "1", "--nm", "4:2"], "4:2"),
    ] {
        let (code, _, err) = sparsetune(&[&args[..], extra].concat());
        assert_eq!(code, 1, "{extra:?}: {err}");
        assert!(err.contains(flag) && !err.contains("panicked"), "{extra:?}: {err}");
    }
}

/// `bench --device cuda step`, the command the GPU script runs, end to end on the CPU driver
/// of crates/cuda-cpu (the test model's shape): a line per (method, checkpointing) with a
/// finite loss and the measured peak next to the plan (at this shape the plan's fixed terms
/// weigh most, so within 10% above and 50% below), and the per-op table of the steps
/// without checkpointing naming the fused masked-LoRA ops of the default CUDA path.
#[test]
fn bench_step_on_cuda_runs_on_the_cpu_driver() {
    let library = std::path::Path::new(cuda_cpu::DRIVER_DIR).join("libcuda_cpu.so");
    assert!(library.is_file(), "the CPU driver {} is built with the tests", library.display());
    let args =
        ["bench", "--device", "cuda", "--reps", "1", "step", "--shape", "tiny", "--seq-len", "16", "--rank", "4"];
    let out = std::process::Command::new(common::binary())
        .args(args)
        .arg("--profile")
        .env("LD_LIBRARY_PATH", cuda_cpu::DRIVER_DIR)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<&serde_json::Value> = rows.iter().filter(|r| r["bench"] == "train_step").collect();
    assert_eq!(steps.len(), 4, "masked-lora and lors, checkpointing on and off: {stdout}");
    for r in &steps {
        assert!(r["device"].as_str().unwrap().contains("cuda-cpu"), "{r}");
        assert!(r["tokens_per_second"].as_f64().unwrap() > 0.0 && r["last_loss"].as_f64().unwrap().is_finite(), "{r}");
        let (peak, plan) = (r["peak_bytes"].as_f64().unwrap(), r["planned_peak_bytes"].as_f64().unwrap());
        assert!(peak <= 1.10 * plan && peak >= 0.5 * plan, "{}: measured {peak} vs planned {plan}", r["method"]);
    }
    let tables: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r["bench"] == "train_step_ops" && r["checkpointing"] == false).collect();
    assert_eq!(tables.len(), 2, "{stdout}");
    for t in tables {
        let ops: Vec<&str> = t["ops"].as_array().unwrap().iter().map(|o| o["op"].as_str().unwrap()).collect();
        for fused in ["masked_lora_qkv_rope", "masked_lora_swiglu", "attention"] {
            assert!(ops.contains(&fused), "{fused} in {ops:?}");
        }
    }
}
