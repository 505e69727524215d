#!/usr/bin/env python3
"""Hugging Face reference fixtures for sparsetune's loaders, and the check that
transformers loads the directories sparsetune writes.

    python scripts/hf_fixtures.py make [--out tests/fixtures/hf]
        Writes tiny random LLaMA-family checkpoints with transformers itself
        (save_pretrained), one directory per config form, each with the tokenizer and
        `reference.json` (fixed token ids) + `logits.safetensors` (transformers' float32
        logits for those ids). Refused forms hold a config.json only (and `refuse.txt`, the
        key the loader must name).

    python scripts/hf_fixtures.py configs [--out tests/fixtures/hf/configs-5.24]
        Writes the config.json that transformers (5.24.0 exactly) saves for full-size
        LLaMA-2-7B, LLaMA-3.1-8B and Mistral-7B shapes (the model built on the meta device
        and saved with `save_pretrained`, weights left out), and for a LLaMA-2-7B-shaped
        config rebuilt from GGUF metadata (`AutoConfig.from_pretrained(dir, gguf_file=...)`,
        the only route on which 5.24 writes `_model_name_or_path` and `unk_token_id`), each
        with `expected.json`: transformers' own values read back from that config.json
        (shapes, eps, RoPE parameters and the inverse frequencies its rotary embedding
        computes). Checks on the way that loading each directory and saving it again writes
        the same file. Needs torch, gguf and accelerate besides transformers.

    python scripts/hf_fixtures.py generate [--out tests/fixtures/hf]
        For every fixture directory with weights: transformers' greedy continuation
        (`generate(do_sample=False)`, float32, the directory's generation_config.json) of
        the first GENERATE_PROMPT ids of `reference.json`, up to GENERATE_NEW tokens, into
        `generate.json` (`prompt_ids`, `max_new_tokens`, `tokens`: the new ids).

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


GENERATE_PROMPT = 12
GENERATE_NEW = 20


def generate(out):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    for name in sorted(os.listdir(out)):
        d = os.path.join(out, name)
        if not os.path.exists(os.path.join(d, "reference.json")):
            continue
        with open(os.path.join(d, "reference.json")) as f:
            prompt = json.load(f)["ids"][:GENERATE_PROMPT]
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        with torch.no_grad():
            full = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=GENERATE_NEW)
        tokens = [int(t) for t in full[0][len(prompt):]]
        with open(os.path.join(d, "generate.json"), "w") as f:
            json.dump({"prompt_ids": prompt, "max_new_tokens": GENERATE_NEW, "tokens": tokens,
                       "transformers_version": transformers.__version__}, f, indent=1)
            f.write("\n")
        print("wrote", os.path.join(d, "generate.json"), tokens)


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


# Full-size shapes, as the published config.json files of these models give them.
FULL_SIZE = {
    "llama-2-7b": (
        "LlamaConfig",
        dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
             rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "float16",
    ),
    "llama-3.1-8b": (
        "LlamaConfig",
        dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
             rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
             tie_word_embeddings=False,
             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192}),
        "bfloat16",
    ),
    "mistral-7b": (
        "MistralConfig",
        dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
             rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
             sliding_window=4096, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "bfloat16",
    ),
}


def save_model_config(config, dtype, out):
    """What `model.save_pretrained(out)` writes as config.json for a model of this config in
    this dtype: the model is built on the meta device (no memory for 7B weights) and saved
    with an empty state dict, so transformers' own save sets `architectures` and `dtype` and
    writes the config; only config.json is kept."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype))
    model.save_pretrained(out, state_dict={})
    for f in os.listdir(out):
        if f != "config.json":
            os.remove(os.path.join(out, f))
    with open(os.path.join(out, "config.json")) as f:
        return json.load(f)


def expected_values(d):
    """transformers' own values for the config.json in `d`, read back the way
    `from_pretrained` reads it, and the inverse frequencies its rotary embedding computes."""
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from transformers.models.mistral.modeling_mistral import MistralRotaryEmbedding

    c = AutoConfig.from_pretrained(d)
    rope = dict(c.rope_parameters)
    rotary = (MistralRotaryEmbedding if c.model_type == "mistral" else LlamaRotaryEmbedding)(c)
    return {
        "model_type": c.model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": rope["rope_theta"],
        "rope_type": rope["rope_type"],
        "rope_factor": rope.get("factor"),
        "rope_low_freq_factor": rope.get("low_freq_factor"),
        "rope_high_freq_factor": rope.get("high_freq_factor"),
        "rope_original_max_position_embeddings": rope.get("original_max_position_embeddings"),
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "sliding_window": getattr(c, "sliding_window", None),
        # The rotary embedding's float32 buffer and its output scale (1 for these types).
        "rope_inv_freq": [float(x) for x in rotary.inv_freq],
        "rope_attention_scaling": float(rotary.attention_scaling),
    }


def write_gguf_llama2_7b(path):
    """A GGUF with the metadata a llama.cpp conversion of LLaMA-2-7B carries (llama.cpp's key
    names; placeholder token strings) and only the two vocabulary matrices, as all-zero Q4_0
    blocks: transformers rebuilds the config from the metadata and the tensor names (an
    `output.weight` means untied), so the other tensors are left out."""
    import gguf
    import numpy as np

    vocab, width = 32000, 4096
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("LLaMA v2")
    w.add_vocab_size(vocab)
    w.add_context_length(4096)
    w.add_embedding_length(width)
    w.add_block_count(32)
    w.add_feed_forward_length(11008)
    w.add_rope_dimension_count(128)
    w.add_head_count(32)
    w.add_head_count_kv(32)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"<tok{i}>" for i in range(3, vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    q4_0 = gguf.GGMLQuantizationType.Q4_0
    block_bytes = gguf.GGML_QUANT_SIZES[q4_0][1]
    for name in ["token_embd.weight", "output.weight"]:
        w.add_tensor(name, np.zeros((vocab, width // 32 * block_bytes), dtype=np.uint8), raw_dtype=q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def configs(out):
    import tempfile

    import transformers
    from transformers import AutoConfig

    if transformers.__version__ != "5.24.0":
        sys.exit(f"these fixtures are transformers 5.24.0's; this is {transformers.__version__}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    def finish(name, config, dtype):
        d = os.path.join(out, name)
        written = save_model_config(config, dtype, d)
        # Loaded from the directory and saved again, as a user's round trip does.
        with tempfile.TemporaryDirectory() as again:
            rewritten = save_model_config(AutoConfig.from_pretrained(d), dtype, again)
        if rewritten != written:
            changed = sorted(k for k in set(written) | set(rewritten) if written.get(k) != rewritten.get(k))
            sys.exit(f"{name}: loading and saving again changed {changed}")
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(expected_values(d), f, indent=1)
            f.write("\n")
        print("wrote", d, "keys:", sorted(written))

    for name, (cls_name, kw, dtype) in FULL_SIZE.items():
        finish(name, getattr(transformers, cls_name)(**kw), dtype)

    with tempfile.TemporaryDirectory() as g:
        write_gguf_llama2_7b(os.path.join(g, "model.gguf"))
        config = AutoConfig.from_pretrained(g, gguf_file="model.gguf")
        finish("llama-2-7b-from-gguf", config, "float32")


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
    g = sub.add_parser("configs")
    g.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf", "configs-5.24")
    )
    n = sub.add_parser("generate")
    n.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf"))
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
    if a.cmd == "configs":
        configs(os.path.normpath(a.out))
        return 0
    if a.cmd == "generate":
        generate(os.path.normpath(a.out))
        return 0
    return check(a.ours, a.logits, a.text, a.windows, a.atol, a.rtol)


if __name__ == "__main__":
    sys.exit(main())
