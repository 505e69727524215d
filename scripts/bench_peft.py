#!/usr/bin/env python3
"""Reference rows for issue 8: one full LoRA training step (forward, backward, AdamW) in
PyTorch on LLaMA shapes with random weights, to compare with `sparsetune bench step` in the
same device call. Prints one JSON object per line.

Modes:
  dense-lora  PEFT LoRA on q,k,v,o,gate,up,down (does not keep sparsity);
  sp-lora     SP-LoRA-style masked LoRA through autograd: y = x·(W + s·M⊙(B·A))ᵀ with a
              bool mask M (50% per row by magnitude) and W zero where M is;
  liger       dense-lora with Liger's fused kernels (needs the liger_kernel package).

Usage (on the GPU machine, where python3 holds torch, transformers and peft):
  python3 scripts/bench_peft.py --mode dense-lora [--checkpointing] [--shape llama2-7b]
          [--seq-len 2048] [--batch 1] [--rank 16] [--steps 5] [--device cuda]

Written without a GPU at hand: run a small shape first (`--shape smollm2-135m --steps 2`).
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {
    # vocab, hidden, intermediate, layers, heads, kv heads, tied embeddings
    "llama2-7b": (32000, 4096, 11008, 32, 32, 32, False),
    "llama2-13b": (32000, 5120, 13824, 40, 40, 40, False),
    "llama3-8b": (128256, 4096, 14336, 32, 32, 8, False),
    "smollm2-135m": (49152, 576, 1536, 30, 9, 3, True),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class MaskedLoraLinear(nn.Module):
    """y = x·(W + s·M⊙(B·A))ᵀ, W and M frozen (W zero where M is), the masked delta built
    densely through autograd as SP-LoRA-style PyTorch code does."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, sparsity: float):
        super().__init__()
        w = base.weight.detach()
        k = int(w.shape[1] * sparsity)
        idx = torch.topk(w.abs().float(), k, dim=1, largest=False).indices
        mask = torch.ones_like(w, dtype=torch.bool)
        mask.scatter_(1, idx, False)
        self.weight = nn.Parameter(w * mask, requires_grad=False)
        self.register_buffer("mask", mask)
        self.lora_A = nn.Parameter(torch.empty(rank, w.shape[1], dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(w.shape[0], rank, dtype=w.dtype, device=w.device))
        self.scale = alpha / rank

    def forward(self, x):
        delta = (self.lora_B @ self.lora_A) * self.mask
        return F.linear(x, self.weight + self.scale * delta)


def build(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.mode == "liger":
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama()
    vocab, dim, hidden, layers, heads, kv, tied = SHAPES[args.shape]
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=max(4096, args.seq_len),
        tie_word_embeddings=tied,
        attn_implementation="sdpa",
        use_cache=False,
    )
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg).to(dtype)
    if args.mode == "sp-lora":
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name in TARGETS:
                    if hasattr(parent, name):
                        setattr(parent, name, MaskedLoraLinear(getattr(parent, name), args.rank, 2 * args.rank, 0.5))
        if args.checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        from peft import LoraConfig, get_peft_model

        if args.checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lcfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS, lora_dropout=0.0,
                          bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    model.train()
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["dense-lora", "sp-lora", "liger"], default="dense-lora")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")

    model = build(args)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    vocab = SHAPES[args.shape][0]
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, vocab, (args.batch, args.seq_len), generator=gen) for _ in range(args.steps + 1)]

    def step(ids):
        ids = ids.to(args.device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    step(batches[0])  # warm-up
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for ids in batches[1:]:
        loss = step(ids)
    if cuda:
        torch.cuda.synchronize()
    secs = (time.perf_counter() - start) / args.steps
    print(json.dumps({
        "bench": "torch_train_step", "mode": args.mode, "shape": args.shape, "checkpointing": args.checkpointing,
        "seq_len": args.seq_len, "batch": args.batch, "rank": args.rank, "dtype": args.dtype,
        "steps_timed": args.steps, "seconds_per_step": secs,
        "tokens_per_second": args.seq_len * args.batch / secs,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "trainable_params": sum(p.numel() for p in params), "last_loss": float(loss),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }), flush=True)


if __name__ == "__main__":
    main()
