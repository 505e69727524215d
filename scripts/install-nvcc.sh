#!/usr/bin/env bash
# Install the pinned CUDA 13.0 compiler (nvcc, ptxas, headers) from PyPI wheels into a cache,
# without a GPU and without root. Prints the CUDA root on stdout. Idempotent.
# The GPU machines run driver 580 (CUDA 13.0); a newer nvcc writes a PTX ISA that driver refuses,
# hence the pins (see shared TOOLCHAIN.md).
set -euo pipefail
PREFIX="${SPARSETUNE_CUDA_PREFIX:-$HOME/.cache/sparsetune/cuda-13.0}"
CUDA="$PREFIX/nvidia/cu13"
if [ -x "$CUDA/bin/nvcc" ] && [ -x "$CUDA/bin/ptxas" ] && [ -f "$PREFIX/.complete" ]; then
    echo "$CUDA"
    exit 0
fi
WHEELS="$PREFIX/wheels"
mkdir -p "$WHEELS"
python3 -m pip download --quiet --no-deps -d "$WHEELS" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 >&2
for w in "$WHEELS"/*.whl; do python3 -m zipfile -e "$w" "$PREFIX" >&2; done
chmod +x "$CUDA"/bin/* "$CUDA"/nvvm/bin/*
touch "$PREFIX/.complete"
echo "$CUDA"
