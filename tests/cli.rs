//! The `sparsetune` binary: `eval --json` on the real model reproduces the reference
//! perplexity, and bad input (empty text, seq-len larger than the text, a missing or
//! corrupt model) fails with a clear message and exit code 1, never a panic.

mod common;

use std::process::Command;

use sparsetune::io::asset_path;

fn sparsetune(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sparsetune")).args(args).output().expect("run sparsetune");
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
