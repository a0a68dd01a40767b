#!/usr/bin/env bash
# The C ABI checks, none needing a GPU: the header's prototypes against the exported functions
# (tests/c_header.rs), the struct layouts and constants against kernels/abi.cu's tables (ops/abi.rs), then
# tests/c/abi_smoke.c compiled as strict C99 against include/llama4_kernels.h, linked with the static library and
# run (it exercises argument validation). Usage: scripts/check-c-abi.sh [profile]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
flag=$([[ "$profile" == release ]] && echo --release || true)
cargo test $flag -p llama4-kernels --test c_header
cargo test $flag -p llama4-kernels --lib abi::
cargo build $flag -p llama4-kernels --lib
lib="${CARGO_TARGET_DIR:-target}/$profile/libllama4_kernels.a"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
${CC:-cc} -std=c99 -Wall -Wextra -Werror -pedantic -Iinclude tests/c/abi_smoke.c "$lib" \
  -lstdc++ -ldl -lrt -lpthread -lm -o "$out/abi_smoke"
"$out/abi_smoke"
