#!/usr/bin/env python3
"""Hugging Face reference fixtures for sparsetune's loaders, and the check that
transformers loads the directories sparsetune writes.

    python scripts/hf_fixtures.py make [--out tests/fixtures/hf]
        Writes tiny random LLaMA-family checkpoints with transformers itself
        (save_pretrained), one directory per config form, each with the tokenizer and
        `reference.json` (fixed token ids) + `logits.safetensors` (transformers' float32
        logits for those ids). Refused forms hold a config.json only (and `refuse.txt`, the
        key the loader must name).

    python scripts/hf_fixtures.py check --ours DIR --logits OURS.safetensors [--text FILE]
                                        [--windows 4] [--atol 1e-4] [--rtol 1e-4]
        Loads DIR (written by `sparsetune prune/finetune/run --out DIR`) with
        AutoModelForCausalLM and AutoTokenizer, unchanged, and compares transformers'
        logits for the token ids stored in OURS.safetensors (`sparsetune eval
        --logits-out`) with ours (within atol + rtol·|ours|); with --text also
        transformers' token ids and perplexity over that text, tokenized whole, in the
        first --windows non-overlapping windows of the same length (what `sparsetune eval
        --seq-len T --windows K` computes). Prints one JSON object.

Needs torch and transformers (a developer's machine, not CI). Every fixture is small
(vocab 320, 2 layers, width 32) so that it can be committed.
"""

import argparse
import json
import math
import os
import shutil
import sys

FIXTURE_TEXT = (
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no "
    "money in my purse, and nothing particular to interest me on shore, I thought I would "
    "sail about a little and see the watery part of the world."
)
# Tokens per reference window: longer than llama3's original context (16) so that its
# scaling shows, shorter than the sliding window of the mistral fixture (48).
WINDOW = 40

BASE = dict(
    vocab_size=320,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    max_position_embeddings=128,
    bos_token_id=0,
    eos_token_id=1,
)


def make_tokenizer(out):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE["vocab_size"],
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([FIXTURE_TEXT, FIXTURE_TEXT.lower(), "The quick brown fox jumps over the lazy dog."], trainer)
    # LLaMA-3 style: the post-processor adds BOS.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)
    return fast


def reference(model, tokenizer, out):
    import torch
    from safetensors.torch import save_file

    ids = tokenizer(FIXTURE_TEXT)["input_ids"][:WINDOW]
    assert len(ids) == WINDOW, len(ids)
    with torch.no_grad():
        logits = model.float()(torch.tensor([ids])).logits[0].contiguous()
    save_file({"logits": logits}, os.path.join(out, "logits.safetensors"))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"text": FIXTURE_TEXT, "ids": ids, "window": WINDOW}, f, indent=1)


def rewrite_config(path, edit):
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    edit(cfg)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def legacy(rope_scaling):
    """transformers 4.x form: top-level rope_theta, `rope_scaling`, `torch_dtype`."""

    def edit(cfg):
        rp = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rp.pop("rope_theta")
        rp.pop("rope_type")
        cfg["rope_scaling"] = rope_scaling
        cfg["torch_dtype"] = cfg.pop("dtype", "float32")
        cfg["transformers_version"] = "4.46.0"
        cfg["pretraining_tp"] = 1

    return edit


def sharpen(m):
    """Norm weights away from 1 so that a missing or misplaced norm shows; q and k 8x the
    initial scale so that attention is peaked and the RoPE frequencies change the logits
    (with 0.02-std weights every position is attended alike)."""
    import torch

    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
            if "q_proj" in n or "k_proj" in n:
                p.mul_(8.0)
    return m.eval()


def make(out):
    import torch
    from transformers import (
        AutoModelForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
    )

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    tok_dir = os.path.join(out, "_tokenizer")
    tokenizer = make_tokenizer(tok_dir)

    def save(name, model, edit=None, **kw):
        d = os.path.join(out, name)
        model.save_pretrained(d, **kw)
        for f in os.listdir(tok_dir):
            shutil.copy(os.path.join(tok_dir, f), d)
        if edit is not None:
            rewrite_config(d, edit)
        # The reference comes from the directory as transformers reads it back.
        back = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        reference(back, tokenizer, d)
        print("wrote", d, sorted(os.listdir(d)))

    def llama(seed, **kw):
        torch.manual_seed(seed)
        m = LlamaForCausalLM(LlamaConfig(**{**BASE, **kw}))
        return sharpen(m)

    tf5 = llama(1, rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True)
    save("llama-tf5-tied", tf5)
    save("llama-legacy", tf5, legacy(None))
    save(
        "llama3-untied",
        llama(
            2,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            tie_word_embeddings=False,
        ),
    )
    save(
        "linear-legacy",
        llama(3, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
        legacy({"type": "linear", "factor": 4.0}),
    )
    save(
        "dynamic",
        llama(4, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
              max_position_embeddings=64),
    )
    save("bf16-sharded", llama(5).to(torch.bfloat16), max_shard_size="25KB")
    save("f16", llama(6).to(torch.float16))
    torch.manual_seed(7)
    mistral = sharpen(MistralForCausalLM(
        MistralConfig(**{**BASE, "head_dim": 16, "sliding_window": 48, "tie_word_embeddings": False})
    ))
    save("mistral", mistral)

    # Refused forms: the config alone (the loader refuses before reading weights).
    def config_only(name, config, key):
        d = os.path.join(out, name)
        config.save_pretrained(d)
        with open(os.path.join(d, "refuse.txt"), "w") as f:
            f.write(key + "\n")
        print("wrote", d, "(refused:", key + ")")

    config_only(
        "refuse-yarn",
        LlamaConfig(**BASE, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                             "original_max_position_embeddings": 16}),
        "rope_type",
    )
    config_only("refuse-attention-bias", LlamaConfig(**BASE, attention_bias=True), "attention_bias")
    config_only("refuse-mlp-bias", LlamaConfig(**BASE, mlp_bias=True), "mlp_bias")
    config_only("refuse-qwen2", Qwen2Config(**BASE), "model_type")
    config_only("refuse-gelu", LlamaConfig(**BASE, hidden_act="gelu"), "hidden_act")
    shutil.rmtree(tok_dir)


def check(ours, logits_path, text, windows_max, atol, rtol):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ours, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(ours)
    saved = load_file(logits_path)
    ids = saved["ids"].to(torch.int64)
    ours_logits = saved["logits"].float()
    with torch.no_grad():
        theirs = model(ids[None]).logits[0]
    err = (theirs - ours_logits).abs()
    tol = atol + rtol * ours_logits.abs()
    result = {
        "dir": ours,
        "architecture": type(model).__name__,
        "tokenizer": type(tokenizer).__name__,
        "tokens": int(ids.numel()),
        "max_abs_logit_error": float(err.max()),
        "max_abs_logit": float(ours_logits.abs().max()),
        "atol": atol,
        "rtol": rtol,
        "within": bool((err <= tol).all()),
    }
    if text:
        with open(text) as f:
            enc = tokenizer(f.read())["input_ids"]
        seq = int(ids.numel())
        windows = [enc[i:i + seq] for i in range(0, len(enc) - seq + 1, seq)][:windows_max]
        result["first_window_ids_match"] = windows[0] == ids.tolist()
        nll, n = 0.0, 0
        with torch.no_grad():
            for w in windows:
                x = torch.tensor([w])
                out = model(x, labels=x)
                nll += float(out.loss) * (len(w) - 1)
                n += len(w) - 1
        result["perplexity"] = math.exp(nll / n)
        result["windows"] = len(windows)
        result["text_tokens"] = len(enc)
    print(json.dumps(result))
    return 0 if result["within"] else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf"))
    c = sub.add_parser("check")
    c.add_argument("--ours", required=True)
    c.add_argument("--logits", required=True)
    c.add_argument("--text")
    c.add_argument("--windows", type=int, default=4)
    c.add_argument("--atol", type=float, default=1e-4)
    c.add_argument("--rtol", type=float, default=1e-4)
    a = ap.parse_args()
    if a.cmd == "make":
        make(os.path.normpath(a.out))
        return 0
    return check(a.ours, a.logits, a.text, a.windows, a.atol, a.rtol)


if __name__ == "__main__":
    sys.exit(main())
