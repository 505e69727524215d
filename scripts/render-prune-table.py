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
    if not r:
        return "–"
    s = r["prune_seconds"]
    return f"{s:.1f}" if s < 10 else f"{s:.0f}"

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

r50, d50 = by.get("wanda-50"), by.get("wanda-50-dsnot")
if r50 and d50:
    print()
    print(f"Wanda at 50%: {ppl('wanda-50')} uniform, {ppl('wanda-50-dsnot')} with DSnoT ({secs('wanda-50-dsnot')} s).")
