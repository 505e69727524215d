#!/usr/bin/env bash
# Prune SmolLM2-135M with every method/pattern of the results table and evaluate each on
# Moby Dick (first 16 windows of 512). One JSON line per run in $OUT_JSON.
#   DEVICE=cpu|cuda BIN=... OUT_JSON=... scripts/prune-table.sh
#   ONLY=<regex>: re-run only the matching labels, replacing their lines in OUT_JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cpu}"
BIN="${BIN:-target/release/sparsetune}"
OUT_JSON="${OUT_JSON:-docs/prune-runs.jsonl}"
TMP="${TMPDIR:-/tmp}/sparsetune-table"
mkdir -p "$TMP" "$(dirname "$OUT_JSON")"
ONLY="${ONLY:-}"
[ -n "$ONLY" ] || : > "$OUT_JSON"
ev() { "$BIN" eval --model "$1" --windows 16 --device "$DEVICE" --json; }
run() { # label, prune args...
    local label="$1"; shift
    if [ -n "$ONLY" ] && ! [[ "$label" =~ $ONLY ]]; then return; fi
    [ -z "$ONLY" ] || python3 -c "import sys,json; p=sys.argv[1]; l=[x for x in open(p) if json.loads(x)['label']!=sys.argv[2]]; open(p,'w').writelines(l)" "$OUT_JSON" "$label"
    local out="$TMP/$label.safetensors"
    local p e
    p="$("$BIN" prune "$@" --device "$DEVICE" --out "$out" --json)"
    e="$(ev "$out")"
    rm -f "$out"
    python3 - "$label" "$p" "$e" >> "$OUT_JSON" <<'PY'
import json, sys
label, p, e = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(json.dumps({"label": label, "method": p["method"], "pattern": p["pattern"], "allocation": p["allocation"],
                  "dsnot": p["dsnot"], "sparsity": p["overall_sparsity"], "prune_seconds": p["seconds"],
                  "perplexity": e["perplexity"], "layer_targets": [l["target"] for l in p["layers"]]}))
PY
    echo "$label: ppl $(python3 -c "import json,sys; print(round(json.loads(sys.argv[1])['perplexity'],2))" "$e")" >&2
}
[ -n "$ONLY" ] || d="$(ev "${SPARSETUNE_CACHE:-$HOME/.cache/sparsetune}/SmolLM2-135M-Instruct.Q4_1.gguf")"
[ -n "$ONLY" ] || python3 -c "import json,sys; e=json.loads(sys.argv[1]); print(json.dumps({'label':'dense','method':'dense','pattern':'-','allocation':'-','dsnot':False,'sparsity':0.0,'prune_seconds':0.0,'perplexity':e['perplexity']}))" "$d" >> "$OUT_JSON"
for m in magnitude wanda sparsegpt ria; do
    run "$m-50" --method "$m" --sparsity 0.5
    run "$m-70" --method "$m" --sparsity 0.7
    run "$m-2of4" --method "$m" --nm 2:4
done
run wanda-70-owl --method wanda --sparsity 0.7 --allocation owl
for b in 0.005 0.01 0.02; do
    run "wanda-70-atp$b" --method wanda --sparsity 0.7 --allocation atp --atp-step "$b"
done
run wanda-70-dsnot --method wanda --sparsity 0.7 --dsnot
run wanda-50-dsnot --method wanda --sparsity 0.5 --dsnot
