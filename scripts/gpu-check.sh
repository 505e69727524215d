#!/usr/bin/env bash
# On the GPU machine (device `run`, repository root, with .carry/bin.tar.xz from
# scripts/gpu-build.sh): run every test executable (CUDA tests included), the benches,
# (CUDA groups only: CPU figures are measured on the CPU machine), and optionally
# compute-sanitizer on the op tests; logs under $OUT.
#   scripts/gpu-check.sh [tests] [bench] [sanitize]     (default: tests bench)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/sparsetune-gpu}"
mkdir -p "$OUT" /tmp/carry
tar -C /tmp/carry -xJf .carry/bin.tar.xz
BIN=/tmp/carry/bin
export SPARSETUNE_BIN="$BIN/sparsetune"
what="${*:-tests bench}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/gpu.txt"
if [[ " $what " == *" tests "* ]]; then
    : > "$OUT/tests.log"
    # The binaries with CUDA tests first, so a run cut short has tested the GPU.
    for t in "$BIN"/test-sparsetune-lib "$BIN"/test-cpu_vs_cuda \
        $(ls "$BIN"/test-* | grep -v -e '/test-sparsetune-lib$' -e '/test-cpu_vs_cuda$'); do
        echo "=== $(basename "$t")" | tee -a "$OUT/tests.log"
        # The CPU-driver reruns are for machines without a GPU (their library stays here).
        "$t" --test-threads=8 --skip on_the_cpu_driver 2>&1 | tee -a "$OUT/tests.log" | grep -E "^test result|FAILED|panicked" 
    done
    echo "--- summary"
    grep -c "skipped: no CUDA" "$OUT/tests.log" | sed 's/^/CUDA skips (must be 0): /'
    grep -E "^test result" "$OUT/tests.log" | awk '{p+=$4; f+=$6} END {print "passed " p ", failed " f}'
fi
if [[ " $what " == *" sanitize "* ]]; then
    for tool in memcheck racecheck; do
        timeout 170 compute-sanitizer --tool "$tool" "$BIN"/test-sparsetune-lib cuda_matches_cpu --test-threads=1 \
            > "$OUT/sanitize-$tool.log" 2>&1
        echo "compute-sanitizer $tool: exit $? ($(grep -c "ERROR SUMMARY: 0 errors" "$OUT/sanitize-$tool.log") clean summaries)"
        tail -n 3 "$OUT/sanitize-$tool.log"
    done
fi
if [[ " $what " == *" bench "* ]]; then
    for b in "$BIN"/bench-*; do
        echo "=== $(basename "$b")" | tee -a "$OUT/bench.log"
        "$b" --bench cuda --warm-up-time 1 --measurement-time 3 2>&1 | tee -a "$OUT/bench.log" | grep -E "time:|thrpt:|^[a-z_0-9]+/" 
    done
fi
