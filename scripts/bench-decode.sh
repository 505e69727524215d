#!/usr/bin/env bash
# Issue 24's decode/prefill measurement in one run (CPU, 2 threads by default):
#  - llama.cpp's own llama-bench, when LLAMA_BENCH points at it and LLAMA_GGUF_BF16 /
#    LLAMA_GGUF_F32 at the default model dequantized by its llama-quantize (build it from
#    the llama-cpp-python sdist: `pip download --no-deps --no-binary llama-cpp-python
#    llama-cpp-python`, cmake in vendor/llama.cpp; its code never enters this project);
#  - sparsetune bench decode on the default model (dense), on Wanda-pruned copies of it
#    (PRUNED_DIRS: directories written by `sparsetune prune`), and at LLaMA-2-7B shapes
#    (LAYERS decoder layers, default 16, random weights pruned by magnitude; with fewer layers
#    the dense 32000x4096 head that both variants read caps the ratios below the issue's
#    targets: at 4 layers 50% / 70% / 2:4 can reach at most 1.60x / 2.22x / 1.60x dense, at 16
#    layers 1.72x / 2.58x / 1.72x; 16 layers take ~11 GB and ~4 minutes per pattern).
# Prints one line per measurement; a sparse line ends with the paired speedups (the median
# over rounds of sparse / dense in the same round). Usage: scripts/bench-decode.sh [threads]
set -u
T="${1:-2}"
cd "$(dirname "$0")/.."
B="${SPARSETUNE_BIN:-target/release/sparsetune}"
M="${MODEL:-$HOME/.cache/sparsetune/SmolLM2-135M-Instruct.Q4_1.gguf}"
echo "# $(date -u) load $(cut -d' ' -f1-3 /proc/loadavg) commit $(git rev-parse --short HEAD) threads $T"
if [ -n "${LLAMA_BENCH:-}" ]; then
    for dt in bf16 f32; do
        var="LLAMA_GGUF_${dt^^}"
        for args in "-p 512 -n 128" "-p 0 -n 64 -d 512"; do
            "$LLAMA_BENCH" -m "${!var}" -t "$T" -r 3 $args -o json 2>/dev/null | python3 -c "
import json, sys
for r in json.load(sys.stdin):
    test = 'pp%d' % r['n_prompt'] if r['n_gen'] == 0 else 'tg%d at depth %d' % (r['n_gen'], r.get('n_depth', 0))
    print('llama.cpp $dt', test, round(r['avg_ts'], 1), '+-', round(r['stddev_ts'], 1), 'tok/s')"
        done
    done
fi
show() { python3 -c "
import json, sys
for l in sys.stdin:
    d = json.loads(l)
    print('$1', d['dtype'], d['variant'], d['format'], 'decode', round(d['decode_tokens_per_second'], 2),
          'prefill', round(d['prefill_tokens_per_second'], 2), 'read GB/s', round(d['read_gbps'], 1),
          'machine', round(d['machine_read_gbps'], 1), 'weight bytes', d['weight_bytes'], 'resident', d['resident_bytes'],
          *(['paired speedup: decode', round(d['decode_speedup'], 3), 'prefill', round(d['prefill_speedup'], 3)]
            if 'decode_speedup' in d else []))"; }
for dt in bf16 f32; do
    "$B" bench --reps 3 decode --model "$M" --dtype "$dt" --tokens 128 --context 512 --threads "$T" 2>/dev/null \
        | head -1 | show "default model, context 512:"
done
for m in ${PRUNED_DIRS:-}; do
    "$B" bench --reps 3 decode --model "$m" --dtype bf16 --tokens 128 --context 128 --threads "$T" 2>/dev/null \
        | show "$m, context 128:"
done
# Short prompts (the first pruned directory): up to 24 tokens take the GEMV in passes of four.
P="${PRUNED_DIRS:-}"
for m in ${P%% *}; do
    for c in 8 24; do
        "$B" bench --reps 5 decode --model "$m" --dtype bf16 --tokens 16 --context "$c" --threads "$T" 2>/dev/null \
            | show "$m, a $c-token prompt:"
    done
done
for s in "--sparsity 0.5" "--sparsity 0.7" "--nm 2:4"; do
    "$B" bench --reps 3 decode --shape llama2-7b --layers "${LAYERS:-16}" $s --tokens 32 --context 64 --threads "$T" \
        2>/dev/null | show "llama2-7b, ${LAYERS:-16} layers, $s:"
done
echo "# end $(date -u) load $(cut -d' ' -f1-3 /proc/loadavg)"
