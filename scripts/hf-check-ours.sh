#!/usr/bin/env bash
# Do our Hugging Face directories load in transformers, unchanged, and give our numbers?
# For fixtures written by transformers (tests/fixtures/hf) and for the default model:
#   sparsetune prune --out DIR  →  sparsetune eval --model DIR --logits-out ours.safetensors
#   →  scripts/hf_fixtures.py check (AutoModelForCausalLM + AutoTokenizer on DIR: logits,
#      token ids and perplexity against ours)
# and the same for `sparsetune run`'s repaired/ directory. One JSON line per directory goes
# to $OUT (default docs/hf-transformers-check.jsonl). Needs torch and transformers in
# $PYTHON (a developer's machine); re-run it when the writer changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-docs/hf-transformers-check.jsonl}"
BIN="${BIN:-target/release/sparsetune}"
CACHE="${SPARSETUNE_CACHE:-$HOME/.cache/sparsetune}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
[ -x "$BIN" ] || cargo build --release
: > "$OUT"

check() { # dir text seq_len atol label
    "$BIN" eval --model "$1" --text "$2" --seq-len "$3" --windows 4 --json --logits-out "$WORK/ours.safetensors" \
        > "$WORK/eval.json" 2>/dev/null
    local ours
    ours=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['perplexity'])" "$WORK/eval.json")
    "$PYTHON" scripts/hf_fixtures.py check --ours "$1" --logits "$WORK/ours.safetensors" --text "$2" \
        --windows 4 --atol "$4" 2>/dev/null |
        "$PYTHON" -c "import json,sys; r=json.loads(sys.stdin.read()); r['label']=sys.argv[1]; r['ours_perplexity']=float(sys.argv[2]); print(json.dumps(r))" "$5" "$ours" |
        tee -a "$OUT"
}

# Fixtures: a calibration/evaluation text from the fixture's own reference text.
for fx in bf16-sharded llama3-untied mistral f16 llama-tf5-tied; do
    src="tests/fixtures/hf/$fx"
    "$PYTHON" -c "import json,sys; t=json.load(open(sys.argv[1]))['text']; open(sys.argv[2],'w').write((t + ' ') * 40)" \
        "$src/reference.json" "$WORK/text.txt"
    "$BIN" prune --model "$src" --method wanda --sparsity 0.5 --calib "$WORK/text.txt" --calib-samples 4 \
        --calib-seq-len 32 --out "$WORK/$fx" --max-shard-size 25KB > /dev/null 2>&1
    check "$WORK/$fx" "$WORK/text.txt" 40 1e-4 "prune wanda 50% of fixture $fx"
done

# The default model (GGUF) → our directory, and run's repaired/ directory.
MOBY="$CACHE/moby-dick/data.txt"
"$BIN" prune --method wanda --sparsity 0.5 --calib-samples 8 --out "$WORK/smol" > /dev/null 2>&1
check "$WORK/smol" "$MOBY" 256 1e-3 "prune wanda 50% of SmolLM2-135M (GGUF source)"
"$BIN" run --steps 4 --seq-len 64 --calib-samples 4 --eval-windows 1 --out-dir "$WORK/run" > /dev/null 2>&1
check "$WORK/run/repaired" "$MOBY" 256 1e-3 "run (wanda 50% + masked-lora 4 steps) repaired/ of SmolLM2-135M"
