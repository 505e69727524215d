#!/usr/bin/env bash
# Build, on this (GPU-less) machine, everything the GPU machine runs, into .carry/
# (ignored by git, carried to the device machine): the test executables, the bench
# executables and the sparsetune binary, stripped (profile `gpu`), then compressed.
# The GPU machine has no Rust toolchain; scripts/gpu-check.sh runs what is here.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .carry && mkdir -p .carry/bin
json="$(cargo test --profile gpu --no-run --message-format=json 2>/dev/null)
$(cargo bench --profile gpu --no-run --message-format=json 2>/dev/null)"
cargo build --profile gpu --bin sparsetune
cp target/gpu/sparsetune .carry/bin/
echo "$json" | python3 -c '
import json, sys, shutil, os
seen = set()
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    exe = m.get("executable")
    if m.get("reason") != "compiler-artifact" or not exe or exe in seen:
        continue
    if not m["profile"]["test"]:  # the sparsetune binary built for the CLI tests
        continue
    seen.add(exe)
    kind = m["target"]["kind"][0]
    name = m["target"]["name"] + ("-lib" if kind == "lib" else "")
    prefix = "bench-" if kind == "bench" else "test-"
    shutil.copy(exe, os.path.join(".carry/bin", prefix + name))
'
tar -C .carry -cJf .carry/bin.tar.xz bin && rm -rf .carry/bin
ls -la .carry
