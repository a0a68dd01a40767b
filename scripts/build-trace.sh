#!/usr/bin/env bash
# Builds bench/trace/kernel_trace.c (a CUPTI injection library: every kernel's GPU start and end, graph replays
# included) into the folder given (scripts/stage-gpu.sh passes gpu-bundle/trace), with the CUPTI runtime it loads,
# from the nvidia-cuda-cupti wheel (cached beside the CUDA wheels of scripts/setup.sh). On the GPU machine:
#   LD_LIBRARY_PATH=gpu-bundle/trace:$LD_LIBRARY_PATH CUDA_INJECTION64_PATH=$PWD/gpu-bundle/trace/libl4k_trace.so \
#     L4K_TRACE=trace.csv llama4-bench ...; python3 bench/trace/step_trace.py trace.csv
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${L4K_CACHE:-$HOME/.cache/llama4-kernels}/cupti-13.0.85
cuda=${L4K_CACHE:-$HOME/.cache/llama4-kernels}/cuda-13.0
if [[ ! -f $cache/nvidia/cu13/include/cupti.h ]]; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" nvidia-cuda-cupti==13.0.85
  mkdir -p "$cache"
  (cd "$cache" && unzip -q -o "$tmp"/nvidia_cuda_cupti-*.whl 'nvidia/cu13/include/*' 'nvidia/cu13/lib/libcupti.so.13')
  rm -rf "$tmp"
fi
dest=${1:?usage: $0 DEST}
mkdir -p "$dest"
cc -O2 -std=c11 -Wall -Wextra -Werror -shared -fPIC -I"$cache/nvidia/cu13/include" -I"$cuda/include" \
  bench/trace/kernel_trace.c -o "$dest/libl4k_trace.so" -L"$cache/nvidia/cu13/lib" -l:libcupti.so.13
cp "$cache/nvidia/cu13/lib/libcupti.so.13" "$dest/"
echo "built $dest: $(du -sh "$dest" | cut -f1)"
