#!/usr/bin/env bash
# Bounded-memory pruning at LLaMA-2-7B size on the CPU (issue 14's benchmark):
#   1. a random LLaMA-2-7B-shaped model written as sharded bf16 Hugging Face safetensors
#      (`sparsetune bench make-model`, 13.5 GB, a tensor at a time);
#   2. `sparsetune prune --method wanda` and `--method sparsegpt` on it, 8 calibration
#      windows of 512 tokens, written as bf16 directories; each prints its JSON report
#      (seconds, peak_rss_bytes = VmHWM) and /usr/bin/time's maximum resident size;
#   3. `sparsetune finetune` on the Wanda output for a few steps at --seq-len 64, loading
#      the base compressed (its JSON report has load_peak_bytes / load_peak_rss_bytes).
# Results go to $OUT/*.json and $OUT/*.time; the models to $WORK (about 40 GB of disk).
#   WORK=/path/with/space OUT=docs/bench-7b bash scripts/bench-7b-prune.sh [wanda|sparsegpt|finetune|all]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${WORK:-/tmp/sparsetune-7b}"
OUT="${OUT:-$WORK/results}"
WHAT="${1:-all}"
BIN="${BIN:-target/release/sparsetune}"
mkdir -p "$WORK" "$OUT"
[ -x "$BIN" ] || cargo build --release

if [ ! -f "$WORK/model/config.json" ]; then
    /usr/bin/time -v -o "$OUT/make-model.time" "$BIN" bench make-model --shape llama2-7b --dtype bf16 \
        --out "$WORK/model" > "$OUT/make-model.json"
fi

prune() { # method
    /usr/bin/time -v -o "$OUT/prune-$1.time" "$BIN" prune --model "$WORK/model" --method "$1" --sparsity 0.5 \
        --calib-samples 8 --calib-seq-len 512 --out "$WORK/pruned-$1" --json > "$OUT/prune-$1.json"
    grep -E "Maximum resident|Elapsed" "$OUT/prune-$1.time"
}

case "$WHAT" in wanda|sparsegpt|finetune|all) ;; *) echo "usage: $0 [wanda|sparsegpt|finetune|all]" >&2; exit 2 ;; esac
if [ "$WHAT" = wanda ] || [ "$WHAT" = all ]; then prune wanda; fi
if [ "$WHAT" = sparsegpt ] || [ "$WHAT" = all ]; then prune sparsegpt; fi
if [ "$WHAT" = finetune ] || [ "$WHAT" = all ]; then
    /usr/bin/time -v -o "$OUT/finetune.time" "$BIN" finetune --model "$WORK/pruned-wanda" --method masked-lora \
        --steps 2 --seq-len 64 --out "$WORK/repaired" --json > "$OUT/finetune.json"
    grep -E "Maximum resident|Elapsed" "$OUT/finetune.time"
fi
