#!/usr/bin/env bash
# Compile every cuda/*.cu to ptx/<name>.ptx and ptx/<name>.fatbin with the pinned nvcc 13.0
# (see install-nvcc.sh). Both are committed: users build and run on GPUs without a CUDA
# compiler. The library embeds the fatbins: machine code (SASS) for the GPUs we run on, so a
# context loads it without JIT-compiling the PTX, and the PTX itself for any other GPU.
#   cuda/<name>.cu        -> PTX for compute_80 (runs on Ampere and Hopper, JIT by the driver);
#                            fatbin: SASS sm_80 and sm_90, and that PTX
#   cuda/<name>_sm90a.cu  -> PTX for compute_90a (Hopper-only instructions such as wgmma);
#                            fatbin: SASS sm_90a, and that PTX
# Usage: scripts/build-ptx.sh [cuda/<name>.cu ...]   (default: all; output dir $PTX_OUT or ptx/)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${PTX_OUT:-ptx}"
mkdir -p "$OUT"
if [ -n "${NVCC:-}" ]; then
    CUDA_ROOT="$(cd "$(dirname "$NVCC")/.." && pwd)"
else
    CUDA_ROOT="$(bash scripts/install-nvcc.sh)"
    NVCC="$CUDA_ROOT/bin/nvcc"
fi
if [ $# -gt 0 ]; then SOURCES=("$@"); else SOURCES=(cuda/*.cu); fi
for src in "${SOURCES[@]}"; do
    name="$(basename "$src" .cu)"
    case "$name" in
        *_sm90a)
            arch="-gencode=arch=compute_90a,code=compute_90a"
            fat="-gencode=arch=compute_90a,code=[sm_90a,compute_90a]" ;;
        *)
            arch="-gencode=arch=compute_80,code=compute_80"
            fat="-gencode=arch=compute_80,code=[sm_80,sm_90,compute_80]" ;;
    esac
    "$NVCC" -ptx -O3 -std=c++17 $arch -Icuda -I"$CUDA_ROOT/include" "$src" -o "$OUT/$name.ptx"
    # The same PTX, and SASS assembled from it.
    "$NVCC" -fatbin -O3 -std=c++17 "$fat" -Icuda -I"$CUDA_ROOT/include" "$src" -o "$OUT/$name.fatbin"
done
echo "build-ptx: ${#SOURCES[@]} modules -> $OUT" >&2
