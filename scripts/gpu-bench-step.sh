#!/usr/bin/env bash
# On the GPU machine (device `run`, carry .carry and, for Liger, .whl): the end-to-end
# training step at LLaMA-2-7B shapes (issue 8), ours and PyTorch's, JSON lines under $OUT.
#   scripts/gpu-bench-step.sh ours    # sparsetune bench step: masked-lora and lors,
#                                     # 50% unstructured and 2:4, checkpointing on and off
#   scripts/gpu-bench-step.sh torch   # scripts/bench_peft.py: dense-lora, sp-lora, liger,
#                                     # checkpointing on and off
#   scripts/gpu-bench-step.sh prune   # Wanda and SparseGPT, 50%, 128 × 2048 calibration
#                                     # tokens, all layers: sparsetune bench prune, then
#                                     # scripts/bench_prune_torch.py (PyTorch reference)
#   scripts/gpu-bench-step.sh ops     # the masked-LoRA linear (issue 25) against the cuBLAS
#                                     # GEMMs it contains: 4096→4096, 4096→11008, 11008→4096,
#                                     # 2048 and 8192 tokens, 50% bitmask and 2:4, rank 16
#   scripts/gpu-bench-step.sh profile # issue 25's per-op table: attention forward + backward
#                                     # (tensor cores and flash, T 2048 and 4096, D 128), then
#                                     # one masked-lora step (50%, no checkpointing) with the
#                                     # device synchronised at every op (train_step_ops)
#   scripts/gpu-bench-step.sh ncu     # Nsight Compute on our kernels (duration, DRAM and SM
#                                     # throughput, occupancy, warp stalls): masked-LoRA W_eff
#                                     # and expansion, attention's row and flash kernels, and
#                                     # the decode kernels next to cuBLAS's GEMV; CSV under $OUT
#   scripts/gpu-bench-step.sh decode  # generation (issue 24): sparsetune bench decode, dense
#                                     # against 50% / 70% bitmask and 2:4 (CUDA decode
#                                     # kernels), bf16, LAYERS (default 8) decoder layers
# Each part fits one 10-minute call at 7B; SHAPE=smollm2-135m for a quick smoke run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/sparsetune-gpu}"
SHAPE="${SHAPE:-llama2-7b}"
STEPS="${STEPS:-5}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
case "${1:-ours}" in
ours)
    mkdir -p /tmp/carry && tar -C /tmp/carry -xJf .carry/bin.tar.xz
    for pattern in 0.5 2:4; do
        /tmp/carry/bin/sparsetune bench --device cuda --reps "$STEPS" step --shape "$SHAPE" \
            --pattern "$pattern" --methods masked-lora,lors --checkpointing on,off 2>&1 | tee -a "$OUT/step-ours.jsonl"
    done
    ;;
torch)
    if ls .whl/liger_kernel-*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            && export PYTHONPATH=/tmp/site
    fi
    for mode in liger dense-lora sp-lora; do
        for ck in "" --checkpointing; do
            python3 scripts/bench_peft.py --mode "$mode" --shape "$SHAPE" --steps "$STEPS" $ck 2>&1 \
                | tail -n 1 | tee -a "$OUT/step-torch.jsonl"
        done
    done
    ;;
prune)
    mkdir -p /tmp/carry && tar -C /tmp/carry -xJf .carry/bin.tar.xz
    for method in wanda sparsegpt; do
        /tmp/carry/bin/sparsetune bench --device cuda prune --shape "$SHAPE" --method "$method" \
            --samples "${SAMPLES:-128}" --seq-len 2048 2>&1 | tee -a "$OUT/prune-ours.jsonl"
        python3 scripts/bench_prune_torch.py --shape "$SHAPE" --method "$method" --samples "${SAMPLES:-128}" \
            --seq-len 2048 2>&1 | tail -n 1 | tee -a "$OUT/prune-torch.jsonl"
    done
    ;;
ops)
    mkdir -p /tmp/carry && tar -C /tmp/carry -xJf .carry/bin.tar.xz
    for tokens in 2048 8192; do
        for shape in "4096 4096" "4096 11008" "11008 4096"; do
            set -- $shape
            for pattern in 0.5 2:4; do
                /tmp/carry/bin/sparsetune bench masked-lora --device cuda --reps 5 --tokens "$tokens" \
                    --input "$1" --output "$2" --pattern "$pattern" 2>&1 | tee -a "$OUT/masked-lora.jsonl"
            done
        done
    done
    ;;
profile)
    mkdir -p /tmp/carry && tar -C /tmp/carry -xJf .carry/bin.tar.xz
    for seq in 2048 4096; do
        /tmp/carry/bin/sparsetune bench --device cuda --reps 5 attention --seq "$seq" --heads 32 --kv-heads 32 \
            --head-dim 128 2>&1 | tee -a "$OUT/attention.jsonl"
    done
    /tmp/carry/bin/sparsetune bench --device cuda --reps 2 step --shape "$SHAPE" --pattern 0.5 \
        --methods masked-lora --checkpointing off --profile 2>&1 | tee -a "$OUT/step-profile.jsonl"
    ;;
ncu)
    mkdir -p /tmp/carry && tar -C /tmp/carry -xJf .carry/bin.tar.xz
    st=/tmp/carry/bin/sparsetune
    prof() {  # prof NAME KERNEL-REGEX COUNT COMMAND...
        local name="$1" kernels="$2" count="$3"
        shift 3
        timeout 150 ncu --kernel-name "regex:$kernels" --launch-count "$count" --section SpeedOfLight \
            --section Occupancy --section WarpStateStats --csv --page details "$@" > "$OUT/ncu-$name.csv" 2>&1
        echo "ncu $name: exit $?, $(grep -c '"' "$OUT/ncu-$name.csv") rows"
    }
    prof masked-lora "masked_lora|bitmask_expand|nm_expand" 12 \
        $st bench masked-lora --device cuda --reps 1 --tokens 2048 --input 4096 --output 4096 --pattern 0.5
    prof attention "attention_" 12 $st bench --device cuda --reps 1 attention --seq 2048
    prof decode "bitmask_decode|nm_decode|gemv" 40 \
        $st bench --device cuda --reps 1 decode --shape "$SHAPE" --layers 2 --sparsity 0.5 --tokens 4 --context 32
    ;;
decode)
    mkdir -p /tmp/carry && tar -C /tmp/carry -xJf .carry/bin.tar.xz
    for pattern in "--sparsity 0.5" "--sparsity 0.7" "--nm 2:4"; do
        /tmp/carry/bin/sparsetune bench --device cuda --reps 3 decode --shape "$SHAPE" --layers "${LAYERS:-8}" \
            $pattern --tokens 128 --context 512 2>&1 | tee -a "$OUT/decode-ours.jsonl"
    done
    ;;
*) echo "usage: $0 ours|torch|prune|ops|profile|ncu|decode" >&2; exit 2 ;;
esac
