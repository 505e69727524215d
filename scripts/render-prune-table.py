#!/usr/bin/env python3
"""Render docs/prune-runs.jsonl (from scripts/prune-table.sh) as a markdown table."""
import json
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "docs/prune-runs.jsonl"
runs = [json.loads(line) for line in open(path) if line.strip()]
by = {r["label"]: r for r in runs}

def ppl(label):
    r = by.get(label)
    return f"{r['perplexity']:.2f}" if r else "–"

def secs(label):
    r = by.get(label)
    return f"{r['prune_seconds']:.0f}" if r else "–"

print(f"Dense: **{ppl('dense')}**\n")
print("| method | 50% | 70% | 2:4 | seconds (50% / 70% / 2:4) |")
print("|---|---|---|---|---|")
for m in ["magnitude", "wanda", "sparsegpt", "ria"]:
    print(f"| {m} | {ppl(m + '-50')} | {ppl(m + '-70')} | {ppl(m + '-2of4')} | "
          f"{secs(m + '-50')} / {secs(m + '-70')} / {secs(m + '-2of4')} |")
print()
print("| Wanda at 70% | perplexity | seconds | per-layer sparsity (first → last) |")
print("|---|---|---|---|")
rows = [("uniform", "wanda-70"), ("OWL (M=5, λ=0.08)", "wanda-70-owl")]
rows += [(f"ATP β={b}", f"wanda-70-atp{b}") for b in ["0.005", "0.01", "0.02"]]
rows += [("uniform + DSnoT", "wanda-70-dsnot")]
for name, label in rows:
    r = by.get(label)
    if not r:
        continue
    t = r.get("layer_targets") or []
    span = f"{t[0]:.3f} → {t[-1]:.3f} (min {min(t):.3f}, max {max(t):.3f})" if t else "–"
    print(f"| {name} | {ppl(label)} | {secs(label)} | {span} |")
