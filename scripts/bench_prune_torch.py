#!/usr/bin/env python3
"""Reference side of issue 8's pruning-speed comparison: Wanda and SparseGPT as their
papers' PyTorch implementations run them (layer by layer over the decoder: collect the
linears' input statistics over all calibration windows, prune the seven linears, re-run
the layer for the next one's inputs), on a random LLaMA of a known shape, timed end to end
(calibration forward included). Our side is `sparsetune bench --device cuda prune`.
Prints one JSON object.

  python3 scripts/bench_prune_torch.py --method wanda|sparsegpt [--shape llama2-7b]
          [--samples 128] [--seq-len 2048] [--nm 2:4] [--device cuda]

Written from the algorithms in ../shared/ALGORITHMS.md without a GPU or PyTorch at hand:
run a small shape first (`--shape smollm2-135m --samples 4 --seq-len 256`).
"""
import argparse
import json
import time

import torch

SHAPES = {
    "llama2-7b": (32000, 4096, 11008, 32, 32, 32, False),
    "llama2-13b": (32000, 5120, 13824, 40, 40, 40, False),
    "llama3-8b": (128256, 4096, 14336, 32, 32, 8, False),
    "smollm2-135m": (49152, 576, 1536, 30, 9, 3, True),
}
GROUPS = {"self_attn": ["q_proj", "k_proj", "v_proj", "o_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]}


def linears(layer):
    return {f"{g}.{n}": getattr(getattr(layer, g), n) for g, names in GROUPS.items() for n in names}


def wanda(w, stats, sparsity, nm):
    """|W|·‖X_j‖ per row; unstructured: the lowest `sparsity` of each row; N:M per group."""
    score = w.abs().float() * torch.sqrt(stats["sq"] / stats["n"]).reshape(1, -1)
    mask = torch.zeros_like(score, dtype=torch.bool)  # True = pruned
    if nm:
        n, m = nm
        for c in range(0, score.shape[1], m):
            idx = torch.topk(score[:, c:c + m], m - n, dim=1, largest=False).indices
            mask.scatter_(1, c + idx, True)
    else:
        k = int(score.shape[1] * sparsity)
        mask.scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, :k], True)
    w[mask] = 0


def sparsegpt(w, stats, sparsity, nm, block=128, percdamp=0.01):
    """OBS pruning with lazy batched updates over blocks of 128 columns."""
    W = w.float()
    H = stats["H"]
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        if nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            tmp = W1 ** 2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        for i in range(i2 - i1):
            wcol, d = W1[:, i], Hinv1[i, i]
            if nm and i % nm[1] == 0:
                n, m = nm
                tmp = W1[:, i:i + m] ** 2 / torch.diag(Hinv1)[i:i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, m - n, dim=1, largest=False).indices, True)
            q = wcol.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (wcol - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    w.copy_(W.to(w.dtype))


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["wanda", "sparsegpt"], default="wanda")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--nm", default=None, help="N:M (N kept of every M), e.g. 2:4")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    nm = tuple(int(x) for x in args.nm.split(":")) if args.nm else None
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, dim, hidden, layers, heads, kv, tied = SHAPES[args.shape]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tied,
                      max_position_embeddings=max(4096, args.seq_len), attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (args.samples, args.seq_len), generator=gen).to(args.device)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    x = model.model.embed_tokens(ids)  # [samples, T, dim]
    pos = torch.arange(args.seq_len, device=args.device).unsqueeze(0)
    rope = model.model.rotary_emb(x[:1], pos)

    def run_layer(layer, h):
        out = torch.empty_like(h)
        for j in range(h.shape[0]):
            y = layer(h[j:j + 1], attention_mask=None, position_ids=pos, position_embeddings=rope)
            out[j] = (y[0] if isinstance(y, tuple) else y)[0]
        return out

    for layer in model.model.layers:
        lins = linears(layer)
        stats = {}

        def hook(name):
            def f(_, inp, __):
                a = inp[0].reshape(-1, inp[0].shape[-1]).float()
                s = stats.setdefault(name, {"n": 0, "sq": 0, "H": 0})
                if args.method == "wanda":
                    s["sq"] = s["sq"] + (a ** 2).sum(0)
                    s["n"] += 1  # wanda's scaler_row: the squared norm over tokens, averaged over samples
                else:
                    s["H"] = s["H"] + 2.0 / args.samples * (a.t() @ a)  # as the reference: 2/n_samples·Σ xxᵀ
            return f

        handles = [m.register_forward_hook(hook(n)) for n, m in lins.items()]
        run_layer(layer, x)
        for h in handles:
            h.remove()
        for name, lin in lins.items():
            if args.method == "wanda":
                wanda(lin.weight.data, stats[name], args.sparsity, nm)
            else:
                sparsegpt(lin.weight.data, stats[name], args.sparsity, nm)
        del stats
        x = run_layer(layer, x)
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - start
    zeros = sum(int((m.weight == 0).sum()) for layer in model.model.layers for m in linears(layer).values())
    total = sum(m.weight.numel() for layer in model.model.layers for m in linears(layer).values())
    print(json.dumps({
        "bench": "torch_prune", "method": args.method, "shape": args.shape, "samples": args.samples,
        "seq_len": args.seq_len, "pattern": args.nm or args.sparsity, "seconds": secs, "sparsity": zeros / total,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None, "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }), flush=True)


if __name__ == "__main__":
    main()
