#!/usr/bin/env bash
# Compiles tests/c/abi_smoke.c as strict C99 against include/llama4_kernels.h, links it with the static
# library, and runs it (no GPU needed: it exercises argument validation). Usage: scripts/check-c-abi.sh [profile]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
flag=$([[ "$profile" == release ]] && echo --release || true)
cargo build $flag -p llama4-kernels --lib
lib="${CARGO_TARGET_DIR:-target}/$profile/libllama4_kernels.a"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
${CC:-cc} -std=c99 -Wall -Wextra -Werror -pedantic -Iinclude tests/c/abi_smoke.c "$lib" \
  -lstdc++ -ldl -lrt -lpthread -lm -o "$out/abi_smoke"
"$out/abi_smoke"
