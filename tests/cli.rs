//! The `sparsetune` binary: `eval --json` on the real model reproduces the reference
//! perplexity, and bad input (empty text, seq-len larger than the text, a missing or
//! corrupt model) fails with a clear message and exit code 1, never a panic.

mod common;

use std::process::Command;

use sparsetune::io::asset_path;

/// The binary under test: `$SPARSETUNE_BIN` when set (test executables carried to another
/// machine), else the one cargo built.
fn binary() -> std::path::PathBuf {
    std::env::var_os("SPARSETUNE_BIN").map(Into::into).unwrap_or_else(|| env!("CARGO_BIN_EXE_sparsetune").into())
}

fn sparsetune(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).args(args).output().expect("run sparsetune");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
    assert!(err.starts_with("error:") && !err.contains("panicked"), "{err}");

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
