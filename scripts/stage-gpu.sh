#!/usr/bin/env bash
# Builds the release test and bench binaries, strips them, and stages them with the GPU runner under
# gpu-bundle/ (git-ignored; must stay under the device tool's 64 MiB). Then, on the GPU machine:
#   gpu-bundle/run.sh [tests] [sanitize] [bench] [peers]      (results in $OUT, or gpu-bundle/results)
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=gpu-bundle
rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/peers"

# cargo prints one JSON message per artifact; keep the executables of the crates that run on the GPU.
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kind = m["target"]["kind"][0]
    if m["profile"]["test"] and kind not in ("test", "bench"):
        kind = "unit"
    print(kind, m["target"]["name"], m["executable"])'
}

cargo build --release -p llama4-kernels --lib
cargo build --release -p llama4-model --bins
strip -o "$bundle/bin/llama4-run" target/release/llama4-run
strip -o "$bundle/bin/llama4-bench" target/release/llama4-bench
{
  cargo test --release -p llama4-kernels --no-run --message-format=json 2>/dev/null
  # The model's GPU tests (the other model tests are CPU-only and run in CI).
  cargo test --release -p llama4-model --test gpu_model --no-run --message-format=json 2>/dev/null
} | executables >"$bundle/tests.txt"
{
  cargo bench -p llama4-kernels --no-run --message-format=json 2>/dev/null
  # The full-size model through criterion (bench/model.rs, in the model crate).
  cargo bench -p llama4-model --bench model --no-run --message-format=json 2>/dev/null
} | executables >"$bundle/benches.txt"
while read -r kind name exe; do
  case "$kind" in
    unit) dest="test-unit" ;;
    test) dest="test-$name" ;;
    *) continue ;;
  esac
  strip -o "$bundle/bin/$dest" "$exe"
done <"$bundle/tests.txt"
while read -r kind name exe; do
  [[ "$kind" == bench ]] && strip -o "$bundle/bin/bench-$name" "$exe"
done <"$bundle/benches.txt"
rm "$bundle/tests.txt" "$bundle/benches.txt"

# The C header check, built here (the GPU machine has no Rust), run there too.
cc -std=c99 -Wall -Wextra -Werror -pedantic -Iinclude tests/c/abi_smoke.c target/release/libllama4_kernels.a \
  -lstdc++ -ldl -lrt -lpthread -lm -o "$bundle/bin/abi_smoke"
strip "$bundle/bin/abi_smoke"

# The kernel tracer (bench/trace/), for timelines of a replayed step with its PDL overlap.
scripts/build-trace.sh "$bundle/trace"

# The binaries travel compressed (each carries every kernel's SASS, CUTLASS's included); run.sh unpacks them.
tar -C "$bundle" -cf - bin | xz -T0 -1 >"$bundle/bin.tar.xz"
rm -rf "$bundle/bin"

# CUTLASS headers for the experiments the runner compiles there (bench/experiments/).
cutlass="${CUTLASS_DIR:-${L4K_CUDA_CACHE:-$HOME/.cache/llama4-kernels/cuda-13.0}/cutlass}"
tar -C "$cutlass" -cf - include/cutlass include/cute | xz -T0 -6 >"$bundle/cutlass-include.tar.xz"

cp scripts/gpu-run.sh "$bundle/run.sh"
cp scripts/gpu-final-check.sh "$bundle/final.sh"
cp scripts/sanitizer-probe.cu scripts/hostile_cuda.py "$bundle/"
cp bench/peers/*.py bench/report.py bench/model_profile.py bench/model_report.py "$bundle/peers/"
size=$(du -sm "$bundle" | cut -f1)
ls -la "$bundle"
echo "staged $bundle: ${size} MiB"
if ((size >= 64)); then
  echo "error: $bundle is ${size} MiB; the device tool carries at most 64 MiB" >&2
  exit 1
fi
